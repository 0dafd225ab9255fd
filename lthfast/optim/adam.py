"""MaskedAdam / MaskedAdamW: torch.optim.Adam / AdamW with the ticket's masks
fused into the step."""
from __future__ import annotations

import torch

from lthfast.optim import _kernels
from lthfast.optim._masks import MaskedOptimizerMixin, align_entry_state, new_step_tensor
from lthfast.optim._step import (amp_scalars, check_lr, gather, reject_unsupported, split_lr,
                                 unscale_grads_)

_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _beta(b, i: int):
    """A beta as torch.optim.Adam keeps it: a float, or a 1-element tensor as a 0-dim view
    of it (read at every step, so an in-place change takes effect, as in torch)."""
    if isinstance(b, torch.Tensor):
        if b.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")
        return b.squeeze() if b.dim() != 0 else b
    return b


class MaskedAdam(MaskedOptimizerMixin, torch.optim.Optimizer):
    """Adam (amsgrad, maximize, L2 or decoupled weight decay) whose step keeps pruned
    weights and their exp_avg / exp_avg_sq / max_exp_avg_sq at exactly 0.

    Same arguments and defaults as torch.optim.Adam, plus keyword-only `ticket=` (an
    applied lthfast.Ticket) or `masks=` ({param: bool mask, True = kept}). Parameters
    without a mask update as torch.optim.Adam does (within float rounding). State keys ('step', 'exp_avg',
    'exp_avg_sq', 'max_exp_avg_sq') are torch's, so `state_dict()` loads into
    torch.optim.Adam and back. 'step' is a CPU tensor for CPU parameters (as in
    torch.optim) and a float32 tensor on the parameter's GPU for GPU parameters (as in
    torch's fused Adam: no host sync per step). `foreach`/`fused` are accepted and
    ignored (the step is always fused); `capturable`/`differentiable` are not supported.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 ticket=None, masks=None):
        check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        b0, b1 = _beta(betas[0], 0), _beta(betas[1], 1)
        if not 0.0 <= b0 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {b0}")
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {b1}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        reject_unsupported(type(self).__name__, differentiable=differentiable,
                           capturable=capturable, foreach=foreach, fused=fused)
        defaults = dict(lr=lr, betas=(b0, b1), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=False,
                        differentiable=False, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self._init_masks(ticket, masks)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._align_state(_STATE_KEYS)

    def _state_of(self, p: torch.Tensor, amsgrad: bool) -> dict:
        st = self.state[p]
        if len(st) == 0:
            st["step"] = new_step_tensor(p)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in st:
            st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        avg = st.get("exp_avg")
        if avg is not None and avg.stride() != p.stride():  # p's layout changed since made
            align_entry_state(p, st, _STATE_KEYS)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._follow_layouts()
        if not self._planned_step():
            self._checked_step()
        return loss

    # the cached plan (steady state: every stepped param has its state), see _plan.py
    @staticmethod
    def _plan_key(group) -> bool:
        return bool(group["amsgrad"])

    @staticmethod
    def _plan_states(group, params, state):
        amsgrad = bool(group["amsgrad"])
        avgs, sqs, maxs, steps = [], [], [], []
        for p in params:
            st = state.get(p)
            if not st:
                return None  # its first step: the checked path creates the state
            try:
                avgs.append(st["exp_avg"])
                sqs.append(st["exp_avg_sq"])
                steps.append(st["step"])
                if amsgrad:
                    maxs.append(st["max_exp_avg_sq"])
            except KeyError:
                return None
        return avgs, sqs, maxs, steps

    def _plan_run(self, group, call, grads) -> None:
        device = call.device
        grad_scale, found_inf = amp_scalars(self, device)
        lr, lr_t = split_lr(group["lr"], device)
        beta1, beta2 = group["betas"]
        avgs, sqs, maxs, steps = call.states
        _kernels.step_adam_(
            call.params, grads, avgs, sqs, maxs, steps, call.masks, lr, lr_t, float(beta1),
            float(beta2), float(group["weight_decay"]), float(group["eps"]),
            bool(group["amsgrad"]), bool(group["maximize"]),
            bool(group["decoupled_weight_decay"]), grad_scale, found_inf)
        unscale_grads_(grads, grad_scale, found_inf)

    def _checked_step(self) -> None:
        """The step with every list rebuilt and every grad checked first (first steps, a
        changed optimizer, errors, torch.compile)."""
        name = type(self).__name__
        for group, by_device in gather(name, self.param_groups):
            amsgrad = bool(group["amsgrad"])
            beta1, beta2 = group["betas"]
            for device, pairs in by_device.items():
                grad_scale, found_inf = amp_scalars(self, device)
                lr, lr_t = split_lr(group["lr"], device)
                params, grads = [p for p, _ in pairs], [g for _, g in pairs]
                states = [self._state_of(p, amsgrad) for p in params]
                _kernels.masked_adam_(
                    params, grads, [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                    [s["step"] for s in states], [self._mask_on_device(p) for p in params],
                    lr, lr_t, float(beta1), float(beta2), float(group["weight_decay"]),
                    float(group["eps"]), amsgrad, bool(group["maximize"]),
                    bool(group["decoupled_weight_decay"]), grad_scale, found_inf)
                unscale_grads_(grads, grad_scale, found_inf)


class MaskedAdamW(MaskedAdam):
    """AdamW (decoupled weight decay, default 1e-2) with fused masking; see MaskedAdam.
    Same arguments and defaults as torch.optim.AdamW plus `ticket=` / `masks=`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, ticket=None, masks=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, ticket=ticket, masks=masks)

    def __setstate__(self, state):
        # as torch.optim.AdamW: any loaded state (an Adam state_dict included) stays AdamW
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
