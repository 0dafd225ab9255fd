"""Randomized differential test of the global magnitude API and the bitmask ops.

Every case is drawn from a seeded numpy generator and checked three ways: the
compiled kernels (through the public API), the pure-PyTorch reference, and a
brute-force oracle written here from the numerical policy alone: sort every
eligible entry by the key (NaN last, |w|, tensor index, row-major index) and
prune the first k. Cases mix float16/bfloat16/float32/float64 in one call, 0-d,
empty, 1-element and long tensors, dense non-row-major layouts (channels_last,
permuted), non-dense views (stepped slices, storage offsets, expanded), bool and
float masks (0/1 and other values: nonzero = kept, NaN included, -0.0 not),
importance scores, heavy ties, +-0.0, NaN/+-Inf, subnormals, and every kind of
amount. Also: repeated rounds, LTHFAST_REFERENCE=1 mode, inputs never modified,
output shapes/strides, clear errors, opcheck and torch.compile on fresh inputs.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import lthfast
from lthfast import _ops, bitmask, magnitude
from lthfast import _reference as ref
from lthfast import _reference_bitmask as ref_bits

pytestmark = pytest.mark.skipif(not _ops.available(), reason="lthfast._C not built")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# smallest positive subnormal of each dtype
TINY = {torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -133, torch.float32: 2.0 ** -149,
        torch.float64: 2.0 ** -1074}
BIG = {torch.float16: 65504.0, torch.bfloat16: 3.0e38, torch.float32: 3.0e38,
       torch.float64: 1.0e300}
VALUE_KINDS = ["normal", "ints", "equal", "zeros", "special", "subnormal"]
LAYOUTS = ["contiguous", "channels_last", "permuted", "stepped", "offset", "expanded",
           "size1_strides"]


# ---------------------------------------------------------------- generators


def _values(rng, n, dtype, kind):
    """n float64 values, all exactly representable in dtype."""
    sign = rng.choice([-1.0, 1.0], n)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "ints":  # heavy ties; 0 * -1 gives -0.0
        x = rng.integers(0, 5, n) * sign
    elif kind == "equal":
        x = np.full(n, rng.choice([0.5, 3.0, 1e-3])) * sign
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.7, 0.0, rng.standard_normal(n)) * sign
    elif kind == "special":
        x = rng.standard_normal(n)
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, TINY[dtype], -2 * TINY[dtype],
                             BIG[dtype], -BIG[dtype]])
        pick = rng.random(n) < 0.3
        x[pick] = rng.choice(specials, int(pick.sum()))
    else:  # subnormal: small multiples of the smallest subnormal, many ties
        x = rng.integers(0, 6, n) * TINY[dtype] * sign
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dtype)


def _layout(x, kind, rng):
    """A tensor equal to x (logically) with another memory layout; `expanded` repeats
    x's first slice along dim 0 (and so changes the values)."""
    if kind == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "permuted" and x.dim() >= 2:
        perm = list(rng.permutation(x.dim()))
        inv = list(np.argsort(perm))
        return x.permute(perm).contiguous().permute(inv)
    if kind == "stepped" and x.dim() >= 1:
        d = int(rng.integers(0, x.dim()))
        step = int(rng.integers(2, 4))
        shape = list(x.shape)
        shape[d] *= step
        big = torch.full(shape, float("nan"), dtype=x.dtype)  # the gaps must be ignored
        idx = [slice(None)] * x.dim()
        idx[d] = slice(None, None, step)
        big[tuple(idx)] = x
        return big[tuple(idx)]
    if kind == "offset":
        big = torch.full((x.numel() + 5,), float("nan"), dtype=x.dtype)
        big[3:3 + x.numel()] = x.reshape(-1)
        return big[3:3 + x.numel()].view(x.shape)
    if kind == "expanded" and x.dim() >= 1 and x.shape[0] > 0:
        return x[:1].expand(x.shape)
    ones = [d for d in range(x.dim()) if x.shape[d] == 1]
    if kind == "size1_strides" and ones:  # a size-1 dim with an odd stride: dense, row-major
        y = x.contiguous()
        strides = list(y.stride())
        strides[ones[0]] = 7
        return y.as_strided(y.shape, strides)
    return x


