"""Per-weight cache of what the masked ops derive from (weight, mask): the masked
dense weight, the compressed (CSR) sparse weight, the sparsity and the path
`auto` chose per batch size.

Entries are keyed by the weight tensor's id and hold only a weak reference to
it (an entry goes when its weight goes), stamped with the weight's and mask's
`_version` counters, data pointers, dtype and shape, so any in-place update of
either (an optimizer step, pruning, `.data =` assignment, load_state_dict)
rebuilds them on next use, and nothing is rebuilt while neither changed. The
lookup is a dict get, a weakref call and one tuple compare: it runs on every
forward, and on small convolutions microseconds count.
"""
from __future__ import annotations

import weakref

import torch

_CACHE: dict[int, "Entry"] = {}


def _stamp(weight: torch.Tensor, mask: torch.Tensor) -> tuple:
    return (weight._version, weight.data_ptr(), weight.dtype, weight.shape,
            id(mask), mask._version, mask.data_ptr(), mask.dtype)


def _drop(key: int, ref) -> None:
    e = _CACHE.get(key)
    if e is not None and e.ref is ref:
        del _CACHE[key]


class Entry:
    __slots__ = ("ref", "stamp", "dense", "packed", "sparsity", "choice", "__weakref__")

    def __init__(self, weight: torch.Tensor, stamp):
        key = id(weight)
        self.ref = weakref.ref(weight, lambda r, key=key: _drop(key, r))
        self.stamp = stamp
        self.dense = None
        self.packed = None
        self.sparsity = None
        self.choice = {}  # (batch, groups, path) -> True when the sparse kernel runs


def entry(weight: torch.Tensor, mask: torch.Tensor) -> Entry:
    stamp = _stamp(weight, mask)
    e = _CACHE.get(id(weight))
    if e is None or e.ref() is not weight or e.stamp != stamp:
        e = Entry(weight, stamp)
        _CACHE[id(weight)] = e
    return e


def current(weight: torch.Tensor, mask: torch.Tensor) -> Entry | None:
    """The entry of (weight, mask) if it exists and is up to date, else None (no
    new entry): the fast path's lookup."""
    e = _CACHE.get(id(weight))
    if e is None or e.ref() is not weight or e.stamp != _stamp(weight, mask):
        return None
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
