"""Drop-in replacement for ``torch.nn.utils.prune``.

``import lthfast.prune as prune`` in place of ``import torch.nn.utils.prune as prune``:
same functions, classes, module layout (``name_orig`` / ``name_mask`` / forward
pre-hook), state_dict keys, errors and masks (for the same inputs and seed).
``l1_unstructured`` and ``global_unstructured(..., pruning_method=L1Unstructured)``
use lthfast's global magnitude kernel. Differences from torch (bug fixes and
deterministic tie-breaking) are listed in docs/prune-differences.md.
"""
from lthfast.prune.base import BasePruningMethod, PruningContainer
from lthfast.prune.functional import (
    custom_from_mask,
    identity,
    is_pruned,
    l1_unstructured,
    ln_structured,
    random_structured,
    random_unstructured,
    remove,
)
from lthfast.prune.global_ import global_unstructured
from lthfast.prune.methods import (
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    RandomStructured,
    RandomUnstructured,
)
from lthfast.prune.methods import _channel_norms as _compute_norm_impl
from lthfast.prune.validate import (  # torch's private helper names, for code that imports them
    NotPrunedError,
    PruningShapeError,
    PruningStateError,
    _compute_nparams_toprune,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)


def _compute_norm(t, n, dim):
    """Per-channel L``n`` norms along ``dim`` (torch.nn.utils.prune's private helper name).
    A bad ``dim`` raises what torch's raises: IndexError below -t.dim(), ValueError above."""
    ndim = t.dim()
    if dim < 0:
        if dim < -ndim:
            raise IndexError(f"dim={dim} is out of range for a tensor with {ndim} dims")
        dim += ndim
    if dim >= ndim:
        raise ValueError(f"dim={dim} is out of range for a tensor with {ndim} dims")
    return _compute_norm_impl(t, n, dim)


__all__ = [
    "BasePruningMethod",
    "PruningContainer",
    "Identity",
    "RandomUnstructured",
    "L1Unstructured",
    "RandomStructured",
    "LnStructured",
    "CustomFromMask",
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "global_unstructured",
    "custom_from_mask",
    "remove",
    "is_pruned",
    "PruningShapeError",
    "PruningStateError",
    "NotPrunedError",
]
