"""The masked ops' compiled fast path for a repeated eager inference call (_C._conv_repeat,
_C._linear_repeat: the weight cache lookup, the checks and the op in one C call).

It runs conv2d / linear on the cached masked weight, or the sparse kernel on the packed
one, only when the call repeats the last fully checked one (same mask object, weight and mask unchanged, same input shape and groups, no
gradient needed, plain tensors, no torch-function or Python dispatch mode, int / pair
arguments); in every other case it returns None and the Python path decides, so results,
errors and modes are those of the Python path.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lthfast
from lthfast.ops import _masked_conv, _weight_cache, masked_conv2d, masked_linear

pytestmark = pytest.mark.skipif(not hasattr(lthfast._ops._C, "_conv_repeat"),
                                reason="lthfast._C not built")


def dense_repeat(rec, x, w, m, b, stride, padding, dilation, groups, path="dense"):
    """_C._conv_repeat with `rec` as the record of (w, path) (None: leave the cache as it is)."""
    if rec is not None and id(w) in _weight_cache._CACHE:
        e = _weight_cache._CACHE[id(w)]
        (e.cast if len(rec) == 9 else e.last)[path] = rec
    return lthfast._ops._C._conv_repeat(_weight_cache._CACHE, x, w, m, b, stride, padding, dilation,
                                        groups, path)


def linear_repeat(x, w, m, b, path="dense"):
    return lthfast._ops._C._linear_repeat(_weight_cache._CACHE, x, w, m, b, path)


@pytest.fixture(autouse=True)
def fresh_cache():
    """The helpers below write records into the live cache: none outlives its test."""
    _weight_cache.clear()
    yield
    _weight_cache.clear()


def _problem(groups=1, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4 // groups, 3, 3, generator=g)
    m = torch.rand(w.shape, generator=g) < 0.4
    x = torch.randn(2, 4, 7, 7, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    return x, w, m, b


def _warm(x, w, m, b, path="dense", **conf):
    with torch.no_grad():
        masked_conv2d(x, w, m, b, **conf, path=path)
    return _weight_cache._CACHE[id(w)].last[path]


@pytest.mark.parametrize("path", ["dense", "auto"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("conf", [dict(stride=1, padding=1), dict(stride=(2, 1), padding=[0, 1], dilation=(1, 2)),
                                  dict(padding=1, groups=2)])
def test_repeat_call_is_compiled_and_bit_identical(path, bias, conf):
    x, w, m, b = _problem(groups=conf.get("groups", 1), bias=bias)
    rec = _warm(x, w, m, b, path, **conf)
    if rec[2] is not False:
        pytest.skip("auto chose the sparse kernel here")
    full = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **conf}
    args = (full["stride"], full["padding"], full["dilation"], full["groups"])
    with torch.no_grad():
        out = dense_repeat(rec, x, w, m, b, *args, path=path)
        assert out is not None
        want = F.conv2d(x, w * m, b, *args)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        torch.testing.assert_close(masked_conv2d(x, w, m, b, **conf, path=path), want, rtol=0, atol=0)
    # grad mode on, nothing requires grad: still the compiled call
    assert dense_repeat(rec, x, w, m, b, *args, path=path) is not None


def test_declines_whatever_differs_from_the_checked_call():
    x, w, m, b = _problem()
    rec = _warm(x, w, m, b, stride=1, padding=1)
    ok = (1, 1, 1, 1)
    with torch.no_grad():
        assert dense_repeat(rec, x, w, m, b, *ok) is not None
        assert dense_repeat(rec, x, w, m.clone(), b, *ok) is None  # another mask object
        assert dense_repeat(rec, x[:1], w, m, b, *ok) is None  # another input shape
        assert dense_repeat(rec, x, w, m, b, 1, 1, 1, 2) is None  # other groups
        assert dense_repeat(rec, x, w.clone(), m, b, *ok) is None  # another weight: no entry
        assert dense_repeat(rec, x, w, m, b, True, 1, 1, 1) is None  # a bool is no int
        assert dense_repeat(rec, x, w, m, b, 1, "same", 1, 1) is None
        assert dense_repeat(rec, x, w, m, b, 1, (1, 1, 1), 1, 1) is None
        assert dense_repeat(rec, x, w, m, b, torch.tensor(1), 1, 1, 1) is None
        assert dense_repeat(rec, x, w, m, 3.0, *ok) is None  # a bias that is no tensor
        assert dense_repeat((*rec[:2], True, *rec[3:]), x, w, m, b, *ok) is None  # sparse record
        assert dense_repeat((*rec[:4], None, rec[5]), x, w, m, b, *ok) is None  # never-fresh entry
        for short in ((), rec[:2], rec[:5], rec + (None,)):
            assert dense_repeat(short, x, w, m, b, *ok) is None
        assert dense_repeat(rec, x, w, m, b, *ok) is not None
        assert dense_repeat(None, x, w, m, b, *ok, path="sparse") is None  # no record for it
        assert dense_repeat(None, x, w, m, b, *ok, path=["dense"]) is None  # unhashable: no record
        with pytest.raises(ValueError, match="path must be one of"):
            masked_conv2d(x, w, m, b, padding=1, path=["dense"])

        class Sub(torch.Tensor):
            pass

        assert dense_repeat(rec, x.as_subclass(Sub), w, m, b, *ok) is None
        m.logical_not_()  # the mask changed in place
        assert dense_repeat(rec, x, w, m, b, *ok) is None
        m.logical_not_()
        w.mul_(2)  # the weight changed in place
        assert dense_repeat(rec, x, w, m, b, *ok) is None
        rec = _warm(x, w, m, b, stride=1, padding=1)
        w.data = w.clone()  # other bytes under the same weight object
        assert dense_repeat(rec, x, w, m, b, *ok) is None
        rec = _warm(x, w, m, b, stride=1, padding=1)
        wide = b.double()  # a bias the op would reject, or linear broadcast
        assert dense_repeat(rec, x, w, m, wide, *ok) is None
        assert dense_repeat(rec, x, w, m, b[:1], *ok) is None
    # a gradient needed
    rec = _warm(x, w, m, b, stride=1, padding=1)
    assert dense_repeat(rec, x.detach().requires_grad_(), w, m, b, *ok) is None
    assert dense_repeat(rec, x, w, m, b.detach().requires_grad_(), *ok) is None
    with torch.no_grad():
        assert dense_repeat(rec, x, w, m, b.detach().requires_grad_(), *ok) is not None
    with torch.inference_mode():
        assert dense_repeat(rec, x.clone(), w, m, b, *ok) is not None


def test_errors_of_the_library_call_fall_back_to_the_clear_ones():
    x, w, m, b = _problem()
    rec = _warm(x, w, m, b, padding=1)
    with torch.no_grad():
        assert dense_repeat(rec, x.double(), w, m, b, 1, 1, 1, 1) is None  # conv2d raised
        assert dense_repeat(rec, x, w, m, b, 1, -1, 1, 1) is None
        with pytest.raises(TypeError, match="input dtype"):
            masked_conv2d(x.double(), w, m, b, padding=1, path="dense")
        with pytest.raises(ValueError, match="padding"):
            masked_conv2d(x, w, m, b, padding=-1, path="dense")
        with pytest.raises(ValueError, match="bias must have shape"):
            masked_conv2d(x, w, m, b[:3], padding=1, path="dense")


def test_modes_still_see_the_call():
    x, w, m, b = _problem()
    _warm(x, w, m, b, padding=1)
    seen = []

    class FunctionLog(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    class DispatchLog(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        want = masked_conv2d(x, w, m, b, padding=1, path="dense")
        with FunctionLog():
            torch.testing.assert_close(masked_conv2d(x, w, m, b, padding=1, path="dense"), want)
        assert "conv2d" in seen
        seen.clear()
        with DispatchLog():
            torch.testing.assert_close(masked_conv2d(x, w, m, b, padding=1, path="dense"), want)
        assert any("convolution" in s for s in seen)


def test_vmap_and_threads():
    x, w, m, b = _problem()
    _warm(x, w, m, b, padding=1)
    xs = torch.randn(3, *x.shape)
    with torch.no_grad():
        got = torch.func.vmap(lambda xi: masked_conv2d(xi, w, m, b, padding=1, path="dense"))(xs)
        torch.testing.assert_close(got, torch.stack([F.conv2d(xi, w * m, b, padding=1) for xi in xs]))
    # the compiled call lets go of the GIL around conv2d, as torch's bindings do: threads
    # calling it at once all get the right output
    outs = [None] * 4

    def run(i):
        with torch.no_grad():
            outs[i] = masked_conv2d(x, w, m, b, padding=1, path="dense")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in outs:
        torch.testing.assert_close(o, F.conv2d(x, w * m, b, padding=1), rtol=0, atol=0)


def test_tuned_choosing_sparse_lets_go_of_the_dense_records(monkeypatch):
    from lthfast.ops import _tune, clear_tuned

    clear_tuned()
    x, w, m, b = _problem()
    _warm(x, w, m, b, "dense", padding=1)
    monkeypatch.setattr(_tune, "tune", lambda k, device, dense, sparse: (True, sparse()))
    try:
        with torch.no_grad():
            masked_conv2d(x, w, m, b, padding=1, path="tuned")
        e = _weight_cache._CACHE[id(w)]
        assert e.dense is None and "dense" not in e.last and e.last["tuned"][2] is True
        with torch.no_grad():  # the dense path rebuilds its weight
            torch.testing.assert_close(masked_conv2d(x, w, m, b, padding=1, path="dense"),
                                       F.conv2d(x, w * m, b, padding=1), rtol=0, atol=0)
    finally:
        clear_tuned()


def test_module_takes_it():
    conv = lthfast.nn.MaskedConv2d(4, 6, 3, padding=1).eval()
    conv.mask.copy_(torch.rand(conv.mask.shape) < 0.5)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = conv(x)
        rec = _weight_cache._CACHE[id(conv.weight)].last["auto"]
        # (dense or sparse, whichever auto chose: both records are compiled)
        assert dense_repeat(rec, x, conv.weight, conv.mask, conv.bias, conv.stride, conv.padding,
                            conv.dilation, conv.groups, path="auto") is not None
        torch.testing.assert_close(conv(x), first, rtol=0, atol=0)


def test_autocast_records_are_compiled_and_follow_autocast():
    x, w, m, b = _problem()
    ok = (1, 1, 1, 1)
    with torch.no_grad():
        plain = _warm(x, w, m, b, padding=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masked_conv2d(x, w, m, b, padding=1, path="dense")
            rec = _weight_cache._CACHE[id(w)].cast["dense"]
            assert len(rec) == 9 and rec[5].dtype == torch.bfloat16
            out = dense_repeat(rec, x, w, m, b, *ok)
            assert out is not None and out.dtype == torch.bfloat16
            want = F.conv2d(x, w * m, b, padding=1)
            torch.testing.assert_close(out, want, rtol=0, atol=0)
            torch.testing.assert_close(masked_conv2d(x, w, m, b, padding=1, path="dense"), want,
                                       rtol=0, atol=0)
            e = _weight_cache._CACHE[id(w)]
            saved = dict(e.cast)
            e.cast.clear()  # only the fp32 record left: not used under autocast
            assert e.last["dense"] is plain and dense_repeat(None, x, w, m, b, *ok) is None
            e.cast.update(saved)
            assert dense_repeat(rec, x, w, m, None, *ok) is None  # no bias where there was one
            assert dense_repeat(rec, x.double(), w, m, b, *ok) is None  # another input dtype
        with torch.autocast("cpu", dtype=torch.float16):
            assert dense_repeat(rec, x, w, m, b, *ok) is None  # another autocast dtype
            torch.testing.assert_close(masked_conv2d(x, w, m, b, padding=1, path="dense"),
                                       F.conv2d(x, w * m, b, padding=1), rtol=0, atol=0)
        out = dense_repeat(None, x, w, m, b, *ok)  # autocast off: the fp32 record
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, F.conv2d(x, w * m, b, padding=1), rtol=0, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_repeat_call_is_compiled_and_declines_changes(autocast):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 16, generator=g)
    m = torch.rand(w.shape, generator=g) < 0.5
    x, b = torch.randn(5, 3, 16, generator=g), torch.randn(8, generator=g)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.no_grad(), ctx:
        masked_linear(x, w, m, b, path="dense")
        out = linear_repeat(x, w, m, b)
        want = F.linear(x, w * m, b)
        assert out is not None and out.dtype == want.dtype
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        torch.testing.assert_close(masked_linear(x, w, m, b, path="dense"), want, rtol=0, atol=0)
        assert linear_repeat(x[:1], w, m, b) is None
        assert linear_repeat(x, w, m.clone(), b) is None
        m[0].logical_not_()
        assert linear_repeat(x, w, m, b) is None
        torch.testing.assert_close(masked_linear(x, w, m, b, path="dense"), F.linear(x, w * m, b),
                                   rtol=0, atol=0)
        with pytest.raises(ValueError, match="in_features"):
            masked_linear(x[..., :4], w, m, b, path="dense")


def test_the_module_and_functional_calls_take_it_and_follow_changes(monkeypatch):
    """Once warm, a repeated eval call never reaches the Python checks; every change
    of the weight (in place, .data =, load_state_dict) or of the input's format is seen."""
    conv = lthfast.nn.MaskedConv2d(4, 6, 3, padding=1, path="dense").eval()
    conv.mask.copy_(torch.rand(conv.mask.shape) < 0.5)
    x = torch.randn(2, 4, 8, 8)

    def ref(inp):
        return F.conv2d(inp, conv.weight * conv.mask, conv.bias, padding=1)

    with torch.no_grad():
        conv(x)

        def no_python(*args):
            raise AssertionError("the Python path ran")

        monkeypatch.setattr(_masked_conv, "_check_common", no_python)
        torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        monkeypatch.undo()
        conv.weight.mul_(-1)  # in place
        torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        conv.weight.data = torch.randn_like(conv.weight)  # new storage
        torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        conv.load_state_dict({**conv.state_dict(), "weight": torch.randn_like(conv.weight)})
        torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        xc = x.contiguous(memory_format=torch.channels_last)
        conv(xc)
        out = conv(xc)
        assert out.is_contiguous(memory_format=torch.channels_last) == \
            ref(xc).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref(xc))
        with torch._C.DisableTorchFunction():
            torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)