def _shape(rng):
    r = rng.random()
    if r < 0.08:
        return ()
    if r < 0.14:
        return [(0,), (3, 0, 2), (0, 4)][int(rng.integers(0, 3))]
    if r < 0.2:
        return (1,)
    if r < 0.5:
        return (int(rng.integers(2, 600)),)
    if r < 0.75:
        return (int(rng.integers(1, 25)), int(rng.integers(1, 25)))
    return tuple(int(v) for v in rng.integers(1, 6, 4))


def _mask_for(x, kind, rng):
    p = rng.choice([0.0, 0.3, 0.8, 1.0])
    keep = torch.from_numpy(np.asarray(rng.random(tuple(x.shape)) >= p))
    if kind == "bool":
        return keep
    if kind == "float01":
        return keep.to(x.dtype)
    if kind == "float_other":  # nonzero = kept: 0.5, -1, 2, NaN, Inf kept; +-0.0 not
        vals = np.array([0.0, -0.0, 1.0, 0.5, -1.0, 2.0, np.nan, np.inf])
        m = torch.from_numpy(np.asarray(rng.choice(vals, tuple(x.shape)))).to(x.dtype)
        return m.reshape(x.shape)
    if kind == "bool_permuted" and x.dim() >= 2:
        return keep.t().contiguous().t() if x.dim() == 2 else keep.permute(
            *reversed(range(x.dim()))).contiguous().permute(*reversed(range(x.dim())))
    if kind == "bool_expanded" and x.dim() >= 1 and x.shape[0] > 0:
        return keep[:1].expand(x.shape)
    return keep


def _problem(rng, n_tensors=None, shapes=None):
    """(tensors, masks or None, importance or None, amount)."""
    n_tensors = n_tensors or int(rng.integers(1, 7))
    kind = rng.choice(VALUE_KINDS)
    wide = rng.random() < 0.4
    tensors = []
    for i in range(n_tensors):
        shape = shapes[i] if shapes else _shape(rng)
        dtype = DTYPES[int(rng.integers(0, 4 if wide else 3))]
        v = _values(rng, math.prod(shape), dtype, kind if rng.random() < 0.8 else
                    rng.choice(VALUE_KINDS)).reshape(shape)
        tensors.append(_layout(v, rng.choice(LAYOUTS), rng))
    masks = None
    if rng.random() < 0.6:
        mk = rng.choice(["bool", "float01", "float_other", "bool_permuted", "bool_expanded"])
        masks = [_mask_for(t, mk, rng) for t in tensors]
    importance = None
    if rng.random() < 0.25:
        importance = []
        for t in tensors:
            dt = DTYPES[int(rng.integers(0, 4))]
            s = _values(rng, t.numel(), dt, rng.choice(VALUE_KINDS)).reshape(t.shape)
            importance.append(_layout(s, rng.choice(LAYOUTS), rng))
    n = _eligible_count(tensors, masks)
    amount = _amount(rng, n)
    return tensors, masks, importance, amount


def _amount(rng, n):
    r = rng.random()
    if r < 0.3:
        return int(rng.integers(0, n + 1))
    if r < 0.4:
        return [0, n, min(1, n), max(0, n - 1)][int(rng.integers(0, 4))]
    if r < 0.5:
        return [0.0, 1.0][int(rng.integers(0, 2))]
    if r < 0.6:
        return 0.5  # a half when n is odd: round half to even
    if r < 0.7 and n:
        return (int(rng.integers(0, n)) + 0.5) / n  # x.5 counts, often exactly
    return float(rng.random())


def _eligible(tensors, masks):
    if masks is None:
        return [torch.ones(t.shape, dtype=torch.bool) for t in tensors]
    return [m != 0 for m in masks]


def _eligible_count(tensors, masks):
    return sum(int(e.sum()) for e in _eligible(tensors, masks))


def _k_of(amount, n):
    return amount if isinstance(amount, int) else round(amount * n)


# ------------------------------------------------------------------- oracle


