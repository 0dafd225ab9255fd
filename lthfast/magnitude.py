"""Global magnitude pruning: one threshold across many tensors, no concatenated copy.

`global_magnitude_masks` is the IMP pruning step; `global_magnitude_threshold`
exposes the threshold itself. Both validate their input fully before any kernel
runs, and name the offending tensor and value when something is wrong.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Sequence

import torch

from lthfast import _ops, _reference
from lthfast.bitmask import _written

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensors(tensors, what: str = "tensors") -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    if isinstance(tensors, dict):
        raise TypeError(f"{what} is a dict (a state_dict?): pass a list of tensors, e.g. "
                        "list(state_dict.values())")
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{what} is empty: pass at least one tensor")
    for i, t in enumerate(tensors):  # (all before tensors[0].device is read)
        if not isinstance(t, torch.Tensor):
            hint = (" (a (name, tensor) pair from named_parameters()? pass model.parameters())"
                    if isinstance(t, tuple) else "")
            raise TypeError(f"{what}[{i}] is a {type(t).__name__}, not a torch.Tensor{hint}")
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if t.layout != torch.strided:
            raise ValueError(f"{what}[{i}] has layout {t.layout}; only dense (strided) tensors are supported")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{what}[{i}] has dtype {t.dtype}; magnitude pruning needs float16, bfloat16, "
                "float32 or float64 tensors")
        if t.device != device:
            raise ValueError(
                f"{what}[{i}] is on {t.device} but {what}[0] is on {device}: all tensors must be "
                "on one device")
    return tensors


def _check_masks(masks, tensors, what: str = "masks") -> list[torch.Tensor]:
    if masks is None:
        return []
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    masks = list(masks)
    if len(masks) != len(tensors):
        raise ValueError(f"{what} has {len(masks)} entries but there are {len(tensors)} tensors")
    for i, (m, t) in enumerate(zip(masks, tensors)):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{what}[{i}] is a {type(m).__name__}, not a torch.Tensor")
        if m.layout != torch.strided:  # else count_nonzero / the kernels fail obscurely
            raise ValueError(f"{what}[{i}] has layout {m.layout}; only dense (strided) masks are supported")
        if m.dtype != torch.bool and m.dtype != t.dtype:
            raise TypeError(
                f"{what}[{i}] has dtype {m.dtype}; masks must be torch.bool (True = kept) or "
                f"{t.dtype} like tensors[{i}] (nonzero = kept)")
        if m.shape != t.shape:
            raise ValueError(f"{what}[{i}] has shape {tuple(m.shape)} but tensors[{i}] has shape {tuple(t.shape)}")
        if m.device != t.device:
            raise ValueError(f"{what}[{i}] is on {m.device} but tensors[{i}] is on {t.device}")
    return masks


def count_remaining(tensors: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> int:
    """Entries still unpruned: nonzero mask entries (all entries without masks)."""
    if not masks:
        return sum(t.numel() for t in tensors)
    if masks[0].device.type == "meta":  # (all on one device: the ops check)
        raise ValueError("masks are on the meta device: they have no values, so their unpruned "
                         "entries cannot be counted; pass masks with values (or none)")
    if not _ops.use_reference() and _ops.available():
        # one op for the list; a float mask's nonzero entries are its ones plus the
        # entries that are neither 0 nor 1
        return int(mask_counts(masks).sum())
    # count_nonzero: a bool .sum() is ~10x slower
    return int(sum(int(torch.count_nonzero(m)) for m in masks))


def _as_list(tensors) -> list:
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


@contextlib.contextmanager
def _unchecked(tensors, masks=None):
    """Yields ``(tensors, masks)`` as lists (masks: [] for None) for a body that
    leaves the argument checks to the ops: they check the same things (dtype,
    layout, device, shape) before any work, so a valid call skips ~1.4 us per
    tensor of Python checks (on a CUDA call over a detection model's ~80 tensors,
    ~0.1 ms of ~0.6). When the body raises (an op's RuntimeError, the amount's
    TypeError / ValueError, or an AttributeError from a non-tensor in the list),
    the full checks run first and raise their documented error if the arguments
    are bad, in the same order as before; otherwise the body's error propagates."""
    if isinstance(tensors, dict):  # (a state_dict: its keys would be the list)
        _check_tensors(tensors)
    tensors = _as_list(tensors)
    mask_list = [] if masks is None else _as_list(masks)
    try:
        if not tensors or (mask_list and len(mask_list) != len(tensors)):
            raise ValueError("empty tensors, or masks of another count")  # the checks word it
        yield tensors, mask_list
    except Exception:
        _check_masks(None if masks is None else mask_list, _check_tensors(tensors))
        raise


