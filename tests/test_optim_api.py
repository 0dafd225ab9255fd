"""Masked optimizers: state_dict interop with torch.optim, set_ticket between IMP
rounds, torch.amp.GradScaler (skip on inf), and opcheck of the ops."""
import copy

import pytest
import torch

import lthfast
import lthfast.optim as lo

from _optim_cases import (assert_pruned_zero, clone_params, make_params, oracle_step,
                          random_grads)

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")


class FakeTicket:
    """The Ticket contract the optimizers use: mask_for(param) -> bool mask | None."""

    def __init__(self, masks):
        self._m = {id(p): m for p, m in masks.items()}

    def mask_for(self, p):
        return self._m.get(id(p))


def _set_grads(params, step):
    for p, gr in zip(params, random_grads(params, step)):
        p.grad = gr


@pytest.mark.parametrize("pair", [
    (lambda ps, **k: lo.MaskedAdamW(ps, lr=1e-2, amsgrad=True, **k),
     lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True)),
    (lambda ps, **k: lo.MaskedSGD(ps, lr=0.05, momentum=0.9, nesterov=True, **k),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
], ids=["AdamW", "SGD"])
def test_state_dict_round_trip_with_torch(pair):
    make_ours, make_torch = pair
    params, masks = make_params(dtype=torch.float64)
    masks_list = [masks.get(p) for p in params]
    ours = make_ours(params, masks=masks)
    for s in range(3):
        _set_grads(params, s)
        ours.step()
    sd = copy.deepcopy(ours.state_dict())
    # ours -> torch: torch continues exactly where ours would
    twin = clone_params(params)
    theirs = make_torch(twin)
    theirs.load_state_dict(copy.deepcopy(sd))
    cont = make_ours(clone_params(params), masks=None)
    cont.set_masks({q: m for q, m in zip(cont.param_groups[0]["params"], masks_list) if m is not None})
    cont.load_state_dict(copy.deepcopy(sd))
    for s in range(3, 6):
        grads = random_grads(params, s)
        oracle_step(theirs, twin, masks_list, grads)
        for p, gr in zip(cont.param_groups[0]["params"], grads):
            p.grad = gr
        cont.step()
    for p, t in zip(cont.param_groups[0]["params"], twin):
        torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-12, atol=1e-13)
    # torch -> ours
    back = make_ours(clone_params(twin), masks=None)
    back.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for q, t in zip(back.param_groups[0]["params"], twin):
        for k, v in theirs.state[t].items():
            assert torch.equal(back.state[q][k], v), k
    assert back.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]


def test_state_keys_match_torch():
    p = torch.nn.Parameter(torch.randn(3, 4))
    t = torch.nn.Parameter(p.detach().clone())
    for ours, theirs in [(lo.MaskedAdam([p], amsgrad=True), torch.optim.Adam([t], amsgrad=True)),
                         (lo.MaskedAdamW([p]), torch.optim.AdamW([t])),
                         (lo.MaskedSGD([p], momentum=0.9), torch.optim.SGD([t], momentum=0.9))]:
        p.grad, t.grad = torch.ones(3, 4), torch.ones(3, 4)
        ours.step()
        theirs.step()
        assert set(ours.state[p]) == set(theirs.state[t])
        if "step" in theirs.state[t]:
            assert ours.state[p]["step"].dtype == theirs.state[t]["step"].dtype
            assert ours.state[p]["step"].device == theirs.state[t]["step"].device
        assert ours.param_groups[0].keys() == theirs.param_groups[0].keys()
        assert {k: v for k, v in ours.defaults.items()} == theirs.defaults


def test_set_ticket_zeroes_newly_pruned_and_continues():
    params, masks = make_params(dtype=torch.float64)
    ticket1 = FakeTicket(masks)
    opt = lo.MaskedAdamW(params, lr=1e-2, amsgrad=True, ticket=ticket1)
    for s in range(3):
        _set_grads(params, s)
        opt.step()
    g = torch.Generator().manual_seed(7)
    masks2 = {p: m & (torch.rand(m.shape, generator=g) > 0.3) for p, m in masks.items()}
    opt.set_ticket(FakeTicket(masks2))
    masks_list = [masks2.get(p) for p in params]
    assert_pruned_zero(opt, params, masks_list)  # at once, before any step
    assert opt.mask_of(params[0]) is not None and opt.mask_of(params[3]) is None
    twin = clone_params(params)
    theirs = torch.optim.AdamW(twin, lr=1e-2, amsgrad=True)
    theirs.load_state_dict(copy.deepcopy(opt.state_dict()))
    for s in range(3, 6):
        grads = random_grads(params, s)
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        oracle_step(theirs, twin, masks_list, grads)
    for p, t in zip(params, twin):
        torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-12, atol=1e-13)
    opt.set_ticket(None)
    assert opt.mask_of(params[0]) is None


def test_ticket_without_bound_masks_is_rejected():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"ticket\.apply\(model\)"):
        lo.MaskedSGD([p], lr=0.1, ticket=FakeTicket({}))


