"""Randomized differential test of MaskedSGD / MaskedAdam / MaskedAdamW against
torch.optim (for-loop) + explicit masking, over random configurations and many steps.

Each seed draws an optimizer and its hyper-parameters (momentum, dampening, Nesterov,
weight decay, maximize, betas, eps, amsgrad, decoupled decay, lr float or tensor),
parameters of several shapes (channels_last, empty, over one CPU chunk) with masks of
random density (all pruned and all kept included), 1-3 param groups, masks from a
`masks=` dict or an applied Ticket, and per step: grads that are None, zero or
random (NaN/Inf in pruned entries), lr changes, IMP rounds (set_masks / set_ticket),
add_param_group, and state_dict swaps in both directions.

The oracle (design.md, numerical policy): the grad masked before `torch.optim`'s
step, the weight masked after; newly pruned weights and state masked at once.
float64: trajectories equal to 1e-11. float32: each step is within 1e-6 (relative)
of the float64 oracle stepped from the same state. Pruned weights and state are
exactly 0.0 throughout."""
import copy
import random

import pytest
import torch
from torch import nn

import lthfast
import lthfast.optim as lo

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")

SHAPES = [(6, 4, 3, 3), (5, 3, 2, 2), (9, 7), (13,), (1,), (0, 5), (33000,)]
MASKED = {"SGD": lo.MaskedSGD, "Adam": lo.MaskedAdam, "AdamW": lo.MaskedAdamW}
TORCH = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


def _config(rng: random.Random) -> dict:
    kind = rng.choice(["SGD", "Adam", "AdamW"])
    if kind == "SGD":
        momentum = rng.choice([0.0, 0.5, 0.9])
        nesterov = momentum > 0 and rng.random() < 0.4
        kw = dict(momentum=momentum, nesterov=nesterov,
                  dampening=0.0 if nesterov else rng.choice([0.0, 0.3]),
                  weight_decay=rng.choice([0.0, 1e-2]), maximize=rng.random() < 0.3)
        lr = rng.choice([0.01, 0.1])
    else:
        kw = dict(betas=(rng.choice([0.0, 0.5, 0.9]), rng.choice([0.9, 0.999])),
                  eps=rng.choice([1e-8, 1e-3]), weight_decay=rng.choice([0.0, 1e-2, 0.1]),
                  amsgrad=rng.random() < 0.4, maximize=rng.random() < 0.3)
        if kind == "Adam" and rng.random() < 0.3:
            kw["decoupled_weight_decay"] = True
        lr = rng.choice([1e-3, 1e-2])
    return dict(kind=kind, kw=kw, lr=lr, lr_tensor=rng.random() < 0.3,
                dtype=torch.float64 if rng.random() < 0.7 else torch.float32,
                ticket=rng.random() < 0.5)


def _params(rng: random.Random, gen: torch.Generator, dtype):
    n = rng.randint(2, 5)
    shapes = [rng.choice(SHAPES[:-1]) for _ in range(n)]
    if rng.random() < 0.2:
        shapes.append(SHAPES[-1])
    params, masks = [], []
    for shape in shapes:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) == 4 and rng.random() < 0.5:
            t = t.contiguous(memory_format=torch.channels_last)
        params.append(nn.Parameter(torch.empty_like(t, dtype=dtype).copy_(t)))
        keep = rng.choice([0.0, 0.2, 0.5, 0.9, 1.0])
        masks.append(torch.rand(shape, generator=gen) < keep if rng.random() < 0.75 else None)
    return params, masks


def _groups(rng, idx, lr):
    """Split param indices into 1-3 groups, some with their own lr / weight decay."""
    k = rng.randint(1, min(3, len(idx)))
    cuts = sorted(rng.sample(range(1, len(idx)), k - 1)) if k > 1 else []
    out = []
    for a, b in zip([0] + cuts, cuts + [len(idx)]):
        extra = {}
        if rng.random() < 0.3:
            extra["lr"] = lr * 0.5
        if rng.random() < 0.3:
            extra["weight_decay"] = 0.05
        out.append((idx[a:b], extra))
    return out


def _lr_value(lr, as_tensor):
    return torch.tensor(lr, dtype=torch.float64) if as_tensor else lr


