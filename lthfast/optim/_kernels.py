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


# The planned (eager) step's entries: the same ops called unboxed through lthfast._C
# (a torch.ops call boxes every tensor of every list, ~0.2 us each: most of a step's
# host time, see csrc/ops/masked_optim/masked_optim_python.cpp). They take Python
# lists of plain tensors; anything else (a tensor subclass, a torch function mode)
# goes through torch.ops, which dispatches __torch_function__.
_function_mode = torch._C._is_torch_function_mode_enabled


def step_sgd_(*args) -> None:
    """masked_sgd_ (same arguments; lists as Python lists) for the planned step."""
    fast = getattr(_ops._C, "_masked_sgd_", None)
    if fast is None or _function_mode() or not fast(*args):
        masked_sgd_(*args)


def step_adam_(*args) -> None:
    """masked_adam_ (same arguments; lists as Python lists) for the planned step."""
    fast = getattr(_ops._C, "_masked_adam_", None)
    if fast is None or _function_mode() or not fast(*args):
        masked_adam_(*args)