def test_tuned_choosing_sparse_frees_the_autocast_record_of_a_bf16_weight(monkeypatch):
    from lthfast.ops import _tune, clear_tuned

    clear_tuned()
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 4, 3, 3, generator=g).bfloat16()
    m = torch.rand(w.shape, generator=g) < 0.3
    x = torch.randn(2, 4, 7, 7, generator=g)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            masked_conv2d(x, w, m, padding=1, path="dense")
            e = _weight_cache._CACHE[id(w)]
            dense = e.dense
            assert dense is not None and e.cast["dense"][5] is dense
            monkeypatch.setattr(_tune, "tune", lambda k, device, dn, sp: (True, sp()))
            masked_conv2d(x, w, m, padding=1, path="tuned")
            assert e.dense is None and "dense" not in e.cast and "dense" not in e.last
    finally:
        clear_tuned()


def test_a_view_in_another_dtype_is_another_weight():
    """Same bytes, shape, strides, version and (a temporary view's) id: only the dtype
    tells a bfloat16 view of float16 weights from the float16 view the entry was made for."""
    from lthfast.ops import _weight_cache as wc

    raw = torch.randn(6, 4, 3, 3).half()
    m = torch.rand(raw.shape) < 0.5
    assert wc._stamp(raw, m) != wc._stamp(raw.view(torch.bfloat16), m)
    assert wc._stamp(raw, m)[:7] == wc._stamp(raw.view(torch.bfloat16), m)[:7]


