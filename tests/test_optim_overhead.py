"""The cached step plan of the masked optimizers (lthfast/optim/_plan.py): every event that
must rebuild it does, the grads are always the current `.grad` objects, and every step
gives bit for bit what the checked path (no plan: lists rebuilt and grads checked at every
step, as before the cache) gives. Correctness only; timings: bench/host_overhead_optim.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lthfast
import lthfast.optim as lo
from _optim_cases import clone_params, make_params, random_grads

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")

CLASSES = {"SGD": lo.MaskedSGD, "Adam": lo.MaskedAdam, "AdamW": lo.MaskedAdamW}
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw in CASES]


def _checked_only(opt):
    """The oracle: the same optimizer without the plan (every step on the checked path)."""
    opt._planned_step = lambda: False
    return opt


def _groups(params, split):
    if not split:
        return params
    return [{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}]


class Pair:
    """Our optimizer and its checked-path twin on identical parameters."""

    def __init__(self, case, *, split=False, seed=0):
        kind, kw = case
        self.kind, self.kw = kind, kw
        self.ps, masks = make_params(seed=seed)
        self.tw = clone_params(self.ps)
        self.masks = [masks.get(p) for p in self.ps]
        tmasks = {t: m for t, m in zip(self.tw, self.masks) if m is not None}
        self.ours = CLASSES[kind](_groups(self.ps, split), masks=masks, **kw)
        self.ref = _checked_only(CLASSES[kind](_groups(self.tw, split), masks=tmasks, **kw))
        self.seed = 0

    def both(self, fn):
        fn(self.ours, self.ps)
        fn(self.ref, self.tw)

    def grads(self, *, skip=()):
        self.seed += 1
        for ps in (self.ps, self.tw):
            for i, (p, g) in enumerate(zip(ps, random_grads(ps, self.seed))):
                p.grad = None if i in skip else g

    def step(self, **kw):
        self.grads(**kw)
        self.ours.step()
        self.ref.step()
        self.check()

    def check(self):
        for i, (p, t) in enumerate(zip(self.ps, self.tw)):
            assert torch.equal(p.detach(), t.detach()), f"param {i}"
            a, b = self.ours.state.get(p, {}), self.ref.state.get(t, {})
            assert sorted(a) == sorted(b), f"param {i}: state keys {sorted(a)} vs {sorted(b)}"
            for k in a:
                if isinstance(a[k], torch.Tensor):
                    assert torch.equal(a[k], b[k]), f"param {i}: state {k}"
                    assert a[k].stride() == b[k].stride() or a[k].numel() <= 1
                else:
                    assert a[k] == b[k]
            m = self.masks[i]
            if m is not None:
                assert bool((p.detach()[~m] == 0).all()), f"param {i}: pruned weight not 0"


def _rebuilt(pair, event, rebuild=True, **step_kw):
    """Steps to the steady state, applies `event` to both, steps again: the plan must have
    been rebuilt (a new object) and the results must match the checked path."""
    pair.step()
    pair.step()
    plan = pair.ours._plan
    assert plan is not None
    pair.step()
    assert pair.ours._plan is plan, "steady state: the plan is reused"
    pair.both(event)
    pair.step(**step_kw)
    pair.step(**step_kw)
    if rebuild:
        assert pair.ours._plan is not plan, "the event must rebuild the plan"
    return pair


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("split", [False, True], ids=["one-group", "two-groups"])
def test_cached_steps_match_the_checked_path(case, split):
    pair = Pair(case, split=split)
    for _ in range(5):
        pair.step()
    assert pair.ours._plan is not None and pair.ref._plan is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_that_becomes_none_then_comes_back(case):
    pair = Pair(case)
    pair.step()
    pair.step()
    plan = pair.ours._plan
    before = pair.ps[2].detach().clone()
    state_before = copy.deepcopy(pair.ours.state.get(pair.ps[2], {}))
    pair.step(skip={2})
    assert pair.ours._plan is not plan
    assert torch.equal(pair.ps[2].detach(), before)  # no grad: not stepped, state unchanged
    for k, v in state_before.items():
        assert torch.equal(pair.ours.state[pair.ps[2]][k], v)
    plan = pair.ours._plan
    pair.step(skip={2})
    assert pair.ours._plan is plan  # the same set of grads: reused
    pair.step()  # back
    assert pair.ours._plan is not plan
    pair.step()
    # every grad gone (zero_grad) and a step: nothing moves
    pair.both(lambda o, ps: o.zero_grad())
    snap = [p.detach().clone() for p in pair.ps]
    pair.ours.step()
    pair.ref.step()
    assert all(torch.equal(a, p.detach()) for a, p in zip(snap, pair.ps))
    pair.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_replaced_grad_objects_are_read_at_every_step(case):
    """Grads are never cached: a `.grad` replaced by another object (other values, other
    strides, a grad kept and updated in place) is what the step uses."""
    pair = Pair(case)
    pair.step()
    pair.step()
    plan = pair.ours._plan
    # grads kept as objects and overwritten in place (zero_grad(set_to_none=False) style)
    for k in range(2):
        for ps in (pair.ps, pair.tw):
            for p, g in zip(ps, random_grads(ps, 100 + k)):
                p.grad.copy_(g)
        pair.ours.step()
        pair.ref.step()
        pair.check()
    # one grad object replaced: new values, and for the channels_last param other strides
    for ps in (pair.ps, pair.tw):
        ps[0].grad = torch.full_like(ps[0], 0.25)
        ps[1].grad = torch.randn(ps[1].shape, generator=torch.Generator().manual_seed(7))
        assert ps[1].grad.stride() != ps[1].stride()
    before = pair.ps[0].detach().clone()
    pair.ours.step()
    pair.ref.step()
    pair.check()
    assert not torch.equal(pair.ps[0].detach(), before)
    assert pair.ours._plan is plan  # no rebuild needed: grads are read from p.grad
    pair.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_add_param_group_rebuilds(case):
    pair = Pair(case)
    extra = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(6))]
    extra_twin = clone_params(extra)

    def add(opt, ps):
        new = extra if ps is pair.ps else extra_twin
        opt.add_param_group({"params": new, "lr": 0.03})
        ps.extend(new)
        pair.masks.extend([None, None]) if ps is pair.ps else None

    _rebuilt(pair, add)
    assert len(pair.ours.param_groups) == 2


def test_add_param_group_with_a_ticket_masks_the_new_group():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = []
    for net in nets:
        ticket = lthfast.Ticket.from_model(net, 0.5)
        ticket.apply(net)
        opts.append(lo.MaskedSGD(net[0].parameters(), lr=0.1, momentum=0.9, ticket=ticket))
    _checked_only(opts[1])
    for s in range(6):
        if s == 3:
            for net, opt in zip(nets, opts):
                opt.add_param_group({"params": list(net[2].parameters())})
        for net in nets:
            g = torch.Generator().manual_seed(s)
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=g)
        for opt in opts:
            opt.step()
        if s == 2:
            plan = opts[0]._plan
            assert plan is not None
        if s == 5:
            assert opts[0]._plan is not None and opts[0]._plan is not plan
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(p, q)
    mask = opts[0].mask_of(nets[0][2].weight)
    assert mask is not None and bool((nets[0][2].weight[~mask] == 0).all())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_set_masks_and_set_ticket_rebuild(case):
    pair = Pair(case)
    g = torch.Generator().manual_seed(5)
    new = [torch.rand(p.shape, generator=g) > 0.5 for p in pair.ps]

    def remask(opt, ps):
        opt.set_masks({p: m for p, m in zip(ps, new) if p.numel() > 1})
        pair.masks = [m if p.numel() > 1 else None for p, m in zip(ps, new)]

    _rebuilt(pair, remask)

    def unmask(opt, ps):
        opt.set_masks(None)
        pair.masks = [None] * len(ps)

    _rebuilt(pair, unmask)
    # set_ticket: a ticket built on a model of these parameters
    mods = []
    for ps in (pair.ps, pair.tw):
        m = nn.Module()
        for i, p in enumerate(ps):
            m.register_parameter(f"p{i}", p)
        mods.append(m)
    tickets = [lthfast.Ticket.from_model(m, 0.5, scope=["p0", "p2", "p4"]) for m in mods]
    for t, m in zip(tickets, mods):
        t.apply(m)

    def set_ticket(opt, ps):
        opt.set_ticket(tickets[0] if ps is pair.ps else tickets[1])
        pair.masks = [tickets[0].mask_for(p) for p in pair.ps]

    _rebuilt(pair, set_ticket)
    assert pair.ours.packed_mask_of(pair.ps[0]) is tickets[0].packed_for(pair.ps[0])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_load_state_dict_rebuilds(case):
    pair = Pair(case)
    donor = Pair(case, seed=0)
    for _ in range(3):
        donor.step()
    sd = donor.ours.state_dict()

    def load(opt, ps):
        opt.load_state_dict(copy.deepcopy(sd))

    _rebuilt(pair, load)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_cleared_or_entry_deleted_rebuilds(case):
    pair = Pair(case)
    stateful = pair.kind != "SGD" or pair.kw.get("momentum", 0) != 0  # plain SGD: no state
    _rebuilt(pair, lambda opt, ps: opt.state.pop(ps[2], None), rebuild=stateful)
    _rebuilt(pair, lambda opt, ps: opt.state.clear(), rebuild=stateful)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_entry_moved_or_its_dict_replaced_rebuilds(case):
    """The plan compares `state`'s keys and dicts in order by identity (no Tensor hashing):
    an entry re-inserted (it moves to the end) or a dict replaced by a copy rebuilds."""
    pair = Pair(case)
    stateful = pair.kind != "SGD" or pair.kw.get("momentum", 0) != 0  # plain SGD: no state

    def reinsert(opt, ps):
        if ps[0] in opt.state:
            opt.state[ps[0]] = opt.state.pop(ps[0])

    def copy_dict(opt, ps):
        if ps[1] in opt.state:
            opt.state[ps[1]] = dict(opt.state[ps[1]])

    _rebuilt(pair, reinsert, rebuild=stateful)
    _rebuilt(pair, copy_dict, rebuild=stateful)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_group_options_changed_between_steps(case):
    """Hyper-parameters are read at every step (no rebuild needed); the structural ones
    (SGD momentum zero or not, amsgrad) rebuild (here in the second group: its call comes
    after the first group's has written)."""
    pair = Pair(case, split=True)
    pair.step()
    pair.step()
    plan = pair.ours._plan

    def scale_lr(opt, ps):
        for g in opt.param_groups:
            g["lr"] = g["lr"] * 0.5
            g["weight_decay"] = 0.02
            if "betas" in g:
                g["betas"] = (0.8, 0.95)
    pair.both(scale_lr)
    pair.step()
    assert pair.ours._plan is plan
    pair.both(lambda opt, ps: opt.param_groups[0].__setitem__("lr", torch.tensor(0.01)))
    pair.step()
    if pair.kind == "SGD":
        flip = lambda opt, ps: opt.param_groups[-1].__setitem__(  # noqa: E731
            "momentum", 0.0 if opt.param_groups[-1]["momentum"] else 0.5)
    else:
        flip = lambda opt, ps: opt.param_groups[-1].__setitem__(  # noqa: E731
            "amsgrad", not opt.param_groups[-1]["amsgrad"])
    _rebuilt(pair, flip)
    _rebuilt(pair, flip)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_group_params_list_edited_rebuilds(case):
    pair = Pair(case)

    def drop_last(opt, ps):
        opt.param_groups[0]["params"].pop()

    _rebuilt(pair, drop_last)
    fixed = pair.ps[-1].detach().clone()
    pair.step()
    assert torch.equal(pair.ps[-1].detach(), fixed)  # no longer optimized


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("split", [False, True], ids=["one-group", "two-groups"])
def test_bad_grad_on_the_cached_path_changes_nothing(case, split):
    pair = Pair(case, split=split)
    for _ in range(3):
        pair.step()
    snap = [p.detach().clone() for p in pair.ps]
    state = copy.deepcopy(pair.ours.state)
    pair.grads()
    pair.ps[4].grad = pair.ps[4].grad.to_sparse()  # in the second group when split
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        pair.ours.step()
    assert all(torch.equal(a, p.detach()) for a, p in zip(snap, pair.ps))
    for p in pair.ps:
        for k, v in state.get(p, {}).items():
            assert torch.equal(pair.ours.state[p][k], v), k
    for _ in range(2):
        pair.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_copies_do_not_share_the_plan(case):
    pair = Pair(case)
    pair.step()
    pair.step()
    assert pair.ours._plan is not None
    ps2, opt2 = copy.deepcopy((pair.ps, pair.ours))
    assert opt2._plan is None
    tw2, ref2 = copy.deepcopy((pair.tw, pair.ref))
    for ps in (ps2, tw2):
        for p, g in zip(ps, random_grads(ps, 50)):
            p.grad = g
    opt2.step()
    ref2.step()
    opt2.step()
    ref2.step()
    for a, b in zip(ps2, tw2):
        assert torch.equal(a, b)
    pair.check()  # the originals did not move
    pair.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_scaler_skips_on_the_cached_path(case):
    pair = Pair(case)
    scalers = {id(pair.ours): torch.amp.GradScaler("cpu", init_scale=4.0),
               id(pair.ref): torch.amp.GradScaler("cpu", init_scale=4.0)}
    for s in range(5):
        pair.grads()
        if s == 3:  # an inf grad: both skip (cached path for ours)
            for ps in (pair.ps, pair.tw):
                ps[3].grad[0] = float("inf")
        plan = pair.ours._plan
        for opt in (pair.ours, pair.ref):
            sc = scalers[id(opt)]
            sc.scale(torch.ones(()))  # (the loss): sets up the scale; grads are "scaled" ones
            sc.step(opt)
            sc.update()
        if s >= 2:
            assert pair.ours._plan is plan
        pair.check()
    assert scalers[id(pair.ours)].get_scale() == scalers[id(pair.ref)].get_scale() == 2.0


def test_torch_compile_takes_the_checked_path(monkeypatch):
    """Under dynamo the plan is not used (no cached Python state inside a graph)."""
    p = torch.nn.Parameter(torch.randn(4))
    opt = lo.MaskedSGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    opt.step()
    opt.step()
    assert opt._plan is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_entry_or_tensor_replaced_by_assignment_rebuilds(case):
    pair = Pair(case)
    pair.step()
    pair.step()  # the plan is in use from here
    for opt, ps in ((pair.ours, pair.ps), (pair.ref, pair.tw)):
        opt.state[ps[1]] = {}  # a reset of one parameter's state, entry count unchanged
    pair.step()
    pair.step()
    for opt, ps in ((pair.ours, pair.ps), (pair.ref, pair.tw)):
        st = opt.state[ps[2]]
        for k, v in list(st.items()):  # the same keys, new tensor objects
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = torch.full_like(v, 0.5)
    pair.step()
    pair.step()