def oracle(scores, eligible, k):
    """(keep masks, threshold, n_ties) straight from the policy: stable order by
    (NaN last, |x| compared exactly, tensor index, row-major index), first k pruned."""
    vals = [s.detach().to(torch.float64).reshape(-1).numpy() for s in scores]
    a = np.abs(np.concatenate(vals)) if vals else np.zeros(0)
    isnan = np.isnan(a)
    a = np.where(isnan, 0.0, a)
    elig = np.concatenate([e.reshape(-1).numpy() for e in eligible])
    idx = np.nonzero(elig)[0]
    assert 0 <= k <= idx.size
    order = np.lexsort((idx, a[idx], isnan[idx]))  # last key is the primary one
    pruned = idx[order[:k]]
    keep = elig.copy()
    keep[pruned] = False
    out, start = [], 0
    for s in scores:
        out.append(torch.from_numpy(keep[start:start + s.numel()].copy()).reshape(s.shape))
        start += s.numel()
    if k == 0:
        return out, 0.0, 0
    last = pruned[-1]
    t = math.nan if isnan[last] else float(a[last])
    same = (isnan[pruned] == isnan[last]) & (a[pruned] == a[last])
    return out, t, int(same.sum())


# ------------------------------------------------------------------ checks


def _bits(t):
    """A bitwise snapshot (NaN-safe) of a tensor's logical values and its layout."""
    return (t.detach().clone().reshape(-1).view(torch.uint8 if t.dtype == torch.bool else
                                                  {2: torch.int16, 4: torch.int32,
                                                   8: torch.int64}[t.element_size()]),
            t.shape, t.stride(), t.storage_offset())


def _same_bits(a, b):
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


def _same_float(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def _dense(x):
    """Non-overlapping and dense: some permutation of the dims is contiguous."""
    dims = sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1)
    expect = 1
    for st, sz in dims:
        if st != expect:
            return False
        expect *= sz
    return True


def _check_layout(out, x, dtype=torch.bool):
    assert out.dtype == dtype and out.shape == x.shape
    if _dense(x):
        assert out.stride() == x.stride(), (out.stride(), x.stride())
    else:
        assert out.stride() == torch.empty_like(x, dtype=dtype).stride()


def check_problem(tensors, masks, importance, amount, *, reference_too=True):
    snapshot = [_bits(t) for t in tensors + (masks or []) + (importance or [])]
    scores = importance if importance is not None else tensors
    eligible = _eligible(tensors, masks)
    n = sum(int(e.sum()) for e in eligible)
    k = _k_of(amount, n)
    want, want_t, want_ties = oracle(scores, eligible, k)

    got = lthfast.global_magnitude_masks(tensors, amount, masks=masks, importance=importance)
    assert len(got) == len(tensors)
    for i, (g, w, x) in enumerate(zip(got, want, tensors)):
        _check_layout(g, x)
        assert torch.equal(g, w), f"mask {i} differs from the oracle"
    assert sum(int((e & ~g).sum()) for e, g in zip(eligible, got)) == k
    if reference_too:
        rgot = ref.global_magnitude_masks(scores, eligible if masks is not None else [], k)
        for i, (g, w) in enumerate(zip(rgot, want)):
            assert torch.equal(g, w), f"reference mask {i} differs from the oracle"

    # the threshold of the same selection (bool masks: the API takes masks of the
    # tensors' dtype, which need not be the scores')
    tmasks = masks if importance is None else (None if masks is None else eligible)
    t, ties = lthfast.global_magnitude_threshold(scores, k, masks=tmasks)
    assert _same_float(t, want_t) and ties == want_ties, ((t, ties), (want_t, want_ties))
    if reference_too:
        rt, rties = ref.global_threshold(scores, eligible if masks is not None else [], k)
        assert _same_float(rt, want_t) and rties == want_ties

    # one tensor at a time: the same masks, in the masks' dtype (bool without masks)
    it = list(magnitude.iter_global_magnitude_masks(tensors, amount, masks=masks,
                                                    importance=importance))
    for i, (g, w, x) in enumerate(zip(it, want, tensors)):
        _check_layout(g, x, torch.bool if masks is None else masks[i].dtype)
        assert torch.equal(g != 0, w), f"iterated mask {i} differs from the oracle"
        assert bool(((g == 0) | (g == 1)).all())

    after = [_bits(t) for t in tensors + (masks or []) + (importance or [])]
    assert all(_same_bits(a, b) for a, b in zip(snapshot, after)), "an input was modified"
    return got


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", range(20))
def test_random_problems_match_oracle_and_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        check_problem(*_problem(rng))