def test_linear_fast_paths_keep_the_bias_checks_and_skip_python(monkeypatch):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(8, 16, generator=g)
    m = torch.rand(w.shape, generator=g) < 0.5
    x = torch.randn(4, 16, generator=g)
    with torch.no_grad():
        for b in (torch.randn(8, generator=g), None):
            masked_linear(x, w, m, b, path="dense")
            monkeypatch.setattr(_masked_conv, "_check_common", lambda *a: pytest.fail("Python path"))
            torch.testing.assert_close(masked_linear(x, w, m, b, path="dense"), F.linear(x, w * m, b),
                                       rtol=0, atol=0)
            monkeypatch.undo()
        b = torch.randn(8, generator=g)
        masked_linear(x, w, m, b, path="dense")
        for bad, err, msg in ((torch.zeros(1), ValueError, "bias must have shape"),
                              (torch.zeros(4, 8), ValueError, "bias must have shape"),
                              (b.double(), TypeError, "bias dtype")):
            with pytest.raises(err, match=msg):
                masked_linear(x, w, m, bad, path="dense")
        x1 = torch.randn(16, generator=g)  # 1-D input, warm
        for _ in range(2):
            torch.testing.assert_close(masked_linear(x1, w, m, b, path="dense"), F.linear(x1, w * m, b),
                                       rtol=0, atol=0)
        lin = lthfast.nn.MaskedLinear(16, 8, path="dense").eval()
        lin.mask.copy_(m)
        lin(x)
        monkeypatch.setattr(_masked_conv, "_check_common", lambda *a: pytest.fail("Python path"))
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight * m, lin.bias), rtol=0, atol=0)