def mask_counts(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """int64 [len(masks), 2], on the masks' device: per mask (bool or float), the
    entries equal to 1 and the entries that are neither 0 nor 1 (NaN included).
    One pass over the masks, no temporaries."""
    if isinstance(masks, torch.Tensor):  # one mask, not its rows (list() would split dim 0)
        masks = [masks]
    masks = list(masks)
    if not masks or _ops.use_reference():  # (an empty list cannot be dispatched)
        return _reference.mask_counts(masks)
    _ops.require()
    return torch.ops.lthfast.mask_counts(masks)


def mask_counts_packed(masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(mask_counts(masks), [pack_bits(m) for m in masks])`` (nonzero = kept), from
    one read of the masks on the CPU (lthfast.prune's second round counts the old
    masks and keeps their bits to roll back with)."""
    masks = list(masks)
    if not masks or _ops.use_reference():
        return _reference.mask_counts_packed(masks)
    _ops.require()
    counts, packed = torch.ops.lthfast.mask_counts_packed(masks)
    return counts, list(packed)


def amount_to_count(amount, n_remaining: int, *, name: str = "amount") -> int:
    """An int amount is a count; a float in [0, 1] is round(amount * n_remaining)
    (Python's half-to-even rounding, as torch.nn.utils.prune)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"{name}={amount!r} must be an int (a count) or a float in [0, 1] (a fraction)")
    if isinstance(amount, numbers.Integral):
        amount = int(amount)
        if not 0 <= amount <= n_remaining:
            raise ValueError(
                f"{name}={amount} must be between 0 and the number of unpruned entries ({n_remaining})")
        return amount
    value = float(amount)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be a float in [0, 1] or a non-negative int")
    # The product in the amount's own type, as torch.nn.utils.prune (and lthfast.prune):
    # a numpy float32 rounds its float32 product (0.7 * 5 -> 3.5 -> 4, not 3.4999... -> 3).
    # Clamped: a float32 product of a count above 2^24 may round past it.
    return min(int(round(scaled_amount(amount, n_remaining))), n_remaining)


def scaled_amount(amount, n: int):
    """``amount * n`` in the amount's own type, as torch.nn.utils.prune computes it (a
    numpy float32 rounds its float32 product); in float64 where that overflows (a numpy
    float16 past 65504), where torch fails."""
    if type(amount) is float:
        return amount * n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning
        product = amount * n
    return product if math.isfinite(product) else float(amount) * n


def global_magnitude_threshold(tensors, k: int, *, masks=None,
                               nan: str = "high") -> tuple[float, int]:
    """The global magnitude threshold that prunes exactly ``k`` unpruned entries.

    Returns ``(threshold, n_ties_to_prune)``: every unpruned entry with
    ``|x| < threshold`` is pruned, plus the first ``n_ties_to_prune`` entries with
    ``|x| == threshold`` in (tensor order, row-major index). NaN ranks above +Inf
    (``nan="raise"``: a ValueError instead, as in global_magnitude_masks).
    ``(0.0, 0)`` when ``k == 0``.
    """
    _check_nan_policy(nan)
    if _ops.use_reference():
        tensors = _check_tensors(tensors)
        masks = _check_masks(masks, tensors)
        k = _checked_k(k, count_remaining(tensors, masks))
        _raise_on_nan(nan, tensors, masks)
        return _reference.global_threshold(tensors, masks, k)
    _ops.require()
    with _unchecked(tensors, masks) as (tensors, mask_list):
        k = _checked_k(k, count_remaining(tensors, mask_list))
        _raise_on_nan(nan, tensors, mask_list)
        with torch.no_grad():
            t, ties = torch.ops.lthfast.global_threshold(tensors, mask_list, k)
    return float(t), int(ties)


def _check_nan_policy(nan) -> None:
    if not (isinstance(nan, str) and nan in ("high", "raise")):
        raise ValueError(f"nan={nan!r} must be 'high' (NaN ranks above +inf and is pruned last, "
                         "as torch.topk ranks it) or 'raise' (a ValueError when a score is NaN)")


def _raise_on_nan(nan: str, scores, masks, what: str = "tensors") -> None:
    """nan="raise": a ValueError naming the first score tensor with a NaN among its
    unpruned entries (where its mask, if any, is nonzero)."""
    if nan != "raise":
        return
    with torch.no_grad():
        for i, s in enumerate(scores):
            bad = torch.isnan(s)
            if masks:
                bad &= masks[i] != 0
            n = int(bad.sum())
            if n:
                raise ValueError(f"{what}[{i}] has {n} NaN entr{'y' if n == 1 else 'ies'} among "
                                 "its unpruned ones (nan='raise'); the default nan='high' ranks "
                                 "NaN above +inf, pruned last")


def _checked_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= n:
        raise ValueError(f"k={k!r} must be an int between 0 and the number of unpruned entries ({n})")
    return int(k)


def _scores_of(tensors, importance):
    if importance is None:
        return tensors
    scores = _check_tensors(importance, "importance")
    if len(scores) != len(tensors):
        raise ValueError(f"importance has {len(scores)} entries but there are {len(tensors)} tensors")
    for i, (s, t) in enumerate(zip(scores, tensors)):
        if s.shape != t.shape:
            raise ValueError(
                f"importance[{i}] has shape {tuple(s.shape)} but tensors[{i}] has shape {tuple(t.shape)}")
        if s.device != t.device:
            raise ValueError(f"importance[{i}] is on {s.device} but tensors[{i}] is on {t.device}")
    return scores


def _masks_for_scores(masks, scores):
    # The kernels take masks that are bool or of the *score's* dtype: a float mask of
    # the weights' dtype (documented) next to importance scores of another dtype goes
    # in as `mask != 0` (the same eligibility: nonzero = kept).
    # Packed bits (uint8) are read as they are.
    return [m if m.dtype in (torch.bool, s.dtype, torch.uint8) else m != 0
            for m, s in zip(masks, scores)]


def _in_layout_of(mask, tensor, score):
    # The kernels give a mask the score's strides; with importance scores laid out
    # unlike the weights, the mask follows the weight (as documented).
    if score is tensor or score.stride() == tensor.stride():
        return mask
    out = torch.empty_like(tensor, dtype=mask.dtype)
    return mask if out.stride() == mask.stride() else out.copy_(mask)


def iter_global_magnitude_masks(tensors, amount, *, masks=None, importance=None, n_remaining=None,
                                dtype=None, _checked_tensors=False, _packed_masks=False,
                                _out_slot=None):
    """Yields the same keep-masks as :func:`global_magnitude_masks`, one tensor at a
    time, so that a caller that installs each mask before asking for the next never
    holds a list of them. A yielded mask has ``dtype`` (one, or one per tensor) where
    that is bool or the score's dtype, else the dtype of ``masks[i]`` (bool, or the
    tensor's float dtype with 1.0 = kept), bool without ``masks``. Arguments are
    checked and the threshold found before the first mask is yielded (the caller
    may pass ``n_remaining`` when it has just counted the unpruned entries;
    ``_checked_tensors``: ``tensors`` is a list the caller has checked as
    ``_check_tensors`` does; ``_packed_masks``: ``masks`` is a list of each tensor's
    packed bits (pack_bits' layout, as lthfast.prune keeps the old masks), which the
    ops read as they are and check; the caller passes ``n_remaining``;
    ``_out_slot``: a list ``[request, written]`` in which the caller may put, before
    asking for the next mask, ``request = (out, orig, product)``: the mask is written
    into ``out`` (a new tensor when None), and ``product = mask * orig`` in the same
    pass (the pruned tensor); used when the mask has ``orig``'s dtype, and then
    ``written`` is set True (False otherwise; the request is taken either way).
    """
    if not _checked_tensors:
        tensors = _check_tensors(tensors)
    if _packed_masks:
        if n_remaining is None or _ops.use_reference():
            raise ValueError("_packed_masks needs n_remaining and the compiled ops")
        masks = list(masks)
        if len(masks) != len(tensors):
            raise ValueError(f"masks has {len(masks)} entries but there are {len(tensors)} tensors")
    else:
        masks = _check_masks(masks, tensors)
    scores = _scores_of(tensors, importance)
    if n_remaining is None:
        n_remaining = count_remaining(tensors, masks)
    k = amount_to_count(amount, n_remaining)
    mask_dtypes = [m.dtype for m in masks]
    masks = _masks_for_scores(masks, scores)
    if _ops.use_reference():
        t, ties = _reference.global_threshold(scores, masks, k)
        op, into = _reference.threshold_mask, _reference.threshold_mask_into
    else:
        _ops.require()
        with torch.no_grad():
            t, ties = torch.ops.lthfast.global_threshold(scores, masks, k)
        op = torch.ops.lthfast.threshold_mask.default  # the overload: no per-call resolution
        into = torch.ops.lthfast.threshold_mask_into.default
    return _yield_masks(op, scores, masks, t, ties, dtype, mask_dtypes, tensors,
                        into=into, out_slot=_out_slot)


def _yield_masks(op, scores, masks, t, ties, dtype=None, mask_dtypes=(), tensors=None,
                 into=None, out_slot=None):
    # k == 0 gives (0.0, 0): nothing is below 0.0 and no tie is pruned.
    device = scores[0].device
    threshold = torch.as_tensor(t, dtype=torch.float64, device=device)
    ties_left = torch.as_tensor(ties, dtype=torch.int64, device=device).clone()
    per_tensor = isinstance(dtype, (list, tuple))
    # own lists whose entries are dropped once used (below)
    scores = list(scores)
    masks = list(masks) if masks else None
    tensors = list(tensors) if tensors is not None else None
    for i in range(len(scores)):
        s = scores[i]
        want = dtype[i] if per_tensor else dtype
        if want is not torch.bool and want != s.dtype:
            want = mask_dtypes[i] if mask_dtypes else torch.bool
            if want == torch.uint8:  # packed bits in: a bool mask out
                want = torch.bool
        m = masks[i] if masks else None
        # the op writes bool or the score's dtype; a float mask of the weights' dtype
        # (importance scores of another dtype) is converted below
        op_dtype = want if want is torch.bool or want == s.dtype else torch.bool
        request = None
        if out_slot is not None:
            request, out_slot[0], out_slot[1] = out_slot[0], None, False  # held no longer than needed
            if request is not None and (request[1].dtype != want or want != op_dtype
                                        or request[1].device != s.device
                                        or request[1].shape != s.shape):
                request = None
        grad = s.requires_grad or (m is not None and m.requires_grad)
        # Not `yield` inside no_grad: the caller would run with grad off until it
        # resumes us. (Without an input that requires grad nothing is recorded
        # anyway: no no_grad context per tensor, which costs more than the op's
        # dispatch on a small tensor.)
        with torch.no_grad() if grad else contextlib.nullcontext():
            if request is not None:  # into the caller's tensors, with the product
                out, orig, product = request
                if out is None:  # where the op would put a new mask
                    like = tensors[i] if tensors is not None else s
                    out = torch.empty_like(like, dtype=want)
                into(s, m, threshold, ties_left, out, orig, product)
                for written in (out, product):  # (as bitmask's in-place ops: see _written)
                    if written is not None:
                        _written(written)
                out_slot[1] = True
                mask = out
                request = out = orig = product = None
            else:
                mask = op(s, m, threshold, ties_left, op_dtype)
                if mask.dtype != want:
                    mask = mask.to(want)
                if tensors is not None and tensors[i] is not s:
                    mask = _in_layout_of(mask, tensors[i], s)
        # hold no used score or mask while the caller has this one: lthfast.prune
        # replaces each in turn, and would otherwise keep all of them alive to the end
        scores[i] = s = m = None
        if masks:
            masks[i] = None
        if tensors is not None:
            tensors[i] = None
        yield mask


def global_magnitude_masks(tensors, amount, *, masks=None, importance=None,
                           nan: str = "high") -> list[torch.Tensor]:
    """Keep-masks (``True`` = kept) that prune ``amount`` of the unpruned entries
    of ``tensors`` globally, smallest ``|w|`` (or ``|importance|``) first.

    ``amount``: an int is a count, a float in [0, 1] a fraction of the entries still
    unpruned (``masks`` True; all when ``masks`` is None). One threshold spans all
    tensors; ties are pruned in (tensor order, row-major index) order, so the result
    is deterministic and identical on CPU and CUDA. Tensors may mix float dtypes,
    shapes and memory layouts; returned masks have each tensor's shape (and strides,
    when it is dense, e.g. channels_last). ``nan``: ``"high"`` (default) ranks NaN
    above +inf, as torch.topk (pruned last); ``"raise"``: a ValueError naming the
    tensor when an unpruned score is NaN (one more read of the scores).
    """
    _check_nan_policy(nan)
    if importance is None and not _ops.use_reference():
        _ops.require()
        with _unchecked(tensors, masks) as (tensors, mask_list):
            k = amount_to_count(amount, count_remaining(tensors, mask_list))
            _raise_on_nan(nan, tensors, mask_list)
            with torch.no_grad():
                return list(torch.ops.lthfast.global_magnitude_masks(tensors, mask_list, k))
    tensors = _check_tensors(tensors)
    masks = _check_masks(masks, tensors)
    scores = _scores_of(tensors, importance)
    k = amount_to_count(amount, count_remaining(tensors, masks))
    _raise_on_nan(nan, scores, masks, "tensors" if importance is None else "importance")
    masks = _masks_for_scores(masks, scores)
    if _ops.use_reference():
        out = _reference.global_magnitude_masks(scores, masks, k)
    else:
        _ops.require()
        with torch.no_grad():
            out = list(torch.ops.lthfast.global_magnitude_masks(scores, masks, k))
    return [_in_layout_of(m, t, s) for m, t, s in zip(out, tensors, scores)]