def _spec(params, groups, lr_tensor):
    return [dict(params=[params[i] for i in ix],
                 **{k: _lr_value(v, lr_tensor) if k == "lr" else v for k, v in extra.items()})
            for ix, extra in groups]


@torch.no_grad()
def _mask_now(p, state, m):
    """What the optimizer does to a newly masked weight: weight and per-entry state * mask."""
    p.mul_(m)
    for v in state.values():
        if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
            v.mul_(m)


class _Run:
    def __init__(self, seed):
        rng = self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg = _config(rng)
        self.params, self.masks = _params(rng, self.gen, cfg["dtype"])
        self.twin = [nn.Parameter(p.detach().double().clone()) for p in self.params]
        n = len(self.params)
        self.held = n - 1 if n > 2 and rng.random() < 0.4 else None  # add_param_group later
        idx = [i for i in range(n) if i != self.held]
        self.groups = _groups(rng, idx, cfg["lr"])
        self.active = [None] * n  # the mask the optimizer applies now
        self.model = nn.ParameterList(self.params)
        kw, lr_t = cfg["kw"], cfg["lr_tensor"]
        ours_kw = {}
        if cfg["ticket"]:
            ours_kw["ticket"] = self._apply_ticket()
        else:
            ours_kw["masks"] = {self.params[i]: self.masks[i] for i in idx
                                if self.masks[i] is not None}
        if cfg["ticket"] and all(self.masks[i] is None for i in idx):
            ours_kw = {}  # a ticket with no mask for any of the optimizer's params is an error
        self.ours = MASKED[cfg["kind"]](_spec(self.params, self.groups, lr_t),
                                        lr=_lr_value(cfg["lr"], lr_t), **kw, **ours_kw)
        self.theirs = TORCH[cfg["kind"]](_spec(self.twin, self.groups, lr_t),
                                         lr=_lr_value(cfg["lr"], lr_t), foreach=False, **kw)
        for i in idx:
            self._activate(i, self.masks[i])

    def _apply_ticket(self):
        named = {str(i): m for i, m in enumerate(self.masks) if m is not None}
        if not named:
            return None
        t = lthfast.Ticket(named)
        t.apply(self.model)
        for i, m in enumerate(self.masks):  # apply zeroes every covered weight
            if m is not None:
                with torch.no_grad():
                    self.twin[i].mul_(m)
        return t

    def _activate(self, i, m):
        self.active[i] = m
        if m is not None:
            _mask_now(self.twin[i], self.theirs.state.get(self.twin[i], {}), m)

    def in_opt(self):
        return [i for i in range(len(self.params))
                if any(p is self.params[i] for g in self.ours.param_groups for p in g["params"])]

    # ------------------------------------------------------------- events
    def imp_round(self):
        for i, m in enumerate(self.masks):
            if m is not None:
                self.masks[i] = m & (torch.rand(m.shape, generator=self.gen) > 0.3)
        if self.cfg["ticket"]:
            t = self._apply_ticket()
            if t is not None:
                self.ours.set_ticket(t)
        else:
            self.ours.set_masks({self.params[i]: self.masks[i] for i in self.in_opt()
                                 if self.masks[i] is not None})
        for i in self.in_opt():
            self._activate(i, self.masks[i])

    def add_held(self):
        i, self.held = self.held, None
        self.ours.add_param_group(dict(params=[self.params[i]], weight_decay=0.0))
        self.theirs.add_param_group(dict(params=[self.twin[i]], weight_decay=0.0))
        has_mask = self.cfg["ticket"] and self.ours.packed_mask_of(self.params[i]) is not None
        self._activate(i, self.masks[i] if has_mask else None)

    def set_lr(self):
        gi = self.rng.randrange(len(self.ours.param_groups))
        lr = self.cfg["lr"] * self.rng.choice([0.1, 0.5, 2.0])
        for opt in (self.ours, self.theirs):
            g = opt.param_groups[gi]
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def swap_state(self):
        if self.rng.random() < 0.5:
            self.ours.load_state_dict(copy.deepcopy(self.theirs.state_dict()))
        else:
            self.theirs.load_state_dict(copy.deepcopy(self.ours.state_dict()))

    def set_grads(self):
        grads = []
        for i, p in enumerate(self.params):
            r = self.rng.random()
            if r < 0.15:
                g = None
            elif r < 0.2:
                g = torch.zeros_like(p)  # zero_grad(set_to_none=False)
            else:
                g = torch.empty_like(p).copy_(torch.randn(p.shape, generator=self.gen))
                m = self.active[i]
                if m is not None and self.rng.random() < 0.3:  # must not leak through the mask
                    g = torch.where(m, g, torch.tensor(float("nan"), dtype=g.dtype))
            p.grad = g
            grads.append(g)
        for t, g, m in zip(self.twin, grads, self.active):
            if g is None:
                t.grad = None
            else:
                g = g.double()
                t.grad = torch.empty_like(t).copy_(g if m is None else torch.where(m, g, 0.0))
        return grads

    def resync_twin(self):
        """float32: start the float64 oracle's step from our current values."""
        with torch.no_grad():
            for p, t in zip(self.params, self.twin):
                t.copy_(p)
                for k, v in self.ours.state.get(p, {}).items():
                    tv = self.theirs.state.get(t, {}).get(k)
                    if isinstance(tv, torch.Tensor):
                        tv.copy_(v)

    def oracle_step(self):
        self.theirs.step()
        with torch.no_grad():
            for t, m in zip(self.twin, self.active):
                if m is not None:
                    t.mul_(m)


