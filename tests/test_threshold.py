"""The global magnitude threshold kernel (CPU) against the reference and torch."""
import math
import signal
import subprocess
import sys
import zlib

import pytest
import torch
from hypothesis import given, settings

import lthfast
from lthfast import _reference as ref

from _threshold_cases import make_tensor, threshold_problem

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def _assert_masks_equal(got, want, tensors):
    assert len(got) == len(want)
    for i, (g, w, t) in enumerate(zip(got, want, tensors)):
        assert g.dtype == torch.bool, i
        assert g.shape == t.shape, i
        assert torch.equal(g.cpu(), w.cpu()), f"mask {i} differs"


@settings(max_examples=300, deadline=None)
@given(threshold_problem())
def test_masks_match_reference(problem):
    tensors, masks, k = problem
    got = lthfast.global_magnitude_masks(tensors, k, masks=masks)
    want = ref.global_magnitude_masks(tensors, masks or [], k)
    _assert_masks_equal(got, want, tensors)
    # exactly k of the eligible entries are pruned, and nothing outside them
    eligible = masks or [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    assert sum(int((e & ~g).sum()) for e, g in zip(eligible, got)) == k
    assert all(not bool((g & ~e).any()) for e, g in zip(eligible, got))


@settings(max_examples=200, deadline=None)
@given(threshold_problem())
def test_threshold_matches_reference(problem):
    tensors, masks, k = problem
    t, ties = lthfast.global_magnitude_threshold(tensors, k, masks=masks)
    rt, rties = ref.global_threshold(tensors, masks or [], k)
    assert ties == rties
    assert (math.isnan(t) and math.isnan(rt)) or t == rt


@settings(max_examples=100, deadline=None)
@given(threshold_problem())
def test_threshold_describes_the_masks(problem):
    """Entries below the threshold are pruned, plus n_ties entries equal to it."""
    tensors, masks, k = problem
    t, ties = lthfast.global_magnitude_threshold(tensors, k, masks=masks)
    got = lthfast.global_magnitude_masks(tensors, k, masks=masks)
    eligible = masks or [torch.ones_like(x, dtype=torch.bool) for x in tensors]
    below = equal_pruned = 0
    for x, e, g in zip(tensors, eligible, got):
        a = x.detach().abs().double()
        pruned = e & ~g
        if not math.isnan(t):
            assert not bool((a[pruned] > t).any())
            below += int((a[e] < t).sum())
            equal_pruned += int((pruned & (a == t)).sum())
    if not math.isnan(t) and k:
        assert below + ties == k
        assert equal_pruned == ties


def test_masks_keep_layout():
    w = torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    t = torch.randn(30, 20).t()
    sliced = torch.randn(40, 20)[::2]
    masks = lthfast.global_magnitude_masks([w, t, sliced], 0.5)
    assert masks[0].stride() == w.stride()
    assert masks[1].stride() == t.stride()
    assert masks[2].is_contiguous()


def test_no_ties_equals_torch_topk():
    """Without ties the pruned set is exactly torch's (topk of |w| over the concatenation)."""
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 32, 3, 3), (1000, 10), (777,)]
    total = sum(math.prod(s) for s in sizes)
    distinct = (torch.randperm(total, generator=g) + 1).float() * 1e-3  # no ties
    distinct *= torch.randint(0, 2, (total,), generator=g) * 2 - 1
    tensors = list(distinct.split([math.prod(s) for s in sizes]))
    tensors = [t.reshape(s) for t, s in zip(tensors, sizes)]
    flat = torch.cat([t.reshape(-1) for t in tensors]).abs()
    assert flat.unique().numel() == flat.numel()
    for amount in [1, 0.2, 0.5, 0.9, 0.999]:
        k = amount if isinstance(amount, int) else round(amount * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.topk(flat, k, largest=False).indices] = False
        got = torch.cat([m.reshape(-1) for m in lthfast.global_magnitude_masks(tensors, amount)])
        assert torch.equal(got, keep)


