"""The stock pruning methods.

Each draws random numbers exactly as ``torch.nn.utils.prune`` does (same calls,
same shapes, same dtypes), so the same seed gives the same mask. ``L1Unstructured``
computes its mask with lthfast's magnitude kernel: same mask as torch wherever
there are no ties; ties are pruned first in row-major order (torch.topk's order is
unspecified). A subclass or patch that replaces ``compute_mask`` is always used as
given.
"""
from __future__ import annotations

import torch

import lthfast
from lthfast.magnitude import _FLOAT_DTYPES
from lthfast.prune import validate
from lthfast.prune.base import BasePruningMethod


def _drop_flat(mask, flat_indices):
    """Zero ``mask`` at the given row-major positions, whatever its memory layout."""
    drop = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    drop[flat_indices.to(mask.device)] = True
    return mask.masked_fill_(drop.view(mask.shape), 0)


class Identity(BasePruningMethod):
    """Prunes nothing: sets up ``name_orig`` / ``name_mask`` with a mask of ones."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return default_mask

    @classmethod
    def apply(cls, module, name):
        return super().apply(module, name)


class RandomUnstructured(BasePruningMethod):
    """Prune ``amount`` (an int count or a float fraction) of the unpruned entries at random.

    ``generator``: an optional ``torch.Generator`` on the tensor's device; by
    default the global RNG is used, exactly as torch does.
    """

    PRUNING_TYPE = "unstructured"
    _transient = BasePruningMethod._transient + ("generator",)

    def __init__(self, amount, *, generator=None):
        validate.check_amount(amount)
        self.amount = amount
        self.generator = generator

    def compute_mask(self, t, default_mask):
        k = validate.count_to_prune(self.amount, t.nelement())
        mask = default_mask.clone()
        if k:
            scores = torch.rand(t.shape, dtype=t.dtype, device=t.device,
                                generator=getattr(self, "generator", None))
            _drop_flat(mask, torch.topk(scores.reshape(-1), k=k).indices)
        return mask

    @classmethod
    def apply(cls, module, name, amount, *, generator=None):
        extra = {} if generator is None else {"generator": generator}
        return super().apply(module, name, amount=amount, **extra)


def _kernel_can_take(tensors) -> bool:
    first = tensors[0]
    return all(t.dtype in _FLOAT_DTYPES and t.layout == torch.strided and t.device == first.device
               for t in tensors)


class L1Unstructured(BasePruningMethod):
    """Prune ``amount`` of the unpruned entries with the smallest absolute value
    (of the importance scores when given)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount):
        validate.check_amount(amount)
        self.amount = amount

    def _fast_keep(self, tensors, eligible):
        """Keep-masks over ``tensors`` (pruning among ``eligible``; all when None)
        from the magnitude kernel, or None if the kernel cannot take them."""
        tensors = [t.detach() for t in tensors]
        if not _kernel_can_take(tensors):
            return None
        if eligible is None or eligible[0] is None:
            n, masks = sum(t.numel() for t in tensors), None
        else:
            n, masks = int(sum(torch.count_nonzero(e) for e in eligible)), list(eligible)
        k = validate.count_to_prune(self.amount, n)
        return lthfast.global_magnitude_masks(tensors, k, masks=masks)

    def compute_mask(self, t, default_mask):
        k = validate.count_to_prune(self.amount, t.nelement())
        mask = default_mask.clone()
        if k == 0:
            return mask
        keep = self._fast_keep([t], None)
        if keep is not None:
            return mask.masked_fill_(~keep[0].reshape(mask.shape), 0)
        smallest = torch.topk(torch.abs(t).reshape(-1), k=k, largest=False).indices
        return _drop_flat(mask, smallest)

    @classmethod
    def apply(cls, module, name, amount, importance_scores=None):
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


L1Unstructured._stock_compute_mask = L1Unstructured.compute_mask


def _structured_setup(method, t, bool_ok=False):
    validate.check_structured(t)
    dim = validate.normalize_dim(t, method.dim)
    n_channels = t.shape[dim]
    return dim, n_channels, validate.count_to_prune(method.amount, n_channels, bool_ok=bool_ok)


