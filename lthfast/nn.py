"""Masked layers: drop-in MaskedConv2d / MaskedLinear, and sparsify / densify to
swap them into (and out of) any model, torchvision detection models included.

A masked layer is the plain layer plus a bool `mask` buffer: its state_dict has
the same `weight` / `bias` keys, plus `mask`. Its forward is
lthfast.ops.masked_conv2d / masked_linear (dense or sparse path by the measured
rule; the `path` attribute overrides: "dense", "sparse", or "tuned" to time both
on the first call). The swap shares the original Parameter
objects, so optimizers holding them keep working.
"""
from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lthfast.ops import PATHS, _weight_cache, masked_conv2d, masked_linear

__all__ = ["MaskedConv2d", "MaskedLinear", "sparsify", "densify"]
from lthfast.ops._masked_conv import _string_padding


def _sparsity_repr(mask: torch.Tensor) -> str:
    if mask.device.type == "meta":  # no values to count (a model built on the meta device)
        return "sparsity=?"
    n = mask.numel()
    return f"sparsity={1.0 - int(torch.count_nonzero(mask)) / n if n else 0.0:.4f}"


def _forget_weight(module: nn.Module) -> None:
    # The weight is about to change: its cached masked copies are freed now rather than
    # when its old storage goes.
    w = module._parameters.get("weight")
    if w is not None:
        _weight_cache.forget(w)


def _train(module: nn.Module, mode: bool) -> nn.Module:
    # Writes through `weight.data` (rewinding, old-style training loops) bypass
    # the version counter the weight cache trusts: a mode switch drops it.
    _weight_cache.forget(module.weight)
    return nn.Module.train(module, mode)


def _tensors(module: nn.Module) -> tuple:
    """(module.weight, module.mask, module.bias). Each of those attribute reads misses the
    instance and class dicts and lands in nn.Module.__getattr__ (~0.5-1 us apiece, per
    call): read nn.Module's own dicts instead where that is where they are (the plain
    classes; a parametrized or subclassed module, e.g. torch.nn.utils.parametrize's,
    can put them elsewhere and goes through getattr)."""
    if type(module) in _DENSE_OF:
        params = module._parameters
        try:
            return params["weight"], module._buffers["mask"], params["bias"]
        except KeyError:
            pass
    return module.weight, module.mask, module.bias


