"""Fake kernels and autograd of the masked convolution ops (torch.ops.lthfast.*).

masked_conv2d / masked_linear are differentiable through their own backward ops
(_masked_conv2d_backward / _masked_linear_backward), whose grad_weight is exactly
0 at pruned positions. sparse_pack / sparse_conv2d / sparse_linear are inference
kernels and have no autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lthfast import _ops


def linear_backward_differentiable(grad, input, weight, mask, need):
    """(grad_input, grad_weight, grad_bias) of linear(input, weight * mask, bias) in
    differentiable torch ops (grad_weight 0 at pruned positions); None where not needed."""
    keep = mask.to(torch.bool)
    masked = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    g2 = grad.reshape(-1, grad.shape[-1])
    gi = torch.matmul(grad, masked) if need[0] else None
    gw = (torch.where(keep, g2.t().matmul(input.reshape(-1, input.shape[-1])).to(weight.dtype), 0)
          if need[1] else None)
    gb = g2.sum(0) if need[2] else None
    return gi, gw, gb


def conv2d_backward_differentiable(grad, input, weight, mask, stride, padding, dilation, groups,
                                   need):
    """As linear_backward_differentiable, for conv2d(input, weight * mask, bias, ...)."""
    keep = mask.to(torch.bool)
    masked = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    gi = (torch.nn.grad.conv2d_input(input.shape, masked, grad, stride, padding, dilation, groups)
          if need[0] else None)
    gw = (torch.where(keep, torch.nn.grad.conv2d_weight(input, weight.shape, grad, stride, padding,
                                                        dilation, groups), 0)
          if need[1] else None)
    gb = grad.sum((0, 2, 3)) if need[2] else None
    return gi, gw, gb


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


if _ops.available():

    @torch.library.register_fake("lthfast::masked_conv2d")
    def _masked_conv2d_fake(input, weight, mask, bias, stride, padding, dilation, groups):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @torch.library.register_fake("lthfast::_masked_conv2d_backward")
    def _masked_conv2d_backward_fake(grad_output, input, weight, mask, stride, padding, dilation,
                                     groups, output_mask):
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad_output, input, weight, [weight.shape[0]], stride, padding, dilation, False,
            [0, 0], groups, [True, True, True])
        empty = weight.new_empty((0,))
        return (gi if output_mask[0] else empty, gw if output_mask[1] else empty.clone(),
                gb if output_mask[2] else empty.clone())

    @torch.library.register_fake("lthfast::masked_linear")
    def _masked_linear_fake(input, weight, mask, bias):
        return F.linear(input, weight, bias)

    @torch.library.register_fake("lthfast::_masked_linear_backward")
    def _masked_linear_backward_fake(grad_output, input, weight, mask, output_mask):
        empty = weight.new_empty((0,))
        return (torch.matmul(grad_output, weight) if output_mask[0] else empty,
                torch.empty_like(weight, memory_format=torch.contiguous_format)
                if output_mask[1] else empty.clone(),
                weight.new_empty((weight.shape[0],)) if output_mask[2] else empty.clone())

    @torch.library.register_fake("lthfast::sparse_pack")
    def _sparse_pack_fake(weight, mask):
        nnz = torch.library.get_ctx().new_dynamic_size()
        rows = weight.shape[0]
        return (weight.new_empty((rows + 1,), dtype=torch.int64),
                weight.new_empty((nnz,), dtype=torch.int32),
                weight.new_empty((nnz,), dtype=_acc_dtype(weight.dtype)))

    @torch.library.register_fake("lthfast::sparse_conv2d")
    def _sparse_conv2d_fake(input, rowptr, colidx, values, bias, kernel_size, stride, padding,
                            dilation, groups):
        oh = _conv_out(input.shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
        ow = _conv_out(input.shape[3], kernel_size[1], stride[1], padding[1], dilation[1])
        return input.new_empty((input.shape[0], rowptr.shape[0] - 1, oh, ow))

    @torch.library.register_fake("lthfast::sparse_linear")
    def _sparse_linear_fake(input, rowptr, colidx, values, bias):
        return input.new_empty((*input.shape[:-1], rowptr.shape[0] - 1))

    # ------------------------------------------------------------------ autograd
    # A backward that is itself differentiated (create_graph=True: double backward,
    # MAML, gradient penalties) runs on torch's differentiable ops: the backward ops
    # have no autograd of their own (torch warns, and will refuse, when they are recorded).

    def _conv_setup(ctx, inputs, output):
        input, weight, mask, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight, mask)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def _conv_backward(ctx, grad):
        input, weight, mask = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[3]]
        if torch.is_grad_enabled():
            gi, gw, gb = conv2d_backward_differentiable(grad, input, weight, mask, *ctx.conf, need)
        else:
                gi, gw, gb = torch.ops.lthfast._masked_conv2d_backward(grad, input, weight, mask,
                                                                    *ctx.conf, need)
        return (gi if need[0] else None, gw if need[1] else None, None,
                gb if need[2] else None, None, None, None, None)

    torch.library.register_autograd("lthfast::masked_conv2d", _conv_backward,
                                    setup_context=_conv_setup)

    def _linear_setup(ctx, inputs, output):
        input, weight, mask, bias = inputs
        ctx.save_for_backward(input, weight, mask)
        ctx.has_bias = bias is not None

    def _linear_backward(ctx, grad):
        input, weight, mask = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[3]]
        if torch.is_grad_enabled():
            gi, gw, gb = linear_backward_differentiable(grad, input, weight, mask, need)
        else:
            gi, gw, gb = torch.ops.lthfast._masked_linear_backward(grad, input, weight, mask, need)
        return (gi if need[0] else None, gw if need[1] else None, None, gb if need[2] else None)

    torch.library.register_autograd("lthfast::masked_linear", _linear_backward,
                                    setup_context=_linear_setup)
