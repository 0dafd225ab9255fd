"""global_unstructured: one pruning decision across many parameters.

With the stock ``L1Unstructured`` the masks come straight from lthfast's global
magnitude kernel: no concatenated copy of the weights or masks is made. Any other
unstructured method (``RandomUnstructured``, a user's method, a patched
``compute_mask``) runs on the concatenation of the unpruned entries exactly as in
torch. Each parameter then gets its own mask; the hooks keep no reference to the
masks (torch keeps a view of the whole concatenated mask in every hook, one per
round, so memory grows with every round).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from lthfast import _ops
from lthfast.prune import validate
from lthfast.prune._inplace import alias_of, as_product, sole_holders
from lthfast.prune._state import Snapshot, TorchBase, TorchContainer, find_hook, is_a
from lthfast.prune.base import combine_masks, uses_stock_compute_mask
from lthfast.magnitude import iter_global_magnitude_masks, mask_counts_packed
from lthfast.prune.methods import CustomFromMask, L1Unstructured, _kernel_can_take



_HINT = ' (pass [(module, "weight"), ...], e.g. for every Conv2d / Linear of a model)'


def _short(entry) -> str:
    """An entry for a message: a tensor by its type and shape (its repr was the whole
    tensor: 12,000 characters for model.parameters()), anything else by its repr."""
    if isinstance(entry, torch.Tensor):
        return f"<{type(entry).__name__} of shape {tuple(entry.shape)}>"
    text = repr(entry)
    return text if len(text) <= 80 else text[:77] + "..."

def _targets(parameters, importance_scores):
    """Check every (module, name) pair; return [(module, name, scores, old_mask, hook_key,
    hook)] (the tensor's pruning hook and its key, (None, None) when not pruned yet)."""
    if not isinstance(parameters, Iterable):
        raise TypeError(
            f"parameters must be an iterable of (module, name) pairs, got {type(parameters).__name__}")
    entries = list(parameters)  # a generator is read once
    if importance_scores is None:
        importance_scores = {}
    if not isinstance(importance_scores, dict):
        raise TypeError(
            "importance_scores must be a dict mapping (module, name) to a tensor, got "
            f"{type(importance_scores).__name__}")
    if not entries:
        raise ValueError("parameters is empty: pass at least one (module, name) pair")
    targets, seen, device = [], set(), None
    for i, entry in enumerate(entries):
        # unpacked as torch does; errors keep the classes torch raises
        # (TypeError / ValueError on unpacking, AttributeError on a non-module)
        try:
            module, name = entry
        except ValueError:
            raise validate.PairLengthError(
                f"parameters[{i}]={_short(entry)} is not a (module, name) pair{_HINT}") from None
        except TypeError:
            raise TypeError(f"parameters[{i}]={_short(entry)} is not a (module, name) pair"
                            f"{_HINT}") from None
        if not isinstance(module, torch.nn.Module):
            raise validate.ArgumentKindError(
                f"parameters[{i}][0] is a {type(module).__name__}, not a torch.nn.Module{_HINT}")
        if (id(module), name) in seen:
            raise ValueError(
                f"parameters[{i}] repeats ({type(module).__name__}, {name!r}): list each "
                "parameter once")
        seen.add((id(module), name))
        current = validate.lookup_tensor(module, name)
        key, old = find_hook(module, name)
        scores = (current if type(importance_scores) is dict and not importance_scores
                  else importance_scores.get((module, name), current))
        if scores is not current:
            validate.check_same_shape(scores, current, f"importance_scores[({type(module).__name__}, "
                                      f"{name!r})]", f"{type(module).__name__}.{name}")
        if old is None:
            validate.require_parameter(module, name, current)
        if device is not None and scores.device != device:
            raise TypeError(
                f"parameters[{i}] ({type(module).__name__}.{name}) is on {scores.device} but "
                f"parameters[0] is on {device}: global pruning needs one device")
        device = scores.device
        old_mask = validate.get_attribute(module, name + "_mask") if old is not None else None
        targets.append((module, name, scores, old_mask, key, old))
    return targets


#: Tensors from this many entries on are rewritten in place / get the fused product:
#: 128 KiB of fp32, glibc's default threshold for serving an allocation with fresh
#: pages (mmap) instead of from the heap.
_REWRITE_MIN_NUMEL = 1 << 15


def _kernel_eligibility(targets):
    """``(eligibility, n_remaining, bits)`` for the kernel: per-tensor eligibility
    (None: all), the number of eligible entries, and the earlier masks' bits
    (pack_bits' layout; None where a tensor has no earlier mask) for the snapshots
    to roll back with; eligibility is False when an earlier mask holds values other
    than 0 and 1 (torch's rules then need the slow path). Float masks are passed as
    they are, counted and packed in one pass (mask_counts_packed): no bool copies."""
    scores = [t[2] for t in targets]
    old = [t[3] for t in targets]
    if all(m is None for m in old):
        return None, sum(s.numel() for s in scores), [None] * len(targets)
    present = [m.detach() if m.requires_grad else m for m in old if m is not None]
    counts, packed = mask_counts_packed(present)
    counts = counts.cpu()  # the one host sync of a call with earlier masks
    if bool(counts[:, 1].any()):
        return False, 0, None
    ones = iter(counts[:, 0].tolist())
    detached, packed = iter(present), iter(packed)
    # On the CPU the kernels read the bits themselves: 1/32 of a float mask's bytes
    # in each pass (the CUDA kernels would unpack them first, so they get the masks,
    # which are then not rewritten in place: the eligibility would hold them)
    as_bits = present[0].device.type == "cpu" and not _ops.use_reference()
    eligible, bits, n = [], [], 0
    for s, m in zip(scores, old):
        if m is None:
            eligible.append(torch.ones_like(s))
            bits.append(None)
            n += s.numel()
            continue
        m = next(detached)
        n += next(ones)
        bits.append(next(packed))
        if as_bits and s.device.type == "cpu" and bits[-1].device == s.device:
            # (beside a permuted score the op unpacks them to bool, 1/4 of a float mask:
            # the old mask itself is then not read, and can be rewritten in place)
            eligible.append(bits[-1])
        else:
            eligible.append(m if (m.dtype == s.dtype and m.device == s.device)
                            else (m == 1).to(s.device))
    return eligible, n, bits


def _install_from_kernel(method, targets, snapshots):
    """Prune with the magnitude kernel, installing each parameter's mask before the
    next is computed; returns False (nothing changed) when the kernel cannot take
    these tensors. Only one tensor's temporary mask is alive at a time, and it is
    made in the parameter's dtype directly (torch's format) when the scores have it.
    Pruning again, each replaced mask and pruned tensor is let go before the next is
    made (``snapshots``: id(module) -> its Snapshot, which then keeps 1 bit per entry
    to roll back with), so the call needs about one tensor's worth of memory beyond
    the result instead of holding every old mask and tensor to the end."""
    scores = [t[2].detach() for t in targets]
    if not _kernel_can_take(scores):
        return False
    eligible, n, bits = _kernel_eligibility(targets)
    if eligible is False:
        return False
    k = validate.count_to_prune(method.amount, n)
    origs = [module._parameters.get(name + "_orig", module._parameters.get(name))
             for module, name, *_ in targets]
    packed = eligible is not None and any(m.dtype == torch.uint8 for m in eligible)
    slot = [None, False]  # what the next mask and pruned tensor are written into
    masks = iter_global_magnitude_masks(scores, k, masks=eligible, n_remaining=n,
                                        dtype=[o.dtype for o in origs], _checked_tensors=True,
                                        _packed_masks=packed, _out_slot=slot)
    del eligible, scores  # the generator holds them, and lets each go once used
    for i, orig in enumerate(origs):
        module, name, score, old_mask, key, old = targets[i]
        score_is_pruned = score is module.__dict__.get(name)  # (pruning again, no importance)
        del score  # pruning again, the old pruned tensor (whose grad_fn holds the old mask)
        # On the CPU the mask pass writes the new mask and pruned tensor (orig * mask)
        # into the old ones where it may, else into new tensors. (On CUDA, where the op
        # would write them through temporaries, and for small tensors, which the heap
        # serves from pages it has already mapped and whose time is the ~20 us of
        # Python this bookkeeping adds, the op makes the mask and the hook the pruned
        # tensor, as before.)
        cpu = orig.device.type == "cpu" and orig.numel() >= _REWRITE_MIN_NUMEL
        mask_out = memory = None
        if old_mask is not None:
            # the old mask and pruned tensor (the scores) go when the new ones replace
            # them, or are rewritten in place where nothing else holds them
            targets[i] = (module, name, None, None, key, old)
            mask_out, memory = _reuse_old(module, name, old_mask, bits[i], orig,
                                          snapshots[id(module)], score_is_pruned, cpu)
            del old_mask
            bits[i] = None
        product = None
        if cpu:
            product = memory if memory is not None else torch.empty_like(orig)
            slot[0] = (mask_out, orig.detach(), product)
        del mask_out, memory
        keep = next(masks)
        mask = keep if keep.dtype == orig.dtype and keep.device == orig.device else keep.to(orig)
        del keep
        pruned = as_product(orig, mask, product) if slot[1] else None
        del product
        # global_unstructured's snapshots restore every module on failure: no
        # per-tensor snapshot, and the hook found by _targets is used as is
        hook = CustomFromMask._apply_computed(module, name, mask, mask, _found=(key, old),
                                              _snapshot=False, _checked=True, _pruned=pruned)
        recorded = hook[-1] if is_a(hook, TorchContainer) else hook
        recorded.mask = None  # the mask lives in <name>_mask; keep no second copy
        del mask, pruned
    return True


def _reuse_old(module, name, old_mask, bits, orig, snapshot, score_is_pruned, reuse):
    """Lets go of ``module``'s old pruned tensor and mask before the new ones are made
    (the snapshot keeps what restores them). Where nothing else holds them (and
    ``reuse``), their memory is reused instead of freed (lthfast.prune._inplace).
    Returns ``(mask, memory)``: the old mask, for the new mask to be written into, and
    a tensor over the old pruned tensor's memory, for the new pruned tensor; None
    where not."""
    d = module.__dict__
    memory = None
    pruned = d.get(name)
    if type(pruned) is torch.Tensor:
        # held by the module, the snapshot and `pruned`
        if (reuse and pruned.dtype == orig.dtype and pruned.shape == orig.shape
                and pruned.stride() == orig.stride() and sole_holders(pruned, 3, None)):
            memory = alias_of(pruned)
        snapshot.drop_pruned(name)
        del d[name], pruned  # frees it, and its grad_fn's hold on the old mask
        # its memory: held by `memory` and, when it is the score, by the mask pass
        if memory is not None and not sole_holders(memory, 1, 2 if score_is_pruned else 1):
            memory = None
    # held by the module's buffers, the snapshot, old_mask here and in the caller
    if (reuse and old_mask.dtype == orig.dtype and old_mask.device == orig.device
            and bits is not None and sole_holders(old_mask, 4)):
        snapshot.rewrite_mask(name, bits)
        return old_mask, memory
    snapshot.drop_mask(name, (old_mask, bits))
    return None, memory


def _masks_by_concatenation(method, targets):
    """torch's algorithm: run the method on the flattened unpruned entries of all tensors."""
    flat_scores = torch.cat([s.reshape(-1) for _, _, s, *_ in targets])
    flat_masks = torch.cat([(torch.ones_like(s) if m is None else m).reshape(-1)
                            for _, _, s, m, *_ in targets])
    flat = combine_masks(method, flat_scores, flat_masks)
    masks, start = [], 0
    for _, _, s, *_ in targets:
        masks.append(flat[start:start + s.numel()].reshape(s.shape).clone())  # own storage
        start += s.numel()
    return masks


def global_unstructured(parameters, pruning_method, importance_scores=None, *, generator=None,
                        **kwargs):
    """Prune the given parameters together: ``pruning_method(**kwargs)`` (unstructured)
    decides over all their unpruned entries at once, e.g. the smallest ``amount`` of
    all weights with ``L1Unstructured``.

    ``parameters``: iterable of ``(module, name)``; ``importance_scores``: optional
    dict ``(module, name) -> tensor``; ``generator`` is passed to the method (e.g.
    ``RandomUnstructured``). Either all parameters are pruned or, on error, none.
    """
    targets = _targets(parameters, importance_scores)
    if generator is not None:
        kwargs["generator"] = generator
    method = pruning_method(**kwargs)
    method._tensor_name = "temp"
    kind = method.PRUNING_TYPE  # none: AttributeError, as in torch
    if kind != "unstructured":
        raise TypeError(
            f"global_unstructured needs a method with PRUNING_TYPE 'unstructured'; "
            f"{getattr(pruning_method, '__name__', pruning_method)} has {kind!r}")
    if not isinstance(method, TorchBase):  # torch's PruningContainer refuses it too
        raise TypeError(f"{type(method).__name__} is not a BasePruningMethod subclass")

    names = {}  # id(module) -> (module, [its names]), in first-seen order
    for t in targets:  # (not `m, n, *_`: a list left in `_` would hold the last tensors)
        names.setdefault(id(t[0]), (t[0], []))[1].append(t[1])
    del t
    snapshots = {key: Snapshot(m, ns) for key, (m, ns) in names.items()}
    try:
        if isinstance(method, L1Unstructured) and uses_stock_compute_mask(method):
            if _install_from_kernel(method, targets, snapshots):
                return None
        masks = _masks_by_concatenation(method, targets)
        for (module, name, *_), mask in zip(targets, masks):
            hook = CustomFromMask.apply(module, name, mask)
            recorded = hook[-1] if isinstance(hook, TorchContainer) else hook
            recorded.mask = None  # the mask lives in <name>_mask; keep no second copy
    except BaseException:
        for snapshot in reversed(list(snapshots.values())):
            snapshot.restore()
        raise
