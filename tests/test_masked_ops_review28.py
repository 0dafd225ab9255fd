"""Regressions from review (stop 28) of the masked ops and layers: lthfast's own in-place
writes seen by the weight cache, a float mask that wants a gradient, torch.jit.trace,
torch.func transforms, padding="same" / "valid" in the functional op, sparsify's and the
detection scopes' bad input."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lthfast
from lthfast import Ticket, bitmask
from lthfast.nn import MaskedConv2d, MaskedLinear, sparsify
from lthfast.ops import masked_conv2d, masked_linear

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def _ref(m, x):
    return F.conv2d(x, m.weight * m.mask, m.bias)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_ticket_apply_after_a_forward_is_seen(path):
    """Evaluate, prune further with Ticket.apply (no training), evaluate again: the second
    forward used the first one's cached masked weight (zero_pruned_ did not bump _version)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    model = nn.Sequential(nn.Conv2d(4, 8, 3)).eval()
    sparser = Ticket.from_model(model, 0.9)  # (from the dense weights: stop 29 refuses a sparsified model)
    sparsify(model, Ticket.from_model(model, 0.5), path=path)
    with torch.no_grad():
        model(x)
        v = model[0].weight._version
        sparser.apply(model)
        assert model[0].weight._version > v
        torch.testing.assert_close(model(x), _ref(model[0], x))


def test_masked_optimizer_install_and_unpack_into_are_seen():
    torch.manual_seed(1)
    x = torch.randn(1, 4, 6, 6)
    conv = MaskedConv2d(4, 8, 3).eval()
    with torch.no_grad():
        conv(x)
    lthfast.optim.MaskedSGD([conv.weight], lr=0.1, masks={conv.weight: torch.rand(8, 4, 3, 3) > 0.5})
    with torch.no_grad():
        torch.testing.assert_close(conv(x), _ref(conv, x))
        packed = bitmask.pack_bits(torch.rand(8, 4, 3, 3) > 0.5)
        v = conv.mask._version
        bitmask.unpack_bits_into(packed, conv.mask)
        assert conv.mask._version > v
        torch.testing.assert_close(conv(x), _ref(conv, x))


def test_lthfast_prune_rounds_on_a_masked_layer_are_seen():
    import lthfast.prune as prune

    torch.manual_seed(2)
    x = torch.randn(1, 4, 6, 6)
    conv = MaskedConv2d(4, 8, 3).eval()
    with torch.no_grad():
        for _ in range(3):
            prune.global_unstructured([(conv, "weight")], prune.L1Unstructured, amount=0.3)
            torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.mask, conv.bias))


@pytest.mark.parametrize("warm", [False, True])
def test_a_float_mask_that_requires_grad_gets_its_gradient(warm):
    torch.manual_seed(3)
    x, w, b = torch.randn(2, 4, 7, 7), torch.randn(6, 4, 3, 3), torch.randn(6)
    soft = torch.rand(6, 4, 3, 3, requires_grad=True)
    if warm:  # a cached record from an inference call must not answer a call that needs grad
        with torch.no_grad():
            masked_conv2d(x, w, soft, b, path="dense")
            masked_conv2d(x, w, soft, b, path="dense")
    y = masked_conv2d(x, w, soft, b, path="dense")
    assert y.requires_grad
    y.square().sum().backward()
    ref = soft.detach().clone().requires_grad_()
    F.conv2d(x, w * ref, b).square().sum().backward()
    torch.testing.assert_close(soft.grad, ref.grad)
    lm = torch.rand(5, 8, requires_grad=True)
    xl, wl = torch.randn(3, 8), torch.randn(5, 8).requires_grad_()
    for _ in range(2 if warm else 1):
        with torch.no_grad():
            masked_linear(xl, wl, lm)
    out = masked_linear(xl, wl, lm)
    out.sum().backward()
    torch.testing.assert_close(lm.grad, (torch.ones(3, 5).t() @ xl) * wl.detach())


