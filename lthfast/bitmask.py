"""Masks as 1 bit per entry: the bit-pack/unpack ops behind `lthfast.Ticket`.

Packed layout: uint8 [ceil(numel / 8)], entries in row-major logical order
(whatever the memory layout), least significant bit first, trailing bits 0.
Each function checks its arguments, then runs torch.ops.lthfast.* (CPU or CUDA
kernel) or, with LTHFAST_REFERENCE=1 and no compiled module, the reference.
"""
from __future__ import annotations

import math
import operator

import torch

from lthfast import _ops
from lthfast import _reference_bitmask as _ref


def packed_nbytes(numel: int) -> int:
    """Bytes that hold ``numel`` bits."""
    return (int(numel) + 7) // 8


_PACKABLE = (torch.bool, torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _op(name):
    if _ops.use_reference():
        return getattr(_ref, name)
    _ops.require()
    return getattr(torch.ops.lthfast, name)


def _check_packed(packed, what="packed"):
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{what} is a {type(packed).__name__}, not a torch.Tensor")
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.layout != torch.strided:
        raise ValueError(f"{what} must be a dense 1-D torch.uint8 tensor (from pack_bits), got "
                         f"{packed.dtype} of shape {tuple(packed.shape)} ({packed.layout})")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """uint8 [ceil(numel / 8)] holding ``mask`` (any shape and strides): a bool mask,
    or a float one (float32/64/16, bfloat16; torch.nn.utils.prune's format) whose
    nonzero entries are the kept ones, as ``mask != 0`` says (-0.0 is pruned, NaN
    kept), packed without a bool copy."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask is a {type(mask).__name__}, not a torch.Tensor")
    if mask.dtype not in _PACKABLE or mask.layout != torch.strided:
        raise TypeError("mask must be a dense torch.bool tensor or a float32/float64/float16/"
                        f"bfloat16 one (nonzero = kept), got {mask.dtype} ({mask.layout})")
    return _op("pack_bits")(mask)


def _as_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of ints: an int (one dimension, as torch takes it), or a
    sequence of ints (tuple, list, torch.Size); TypeError naming it otherwise."""
    if isinstance(shape, torch.Tensor) and shape.dim() == 0:
        shape = shape.item()
    if isinstance(shape, bool) or isinstance(shape, (str, bytes)):
        raise TypeError(f"shape must be an int or a sequence of ints (tuple, list, torch.Size), "
                        f"got {shape!r}")
    try:
        return (operator.index(shape),)
    except TypeError:
        pass
    try:
        sizes = list(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints (tuple, list, torch.Size), "
                        f"got {type(shape).__name__} {shape!r}") from None
    out = []
    for i, s in enumerate(sizes):
        if isinstance(s, torch.Tensor) and s.dim() == 0 and not s.is_floating_point():
            s = s.item()
        if isinstance(s, bool):
            raise TypeError(f"shape {tuple(sizes)!r} has a bool at position {i}, not a size")
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"shape {tuple(sizes)!r} has a {type(s).__name__} at position {i}, "
                            "not an int size") from None
    return tuple(out)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """The contiguous bool tensor of ``shape`` (an int, or a sequence of ints) that
    ``packed`` holds."""
    _check_packed(packed)
    shape = _as_shape(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {shape} has a negative size")
    need = packed_nbytes(math.prod(shape))
    if packed.numel() != need:
        raise ValueError(f"packed has {packed.numel()} bytes but shape {shape} needs {need}")
    return _op("unpack_bits")(packed, list(shape))


def _check_written(packed, t, what: str, ok, wanted: str) -> None:
    """Checks a tensor that ``packed`` is written into: a tensor that passes ``ok``
    (TypeError naming ``wanted`` otherwise), with packed's number of entries, on
    packed's device."""
    _check_packed(packed)
    if not isinstance(t, torch.Tensor) or not ok(t):
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{what} must be {wanted}, got {got}")
    if packed.numel() != packed_nbytes(t.numel()):
        raise ValueError(f"packed has {packed.numel()} bytes but {what} {tuple(t.shape)} needs "
                         f"{packed_nbytes(t.numel())}")
    if t.device != packed.device:
        raise ValueError(f"{what} is on {t.device} but packed is on {packed.device}")


def unpack_bits_into(packed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Writes the mask ``packed`` holds into the bool tensor ``out`` (any strides); returns out."""
    _check_written(packed, out, "out", lambda t: t.dtype == torch.bool, "a torch.bool tensor")
    _op("unpack_bits_into")(packed, out)
    _written(out)
    return out


def zero_pruned_(tensor: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Zeroes, in place, the entries of the float tensor ``tensor`` (any strides) whose
    bit in ``packed`` is 0, leaving the kept ones untouched; returns tensor. Same result
    as ``tensor.masked_fill_(~unpack_bits(packed, tensor.shape), 0)`` with no bool mask
    and one pass over the tensor. Under autograd (grad mode on and ``tensor`` requires
    grad) it is that ``masked_fill_``: the op has no backward of its own."""
    _check_written(packed, tensor, "tensor", torch.Tensor.is_floating_point, "a float tensor")
    if torch.is_grad_enabled() and tensor.requires_grad:
        # recorded as masked_fill_ (pruned entries get no gradient), and a leaf that
        # requires grad is refused as torch refuses it
        return tensor.masked_fill_(~unpack_bits(packed, tensor.shape).to(tensor.device), 0)
    _op("zero_pruned_")(tensor, packed)
    _written(tensor)
    return tensor


def _written(t: torch.Tensor) -> None:
    # The compiled ops write without bumping the version counter (no ADInplaceOrView
    # kernel): bump it as masked_fill_ would, or the masked layers' weight cache
    # (lthfast.ops._weight_cache), which is stamped with it, keeps the old weight.
    torch.autograd.graph.increment_version(t)


def count_bits(packed: torch.Tensor) -> int:
    """Number of set bits (kept entries)."""
    _check_packed(packed)
    return int(_op("count_bits")(packed))


def overlap_bits(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """``(|a & b|, |a | b|)`` of two packed masks of the same length."""
    _check_packed(a, "a")
    _check_packed(b, "b")
    if a.numel() != b.numel():
        raise ValueError(f"a has {a.numel()} bytes but b has {b.numel()}")
    if a.device != b.device:
        b = b.to(a.device)
    inter, union = _op("overlap_bits")(a, b).tolist()
    return int(inter), int(union)


if _ops.available():

    @torch.library.register_fake("lthfast::pack_bits")
    def _pack_bits_fake(mask):
        return mask.new_empty((packed_nbytes(mask.numel()),), dtype=torch.uint8)

    @torch.library.register_fake("lthfast::unpack_bits")
    def _unpack_bits_fake(packed, shape):
        return packed.new_empty(tuple(shape), dtype=torch.bool)

    @torch.library.register_fake("lthfast::unpack_bits_into")
    def _unpack_bits_into_fake(packed, out):
        return None

    @torch.library.register_fake("lthfast::zero_pruned_")
    def _zero_pruned_fake(tensor, packed):
        return None

    @torch.library.register_fake("lthfast::count_bits")
    def _count_bits_fake(packed):
        return packed.new_empty((), dtype=torch.int64)

    @torch.library.register_fake("lthfast::overlap_bits")
    def _overlap_bits_fake(a, b):
        return a.new_empty((2,), dtype=torch.int64)
