"""lthfast.ops.masked_conv2d / masked_linear: a convolution / linear layer whose
weight is multiplied by a mask, on the faster of two paths.

- dense: the library convolution (oneDNN / cuDNN) on `weight * mask`, cached per
  weight version (see _weight_cache), so the masked weight is not rebuilt while
  weights and mask are unchanged.
- sparse: the kept weights compressed once per weight version (CSR) and a direct
  sparse convolution whose work scales with the kept weights. Inference only:
  whenever a gradient is needed the dense path runs.
- auto (default): sparse where the measured rule in _conv_dispatch says it wins.
- tuned: the first call of each configuration times both paths and keeps the
  faster (_tune; as torch.backends.cudnn.benchmark).

Host overhead per call matters (a small convolution is 30-50 us on a GPU): an eager
inference call with an unchanged weight and mask and an input shape already checked
takes a fast path: a single compiled call, _C._conv_repeat / _linear_repeat
(csrc/python_module.cpp: the cache lookup, the checks and conv2d / linear on the cached
masked weight, or the sparse kernel on the packed one; under autocast the masked weight
cached in autocast's dtype). It returns None for anything unusual (a functorch
transform, a torch-function or dispatch mode, arguments in other types), which takes
the full checks. An eager training
call (a gradient is needed) skips torch.library's Python autograd wrapper: conv2d
through torch's autograd on where(mask, weight, 0) (_grad_conv: the op's exact
arithmetic), linear through _MaskedLinearFn (the op and its backward op). Arguments
the library calls reject fall through to the full checks, which raise the clear error.
bench/host_overhead_conv.py measures it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lthfast import _ops
from lthfast.ops import _conv_dispatch, _tune, _weight_cache
from lthfast.ops._masked_conv_kernels import linear_backward_differentiable

_CACHE = _weight_cache._CACHE
# One C call for a repeated eager inference conv / linear, dense or on the sparse kernel:
# the weight cache lookup, the checks and the op (csrc/python_module.cpp); None where the
# call is not a repeat (or no _C).
_conv_repeat = getattr(_ops._C, "_conv_repeat", None) or (lambda *args: None)
_linear_repeat = getattr(_ops._C, "_linear_repeat", None) or (lambda *args: None)
_is_compiling = torch.compiler.is_dynamo_compiling  # the slow path checks is_compiling()
_compiling = torch.compiler.is_compiling  # dynamo or export: both trace the ops
_grad_enabled = torch.is_grad_enabled
_any_autocast = torch._C._is_any_autocast_enabled  # one C call; the per-device check is slower

PATHS = ("auto", "dense", "sparse", "tuned")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")  # others: is_autocast_enabled raises
_FLOAT_SET = frozenset(_FLOATS)
_Tensor = torch.Tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # no __torch_function__ of their own
_BOOL = torch.bool
_functorch_active = torch._C._are_functorch_transforms_active
_tracing = torch._C._is_tracing  # torch.jit.trace: record the op, never a cached weight


class _quiet_tracer:
    """While jit.trace traces (not under torch.compile, which cannot trace _tracing):
    no TracerWarning for the argument checks' shape comparisons (a trace fixes the
    shapes anyway); elsewhere nothing. (A class, not contextlib: ~1 us less per call.)"""

    __slots__ = ("_catch",)

    def __enter__(self):
        self._catch = None
        if not torch.compiler.is_compiling() and _tracing():
            import warnings
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("ignore", torch.jit.TracerWarning)

    def __exit__(self, *exc):
        if self._catch is not None:
            self._catch.__exit__(*exc)
        return False
# What the fast paths let the library call reject; the full checks then raise the clear error.
_FAST_ERRORS = (RuntimeError, TypeError, ValueError, AttributeError)
_below_autograd = torch._C._AutoDispatchBelowAutograd
if _ops.available():
    _LINEAR_OP = torch.ops.lthfast.masked_linear.default
    _LINEAR_BACKWARD_OP = torch.ops.lthfast._masked_linear_backward.default
    _SPARSE_CONV_OP = torch.ops.lthfast.sparse_conv2d.default
    _SPARSE_LINEAR_OP = torch.ops.lthfast.sparse_linear.default


def _pair(value, name: str) -> tuple[int, int]:
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value  # the common case, in exact types (nn.Conv2d's attributes)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[-1]))  # (one value: both sides, as F.conv2d takes it)
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_tensor(name: str, t, want_type=torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_common(op: str, input, weight, mask, bias, path) -> None:
    for name, t in (("input", input), ("weight", weight), ("mask", mask)):
        _check_tensor(name, t)
    if path not in PATHS:
        raise ValueError(f"{op}: path must be one of {PATHS}, got {path!r}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"{op}: weight must be float16/bfloat16/float32/float64, got {weight.dtype}")
    if input.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {input.dtype} does not match weight dtype {weight.dtype}")
    if input.device != weight.device:
        raise ValueError(f"{op}: input is on {input.device} but weight is on {weight.device}")
    if mask.shape != weight.shape:
        raise ValueError(f"{op}: mask shape {tuple(mask.shape)} does not match weight shape "
                         f"{tuple(weight.shape)}")
    if mask.dtype != torch.bool and mask.dtype != weight.dtype:
        raise TypeError(f"{op}: mask dtype must be torch.bool or the weight's dtype "
                        f"({weight.dtype}), got {mask.dtype}")
    if mask.device != weight.device:
        raise ValueError(f"{op}: mask is on {mask.device} but weight is on {weight.device}")
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"{op}: bias dtype {bias.dtype} does not match weight dtype {weight.dtype}")
        if bias.device != weight.device:
            raise ValueError(f"{op}: bias is on {bias.device} but weight is on {weight.device}")


def _check_conv(input, weight, groups, stride, padding, dilation) -> None:
    op = "masked_conv2d"
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got a {input.dim()}-D tensor of "
                         f"shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{op}: weight must be 4-D (out, in/groups, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if min(stride) <= 0:
        raise ValueError(f"{op}: stride must be positive, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding}")
    if min(dilation) <= 0:
        raise ValueError(f"{op}: dilation must be positive, got {dilation}")
    cout, cin_g, kh, kw = weight.shape
    if input.shape[1] != cin_g * groups:
        raise ValueError(f"{op}: input has {input.shape[1]} channels but weight expects "
                         f"in_channels/groups = {cin_g} with groups = {groups} "
                         f"({cin_g * groups} channels)")
    if cout % groups:
        raise ValueError(f"{op}: out_channels {cout} is not divisible by groups = {groups}")
    for i, k in enumerate((kh, kw)):
        if input.shape[2 + i] + 2 * padding[i] < dilation[i] * (k - 1) + 1:
            raise ValueError(f"{op}: input size {tuple(input.shape)} with padding {padding} is "
                             f"smaller than the dilated kernel ({kh}, {kw}) (dilation {dilation})")


def _autocast_args(input, *tensors):
    """(input, *tensors) cast as autocast casts F.conv2d's / F.linear's (floats but
    float64, on autocast's device, to its dtype): the lthfast ops have no autocast
    kernel, and without this a bf16 activation meets a float32 weight. None when
    autocast is off for the input's device."""
    if not isinstance(input, torch.Tensor) or input.device.type not in _AUTOCAST_DEVICES:
        return None
    dev = input.device.type
    if not torch.is_autocast_enabled(dev):
        return None
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 and t.dtype != torch.float64 and t.device.type == dev else t
                 for t in (input, *tensors))


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _like_input_format(out: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    # F.conv2d returns channels_last for channels_last input; so does this.
    if (input.dim() == 4 and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last)):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _masked(weight, mask):
    """weight * mask as autograd sees it: where() for a bool mask (a pruned entry is 0
    even where the weight is NaN or inf, as in the op), the product for a float mask
    (which then gets its gradient)."""
    return weight.where(mask, 0) if mask.dtype == torch.bool else weight * mask


