"""MaskedSGD: torch.optim.SGD with the ticket's masks fused into the step."""
from __future__ import annotations

import torch

from lthfast.optim import _kernels
from lthfast.optim._masks import MaskedOptimizerMixin, align_entry_state
from lthfast.optim._step import (amp_scalars, check_lr, gather, reject_unsupported, split_lr,
                                 unscale_grads_)


class MaskedSGD(MaskedOptimizerMixin, torch.optim.Optimizer):
    """SGD (momentum, dampening, Nesterov, weight decay, maximize) whose step keeps
    pruned weights, their momentum buffers and their gradients' effect at exactly 0.

    Same arguments and defaults as torch.optim.SGD, plus keyword-only `ticket=` (an
    applied lthfast.Ticket) or `masks=` ({param: bool mask, True = kept}). Parameters
    without a mask update as torch.optim.SGD does (within float rounding). One fused kernel call per
    parameter group and device; `state_dict()` loads into torch.optim.SGD and back.
    `foreach`/`fused` are accepted for drop-in use and ignored (the step is always fused).
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, ticket=None, masks=None):
        check_lr(lr)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        reject_unsupported(type(self).__name__, differentiable=differentiable,
                           foreach=foreach, fused=fused)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=False, fused=fused)
        super().__init__(params, defaults)
        self._init_masks(ticket, masks)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)  # as torch.optim.SGD

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._align_state(("momentum_buffer",))

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

    # the cached plan (steady state: every stepped param has its buffer), see _plan.py
    @staticmethod
    def _plan_key(group) -> bool:
        return bool(group["momentum"] != 0)

    @staticmethod
    def _plan_states(group, params, state):
        if group["momentum"] == 0:
            return ()
        bufs = []
        for p in params:
            st = state.get(p)
            buf = st.get("momentum_buffer") if st else None
            if buf is None:
                return None  # its first step: the checked path creates the buffer
            bufs.append(buf)
        return (bufs,)

    def _plan_run(self, group, call, grads) -> None:
        device = call.device
        grad_scale, found_inf = amp_scalars(self, device)
        lr, lr_t = split_lr(group["lr"], device)
        _kernels.step_sgd_(call.params, grads, call.states[0] if call.states else [],
                             call.masks, lr, lr_t, float(group["momentum"]),
                             float(group["dampening"]), float(group["weight_decay"]),
                             bool(group["nesterov"]), bool(group["maximize"]), False,
                             grad_scale, found_inf)
        unscale_grads_(grads, grad_scale, found_inf)

    def _checked_step(self) -> None:
        """The step with every list rebuilt and every grad checked first (first steps, a
        changed optimizer, errors, torch.compile)."""
        name = type(self).__name__
        for group, by_device in gather(name, self.param_groups):
            momentum = group["momentum"]
            for device, pairs in by_device.items():
                grad_scale, found_inf = amp_scalars(self, device)
                lr, lr_t = split_lr(group["lr"], device)
                args = (lr, lr_t, momentum, group["dampening"], float(group["weight_decay"]),
                        group["nesterov"], group["maximize"])
                if momentum == 0:
                    self._call([p for p, _ in pairs], [g for _, g in pairs], [], args, False,
                               grad_scale, found_inf)
                    continue
                old, new = [], []
                for p, g in pairs:
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is not None and buf.stride() != p.stride():  # p's layout changed
                        align_entry_state(p, st, ("momentum_buffer",))
                        buf = st["momentum_buffer"]
                    (new if buf is None else old).append((p, g, buf))
                if old:
                    self._call([p for p, _, _ in old], [g for _, g, _ in old],
                               [b for _, _, b in old], args, False, grad_scale, found_inf)
                if new:
                    # zeros, not empty: state never holds uninitialized memory
                    bufs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p, _, _ in new]
                    self._call([p for p, _, _ in new], [g for _, g, _ in new], bufs, args, True,
                               grad_scale, found_inf)
                    # GradScaler skipped this first step: keep no buffer, as torch.optim.SGD
                    # (not stepped then), so the next step is the first (buf = grad, no
                    # dampening). Read (one sync on GPU) only on a parameter's first step.
                    if found_inf is not None and bool(found_inf):
                        continue
                    for (p, _, _), b in zip(new, bufs):
                        self.state[p]["momentum_buffer"] = b

    def _call(self, params, grads, bufs, args, first, grad_scale, found_inf):
        lr, lr_t, momentum, dampening, wd, nesterov, maximize = args
        masks = [self._mask_on_device(p) for p in params]
        _kernels.masked_sgd_(params, grads, bufs, masks, lr, lr_t, float(momentum),
                             float(dampening), wd, bool(nesterov), bool(maximize), first,
                             grad_scale, found_inf)
        unscale_grads_(grads, grad_scale, found_inf)
