"""The fused masked optimizer ops: fake kernels, and the one place that picks
the compiled op or (LTHFAST_REFERENCE=1 without lthfast._C) the reference.

Each mask is None, bool (the param's shape and strides) or packed uint8 (1 bit
per entry in the param's memory order); the ops only mutate their inputs, so
the fake kernels are the same for both forms."""
from __future__ import annotations

import torch

from lthfast import _ops
from lthfast import _reference_optim as _ref

if _ops.available():

    @torch.library.register_fake("lthfast::masked_sgd_")
    def _masked_sgd_fake(params, grads, momentum_buffers, masks, lr, lr_tensor, momentum,
                         dampening, weight_decay, nesterov, maximize, is_first_step, grad_scale,
                         found_inf):
        return None

    @torch.library.register_fake("lthfast::masked_adam_")
    def _masked_adam_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                          masks, lr, lr_tensor, beta1, beta2, weight_decay, eps, amsgrad,
                          maximize, decoupled_weight_decay, grad_scale, found_inf):
        return None


def masked_sgd_(*args) -> None:
    if _ops.available():
        torch.ops.lthfast.masked_sgd_(*args)
    elif _ops.use_reference():
        _ref.masked_sgd_(*args)
    else:
        _ops.require()


def masked_adam_(*args) -> None:
    if _ops.available():
        torch.ops.lthfast.masked_adam_(*args)
    elif _ops.use_reference():
        _ref.masked_adam_(*args)
    else:
        _ops.require()
