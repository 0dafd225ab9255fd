"""Per-weight cache of what the masked ops derive from (weight, mask): the masked
dense weight, the compressed (CSR) sparse weight and the sparsity.

Entries are keyed by the weight tensor's identity (weakly: they go when the
weight goes) and stamped with the weight's and mask's `_version` counters and
data pointers, so any in-place update of either (an optimizer step, pruning,
`.data =` assignment, load_state_dict) rebuilds them on next use, and nothing is
rebuilt while neither changed.
"""
from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _stamp(weight: torch.Tensor, mask: torch.Tensor) -> tuple:
    return (weight._version, weight.data_ptr(), weight.dtype, weight.shape,
            id(mask), mask._version, mask.data_ptr(), mask.dtype)


class Entry:
    __slots__ = ("stamp", "dense", "packed", "sparsity")

    def __init__(self, stamp):
        self.stamp = stamp
        self.dense = None
        self.packed = None
        self.sparsity = None


def entry(weight: torch.Tensor, mask: torch.Tensor) -> Entry:
    stamp = _stamp(weight, mask)
    e = _CACHE.get(weight)
    if e is None or e.stamp != stamp:
        e = Entry(stamp)
        _CACHE[weight] = e
    return e


def masked_weight(e: Entry, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if e.dense is None:
        with torch.no_grad():
            w = weight.detach()
            e.dense = (w.masked_fill(~mask, 0) if mask.dtype == torch.bool else w * mask)
    return e.dense


def packed_weight(e: Entry, weight: torch.Tensor, mask: torch.Tensor):
    if e.packed is None:
        with torch.no_grad():
            e.packed = torch.ops.lthfast.sparse_pack(weight.detach(), mask)
    return e.packed


def sparsity(e: Entry, mask: torch.Tensor) -> float:
    if e.sparsity is None:
        n = mask.numel()
        e.sparsity = 1.0 - (int(torch.count_nonzero(mask)) / n if n else 1.0)
    return e.sparsity


def clear() -> None:
    _CACHE.clear()