def test_sampled_range_path_matches_oracle():
    """> 8 * 2^18 entries in all (the CPU kernel samples a key range first), one
    1-D tensor far above 2^18, mixed dtypes and layouts, masks and heavy ties."""
    rng = np.random.default_rng(1234)
    shapes = [(1_500_000,), (700, 600), (40, 32, 13, 13), (333,)]
    layouts = ["contiguous", "permuted", "channels_last", "stepped"]
    for case, kind in enumerate(["normal", "ints", "special"]):
        dtypes = [torch.float32, torch.bfloat16, torch.float16,
                  torch.float64 if case == 2 else torch.float32]
        tensors = [_layout(_values(rng, math.prod(s), d, kind).reshape(s), lay, rng)
                   for s, d, lay in zip(shapes, dtypes, layouts)]
        assert sum(t.numel() for t in tensors) > 8 * 2 ** 18
        masks = None
        if case == 1:
            masks = [_mask_for(t, "bool", rng) for t in tensors]
        elif case == 2:
            masks = [_mask_for(t, "float01", rng) for t in tensors]
        n = _eligible_count(tensors, masks)
        amounts = [[0.2, n // 2 + 1], [0.5, max(1, n // 3)], [0.8, (n // 2 + 0.5) / max(n, 1)]][case]
        for amount in amounts:
            check_problem(tensors, masks, None, amount, reference_too=(case == 0))


@pytest.mark.parametrize("mask_kind", ["bool", "float01"])
def test_repeated_rounds(mask_kind):
    """Each round prunes round(0.2 * remaining) of what the last one kept; the last
    rounds prune everything, then nothing is left (k = 0 of 0)."""
    rng = np.random.default_rng(7)
    tensors = [_layout(_values(rng, 4 * 3 * 5 * 5, torch.float32, "ints").reshape(4, 3, 5, 5),
                       "channels_last", rng),
               _values(rng, 700, torch.bfloat16, "normal"),
               _layout(_values(rng, 30 * 20, torch.float64, "zeros").reshape(30, 20), "permuted", rng)]
    masks = None
    for amount in [0.2, 0.2, 0.2, 0.5, "all", 0.3, 0]:
        n = _eligible_count(tensors, masks)
        amount = n if amount == "all" else amount
        got = check_problem(tensors, masks, None, amount)
        masks = got if mask_kind == "bool" else [g.to(t.dtype) for g, t in zip(got, tensors)]
        assert _eligible_count(tensors, masks) == n - _k_of(amount, n)
    assert _eligible_count(tensors, masks) == 0


def test_half_to_even_rounding_of_amount():
    x = torch.arange(1.0, 12.0)  # 11 entries
    for amount, k in [(0.5, 6), (1.5 / 11, 2), (2.5 / 11, 2), (3.5 / 11, 4), (0.5 / 11, 0)]:
        assert round(amount * 11) == k
        m = lthfast.global_magnitude_masks([x], amount)[0]
        assert int((~m).sum()) == k and not bool(m[:k].any()) and bool(m[k:].all())


def test_reference_mode(monkeypatch):
    """LTHFAST_REFERENCE=1 without the compiled module: the same masks, thresholds,
    dtypes and strides as the kernels."""
    rng = np.random.default_rng(99)
    problems = [_problem(rng) for _ in range(60)]
    compiled = [(lthfast.global_magnitude_masks(t, a, masks=m, importance=i),
                 list(magnitude.iter_global_magnitude_masks(t, a, masks=m, importance=i)))
                for t, m, i, a in problems]
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    assert _ops.use_reference()
    for (t, m, i, a), (want, want_it) in zip(problems, compiled):
        got = check_problem(t, m, i, a, reference_too=False)
        for g, w in zip(got, want):
            assert torch.equal(g, w) and g.stride() == w.stride()
        got_it = list(magnitude.iter_global_magnitude_masks(t, a, masks=m, importance=i))
        for g, w in zip(got_it, want_it):
            assert g.dtype == w.dtype and torch.equal(g, w) and g.stride() == w.stride()


def test_no_ties_equals_torch_prune():
    """Without ties (and no NaN) the masks are torch.nn.utils.prune's."""
    import torch.nn.utils.prune as tprune
    rng = np.random.default_rng(5)
    for _ in range(10):
        shapes = [_shape(rng) for _ in range(3)]
        total = sum(math.prod(s) for s in shapes)
        vals = (rng.permutation(total) + 1.0) * rng.choice([-1.0, 1.0], total) / 8
        parts = np.split(vals, np.cumsum([math.prod(s) for s in shapes])[:-1])
        tensors = [torch.from_numpy(p.copy()).float().reshape(s) for p, s in zip(parts, shapes)]
        amount = float(rng.random())
        mods = []
        for t in tensors:
            mod = torch.nn.Module()
            mod.weight = torch.nn.Parameter(t.clone())
            mods.append(mod)
        tprune.global_unstructured([(m, "weight") for m in mods], tprune.L1Unstructured,
                                   amount=amount)
        got = lthfast.global_magnitude_masks(tensors, amount)
        for g, mod in zip(got, mods):
            assert torch.equal(g, mod.weight_mask.bool())


# -------------------------------------------------------- regression tests


def test_importance_of_another_dtype_with_float_masks():
    """masks in the weights' float dtype (as documented) with importance scores of
    another dtype: the kernels only take bool or the score's dtype."""
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(4, 3, generator=g), torch.randn(9, generator=g, dtype=torch.float16)]
    imp = [torch.rand(4, 3, generator=g, dtype=torch.float64), torch.rand(9, generator=g)]
    fm = [(torch.rand(4, 3, generator=g) > 0.3).float(), (torch.rand(9, generator=g) > 0.3).half()]
    bm = [m != 0 for m in fm]
    want = lthfast.global_magnitude_masks(w, 0.5, masks=bm, importance=imp)
    got = lthfast.global_magnitude_masks(w, 0.5, masks=fm, importance=imp)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    it = list(magnitude.iter_global_magnitude_masks(w, 0.5, masks=fm, importance=imp))
    assert [m.dtype for m in it] == [torch.float32, torch.float16]
    assert all(torch.equal(a != 0, b) for a, b in zip(it, want))
    it = list(magnitude.iter_global_magnitude_masks(w, 0.5, masks=fm, importance=imp,
                                                    dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(it, want))


def test_reference_mode_keeps_strides(monkeypatch):
    w = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    t = torch.randn(5, 7).t()
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    masks = lthfast.global_magnitude_masks([w, t], 0.5)
    assert masks[0].stride() == w.stride() and masks[1].stride() == t.stride()
    fm = [m.float() for m in masks]
    it = list(magnitude.iter_global_magnitude_masks([w, t], 0.5, masks=fm))
    assert it[0].stride() == w.stride() and it[1].stride() == t.stride()


def test_numpy_float32_amount_rounds_like_torch_prune():
    """round(amount * n) in the amount's own type, as torch.nn.utils.prune: float32(0.7)
    * 5 is 3.5 in float32 (-> 4), 3.4999999 in float64 (-> 3)."""
    import torch.nn.utils.prune as tprune
    w = torch.arange(1.0, 6.0)
    for amount in [np.float32(0.7), np.float32(0.3), np.float64(0.7), 0.7]:
        mod = torch.nn.Module()
        mod.weight = torch.nn.Parameter(w.clone())
        tprune.global_unstructured([(mod, "weight")], tprune.L1Unstructured, amount=amount)
        want = mod.weight_mask.bool()
        assert torch.equal(lthfast.global_magnitude_masks([w], amount)[0], want), amount
        assert torch.equal(next(magnitude.iter_global_magnitude_masks([w], amount)), want)
    assert magnitude.amount_to_count(np.float32(0.7), 5) == 4
    assert magnitude.amount_to_count(np.float32(1.0), 2 ** 24 + 3) == 2 ** 24 + 3  # clamped


def test_mask_counts_of_one_tensor_counts_the_tensor():
    m = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, float("nan")]])
    assert magnitude.mask_counts(m).tolist() == [[3, 2]]
    assert magnitude.mask_counts([m, m.bool()]).tolist() == [[3, 2], [5, 0]]


