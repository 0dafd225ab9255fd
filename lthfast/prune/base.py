"""BasePruningMethod and PruningContainer: the reparameterization ``name`` ->
``name_orig`` (the same Parameter object) times ``name_mask`` (a buffer), kept up
to date by a forward pre-hook.

lthfast's classes subclass torch's (``BasePruningMethod`` subclasses
``torch.nn.utils.prune.BasePruningMethod``, ``PruningContainer`` also subclasses
``torch.nn.utils.prune.PruningContainer``), so hooks pass torch's ``isinstance``
checks and torch's ``remove`` / ``is_pruned`` / re-pruning work on modules pruned
by lthfast; every method torch would run is overridden here.
"""
from __future__ import annotations

import copy
import weakref
from abc import abstractmethod
from collections.abc import Iterable

import torch

from lthfast.prune import validate
from lthfast.prune._state import Snapshot, TorchBase, TorchContainer, find_hook, is_a


def _fast_unstructured_keep(method, t, eligible):
    """Keep-mask from the method's kernel fast path, or None when it does not apply
    (not a stock method, compute_mask overridden or patched, unsupported tensors)."""
    fast = getattr(method, "_fast_keep", None)
    if fast is None or not uses_stock_compute_mask(method):
        return None
    return fast([t], [eligible])


def uses_stock_compute_mask(method) -> bool:
    """True when ``method`` runs its class's own, unpatched ``compute_mask``."""
    stock = getattr(type(method), "_stock_compute_mask", None)
    return (stock is not None and "compute_mask" not in vars(method)
            and getattr(type(method), "compute_mask", None) is stock)


def combine_masks(method, t, mask):
    """Apply ``method`` to the still-unpruned part of ``t`` and merge the result into
    (a copy of, unless ``t`` has mask's dtype) ``mask``.

    unstructured: the entries where ``mask == 1``; structured: the channels along
    ``method.dim`` that still have a non-zero mask entry; global: everything.
    """
    new_mask = mask.to(dtype=t.dtype)
    kind = method.PRUNING_TYPE
    if kind == "unstructured":
        eligible = mask == 1
        keep = _fast_unstructured_keep(method, t, eligible)
        if keep is not None:
            return new_mask.masked_fill_(eligible & ~keep[0], 0)
        index = eligible
    elif kind == "structured":
        if not hasattr(method, "dim"):
            raise AttributeError(
                f"{type(method).__name__} has PRUNING_TYPE 'structured' but no `dim` attribute")
        dim = validate.normalize_dim(t, method.dim)
        others = [d for d in range(t.dim()) if d != dim]
        alive = (mask.sum(dim=others) != 0) if others else (mask != 0)
        index = tuple(alive if d == dim else slice(None) for d in range(t.dim()))
    elif kind == "global":
        index = (slice(None),) * t.dim()
    else:
        raise ValueError(
            f"{type(method).__name__}.PRUNING_TYPE={kind!r} is not one of "
            "'unstructured', 'structured', 'global'")
    partial = method.compute_mask(t[index], default_mask=mask[index])
    new_mask[index] = partial.to(dtype=new_mask.dtype)
    return new_mask


