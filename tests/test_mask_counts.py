"""mask_counts (entries equal to 1 / neither 0 nor 1 per mask) and threshold_mask's
`dtype=` (float masks in torch's format written directly), on CPU and CUDA."""
import pytest
import torch

import lthfast
from lthfast import _reference as ref
from lthfast._reference_bitmask import pack_bits as ref_pack_bits
from lthfast.magnitude import iter_global_magnitude_masks, mask_counts, mask_counts_packed

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and lthfast._ops.available()
                      and lthfast.build_info().get("cuda") else [])


def _masks(device, g):
    special = torch.tensor([0.0, -0.0, 1.0, 0.5, -1.0, float("nan"), float("inf"), 1.0, 2.0])
    out = [special, special.to(torch.float16), special.to(torch.bfloat16), special.to(torch.float64),
           torch.rand(70_000, generator=g) > 0.3,                     # several chunks, bool
           torch.rand(150_000, generator=g).mul(3).floor().div(2),   # several chunks: 0, 0.5, 1
           (torch.rand(3, 5, 7, 11, generator=g) > 0.5).float().contiguous(
               memory_format=torch.channels_last),
           (torch.rand(40, 30, generator=g) > 0.5).double()[:, ::3],  # a strided view
           torch.zeros(0), torch.ones(5, dtype=torch.bool)]
    return [m.to(device) for m in out]


@pytest.mark.parametrize("device", DEVICES)
def test_mask_counts_match_reference(device):
    g = torch.Generator().manual_seed(0)
    masks = _masks(device, g)
    got = torch.ops.lthfast.mask_counts(masks)
    assert got.dtype == torch.int64 and got.shape == (len(masks), 2) and got.device.type == device
    assert torch.equal(got.cpu(), ref.mask_counts([m.cpu() for m in masks]))
    assert got[0].tolist() == [2, 5]  # 1.0 twice; 0.5, -1, nan, inf, 2 are neither 0 nor 1


