"""The bitmask ops (pack/unpack/count/overlap) on CPU: against the pure-PyTorch
reference and torch, on fresh random masks of many shapes and layouts; opcheck;
bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import lthfast
from lthfast import _reference_bitmask as ref
from lthfast import bitmask

from _bitmask_cases import masks

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def _by_hand(mask):
    """Bit i of byte i // 8 is entry i in row-major order."""
    flat = mask.reshape(-1).tolist()
    out = [0] * ((len(flat) + 7) // 8)
    for i, v in enumerate(flat):
        out[i // 8] |= int(v) << (i % 8)
    return torch.tensor(out, dtype=torch.uint8)


def test_reference_matches_the_layout_by_hand():
    for _, m in masks(1)[:12]:
        assert torch.equal(ref.pack_bits(m), _by_hand(m))


@pytest.mark.parametrize("label,mask", masks(0), ids=[c[0] for c in masks(0)])
def test_pack_unpack_match_reference(label, mask):
    packed = bitmask.pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == ((mask.numel() + 7) // 8,)
    assert torch.equal(packed, ref.pack_bits(mask))
    if mask.numel() % 8:
        assert int(packed[-1]) >> (mask.numel() % 8) == 0  # trailing bits are 0
    un = bitmask.unpack_bits(packed, mask.shape)
    assert un.dtype == torch.bool and un.is_contiguous() and torch.equal(un, mask)
    assert torch.equal(un, ref.unpack_bits(packed, mask.shape))
    assert bitmask.count_bits(packed) == int(mask.sum()) == int(ref.count_bits(packed))


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "transposed", "sliced"])
def test_unpack_into_any_layout(fmt):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(6, 5, 3, 4, generator=g) < 0.5
    base = torch.zeros(6, 5, 3, 8, dtype=torch.bool)
    out = {"contiguous": torch.zeros(6, 5, 3, 4, dtype=torch.bool),
           "channels_last": torch.zeros(6, 5, 3, 4, dtype=torch.bool).contiguous(memory_format=torch.channels_last),
           "transposed": torch.zeros(4, 3, 5, 6, dtype=torch.bool).permute(3, 2, 1, 0),
           "sliced": base[..., ::2]}[fmt]
    res = bitmask.unpack_bits_into(bitmask.pack_bits(mask), out)
    assert res is out and torch.equal(out, mask)
    if fmt == "sliced":
        assert not base[..., 1::2].any()  # the gaps are untouched


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=0, max_size=4), st.floats(0, 1), st.integers(0, 2**31))
def test_pack_roundtrip_property(shape, p, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    packed = bitmask.pack_bits(mask)
    assert torch.equal(packed, ref.pack_bits(mask))
    assert torch.equal(bitmask.unpack_bits(packed, shape), mask)


@pytest.mark.parametrize("n", [0, 3, 8, 64, 1001, 40000])
def test_overlap_matches_torch(n):
    g = torch.Generator().manual_seed(n)
    a, b = torch.rand(n, generator=g) < 0.3, torch.rand(n, generator=g) < 0.6
    pa, pb = bitmask.pack_bits(a), bitmask.pack_bits(b)
    assert bitmask.overlap_bits(pa, pb) == (int((a & b).sum()), int((a | b).sum()))
    assert torch.equal(torch.ops.lthfast.overlap_bits(pa, pb), ref.overlap_bits(pa, pb))


def test_sliced_packed_input():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(333, generator=g) < 0.5
    big = torch.cat([torch.full((3,), 255, dtype=torch.uint8), bitmask.pack_bits(mask)])
    view = big[3:]  # storage offset: unaligned start
    assert torch.equal(bitmask.unpack_bits(view, (333,)), mask)
    assert bitmask.count_bits(view) == int(mask.sum())
    strided = torch.stack([bitmask.pack_bits(mask), bitmask.pack_bits(mask)], 1)[:, 0]
    assert torch.equal(bitmask.unpack_bits(strided, (333,)), mask)


def _opcheck_cases():
    g = torch.Generator().manual_seed(7)
    ms = [torch.rand(21, generator=g) < 0.5, torch.rand(4, 3, 5, 5, generator=g) < 0.5,
          (torch.rand(4, 3, 5, 5, generator=g) < 0.5).contiguous(memory_format=torch.channels_last),
          torch.zeros(0, 3, dtype=torch.bool)]
    return ms


def test_opcheck():
    for m in _opcheck_cases():
        p = torch.ops.lthfast.pack_bits(m)
        torch.library.opcheck(torch.ops.lthfast.pack_bits, (m,))
        torch.library.opcheck(torch.ops.lthfast.unpack_bits, (p, list(m.shape)))
        torch.library.opcheck(torch.ops.lthfast.unpack_bits_into, (p, torch.empty_like(m)))
        torch.library.opcheck(torch.ops.lthfast.count_bits, (p,))
        torch.library.opcheck(torch.ops.lthfast.overlap_bits, (p, p.clone()))


FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _float_mask(shape, dtype, seed, special=True):
    """A float mask of 0/1 and, with ``special``, values that only ``!= 0`` decides:
    -0.0 (pruned), NaN, -inf, a subnormal and 0.5 (kept)."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(shape, generator=g) < 0.5).to(dtype)
    flat = m.view(-1)
    if special and flat.numel() >= 6:
        tiny = torch.finfo(dtype).tiny / 4  # subnormal
        for i, v in enumerate((-0.0, float("nan"), float("-inf"), tiny, 0.5, -1.0)):
            flat[(i * 7919) % flat.numel()] = v
    return m


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, 70001, 300_007])
def test_pack_float_masks_as_nonzero(dtype, n):
    """torch.nn.utils.prune's float masks pack without a bool copy: bit = (mask != 0)."""
    m = _float_mask((n,), dtype, seed=n)
    got = bitmask.pack_bits(m)
    assert torch.equal(got, ref.pack_bits(m))
    assert torch.equal(got, bitmask.pack_bits(m != 0))
    assert torch.equal(bitmask.unpack_bits(got, m.shape), m != 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fmt", ["channels_last", "transposed", "sliced"])
def test_pack_float_masks_any_layout(dtype, fmt):
    base = _float_mask((6, 5, 3, 8), dtype, seed=11)
    m = {"channels_last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.permute(3, 2, 1, 0),
         "sliced": base[..., ::2]}[fmt]
    assert torch.equal(bitmask.pack_bits(m), bitmask.pack_bits(m != 0))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=0, max_size=4), st.sampled_from(FLOAT_DTYPES),
       st.integers(0, 2**31))