def test_add_param_group_picks_up_ticket_masks():
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(5))
    mb = torch.tensor([True, False, True, False, True])
    opt = lo.MaskedSGD([a], lr=0.1, ticket=FakeTicket({a: torch.ones(4, 4, dtype=torch.bool), b: mb}))
    opt.add_param_group({"params": [b], "lr": 0.2})
    assert torch.equal(opt.mask_of(b), mb) and bool((b.detach()[~mb] == 0).all())


def _scaler_run(make_opt, inject_inf_at):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2))
    mask = torch.rand(5, 6) > 0.5
    with torch.no_grad():
        model[0].weight.mul_(mask)
    opt = make_opt(model, mask)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    snaps = []
    for s in range(4):
        opt.zero_grad()
        loss = model(x).square().mean() * (s + 1)
        scaler.scale(loss).backward()
        if s == inject_inf_at:
            model[1].bias.grad[0] = float("inf")
        scaler.step(opt)
        if not isinstance(opt, lo.MaskedAdamW):  # the oracle: mask after the step
            with torch.no_grad():
                model[0].weight.mul_(mask)
        scaler.update()
        snaps.append([p.detach().clone() for p in model.parameters()])
    return snaps, opt, model, mask


def test_grad_scaler_matches_torch_fused_and_skips_on_inf():
    def ours(model, mask):
        return lo.MaskedAdamW(model.parameters(), lr=1e-2, masks={model[0].weight: mask})

    def theirs(model, mask):
        return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)

    a, opt, model, mask = _scaler_run(ours, inject_inf_at=1)
    b, _, _, _ = _scaler_run(theirs, inject_inf_at=1)
    for s, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {s}: {m}")
    for u, v in zip(a[0], a[1]):  # step 1 had an inf grad: skipped entirely
        assert torch.equal(u, v)
    w = model[0].weight
    assert float(opt.state[w]["step"]) == 3.0  # 4 steps, one skipped
    assert bool((opt.state[w]["exp_avg"][~mask] == 0).all())


def test_grad_scale_and_found_inf_on_the_op_directly():
    p = torch.nn.Parameter(torch.randn(10))
    opt = lo.MaskedSGD([p], lr=0.5, momentum=0.9)
    g = torch.randn(10)
    p.grad = g * 8
    before = p.detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), before)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.5 * g)


def _bool_masks(ps, g):
    """A bool mask in each param's layout, none for params[1]."""
    return [None if i == 1 else torch.empty_like(p, dtype=torch.bool).copy_(
        torch.rand(p.shape, generator=g) > 0.5) for i, p in enumerate(ps)]


def _op_args(kind, dtype=torch.float32, with_masks=True, lr_tensor=False, scaler=False,
             shapes=((4, 3, 2, 2), (7,), (0, 2)), make_masks=_bool_masks):
    """Arguments of masked_sgd_ / masked_adam_ (params[0] channels_last);
    make_masks(params, generator) gives the masks."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    ps[0] = ps[0].contiguous(memory_format=torch.channels_last)
    gs = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    like = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=g)) for p in ps]
    ms = make_masks(ps, g) if with_masks else [None] * len(ps)
    lr_t = torch.tensor(0.05) if lr_tensor else None
    gsc, fi = (torch.tensor(4.0), torch.tensor(0.0)) if scaler else (None, None)
    if kind == "sgd":
        return (ps, gs, like, ms, 0.1, lr_t, 0.9, 0.1, 0.01, False, False, False, gsc, fi)
    sq = [x.abs() for x in like]
    mx = [x.abs() * 2 for x in like]
    steps = [torch.tensor(3.0) for _ in ps]
    return (ps, gs, like, sq, mx, steps, ms, 0.1, lr_t, 0.9, 0.99, 0.01, 1e-8, True, False, True,
            gsc, fi)


@pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("variant", [dict(), dict(with_masks=False, lr_tensor=True),
                                     dict(scaler=True, dtype=torch.bfloat16),
                                     dict(dtype=torch.float64)], ids=str)
def test_opcheck(kind, variant):
    op = torch.ops.lthfast.masked_sgd_ if kind == "sgd" else torch.ops.lthfast.masked_adam_
    torch.library.opcheck(op, _op_args(kind, **variant))


def test_with_lthfast_ticket_across_imp_rounds():
    """The real Ticket: apply binds masks, the optimizer finds them; the next round's
    ticket switches masks without rebuilding the optimizer."""
    Ticket = getattr(lthfast, "Ticket", None)
    if Ticket is None:
        pytest.skip("lthfast.Ticket is not in this checkout")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(5, 3, 8, 8)
    ticket = Ticket.from_model(model, 0.5)
    ticket.apply(model)
    opt = lo.MaskedSGD(model.parameters(), lr=0.1, momentum=0.9, ticket=ticket)
    assert opt.mask_of(model[0].bias) is None

    def train(t):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        for layer in (model[0], model[3]):
            keep = t.mask_for(layer.weight)
            assert bool((layer.weight.detach()[~keep] == 0).all())
            assert bool((opt.state[layer.weight]["momentum_buffer"][~keep] == 0).all())

    train(ticket)
    nxt = ticket.prune(model, 0.5)
    nxt.apply(model)
    opt.set_ticket(nxt)
    train(nxt)
    assert opt.ticket is nxt
