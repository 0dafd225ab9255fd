"""Packed-bit eligibility masks (uint8, pack_bits' layout) in the threshold ops:
lthfast.prune's second round passes the old masks' bits. Every result must equal
the one with the same masks as bool tensors, on fresh random inputs: many tensors
and dtypes, ties, permuted scores (unpacked first), k at the edges, the sampled
range path on large inputs; plus opcheck and errors. CUDA (the op unpacks there)
when a GPU is present."""
import pytest
import torch

import lthfast
from lthfast.bitmask import pack_bits

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
op = torch.ops.lthfast
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and lthfast._ops.available()
                      and lthfast.build_info().get("cuda") else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _problem(seed, big=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ws, ms = [], []
    for i in range(int(torch.randint(1, 5, (1,), generator=g))):
        if big:
            shape = [int(torch.randint(200_000, 1_500_000, (1,), generator=g))]
        else:
            shape = [int(torch.randint(1, 30, (1,), generator=g)) for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
        dtype = DTYPES[int(torch.randint(0, 4, (1,), generator=g))]
        w = (torch.randn(shape, generator=g) * 3).round().to(dtype)  # many ties
        if len(shape) == 3 and seed % 2:
            w = w.permute(2, 0, 1)  # a permuted score: its bits are unpacked first
        m = torch.rand(w.shape, generator=g) < 0.7
        ws.append(w.to(device))
        ms.append(m.to(device))
    return ws, ms


def _ks(ms, seed):
    n = sum(int(m.sum()) for m in ms)
    g = torch.Generator().manual_seed(seed)
    return sorted({0, 1 if n else 0, n, int(torch.randint(0, n + 1, (1,), generator=g)), n // 2})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(40))
def test_packed_masks_give_the_bool_masks_result(seed, device):
    ws, ms = _problem(seed, device=device)
    pk = [pack_bits(m) for m in ms]
    for k in _ks(ms, seed):
        want, got = op.global_magnitude_masks(ws, ms, k), op.global_magnitude_masks(ws, pk, k)
        assert all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(want, got))
        t, ties = op.global_threshold(ws, ms, k)
        tp, tiesp = op.global_threshold(ws, pk, k)
        assert torch.equal(t, tp) and torch.equal(ties, tiesp)
        left_b, left_p = ties.clone(), ties.clone()
        for w, m, p in zip(ws, ms, pk):
            a = op.threshold_mask(w, m, t, left_b, None)
            b = op.threshold_mask(w, p, t, left_p, None)  # bits in: a bool mask out
            assert b.dtype == torch.bool and torch.equal(a, b) and torch.equal(left_b, left_p)
            c = op.threshold_mask(w, p, t, ties.clone(), w.dtype)
            assert c.dtype == w.dtype and torch.equal(c.bool(), op.threshold_mask(w, m, t, ties.clone(), None))


@pytest.mark.parametrize("seed", range(3))
def test_packed_masks_on_the_sampled_range_path(seed):
    """Large inputs: the fused range pass reads 16 bits per block."""
    ws, ms = _problem(100 + seed, big=True)
    pk = [pack_bits(m) for m in ms]
    fm = [m.to(w.dtype) for m, w in zip(ms, ws)]
    for k in _ks(ms, seed):
        want = op.global_magnitude_masks(ws, ms, k)
        assert all(torch.equal(a, b) for a, b in zip(want, op.global_magnitude_masks(ws, pk, k)))
        assert op.global_threshold(ws, pk, k) == op.global_threshold(ws, fm, k)


def test_mixed_mask_kinds_in_one_call():
    ws, ms = _problem(7)
    mixed = [pack_bits(m) if i % 2 else m.to(w.dtype) for i, (w, m) in enumerate(zip(ws, ms))]
    k = _ks(ms, 7)[-2]
    assert all(torch.equal(a, b) for a, b in zip(op.global_magnitude_masks(ws, ms, k),
                                                  op.global_magnitude_masks(ws, mixed, k)))


def test_opcheck_packed_masks():
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(8, 4, 3, 3, generator=g), torch.randn(33, generator=g, dtype=torch.float64)]
    pk = [pack_bits(torch.rand(w.shape, generator=g) > 0.4) for w in ws]
    for k in (0, 20):
        torch.library.opcheck(op.global_threshold, (ws, pk, k))
        torch.library.opcheck(op.global_magnitude_masks, (ws, pk, k))
    t, ties = op.global_threshold(ws, pk, 20)
    torch.library.opcheck(op.threshold_mask, (ws[0], pk[0], t, ties.clone()))
    torch.library.opcheck(op.threshold_mask, (ws[0], pk[0], t, ties.clone(), torch.float32))


def test_packed_mask_of_the_wrong_size_names_the_mask():
    ws = [torch.randn(4, 5), torch.randn(17)]
    good = pack_bits(torch.ones(4, 5, dtype=torch.bool))
    for bad in (torch.zeros(2, dtype=torch.uint8), torch.zeros(3, 1, dtype=torch.uint8)):
        with pytest.raises(RuntimeError, match=r"masks\[1\] is uint8, i.e. packed bits, and must be "
                                               r"1-D with 3 bytes"):
            op.global_threshold(ws, [good, bad], 1)
        with pytest.raises(RuntimeError, match=r"masks\[1\] is uint8"):
            op.global_magnitude_masks(ws, [good, bad], 1)
    with pytest.raises(RuntimeError, match=r"masks\[0\] is uint8"):
        op.threshold_mask(ws[1], torch.zeros(2, dtype=torch.uint8), torch.tensor(0.0, dtype=torch.float64),
                          torch.tensor(0))