def test_jit_trace_with_grad_records_the_op():
    """Traced with grad on (jit.trace's default): the training fast paths decline too."""
    conv, lin = MaskedConv2d(4, 8, 3), MaskedLinear(8, 3)
    x = torch.randn(2, 4, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = str(torch.jit.trace(conv, x).graph) + str(torch.jit.trace(lin, torch.randn(2, 8)).graph)
    assert "lthfast::masked_conv2d" in graph and "lthfast::masked_linear" in graph


@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
def test_jit_trace_records_the_op_not_a_cached_weight(path):
    x = torch.randn(2, 4, 6, 6)
    model = nn.Sequential(MaskedConv2d(4, 8, 3, path=path), nn.Flatten(), MaskedLinear(128, 3)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)  # cold: the check re-trace gave another graph
        model(x)
        traced = torch.jit.trace(model, x)  # warm: the cached weight became a constant
        conv, lin = getattr(traced, "0"), getattr(traced, "2")
        conv.weight.mul_(2)
        lin.weight.mul_(-1)
        want = F.linear(F.conv2d(x, conv.weight * conv.mask, conv.bias).flatten(1),
                        lin.weight * lin.mask, lin.bias)
        torch.testing.assert_close(traced(x), want)


def test_torch_func_grad_goes_through_the_ops():
    torch.manual_seed(4)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    mask = torch.rand_like(w) > 0.5
    got = torch.func.grad(lambda ww: masked_conv2d(x, ww, mask).square().sum())(w)
    want = torch.func.grad(lambda ww: F.conv2d(x, ww.where(mask, 0)).square().sum())(w)
    torch.testing.assert_close(got, want)
    assert (got[~mask] == 0).all()
    xl, ml = torch.randn(3, 8), torch.rand(5, 8) > 0.5
    got = torch.func.grad(lambda ww: masked_linear(xl, ww, ml).square().sum())(torch.randn(5, 8))
    assert got.shape == (5, 8) and (got[~ml] == 0).all()
    # forward mode: nothing requires grad under jvp (the tangent was dropped: all zeros)
    t = torch.randn_like(w)
    with torch.no_grad():
        masked_conv2d(x, w, mask, path="dense")  # a cached record must not answer either
    _, got = torch.func.jvp(lambda ww: masked_conv2d(x, ww, mask, path="dense"), (w,), (t,))
    _, want = torch.func.jvp(lambda ww: F.conv2d(x, ww.where(mask, 0)), (w,), (t,))
    torch.testing.assert_close(got, want)
    wl, tl = torch.randn(5, 8), torch.randn(5, 8)
    _, got = torch.func.jvp(lambda ww: masked_linear(xl, ww, ml), (wl,), (tl,))
    torch.testing.assert_close(got, F.linear(xl, tl.where(ml, 0)))


@pytest.mark.parametrize("k, dilation", [(3, 1), (4, 1), (2, 3), ((3, 4), (2, 1))])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_string_padding_as_in_f_conv2d(k, dilation, padding, path):
    torch.manual_seed(5)
    kh, kw = (k, k) if isinstance(k, int) else k
    w, x = torch.randn(6, 4, kh, kw), torch.randn(2, 4, 11, 10)
    m = torch.rand_like(w) > 0.4
    with torch.no_grad():
        for _ in range(2):
            out = masked_conv2d(x, w, m, None, 1, padding, dilation, path=path)
            torch.testing.assert_close(out, F.conv2d(x, w * m, None, 1, padding, dilation))
    xg = x.clone().requires_grad_()
    masked_conv2d(xg, w, m, None, 1, padding, dilation).sum().backward()
    xr = x.clone().requires_grad_()
    F.conv2d(xr, w * m, None, 1, padding, dilation).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


def test_bad_string_padding_is_a_clear_error():
    w, x, m = torch.randn(6, 4, 3, 3), torch.randn(1, 4, 8, 8), torch.ones(6, 4, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"padding must be 'valid', 'same'.*'full'"):
        masked_conv2d(x, w, m, padding="full")
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1.*stride=2"):
        masked_conv2d(x, w, m, stride=2, padding="same")


@pytest.mark.parametrize("kind, err, msg", [
    ("int key", TypeError, r"keyed by parameter name.*got key 0"),
    ("meta", ValueError, r"'0\.weight'.*meta"),
    ("sparse", ValueError, r"'0\.weight'.*sparse"),
])
def test_sparsify_names_masks_it_cannot_use(kind, err, msg):
    # (made here, not in the parametrize list: pytest would keep them alive for the whole
    # session, where other tests walk every live tensor's storage)
    ones = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    bad = {"int key": {0: ones}, "meta": {"0.weight": ones.to("meta")},
           "sparse": {"0.weight": ones.to_sparse()}}[kind]
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    before = dict(model.state_dict())
    with pytest.raises(err, match=msg):
        sparsify(model, bad)
    assert type(model[0]) is nn.Conv2d and model.state_dict().keys() == before.keys()


def test_a_preset_in_a_union_and_stray_spaces():
    pytest.importorskip("torchvision")
    from lthfast import detection as det

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5)
    assert det.prunable_names(model, " paper ") == det.prunable_names(model, "paper")
    with pytest.raises(ValueError, match=r"'paper' is a preset, which cannot be combined with '\+'"):
        det.prunable_names(model, "paper+rpn")
    assert det.prunable_names(model, "fpn + rpn")


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_one_element_stride_as_f_conv2d_takes_it(path):
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    m = torch.rand_like(w) > 0.5
    with torch.no_grad():
        out = masked_conv2d(x, w, m, None, (2,), [1], (1,), path=path)
    torch.testing.assert_close(out, F.conv2d(x, w * m, None, (2,), [1], (1,)))


def test_jit_trace_of_a_sparse_layer_passes_its_own_check():
    """jit.trace checks a trace by tracing again under no_grad: a path="sparse" layer
    traced with grad on recorded the dense op, then the sparse ones (stop 29)."""
    lin, conv = MaskedLinear(8, 4, path="sparse").eval(), MaskedConv2d(3, 4, 3, path="sparse").eval()
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(torch.jit.trace(conv, x)(x), conv(x))
        with torch.no_grad():
            assert "lthfast::masked_linear" in str(torch.jit.trace(lin, torch.randn(2, 8)).graph)
        lin.requires_grad_(False)  # nothing needs a gradient: the sparse kernels are recorded
        graph = str(torch.jit.trace(lin, torch.randn(2, 8)).graph)
    assert "lthfast::sparse_linear" in graph and "lthfast::masked_linear" not in graph


def test_jit_trace_gives_no_tracer_warnings_from_the_checks():
    conv, lin = MaskedConv2d(3, 4, 3).eval(), MaskedLinear(8, 4).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.trace(conv, torch.randn(1, 3, 8, 8))
        torch.jit.trace(lin, torch.randn(2, 8))
    assert not [w for w in caught if "lthfast" in w.filename], [str(w.message) for w in caught]