def _check_pruned_zero(run, step):
    for i, (p, m) in enumerate(zip(run.params, run.active)):
        if m is None:
            continue
        assert bool((p.detach()[~m] == 0).all()), f"step {step} param {i}: pruned weight not 0"
        for k, v in run.ours.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert bool((v[~m] == 0).all()), f"step {step} param {i}: pruned {k} not 0"
                assert v.stride() == p.stride() or v.numel() <= 1, f"param {i}: {k} strides"


def _close(a, b, what, rtol=1e-11, atol=1e-12):
    a, b = a.double(), b.double()
    err = (a - b).abs()
    assert a.shape == b.shape and bool((err <= atol + rtol * b.abs()).all()), \
        f"{what}: max err {err.max() if err.numel() else 0}"


def _check_float64(run, step):
    for i, (p, t) in enumerate(zip(run.params, run.twin)):
        _close(p.detach(), t.detach(), f"{run.cfg} step {step} param {i}")
        ts = run.theirs.state.get(t, {})
        assert set(run.ours.state.get(p, {})) == set(ts), f"step {step} param {i}: state keys"
        for k, v in ts.items():
            _close(run.ours.state[p][k], v, f"{run.cfg} step {step} param {i} {k}")


def _check_float32(run, step, before):
    for i, (p, t) in enumerate(zip(run.params, run.twin)):
        ref, old = t.detach(), before[i]
        err = (p.detach().double() - ref).abs()
        # relative to the entry's magnitude, floored at 0.1 (weights are ~N(0, 1)) as in
        # test_optim: an update that cancels keeps its operands' rounding
        bound = 1e-6 * torch.maximum(torch.maximum(ref.abs(), old.abs()), torch.full_like(ref, 0.1))
        assert bool((err <= bound).all()), f"{run.cfg} step {step} param {i}: err {err.max()}"
        g = t.grad.abs() if t.grad is not None else 0.0  # masked: no NaN
        for k, v in run.theirs.state.get(t, {}).items():
            if v.shape != p.shape:
                _close(run.ours.state[p][k], v, f"step {step} param {i} {k}", 0, 0)
                continue
            scale = v.abs() + (g * g if k.endswith("sq") else g) + ref.abs()
            e = (run.ours.state[p][k].double() - v).abs()
            assert bool((e <= 2e-6 * scale + 1e-30).all()), f"step {step} param {i} {k}: {e.max()}"


@pytest.mark.parametrize("seed", range(40))
def test_masked_optimizers_match_torch_plus_masking(seed):
    run = _Run(seed)
    f64 = run.cfg["dtype"] == torch.float64
    for step in range(12):
        r = run.rng.random()
        if r < 0.1:
            run.imp_round()
        elif r < 0.2 and run.held is not None:
            run.add_held()
        elif r < 0.35:
            run.set_lr()
        elif r < 0.45:
            run.swap_state()
        run.set_grads()
        if not f64:
            run.resync_twin()
        before = [t.detach().clone() for t in run.twin]
        run.ours.step()
        run.oracle_step()
        _check_pruned_zero(run, step)
        if f64:
            _check_float64(run, step)
        else:
            _check_float32(run, step, before)
