"""Pure-PyTorch references of the masked convolution ops: the test oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return weight.masked_fill(~mask, 0) if mask.dtype == torch.bool else weight * mask


def masked_conv2d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, _masked(weight, mask), bias, stride, padding, dilation, groups)


def masked_linear(input, weight, mask, bias=None):
    return F.linear(input, _masked(weight, mask), bias)


def sparse_pack(weight, mask):
    """(rowptr int64, colidx int32, values float32/float64) of the kept weights, row-major."""
    rows = weight.shape[0]
    keep = (mask if mask.dtype == torch.bool else mask != 0).reshape(rows, -1)
    rowptr = torch.zeros(rows + 1, dtype=torch.int64, device=weight.device)
    rowptr[1:] = keep.sum(1).cumsum(0)
    colidx = keep.nonzero()[:, 1].to(torch.int32)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    kept = weight if mask.dtype == torch.bool else weight * mask  # a float mask scales
    return rowptr, colidx, kept.reshape(rows, -1)[keep].to(acc)
