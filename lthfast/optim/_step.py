"""Step plumbing shared by the masked optimizers: gather (param, grad) per
device with the checks the kernels rely on, and GradScaler's scalars."""
from __future__ import annotations

import torch


def gather(name: str, param_groups: list[dict]) -> list[tuple[dict, dict]]:
    """[(group, {device: [(param, grad), ...]})] of params with a grad, checked
    before anything is written so a bad grad changes nothing."""
    out, index = [], 0
    for group in param_groups:
        by_device: dict = {}
        for p in group["params"]:
            g = p.grad
            if g is not None:
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(f"{name} does not support sparse gradients (parameter "
                                       f"{index}, shape {tuple(p.shape)})")
                if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                    raise RuntimeError(
                        f"{name}: the grad of parameter {index} ({tuple(g.shape)}, {g.dtype}, "
                        f"{g.device}) does not match the parameter ({tuple(p.shape)}, {p.dtype}, "
                        f"{p.device})")
                by_device.setdefault(p.device, []).append((p, g))
            index += 1
        out.append((group, by_device))
    return out


def amp_scalars(optimizer, device: torch.device):
    """(grad_scale, found_inf) that torch.amp.GradScaler set on the optimizer, on `device`."""
    gs = getattr(optimizer, "grad_scale", None)
    fi = getattr(optimizer, "found_inf", None)
    if gs is not None and gs.device != device:
        gs = gs.to(device, non_blocking=True)
    if fi is not None and fi.device != device:
        fi = fi.to(device, non_blocking=True)
    if gs is not None and gs.dtype not in (torch.float32, torch.float64):
        gs = gs.float()
    if fi is not None and fi.dtype not in (torch.float32, torch.float64):
        fi = fi.float()
    return gs, fi


def unscale_grads_(grads: list, grad_scale, found_inf) -> None:
    """After a step that torch.amp.GradScaler handed its scale to: every grad divided by
    it, as torch's fused optimizers leave them (its unscale_ does that for the others);
    a skipped step (found_inf) leaves them scaled, as theirs do. No host sync."""
    if grad_scale is None or not grads:
        return
    denom = grad_scale if found_inf is None else torch.where(found_inf > 0, 1.0, grad_scale)
    for dtype_grads in _by_dtype(grads):
        torch._foreach_div_(dtype_grads, denom)


def _by_dtype(grads: list) -> list:
    groups: dict = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    return list(groups.values())


def split_lr(lr, device: torch.device):
    """(float lr, lr tensor or None) for the kernels."""
    if isinstance(lr, torch.Tensor):
        t = lr.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.double()
        if t.device.type != "cpu" and t.device != device:
            t = t.to(device)
        if device.type == "cpu" and t.device.type != "cpu":
            t = t.cpu()
        return 0.0, t.reshape(())
    return float(lr), None


def check_lr(lr) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def reject_unsupported(name: str, *, differentiable=False, capturable=False, foreach=None,
                       fused=None) -> None:
    if fused and foreach:  # torch.optim refuses the pair too (same error)
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable:
        raise ValueError(f"{name} does not support differentiable=True (its fused step is not "
                         "differentiable); use the torch.optim optimizer for that")
    if capturable:
        raise ValueError(f"{name} does not support capturable=True (CUDA graph capture); its "
                         "step keeps the step counters on the parameters' device already")