def _string_padding(input, weight, padding: str, stride, dilation):
    """F.conv2d's padding="valid" / "same" for the ops below, which take ints: (input,
    padding) with "same" as ints, or, where it is uneven (an even kernel), as an explicit
    zero pad of the input (more at the end, as F.conv2d does)."""
    if padding == "valid":
        return input, 0
    if padding != "same":
        raise ValueError(f"masked_conv2d: padding must be 'valid', 'same', an int or a pair of "
                         f"ints, got {padding!r}")
    if _pair(stride, "stride") != (1, 1):
        raise ValueError(f"masked_conv2d: padding='same' needs stride 1 (as F.conv2d), got "
                         f"stride={stride!r}")
    dilation = _pair(dilation, "dilation")
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 4 and isinstance(input, torch.Tensor)):
        return input, 0  # (the checks name what is wrong)
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if all(t % 2 == 0 for t in total):
        return input, (total[0] // 2, total[1] // 2)
    pad = [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2]
    return F.pad(input, pad), 0


def _remember_cast(input, weight, mask, bias, path: str, groups: int, cast) -> None:
    """After an eager autocast inference call that ran the dense path on `cast` (what
    _autocast_args made), keeps its masked weight in autocast's dtype on the entry of
    the original weight, for the compiled repeat call (its `cast` records): the weight
    is then cast once per weight version instead of once per call (casting the masked
    weight is masking the cast weight: pruned entries are 0 either way), and conv2d /
    linear under autocast cast input and bias exactly as _autocast_args does."""
    dev = input.device.type
    if (dev not in ("cpu", "cuda") or _is_compiling() or type(input) is not _Tensor
            or _needs_grad(input, weight, bias, mask)):
        return
    inner = _CACHE.get(id(cast[1]))
    last = None if inner is None else inner.last.get(path)
    if last is None or last[2] is not False or inner.dense is None or last[0] != input.shape:
        return
    e = _weight_cache.entry(weight, mask)
    if e.stamp is not None:  # None: an inference tensor, never fresh
        # the layout of e.last's records (see masked_conv2d), then what autocast decides by
        e.cast[path] = (input.shape, groups, False, e.mask_ref, e.stamp, inner.dense, input.dtype,
                        None if bias is None else bias.dtype, torch.get_autocast_dtype(dev))


def _int_pair(v) -> bool:
    """An int or a tuple of two ints, in the exact types only (what _grad_conv passes on to
    F.conv2d; _pair accepts more, for the full checks)."""
    return type(v) is int or (type(v) is tuple and len(v) == 2 and type(v[0]) is int
                               and type(v[1]) is int)


def _grad_conv(input, weight, mask, bias, stride, padding, dilation, groups, path):
    """The training fast path of masked_conv2d (a gradient is needed, bool mask): torch's
    autograd on conv2d(input, where(mask, weight, 0)), which is what the op computes (the
    masked weight is exactly the op's weight.masked_fill(~mask, 0), and the convolution and
    its backward are the same ATen calls); where's backward zeroes the gradient of pruned
    weights exactly as the op's backward does. Skips the Python checks, the op's Python
    autograd wrapper and the re-masking of the weight in backward (~100 us of host time per
    call); the masked weight is saved for backward instead of being rebuilt there.
    None when it does not apply: the full path runs. Only what conv2d itself would accept
    but the op rejects is checked here; what conv2d rejects raises and the full checks run."""
    if _compiling() or _tracing() or not (type(input) is _Tensor and type(weight) in _PLAIN
                            and type(mask) in _PLAIN and (bias is None or type(bias) in _PLAIN)):
        return None  # torch.compile / export / jit.trace record the op (and its fake kernel)
    if not (input.requires_grad or weight.requires_grad
            or (bias is not None and bias.requires_grad)):
        return None
    if (mask.dtype is not _BOOL or weight.dtype not in _FLOAT_SET or input.dim() != 4
            or mask.shape != weight.shape or mask.device != weight.device or path not in PATHS
            or type(groups) is not int or not (_int_pair(stride) and _int_pair(padding)
                                               and _int_pair(dilation))
            or _functorch_active() or not _ops.available()):
        return None
    return F.conv2d(input, weight.where(mask, 0), bias, stride, padding, dilation, groups)


def _recorded_grad(grad: bool, *tensors) -> bool:
    """Whether the op a graph records must be the differentiable one. torch.jit.trace
    traces a second time under no_grad to check the first trace: there the choice
    follows requires_grad alone, so both traces record the same ops (a sparse layer
    whose parameters require grad records the dense op in either)."""
    if grad or torch.compiler.is_compiling() or not _tracing():  # (dynamo cannot trace _tracing)
        return grad
    return any(t is not None and t.requires_grad for t in tensors)


def masked_conv2d(input: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                  path: str = "auto") -> torch.Tensor:
    """`F.conv2d(input, weight * mask, bias, stride, padding, dilation, groups)`, faster.

    mask: bool (or the weight's dtype), weight's shape. Differentiable (dense path;
    grad_weight is exactly 0 where the mask is 0). path: "auto" (measured rule),
    "dense", "sparse" (the sparse kernel runs only when no gradient is needed) or
    "tuned" (the first inference call of each configuration times both paths and
    keeps the faster, as torch.backends.cudnn.benchmark; see lthfast.ops.tuned_paths).
    Under torch.compile, "auto" and "tuned" are dense (they need the mask's sparsity).
    Under autocast it computes in autocast's dtype, as F.conv2d does. padding may also be
    "same" / "valid", as in F.conv2d; input is 4-D (MaskedConv2d takes unbatched input).
    A float mask that requires grad gets its gradient (torch's autograd on weight * mask);
    torch.func transforms (grad, jvp, vmap, ...) run it on torch's autograd; torch.jit.trace
    records the op. Forward-mode AD outside torch.func (forward_ad.dual_level) is not
    supported: its tangent is dropped.
    """
    if not _is_compiling():
        out = _conv_repeat(_CACHE, input, weight, mask, bias, stride, padding, dilation, groups, path)
        if out is not None:
            return out
    if _any_autocast():
        cast = _autocast_args(input, weight, mask, bias)
        if cast is not None:
            with torch.autocast(input.device.type, enabled=False):
                out = masked_conv2d(*cast, stride, padding, dilation, groups, path)
            _remember_cast(input, weight, mask, bias, path, groups, cast)
            return out
    if _grad_enabled() and type(padding) is not str:
        try:
            out = _grad_conv(input, weight, mask, bias, stride, padding, dilation, groups, path)
            if out is not None:
                return out
        except _FAST_ERRORS:
            pass
    if isinstance(padding, str):
        input, padding = _string_padding(input, weight, padding, stride, dilation)
    stride, padding, dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                 _pair(dilation, "dilation"))
    with _quiet_tracer():
        _check_common("masked_conv2d", input, weight, mask, bias, path)
        _check_conv(input, weight, groups, stride, padding, dilation)
    grad = _needs_grad(input, weight, bias, mask)
    if _functorch_active() or (grad and (mask.requires_grad or not _ops.available())):
        # torch's autograd on the masked weight: the op has no gradient for a (float)
        # mask, and torch.library's autograd does not compose with torch.func transforms
        # (under torch.func.jvp nothing requires grad: the tangent would be dropped)
        return F.conv2d(input, _masked(weight, mask), bias, stride, padding, dilation, groups)
    if torch.compiler.is_compiling() or _tracing():
        if path == "sparse" and not _recorded_grad(grad, input, weight, bias, mask):
            packed = torch.ops.lthfast.sparse_pack(weight, mask)
            out = torch.ops.lthfast.sparse_conv2d(input, *packed, bias, weight.shape[2:], stride,
                                                  padding, dilation, groups)
            return _like_input_format(out, input)
        return torch.ops.lthfast.masked_conv2d(input, weight, mask, bias, stride, padding,
                                               dilation, groups)
    if grad:
        return torch.ops.lthfast.masked_conv2d(input, weight, mask, bias, stride, padding,
                                               dilation, groups)
    e = _weight_cache.entry(weight, mask)

    def run_dense():
        return F.conv2d(input, _weight_cache.masked_weight(e, weight, mask), bias, stride,
                        padding, dilation, groups)

    def run_sparse():
        return _sparse_conv(input, e, weight, mask, bias, stride, padding, dilation, groups)

    sparse = path == "sparse"
    out = None
    if path == "auto" and _ops.available():
        kind = _conv_dispatch.kernel_class(tuple(weight.shape[2:]), groups, input.shape[1])
        out_px = 1
        for i in range(2):
            out_px *= (input.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1)
                       - 1) // stride[i] + 1
        sparse = _conv_dispatch.use_sparse(input.device, input.dtype, kind, input.shape[0],
                                           _weight_cache.sparsity(e, mask), tuple(weight.shape),
                                           out_px)
    elif path == "tuned" and _tunable(input):
        sparse, out = _tuned(e, "conv2d", input, weight, mask, bias,
                             (stride, padding, dilation, groups), run_dense, run_sparse)
    if out is None:  # (else "tuned" timed both paths in this call and has the output)
        if sparse:
            _ops.require()
        out = run_sparse() if sparse else run_dense()
    # Validated: later calls with this input shape take the fast path (a weight
    # is used with one stride/padding in practice; another one is still
    # correct, only its path choice is that of the first).
    e.choice[(input.shape, groups, path)] = sparse
    # (input shape, groups, sparse?, then for _C._conv_repeat: mask weakref, stamp, and the
    # masked weight, or the packed one for the sparse kernel)
    e.last[path] = (input.shape, groups, sparse, e.mask_ref, e.stamp, e.packed if sparse else e.dense)
    return out


