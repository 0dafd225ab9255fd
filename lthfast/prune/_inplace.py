"""Rewriting a mask or pruned tensor in place when nothing else can see it.

torch.nn.utils.prune makes every round a new ``<name>_mask`` and a new ``<name>``,
and frees the old ones. Writing a fresh tensor costs far more than rewriting one
that is already mapped: each new page is faulted in and zeroed first (this
project's 2-core VM: ~190 ms to first-write 236 MB, ~45 ms to rewrite it), and the
heap rarely hands freed blocks back for the next tensor (round 2's RSS rose by
67-106% of the weights). When the only holders of the old tensor are the module
(and lthfast's own rollback snapshot), no one can tell the old object rewritten
from a new one, so lthfast.prune writes the new values into the old memory.

"Nothing else" is checked, not assumed: the Python references are counted (the
caller says how many are its own), and the C++ ones too -- an autograd graph that
saved the tensor, a view or ``detach()`` of it (a state_dict entry), a weak
reference -- and the memory must be an ordinary allocation of the device's
allocator (not shared memory, a file mapping, or memory borrowed from numpy).
"""
from __future__ import annotations

import sys
import weakref

import torch

from lthfast import _ops


def _py_refs(t) -> int:
    return sys.getrefcount(t)


def _through_a_parameter(t, n_python) -> int:
    return _py_refs(t)  # as sole_holders calls it: t is a parameter there too


def _probe() -> tuple[int, tuple]:
    """(Python references counted as sole_holders counts them, _tensor_holders) of a
    tensor held by a dict and a local variable -- the same call shape as every
    caller's: a local variable passed on (on Pythons that pass locals as borrowed
    references, the count is then off by the same amount in both)."""
    held = {"t": torch.empty(1)}
    t = held["t"]
    return _through_a_parameter(t, 2) - 1, _ops._C._tensor_holders(t)


_BASE = None  # (python refs, (impl refs, weak refs, storage refs)) of a tensor held once


def sole_holders(t: torch.Tensor, n_python: int, n_storage: int | None = 1) -> bool:
    """True when exactly ``n_python`` Python references hold ``t`` (the caller counts
    its own: dict entries, local variables; pass ``t`` as a local variable, as the
    calibration does) and nothing else does: no other Python
    reference, no C++ reference (autograd graph, saved tensor), no weak reference,
    and its storage is shared by ``n_storage`` tensors (1: by no view or alias; None:
    not checked) and was allocated by the device's allocator."""
    global _BASE
    if not _ops.available() or _ops.use_reference():
        return False
    if (type(t) is not torch.Tensor or t.layout != torch.strided
            or t.device.type not in ("cpu", "cuda") or t.is_inference()
            or t.is_conj() or t.is_neg() or weakref.getweakrefcount(t)):
        return False
    if _BASE is None:
        py, (impl, weak, storage, _) = _probe()
        _BASE = (py - 1, (impl, weak, storage - 1))
    py_base, (impl_base, weak_base, storage_base) = _BASE
    impl, weak, storage, ordinary = _ops._C._tensor_holders(t)
    return (ordinary and _py_refs(t) - py_base == n_python and impl == impl_base
            and weak == weak_base and (n_storage is None or storage - storage_base == n_storage))


def alias_of(t: torch.Tensor) -> torch.Tensor:
    """A new tensor over ``t``'s memory (same storage, offset, shape and strides) that
    is not a view of it: no autograd history, and ``t`` itself can be let go. (Not
    through ``t.untyped_storage()``: a storage's Python object, once made, lives as
    long as the storage and holds a reference to it.)"""
    with torch.no_grad():
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(t)


class _MaskProduct(torch.autograd.Function):
    """Returns ``out_box[0]``, which holds ``mask * orig`` already, with the gradient
    torch's ``mask * orig`` has: ``grad * mask`` for ``orig`` (the mask is a buffer and
    needs none). (forward takes ctx: with a separate setup_context, apply binds the
    arguments through inspect.signature, ~70 us per call.)"""

    @staticmethod
    def forward(ctx, orig, mask, out_box):
        ctx.save_for_backward(mask)
        return out_box.pop()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def fits_product(orig: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> bool:
    """``out`` has the dtype, shape, strides and device of ``mask * orig`` (orig and the
    mask alike), and the mask needs no gradient."""
    return (not mask.requires_grad and orig.dtype == mask.dtype == out.dtype
            and orig.shape == mask.shape == out.shape
            and orig.stride() == mask.stride() == out.stride()
            and orig.device == mask.device == out.device)


def as_product(orig: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """``out``, which holds ``mask * orig`` (the mask pass wrote it), as the pruning hook's
    ``mask * orig`` would be: with its autograd history when grad mode is on and ``orig``
    requires grad. None where ``out`` does not fit (``fits_product``)."""
    if not fits_product(orig, mask, out):
        return None
    if torch.is_grad_enabled() and orig.requires_grad:
        return _MaskProduct.apply(orig, mask, [out])
    return out
