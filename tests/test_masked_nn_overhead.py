"""The host-overhead fast paths of the masked layers give what the full paths give.

- MaskedConv2d / MaskedLinear read weight / mask / bias from nn.Module's dicts (not
  through nn.Module.__getattr__): still the current tensors after reassignment,
  parametrization, functional_call, bias=False;
- masked_conv2d's training fast path (torch's autograd on conv2d(x, where(mask, w, 0)))
  and masked_linear's (the op and its backward op without torch.library's Python
  autograd wrapper) give bit-identical outputs and gradients to torch.ops.lthfast.*
  with its registered autograd, pruned gradients exactly 0, and the same errors;
- the cached masked weight of the eval fast path follows every change of weight,
  mask and mode.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lthfast
import lthfast.nn as lnn
from lthfast.ops import masked_conv2d, masked_linear

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
ops = torch.ops.lthfast


def _mask(shape, keep=0.5, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < keep


def _grads(out, tensors):
    tensors = [t for t in tensors if t is not None and t.requires_grad]
    return torch.autograd.grad(out, tensors, torch.randn(out.shape, generator=torch.Generator()
                                                         .manual_seed(1), dtype=out.dtype))


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(torch.nan_to_num(x, 7.0), torch.nan_to_num(y, 7.0)), (x - y).abs().max()


CONV_CASES = [
    # (N, Cin, H, W), (Cout, Cin/g, kh, kw), stride, padding, dilation, groups, bias
    ((2, 4, 9, 9), (6, 4, 3, 3), 1, 1, 1, 1, True),
    ((1, 4, 8, 8), (4, 4, 3, 3), (1, 1), (0, 0), (1, 1), 1, True),
    ((2, 6, 11, 10), (4, 3, 3, 2), (2, 1), (1, 2), (1, 2), 2, False),
    ((3, 4, 7, 7), (4, 1, 3, 3), 1, 1, 1, 4, True),  # depthwise
    ((1, 8, 5, 5), (16, 8, 1, 1), 1, 0, 1, 1, True),
    ((1, 3, 16, 16), (8, 3, 7, 7), 2, 3, 1, 1, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("needs", ["all", "weight", "input", "bias"])
def test_conv_training_fast_path_is_the_op(case, dtype, needs):
    xs, ws, s, p, d, g, has_bias = case
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(xs, generator=gen, dtype=dtype)
    w = torch.randn(ws, generator=gen, dtype=dtype)
    b = torch.randn(ws[0], generator=gen, dtype=dtype) if has_bias else None
    m = _mask(ws)
    w[~m] = float("nan")  # pruned weights never leak, not even NaN
    w[0, 0, 0, 0], m[0, 0, 0, 0] = float("inf"), False
    for t, name in ((x, "input"), (w, "weight"), (b, "bias")):
        if t is not None and needs in ("all", name):
            t.requires_grad_()
    if not any(t is not None and t.requires_grad for t in (x, w, b)):
        pytest.skip("no bias")
    got = masked_conv2d(x, w, m, b, s, p, d, g)
    sp = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    want = ops.masked_conv2d(x, w, m, b, sp(s), sp(p), sp(d), g)
    _assert_identical([got], [want])
    assert got.requires_grad
    gg, gw = _grads(got, (x, w, b)), _grads(want, (x, w, b))
    _assert_identical(gg, gw)
    if w.requires_grad:
        gwt = gg[1 if x.requires_grad else 0]
        assert (gwt[~m] == 0).all() and not torch.signbit(gwt[~m]).any()


def test_conv_training_fast_path_channels_last_and_unbatched_module():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    masked = lnn.sparsify(copy.deepcopy(nn.Sequential(conv)), {"0.weight": _mask((6, 4, 3, 3))})[0]
    ref = copy.deepcopy(masked)
    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    got = masked(x)
    want = ops.masked_conv2d(x, ref.weight, ref.mask, ref.bias, (1, 1), (1, 1), (1, 1), 1)
    _assert_identical([got], [want])
    assert got.is_contiguous(memory_format=torch.channels_last) == \
        want.is_contiguous(memory_format=torch.channels_last)
    _assert_identical(_grads(got, (x, masked.weight, masked.bias)),
                      _grads(want, (x, ref.weight, ref.bias)))
    x3 = torch.randn(4, 8, 8)
    out = masked(x3)
    assert out.shape == (6, 8, 8)
    _assert_identical([out], [ops.masked_conv2d(x3[None], ref.weight, ref.mask, ref.bias, (1, 1),
                                                (1, 1), (1, 1), 1)[0]])


def test_conv_training_float_mask_keeps_the_op():
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    m = torch.rand(3, 2, 3, 3)  # a float mask scales the weights
    got = masked_conv2d(x, w, m)
    want = ops.masked_conv2d(x, w, m, None, (1, 1), (0, 0), (1, 1), 1)
    _assert_identical([got], [want])
    _assert_identical(_grads(got, (x, w)), _grads(want, (x, w)))


def _err(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", [
    "mask_shape", "mask_broadcast", "input_3d", "path", "stride_list3", "stride_bool",
    "groups_bool", "groups_0", "complex", "padding_neg", "too_small", "channels", "bias_shape",
    "bias_dtype", "input_dtype", "stride_float", "mask_int",
])
def test_conv_training_errors_are_the_full_checks(bad):
    """In a training call a bad argument raises what masked_conv2d's checks raise
    (the same call without a gradient, which never takes the fast path)."""
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(4, 4, 3, 3)
    b = torch.randn(4)
    m = _mask(w.shape)
    kw = dict(stride=1, padding=0, dilation=1, groups=1, path="auto")
    if bad == "mask_shape":
        m = m[:2]
    elif bad == "mask_broadcast":
        m = torch.ones(1, dtype=torch.bool)
    elif bad == "input_3d":
        x = x[0]
    elif bad == "path":
        kw["path"] = "fast"
    elif bad == "stride_list3":  # ([1] is F.conv2d's one-element form: valid)
        kw["stride"] = [1, 1, 1]
    elif bad == "stride_bool":
        kw["stride"] = (True, True)
    elif bad == "groups_bool":
        kw["groups"] = True
    elif bad == "groups_0":
        kw["groups"] = 0
    elif bad == "complex":
        x, w, b = x.cfloat(), w.cfloat(), b.cfloat()
    elif bad == "padding_neg":
        kw["padding"] = (-1, 0)
    elif bad == "too_small":
        x = x[..., :2, :2]
    elif bad == "channels":
        x = x[:, :3]
    elif bad == "bias_shape":
        b = b[:3]
    elif bad == "bias_dtype":
        b = b.double()
    elif bad == "input_dtype":
        x = x.double()
    elif bad == "stride_float":
        kw["stride"] = 1.0
    elif bad == "mask_int":
        m = m.int()
    with torch.no_grad():
        want = _err(lambda: masked_conv2d(x, w, m, b, **kw))
    w.requires_grad_()
    assert _err(lambda: masked_conv2d(x, w, m, b, **kw)) == want


LINEAR_CASES = [((5, 7), (3, 7), True), ((2, 3, 7), (4, 7), False), ((7,), (2, 7), True),
                ((0, 7), (3, 7), True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("float_mask", [False, True])
def test_linear_training_fast_path_is_the_op(case, dtype, float_mask):
    xs, ws, has_bias = case
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(xs, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(ws, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(ws[0], generator=gen, dtype=dtype, requires_grad=True) if has_bias else None
    m = _mask(ws)
    if float_mask:
        m = m.to(dtype) * 0.5
    got = masked_linear(x, w, m, b)
    want = ops.masked_linear(x, w, m, b)
    _assert_identical([got], [want])
    assert got.requires_grad
    _assert_identical(_grads(got, (x, w, b)), _grads(want, (x, w, b)))
    # only the weight needs a gradient
    x2 = x.detach()
    _assert_identical(_grads(masked_linear(x2, w, m, b), (w,)),
                      _grads(ops.masked_linear(x2, w, m, b), (w,)))


@pytest.mark.parametrize("bad", ["mask_shape", "input", "bias", "dtype", "path", "mask_int"])
def test_linear_training_errors_are_the_full_checks(bad):
    x, w, b, m = torch.randn(2, 5), torch.randn(3, 5), torch.randn(3), _mask((3, 5))
    path = "auto"
    if bad == "mask_shape":
        m = m[:2]
    elif bad == "input":
        x = x[:, :4]
    elif bad == "bias":
        b = b[:2]
    elif bad == "dtype":
        x = x.double()
    elif bad == "path":
        path = "nope"
    elif bad == "mask_int":
        m = m.int()
    with torch.no_grad():
        want = _err(lambda: masked_linear(x, w, m, b, path))
    w.requires_grad_()
    assert _err(lambda: masked_linear(x, w, m, b, path)) == want


def _pair_models(seed=0, path="auto"):
    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, bias=False),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    masks = {n: _mask(p.shape, seed=i) for i, (n, p) in enumerate(dense.named_parameters())
             if n.endswith("weight")}
    masked = lnn.sparsify(copy.deepcopy(dense), masks, path=path)
    return dense, masked, masks


def _reference(masked: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """masked's forward computed from its current tensors, with torch only."""
    out = x
    for layer in masked:
        if isinstance(layer, lnn.MaskedConv2d):
            out = F.conv2d(out, layer.weight.masked_fill(~layer.mask, 0), layer.bias, layer.stride,
                           layer.padding, layer.dilation, layer.groups)
        elif isinstance(layer, lnn.MaskedLinear):
            out = F.linear(out, layer.weight.masked_fill(~layer.mask, 0), layer.bias)
        else:
            out = layer(out)
    return out