def _channel_mask(t, dim, channels):
    """Zeros like ``t`` with ones on the given channels (bool mask or indices) along ``dim``."""
    mask = torch.zeros_like(t)
    mask[tuple(channels if d == dim else slice(None) for d in range(t.dim()))] = 1
    return mask


class RandomStructured(BasePruningMethod):
    """Prune ``amount`` of the unpruned channels along ``dim`` at random.

    ``generator``: an optional CPU ``torch.Generator`` (channel scores are drawn
    on the CPU, as in torch); by default the global RNG.
    """

    PRUNING_TYPE = "structured"
    _transient = BasePruningMethod._transient + ("generator",)

    def __init__(self, amount, dim=-1, *, generator=None):
        validate.check_amount(amount)
        self.amount = amount
        self.dim = dim
        self.generator = generator

    def compute_mask(self, t, default_mask):
        dim, n_channels, k = _structured_setup(self, t)
        if k == 0:
            return default_mask
        gen = getattr(self, "generator", None)
        scores = torch.rand(n_channels, generator=gen, device=None if gen is None else gen.device)
        cutoff = torch.kthvalue(scores, k=k).values
        mask = _channel_mask(t, dim, (scores > cutoff).to(t.device))
        mask *= default_mask.to(dtype=mask.dtype)
        return mask

    @classmethod
    def apply(cls, module, name, amount, dim=-1, *, generator=None):
        extra = {} if generator is None else {"generator": generator}
        return super().apply(module, name, amount=amount, dim=dim, **extra)


def _channel_norms(t, n, dim):
    """The L``n`` norm of each channel along ``dim`` (matrix norms for 'nuc', and
    for 'fro' when the channels are matrices), as torch.nn.utils.prune computes it."""
    others = [d for d in range(t.dim()) if d != dim]
    if n == "nuc" or (n == "fro" and len(others) == 2):
        return torch.linalg.matrix_norm(t, ord=n, dim=others if len(others) == 2 else (-2, -1))
    return torch.linalg.vector_norm(t, ord=2 if n == "fro" else n, dim=others)


class LnStructured(BasePruningMethod):
    """Prune ``amount`` of the unpruned channels along ``dim`` with the smallest
    L``n`` norm (``n`` as ``ord`` of ``torch.linalg.vector_norm``, or 'fro' / 'nuc')."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1):
        validate.check_amount(amount)
        self.amount = amount
        self.n = n
        self.dim = dim

    def compute_mask(self, t, default_mask):
        dim, n_channels, k = _structured_setup(self, t, bool_ok=True)  # torch takes True as 1
        # norms and topk before the k == 0 shortcut, as in torch: a bad `n` (or a
        # norm of the wrong shape, or a dtype it rejects) raises for amount=0 too
        norms = _channel_norms(t, self.n, dim)
        kept = torch.topk(norms, k=n_channels - k, largest=True).indices
        if k == 0:
            return default_mask
        mask = _channel_mask(t, dim, kept)
        mask *= default_mask.to(dtype=mask.dtype)
        return mask

    @classmethod
    def apply(cls, module, name, amount, n, dim, importance_scores=None):
        return super().apply(module, name, amount=amount, n=n, dim=dim,
                             importance_scores=importance_scores)


class CustomFromMask(BasePruningMethod):
    """Prune with a given mask (any tensor of the parameter's shape; 0 = pruned)."""

    PRUNING_TYPE = "global"

    def __init__(self, mask):
        if not isinstance(mask, torch.Tensor):  # also an AttributeError, as torch's later one
            raise validate.ArgumentKindError(
                f"mask must be a torch.Tensor, got {type(mask).__name__}")
        self.mask = mask

    def compute_mask(self, t, default_mask):
        if self.mask is None:
            raise RuntimeError(
                "this CustomFromMask was recorded by global_unstructured and no longer holds its "
                "mask (the module's <name>_mask buffer does)")
        validate.check_same_shape(self.mask, default_mask, "the custom mask", "the tensor to prune")
        return default_mask * self.mask.to(dtype=default_mask.dtype)

    @classmethod
    def apply(cls, module, name, mask):
        return super().apply(module, name, mask=mask)
