"""lthfast.nn / lthfast.ops masked layers against the dense model with masked weights:
random conv configurations, torchvision models, and the ways a model is used after
sparsify (optimizers, autocast, inference mode, shared / tied modules, dtype and
memory-format changes, state_dict, copies). Seeded; CPU; small inputs."""
import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lthfast
from lthfast.nn import MaskedConv2d, MaskedLinear, densify, sparsify
from _masked_conv_cases import masked_copy, random_masks
from lthfast.ops import _weight_cache, masked_conv2d, masked_linear

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
PATHS = ("dense", "sparse", "auto", "tuned")


def _set_path(model, path):
    for m in model.modules():
        if isinstance(m, (MaskedConv2d, MaskedLinear)):
            m.path = path


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _assert_same(got, want, tol=1e-4):
    got, want = _tensors(got), _tensors(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * (1 + float(w.abs().max())) if w.numel() else 0)


def _small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 6, 1),
                          nn.Flatten(), nn.Linear(6 * 5 * 5, 3))
    masks = random_masks(model, 0.85)
    return model, masks


# ---------------------------------------------------------------- random conv configurations

def _random_conv(gen):
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    groups = [1, 2, 4][r(0, 2)]
    cin, cout = groups * r(1, 3), groups * r(1, 3)
    if r(0, 3) == 0:
        groups, cout = cin, cin * r(1, 2)  # depthwise (channel multiplier 1-2)
    k = (r(1, 4), r(1, 4))
    mode = ["zeros", "zeros", "reflect", "circular", "replicate"][r(0, 4)]
    padding = [0, r(1, 2), (r(0, 2), r(0, 1)), "same", "valid"][r(0, 4)]
    stride = 1 if padding == "same" else (r(1, 3), r(1, 2))
    dilation = (r(1, 2), r(1, 3))
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bool(r(0, 1)), padding_mode=mode)


@pytest.mark.parametrize("seed", range(13))
def test_random_conv_matches_masked_nn_conv2d(seed, one_thread):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = _random_conv(gen) if seed < 12 else nn.Conv2d(6, 6, 7, padding=3, groups=6)  # convnext
    masked = sparsify(nn.Sequential(copy.deepcopy(ref)),
                      {"0.weight": torch.rand(ref.weight.shape, generator=gen) > 0.6})[0]
    with torch.no_grad():
        ref.weight.mul_(masked.mask)
    x = torch.randn(2, ref.in_channels, 9, 11, generator=gen)
    variants = [x, x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3),
                x[:1], x[:0], x[0]]  # batch 1 / 0, unbatched (C, H, W) as nn.Conv2d takes
    with torch.no_grad():
        for path in PATHS:
            masked.path = path
            for v in variants:
                for _ in range(2):  # the second call takes the fast path
                    _assert_same(masked(v), ref(v), 1e-5)
    # training: same output, gradients equal the dense ones on kept weights, 0 on pruned
    xg = x.clone().requires_grad_()
    masked(xg).square().sum().backward()
    gx = xg.grad.clone()
    xg.grad = None
    ref(xg).square().sum().backward()
    torch.testing.assert_close(gx, xg.grad, rtol=1e-4, atol=1e-4)
    assert bool((masked.weight.grad[~masked.mask] == 0).all())
    torch.testing.assert_close(masked.weight.grad, ref.weight.grad * masked.mask, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_after_sparsify(dtype):
    model, masks = _small_model()
    dense = masked_copy(model, masks).eval().to(dtype)
    sp = sparsify(model, masks).eval().to(dtype)
    assert sp[0].mask.dtype == torch.bool
    x = torch.randn(2, 4, 5, 5, dtype=dtype)
    with torch.no_grad():
        for path in PATHS:
            _set_path(sp, path)
            _assert_same(sp(x), dense(x), 2e-2)


# ---------------------------------------------------------------- torchvision models

def _tv(name, **kw):
    tv = pytest.importorskip("torchvision")
    for mod in (tv.models, tv.models.segmentation, tv.models.detection):
        if hasattr(mod, name):
            return getattr(mod, name)(**kw)
    raise AssertionError(name)


MODELS = {  # name: (constructor kwargs, input shape; a list: detection images), slow?
    "mobilenet_v3_small": (dict(num_classes=10), (1, 3, 32, 32), False),  # depthwise, hardswish, SE
    "regnet_x_400mf": (dict(num_classes=10), (1, 3, 32, 32), False),  # grouped 3x3
    "shufflenet_v2_x0_5": (dict(num_classes=10), (1, 3, 32, 32), False),
    "deeplabv3_mobilenet_v3_large": (dict(num_classes=3, weights_backbone=None, aux_loss=True),
                                     (1, 3, 32, 32), False),  # dilation
    "fasterrcnn_mobilenet_v3_large_320_fpn": (dict(num_classes=3, weights_backbone=None,
                                                   min_size=64, max_size=64), [(3, 64, 64)], False),
    "convnext_tiny": (dict(num_classes=10), (1, 3, 32, 32), True),  # 7x7 depthwise, padding 3
    "googlenet": (dict(num_classes=10, aux_logits=True, init_weights=True), (1, 3, 64, 64), True),
    "ssdlite320_mobilenet_v3_large": (dict(num_classes=3, weights_backbone=None), [(3, 96, 96)], True),
    "retinanet_resnet50_fpn": (dict(num_classes=3, weights_backbone=None, min_size=64, max_size=64),
                               [(3, 64, 64)], True),
}


def _model_params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if MODELS[n][2] else n for n in names]


