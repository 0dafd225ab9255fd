"""The global magnitude threshold kernel on CUDA: against the reference and, bit for
bit, against the CPU kernel. Skips cleanly without a GPU or without the CUDA build."""
import math

import pytest
import torch
from hypothesis import given, settings

import lthfast
from lthfast import _reference as ref

from _threshold_cases import make_tensor, threshold_problem


def _cuda_kernels_built():
    return lthfast._ops.available() and bool(lthfast.build_info().get("cuda"))


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _cuda_kernels_built(), reason="lthfast._C built without CUDA kernels"),
]

DEV = "cuda"


def to_cuda(x):
    """x on the GPU with the same strides (sliced views stay non-dense)."""
    y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=DEV)
    y.copy_(x)
    return y


def _ops(tensors, masks, k):
    """(masks, threshold, n_ties) from the CUDA ops, checked against the CPU ops bit for bit."""
    ct = [to_cuda(t) for t in tensors]
    cm = [to_cuda(m) for m in masks]
    got = torch.ops.lthfast.global_magnitude_masks(ct, cm, k)
    t, ties = torch.ops.lthfast.global_threshold(ct, cm, k)
    assert t.device.type == "cuda" and t.dtype == torch.float64 and t.dim() == 0
    assert ties.device.type == "cuda" and ties.dtype == torch.int64 and ties.dim() == 0
    cpu_masks = torch.ops.lthfast.global_magnitude_masks(tensors, masks, k)
    cpu_t, cpu_ties = torch.ops.lthfast.global_threshold(tensors, masks, k)
    for i, (g, c, x) in enumerate(zip(got, cpu_masks, ct)):
        assert g.device.type == "cuda" and g.dtype == torch.bool and g.shape == x.shape, i
        assert torch.equal(g.cpu(), c), f"mask {i} differs from the CPU kernel"
    t, ties = t.item(), ties.item()
    assert ties == cpu_ties.item()
    assert (math.isnan(t) and math.isnan(cpu_t.item())) or t == cpu_t.item()
    return got, t, ties


def _check_against_reference(tensors, masks, k):
    got, t, ties = _ops(tensors, masks, k)
    want = ref.global_magnitude_masks(tensors, masks, k)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g.cpu(), w), f"mask {i} differs from the reference"
    rt, rties = ref.global_threshold(tensors, masks, k)
    assert ties == rties
    assert (math.isnan(t) and math.isnan(rt)) or t == rt
    eligible = [m != 0 for m in masks] or [torch.ones_like(x, dtype=torch.bool) for x in tensors]
    assert sum(int((e & ~g.cpu()).sum()) for e, g in zip(eligible, got)) == k
    if masks and all(m.dtype == torch.bool for m in masks):
        # masks of the scores' dtypes (nonzero = eligible) select the same entries
        fmasks = [m.to(t.dtype) for m, t in zip(masks, tensors)]
        fgot, ft, fties = _ops(tensors, fmasks, k)
        assert all(torch.equal(a, b) for a, b in zip(fgot, got))
        assert fties == ties and ((math.isnan(t) and math.isnan(ft)) or ft == t)
    return got


@settings(max_examples=200, deadline=None)
@given(threshold_problem())
def test_matches_reference_and_cpu(problem):
    tensors, masks, k = problem
    _check_against_reference(tensors, masks or [], k)


@settings(max_examples=50, deadline=None)
@given(threshold_problem())
def test_python_api_on_cuda(problem):
    tensors, masks, k = problem
    ct = [to_cuda(t) for t in tensors]
    cm = None if masks is None else [to_cuda(m) for m in masks]
    got = lthfast.global_magnitude_masks(ct, k, masks=cm)
    want = ref.global_magnitude_masks(tensors, masks or [], k)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    t, ties = lthfast.global_magnitude_threshold(ct, k, masks=cm)
    rt, rties = ref.global_threshold(tensors, masks or [], k)
    assert ties == rties and ((math.isnan(t) and math.isnan(rt)) or t == rt)