def _check_module(model, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")


def _check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return path


def _conv_forward(input, weight, mask, bias, stride, padding, dilation, groups, padding_mode,
                  reversed_padding, path):
    """MaskedConv2d's forward on its tensors and settings."""
    if input.dim() == 3:  # unbatched (C, H, W), which nn.Conv2d takes too
        return _conv_forward(input.unsqueeze(0), weight, mask, bias, stride, padding, dilation,
                             groups, padding_mode, reversed_padding, path).squeeze(0)
    if padding_mode != "zeros":
        input = F.pad(input, reversed_padding, mode=padding_mode)
        padding = 0
    elif isinstance(padding, str):  # "same" as ints where even (no copy of the input), as
        # the functional op resolves it; int padding also keeps the compiled repeat call
        input, padding = _string_padding(input, weight, padding, stride, dilation)
    return masked_conv2d(input, weight, mask, bias, stride, padding, dilation, groups, path=path)


def _linear_forward(input, weight, mask, bias, path):
    """MaskedLinear's forward on its tensors and settings."""
    return masked_linear(input, weight, mask, bias, path=path)


# torch.fx (symbolic_trace, torchvision's create_feature_extractor, FX quantization)
# records each forward as one call, as it records nn.Conv2d / nn.Linear as leaves: it
# cannot trace into them (the argument checks and the path choice look at real tensors)
torch.fx.wrap("_conv_forward")
torch.fx.wrap("_linear_forward")


class _DropsCachedWeight:
    """Mixin of the masked layers: .to() / .double() / load_state_dict first drop the
    weight's cache entry (see _forget_weight)."""

    def _apply(self, fn, recurse=True):
        _forget_weight(self)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        _forget_weight(self)
        return super()._load_from_state_dict(*args, **kwargs)


class MaskedConv2d(_DropsCachedWeight, nn.Conv2d):
    """nn.Conv2d computing conv2d(x, weight * mask); `mask` is a bool buffer (all True
    at construction)."""

    def __init__(self, *args, path: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.path = _check_path(path)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, mask, bias = _tensors(self)
        return _conv_forward(input, weight, mask, bias, self.stride, self.padding, self.dilation,
                             self.groups, self.padding_mode,
                             self._reversed_padding_repeated_twice, self.path)

    def train(self, mode: bool = True):
        return _train(self, mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_sparsity_repr(self.mask)}, path={self.path!r}"


class MaskedLinear(_DropsCachedWeight, nn.Linear):
    """nn.Linear computing linear(x, weight * mask); `mask` is a bool buffer."""

    def __init__(self, *args, path: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.path = _check_path(path)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, mask, bias = _tensors(self)
        return _linear_forward(input, weight, mask, bias, self.path)

    def train(self, mode: bool = True):
        return _train(self, mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_sparsity_repr(self.mask)}, path={self.path!r}"


_MASKED_OF = {nn.Conv2d: MaskedConv2d, nn.Linear: MaskedLinear}
_DENSE_OF = {MaskedConv2d: nn.Conv2d, MaskedLinear: nn.Linear}


def _retype(module: nn.Module, cls: type) -> nn.Module:
    """A module of class `cls` sharing `module`'s parameters, buffers, children and
    hooks (no re-initialisation, no copies of tensors)."""
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    for attr in ("_parameters", "_buffers", "_modules"):
        setattr(new, attr, getattr(module, attr).copy())
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    if getattr(module, "_compiled_call_impl", None) is not None:
        # module.compile() compiled the OLD module's bound _call_impl: keeping it
        # would run the old forward (the mask ignored).
        new._compiled_call_impl = None
        warnings.warn(f"{cls.__name__} replaces a module that had .compile() called on it: "
                      "call .compile() on the new module again", stacklevel=3)
    return new


def _masks_of(ticket_or_masks) -> dict[str, torch.Tensor]:
    if isinstance(ticket_or_masks, dict):
        for key in ticket_or_masks:
            if not isinstance(key, str):
                raise TypeError(f"sparsify: masks are keyed by parameter name (str), got key {key!r}")
        return dict(ticket_or_masks)
    if hasattr(ticket_or_masks, "names") and hasattr(ticket_or_masks, "__getitem__"):
        return {name: ticket_or_masks[name] for name in ticket_or_masks.names()}
    raise TypeError("ticket_or_masks must be a dict {parameter name: bool mask} or a Ticket "
                    f"(with .names() and [name]), got {type(ticket_or_masks).__name__}")


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def _replace(model: nn.Module, new_of: dict[int, nn.Module]) -> nn.Module:
    """Puts new_of[id(m)] at EVERY place module m is reachable (a module used twice is
    one object under two names; named_modules() alone would give only the first)."""
    root = new_of.get(id(model), model)
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name and id(module) in new_of:
            _set_child(root, name, new_of[id(module)])
    return root


def _unknown_hint(params: dict, unknown: list[str]) -> str:
    for key in unknown:
        prefix = key[: -len("weight")]
        if prefix + "weight_orig" in params:
            return (f"; {key!r} is pruned with torch.nn.utils.prune (weight_orig): "
                    "prune.remove(module, 'weight') first")
        if any(n.startswith(prefix + "parametrizations.weight.") for n in params):
            return (f"; {key!r} is parametrized: "
                    "torch.nn.utils.parametrize.remove_parametrizations first")
    return ""


# Modules whose forward reads the weights of some of their Linear / Conv2d children
# directly (passing `self.qkv.weight` to a functional) instead of calling those
# children: a masked child would never run, so sparsify leaves them (with a warning).
# (module, class name) -> the children's attribute names; found in sys.modules only,
# since a model can hold these classes only once their module was imported.
_READS_CHILD_WEIGHTS = {
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"): ("qkv", "proj"),
    ("torchvision.models.video.swin_transformer", "ShiftedWindowAttention3d"): ("qkv", "proj"),
}


def _children_read_directly(model: nn.Module) -> set[int]:
    """ids of the modules in `model` whose parent reads their weight itself."""
    classes = []
    for (mod, cls), attrs in _READS_CHILD_WEIGHTS.items():
        c = getattr(sys.modules.get(mod), cls, None)
        if c is not None:
            classes.append((c, attrs))
    out: set[int] = set()
    if classes:
        for m in model.modules():
            for c, attrs in classes:
                if isinstance(m, c):  # subclasses too (ShiftedWindowAttentionV2)
                    out.update(id(getattr(m, a)) for a in attrs if isinstance(getattr(m, a, None), nn.Module))
    return out


def sparsify(model: nn.Module, ticket_or_masks, path: str = "auto") -> nn.Module:
    """Swaps every nn.Conv2d / nn.Linear whose weight has a mask for MaskedConv2d /
    MaskedLinear holding it (as a bool buffer on the weight's device); returns the model.

    ticket_or_masks: {parameter name ("layer1.0.conv1.weight"): mask} or a Ticket.
    path: every swapped layer's path (lthfast.ops.masked_conv2d): "auto" (the measured
    table), "dense", "sparse", or "tuned" (each configuration's first inference call
    times both and keeps the faster).
    A module used at several places is swapped at all of them; modules sharing a
    masked weight (tied) all get its mask. A layer that is already masked gets
    the new mask and path. Masks of other parameters (e.g. ConvTranspose2d weights,
    subclasses of nn.Conv2d / nn.Linear, whose forward may differ) are left alone
    with a warning, as are those of layers whose parent module reads their weight
    itself instead of calling them (torchvision's Swin attention: qkv / proj).
    Everything is checked before the first module is swapped: on error the model is
    unchanged.
    """
    _check_module(model, "sparsify")
    _check_path(path)
    masks = _masks_of(ticket_or_masks)
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"sparsify: masks name parameters the model does not have: {unknown[:5]}"
                         + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
                         + _unknown_hint(params, unknown))
    skipped = [key for key in masks if not (key.endswith(".weight") or key == "weight")]
    by_weight: dict[int, tuple[str, torch.Tensor]] = {}  # a tied weight: one mask
    for key in masks:
        if key in skipped:
            continue
        first = by_weight.setdefault(id(params[key]), (key, masks[key]))
        if first[0] != key and not (isinstance(masks[key], torch.Tensor) and torch.equal(
                masks[key].to(first[1].device, torch.bool), first[1].to(torch.bool))):
            raise ValueError(f"sparsify: {first[0]!r} and {key!r} are one (tied) tensor but their "
                             "masks differ")
    plan, buffers = {}, {}  # id(module) -> (module, class, key); id(weight) -> mask buffer
    seen = set()
    read_directly = _children_read_directly(model)
    bypassed = []
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight")
        if weight is None or id(weight) not in by_weight or id(module) in seen:
            continue
        seen.add(id(module))
        key = f"{name}.weight" if name else "weight"
        if id(module) in read_directly:
            bypassed.append(key)
            continue
        cls = _MASKED_OF.get(type(module)) or (type(module) if type(module) in _DENSE_OF else None)
        if cls is None:
            skipped.append(key)
            continue
        mask = by_weight[id(weight)][1]
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"sparsify: mask of {key!r} must be a tensor, got {type(mask).__name__}")
        if mask.layout != torch.strided or mask.is_meta:
            raise ValueError(f"sparsify: mask of {key!r} must be a dense tensor with values, got "
                             f"{'a meta' if mask.is_meta else mask.layout} tensor")
        if mask.shape != weight.shape:
            raise ValueError(f"sparsify: mask of {key!r} has shape {tuple(mask.shape)}, the weight "
                             f"has {tuple(weight.shape)}")
        if mask.dtype != torch.bool and not (mask.is_floating_point() and
                                             bool(((mask == 0) | (mask == 1)).all())):
            raise TypeError(f"sparsify: mask of {key!r} must be bool (or 0/1 floats), got {mask.dtype}")
        if id(weight) not in buffers:
            # Not an inference tensor even inside inference_mode: it has to be versioned.
            with torch.inference_mode(False):
                buffers[id(weight)] = mask.detach().to(device=weight.device, dtype=torch.bool,
                                                       copy=True)
        plan[id(module)] = (module, cls, key)
    if skipped:
        warnings.warn(f"sparsify: {len(skipped)} masks are not of nn.Conv2d/nn.Linear weights (or "
                      f"are of subclasses) and were not applied: {skipped[:5]}", stacklevel=2)
    if bypassed:
        warnings.warn(f"sparsify: {len(bypassed)} masks are of layers whose parent module reads "
                      f"their weight itself (not through the layer), so a masked layer would "
                      f"never run; they were not applied: {bypassed[:5]} (zero those weights "
                      "with ticket.apply(model) if they should stay pruned)", stacklevel=2)
    new_of = {}
    for module, cls, _ in plan.values():
        new = module if type(module) is cls else _retype(module, cls)
        new.path = path
        new.register_buffer("mask", buffers[id(module.weight)])
        if new is not module:
            new_of[id(module)] = new
    return _replace(model, new_of)


def densify(model: nn.Module) -> nn.Module:
    """Swaps every MaskedConv2d / MaskedLinear back to nn.Conv2d / nn.Linear with the
    mask applied to the weight in place (pruned weights become 0); returns the model.
    Subclasses (a parametrized masked layer) are left as they are, with a warning."""
    _check_module(model, "densify")
    new_of, left = {}, []
    for name, module in model.named_modules():  # each module once, wherever it is used
        if type(module) not in _DENSE_OF:
            if isinstance(module, tuple(_DENSE_OF)):
                left.append(name)
            continue
        new = _retype(module, _DENSE_OF[type(module)])
        mask = new._buffers.pop("mask")
        new.__dict__.pop("path", None)
        with torch.no_grad():
            new.weight.masked_fill_(~mask.to(torch.bool), 0)
        new_of[id(module)] = new
    if left:  # e.g. a parametrization (weight_norm) registered after sparsify: its own class
        warnings.warn(f"densify: {len(left)} masked layers are of subclasses of MaskedConv2d / "
                      f"MaskedLinear and were left masked: {left[:5]} (remove their "
                      "parametrizations first)", stacklevel=2)
    return _replace(model, new_of)