# ------------------------------------------------------------------- errors

W = [torch.randn(4, 3), torch.randn(5)]
B = [torch.ones(4, 3, dtype=torch.bool), torch.ones(5, dtype=torch.bool)]


@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(amount=-1), ValueError, r"amount=-1\b"),
    (dict(amount=-0.5), ValueError, r"amount=-0\.5"),
    (dict(amount=1.0000001), ValueError, r"amount=1\.0000001"),
    (dict(amount=18), ValueError, r"amount=18 .*\(17\)"),
    (dict(amount=True), TypeError, r"amount=True"),
    (dict(amount=float("nan")), ValueError, r"amount=nan"),
    (dict(amount=float("inf")), ValueError, r"amount=inf"),
    (dict(amount=torch.tensor(0.5)), TypeError, r"amount=tensor\(0\.5"),
    (dict(amount=2, masks=[B[0] & False, B[1] & False]), ValueError, r"amount=2 .*\(0\)"),
    (dict(tensors=[]), ValueError, r"tensors is empty"),
    (dict(tensors=[W[0], torch.ones(3, dtype=torch.int32)]), TypeError,
     r"tensors\[1\] has dtype torch\.int32"),
    (dict(tensors=[W[0], torch.ones(3, dtype=torch.bool)]), TypeError,
     r"tensors\[1\] has dtype torch\.bool"),
    (dict(tensors=[W[0], [1.0, 2.0]]), TypeError, r"tensors\[1\] is a list"),
    (dict(tensors=[W[0], torch.ones(3, device="meta")]), ValueError, r"tensors\[1\] is on meta"),
    (dict(masks=[B[0]]), ValueError, r"masks has 1 entries"),
    (dict(masks=[B[0], torch.ones(6, dtype=torch.bool)]), ValueError,
     r"masks\[1\] has shape \(6,\)"),
    (dict(masks=[B[0], torch.ones(5, dtype=torch.float64)]), TypeError,
     r"masks\[1\] has dtype torch\.float64"),
    (dict(masks=[B[0], torch.ones(5, dtype=torch.uint8)]), TypeError,
     r"masks\[1\] has dtype torch\.uint8"),
    (dict(masks=[B[0], torch.ones(5, dtype=torch.bool, device="meta")]), ValueError,
     r"masks\[1\] is on meta"),
    (dict(masks="sparse"), ValueError, r"masks\[0\] has layout torch\.sparse_coo"),
    (dict(importance=[torch.ones(4, 3)]), ValueError, r"importance has 1 entries"),
    (dict(importance=[torch.ones(4, 3), torch.ones(2)]), ValueError,
     r"importance\[1\] has shape \(2,\)"),
    (dict(importance=[torch.ones(4, 3), torch.ones(5, dtype=torch.int64)]), TypeError,
     r"importance\[1\] has dtype torch\.int64"),
    (dict(importance=[torch.ones(4, 3, device="meta"), torch.ones(5, device="meta")]), ValueError,
     r"importance\[0\] is on meta"),
    (dict(importance=[]), ValueError, r"importance is empty"),
])
def test_bad_input_names_argument_and_value(kwargs, exc, text):
    if kwargs.get("masks") == "sparse":  # made here: no sparse tensor outlives the test
        kwargs = dict(masks=[B[0].to_sparse(), B[1]])
    args = dict(tensors=W, amount=0.5)
    args.update(kwargs)
    before = [_bits(t) for t in W + B]
    with pytest.raises(exc, match=text):
        lthfast.global_magnitude_masks(args.pop("tensors"), args.pop("amount"), **args)
    if "importance" not in kwargs:
        with pytest.raises(exc, match=text.replace("amount", "(amount|k)")
                           if "amount" in text else text):
            a = dict(tensors=W, amount=0.5)
            a.update(kwargs)
            a.pop("importance", None)
            list(magnitude.iter_global_magnitude_masks(a.pop("tensors"), a.pop("amount"), **a))
    assert all(_same_bits(a, b) for a, b in zip(before, [_bits(t) for t in W + B]))