@pytest.mark.parametrize("name", _model_params(MODELS))
def test_torchvision_models_eval_equal_dense_masked(name, one_thread):
    kw, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = _tv(name, **kw).eval()
    masks = random_masks(model, 0.8)
    dense = masked_copy(model, masks)
    gen = torch.Generator().manual_seed(1)
    x = ([torch.rand(s, generator=gen) for s in shape] if isinstance(shape, list)
         else torch.randn(shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every mask is applied: no "not applied" warning
        sp = sparsify(model, masks)
    assert sum(isinstance(m, (MaskedConv2d, MaskedLinear)) for m in sp.modules()) == len(masks)
    with torch.no_grad():
        want = dense(x)
        for path in PATHS:
            _set_path(sp, path)
            _assert_same(sp(x), want)
            _assert_same(sp(x), want)
        back = densify(sp)
        assert not any(isinstance(m, (MaskedConv2d, MaskedLinear)) for m in back.modules())
        _assert_same(back(x), want)


@pytest.mark.parametrize("name", _model_params(["mobilenet_v3_small", "googlenet"]))
def test_torchvision_train_gradients(name, one_thread):
    kw, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = _tv(name, **kw).train()
    masks = random_masks(model, 0.8)
    dense = masked_copy(model, masks)
    sp = sparsify(model, masks)
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    for m in (dense, sp):
        torch.manual_seed(2)  # googlenet's dropout
        sum(t.square().mean() for t in _tensors(m(x))).backward()
    ref = dict(dense.named_parameters())
    for n, p in sp.named_parameters():
        want = ref[n].grad if n not in masks else ref[n].grad * masks[n]
        if n in masks:
            assert bool((p.grad[~masks[n]] == 0).all()), n
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5, msg=n)


# ---------------------------------------------------------------- weights changed after sparsify

def _optimizers():
    from lthfast.optim import MaskedAdam, MaskedSGD
    yield "sgd", lambda ps, ms: torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    yield "sgd-fused", lambda ps, ms: torch.optim.SGD(ps, lr=0.1, fused=True)
    yield "adam-fused", lambda ps, ms: torch.optim.Adam(ps, lr=0.1, fused=True)
    yield "adamw-foreach", lambda ps, ms: torch.optim.AdamW(ps, lr=0.1, foreach=True)
    yield "lthfast-sgd", lambda ps, ms: MaskedSGD(ps, lr=0.1, momentum=0.9, masks=ms)
    yield "lthfast-adam", lambda ps, ms: MaskedAdam(ps, lr=0.1, masks=ms)


@pytest.mark.parametrize("which", [n for n, _ in _optimizers()])
def test_optimizer_step_is_seen_by_the_weight_cache(which):
    """Regression: fused optimizer kernels (torch fused=True, lthfast.optim) write the
    weights without bumping _version; the cache served the pre-step weights."""
    make = dict(_optimizers())[which]
    model, masks = _small_model()
    sp = sparsify(model, masks)
    opt = make(list(sp.parameters()),
               {m.weight: m.mask for m in sp.modules() if isinstance(m, (MaskedConv2d, MaskedLinear))})
    x = torch.randn(2, 4, 5, 5)
    for path in PATHS:
        _set_path(sp, path)
        sp.eval()
        with torch.no_grad():
            sp(x), sp(x)  # warm the cache and the fast path
        sp(x).square().sum().backward()  # no mode switch between eval and step
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)


