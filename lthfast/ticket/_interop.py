"""Interop with torch.nn.utils.prune (and lthfast.prune, which uses the same
reparametrization): masks from ``<name>_mask`` buffers, and masks installed as
``custom_from_mask`` hooks."""
from __future__ import annotations

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from lthfast import bitmask


def masks_of_pruned(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{original parameter name: mask}`` of every pruned parameter, nonzero = kept:
    the ``<name>_mask`` buffer itself where ``pack_bits`` takes it (bool, or a float
    in torch's format: no bool copy of every mask), else ``buffer != 0``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module is a {type(module).__name__}, not a torch.nn.Module")
    masks = {}
    for prefix, m in module.named_modules():
        for buf_name, buf in m._buffers.items():
            if buf is None or not buf_name.endswith("_mask"):
                continue
            base = buf_name[: -len("_mask")]
            if m._parameters.get(base + "_orig") is None:
                continue
            packable = buf.dtype in bitmask._PACKABLE and buf.layout == torch.strided
            masks[f"{prefix}.{base}" if prefix else base] = buf.detach() if packable else buf != 0
    if not masks:
        raise ValueError(f"{type(module).__name__} has no pruned parameters (no <name>_mask buffer "
                         "beside a <name>_orig parameter): prune it with torch.nn.utils.prune or "
                         "lthfast.prune first")
    return masks


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) -> every (module, qualified name) that holds it (tied weights: several)."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for prefix, m in model.named_modules():
        for attr, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, f"{prefix}.{attr}" if prefix else attr))
    return out


def install(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """custom_from_mask on every named parameter; all checked before any change."""
    targets = []
    holders = _holders(model)
    for name, mask in masks.items():
        prefix, _, attr = name.rpartition(".")
        mod = model.get_submodule(prefix) if prefix else model
        # a hook reparametrizes one module's attribute: another module that holds the same
        # tensor (weight tying) would go on using the unmasked weight
        others = [n for m, n in holders.get(id(getattr(mod, attr)), []) if m is not mod]
        if others:
            raise ValueError(f"{name!r} is tied to {others} (one tensor held by several modules): "
                             "torch.nn.utils.prune hooks on one module would leave the others "
                             "using the unmasked weight; use ticket.apply(model), which masks "
                             "the tensor itself")
        if any(isinstance(h, torch_prune.BasePruningMethod) and getattr(h, "_tensor_name", None) == attr
               for h in mod._forward_pre_hooks.values()):
            raise ValueError(f"{name!r} is already pruned with hooks; remove them first "
                             "(torch.nn.utils.prune.remove)")
        targets.append((mod, attr, mask))
    for mod, attr, mask in targets:
        torch_prune.custom_from_mask(mod, attr, mask)
    return model