@pytest.mark.parametrize("device", DEVICES)
def test_bool_mask_counts_every_length_and_offset(device):
    """The bool path counts 32 bytes per step then a tail: every length around those
    steps, views starting at every byte offset, and bool storage holding bytes other
    than 0/1 (a uint8 tensor viewed as bool: any nonzero byte is True)."""
    g = torch.Generator().manual_seed(2)
    raw = torch.randint(0, 256, (300,), dtype=torch.uint8, generator=g)
    raw[::3] = 0
    masks = [raw[o:o + n].view(torch.bool) for o in range(0, 17, 3) for n in (0, 1, 15, 16, 17, 31,
                                                                              32, 33, 63, 64, 65, 200)]
    masks.append((torch.rand(2 ** 17 + 37, generator=g) > 0.5))  # chunks of the parallel loop
    masks = [m.to(device) for m in masks]
    got = torch.ops.lthfast.mask_counts(masks).cpu()
    want = torch.tensor([[int(torch.count_nonzero(m.view(torch.uint8))), 0] for m in masks])
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_counts_opcheck(device):
    g = torch.Generator().manual_seed(1)
    torch.library.opcheck(torch.ops.lthfast.mask_counts, (_masks(device, g),))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_counts_bad_input_names_the_mask(device):
    with pytest.raises(RuntimeError, match=r"masks\[1\] has dtype Long"):
        torch.ops.lthfast.mask_counts([torch.ones(3, device=device),
                                       torch.ones(3, dtype=torch.int64, device=device)])
    if device == "cuda":
        with pytest.raises(RuntimeError, match=r"masks\[1\] is on cpu, expected cuda"):
            torch.ops.lthfast.mask_counts([torch.ones(3, device=device), torch.ones(3)])
    assert mask_counts([]).shape == (0, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_counts_packed_matches_counts_and_pack_bits(device):
    """mask_counts_packed = (mask_counts, pack_bits of each, nonzero = kept): every
    dtype, chunked lengths, channels_last and strided views."""
    g = torch.Generator().manual_seed(4)
    masks = _masks(device, g) + [
        (torch.rand(n, generator=g) > 0.5).to(dt).to(device)
        for dt in (torch.float32, torch.float16, torch.bool) for n in (15, 16, 17, 65_537)]
    counts, packed = mask_counts_packed(masks)
    assert torch.equal(counts.cpu(), ref.mask_counts([m.cpu() for m in masks]))
    assert len(packed) == len(masks)
    for m, p in zip(masks, packed):
        assert p.dtype == torch.uint8 and p.device == m.device
        assert torch.equal(p.cpu(), ref_pack_bits(m.cpu() != 0))
        assert torch.equal(p, torch.ops.lthfast.pack_bits(m))
    torch.library.opcheck(torch.ops.lthfast.mask_counts_packed, (masks[:8],))
    assert mask_counts_packed([])[0].shape == (0, 2)
    with pytest.raises(RuntimeError, match=r"masks\[1\] has dtype Long"):
        torch.ops.lthfast.mask_counts_packed([torch.ones(3, device=device),
                                              torch.ones(3, dtype=torch.int64, device=device)])


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_masks_with_odd_values_in_whole_blocks(device):
    """fp32 masks are counted and packed 16 entries at a time (SSE2) with a tail:
    -0.0 (zero), NaN, +-Inf, 2.0, -1.0, 0.5 (neither), and 1.0 spread through whole
    blocks, at lengths and view offsets that leave tails, against the reference."""
    g = torch.Generator().manual_seed(9)
    values = torch.tensor([0.0, -0.0, 1.0, 1.0, 1.0, float("nan"), float("inf"), -float("inf"),
                           2.0, -1.0, 0.5, 1.0])
    base = values[torch.randint(0, len(values), (200_000,), generator=g)]
    masks = [base[:n].clone() for n in (16, 31, 48, 65_536, 65_553, 140_001)]
    masks.append(base[3:100_003])  # a view that does not start on a 16-byte boundary
    masks = [m.to(device) for m in masks]
    counts, packed = mask_counts_packed(masks)
    assert torch.equal(counts.cpu(), ref.mask_counts([m.cpu() for m in masks]))
    assert torch.equal(torch.ops.lthfast.mask_counts(masks).cpu(), counts.cpu())
    for m, p in zip(masks, packed):
        assert torch.equal(p.cpu(), ref_pack_bits(m.cpu() != 0))


@pytest.mark.parametrize("device", DEVICES)
def test_bool_bytes_other_than_one_pack_as_kept(device):
    """A bool tensor viewing bytes other than 0/1: counted as True by mask_counts,
    so packed as 1 by mask_counts_packed and pack_bits (every length and offset
    around the 8-entry bytes and 16-entry groups)."""
    g = torch.Generator().manual_seed(5)
    raw = torch.randint(0, 256, (300,), dtype=torch.uint8, generator=g)
    raw[::3] = 0
    masks = [raw[o:o + n].view(torch.bool).to(device) for o in range(0, 9, 4)
             for n in (1, 7, 8, 9, 15, 16, 17, 33, 200)]
    counts, packed = mask_counts_packed(masks)
    for m, c, p in zip(masks, counts.cpu(), packed):
        nz = m.cpu().view(torch.uint8) != 0
        assert int(c[0]) == int(nz.sum())
        assert torch.equal(p.cpu(), ref_pack_bits(nz))
        assert torch.equal(torch.ops.lthfast.pack_bits(m).cpu(), ref_pack_bits(nz))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_threshold_mask_dtype_writes_float_masks(device, dtype):
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(6, 4, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last),
          torch.randn(1000, generator=g).round().to(dtype),  # many ties
          torch.randn(9, 7, generator=g).to(dtype).t()]
    ws = [w.to(device) for w in ws]
    for masks in (None, [torch.rand(w.shape, generator=g).to(device) > 0.3 for w in ws]):
        want = lthfast.global_magnitude_masks(ws, 0.4, masks=masks)
        got = list(iter_global_magnitude_masks(ws, 0.4, masks=masks, dtype=[w.dtype for w in ws]))
        for w, gm, wm in zip(ws, got, want):
            assert gm.dtype == dtype and gm.shape == w.shape and gm.stride() == wm.stride()
            assert torch.equal(gm, wm.to(dtype))


def test_threshold_mask_dtype_opcheck_and_errors():
    w = torch.randn(5, 6)
    t = torch.tensor(0.5, dtype=torch.float64)
    for dtype in (torch.float32, torch.bool):
        torch.library.opcheck(torch.ops.lthfast.threshold_mask, (w, None, t, torch.tensor(0)),
                              {"dtype": dtype})
    with pytest.raises(RuntimeError, match="dtype=.*must be bool or the score's dtype"):
        torch.ops.lthfast.threshold_mask(w, None, t, torch.tensor(0), dtype=torch.float16)


def test_mask_iterator_leaves_grad_mode_to_the_caller():
    """The masks are made under no_grad, but the caller's code between masks (and after
    a partly consumed iterator) runs in the caller's grad mode."""
    ws = [torch.randn(6, 5), torch.randn(40)]
    it = iter_global_magnitude_masks(ws, 0.5)
    first = next(it)
    assert torch.is_grad_enabled()
    assert first.shape == (6, 5)
    for _ in it:
        assert torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    lin = torch.nn.Linear(3, 1)
    it = iter_global_magnitude_masks([lin.weight], 0.5)
    next(it)  # left suspended, never exhausted
    assert lin(torch.randn(2, 3)).requires_grad