class BasePruningMethod(TorchBase):
    """Base class of pruning methods: subclass it and implement ``compute_mask``.

    A subclass of ``torch.nn.utils.prune.BasePruningMethod``. Instances are the
    forward pre-hooks of pruned modules; they are picklable and deep-copyable.
    """

    _tensor_name: str
    _transient = ("_module_ref",)  # never pickled or deep-copied as is

    def __call__(self, module, inputs):
        """Forward pre-hook: recompute ``module.<name>`` from ``<name>_orig`` and ``<name>_mask``."""
        if getattr(self, "_module_ref", None) is None:
            self._module_ref = weakref.ref(module)
        setattr(module, self._tensor_name, self.apply_mask(module))

    @abstractmethod
    def compute_mask(self, t, default_mask):
        """The new mask for ``t`` (a tensor of scores), on top of ``default_mask``."""

    def _bound_name(self, module) -> str:
        name = getattr(self, "_tensor_name", None)
        if name is None:
            raise validate.NotPrunedError(
                f"this {type(self).__name__} is not bound to a tensor of {type(module).__name__}: "
                "use apply() (or a pruning function) first")
        return name

    def apply_mask(self, module):
        """``<name>_mask * <name>_orig``, in the dtype of the original parameter."""
        name = self._bound_name(module)
        mask = getattr(module, name + "_mask")
        orig = getattr(module, name + "_orig")
        return mask.to(dtype=orig.dtype) * orig

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        """Prune ``module.<name>`` with ``cls(*args, **kwargs)``, on top of any earlier pruning.

        Everything is checked and the mask computed before the module changes; if
        anything fails the module is left exactly as it was. Returns the hook: the
        new method, or the PruningContainer holding it.
        """
        old_key, old = find_hook(module, name)
        method = cls(*args, **kwargs)
        method._tensor_name = name
        current = validate.lookup_tensor(module, name)
        if importance_scores is not None:
            validate.check_same_shape(importance_scores, current, "importance_scores",
                                      f"{type(module).__name__}.{name}")
        scores = current if importance_scores is None else importance_scores

        if old is None:
            orig = validate.require_parameter(module, name, current)
            hook, saved = method, None
            mask = method.compute_mask(scores, default_mask=torch.ones_like(orig))
        else:
            hook = _container_for(old, name)
            saved = hook._pruning_methods
            hook.add_pruning_method(method)
            try:
                # torch clones the old mask contiguous; an unstructured mask keeps the
                # weight's memory format here (docs/prune-differences.md: torch cannot
                # prune a channels_last weight unstructured at all)
                fmt = (torch.preserve_format if getattr(method, "PRUNING_TYPE", None) == "unstructured"
                       else torch.contiguous_format)
                default = getattr(module, name + "_mask").detach().clone(memory_format=fmt)
                mask = hook.compute_mask(scores, default_mask=default)
            except BaseException:
                hook._pruning_methods = saved
                raise
        return _commit(module, name, old_key, hook, saved, mask)

    @classmethod
    def _apply_computed(cls, module, name, mask, *args, _found=None, _snapshot=True,
                        _checked=False, _pruned=None, **kwargs):
        """Like ``apply``, with the final mask (earlier pruning included) already
        computed and checked by the caller: no default mask, no compute_mask.
        ``_found``: the ``find_hook(module, name)`` the caller just did;
        ``_snapshot=False``: the caller restores the module itself on failure;
        ``_checked``: on a first prune, the caller ran ``validate.require_parameter``
        and nothing has run since that could have changed the module; ``_pruned``:
        ``mask * <name>_orig`` as the stock ``apply_mask`` would compute it, already
        computed by the caller (used where that method is the one that applies)."""
        old_key, old = find_hook(module, name) if _found is None else _found
        method = cls(*args, **kwargs)
        method._tensor_name = name
        if old is None:
            hook, saved = method, None
        else:
            hook = _container_for(old, name)
            saved = hook._pruning_methods
            hook.add_pruning_method(method)
        return _commit(module, name, old_key, hook, saved, mask, snapshot=_snapshot,
                       checked=_checked, pruned=_pruned)

    def prune(self, t, default_mask=None, importance_scores=None):
        """``t`` times the mask ``compute_mask`` gives (scores: ``importance_scores`` or ``t``)."""
        if importance_scores is not None:
            validate.check_same_shape(importance_scores, t, "importance_scores", "t")
        scores = t if importance_scores is None else importance_scores
        if default_mask is None:
            default_mask = torch.ones_like(t)
        return t * self.compute_mask(scores, default_mask=default_mask)

    def remove(self, module) -> None:
        """Make the pruning permanent: ``module.<name>`` becomes the ``<name>_orig``
        Parameter again, holding the masked values; ``_orig`` and ``_mask`` go away."""
        name = self._bound_name(module)
        if name + "_orig" not in module._parameters or name + "_mask" not in module._buffers:
            raise validate.MissingPruningStateError(
                f"{type(module).__name__} has no {name}_orig parameter and {name}_mask buffer "
                "to remove")
        with torch.no_grad():
            pruned = self.apply_mask(module)
        if hasattr(module, name):
            delattr(module, name)
        orig = module._parameters.pop(name + "_orig")
        del module._buffers[name + "_mask"]
        orig.data = pruned.data
        setattr(module, name, orig)

    # pickling / deepcopy ---------------------------------------------------
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __deepcopy__(self, memo):
        """Copy the hook; when the module is being copied, make its pruned tensor
        (an autograd non-leaf, which torch cannot deep-copy) copy as a plain tensor."""
        ref = getattr(self, "_module_ref", None)
        module = ref() if ref is not None else None
        if module is not None:
            pruned = module.__dict__.get(getattr(self, "_tensor_name", None))
            if isinstance(pruned, torch.Tensor) and not pruned.is_leaf and id(pruned) not in memo:
                memo[id(pruned)] = pruned.detach().clone()
                memo.setdefault(id(memo), []).append(pruned)  # keep the id valid
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        if module is not None and id(module) in memo:
            new._module_ref = weakref.ref(memo[id(module)])
        return new