def test_sparse_repeat_is_compiled_too(monkeypatch):
    """A repeated call on the sparse kernel: the same compiled call runs the op on the
    packed weight, bit-identical to the Python path's call, in the input's format."""
    x, w, m, b = _problem()
    w4 = torch.randn(8, 4, 3, 3)
    m4 = torch.rand(w4.shape) < 0.1
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            _weight_cache.forget(w4)  # the first call of each format: the Python path
            first = masked_conv2d(inp, w4, m4, b[:1].expand(8).contiguous(), padding=1, path="sparse")
            rec = _weight_cache._CACHE[id(w4)].last["sparse"]
            assert rec[2] is True and len(rec[5]) == 3
            bias = b[:1].expand(8).contiguous()
            monkeypatch.setattr(_masked_conv, "_check_common", lambda *a: pytest.fail("Python path"))
            again = masked_conv2d(inp, w4, m4, bias, padding=1, path="sparse")
            monkeypatch.undo()
            torch.testing.assert_close(again, first, rtol=0, atol=0)
            assert again.is_contiguous(memory_format=torch.channels_last) is (inp is not x)
            assert first.is_contiguous(memory_format=torch.channels_last) is (inp is not x)
            torch.testing.assert_close(again, F.conv2d(inp, w4 * m4, bias, padding=1))
        # what differs falls back and gets the clear errors
        for other in (x.double(), x.half()):  # (the kernel itself would take a half input)
            with pytest.raises(TypeError, match="input dtype"):
                masked_conv2d(other, w4, m4, None, padding=1, path="sparse")
        m4[0].logical_not_()
        torch.testing.assert_close(masked_conv2d(x, w4, m4, None, padding=1, path="sparse"),
                                   F.conv2d(x, w4 * m4, None, padding=1))
    # a gradient needed: the dense op, never the sparse kernel
    wg = w4.clone().requires_grad_()
    with torch.no_grad():
        masked_conv2d(x, wg, m4, None, padding=1, path="sparse")
    masked_conv2d(x, wg, m4, None, padding=1, path="sparse").sum().backward()
    assert (wg.grad[~m4] == 0).all()


