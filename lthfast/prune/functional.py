"""The pruning functions: each prunes ``module.<name>`` in place and returns ``module``.

Signatures match ``torch.nn.utils.prune``; the random ones also take an optional
keyword-only ``generator``. ``global_unstructured`` lives in ``global_.py``.
"""
from __future__ import annotations

from lthfast.prune._state import is_pruning_hook
from lthfast.prune.methods import (
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    RandomStructured,
    RandomUnstructured,
)


def identity(module, name):
    """Set up pruning of ``module.<name>`` with a mask of ones (prunes nothing)."""
    Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount, *, generator=None):
    """Prune ``amount`` of the unpruned entries of ``module.<name>`` at random."""
    RandomUnstructured.apply(module, name, amount, generator=generator)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune ``amount`` of the unpruned entries of ``module.<name>`` with the smallest
    ``|value|`` (or ``|importance_scores|``); uses lthfast's magnitude kernel."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim, *, generator=None):
    """Prune ``amount`` of the unpruned channels along ``dim`` of ``module.<name>`` at random."""
    RandomStructured.apply(module, name, amount, dim, generator=generator)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prune ``amount`` of the unpruned channels along ``dim`` with the smallest L``n`` norm."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prune ``module.<name>`` with ``mask`` (0 = pruned), on top of earlier pruning."""
    CustomFromMask.apply(module, name, mask)
    return module


def remove(module, name):
    """Make the pruning of ``module.<name>`` permanent and drop its hook, ``_orig`` and ``_mask``.

    Works on modules pruned by lthfast or by ``torch.nn.utils.prune``.
    """
    for key, hook in module._forward_pre_hooks.items():
        if is_pruning_hook(hook, name):
            hook.remove(module)
            del module._forward_pre_hooks[key]
            return module
    raise ValueError(
        f"{type(module).__name__}.{name} is not pruned (no pruning hook for {name!r}), so there is "
        "no pruning to remove")


def is_pruned(module) -> bool:
    """Whether ``module`` or any submodule carries a pruning hook (lthfast's or torch's)."""
    return any(is_pruning_hook(hook)
               for _, sub in module.named_modules()
               for hook in sub._forward_pre_hooks.values())