def _container_for(old, name):
    """The container that will hold the next method: lthfast's own (or a user
    subclass of torch's) is extended in place; torch's plain one and a single
    method are wrapped in a new lthfast PruningContainer."""
    if is_a(old, TorchContainer) and type(old) is not TorchContainer:
        return old
    container = PruningContainer(*(tuple(old) if is_a(old, TorchContainer) else (old,)))
    container._tensor_name = name
    return container


class PruningContainer(BasePruningMethod, TorchContainer):
    """Successive pruning methods applied to one tensor; the hook of a tensor pruned
    more than once.

    ``PruningContainer(a, b, ...)`` and ``PruningContainer([a, b, ...])`` both work;
    all methods must act on the same tensor name.
    """

    def __init__(self, *args):
        if len(args) == 1 and not is_a(args[0], TorchBase) and isinstance(args[0], Iterable):
            args = tuple(args[0])
        self._pruning_methods = ()
        if args:
            self._tensor_name = getattr(args[0], "_tensor_name", None)
        for method in args:
            self.add_pruning_method(method)

    def add_pruning_method(self, method) -> None:
        """Append ``method`` (a BasePruningMethod acting on this container's tensor)."""
        if method is not None and not is_a(method, TorchBase):
            raise TypeError(
                f"{type(method).__name__} is not a pruning method (a BasePruningMethod subclass)")
        if method is not None:
            mine = getattr(self, "_tensor_name", None)
            theirs = getattr(method, "_tensor_name", None)
            if mine is None:
                self._tensor_name = theirs
            elif theirs != mine:
                raise ValueError(
                    f"this PruningContainer holds methods for {mine!r}; cannot add "
                    f"{type(method).__name__} acting on {theirs!r}")
        self._pruning_methods += (method,)

    def __len__(self):
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, idx):
        return self._pruning_methods[idx]

    def compute_mask(self, t, default_mask):
        """Apply the most recently added method to the part of ``t`` that
        ``default_mask`` has not pruned yet (see ``combine_masks``)."""
        return combine_masks(self._pruning_methods[-1], t, default_mask)


def _commit(module, name, old_key, hook, saved, mask, snapshot=True, checked=False, pruned=None):
    """Install ``mask`` and ``hook`` on ``module.<name>``; on failure put everything back
    (``snapshot=False``: the caller took a snapshot of the module and restores it;
    ``checked``, ``pruned``: see ``_install_direct``)."""
    snapshot = Snapshot(module, (name,)) if snapshot else None
    try:
        if not _install_direct(module, name, old_key, hook, mask, checked, pruned):
            if old_key is None:
                module.register_parameter(name + "_orig", module._parameters[name])
                del module._parameters[name]
            module.register_buffer(name + "_mask", mask)
            setattr(module, name, hook.apply_mask(module))
        if old_key is not None:
            del module._forward_pre_hooks[old_key]
        module.register_forward_pre_hook(hook)
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        if saved is not None:
            hook._pruning_methods = saved
        raise
    if is_a(hook, BasePruningMethod):
        hook._module_ref = weakref.ref(module)
    return hook