def _check_eval(masked, x):
    assert not masked.training  # (eval() would drop the cached weights: not what is tested)
    with torch.no_grad():
        for _ in range(2):  # the second call takes the cached fast path
            torch.testing.assert_close(masked(x), _reference(masked, x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(masked(x), _reference(masked, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_module_reads_reassigned_tensors(path):
    _, masked, _ = _pair_models(path=path)
    masked.eval()
    x = torch.randn(2, 3, 8, 8)
    _check_eval(masked, x)
    conv = masked[0]
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # another Parameter
    _check_eval(masked, x)
    conv.mask = _mask(conv.weight.shape, keep=0.2, seed=9)  # another mask tensor
    _check_eval(masked, x)
    conv.bias = None  # bias dropped
    _check_eval(masked, x)
    conv.register_buffer("mask", torch.ones_like(conv.mask))
    _check_eval(masked, x)
    lin = masked[4]
    lin.mask = torch.zeros_like(lin.mask)
    _check_eval(masked, x)
    assert (masked(x) == lin.bias).all()


def test_module_without_bias_or_mask_entry():
    conv = lnn.MaskedConv2d(2, 3, 3, bias=False)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight), rtol=0, atol=1e-6)
    del conv._buffers["mask"]  # no mask at all: the error names it, as nn.Module's getattr does
    with pytest.raises(AttributeError, match="mask"):
        conv(x)


def test_parametrized_module_uses_the_parametrization():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    conv = lnn.MaskedConv2d(2, 3, 3)
    conv.mask.copy_(_mask(conv.mask.shape))
    x = torch.randn(1, 2, 6, 6)
    base = conv.weight.detach().clone()
    parametrize.register_parametrization(conv, "weight", Double())
    want = F.conv2d(x, (2 * base).masked_fill(~conv.mask, 0), conv.bias)
    torch.testing.assert_close(conv(x), want, rtol=0, atol=1e-5)
    lin = lnn.MaskedLinear(4, 3)
    parametrize.register_parametrization(lin, "weight", Double())
    xl = torch.randn(2, 4)
    want = F.linear(xl, lin.weight.masked_fill(~lin.mask, 0), lin.bias)
    torch.testing.assert_close(lin(xl), want, rtol=0, atol=1e-5)


def test_functional_call_swaps_the_parameters():
    _, masked, _ = _pair_models()
    x = torch.randn(2, 3, 8, 8)
    masked.eval()
    new = {n: torch.randn_like(p) for n, p in masked.named_parameters()}
    with torch.no_grad():
        masked(x)  # the old weights cached
        got = torch.func.functional_call(masked, new, (x,))
        swapped = copy.deepcopy(masked)
        for n, t in new.items():
            swapped.get_parameter(n).copy_(t)
        torch.testing.assert_close(got, _reference(swapped, x), rtol=0, atol=1e-5)
        torch.testing.assert_close(masked(x), _reference(masked, x), rtol=1e-5, atol=1e-5)


def test_subclass_of_masked_layer_goes_through_getattr():
    class Auto(lnn.MaskedConv2d):
        pass

    conv = Auto(2, 3, 3)
    del conv._buffers["mask"]
    Auto.mask = property(lambda self: self.weight.abs() > 0.1)  # not in nn.Module's dicts
    x = torch.randn(1, 2, 5, 5)
    want = F.conv2d(x, conv.weight.masked_fill(conv.weight.abs() <= 0.1, 0), conv.bias)
    torch.testing.assert_close(conv(x), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["auto", "dense", "sparse"])
def test_cached_weight_follows_every_change(path):
    _, masked, _ = _pair_models(path=path)
    masked.eval()
    x = torch.randn(2, 3, 8, 8)
    _check_eval(masked, x)
    conv = masked[0]
    with torch.no_grad():
        conv.weight.mul_(-1)  # in place
    _check_eval(masked, x)
    conv.weight.data = torch.randn_like(conv.weight)  # .data assignment
    _check_eval(masked, x)
    conv.weight.data.add_(1.0)  # a write through .data: seen after a mode switch
    masked.train()
    masked.eval()
    _check_eval(masked, x)
    with torch.no_grad():
        conv.mask.logical_not_()  # the mask in place
    _check_eval(masked, x)
    state = {k: v.clone() for k, v in masked.state_dict().items()}
    with torch.no_grad():
        for p in masked.parameters():
            p.add_(0.5)
    _check_eval(masked, x)
    masked.load_state_dict(state)
    _check_eval(masked, x)
    # training steps in between: every optimizer (fused too) invalidates
    for opt in (torch.optim.SGD(masked.parameters(), lr=0.1),
                torch.optim.Adam(masked.parameters(), lr=0.1, fused=True)):
        masked.train()
        masked(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        masked.eval()
        _check_eval(masked, x)
        with torch.no_grad():
            masked(x)  # cached, then a step without a mode switch
        masked(x).square().sum().backward()
        opt.step()
        with torch.no_grad():
            torch.testing.assert_close(masked(x), _reference(masked, x), rtol=1e-5, atol=1e-5)


def test_training_matches_the_dense_model_and_keeps_pruned_weights():
    dense, masked, masks = _pair_models(1)
    with torch.no_grad():
        for n, p in dense.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    x = torch.randn(4, 3, 8, 8)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.05)
    opt_m = torch.optim.SGD(masked.parameters(), lr=0.05)
    for _ in range(3):
        for model, opt in ((dense, opt_d), (masked, opt_m)):
            opt.zero_grad()
            model(x).square().mean().backward()
            for n, p in model.named_parameters():
                if n in masks:
                    p.grad.mul_(masks[n])
            opt.step()
    for (n, pd), pm in zip(dense.named_parameters(), masked.parameters()):
        if n in masks:
            torch.testing.assert_close(pm.detach() * masks[n], pd.detach(), rtol=1e-5, atol=1e-6)
            assert (masked.get_parameter(n).grad[~masks[n]] == 0).all()
        else:
            torch.testing.assert_close(pm, pd, rtol=1e-5, atol=1e-6)


def test_training_under_autocast_and_no_grad_inputs():
    _, masked, _ = _pair_models(2)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None for p in masked.parameters())
    for p in masked.parameters():  # frozen: no gradient anywhere, the eval paths
        p.requires_grad_(False)
    masked.eval()
    out = masked(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, _reference(masked, x), rtol=1e-5, atol=1e-5)


def test_pair_fast_case_keeps_the_checks():
    from lthfast.ops._masked_conv import _pair

    assert _pair((2, 3), "stride") == (2, 3) and _pair(4, "stride") == (4, 4)
    assert _pair([2, 3], "stride") == (2, 3)
    assert _pair((2,), "stride") == (2, 2) and _pair([3], "stride") == (3, 3)  # as F.conv2d
    for bad in ((1, True), (True, True), True, (True,), (), (1, 2, 3), (1.0, 1), [1.0]):
        with pytest.raises(TypeError, match="stride"):
            _pair(bad, "stride")


def test_sparse_fast_path_checks_geometry_args():
    conv = lnn.MaskedConv2d(2, 3, 3, path="sparse")
    conv.mask.copy_(_mask(conv.mask.shape, keep=0.1))
    conv.eval()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        first = conv(x)
        torch.testing.assert_close(conv(x), first, rtol=0, atol=0)
        conv.stride = (True, True)  # rejected by the checks, on the cached path too
        with pytest.raises(TypeError, match="stride"):
            conv(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hook_computed_weight_is_the_one_used():
    """torch.nn.utils.weight_norm / prune put `weight` in the instance dict (set by a
    forward pre-hook), not in _parameters: the module must use that one."""
    from torch.nn.utils import prune

    conv = lnn.MaskedConv2d(2, 3, 3)
    conv.mask.copy_(_mask(conv.mask.shape))
    torch.nn.utils.weight_norm(conv)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        conv.weight_g.mul_(3)
    out = conv(x)
    assert "weight" not in conv._parameters
    torch.testing.assert_close(out, F.conv2d(x, conv.weight.masked_fill(~conv.mask, 0), conv.bias),
                               rtol=0, atol=1e-5)
    lin = lnn.MaskedLinear(6, 4)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    xl = torch.randn(3, 6)
    want = F.linear(xl, (lin.weight_orig * lin.weight_mask).masked_fill(~lin.mask, 0), lin.bias)
    torch.testing.assert_close(lin(xl), want, rtol=0, atol=1e-6)


def _autocast_reference(masked, x, dt):
    out = x
    for layer in masked:
        if isinstance(layer, (lnn.MaskedConv2d, lnn.MaskedLinear)):
            w = layer.weight.detach().to(dt).masked_fill(~layer.mask, 0)
            b = None if layer.bias is None else layer.bias.detach().to(dt)
            out = out.to(dt)
            out = (F.conv2d(out, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
                   if isinstance(layer, lnn.MaskedConv2d) else F.linear(out, w, b))
        else:
            out = layer(out)
    return out


def _check_autocast(masked, x, dt, ctx=torch.no_grad):
    assert not masked.training
    with ctx():
        want = _autocast_reference(masked, x, dt)
        with torch.autocast("cpu", dtype=dt):
            for _ in range(3):  # the later calls take the cached path
                got = masked(x)
                assert got.dtype == dt
                torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0)


@pytest.mark.parametrize("path", ["auto", "dense"])
def test_autocast_inference_cache_follows_every_change(path):
    _, masked, _ = _pair_models(4, path=path)
    masked.eval()
    x = torch.randn(2, 3, 8, 8)
    _check_autocast(masked, x, torch.bfloat16)
    _check_autocast(masked, x, torch.bfloat16, torch.inference_mode)
    _check_autocast(masked, x, torch.float16)  # another autocast dtype
    _check_autocast(masked, x.bfloat16(), torch.bfloat16)  # another input dtype
    _check_autocast(masked, x[:1], torch.bfloat16)  # another input shape
    conv = masked[0]
    with torch.no_grad():
        conv.weight.mul_(-3)
    _check_autocast(masked, x, torch.bfloat16)
    with torch.no_grad():
        conv.mask.logical_not_()
    _check_autocast(masked, x, torch.bfloat16)
    conv.weight.data = torch.randn_like(conv.weight)
    _check_autocast(masked, x, torch.bfloat16)
    conv.bias = nn.Parameter(torch.randn_like(conv.bias))
    _check_autocast(masked, x, torch.bfloat16)
    masked[4].mask = torch.zeros_like(masked[4].mask)
    _check_autocast(masked, x, torch.bfloat16)
    opt = torch.optim.SGD(masked.parameters(), lr=0.1)
    masked.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked(x).float().square().sum().backward()
    opt.step()
    masked.eval()
    _check_autocast(masked, x, torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        masked(x)
    masked.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked(x).float().square().sum().backward()
    opt.step()  # a step with no mode switch after the cached call
    masked.eval()
    _check_autocast(masked, x, torch.bfloat16)
    # autocast off again: the float32 result
    with torch.no_grad():
        torch.testing.assert_close(masked(x), _reference(masked, x), rtol=1e-5, atol=1e-5)


def test_autocast_repeat_keeps_the_errors():
    conv = lnn.MaskedConv2d(2, 3, 3)
    conv.eval()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x), conv(x)
        with pytest.raises(ValueError, match="channels"):
            conv(torch.randn(1, 3, 6, 6))
        with pytest.raises(TypeError, match="dtype"):
            conv(x.double())  # float64 is not cast: it meets the bf16 weight
