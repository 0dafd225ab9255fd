"""The global magnitude threshold kernel on CUDA: against the reference and, bit for
bit, against the CPU kernel. Skips cleanly without a GPU or without the CUDA build."""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

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

# The CUDA kernel's paths (csrc/ops/threshold/cuda/threshold_cuda.cu), chosen per call
# from the environment: the candidate path with straddling ties ranked in one block
# (the default), the candidate path with the ordered mask pass over every entry for
# them, a candidate cap of 3 entries (the path is taken or not depending on the
# data), and no candidate path (every radix pass reads every entry).
PATHS = {
    "candidates": {},
    "candidates-ordered-pass": {"LTHFAST_CUDA_TIE_RANK_MAX": "0"},
    "cap-3": {"LTHFAST_CUDA_CANDIDATES": "3"},
    "no-candidates": {"LTHFAST_CUDA_CANDIDATES": "0"},
}
_KNOBS = ("LTHFAST_CUDA_CANDIDATES", "LTHFAST_CUDA_TIE_RANK_MAX")


@pytest.fixture(params=list(PATHS))
def cuda_path(request):
    saved = {k: os.environ.pop(k, None) for k in _KNOBS}
    os.environ.update(PATHS[request.param])
    yield request.param
    for k, v in saved.items():
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v


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


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threshold_problem())
def test_matches_reference_and_cpu(cuda_path, problem):
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
def test_k_edges_mixed_dtypes_and_layouts(cuda_path, values, with_masks):
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


def test_many_equal_values_straddling_k(cuda_path):
    """Ties straddle k in every possible place, across tensors and layouts."""
    a = torch.full((6, 4, 2, 2), 0.5).contiguous(memory_format=torch.channels_last)
    b = torch.full((9, 5), -0.5).t()  # transposed
    c = torch.full((17,), 0.5, dtype=torch.float16)
    d = torch.tensor([0.25, 0.5, 1.0, 0.5, 0.125])
    ts = [a, b, c, d]
    n = sum(t.numel() for t in ts)
    for k in range(n + 1):
        _check_against_reference(ts, [], k)


def test_ties_pruned_in_tensor_then_row_major_order(cuda_path):
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


def test_nan_inf_and_subnormals(cuda_path):
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


