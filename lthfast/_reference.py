"""Pure-PyTorch reference of every lthfast op: the test oracle and the fallback.

Written for clarity, not speed: it concatenates everything and sorts. The kernels
must agree with it bit for bit (masks) or within the numerical policy (floats).
"""
from __future__ import annotations

import torch

_WIDE = torch.float64


def _keys(scores: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """Order-preserving int64 keys of |x| per tensor (row-major), NaN above +Inf.

    fp16/bf16/fp32 share 32-bit keys (the bits of |float32(x)|); with any fp64
    tensor present all keys are the bits of |float64(x)|.
    """
    wide = any(s.dtype == _WIDE for s in scores)
    out = []
    for s in scores:
        flat = s.detach().reshape(-1)
        if wide:
            bits = flat.to(torch.float64).view(torch.int64) & 0x7FFFFFFFFFFFFFFF
            bits = torch.where(flat.isnan(), torch.full_like(bits, 0x7FFFFFFFFFFFFFFF), bits)
        else:
            bits = (flat.to(torch.float32).view(torch.int32).to(torch.int64)) & 0x7FFFFFFF
            bits = torch.where(flat.isnan(), torch.full_like(bits, 0x7FFFFFFF), bits)
        out.append(bits)
    return out, wide


def _key_value(key: int, wide: bool) -> float:
    if wide:
        return torch.tensor([key], dtype=torch.int64).view(torch.float64).item()
    return torch.tensor([key], dtype=torch.int32).view(torch.float32).item()


def _select(scores, masks, k):
    keys, wide = _keys(scores)
    flat_keys = torch.cat(keys) if keys else torch.empty(0, dtype=torch.int64)
    if masks:
        eligible = torch.cat([m.reshape(-1).to(torch.bool) for m in masks])
    else:
        eligible = torch.ones_like(flat_keys, dtype=torch.bool)
    idx = eligible.nonzero().squeeze(1)
    n = idx.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be in [0, {n}] (the number of unpruned entries)")
    order = torch.sort(flat_keys[idx], stable=True).indices
    pruned_idx = idx[order[:k]]
    return flat_keys, eligible, pruned_idx, wide


def global_threshold(scores, masks, k):
    """(threshold, n_ties): |x| of the k-th smallest eligible entry and how many
    entries equal to it are pruned (0.0, 0 when k == 0)."""
    flat_keys, _, pruned_idx, wide = _select(scores, masks, k)
    if k == 0:
        return 0.0, 0
    t = int(flat_keys[pruned_idx[-1]])
    n_ties = int((flat_keys[pruned_idx] == t).sum())
    return _key_value(t, wide), n_ties


def global_magnitude_masks(scores, masks, k):
    """Keep-masks (True = kept) after pruning the k smallest eligible |x|; ties go to
    the first entries in (tensor order, row-major index)."""
    flat_keys, eligible, pruned_idx, _ = _select(scores, masks, k)
    keep = eligible.clone()
    keep[pruned_idx] = False
    out, start = [], 0
    for s in scores:
        n = s.numel()
        # empty_like: the kernels' layout (a dense score's strides, e.g. channels_last)
        out.append(torch.empty_like(s, dtype=torch.bool).copy_(keep[start:start + n].view(s.shape)))
        start += n
    return out


def threshold_mask(score, mask, threshold, ties_left, dtype=None):
    """One tensor's keep-mask from a global threshold; decrements ties_left (a 0-dim
    int64 tensor) by the ties pruned here (the first ones in row-major order)."""
    keys, _ = _keys([score.to(torch.float64)])
    t, _ = _keys([torch.tensor([float(threshold)], dtype=torch.float64)])
    keys, t = keys[0], int(t[0][0])
    eligible = torch.ones_like(keys, dtype=torch.bool) if mask is None else mask.reshape(-1) != 0
    keep = eligible & (keys > t)
    ties = (eligible & (keys == t)).nonzero().squeeze(1)
    n = min(ties.numel(), int(ties_left))
    keep[ties[n:]] = True
    ties_left -= n
    if dtype is None:
        dtype = torch.bool if mask is None else mask.dtype
    return torch.empty_like(score, dtype=dtype).copy_(keep.view(score.shape))  # score's strides


def threshold_mask_into(score, mask, threshold, ties_left, out, orig=None, product=None):
    """threshold_mask written into ``out`` (bool or the score's dtype, any strides), and
    ``product = out * orig`` when given."""
    out.copy_(threshold_mask(score, mask, threshold, ties_left, out.dtype))
    if product is not None:
        torch.mul(out, orig, out=product)


def mask_counts_packed(masks):
    """(mask_counts(masks), each mask's bits as pack_bits writes them, nonzero = kept)."""
    from lthfast._reference_bitmask import pack_bits
    return mask_counts(masks), [pack_bits(m) for m in masks]


def mask_counts(masks):
    """int64 [len(masks), 2]: per mask, entries equal to 1 and entries neither 0 nor 1."""
    rows = [torch.stack([torch.count_nonzero(m == 1), torch.count_nonzero((m != 0) & (m != 1))])
            for m in masks]
    dev = masks[0].device if masks else torch.device("cpu")
    return torch.stack(rows) if rows else torch.empty((0, 2), dtype=torch.int64, device=dev)
