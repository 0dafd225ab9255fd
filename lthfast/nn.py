"""Masked layers: drop-in MaskedConv2d / MaskedLinear, and sparsify / densify to
swap them into (and out of) any model, torchvision detection models included.

A masked layer is the plain layer plus a bool `mask` buffer: its state_dict has
the same `weight` / `bias` keys, plus `mask`. Its forward is
lthfast.ops.masked_conv2d / masked_linear (dense or sparse path by the measured
rule; `path` attribute overrides). The swap shares the original Parameter
objects, so optimizers holding them keep working.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lthfast.ops import PATHS, masked_conv2d, masked_linear


def _sparsity_repr(mask: torch.Tensor) -> str:
    n = mask.numel()
    return f"sparsity={1.0 - int(torch.count_nonzero(mask)) / n if n else 0.0:.4f}"


def _check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return path


class MaskedConv2d(nn.Conv2d):
    """nn.Conv2d computing conv2d(x, weight * mask); `mask` is a bool buffer (all True
    at construction)."""

    def __init__(self, *args, path: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.path = _check_path(path)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        return masked_conv2d(input, self.weight, self.mask, self.bias, self.stride, padding,
                             self.dilation, self.groups, path=self.path)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_sparsity_repr(self.mask)}, path={self.path!r}"


class MaskedLinear(nn.Linear):
    """nn.Linear computing linear(x, weight * mask); `mask` is a bool buffer."""

    def __init__(self, *args, path: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.path = _check_path(path)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return masked_linear(input, self.weight, self.mask, self.bias, path=self.path)

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
    return new


def _masks_of(ticket_or_masks) -> dict[str, torch.Tensor]:
    if isinstance(ticket_or_masks, dict):
        return dict(ticket_or_masks)
    if hasattr(ticket_or_masks, "names") and hasattr(ticket_or_masks, "__getitem__"):
        return {name: ticket_or_masks[name] for name in ticket_or_masks.names()}
    raise TypeError("ticket_or_masks must be a dict {parameter name: bool mask} or a Ticket "
                    f"(with .names() and [name]), got {type(ticket_or_masks).__name__}")


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def sparsify(model: nn.Module, ticket_or_masks, path: str = "auto") -> nn.Module:
    """Swaps every nn.Conv2d / nn.Linear whose weight has a mask for MaskedConv2d /
    MaskedLinear holding it (as a bool buffer on the weight's device); returns the model.

    ticket_or_masks: {parameter name ("layer1.0.conv1.weight"): mask} or a Ticket.
    Masks of other parameters (e.g. ConvTranspose2d weights) are left alone with a
    warning. Everything is checked before the first module is swapped: on error
    the model is unchanged.
    """
    _check_path(path)
    masks = _masks_of(ticket_or_masks)
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"sparsify: masks name parameters the model does not have: {unknown[:5]}"
                         + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    swaps, skipped = [], []
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in masks:
            continue
        cls = _MASKED_OF.get(type(module))
        if cls is None:
            if not isinstance(module, tuple(_DENSE_OF)):
                skipped.append(key)
            continue
        mask = masks[key]
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"sparsify: mask of {key!r} must be a tensor, got {type(mask).__name__}")
        if mask.shape != module.weight.shape:
            raise ValueError(f"sparsify: mask of {key!r} has shape {tuple(mask.shape)}, the weight "
                             f"has {tuple(module.weight.shape)}")
        if mask.dtype != torch.bool and not (mask.is_floating_point() and
                                             bool(((mask == 0) | (mask == 1)).all())):
            raise TypeError(f"sparsify: mask of {key!r} must be bool (or 0/1 floats), got {mask.dtype}")
        swaps.append((name, module, cls, mask))
    for key in masks:
        if key.endswith(".weight") or key == "weight":
            continue
        skipped.append(key)
    if skipped:
        warnings.warn(f"sparsify: {len(skipped)} masks are not of nn.Conv2d/nn.Linear weights and "
                      f"were not applied: {skipped[:5]}", stacklevel=2)
    for name, module, cls, mask in swaps:
        new = _retype(module, cls)
        new.path = path
        new.register_buffer("mask", mask.detach().to(device=module.weight.device, dtype=torch.bool,
                                                     copy=True))
        if name:
            _set_child(model, name, new)
        else:
            model = new
    return model


def densify(model: nn.Module) -> nn.Module:
    """Swaps every MaskedConv2d / MaskedLinear back to nn.Conv2d / nn.Linear with the
    mask applied to the weight in place (pruned weights become 0); returns the model."""
    swaps = [(name, m) for name, m in model.named_modules() if type(m) in _DENSE_OF]
    for name, module in swaps:
        new = _retype(module, _DENSE_OF[type(module)])
        mask = new._buffers.pop("mask")
        new.__dict__.pop("path", None)
        with torch.no_grad():
            new.weight.masked_fill_(~mask.to(torch.bool), 0)
        if name:
            _set_child(model, name, new)
        else:
            model = new
    return model
