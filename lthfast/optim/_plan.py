"""The per-step host work of the masked optimizers, cached.

A step's kernel calls need, per parameter group and device, the lists of params, grads,
masks and optimizer state. Rebuilding them every step (a dict lookup per parameter in
`state` and in the masks, each hashing a Tensor in Python; grad checks; grouping by
device) cost more than the fused kernel itself on a GPU. A `Plan` keeps those lists, except
the grads, which are read from `p.grad` at every step (so a replaced `.grad` object is always
the one used), and is used only while it still describes the optimizer:

- the same `state` dict object holding the same parameters in the same order, each with
  the same state dict object (load_state_dict, __setstate__, state created for a new
  parameter, `state.clear()`, a deleted or replaced entry);
- the same masks dict (set_ticket / set_masks replace it; add_param_group changes the groups);
- the same param_groups: same group dicts, same parameter objects in the same order, and
  the same structural options (SGD: momentum zero or not; Adam: amsgrad);
- the same set of parameters with a grad (a grad that becomes None, or appears);
- the same state tensors: each stepped parameter's `state[p]` is the same dict and holds the
  same tensor objects under the keys the kernel reads (`opt.state[p] = {}` or
  `opt.state[p]["exp_avg"] = t` makes a new plan; in-place writes need none).

The optimizers also drop their plan in set_ticket / set_masks / add_param_group /
load_state_dict / __setstate__. Hyper-parameters (lr, betas, weight decay, ...) are read from
the groups at every step, so schedulers keep working.

Grads are not re-checked in Python on this path: the C++ op checks every list before it
writes anything, so the first call of a step needs no pre-check (if it rejects, the step
is redone on the checked path, which raises the usual error or rebuilds a stale plan). Any
later call (several groups or devices) has its grads checked in Python first, so a bad grad
in a later group still changes nothing.
"""
from __future__ import annotations

from operator import getitem, is_

import torch

from lthfast import _ops

_STRIDED = torch.strided


class Call:
    """One kernel call: the params of a group on one device that have a grad."""

    __slots__ = ("device", "idx", "params", "masks", "states", "first_index")

    def __init__(self, device, idx, params, masks, states, first_index):
        self.device = device
        self.idx = idx            # None: the whole group, in order (every param has a grad)
        self.params = params
        self.masks = masks
        self.states = states      # tuple of lists, optimizer specific
        self.first_index = first_index  # global index of the group's first param (messages)


class GroupPlan:
    __slots__ = ("group", "params", "key", "has_grad", "calls")

    def __init__(self, group, params, key, has_grad, calls):
        self.group = group
        self.params = params      # a copy of group["params"] as it was
        self.key = key
        self.has_grad = has_grad  # None: every param has a grad; else list of bools
        self.calls = calls


class Plan:
    __slots__ = ("state", "state_len", "state_keys", "state_dicts", "masks", "groups",
                 "precheck_from", "watched")

    def __init__(self, opt, groups, watched):
        state = opt.state
        self.state = state
        self.state_len = len(state)
        # every (param, state dict) pair of `state` in order: compared by identity per
        # step (a dict lookup per param would hash each Tensor in Python, ~0.1 us apiece)
        self.state_keys = list(state.keys())
        self.state_dicts = list(state.values())
        self.masks = opt._masks
        self.groups = groups
        # (state dicts, keys, tensors): flat lists, checked in C (map) per step
        self.watched = watched
        # the reference implementation (no lthfast._C) does not promise to check before
        # writing: pre-check every call there
        self.precheck_from = 1 if _ops.available() else 0

    def bind(self, opt, key_of):
        """[(group, call, grads)] for this step, or None when the plan no longer fits."""
        state = opt.state
        if state is not self.state or len(state) != self.state_len or opt._masks is not self.masks:
            return None
        pgs = opt.param_groups
        if len(pgs) != len(self.groups):
            return None
        if not (all(map(is_, state.keys(), self.state_keys))
                and all(map(is_, state.values(), self.state_dicts))):
            return None
        w_dicts, w_keys, w_tensors = self.watched
        try:
            if not all(map(is_, map(getitem, w_dicts, w_keys), w_tensors)):
                return None
        except (KeyError, TypeError):
            return None
        out = []
        for gp, group in zip(self.groups, pgs):
            if group is not gp.group:
                return None
            params = group["params"]
            cached = gp.params
            if len(params) != len(cached) or not all(map(is_, params, cached)):
                return None
            if key_of(group) != gp.key:
                return None
            grads = [p.grad for p in cached]
            if gp.has_grad is None:
                if [g for g in grads if g is None]:
                    return None
            elif [g is not None for g in grads] != gp.has_grad:
                return None
            for call in gp.calls:
                idx = call.idx
                out.append((group, call, grads if idx is None else [grads[i] for i in idx]))
        return out


def grads_ok(call: Call, grads: list) -> bool:
    """Whether every grad of `call` is what the kernel takes (dense, the param's shape, dtype
    and device) and every param is still on the call's device; on False the caller takes
    the checked path, which names the problem."""
    dev = call.device
    for p, g in zip(call.params, grads):
        if (g.layout is not _STRIDED or g.dtype is not p.dtype or g.shape != p.shape
                or g.device != dev or p.device != dev):
            return False
    return True


def make(opt, key_of, states_of) -> Plan | None:
    """A plan of `opt` as it is now, or None when some param with a grad has no complete
    state yet (its first step goes through the checked path, which creates it).
    `states_of(group, params)`: the call's state lists, or None when incomplete."""
    groups = []
    start = 0
    state = opt.state
    masks = opt._masks
    w_dicts, w_keys, w_tensors = [], [], []
    for group in opt.param_groups:
        params = list(group["params"])
        has_grad = [p.grad is not None for p in params]
        by_device: dict = {}
        for i, p in enumerate(params):
            if has_grad[i]:
                by_device.setdefault(p.device, []).append(i)
        calls = []
        for device, idx in by_device.items():
            ps = [params[i] for i in idx]
            states = states_of(group, ps, state)
            if states is None:
                return None
            for lst in states:  # watch every state tensor the kernel will write
                for p, t in zip(ps, lst):
                    d = state[p]
                    key = next((k for k, v in d.items() if v is t), None)
                    if key is None:
                        return None
                    w_dicts.append(d)
                    w_keys.append(key)
                    w_tensors.append(t)
            whole = len(by_device) == 1 and len(idx) == len(params)
            calls.append(Call(device, None if whole else idx, ps, [masks.get(p) for p in ps],
                              states, start))
        groups.append(GroupPlan(group, params, key_of(group),
                                None if all(has_grad) else has_grad, calls))
        start += len(params)
    return Plan(opt, groups, (w_dicts, w_keys, w_tensors))
