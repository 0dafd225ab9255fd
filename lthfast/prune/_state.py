"""Finding a tensor's pruning hook, and exact rollback of a module's pruning state.

A failed prune must leave the module as it was: same parameters and buffers in
the same order, same hooks (same objects, same ids), same containers. `Snapshot`
records exactly that before anything is changed and puts it back on failure.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.utils.prune as _torch_prune

from lthfast.bitmask import _PACKABLE, _op, unpack_bits
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

    def drop_pruned(self, name: str) -> None:
        """Stops holding the ``<name>`` tensor (``<name>_orig * <name>_mask``) that is
        about to be replaced: global_unstructured calls this (and ``drop_mask`` or
        ``rewrite_mask``) for each tensor before making its replacement, so that the
        old ones are freed as it goes instead of all being held to the end (2x the
        weights in a second round). It is kept as a weak reference: restore() puts
        it back while anyone else holds it, else rebuilds it as ``<name>_orig *
        <name>_mask``, as the pruning hook computes it."""
        if (type(self.attrs.get(name)) is torch.Tensor and name + "_orig" in self.parameters
                and name + "_mask" in self.buffers):
            self.attrs[name] = _Dropped(self.attrs[name], bits=False)

    def drop_mask(self, name: str, known_bits: tuple | None = None) -> None:
        """Stops holding the ``<name>_mask`` buffer that is about to be replaced (the
        caller has checked that it holds only 0 and 1): kept as a weak reference plus
        its bits; restore() rebuilds it from them when nothing else holds it (values,
        dtype, shape and strides; a -0.0 comes back as 0.0). ``known_bits``: ``(mask,
        pack_bits(mask))`` when the caller has packed it already; used if ``mask``
        is the buffer."""
        key = name + "_mask"
        mask = self.buffers.get(key)
        if (type(mask) is torch.Tensor and not mask.requires_grad
                and mask.dtype in _PACKABLE  # bool or a float dtype pack_bits takes
                and (mask.is_contiguous()  # rebuilt with empty_strided: dense layouts only
                     or mask.is_contiguous(memory_format=torch.channels_last))):
            packed = known_bits[1] if known_bits is not None and known_bits[0] is mask else None
            self.buffers[key] = _Dropped(mask, packed=packed)

    def rewrite_mask(self, name: str, packed: torch.Tensor) -> None:
        """The ``<name>_mask`` buffer (holding only 0 and 1, packed: its bits) is
        about to be rewritten in place: restore() writes its old values back."""
        key = name + "_mask"
        self.buffers[key] = _Rewritten(self.buffers[key], packed)

    def restore(self) -> None:
        m = self.module
        for key, value in self.buffers.items():
            if type(value) is _Dropped or type(value) is _Rewritten:
                self.buffers[key] = value.mask()
        for name, value in self.attrs.items():
            if type(value) is _Dropped:
                self.attrs[name] = value.tensor(self.parameters[name + "_orig"],
                                                self.buffers[name + "_mask"])
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


class _Dropped:
    """A tensor a Snapshot no longer holds: a weak reference, and for a mask its kept
    bits (1 bit per entry) and layout, to rebuild it when nothing else holds it."""

    __slots__ = ("ref", "packed", "dtype", "shape", "stride", "device", "grad")

    def __init__(self, t: torch.Tensor, bits: bool = True, packed: torch.Tensor | None = None):
        self.ref = weakref.ref(t)
        self.grad = t.requires_grad  # a pruned tensor made in grad mode is rebuilt in it
        self.packed = packed  # pack_bits(t) when the caller has it already
        if bits:
            # t is a dense bool or float tensor that requires no grad (Snapshot.drop_mask
            # checks): nothing to record, so no no_grad context and the op without its
            # Python wrapper's checks (round 2 of bench/host_overhead_prune.py: 57 -> 52
            # us per tensor). A float mask is packed as it is (nonzero = kept): no bool
            # copy (round 2 on keypointrcnn's 59M weights: ~40 ms less on 2 CPU threads)
            if packed is None:
                self.packed = _op("pack_bits")(t)
            self.dtype, self.shape, self.stride, self.device = t.dtype, t.shape, t.stride(), t.device

    def mask(self) -> torch.Tensor:
        t = self.ref()
        if t is not None:
            return t
        out = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            out.copy_(unpack_bits(self.packed, self.shape))
        return out

    def tensor(self, orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = self.ref()
        if t is not None:
            return t
        with torch.set_grad_enabled(self.grad):  # whatever mode the failed call ran in
            return orig * mask


class _Rewritten:
    """A mask rewritten in place: the object, and its old bits to write back."""

    __slots__ = ("tensor", "packed")

    def __init__(self, t: torch.Tensor, packed: torch.Tensor):
        self.tensor, self.packed = t, packed

    def mask(self) -> torch.Tensor:
        with torch.no_grad():
            self.tensor.copy_(unpack_bits(self.packed, self.tensor.shape))
        return self.tensor