def test_weight_and_mask_writes_after_sparsify():
    model, masks = _small_model()
    sp = sparsify(model, masks).eval()
    x = torch.randn(2, 4, 5, 5)
    for path in PATHS:
        _set_path(sp, path)
        with torch.no_grad():
            sp(x), sp(x)
            sp[0].weight.add_(1)  # in place, versioned
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)
            sp[3].mask[0].logical_not_()  # mask changed in place
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)
            sp.load_state_dict({k: v * 2 if v.is_floating_point() else v
                                for k, v in sp.state_dict().items()})
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)
        # `.data` writes bypass the version counter: a train/eval switch forgets them
        sp[0].weight.data.mul_(-1)
        sp[5].weight.data.mul_(3)
        sp.train().eval()
        with torch.no_grad():
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)
        sp[2].weight.data.mul_(-2)
        lthfast.ops.forget_cached(sp[2].weight)
        with torch.no_grad():
            _assert_same(sp(x), densify(copy.deepcopy(sp))(x), 1e-5)


# ---------------------------------------------------------------- contexts

def test_inference_mode():
    """Regression: inference tensors have no version counter; reading it raised."""
    model, masks = _small_model()
    ref = masked_copy(model, masks).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.inference_mode():
        sp = sparsify(model, masks).eval()  # mask buffers made here
        for path in PATHS:
            _set_path(sp, path)
            _assert_same(sp(x), ref(x))
            _assert_same(sp(x), ref(x))
    assert not sp[0].mask.is_inference()
    with torch.no_grad():
        _assert_same(sp(x), ref(x))
    with torch.inference_mode():  # weights that are inference tensors: never cached
        model2, masks2 = _small_model()
        sp2 = sparsify(model2, masks2).eval()
    with torch.no_grad():
        for path in PATHS:
            _set_path(sp2, path)
            _assert_same(sp2(x), ref(x))
            _assert_same(sp2(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    """Regression: under autocast a conv fed by a conv got a low-precision input and a
    float32 weight (TypeError); the sparse path returned float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 3 * 3, 3), nn.ReLU(), nn.Linear(3, 2))
    masks = random_masks(model, 0.7)
    dense = masked_copy(model, masks)
    sp = sparsify(model, masks)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=dtype):
        with torch.no_grad():
            want = dense.eval()(x)
            for path in PATHS:
                _set_path(sp.eval(), path)
                _assert_same(sp(x), want, 3e-2)
                _assert_same(sp(x), want, 3e-2)
        _set_path(sp, "auto")
        out = sp.train()(x)
        assert out.dtype == dense.train()(x).dtype == dtype
        out.sum().backward()
    assert sp[0].weight.grad.dtype == torch.float32
    assert bool((sp[0].weight.grad[~sp[0].mask] == 0).all())
    w, m = torch.randn(3, 4, 3, 3), torch.rand(3, 4, 3, 3) > 0.5
    with torch.autocast("cpu", dtype=dtype):
        out = masked_conv2d(x.to(dtype), w, m, padding=1)
        assert out.dtype == F.conv2d(x.to(dtype), w * m, padding=1).dtype
        assert masked_linear(torch.randn(2, 4, dtype=dtype), w[:, :, 0, 0], m[:, :, 0, 0]).dtype == dtype


def test_compile_fullgraph_with_autocast():
    model, masks = _small_model()
    ref = masked_copy(model, masks).eval()
    sp = sparsify(model, masks).eval()
    torch._dynamo.reset()
    compiled = torch.compile(sp, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        _assert_same(compiled(x), ref(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _assert_same(compiled(x), ref(x), 3e-2)


# ---------------------------------------------------------------- model structure

def test_module_used_twice_and_tied_weights():
    """Regression: named_modules() lists a module once, so its second use stayed a dense
    nn.Conv2d; a Linear tied to a masked weight stayed dense (pruned weights used)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = nn.Sequential(conv, nn.ReLU(), conv, nn.Flatten(1, 2), a, b)
    masks = {"0.weight": torch.rand(3, 3, 3, 3) > 0.5, "4.weight": torch.rand(4, 4) > 0.5}
    ref = masked_copy(model, masks)
    assert ref[0] is ref[2] and ref[4].weight is ref[5].weight
    sp = sparsify(model, masks)
    assert sp[0] is sp[2] and isinstance(sp[0], MaskedConv2d)
    assert isinstance(sp[5], MaskedLinear) and sp[5].mask is sp[4].mask
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        for path in PATHS:
            _set_path(sp, path)
            _assert_same(sp(x), ref(x))
    back = densify(sp)
    assert type(back[0]) is nn.Conv2d and back[0] is back[2] and type(back[5]) is nn.Linear
    with torch.no_grad():
        _assert_same(back(x), ref(x))
    # both names of one tied tensor given, different masks: refused, model unchanged
    model2 = nn.Sequential(a, b)
    both = {"0.weight": torch.ones(4, 4, dtype=torch.bool),
            "1.weight": torch.zeros(4, 4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="tied"):
        sparsify(model2, both)
    assert type(model2[0]) is nn.Linear


def test_sparsify_again_takes_the_new_mask():
    """Regression: a second sparsify (next IMP round) silently kept the old masks."""
    model, masks = _small_model()
    sp = sparsify(model, masks)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        sp.eval()(x)
        masks2 = random_masks(sp, 0.95, seed=5)
        masks2 = {k: masks2[k.replace(".mask", ".weight")] for k in masks}
        sp = sparsify(sp, masks2, path="sparse")
        assert all(m.path == "sparse" for m in sp.modules() if isinstance(m, (MaskedConv2d, MaskedLinear)))
        _assert_same(sp(x), masked_copy(densify(copy.deepcopy(sp)), masks2)(x))
        assert torch.equal(sp[0].mask, masks2["0.weight"])


class _Doubling(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_subclasses_and_wrapped_weights_are_not_swapped_silently():
    model = nn.Sequential(_Doubling(3, 4, 3), nn.Linear(2, 2), nn.Conv2d(4, 4, 1))
    masks = random_masks(model)
    with pytest.warns(UserWarning, match=r"subclasses.*0\.weight"):
        sparsify(model, masks)
    assert type(model[0]) is _Doubling and isinstance(model[2], MaskedConv2d)
    pruned = nn.Sequential(nn.Conv2d(3, 4, 3))
    torch.nn.utils.prune.l1_unstructured(pruned[0], "weight", 0.5)
    with pytest.raises(ValueError, match="prune.remove"):
        sparsify(pruned, {"0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)})
    param = nn.Sequential(nn.Conv2d(3, 4, 3))
    torch.nn.utils.parametrizations.weight_norm(param[0])
    with pytest.raises(ValueError, match="parametrized"):
        sparsify(param, {"0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)})


def test_hooks_and_compiled_children():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    calls = []
    handle = model[0].register_forward_hook(lambda mod, i, o: calls.append(type(mod)))
    model[1].compile(backend="eager")
    masks = random_masks(model, 0.5)
    ref = masked_copy(model, masks)
    with pytest.warns(UserWarning, match="compile"):
        sparsify(model, masks)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        _assert_same(model(x), ref(x))  # the compiled old forward would skip the mask
    assert calls == [MaskedConv2d, nn.Conv2d]  # model's hook, then ref's (deep-copied)
    handle.remove()
    model(x)
    assert len(calls) == 2


def test_copies_and_state_dicts():
    model, masks = _small_model()
    dense = masked_copy(model, masks).eval()
    sp = sparsify(model, masks).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        want = sp(x)
        buf = io.BytesIO()
        torch.save(sp, buf)
        buf.seek(0)
        for clone in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp)),
                      torch.load(buf, weights_only=False)):
            _assert_same(clone(x), want, 0)
        # a dense state_dict has no masks: strict loading names them; strict=False keeps them
        with pytest.raises(RuntimeError, match=r"Missing key.*0\.mask"):
            sp.load_state_dict(dense.state_dict())
        sp.load_state_dict(dense.state_dict(), strict=False)
        _assert_same(sp(x), want)
        with pytest.raises(RuntimeError, match=r"Unexpected key.*0\.mask"):
            dense.load_state_dict(sp.state_dict())
    assert "sparsity=?" in repr(MaskedConv2d(3, 4, 3, device="meta"))


def test_channels_last_model_and_bias_free():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False), nn.Conv2d(8, 4, 1))
    masks = random_masks(model, 0.85)
    ref = masked_copy(model, masks).eval()
    sp = sparsify(model, masks).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for path in PATHS:
            _set_path(sp, path)
            _assert_same(sp(x), ref(x), 1e-5)
            _assert_same(sp(x[:, :, 1:, ::2]), ref(x[:, :, 1:, ::2]), 1e-5)