def test_ties_pruned_in_tensor_then_row_major_order():
    a = torch.ones(2, 3).t()  # transposed: memory order differs from row-major
    b = torch.ones(4)
    masks = lthfast.global_magnitude_masks([a, b], 5)
    assert masks[0].tolist() == [[False, False], [False, False], [False, True]]
    assert masks[1].tolist() == [True, True, True, True]
    masks = lthfast.global_magnitude_masks([a, b], 8)
    assert masks[0].tolist() == [[False, False], [False, False], [False, False]]
    assert masks[1].tolist() == [False, False, True, True]
    masks = lthfast.global_magnitude_masks([a, b], 2)
    assert masks[0].tolist() == [[False, False], [True, True], [True, True]]


def test_nan_ranks_above_inf():
    x = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf"), 0.5])
    # |inf| == |-inf|: a tie, broken by index
    assert lthfast.global_magnitude_masks([x], 3)[0].tolist() == [True, False, False, True, False]
    assert lthfast.global_magnitude_masks([x], 4)[0].tolist() == [True, False, False, False, False]
    assert lthfast.global_magnitude_masks([x], 5)[0].tolist() == [False] * 5
    t, ties = lthfast.global_magnitude_threshold([x], 5)
    assert math.isnan(t) and ties == 1


def test_amount_float_rounds_half_to_even_on_remaining():
    x = torch.arange(1.0, 11.0)
    masks = [x > 4]  # 6 remaining
    m = lthfast.global_magnitude_masks([x], 0.25, masks=masks)[0]  # round(1.5) = 2
    assert (~m & masks[0]).sum() == 2
    m = lthfast.global_magnitude_masks([x], 0.75, masks=masks)[0]  # round(4.5) = 4
    assert (~m & masks[0]).sum() == 4
    assert not bool((m & ~masks[0]).any())


def test_importance_replaces_magnitude():
    w = torch.tensor([10.0, 1.0, 5.0, 2.0])
    imp = torch.tensor([0.1, 9.0, 0.3, 8.0])
    m = lthfast.global_magnitude_masks([w], 2, importance=[imp])[0]
    assert m.tolist() == [False, True, False, True]


def test_mixed_dtypes_share_one_threshold():
    a = torch.tensor([0.1, 0.3], dtype=torch.float16)
    b = torch.tensor([0.2, 0.4], dtype=torch.float64)
    c = torch.tensor([0.25], dtype=torch.bfloat16)
    m = lthfast.global_magnitude_masks([a, b, c], 3)
    want = ref.global_magnitude_masks([a, b, c], [], 3)
    _assert_masks_equal(m, want, [a, b, c])


def test_empty_tensors_and_k_zero():
    e = torch.empty(0, 5)
    x = torch.randn(7)
    m = lthfast.global_magnitude_masks([e, x], 0)
    assert m[0].shape == (0, 5) and m[1].all()
    assert lthfast.global_magnitude_threshold([e, x], 0) == (0.0, 0)
    m = lthfast.global_magnitude_masks([e], 0.5)
    assert m[0].shape == (0, 5)


def test_inputs_are_not_modified():
    x = torch.randn(50)
    mask = torch.rand(50) > 0.5
    x0, mask0 = x.clone(), mask.clone()
    lthfast.global_magnitude_masks([x], 0.5, masks=[mask])
    assert torch.equal(x, x0) and torch.equal(mask, mask0)


def test_many_threads_and_chunks_agree():
    """Several chunks per tensor and per thread (chunk = 65536 entries)."""
    g = torch.Generator().manual_seed(3)
    tensors = [make_tensor((300_000,), torch.float32, "contiguous", "ties", g),
               make_tensor((64, 64, 9, 9), torch.bfloat16, "channels_last", "ties", g)]
    for k in [1, 123_457, 400_000]:
        _assert_masks_equal(lthfast.global_magnitude_masks(tensors, k),
                            ref.global_magnitude_masks(tensors, [], k), tensors)


_HUGE_CHECK = """
import torch, lthfast
n = 2**31 + 5
x = torch.ones(n, dtype=torch.bfloat16)
x[-3:] = 0.5
x[:2] = 0.25
m = lthfast.global_magnitude_masks([x], 6)[0]
assert not m[:2].any() and not m[-3:].any() and not bool(m[2]) and bool(m[3])
assert int(m.sum()) == n - 6
"""


