"""Finding a tensor's pruning hook, and exact rollback of a module's pruning state.

A failed prune must leave the module as it was: same parameters and buffers in
the same order, same hooks (same objects, same ids), same containers. `Snapshot`
records exactly that before anything is changed and puts it back on failure.
"""
from __future__ import annotations

import torch.nn.utils.prune as _torch_prune

from lthfast.prune.validate import PruningStateError

TorchBase = _torch_prune.BasePruningMethod
TorchContainer = _torch_prune.PruningContainer


def is_a(obj, cls) -> bool:
    """``isinstance(obj, cls)``; a real subclass is found in the type's MRO without
    ABCMeta.__instancecheck__ (a Python-level call: torch's BasePruningMethod is an
    ABC, checked several times per pruned tensor). Neither class here defines
    ``__subclasshook__``, so the MRO answer is isinstance's; anything else (virtual
    subclasses) is isinstance itself."""
    return cls in type(obj).__mro__ or isinstance(obj, cls)


def is_pruning_hook(hook, name=None) -> bool:
    """A pruning hook from lthfast or torch (lthfast's classes subclass torch's)."""
    if not is_a(hook, TorchBase):
        return False
    return name is None or getattr(hook, "_tensor_name", None) == name


def find_hook(module, name):
    """``(key, hook)`` of the pruning hook of ``module.<name>``, or ``(None, None)``."""
    found = [(k, h) for k, h in module._forward_pre_hooks.items() if is_pruning_hook(h, name)]
    if len(found) > 1:
        raise PruningStateError(
            f"{type(module).__name__}.{name} has {len(found)} pruning hooks; there must be at most "
            "one (a PruningContainer holds successive methods)")
    return found[0] if found else (None, None)


class Snapshot:
    """The pruning-relevant state of one module, restorable in place."""

    __slots__ = ("module", "parameters", "buffers", "non_persistent", "hooks", "containers",
                 "names", "attrs")

    def __init__(self, module, names=()):
        self.module = module
        self.parameters = dict(module._parameters)
        self.buffers = dict(module._buffers)
        self.non_persistent = set(module._non_persistent_buffers_set)
        self.hooks = hooks = dict(module._forward_pre_hooks)
        self.containers = {id(h): (h, h._pruning_methods) for h in hooks.values()
                           if is_a(h, TorchContainer) and hasattr(h, "_pruning_methods")
                           } if hooks else {}
        self.names = names = tuple(names)
        d = module.__dict__
        self.attrs = {n: d[n] for n in names if n in d}

    def restore(self) -> None:
        m = self.module
        for live, saved in ((m._parameters, self.parameters), (m._buffers, self.buffers),
                            (m._forward_pre_hooks, self.hooks)):
            live.clear()
            live.update(saved)
        m._non_persistent_buffers_set.clear()
        m._non_persistent_buffers_set.update(self.non_persistent)
        for name in self.names:
            m.__dict__.pop(name, None)
        m.__dict__.update(self.attrs)
        for hook, methods in self.containers.values():
            hook._pruning_methods = methods