def test_pack_float_property(shape, dtype, seed):
    m = _float_mask(shape, dtype, seed)
    assert torch.equal(bitmask.pack_bits(m), ref.pack_bits(m != 0))


def test_opcheck_float_masks():
    for dtype in FLOAT_DTYPES:
        m = _float_mask((4, 3, 5, 5), dtype, seed=3)
        torch.library.opcheck(torch.ops.lthfast.pack_bits, (m,))
        torch.library.opcheck(torch.ops.lthfast.pack_bits,
                              (m.contiguous(memory_format=torch.channels_last),))


def test_bad_input_raises_clearly():
    for bad in (torch.ones(3, dtype=torch.uint8), torch.ones(3, dtype=torch.int64),
                torch.ones(3, dtype=torch.complex64)):
        with pytest.raises(TypeError, match="torch.bool tensor or a float32"):
            bitmask.pack_bits(bad)
        with pytest.raises(RuntimeError, match=f"mask has dtype .*torch.bool, or float32"):
            torch.ops.lthfast.pack_bits(bad)
    if hasattr(torch, "float8_e4m3fn"):  # a 1-byte float: not taken as bool
        with pytest.raises(RuntimeError, match="float32/float64/float16/bfloat16"):
            torch.ops.lthfast.pack_bits(torch.ones(3).to(torch.float8_e4m3fn))
    p = bitmask.pack_bits(torch.ones(20, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs 2"):
        bitmask.unpack_bits(p, (10,))
    with pytest.raises(RuntimeError, match="needs 2"):
        torch.ops.lthfast.unpack_bits(p, [10])
    with pytest.raises(RuntimeError, match="negative"):
        torch.ops.lthfast.unpack_bits(p, [-1, 3])
    with pytest.raises(ValueError, match="uint8"):
        bitmask.unpack_bits(p.to(torch.int32), (20,))
    with pytest.raises(RuntimeError, match="1-D"):
        torch.ops.lthfast.count_bits(p.reshape(1, 3))
    with pytest.raises(RuntimeError, match="bytes"):
        torch.ops.lthfast.overlap_bits(p, p[:2])
    with pytest.raises(ValueError, match="needs"):
        bitmask.unpack_bits_into(p, torch.empty(30, dtype=torch.bool))
    out = torch.zeros(20, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="torch.bool"):
        torch.ops.lthfast.unpack_bits_into(p, out.to(torch.uint8))
    assert not out.any()


# ---------------------------------------------------------------- zero_pruned_
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, 70001, 300_007])
def test_zero_pruned_matches_masked_fill(dtype, n):
    """Pruned entries become +0.0 (NaN, inf and -0.0 included), kept ones stay bit for
    bit; against masked_fill_ and the reference, with lengths not a multiple of 8."""
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g).to(dtype)
    keep = torch.rand(n, generator=g) < 0.4
    keep[: n // 3] = True  # a run of whole kept bytes (skipped by the kernel)
    flat = w.view(-1)
    for i, v in enumerate((float("nan"), float("-inf"), -0.0, float("inf"))):
        if n > i:
            flat[(i * 7919) % n] = v
    p = bitmask.pack_bits(keep)
    want = w.clone().masked_fill_(~keep, 0)
    got = bitmask.zero_pruned_(w.clone(), p)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))  # bit for bit
    ref_out = w.clone()
    ref.zero_pruned_(ref_out, p)
    assert torch.equal(ref_out.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("fmt", ["channels_last", "sliced", "transposed"])
def test_zero_pruned_any_layout(fmt):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, 3, 4, generator=g)
    if fmt == "channels_last":
        w = base.contiguous(memory_format=torch.channels_last)
    elif fmt == "sliced":
        w = torch.randn(6, 5, 3, 8, generator=g)[..., ::2]
    else:
        w = torch.randn(4, 3, 5, 6, generator=g).permute(3, 2, 1, 0)
    keep = torch.rand(w.shape, generator=g) < 0.5  # row-major logical order, whatever the layout
    want = w.clone().masked_fill_(~keep, 0)
    stride = w.stride()
    got = bitmask.zero_pruned_(w, bitmask.pack_bits(keep))
    assert got is w and w.stride() == stride and torch.equal(w, want)


def test_zero_pruned_opcheck_and_errors():
    w = torch.randn(4, 3, 5, 5)
    p = bitmask.pack_bits(torch.rand(w.shape) < 0.5)
    torch.library.opcheck(torch.ops.lthfast.zero_pruned_, (w.clone(), p))
    torch.library.opcheck(torch.ops.lthfast.zero_pruned_,
                          (w.clone().contiguous(memory_format=torch.channels_last), p))
    before = w.clone()
    with pytest.raises(ValueError, match="needs 38"):
        bitmask.zero_pruned_(w, p[:-1])
    with pytest.raises(RuntimeError, match="needs 38"):
        torch.ops.lthfast.zero_pruned_(w, p[:-1])
    with pytest.raises(TypeError, match="float tensor"):
        bitmask.zero_pruned_(w.to(torch.int32), p)
    with pytest.raises(TypeError, match="self has dtype Int; it must be float32"):
        torch.ops.lthfast.zero_pruned_(w.to(torch.int32), p)
    with pytest.raises(ValueError, match="uint8"):
        bitmask.zero_pruned_(w, p.to(torch.int32))
    assert torch.equal(w, before)  # nothing written