@pytest.mark.slow
def test_more_than_2_pow_31_entries():
    # In a fresh process: the heap left by earlier tests must not decide whether
    # ~7 GB more fit, and an out-of-memory kill must not take the whole run down.
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                avail = int(line.split()[1]) * 1024
    n = 2**31 + 5
    if avail < 3 * n * 2:
        pytest.skip("not enough memory for a 2^31-entry tensor")
    proc = subprocess.run([sys.executable, "-c", _HUGE_CHECK], capture_output=True, text=True)
    if proc.returncode == -signal.SIGKILL:
        pytest.skip("the 2^31-entry check was killed (out of memory on this machine)")
    assert proc.returncode == 0, proc.stderr[-2000:]


@settings(max_examples=150, deadline=None)
@given(threshold_problem())
def test_one_tensor_at_a_time_equals_all_at_once(problem):
    tensors, masks, k = problem
    want = ref.global_magnitude_masks(tensors, masks or [], k)
    got = list(lthfast.magnitude.iter_global_magnitude_masks(tensors, k, masks=masks))
    _assert_masks_equal(got, want, tensors)
    if masks is not None:  # float masks of the tensor's dtype: 1.0 = kept, same selection
        fmasks = [m.to(t.dtype) for m, t in zip(masks, tensors)]
        got = list(lthfast.magnitude.iter_global_magnitude_masks(tensors, k, masks=fmasks))
        for g, w, t in zip(got, want, tensors):
            assert g.dtype == t.dtype
            assert torch.equal(g != 0, w)
        got = lthfast.global_magnitude_masks(tensors, k, masks=fmasks)
        _assert_masks_equal(got, want, tensors)


def test_threshold_mask_reference_agrees():
    g = torch.Generator().manual_seed(1)
    x = make_tensor((6, 5, 3, 3), torch.float32, "channels_last", "ties", g)
    m = torch.rand(x.shape, generator=g) > 0.3
    t, ties = lthfast.global_magnitude_threshold([x], 100, masks=[m])
    for left in [0, 1, ties, ties + 5]:
        a = torch.tensor(left)
        b = torch.tensor(left)
        got = torch.ops.lthfast.threshold_mask(x, m, torch.tensor(t, dtype=torch.float64), a)
        want = ref.threshold_mask(x, m, t, b)
        assert torch.equal(got, want) and int(a) == int(b)
        assert got.stride() == x.stride()


LARGE = 2_600_000  # above the size where the CPU kernel samples a key range first


@pytest.mark.parametrize("values", ["normal", "ties", "special"])
@pytest.mark.parametrize("case", ["fp32", "fp16", "mixed16", "fp64", "channels_last", "masked",
                                  "float_mask"])