@pytest.mark.parametrize("k, text", [(-1, r"k=-1\b"), (18, r"k=18 .*\(17\)"), (True, r"k=True"),
                                     (2.0, r"k=2\.0"), (None, r"k=None")])
def test_bad_k_for_threshold(k, text):
    with pytest.raises(ValueError, match=text):
        lthfast.global_magnitude_threshold(W, k)


# ---------------------------------------------------- opcheck and compile


def _op_cases(rng):
    out = []
    for _ in range(3):
        tensors, masks, _, amount = _problem(rng, n_tensors=3)
        if masks is not None and any(m.dtype not in (torch.bool, t.dtype)
                                     for m, t in zip(masks, tensors)):
            masks = None
        n = _eligible_count(tensors, masks)
        out.append((tensors, masks or [], _k_of(amount, n)))
    return out


def test_opcheck_on_fresh_random_inputs():
    rng = np.random.default_rng(2024)
    for scores, masks, k in _op_cases(rng):
        torch.library.opcheck(torch.ops.lthfast.global_threshold, (scores, masks, k))
        torch.library.opcheck(torch.ops.lthfast.global_magnitude_masks, (scores, masks, k))
        t, ties = torch.ops.lthfast.global_threshold(scores, masks, k)
        for i, s in enumerate(scores):
            m = masks[i] if masks else None
            dtype = (None, torch.bool, s.dtype)[i % 3]
            torch.library.opcheck(torch.ops.lthfast.threshold_mask, (s, m, t, ties.clone()),
                                  {"dtype": dtype})
        if masks:
            torch.library.opcheck(torch.ops.lthfast.mask_counts, (masks,))