_Module = torch.nn.Module
_module_mod = torch.nn.modules.module
_M_GETATTR, _M_GETATTRIBUTE, _M_SETATTR = _Module.__getattr__, _Module.__getattribute__, _Module.__setattr__
_M_REG_PARAM, _M_REG_BUF = _Module.register_parameter, _Module.register_buffer
_Parameter = torch.nn.Parameter


def _install_direct(module, name, old_key, hook, mask, checked=False, pruned=None) -> bool:
    """What ``_commit``'s ``register_parameter`` / ``register_buffer`` / ``setattr`` /
    ``hook.apply_mask`` do, on the module's dicts directly: same state, same order,
    without their lookups and checks (several microseconds per tensor). Only where
    that is exactly equivalent: a module with nn.Module's attribute methods, no global
    registration hooks, names that none of torch's checks would refuse. Returns
    False, having changed nothing, anywhere else (the caller then runs torch's
    methods, which raise what they raise).

    ``checked`` (first prune only): ``validate.require_parameter`` passed and nothing
    ran since, so ``<name>_orig`` and ``<name>_mask`` are free (no parameter, buffer,
    instance or class attribute answers to them) and ``<name>`` is a Parameter.
    ``pruned``: ``mask * <name>_orig``, computed by the caller; set as ``<name>`` in
    place of computing it where the stock ``apply_mask`` applies."""
    cls = type(module)
    if (cls.__getattr__ is not _M_GETATTR or cls.__getattribute__ is not _M_GETATTRIBUTE
            or cls.__setattr__ is not _M_SETATTR or cls.register_parameter is not _M_REG_PARAM
            or cls.register_buffer is not _M_REG_BUF
            or _module_mod._global_parameter_registration_hooks
            or _module_mod._global_buffer_registration_hooks or "." in name):
        return False
    d = module.__dict__
    params, buffers, modules = d.get("_parameters"), d.get("_buffers"), d.get("_modules")
    if (params is None or buffers is None or modules is None or not isinstance(mask, torch.Tensor)
            or "_non_persistent_buffers_set" not in d):
        return False
    orig_name, mask_name = name + "_orig", name + "_mask"
    if old_key is None:  # register_parameter(orig_name, params[name]); del params[name]
        orig = params.get(name)
        if not checked and (not isinstance(orig, _Parameter) or orig_name in params
                            or validate.has_attribute(module, orig_name)
                            or (mask_name not in buffers
                                and validate.has_attribute(module, mask_name))):
            return False
        if orig is None or orig.grad_fn is not None:
            return False
        # getattr(module, orig_name / mask_name) will find the entries set here: nothing
        # else answered to these names (require_parameter's hasattr)
        resolves = True
    else:
        orig = params.get(orig_name)
        # register_buffer(mask_name, mask)
        if mask_name not in buffers and validate.has_attribute(module, mask_name):
            return False
        resolves = (orig is not None and orig_name not in d and mask_name not in d
                    and not hasattr(cls, orig_name) and not hasattr(cls, mask_name))
    # setattr(module, name, <plain tensor>): nn.Module.__setattr__ ends in object.__setattr__
    if name in modules or name in buffers or (old_key is not None and name in params):
        return False
    # hook.apply_mask: getattr(module, orig_name / mask_name), mask times orig
    stock_apply = (resolves and type(hook).apply_mask is BasePruningMethod.apply_mask
                   and getattr(hook, "_tensor_name", None) == name)
    if old_key is None:
        params[orig_name] = orig
        del params[name]
    buffers[mask_name] = mask
    d["_non_persistent_buffers_set"].discard(mask_name)
    if stock_apply:  # a new plain tensor: nn.Module.__setattr__ ends in object.__setattr__
        # (mask.to(dtype) returns mask itself when it has the dtype already)
        object.__setattr__(module, name, pruned if pruned is not None else
                           (mask if mask.dtype == orig.dtype else mask.to(dtype=orig.dtype)) * orig)
    else:
        _M_SETATTR(module, name, hook.apply_mask(module))
    return True
