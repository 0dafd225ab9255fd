"""Per-weight cache of what the masked ops derive from (weight, mask): the masked
dense weight, the compressed (CSR) sparse weight, the sparsity and the path
`auto` chose per batch size.

Entries are keyed by the weight tensor's id and hold only weak references: to
the weight's storage (an entry goes when the storage goes) and to the mask it was
made with. They are stamped with the weight's and mask's `_version` counters and
data pointers, the weight's shape, (where not row-major) strides and dtype and the
address of its storage, so any
in-place update of either (an optimizer step, pruning, `.data =` assignment,
load_state_dict) or another mask object rebuilds them on next use, and nothing
is rebuilt while neither changed. A repeated call does the lookup and its checks
in one compiled call (_C._conv_repeat / _linear_repeat, reading the entry's `last`
/ `cast` records): it runs on every forward, and on small convolutions microseconds
count.

Why the storage and not the weight: torch.utils.swap_tensors refuses a tensor
that has weak references, and `model.to()` / `load_state_dict` swap parameters
under torch.__future__.set_swap_module_params_on_conversion(True). A swap gives
the Parameter other storage: its old storage dies and takes the entry with it.
An entry present is one whose storage is alive, so a weight whose storage has
the stamped address reads that very storage, at the stamped offset, shape, strides
and version: the cached tensors are what it would give (even when the weight
object is another one that reused a dead weight's id).

One entry per place: a new weight object over the bytes of an earlier one (same
storage, data pointer, shape and strides: a fresh view made on every call, as in
`masked_conv2d(x, w.view(shape), m)`) replaces the earlier object's entry, which
its storage, alive through `w`, would otherwise keep with its derived tensors
after that object is gone. (Two live objects over the same bytes, called in turn,
therefore rebuild on each call: correct, only slower.) Forgetting a weight, by
`forget` or an optimizer step, drops every entry over its storage, views of it
included: a view made after the step can have a dropped view's id, and its stamp
would match.

Writes the version counter does not see: fused optimizer kernels (torch's
`fused=True`, lthfast.optim's Masked*) do not bump `_version`, so every
optimizer step drops the entries of its parameters (a global step hook);
inference tensors have no version counter, so they are never cached; writes
through `weight.data` or `mask.data` are invisible too: `forget(weight)` or
`clear()` after them (MaskedConv2d / MaskedLinear also forget on `.train()` / `.eval()`).
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from lthfast import _ops

_CACHE: dict[int, "Entry"] = {}
# storage key (_storage_key) -> the keys of the entries over that storage (exactly those in _CACHE)
_ON_STORAGE: dict[int, set[int]] = {}


def _storage_key(weight: torch.Tensor) -> int:
    """The address of the weight's StorageImpl: what identifies its storage while it lives
    (the same number as the compiled stamp's field 6)."""
    return weight.untyped_storage()._cdata


def _py_stamp(weight: torch.Tensor, mask: torch.Tensor) -> tuple | None:
    # The mask object itself is checked through Entry.mask_ref: a temporary
    # mask can come back with the id, address and version of a dead one.
    if weight.is_inference() or mask.is_inference():
        return None  # no version counter (reading _version raises): never fresh
    try:
        storage = _storage_key(weight)
    except (RuntimeError, NotImplementedError):  # a tensor subclass without storage
        return None
    # strides only where they are not the row-major ones (a contiguous tensor's shape
    # fixes the order of its bytes)
    return (weight._version, mask._version, weight.data_ptr(), mask.data_ptr(), tuple(weight.shape),
            None if weight.is_contiguous() else weight.stride(), storage, weight.dtype)


# The compiled version reads in one call what the Python one reads in a dozen
# (csrc/python_module.cpp); the same tuples either way.
_stamp = getattr(_ops._C, "_weight_stamp", None) or _py_stamp


def _pop(key: int) -> None:
    e = _CACHE.pop(key, None)
    if e is not None:
        keys = _ON_STORAGE[e.place[0]]
        keys.discard(key)
        if not keys:
            del _ON_STORAGE[e.place[0]]


def _drop(key: int, ref) -> None:
    e = _CACHE.get(key)
    if e is not None and e.ref is ref:
        _pop(key)


class Entry:
    __slots__ = ("ref", "mask_ref", "stamp", "place", "dense", "packed", "sparsity", "choice",
                 "last", "cast", "__weakref__")

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, stamp):
        key = id(weight)
        # The callback removes the entry as the weight's storage dies, before the
        # storage's address can be reused (see the module docstring). An entry with no
        # stamp is never fresh and never kept in the cache.
        self.ref = (None if stamp is None else
                    weakref.ref(weight.untyped_storage(), lambda r, key=key: _drop(key, r)))
        self.mask_ref = weakref.ref(mask)
        self.stamp = stamp
        # (storage key, data pointer, shape, strides or None): the bytes it was made from
        self.place = None if stamp is None else (stamp[6], stamp[2], stamp[4], stamp[5])
        self.dense = None
        self.packed = None
        self.sparsity = None
        self.choice = {}  # (input shape, groups, path) -> True when the sparse kernel runs
        # path -> the last checked call with it: (input shape, groups, sparse?, mask weakref,
        # stamp, masked weight or packed (rowptr, colidx, values)), what _C._conv_repeat /
        # _linear_repeat read
        self.last = {}
        # path -> the last checked dense call under autocast: (input shape, groups, False,
        # mask weakref, stamp, masked weight in autocast's dtype, input dtype, bias dtype,
        # autocast dtype)
        self.cast = {}

    def fresh(self, weight: torch.Tensor, mask: torch.Tensor) -> bool:
        return (self.stamp is not None and self.mask_ref() is mask
                and self.stamp == _stamp(weight, mask))


def entry(weight: torch.Tensor, mask: torch.Tensor) -> Entry:
    key = id(weight)
    e = _CACHE.get(key)
    if e is None or not e.fresh(weight, mask):
        try:
            e = Entry(weight, mask, _stamp(weight, mask))
        except (RuntimeError, NotImplementedError):  # a subclass that refuses untyped_storage()
            e = Entry(weight, mask, None)
        _pop(key)
        if e.stamp is not None:
            # another weight object over the same bytes: its entry goes
            for other in [k for k in _ON_STORAGE.get(e.place[0], ()) if _CACHE[k].place == e.place]:
                _pop(other)
            _CACHE[key] = e
            _ON_STORAGE.setdefault(e.place[0], set()).add(key)
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


def forget(weight: torch.Tensor) -> None:
    """Drops what was derived from `weight` and from any other tensor over its storage
    (after a write `_version` misses)."""
    _pop(id(weight))
    try:
        keys = _ON_STORAGE.get(_storage_key(weight))
    except (RuntimeError, NotImplementedError):  # a tensor subclass without storage
        return
    for key in list(keys or ()):
        _pop(key)


def clear() -> None:
    _CACHE.clear()
    _ON_STORAGE.clear()


def _forget_stepped(optimizer, args, kwargs) -> None:
    if _CACHE:
        for group in optimizer.param_groups:
            for p in group["params"]:
                forget(p)


register_optimizer_step_post_hook(_forget_stepped)
