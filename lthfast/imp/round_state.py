"""What the IMP engine's rounds are made of besides the loop itself: seeding, snapshots
and digests of the state, metrics made plain for JSON, and the checks that every DDP
rank agrees (the same ticket; an error on one rank raised on all)."""
from __future__ import annotations

import copy
import hashlib
import math
import random
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def ticket_digest(ticket) -> str:
    """A hash of every mask bit, to check that all ranks hold the same ticket."""
    h = hashlib.sha256()
    for name in ticket.names():
        m = ticket[name].to("cpu").contiguous()
        h.update(name.encode())
        h.update(bytes(str(tuple(m.shape)), "ascii"))
        h.update(m.numpy().tobytes())
    return h.hexdigest()


def _check_same_ticket_on_all_ranks(ticket) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digest = ticket_digest(ticket)
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the pruning masks differ between ranks (digests {digests}); "
                           "every rank must hold the same weights before pruning")


def group_sparsity(ticket, group_of: Callable[[str], str] | None) -> dict:
    """Fraction pruned per group of parameters (e.g. backbone / fpn / rpn / roi_heads)."""
    if group_of is None:
        return {}
    total: dict[str, int] = {}
    kept: dict[str, int] = {}
    for name in ticket.names():
        g = group_of(name)
        total[g] = total.get(g, 0) + ticket.numel(name)
        kept[g] = kept.get(g, 0) + ticket.kept(name)
    return {f"sparsity_{g}": 1.0 - kept[g] / total[g] for g in total if total[g]}


def plain(x):
    """Metrics as plain Python values (JSON and weights_only checkpoints need them)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return plain(x.item())  # a NaN tensor too becomes null (JSON has no NaN)
    if hasattr(x, "tolist") and getattr(x, "ndim", 0) > 0:  # tensors, numpy arrays: lists
        return plain(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # undefined metrics (e.g. APl with no large objects): null in JSON
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy scalars
        return plain(x.item())
    return str(x)


def snapshot(model: nn.Module) -> dict:
    """A deep CPU copy of the model's state_dict (the rewind point); a module's extra
    state (`get_extra_state`) is deep-copied as it is."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in model.state_dict().items()}


def _raise_on_all_ranks(error: BaseException | None, where: str) -> None:
    """Raises `error` here and an OtherRankFailed (a RuntimeError) naming it on every other rank. With DDP a
    failure on one rank only (rank 0 evaluates and writes) left the others waiting in
    their next collective; every rank calls this at the same point instead."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    msg = None if error is None else f"{type(error).__name__}: {error}"[:1000]
    msgs = [None] * dist.get_world_size()
    dist.all_gather_object(msgs, msg)
    if error is not None:
        raise error
    failed = [(i, m) for i, m in enumerate(msgs) if m is not None]
    if failed:
        i, m = failed[0]
        from lthfast.imp.ddp import OtherRankFailed
        raise OtherRankFailed(f"rank {i} failed {where}: {m}")


def _check_names(model: nn.Module, names) -> list[str]:
    if isinstance(names, str) or not names:
        raise ValueError("IMP needs a non-empty list of parameter names to prune, got "
                         f"{names!r}")
    names = list(names)
    # remove_duplicate=False: a tied parameter may be named by any of its names (as in Ticket)
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"parameters to prune not found in the model: {missing[:5]}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    first: dict[int, str] = {}
    twice = []
    for n in names:
        other = first.setdefault(id(params[n]), n)
        if other != n:
            twice.append(f"{other} and {n}")
    if twice:  # the ticket would hold one of them, pruned_params.txt both
        raise ValueError(f"`names` names one parameter twice (tied weights or a repeated "
                         f"name): {twice}; keep one name per parameter")
    return names


class _SavedState:
    """An optimizer's / scheduler's saved state_dict, standing in for the object in a
    round evaluated after a resume (its checkpoint keeps the record)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _as_metrics(x, who: str) -> dict:
    """train_fn / eval_fn results: a dict, or None for none ({**0.5} failed obscurely)."""
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise TypeError(f"{who} must return a dict of metrics (or None), got "
                        f"{type(x).__name__} {x!r:.80}")
    return x