def test_masks_with_other_strides_than_scores(cuda_path):
    g = torch.Generator().manual_seed(2)
    w = make_tensor((6, 5, 3, 3), torch.float32, "channels_last", "ties", g)
    v = make_tensor((12, 9), torch.float32, "contiguous", "ties", g)
    mw = torch.rand(w.shape, generator=g) > 0.5            # contiguous, score is channels_last
    mv = (torch.rand(9, 12, generator=g) > 0.5).t()        # transposed, score is contiguous
    n = int(mw.sum()) + int(mv.sum())
    for k in [1, n // 2, n - 1, n]:
        _check_against_reference([w, v], [mw, mv], k)


def test_more_than_8_dims(cuda_path):
    """Permuted dense tensors with more than 8 non-mergeable dims are walked as a copy."""
    g = torch.Generator().manual_seed(4)
    x = make_tensor((2,) * 10, torch.float32, "contiguous", "ties", g).permute(*reversed(range(10)))
    y = make_tensor((3, 1, 4), torch.float32, "contiguous", "ties", g)
    n = x.numel() + y.numel()
    for k in [1, 100, n // 2, n - 1]:
        got = _check_against_reference([x, y], [], k)
        assert got[0].stride() == x.stride()


def test_many_chunks_and_many_tensors(cuda_path):
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


@pytest.mark.parametrize("n_equal", [2047, 2048, 2049])
def test_straddling_ties_around_the_one_block_ranking(n_equal):
    """The candidate path ranks at most 2048 straddling ties in one block and hands
    more to the ordered pass over every entry: both sides of that limit, with the
    ties spread over permuted layouts and several chunks."""
    g = torch.Generator().manual_seed(n_equal)
    shapes = [(64, 32, 3, 3), (200, 300), (70_000,)]
    flat = [torch.randn(s, generator=g) for s in shapes]
    picks = torch.randperm(sum(x.numel() for x in flat), generator=g)[:n_equal]
    start = 0
    for x in flat:  # the ties, placed in row-major order
        mine = picks[(picks >= start) & (picks < start + x.numel())] - start
        x.view(-1)[mine] = torch.where(torch.rand(mine.numel(), generator=g) < 0.5, 0.5, -0.5)
        start += x.numel()
    tensors = [flat[0].contiguous(memory_format=torch.channels_last),
               flat[1].t().contiguous().t(), flat[2]]
    assert sum(int((x.abs() == 0.5).sum()) for x in tensors) == n_equal
    below = sum(int((x.abs() < 0.5).sum()) for x in tensors)
    for k in [below + 1, below + n_equal // 2, below + n_equal - 1]:
        got, t, ties = _ops(tensors, [], k)
        assert t == 0.5 and ties == k - below


@pytest.mark.parametrize("knob", _KNOBS)
def test_path_knobs_reject_bad_values(knob, monkeypatch):
    x = torch.randn(100, device=DEV)
    monkeypatch.setenv(knob, "-1")
    with pytest.raises(RuntimeError, match=f"{knob}=-1: expected a non-negative integer"):
        torch.ops.lthfast.global_magnitude_masks([x], [], 10)


def test_k_larger_than_eligible_on_device(cuda_path):
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


# ---------------------------------------------------------------- threshold_mask


def _mask_op(score, mask, t, left):
    """threshold_mask on CUDA (inputs copied with their strides) against the CPU op
    and the reference, bit for bit: the mask, its dtype and strides, and ties_left.
    Returns (CUDA mask, ties_left after)."""
    cs = to_cuda(score)
    cm = None if mask is None else to_cuda(mask)
    ct = torch.tensor(t, dtype=torch.float64, device=DEV)
    cl = torch.tensor(left, dtype=torch.int64, device=DEV)
    got = torch.ops.lthfast.threshold_mask(cs, cm, ct, cl)
    cpu_left = torch.tensor(left)
    want = torch.ops.lthfast.threshold_mask(score, mask, torch.tensor(t, dtype=torch.float64), cpu_left)
    ref_left = torch.tensor(left)
    ref_mask = ref.threshold_mask(score, mask, t, ref_left)
    assert got.device.type == DEV and got.dtype == want.dtype and got.shape == score.shape
    assert got.stride() == want.stride()
    assert torch.equal(got.cpu(), want), "differs from the CPU kernel"
    assert torch.equal(got.cpu(), ref_mask), "differs from the reference"
    assert int(cl) == int(cpu_left) == int(ref_left)
    assert ct.item() == t or (math.isnan(t) and math.isnan(ct.item()))  # threshold not modified
    return got, int(cl)


def _sequence(tensors, masks, k):
    """threshold_mask over the tensors in order from global_threshold's (t, ties),
    ties_left carried over; equals global_magnitude_masks and ends at 0."""
    t, ties = ref.global_threshold(tensors, masks or [], k)
    want = ref.global_magnitude_masks(tensors, masks or [], k)
    left = ties
    for i, s in enumerate(tensors):
        got, left = _mask_op(s, masks[i] if masks else None, t, left)
        assert torch.equal(got.cpu() != 0, want[i]), f"mask {i} differs from global_magnitude_masks"
    assert left == 0
    return t, ties


def test_threshold_mask_registered_for_cuda():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lthfast::threshold_mask", "CUDA")


@settings(max_examples=150, deadline=None)
@given(threshold_problem())
def test_threshold_mask_sequence_matches_reference_and_cpu(problem):
    tensors, masks, k = problem
    _sequence(tensors, masks, k)
    if masks is not None:  # float masks of the tensors' dtypes: same selection, output of that dtype
        _sequence(tensors, [m.to(t.dtype) for m, t in zip(masks, tensors)], k)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_threshold_mask_any_budget(layout, dtype, mask_kind):
    """Every tie budget, on ties straddling in every layout and dtype."""
    g = torch.Generator().manual_seed(7)
    x = make_tensor((5, 4, 3, 3), dtype, layout, "ties", g)
    m = None
    if mask_kind is not None:
        m = torch.rand(x.shape, generator=g) > 0.3
        if mask_kind == "float":
            m = m.to(dtype)
    for t in [0.0, 0.5, 1.0, 1.5, 0.25]:
        n_ties = int((((x.abs().double() == t) & (True if m is None else (m != 0)))).sum())
        for left in sorted({0, 1, n_ties // 2, max(0, n_ties - 1), n_ties, n_ties + 3}):
            got, after = _mask_op(x, m, t, left)
            assert after == left - min(left, n_ties)


def test_threshold_mask_ties_in_row_major_order():
    a = torch.ones(2, 3).t()  # memory order differs from row-major: [[1,1],[1,1],[1,1]]
    got, left = _mask_op(a, None, 1.0, 3)
    assert got.tolist() == [[False, False], [False, True], [True, True]] and left == 0
    got, left = _mask_op(a, None, 1.0, 8)
    assert not bool(got.any()) and left == 2
    c = torch.tensor([0.5, 2.0, -0.5, 0.25, 0.5]).to(torch.float16)
    got, left = _mask_op(c, None, 0.5, 2)
    assert got.tolist() == [False, True, False, False, True] and left == 0


def test_threshold_mask_k_zero_keeps_every_eligible_entry():
    """global_threshold's k == 0 result (0.0, 0): zeros are ties, none is pruned."""
    g = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = make_tensor((7, 9), dtype, "transposed", "ties", g)  # a quarter are +-0
        assert bool((x == 0).any())
        m = torch.rand(x.shape, generator=g) > 0.5
        got, left = _mask_op(x, None, 0.0, 0)
        assert bool(got.all()) and left == 0
        got, left = _mask_op(x, m, 0.0, 0)
        assert torch.equal(got.cpu(), m) and left == 0
        got, left = _mask_op(x, m.to(dtype), 0.0, 0)
        assert torch.equal(got.cpu(), m.to(dtype)) and left == 0


def test_threshold_mask_nan_inf_subnormals():
    x = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf"), 0.5, float("nan")])
    for t, left in [(float("nan"), 1), (float("inf"), 1), (1.0, 0), (float("nan"), 0)]:
        _mask_op(x, None, t, left)
    # 64-bit keys: fp32 subnormals compare exactly with any double threshold
    tiny = torch.tensor([1e-45, 3e-40, -1e-42, 0.0, 1e-38])
    for t in [1e-45, 3e-40, 1.0e-42, 0.0, 1e-38, 2e-45, 5e-324]:
        for left in [0, 1, 2]:
            _mask_op(tiny, None, t, left)  # t as a double (most lie between two floats)
            _mask_op(tiny, None, float(torch.tensor(t).item()), left)  # t rounded to float32
            _mask_op(tiny.to(torch.float64), None, t, left)
    h = torch.tensor([6e-8, -3e-5, 0.0, 6e-8], dtype=torch.float16)
    _mask_op(h, None, float(h[0]), 1)
    b = torch.tensor([1e-39, -2e-40, 1e-39], dtype=torch.bfloat16)
    _mask_op(b, None, float(b[0]), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_threshold_mask_float_masks_nonzero_is_eligible(dtype):
    x = torch.tensor([0.5, 0.25, 1.0, 0.75, 0.5, 2.0, 0.5], dtype=dtype)
    m = torch.tensor([float("nan"), -0.0, 0.0, 1e-40, -2.0, 1.0, 0.0]).to(dtype)
    if dtype == torch.float16:
        m[3] = 6e-8  # a float16 subnormal
    for t in [0.25, 0.5, 0.75, 1.0]:
        for left in [0, 1, 2, 3]:
            got, _ = _mask_op(x, m, t, left)
            assert got.dtype == dtype and set(got.cpu().tolist()) <= {0.0, 1.0}


def test_threshold_mask_layouts_of_outputs():
    w = torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    sliced = torch.randn(40, 20)[::2]
    p = torch.randn(4, 5, 6).permute(2, 0, 1)
    for x in (w, torch.randn(30, 20).t(), sliced, p):
        got, _ = _mask_op(x, None, 0.5, 0)
        want = torch.empty_like(x, dtype=torch.bool)  # the fake kernel's layout
        assert got.stride() == want.stride()
        got, _ = _mask_op(x, torch.rand(x.shape) > 0.5, 0.5, 0)
        assert got.stride() == want.stride()


def test_threshold_mask_more_than_8_dims_and_many_chunks():
    """A permuted 10-dim tensor (walked as a row-major copy), and tensors of many
    8192-entry chunks with the tie boundary inside a later chunk."""
    g = torch.Generator().manual_seed(9)
    x = make_tensor((2,) * 10, torch.float32, "contiguous", "ties", g).permute(*reversed(range(10)))
    n_ties = int((x.abs() == 0.5).sum())
    for left in [0, 1, n_ties // 2, n_ties, n_ties + 1]:
        got, _ = _mask_op(x, None, 0.5, left)
        assert got.stride() == x.stride()
    big = [make_tensor((300_000,), torch.float32, "contiguous", "ties", g),
           make_tensor((64, 64, 9, 9), torch.bfloat16, "channels_last", "ties", g),
           make_tensor((700, 300), torch.float16, "transposed", "ties", g)]
    for s in big:
        n_ties = int((s.abs() == 1.0).sum())
        m = torch.rand(s.shape, generator=g) > 0.5
        for left in [1, 9000, 40_000, n_ties // 2 + 12_345, n_ties - 1, n_ties + 7]:
            _mask_op(s, None, 1.0, left)
        _mask_op(s, m, 1.0, int((m & (s.abs() == 1.0)).sum()) // 3)
    n = sum(t.numel() for t in big)
    for k in [1, 123_457, 400_000, 600_001, n - 1]:
        _sequence(big, None, k)


def test_threshold_mask_sequence_equals_global_magnitude_masks_on_cuda():
    """iter_global_magnitude_masks on CUDA tensors (threshold_mask per tensor, the
    threshold and ties_left on the device) == global_magnitude_masks, CUDA and CPU."""
    a = torch.full((6, 4, 2, 2), 0.5).contiguous(memory_format=torch.channels_last)
    b = torch.full((9, 5), -0.5).t()
    c = torch.full((17,), 0.5, dtype=torch.float16)
    d = torch.tensor([0.25, 0.5, 1.0, 0.5, 0.125], dtype=torch.float64)
    ts = [a, b, c, d]
    cts = [to_cuda(t) for t in ts]
    n = sum(t.numel() for t in ts)
    for k in range(n + 1):
        got = list(lthfast.magnitude.iter_global_magnitude_masks(cts, k))
        want = torch.ops.lthfast.global_magnitude_masks(cts, [], k)
        cpu = torch.ops.lthfast.global_magnitude_masks(ts, [], k)
        for gm, w, cm, x in zip(got, want, cpu, cts):
            assert gm.device.type == DEV and gm.stride() == w.stride() == x.stride()
            assert torch.equal(gm, w) and torch.equal(gm.cpu(), cm), k
    g = torch.Generator().manual_seed(10)
    ts = [make_tensor((8, 6, 3, 3), torch.float32, "channels_last", "ties", g),
          make_tensor((40, 7), torch.float16, "transposed", "special", g),
          make_tensor((30, 5), torch.bfloat16, "sliced", "ties", g),
          make_tensor((0, 3), torch.float32, "contiguous", "ties", g),
          make_tensor((257,), torch.float64, "contiguous", "ties", g)]
    cts = [to_cuda(t) for t in ts]
    masks = [torch.rand(t.shape, generator=g) > 0.3 for t in ts]
    for ms in (None, masks, [m.to(t.dtype) for m, t in zip(masks, ts)]):
        cms = None if ms is None else [to_cuda(m) for m in ms]
        nel = sum(int((m != 0).sum()) for m in ms) if ms else sum(t.numel() for t in ts)
        for amount in [0, 1, nel // 3, nel // 2, nel - 1, nel, 0.2, 0.5]:
            got = list(lthfast.magnitude.iter_global_magnitude_masks(cts, amount, masks=cms))
            want = lthfast.global_magnitude_masks(ts, amount, masks=ms)
            for i, (gm, w) in enumerate(zip(got, want)):
                assert gm.dtype == (torch.bool if ms is None else ms[i].dtype)
                assert torch.equal(gm.cpu() != 0, w)


def test_threshold_mask_no_host_sync_and_inputs_not_modified():
    g = torch.Generator().manual_seed(11)
    xs = [to_cuda(make_tensor((300, 50), torch.float32, "transposed", "ties", g)),
          to_cuda(make_tensor((20_000,), torch.float16, "contiguous", "ties", g)),
          to_cuda(make_tensor((4, 3, 5, 5), torch.float64, "channels_last", "ties", g))]
    ms = [torch.rand(x.shape, device=DEV) > 0.4 for x in xs]
    ms[2] = ms[2].to(torch.float64)
    before = [t.clone() for t in xs + ms]
    t, ties = torch.ops.lthfast.global_threshold(xs, ms, 9_000)
    left = ties.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [torch.ops.lthfast.threshold_mask(x, m, t, left) for x, m in zip(xs, ms)]
        empty = torch.ops.lthfast.threshold_mask(torch.empty(0, 3, device=DEV), None, t, left)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(xs + ms, before))
    assert left.item() == 0 and empty.shape == (0, 3) and empty.dtype == torch.bool
    want = torch.ops.lthfast.global_magnitude_masks(xs, ms, 9_000)
    assert all(torch.equal(o != 0, w) for o, w in zip(outs, want))


def test_threshold_mask_empty_and_negative_budget():
    t = torch.tensor(0.5, dtype=torch.float64, device=DEV)
    left = torch.tensor(3, device=DEV)
    out = torch.ops.lthfast.threshold_mask(torch.empty(0, 4, dtype=torch.float16, device=DEV),
                                           torch.empty(0, 4, dtype=torch.float16, device=DEV), t, left)
    assert out.shape == (0, 4) and out.dtype == torch.float16 and left.item() == 3
    # A negative budget (global_threshold's -1 for k > eligible) cannot be reported
    # without a sync: no tie is pruned and ties_left stays as it is.
    x = torch.tensor([0.5, 0.25, 0.5, 1.0], device=DEV)
    left = torch.tensor(-1, device=DEV)
    out = torch.ops.lthfast.threshold_mask(x, None, t, left)
    assert out.tolist() == [True, False, True, True] and left.item() == -1


def test_threshold_mask_checks_name_the_argument():
    x = torch.randn(4, 3, device=DEV)
    t = torch.tensor(0.5, dtype=torch.float64, device=DEV)
    left = torch.tensor(0, device=DEV)
    op = torch.ops.lthfast.threshold_mask
    with pytest.raises(RuntimeError, match=r"threshold must be a 0-dim float64 tensor.*got Float"):
        op(x, None, t.float(), left)
    with pytest.raises(RuntimeError, match=r"threshold must be a 0-dim float64 tensor.*on cpu"):
        op(x, None, t.cpu(), left)
    with pytest.raises(RuntimeError, match=r"threshold must be a 0-dim float64 tensor.*of shape \[1\]"):
        op(x, None, t.reshape(1), left)
    with pytest.raises(RuntimeError, match=r"ties_left must be a 0-dim int64 tensor.*got Int"):
        op(x, None, t, left.int())
    with pytest.raises(RuntimeError, match=r"ties_left must be a 0-dim int64 tensor.*on cpu"):
        op(x, None, t, left.cpu())
    with pytest.raises(RuntimeError, match=r"masks\[0\] has dtype Half"):
        op(x, torch.ones(4, 3, dtype=torch.float16, device=DEV), t, left)
    with pytest.raises(RuntimeError, match=r"masks\[0\] has shape"):
        op(x, torch.ones(3, 4, dtype=torch.bool, device=DEV), t, left)
    with pytest.raises(RuntimeError, match=r"scores\[0\] has dtype Long"):
        op(torch.zeros(3, dtype=torch.long, device=DEV), None, t, left)
    assert left.item() == 0


def test_threshold_mask_runs_on_the_current_stream():
    g = torch.Generator().manual_seed(12)
    x = make_tensor((500, 300), torch.float32, "transposed", "ties", g)
    n_ties = int((x.abs() == 1.0).sum())
    want_left = torch.tensor(n_ties // 2)
    want = torch.ops.lthfast.threshold_mask(x, None, torch.tensor(1.0, dtype=torch.float64), want_left)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        xc = to_cuda(x)
        t = torch.tensor(1.0, dtype=torch.float64, device=DEV)
        left = torch.tensor(n_ties // 2, device=DEV)
        got = torch.ops.lthfast.threshold_mask(xc, None, t, left)
    s.synchronize()
    assert torch.equal(got.cpu(), want) and left.item() == want_left.item() == 0


def test_opcheck_threshold_mask_cuda():
    for scores, masks, k in _opcheck_cases():
        t, ties = torch.ops.lthfast.global_threshold(scores, masks, k)
        for i, s in enumerate(scores):
            m = masks[i] if masks else None
            torch.library.opcheck(torch.ops.lthfast.threshold_mask, (s, m, t, ties.clone()))
            if m is not None:
                torch.library.opcheck(torch.ops.lthfast.threshold_mask, (s, m.to(s.dtype), t, ties.clone()))