@pytest.mark.parametrize("values", ["normal", "ties", "special"])
@pytest.mark.parametrize("with_masks", [False, True])
def test_k_edges_mixed_dtypes_and_layouts(values, with_masks):
    g = torch.Generator().manual_seed(1)
    tensors = [
        make_tensor((8, 6, 3, 3), torch.float32, "channels_last", values, g),
        make_tensor((40, 7), torch.float16, "transposed", values, g),
        make_tensor((30, 5), torch.bfloat16, "sliced", values, g),
        make_tensor((0, 3), torch.float32, "contiguous", values, g),
        make_tensor((257,), torch.float32, "contiguous", values, g),
    ]
    for wide in (False, True):
        ts = tensors + ([make_tensor((5, 4), torch.float64, "transposed", values, g)] if wide else [])
        masks = [torch.rand(t.shape, generator=g) > 0.3 for t in ts] if with_masks else []
        n = sum(int(m.sum()) for m in masks) if masks else sum(t.numel() for t in ts)
        for k in sorted({0, 1, 2, n // 3, n // 2, n - 1, n}):
            _check_against_reference(ts, masks, k)


def test_many_equal_values_straddling_k():
    """Ties straddle k in every possible place, across tensors and layouts."""
    a = torch.full((6, 4, 2, 2), 0.5).contiguous(memory_format=torch.channels_last)
    b = torch.full((9, 5), -0.5).t()  # transposed
    c = torch.full((17,), 0.5, dtype=torch.float16)
    d = torch.tensor([0.25, 0.5, 1.0, 0.5, 0.125])
    ts = [a, b, c, d]
    n = sum(t.numel() for t in ts)
    for k in range(n + 1):
        _check_against_reference(ts, [], k)


def test_ties_pruned_in_tensor_then_row_major_order():
    a = to_cuda(torch.ones(2, 3).t())  # memory order differs from row-major
    b = torch.ones(4, device=DEV)
    m = torch.ops.lthfast.global_magnitude_masks([a, b], [], 5)
    assert m[0].tolist() == [[False, False], [False, False], [False, True]]
    assert m[1].tolist() == [True, True, True, True]
    m = torch.ops.lthfast.global_magnitude_masks([a, b], [], 8)
    assert m[0].tolist() == [[False, False], [False, False], [False, False]]
    assert m[1].tolist() == [False, False, True, True]
    m = torch.ops.lthfast.global_magnitude_masks([a, b], [], 2)
    assert m[0].tolist() == [[False, False], [True, True], [True, True]]


def test_nan_inf_and_subnormals():
    x = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf"), 0.5], device=DEV)
    m = lambda k: torch.ops.lthfast.global_magnitude_masks([x], [], k)[0].tolist()  # noqa: E731
    assert m(3) == [True, False, False, True, False]
    assert m(4) == [True, False, False, False, False]
    assert m(5) == [False] * 5
    t, ties = torch.ops.lthfast.global_threshold([x], [], 5)
    assert math.isnan(t.item()) and ties.item() == 1
    # Subnormals keep their order, also when 64-bit keys widen fp32 / fp16 / bf16.
    tiny = [torch.tensor([1e-45, 3e-40, -1e-42, 0.0, 1e-38]),
            torch.tensor([6e-8, -3e-5, 0.0], dtype=torch.float16),
            torch.tensor([1e-39, -2e-40], dtype=torch.bfloat16)]
    for extra in ([], [torch.tensor([5e-324, 1e-310, 1e-300], dtype=torch.float64)]):
        ts = tiny + extra
        n = sum(t.numel() for t in ts)
        for k in range(n + 1):
            _check_against_reference(ts, [], k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_float_masks_nonzero_is_eligible(dtype):
    """A mask of the score's dtype: nonzero (NaN included, -0.0 not) = eligible."""
    x = torch.tensor([0.5, 0.25, 1.0, 0.75, 0.125, 2.0, 0.3], dtype=dtype)
    m = torch.tensor([float("nan"), -0.0, 0.0, 1e-40, -2.0, 1.0, 0.0]).to(dtype)
    if dtype == torch.float16:
        m[3] = 6e-8  # a float16 subnormal
    assert (m != 0).tolist() == [True, False, False, True, True, True, False]
    for k in range(5):
        got = _check_against_reference([x], [m], k)
        assert got[0].dtype == torch.bool


def test_layouts_of_outputs():
    w = to_cuda(torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last))
    t = to_cuda(torch.randn(30, 20).t())
    sliced = torch.randn(40, 20, device=DEV)[::2]
    p = torch.randn(4, 5, 6, device=DEV).permute(2, 0, 1)
    masks = torch.ops.lthfast.global_magnitude_masks([w, t, sliced, p], [], 1000)
    assert masks[0].stride() == w.stride()
    assert masks[1].stride() == t.stride()
    assert masks[2].is_contiguous()
    assert masks[3].stride() == p.stride()


def test_masks_with_other_strides_than_scores():
    g = torch.Generator().manual_seed(2)
    w = make_tensor((6, 5, 3, 3), torch.float32, "channels_last", "ties", g)
    v = make_tensor((12, 9), torch.float32, "contiguous", "ties", g)
    mw = torch.rand(w.shape, generator=g) > 0.5            # contiguous, score is channels_last
    mv = (torch.rand(9, 12, generator=g) > 0.5).t()        # transposed, score is contiguous
    n = int(mw.sum()) + int(mv.sum())
    for k in [1, n // 2, n - 1, n]:
        _check_against_reference([w, v], [mw, mv], k)


def test_more_than_8_dims():
    """Permuted dense tensors with more than 8 non-mergeable dims are walked as a copy."""
    g = torch.Generator().manual_seed(4)
    x = make_tensor((2,) * 10, torch.float32, "contiguous", "ties", g).permute(*reversed(range(10)))
    y = make_tensor((3, 1, 4), torch.float32, "contiguous", "ties", g)
    n = x.numel() + y.numel()
    for k in [1, 100, n // 2, n - 1]:
        got = _check_against_reference([x, y], [], k)
        assert got[0].stride() == x.stride()


def test_many_chunks_and_many_tensors():
    """Several 65536-entry chunks per tensor, ordered ties in permuted layouts, and a
    long tensor list (one chunk each)."""
    g = torch.Generator().manual_seed(3)
    tensors = [make_tensor((300_000,), torch.float32, "contiguous", "ties", g),
               make_tensor((64, 64, 9, 9), torch.bfloat16, "channels_last", "ties", g),
               make_tensor((700, 300), torch.float16, "transposed", "ties", g)]
    n = sum(t.numel() for t in tensors)
    for k in [1, 123_457, 400_000, 600_001, n - 1]:
        _ops(tensors, [], k)
    masks = [torch.rand(t.shape, generator=g) > 0.5 for t in tensors]
    n = sum(int(m.sum()) for m in masks)
    for k in [7, n // 3, n - 2]:
        _ops(tensors, masks, k)
    small = [make_tensor((int(s),), torch.float32, "contiguous", "ties", g)
             for s in torch.randint(1, 50, (300,), generator=g)]
    n = sum(t.numel() for t in small)
    for k in [1, n // 2, n - 1]:
        _check_against_reference(small, [], k)


def test_k_larger_than_eligible_on_device():
    """With masks only the device knows the eligible count, and the op must not sync:
    the documented result is NaN / -1 and nothing kept. The Python API raises first."""
    x = torch.randn(10, device=DEV)
    m = torch.zeros(10, dtype=torch.bool, device=DEV)
    m[:3] = True
    t, ties = torch.ops.lthfast.global_threshold([x], [m], 5)
    assert math.isnan(t.item()) and ties.item() == -1
    out = torch.ops.lthfast.global_magnitude_masks([x], [m], 5)[0]
    assert not bool(out.any())
    with pytest.raises(ValueError, match="k=5"):
        lthfast.global_magnitude_threshold([x], 5, masks=[m])
    with pytest.raises(RuntimeError, match=r"k=11 is larger than the number of unpruned entries \(10\)"):
        torch.ops.lthfast.global_threshold([x], [], 11)


def test_op_level_checks_name_the_tensor():
    w = [torch.randn(4, 3, device=DEV), torch.randn(5, device=DEV)]
    with pytest.raises(RuntimeError, match=r"scores\[1\] has dtype Long"):
        torch.ops.lthfast.global_magnitude_masks([w[0], torch.zeros(3, dtype=torch.long, device=DEV)], [], 1)
    with pytest.raises(RuntimeError, match=r"scores\[1\] is on cpu"):
        torch.ops.lthfast.global_magnitude_masks([w[0], torch.randn(3)], [], 1)
    with pytest.raises(RuntimeError, match=r"masks\[1\] has shape"):
        torch.ops.lthfast.global_threshold(w, [torch.ones(4, 3, dtype=torch.bool, device=DEV),
                                               torch.ones(6, dtype=torch.bool, device=DEV)], 1)
    with pytest.raises(RuntimeError, match=r"masks\[0\] has dtype Double"):
        torch.ops.lthfast.global_threshold(w, [torch.ones(4, 3, dtype=torch.float64, device=DEV),
                                               torch.ones(5, dtype=torch.bool, device=DEV)], 1)
    with pytest.raises(RuntimeError, match=r"k=-1"):
        torch.ops.lthfast.global_magnitude_masks(w, [], -1)
    with pytest.raises(RuntimeError, match=r"k=100 is larger than the number of unpruned entries \(17\)"):
        torch.ops.lthfast.global_magnitude_masks(w, [], 100)


def test_inputs_not_modified_and_no_host_sync():
    x = torch.randn(3000, device=DEV)
    y = torch.randn(20, 30, device=DEV, dtype=torch.float64).t()
    mx, my = torch.rand(3000, device=DEV) > 0.5, torch.rand(30, 20, device=DEV) > 0.5
    x0, y0, mx0, my0 = x.clone(), y.clone(), mx.clone(), my.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.lthfast.global_magnitude_masks([x, y], [mx, my], 700)
        torch.ops.lthfast.global_threshold([x, y], [mx, my], 700)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(mx, mx0) and torch.equal(my, my0)


def test_runs_on_the_current_stream():
    g = torch.Generator().manual_seed(5)
    x = make_tensor((500, 300), torch.float32, "contiguous", "ties", g)
    want = torch.ops.lthfast.global_magnitude_masks([x], [], 77_777)[0]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        xc = x.to(DEV, non_blocking=False)
        got = torch.ops.lthfast.global_magnitude_masks([xc], [], 77_777)[0]
        t, ties = torch.ops.lthfast.global_threshold([xc], [], 77_777)
    s.synchronize()
    assert torch.equal(got.cpu(), want)
    cpu_t, cpu_ties = torch.ops.lthfast.global_threshold([x], [], 77_777)
    assert t.item() == cpu_t.item() and ties.item() == cpu_ties.item()


def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(33, generator=g, dtype=torch.float64)
    c = torch.randn(6, 7, generator=g).to(torch.bfloat16).t()
    d = torch.randint(0, 3, (50,), generator=g).float()  # ties
    ts = [to_cuda(x) for x in (a, b, c)]
    ms = [to_cuda(torch.rand(x.shape, generator=g) > 0.4) for x in (a, b, c)]
    return [(ts, [], 0), (ts, [], 50), (ts, ms, 20), ([ts[1]], [], 33), ([to_cuda(d)], [], 20)]


@pytest.mark.parametrize("op", ["global_threshold", "global_magnitude_masks"])
def test_opcheck_cuda(op):
    for args in _opcheck_cases():
        torch.library.opcheck(getattr(torch.ops.lthfast, op), args)


@pytest.mark.slow
def test_more_than_2_pow_31_entries():
    n = 2**31 + 1000
    free, _ = torch.cuda.mem_get_info()
    if free < 4 * n:  # bf16 scores (2 B) + bool mask (1 B) + slack
        pytest.skip("not enough GPU memory for a 2^31-entry tensor")
    x = torch.ones(n, dtype=torch.bfloat16, device=DEV)
    x[-3:] = 0.5
    x[:2] = 0.25
    # no straddling tie: the five smallest
    m = torch.ops.lthfast.global_magnitude_masks([x], [], 5)[0]
    assert not m[:2].any() and not m[-3:].any() and bool(m[2:-3].all())
    del m
    # the boundary among the 1.0 ties falls beyond index 2^31 (ordered-tie path)
    k = 5 + 2**31 + 1  # <= n: there are n - 5 = 2^31 + 995 ties
    t, ties = torch.ops.lthfast.global_threshold([x], [], k)
    assert t.item() == 1.0 and ties.item() == 2**31 + 1
    m = torch.ops.lthfast.global_magnitude_masks([x], [], k)[0]
    last_pruned = 2 + 2**31  # the ties 1.0 are x[2 : n-3]; the first 2^31 + 1 of them are pruned
    assert not bool(m[last_pruned]) and bool(m[last_pruned + 1])
    assert int(m.sum()) == n - k
    del m, x
    torch.cuda.empty_cache()