def _tunable(input) -> bool:
    """Whether path="tuned" may time the sparse kernel here (else it runs dense): the
    kernels are built, on a device they have (dtypes were checked to match)."""
    return _ops.available() and input.device.type in ("cpu", "cuda")


def _tuned(e, op, input, weight, mask, bias, geometry, dense, sparse):
    """path="tuned": (sparse?, output) — the output when this call did the timing
    (it ran both paths), else None. The path not chosen lets go of its cached weight."""
    k = _tune.key(op, input, weight, bias, _weight_cache.sparsity(e, mask), geometry)
    chosen = _tune.choice(k)
    if chosen is not None:
        return chosen, None
    chosen, out = _tune.tune(k, input.device, dense, sparse)
    if chosen:
        # the masked weight goes, with the records that hold it (autocast's hold it when the
        # weight is in autocast's dtype already)
        e.last = {p: last for p, last in e.last.items() if last[2] is not False}
        e.cast = {p: rec for p, rec in e.cast.items() if rec[5] is not e.dense}
        e.dense = None
    else:
        e.last = {p: last for p, last in e.last.items() if last[2] is not True}
        e.packed = None
    return chosen, out


def _sparse_conv(input, e, weight, mask, bias, stride, padding, dilation, groups):
    packed = e.packed
    if packed is None:
        packed = _weight_cache.packed_weight(e, weight, mask)
    rowptr, colidx, values = packed
    out = _SPARSE_CONV_OP(input, rowptr, colidx, values, bias, weight.shape[2:],
                          _pair(stride, "stride"), _pair(padding, "padding"),
                          _pair(dilation, "dilation"), groups)
    return _like_input_format(out, input)