def test_sparse_linear_repeat_and_tuned_dense_drop_the_packed_records(monkeypatch):
    from lthfast.ops import _tune, clear_tuned

    g = torch.Generator().manual_seed(6)
    w = torch.randn(8, 16, generator=g)
    m = torch.rand(w.shape, generator=g) < 0.1
    x, b = torch.randn(3, 16, generator=g), torch.randn(8, generator=g)
    with torch.no_grad():
        first = masked_linear(x, w, m, b, path="sparse")
        monkeypatch.setattr(_masked_conv, "_check_common", lambda *a: pytest.fail("Python path"))
        torch.testing.assert_close(masked_linear(x, w, m, b, path="sparse"), first, rtol=0, atol=0)
        monkeypatch.undo()
        torch.testing.assert_close(first, F.linear(x, w * m, b))
    clear_tuned()
    try:
        monkeypatch.setattr(_tune, "tune", lambda k, device, dn, sp: (False, dn()))
        with torch.no_grad():
            masked_linear(x, w, m, b, path="tuned")
        e = _weight_cache._CACHE[id(w)]
        assert e.packed is None and "sparse" not in e.last and e.last["tuned"][2] is False
    finally:
        clear_tuned()


@pytest.mark.parametrize("case", ["groups", "float_mask", "tuned"])
def test_sparse_repeat_cases(monkeypatch, case):
    from lthfast.ops import _tune, clear_tuned

    g = torch.Generator().manual_seed(7)
    groups = 2 if case == "groups" else 1
    w = torch.randn(8, 4 // groups, 3, 3, generator=g)
    m = torch.rand(w.shape, generator=g) < 0.1
    if case == "float_mask":
        m = m.float()
    x = torch.randn(1, 4, 9, 9, generator=g)
    path = "tuned" if case == "tuned" else "sparse"
    clear_tuned()
    if case == "tuned":
        monkeypatch.setattr(_tune, "tune", lambda k, device, dn, sp: (True, sp()))
    try:
        with torch.no_grad():
            first = masked_conv2d(x, w, m, None, padding=1, groups=groups, path=path)
            assert _weight_cache._CACHE[id(w)].last[path][2] is True
            monkeypatch.setattr(_masked_conv, "_check_common", lambda *a: pytest.fail("Python path"))
            again = masked_conv2d(x, w, m, None, padding=1, groups=groups, path=path)
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        torch.testing.assert_close(again, F.conv2d(x, w * m, None, padding=1, groups=groups))
    finally:
        clear_tuned()


def test_conv_and_linear_records_on_one_entry_stay_apart():
    w = torch.randn(8, 4, 1, 1)
    m = torch.rand(w.shape) < 0.5
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        for path in ("sparse", "dense"):
            masked_conv2d(x, w, m, path=path)
            with pytest.raises(ValueError, match="2-D"):
                masked_linear(x, w, m, path=path)
    w2, m2 = torch.randn(8, 4), torch.rand(8, 4) < 0.5
    x2 = torch.randn(2, 4, 7, 4)
    with torch.no_grad():
        masked_linear(x2, w2, m2, path="dense")
        with pytest.raises(ValueError, match="4-D|weight"):
            masked_conv2d(x2, w2, m2, path="dense")


def test_repeat_path_bench_script_runs(tmp_path, capsys):
    """bench/repeat_path_conv.py (the compiled call against the Python path, on
    real layers): one round per case, a whole JSON file."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "repeat_path_conv.py"
    spec = importlib.util.spec_from_file_location("repeat_path_conv", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    compiled = _masked_conv._conv_repeat
    mod.main(["--rounds", "1", "--repeat", "1", "--json", str(out)])
    assert _masked_conv._conv_repeat is compiled  # swapped back
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(mod.CASES) and all(r["python_vs_compiled"] > 0 for r in rows)
    assert "python/compiled" in capsys.readouterr().out