def test_torch_compile_of_the_ops_and_the_api():
    rng = np.random.default_rng(77)
    for scores, masks, k in _op_cases(rng):
        def f(ss, ms):
            return torch.ops.lthfast.global_magnitude_masks(ss, ms, k)

        def g(ss, ms):
            return torch.ops.lthfast.global_threshold(ss, ms, k)

        cf = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=False)
        cg = torch.compile(g, backend="aot_eager", fullgraph=True, dynamic=False)
        want = f(scores, masks)
        got = cf(scores, masks)
        assert all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(got, want))
        wt, wties = g(scores, masks)
        gt, gties = cg(scores, masks)
        assert _same_float(float(gt), float(wt)) and int(gties) == int(wties)
        torch._dynamo.reset()
    # the public API through dynamo (graph breaks allowed: it validates in Python)
    w = [torch.randn(6, 5), torch.randn(7, dtype=torch.float64)]
    api = torch.compile(lambda ws: lthfast.global_magnitude_masks(ws, 0.4), backend="eager")
    assert all(torch.equal(a, b) for a, b in zip(api(w), lthfast.global_magnitude_masks(w, 0.4)))
    torch._dynamo.reset()


# ------------------------------------------------------------------ bitmask


def _np_pack(mask):
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy(), bitorder="little"))


def _bool_masks(rng):
    out = []
    for n in [0, 1, 7, 8, 9, 15, 17, 63, 65, 1001, 65536 * 8 + 3, (1 << 22) + 5]:
        out.append(torch.from_numpy(rng.random(n) < rng.random()))
    base = torch.from_numpy(rng.random((13, 6, 5, 7)) < 0.5)
    out += [base, base.contiguous(memory_format=torch.channels_last), base.permute(2, 0, 3, 1),
            base[::2, :, 1:, ::3], base[:1].expand(9, 6, 5, 7), torch.tensor(True),
            torch.tensor(False), torch.zeros(0, 3, dtype=torch.bool), base.reshape(-1)[3:404]]
    return out


def test_bitmask_ops_random_sizes_and_layouts():
    rng = np.random.default_rng(11)
    masks = _bool_masks(rng)
    for i, m in enumerate(masks):
        snap = _bits(m)
        p = bitmask.pack_bits(m)
        assert p.dtype == torch.uint8 and p.shape == (bitmask.packed_nbytes(m.numel()),), i
        assert torch.equal(p, _np_pack(m)), i
        assert torch.equal(p, ref_bits.pack_bits(m)), i
        u = bitmask.unpack_bits(p, m.shape)
        assert u.is_contiguous() and torch.equal(u, m), i
        assert bitmask.count_bits(p) == int(m.sum()), i
        other = torch.from_numpy(np.asarray(rng.random(tuple(m.shape)) < 0.5))
        q = bitmask.pack_bits(other)
        assert bitmask.overlap_bits(p, q) == (int((m & other).sum()), int((m | other).sum())), i
        # into an out of another layout (and the gaps of a non-dense out stay as they were)
        if m.dim() == 4:
            outs = [torch.zeros_like(m, memory_format=torch.channels_last),
                    torch.zeros(m.shape[::-1], dtype=torch.bool).permute(3, 2, 1, 0)]
            holder = torch.ones(m.shape[:-1] + (m.shape[-1] * 2,), dtype=torch.bool)
            outs.append(holder[..., ::2])
            for out in outs:
                assert bitmask.unpack_bits_into(p, out) is out and torch.equal(out, m)
            assert bool(holder[..., 1::2].all())
        assert _same_bits(snap, _bits(m)), "pack_bits modified its input"