class _MaskedLinearFn(torch.autograd.Function):
    """torch.ops.lthfast.masked_linear with the autograd _masked_conv_kernels registers for
    it (same forward op, same backward op, same gradients), minus the Python layers of
    torch.library's generated autograd kernel (its dispatch back into Python, default
    filling, re-dispatch): the training fast path of masked_linear. Linear keeps the
    op's backward (unlike conv2d's fast path, which uses torch's autograd on the masked
    weight): at::linear's own backward lays out the matrix products differently, so its
    rounding could differ from the op's."""

    @staticmethod
    def forward(ctx, input, weight, mask, bias):
        with _below_autograd():
            out = _LINEAR_OP(input, weight, mask, bias)
        ctx.save_for_backward(input, weight, mask)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        input, weight, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        need = [needs[0], needs[1], ctx.has_bias and needs[3]]
        if torch.is_grad_enabled():  # create_graph: the backward is differentiated too
            gi, gw, gb = linear_backward_differentiable(grad, input, weight, mask, need)
        else:
            gi, gw, gb = _LINEAR_BACKWARD_OP(grad, input, weight, mask, need)
        return (gi if need[0] else None, gw if need[1] else None, None, gb if need[2] else None)


def masked_linear(input: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                  bias: torch.Tensor | None = None, path: str = "auto") -> torch.Tensor:
    """`F.linear(input, weight * mask, bias)`, faster; same paths as masked_conv2d."""
    if not _is_compiling():
        out = _linear_repeat(_CACHE, input, weight, mask, bias, path)
        if out is not None:
            return out
    if _any_autocast():
        cast = _autocast_args(input, weight, mask, bias)
        if cast is not None:
            with torch.autocast(input.device.type, enabled=False):
                out = masked_linear(*cast, path)
            _remember_cast(input, weight, mask, bias, path, 1, cast)
            return out
    try:
        if (_grad_enabled() and not _compiling() and type(input) is _Tensor
                and type(weight) in _PLAIN
                and type(mask) in _PLAIN and (bias is None or type(bias) in _PLAIN)
                and (input.requires_grad or weight.requires_grad
                     or (bias is not None and bias.requires_grad))
                and not mask.requires_grad  # (the op gives a float mask no gradient)
                and path in PATHS and not _functorch_active() and not _tracing()
                and _ops.available()):
            # The op and its backward op, as the op's registered autograd runs them,
            # without its Python wrapper; the op checks its arguments itself.
            return _MaskedLinearFn.apply(input, weight, mask, bias)
    except _FAST_ERRORS:
        pass
    with _quiet_tracer():
        _check_common("masked_linear", input, weight, mask, bias, path)
        shape_ok = bool(weight.dim() == 2 and input.dim() >= 1 and input.shape[-1] == weight.shape[1])
    if weight.dim() != 2:
        raise ValueError(f"masked_linear: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not shape_ok:
        raise ValueError(f"masked_linear: input shape {tuple(input.shape)} does not end in "
                         f"in_features = {weight.shape[1]}")
    grad = _needs_grad(input, weight, bias, mask)
    if _functorch_active() or (grad and (mask.requires_grad or not _ops.available())):
        return F.linear(input, _masked(weight, mask), bias)  # (as masked_conv2d)
    if torch.compiler.is_compiling() or _tracing():
        if path == "sparse" and not _recorded_grad(grad, input, weight, bias, mask):
            packed = torch.ops.lthfast.sparse_pack(weight, mask)
            return torch.ops.lthfast.sparse_linear(input, *packed, bias)
        return torch.ops.lthfast.masked_linear(input, weight, mask, bias)
    if grad:
        return torch.ops.lthfast.masked_linear(input, weight, mask, bias)
    e = _weight_cache.entry(weight, mask)

    def run_dense():
        return F.linear(input, _weight_cache.masked_weight(e, weight, mask), bias)

    def run_sparse():
        return torch.ops.lthfast.sparse_linear(
            input, *_weight_cache.packed_weight(e, weight, mask), bias)

    sparse = path == "sparse"
    out = None
    if path == "auto" and _ops.available():
        batch = input.numel() // max(1, input.shape[-1])
        sparse = _conv_dispatch.use_sparse(input.device, input.dtype, "linear", batch,
                                           _weight_cache.sparsity(e, mask), tuple(weight.shape))
    elif path == "tuned" and _tunable(input):
        sparse, out = _tuned(e, "linear", input, weight, mask, bias, (), run_dense, run_sparse)
    if out is None:  # (else "tuned" timed both paths in this call and has the output)
        if sparse:
            _ops.require()
        out = run_sparse() if sparse else run_dense()
    e.choice[(input.shape, 1, path)] = sparse  # what ran (read by the benchmark)
    # checked: the next call takes the fast path (the record's layout: see masked_conv2d)
    e.last[path] = (input.shape, 1, sparse, e.mask_ref, e.stamp, e.packed if sparse else e.dense)
    return out
