"""Pure-PyTorch references of the bitmask ops (the test oracle and the fallback).

Packed layout: uint8 [ceil(numel / 8)], entries in row-major logical order, entry
i in bit (i % 8) of byte i // 8 (least significant bit first), trailing bits 0.
"""
from __future__ import annotations

import torch

_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype != torch.bool:
        mask = mask != 0  # a float mask: nonzero = kept
    flat = mask.reshape(-1).to(torch.uint8)  # logical order whatever the strides
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:n].to(torch.bool).reshape(shape).contiguous()


def unpack_bits_into(packed: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(unpack_bits(packed, out.shape))


def zero_pruned_(tensor: torch.Tensor, packed: torch.Tensor) -> None:
    if tensor.numel() and torch._debug_has_internal_overlap(tensor) == 1:  # as the kernel
        raise RuntimeError("zero_pruned_: self has entries that share memory (e.g. an expanded "
                           "tensor); pass a tensor of its own")
    tensor.masked_fill_(~unpack_bits(packed, tensor.shape), 0)


def count_bits(packed: torch.Tensor) -> torch.Tensor:
    return unpack_bits(packed, (packed.numel() * 8,)).sum(dtype=torch.int64)


def overlap_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = a.numel() * 8
    ua, ub = unpack_bits(a, (n,)), unpack_bits(b, (n,))
    return torch.stack([(ua & ub).sum(dtype=torch.int64), (ua | ub).sum(dtype=torch.int64)])
