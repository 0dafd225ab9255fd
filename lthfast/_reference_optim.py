"""Pure-PyTorch reference of the fused masked optimizer ops (masked_sgd_,
masked_adam_): the test oracle, and the fallback when lthfast._C is missing and
LTHFAST_REFERENCE=1. Same arguments as torch.ops.lthfast.masked_*_ (masks bool or
packed uint8 in the parameter's memory order).

Written for clarity: one tensor at a time, computed in float32 (float64 for
float64 parameters) like torch's fused optimizers, then masked with
torch.where so pruned entries of the weight and of every state are exactly 0.
"""
from __future__ import annotations

import torch


def _wide(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _keep(mask, t):
    """The bool keep-mask of t: all True (None), the bool mask itself, or a packed
    uint8 mask (bit i % 8 of byte i // 8 = entry i of t's memory order) unpacked."""
    if mask is None:
        return torch.ones_like(t, dtype=torch.bool)
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != (t.numel() + 7) // 8:
        raise ValueError(f"a packed mask must be 1-D uint8 of {(t.numel() + 7) // 8} bytes, got "
                         f"{mask.dtype} of shape {tuple(mask.shape)}")
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    bits = ((mask.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:t.numel()].to(torch.bool)
    keep = torch.empty_like(t, dtype=torch.bool)  # t's strides (t is dense)
    keep.as_strided((t.numel(),), (1,)).copy_(bits)  # its memory, in memory order
    return keep


def _skip_and_scale(grad_scale, found_inf):
    if found_inf is not None and float(found_inf) != 0.0:
        return True, 1.0
    return False, (1.0 if grad_scale is None else float(grad_scale))


@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, lr, lr_tensor, momentum, dampening,
                weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf):
    skip, scale = _skip_and_scale(grad_scale, found_inf)
    if skip:
        return
    lr = float(lr_tensor) if lr_tensor is not None else lr
    for i, p in enumerate(params):
        w = _wide(p)
        keep = _keep(masks[i], p)
        pp = p.to(w)
        d = grads[i].to(w)
        if maximize:
            d = -d
        d = torch.where(keep, d / scale, 0.0)
        if weight_decay != 0:
            d = d + weight_decay * pp
        if momentum != 0:
            buf = momentum_buffers[i]
            b = d.clone() if is_first_step else buf.to(w) * momentum + (1 - dampening) * d
            d = d + momentum * b if nesterov else b
            buf.copy_(torch.where(keep, b, 0.0))
        p.copy_(torch.where(keep, pp - lr * d, 0.0))


@torch.no_grad()
def masked_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, lr,
                 lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                 decoupled_weight_decay, grad_scale, found_inf):
    skip, scale = _skip_and_scale(grad_scale, found_inf)
    if skip:
        return
    lr = float(lr_tensor) if lr_tensor is not None else lr
    for i, p in enumerate(params):
        w = _wide(p)
        keep = _keep(masks[i], p)
        state_steps[i].add_(1)
        step = float(state_steps[i])
        pp = p.to(w)
        d = grads[i].to(w)
        if maximize:
            d = -d
        d = torch.where(keep, d / scale, 0.0)
        if weight_decay != 0:
            if decoupled_weight_decay:
                pp = pp * (1 - lr * weight_decay)
            else:
                d = d + weight_decay * pp
        m = torch.lerp(exp_avgs[i].to(w), d, 1 - beta1)
        v = exp_avg_sqs[i].to(w) * beta2 + (1 - beta2) * d * d
        vm = v
        if amsgrad:
            vm = torch.maximum(max_exp_avg_sqs[i].to(w), v)
            max_exp_avg_sqs[i].copy_(torch.where(keep, vm, 0.0))
        bc1 = 1 - beta1 ** step
        bc2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = vm.sqrt() / bc2_sqrt + eps
        p.copy_(torch.where(keep, pp - (lr / bc1) * (m / denom), 0.0))
        exp_avgs[i].copy_(torch.where(keep, m, 0.0))
        exp_avg_sqs[i].copy_(torch.where(keep, v, 0.0))


def naive_masked_step(optimizer: torch.optim.Optimizer, masks: dict) -> None:
    """What users write today: grad *= mask, torch step, weight (and state) *= mask."""
    with torch.no_grad():
        for p, m in masks.items():
            if p.grad is not None:
                p.grad.mul_(m)
    optimizer.step()
    with torch.no_grad():
        for p, m in masks.items():
            p.mul_(m)
            for k, v in optimizer.state.get(p, {}).items():
                # per-entry state only ('step' has a 0-dim parameter's shape too)
                if k != "step" and isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.mul_(m)


__all__ = ["masked_sgd_", "masked_adam_", "naive_masked_step"]