def test_bitmask_reference_mode(monkeypatch):
    rng = np.random.default_rng(12)
    masks = [m for m in _bool_masks(rng) if m.numel() < 100_000]
    packed = [bitmask.pack_bits(m) for m in masks]
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    for m, p in zip(masks, packed):
        assert torch.equal(bitmask.pack_bits(m), p)
        assert torch.equal(bitmask.unpack_bits(p, m.shape), m)
        assert bitmask.count_bits(p) == int(m.sum())
        assert bitmask.overlap_bits(p, p) == (int(m.sum()), int(m.sum()))
        out = torch.empty_like(m)
        assert torch.equal(bitmask.unpack_bits_into(p, out), m)


def test_bitmask_opcheck_fresh_random():
    rng = np.random.default_rng(13)
    for m in [torch.from_numpy(rng.random(int(rng.integers(1, 300))) < 0.5),
              torch.from_numpy(rng.random((5, 3, 4, 2)) < 0.5).contiguous(
                  memory_format=torch.channels_last),
              torch.from_numpy(rng.random((9, 10)) < 0.5)[::2, 1::3]]:
        p = torch.ops.lthfast.pack_bits(m)
        torch.library.opcheck(torch.ops.lthfast.pack_bits, (m,))
        torch.library.opcheck(torch.ops.lthfast.unpack_bits, (p, list(m.shape)))
        torch.library.opcheck(torch.ops.lthfast.unpack_bits_into, (p, torch.empty_like(m)))
        torch.library.opcheck(torch.ops.lthfast.count_bits, (p,))
        torch.library.opcheck(torch.ops.lthfast.overlap_bits, (p, torch.flip(p, (0,))))


@pytest.mark.parametrize("call, exc, text", [
    (lambda: bitmask.pack_bits(torch.ones(3, dtype=torch.int32)), TypeError, r"torch\.int32"),
    (lambda: bitmask.pack_bits([True]), TypeError, r"mask is a list"),
    (lambda: bitmask.unpack_bits(torch.zeros(2, dtype=torch.uint8), (17,)), ValueError,
     r"packed has 2 bytes but shape \(17,\) needs 3"),
    (lambda: bitmask.unpack_bits(torch.zeros(2, dtype=torch.uint8), (4, -1)), ValueError,
     r"negative"),
    (lambda: bitmask.unpack_bits(torch.zeros(2, 1, dtype=torch.uint8), (9,)), ValueError,
     r"1-D torch\.uint8"),
    (lambda: bitmask.unpack_bits(torch.zeros(2, dtype=torch.int8), (9,)), ValueError,
     r"torch\.int8"),
    (lambda: bitmask.unpack_bits_into(torch.zeros(2, dtype=torch.uint8),
                                      torch.zeros(9, dtype=torch.uint8)), TypeError,
     r"out .*torch\.uint8"),
    (lambda: bitmask.unpack_bits_into(torch.zeros(2, dtype=torch.uint8),
                                      torch.zeros(20, dtype=torch.bool)), ValueError,
     r"packed has 2 bytes but out \(20,\) needs 3"),
    (lambda: bitmask.count_bits(torch.zeros(2, dtype=torch.int32)), ValueError, r"torch\.int32"),
    (lambda: bitmask.overlap_bits(torch.zeros(2, dtype=torch.uint8),
                                  torch.zeros(3, dtype=torch.uint8)), ValueError,
     r"a has 2 bytes but b has 3"),
    (lambda: bitmask.overlap_bits(torch.zeros(2, dtype=torch.uint8), "x"), TypeError,
     r"b is a str"),
])
def test_bitmask_bad_input(call, exc, text):
    with pytest.raises(exc, match=text):
        call()