def test_large_inputs_sampled_range_path(values, case):
    """Large inputs take the sampled-range path (or fall back to radix when the
    sample misses / a sub-range is too full, e.g. heavy ties): same masks. fp16 in
    row-major tensors: many ties straddle the threshold and are resolved from the
    collected keys alone; with a transposed tensor (mixed16) by walking the masks."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((values, case)).encode()))
    n = LARGE
    if case == "fp32":
        tensors = [make_tensor((n // 2,), torch.float32, "contiguous", values, g),
                   make_tensor((n // 2,), torch.float32, "contiguous", values, g)]
    elif case == "fp16":
        tensors = [make_tensor((n // 2,), torch.float16, "contiguous", values, g),
                   make_tensor((n // 4, 2), torch.float16, "contiguous", values, g)]
    elif case == "mixed16":
        tensors = [make_tensor((n // 2,), torch.float16, "contiguous", values, g),
                   make_tensor((n // 4, 2), torch.bfloat16, "transposed", values, g),
                   make_tensor((1000,), torch.float32, "contiguous", values, g)]
    elif case == "fp64":
        tensors = [make_tensor((n // 2,), torch.float64, "contiguous", values, g),
                   make_tensor((n // 2,), torch.float32, "contiguous", values, g)]
    else:
        tensors = [make_tensor((n // 144, 16, 3, 3), torch.float32, "channels_last", values, g),
                   make_tensor((n // 2,), torch.float32, "contiguous", values, g)]
    masks = None
    if case in ("masked", "float_mask"):
        masks = [torch.rand(t.shape, generator=g) > 0.3 for t in tensors]
        if case == "float_mask":
            masks = [m.to(t.dtype) for m, t in zip(masks, tensors)]
    total = sum(int(torch.count_nonzero(m)) for m in masks) if masks else sum(t.numel() for t in tensors)
    for k in [1, total // 5, total // 2 + 1, total - 3]:
        got = lthfast.global_magnitude_masks(tensors, k, masks=masks)
        bool_masks = [(m != 0) for m in masks] if masks else []
        want = ref.global_magnitude_masks(tensors, bool_masks, k)
        _assert_masks_equal(got, want, tensors)
        t, ties = lthfast.global_magnitude_threshold(tensors, k, masks=masks)
        rt, rties = ref.global_threshold(tensors, bool_masks, k)
        assert ties == rties and ((math.isnan(t) and math.isnan(rt)) or t == rt)
    got = list(lthfast.magnitude.iter_global_magnitude_masks(tensors, 0.3, masks=masks))
    want = ref.global_magnitude_masks(tensors, [(m != 0) for m in masks] if masks else [],
                                      round(0.3 * total))
    for g, w in zip(got, want):
        assert torch.equal(g != 0, w)


@pytest.fixture(params=["avx2", "base"])
def range_isa(request):
    """Runs the test with the range pass's AVX2 blocks and with the 4-lane ones (where
    the CPU has AVX2; the compiled kernels pick AVX2 by themselves)."""
    if not lthfast._ops.available():
        pytest.skip("lthfast._C not built")
    isa = lthfast._ops._C._threshold_cpu_isa
    best = isa("avx2")
    if isa(request.param) != request.param:
        pytest.skip(f"this CPU runs the range pass with {best!r} only")
    yield request.param
    isa(best)


@pytest.mark.parametrize("values", ["normal", "special"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "float_odd", "bits"])
def test_sampled_range_vector_blocks(values, mask_kind, range_isa):
    """The fp32 range pass runs whole blocks of 16 in explicit vectors (8-lane AVX2 or
    4-lane) and the rest (a chunk's last entries) one by one: sizes that leave tails in
    every chunk, and float masks whose entries are -0.0 (not eligible), NaN and 2.0
    (eligible, as `mask != 0` says), against the reference, for the threshold and the
    masks."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((values, mask_kind)).encode()))
    tensors = [make_tensor((1_300_007,), torch.float32, "contiguous", values, g),
               make_tensor((3, 433_331), torch.float32, "contiguous", values, g),
               make_tensor((65_541,), torch.float32, "contiguous", values, g)]
    masks = bool_masks = None
    if mask_kind != "none":
        bool_masks = [torch.rand(t.shape, generator=g) > 0.3 for t in tensors]
        masks = bool_masks
        if mask_kind.startswith("float"):
            masks = [m.float() for m in bool_masks]
        if mask_kind == "float_odd":
            for m in masks:
                flat = m.view(-1)
                pick = torch.randint(0, flat.numel(), (flat.numel() // 7,), generator=g)
                odd = torch.tensor([-0.0, float("nan"), 2.0, 0.0])[
                    torch.randint(0, 4, (pick.numel(),), generator=g)]
                flat[pick] = odd
            bool_masks = [m != 0 for m in masks]
        if mask_kind == "bits":
            from lthfast.bitmask import pack_bits
            masks = [pack_bits(m) for m in bool_masks]
    ref_masks = bool_masks or []
    total = sum(int(m.sum()) for m in bool_masks) if bool_masks else sum(t.numel() for t in tensors)
    for k in [1, total // 5, total // 2 + 1, total - 3]:
        if mask_kind == "bits":
            got = list(torch.ops.lthfast.global_magnitude_masks(tensors, masks, k))
            t, ties = (float(v) for v in torch.ops.lthfast.global_threshold(tensors, masks, k))
        else:
            got = lthfast.global_magnitude_masks(tensors, k, masks=masks)
            t, ties = lthfast.global_magnitude_threshold(tensors, k, masks=masks)
        _assert_masks_equal(got, ref.global_magnitude_masks(tensors, ref_masks, k), tensors)
        rt, rties = ref.global_threshold(tensors, ref_masks, k)
        assert ties == rties and ((math.isnan(t) and math.isnan(rt)) or t == rt)


@pytest.mark.parametrize("values", ["normal", "ties", "special"])
@pytest.mark.parametrize("mask_kind", ["none", "bits"])
@pytest.mark.parametrize("product", ["none", "new", "over_score"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("shape", [(5 * 65536 + 2048 * 3 + 13,), (40 * 2048,), (5,),
                                   (64, 33, 3, 3), "transposed"])
def test_fp32_mask_pass_vector_blocks(values, mask_kind, product, aligned, shape, range_isa):
    """The fp32 mask pass of threshold_mask_into runs 8-lane AVX2 blocks of 2048 entries
    with streaming stores where the CPU has AVX2 (where `out` is 32-byte aligned), and
    defers the product of the blocks that hold ties until they are decided: against the
    reference, mask and product bit for bit, with ties spread over many blocks and
    pruned only in part, tails in the last block or a tensor shorter than one group,
    whole blocks only, 4-d scores, a permuted score (which takes the generic pass), and
    NaN / Inf / -0.0 keys."""
    from lthfast.bitmask import pack_bits
    g = torch.Generator().manual_seed(zlib.crc32(repr((values, mask_kind, product, aligned,
                                                       shape)).encode()))
    score = make_tensor((32, 48) if shape == "transposed" else shape, torch.float32,
                        "contiguous", values, g)
    if shape == "transposed":
        score = score.t()
        if mask_kind == "bits":
            pytest.skip("packed bits go with row-major scores only")
    n = score.numel()
    orig = torch.randn(score.shape, generator=g)
    orig.view(-1)[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    keep = torch.rand(score.shape, generator=g) > 0.3
    mask = pack_bits(keep) if mask_kind == "bits" else None
    eligible = keep if mask is not None else torch.ones_like(keep)
    n_eligible = int(eligible.sum())
    for k in sorted({1, n_eligible // 3, max(n_eligible - 5, 1)}):
        t, ties = torch.ops.lthfast.global_threshold([score], [] if mask is None else [mask], k)
        want, want_left = torch.full(score.shape, 7.0), ties.clone()
        ref.threshold_mask_into(score, None if mask is None else keep, t, want_left, want)
        base = torch.full((n + 8,), 7.0)  # (torch's storage is 64-byte aligned)
        out = (base[:n] if aligned else base[1:n + 1]).view(score.t().shape if shape == "transposed"
                                                            else score.shape)
        if shape == "transposed":
            out = out.t()  # the score's strides
        s = score.clone(memory_format=torch.preserve_format)
        args = ()
        if product == "new":
            args = (orig, torch.empty_like(s))
        elif product == "over_score":
            args = (orig, s)
        left = ties.clone()
        torch.ops.lthfast.threshold_mask_into(s, mask, t, left, out, *args)
        assert torch.equal(out, want), (k, int(ties))
        assert int(left) == int(want_left)
        if args:
            assert torch.equal(args[1].view(torch.int32), (want * orig).view(torch.int32))
        if product != "over_score":
            assert torch.equal(s.view(torch.int32), score.view(torch.int32))  # the score is only read


@pytest.mark.parametrize("seed", range(6))
def test_small_and_radix_paths_agree_at_their_boundary(seed):
    """Inputs of up to 2^15 entries take the gather + nth_element path, larger ones the
    histogram passes: both sides of the boundary, with masks, ties, specials, mixed dtypes
    (fp64 makes the keys 64-bit) and layouts, against the reference."""
    g = torch.Generator().manual_seed(seed)
    values = ["ties", "special", "normal"][seed % 3]
    for total in (1 << 15, (1 << 15) + 1):
        a = make_tensor((32, 8, 4, 4), torch.float16, "channels_last", values, g)
        b = make_tensor((total - a.numel() - 7, ), torch.float64 if seed % 2 else torch.float32,
                        "sliced", values, g)
        c = make_tensor((7,), torch.bfloat16, "contiguous", values, g)
        tensors = [a, b, c]
        masks = [torch.rand(t.shape, generator=g) > 0.3 for t in tensors] if seed >= 2 else []
        n = sum(int(m.sum()) for m in masks) if masks else total
        for k in (1, n // 3, n):
            _assert_masks_equal(lthfast.global_magnitude_masks(tensors, k, masks=masks or None),
                                ref.global_magnitude_masks(tensors, masks, k), tensors)
            got = lthfast.global_magnitude_threshold(tensors, k, masks=masks or None)
            want = ref.global_threshold(tensors, masks, k)
            assert (got[0] == want[0] or (math.isnan(got[0]) and math.isnan(want[0]))) \
                and got[1] == want[1], (total, k, got, want)
        with pytest.raises(RuntimeError, match="larger than the number of unpruned entries"):
            torch.ops.lthfast.global_threshold(tensors, masks, n + 1)
