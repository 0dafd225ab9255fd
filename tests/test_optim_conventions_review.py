"""torch.optim conventions review: what torch.optim users rely on, checked against
torch.optim.SGD / Adam / AdamW with the same arguments plus masking (grad masked before
the step, weight masked after; float64, so trajectories agree to rounding) — LR
schedulers that write lr / momentum / betas into param_groups, step hooks, tensor
betas changed in place, named parameters in add_param_group, state from Adam loaded
into AdamW, optimizer state from another ticket, torch.compile, `defaults` / repr /
param_groups after loading old state dicts, and Adam's step count of a pruned 0-dim
parameter. Pruned entries stay exactly 0."""
import copy
import sys

import pytest
import torch

import lthfast
import lthfast.optim as lo

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")

PAIRS = {"SGD": (lo.MaskedSGD, torch.optim.SGD), "Adam": (lo.MaskedAdam, torch.optim.Adam),
         "AdamW": (lo.MaskedAdamW, torch.optim.AdamW)}
SHAPES = [(6, 5), (7,), (4, 3, 2)]


def _clone_kw(kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            v = v.clone()
        elif isinstance(v, tuple):
            v = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in v)
        out[k] = v
    return out


def _setup(kind, kw, *, seed=0, dtype=torch.float64, groups=None):
    """(ours' params, torch's params, masks, ours, torch's), params[1] unmasked."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    ms = [torch.rand(SHAPES[0], generator=g) > 0.5, None, torch.rand(SHAPES[2], generator=g) > 0.3]
    tw = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    _mask_weights(tw, ms)
    ours_cls, torch_cls = PAIRS[kind]
    groups = groups or (lambda x: x)
    ours = ours_cls(groups(ps), masks={p: m for p, m in zip(ps, ms) if m is not None},
                    **_clone_kw(kw))
    theirs = torch_cls(groups(tw), **_clone_kw(kw))
    return ps, tw, ms, ours, theirs


@torch.no_grad()
def _mask_weights(params, masks):
    for p, m in zip(params, masks):
        if m is not None:
            p.mul_(m)


def _grads(ps, tw, ms, step):
    g = torch.Generator().manual_seed(100 + step)
    for p, t, m in zip(ps, tw, ms):
        gr = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = gr.clone()
        t.grad = gr.clone() if m is None else gr * m


def _step_both(ps, tw, ms, ours, theirs, step):
    _grads(ps, tw, ms, step)
    ours.step()
    theirs.step()
    _mask_weights(tw, ms)


def _assert_same(ps, tw, ms, ours):
    for i, (p, t) in enumerate(zip(ps, tw)):
        torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-12, atol=1e-13,
                                   msg=lambda m: f"param {i}: {m}")
    for p, m in zip(ps, ms):
        if m is None:
            continue
        assert bool((p.detach()[~m] == 0).all())
        for k, v in ours.state.get(p, {}).items():
            if k != "step" and isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert bool((v[~m] == 0).all()), k


def _kw(kind, **extra):
    return {**(dict(lr=0.05, momentum=0.9) if kind == "SGD" else dict(lr=1e-2)), **extra}


# --- bugs found by this review -------------------------------------------------------

@pytest.mark.parametrize("src", ["Adam", "MaskedAdam"])
def test_adamw_loading_an_adam_state_dict_keeps_decoupled_decay(src):
    """torch.optim.AdamW forces decoupled_weight_decay=True on any loaded state; MaskedAdamW
    kept the Adam state dict's False and then applied coupled (L2) weight decay."""
    ps, tw, ms, ours, theirs = _setup("AdamW", dict(lr=1e-2, weight_decay=0.1))
    make = torch.optim.Adam if src == "Adam" else lo.MaskedAdam
    other = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = make(other, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(5)
    for q in other:
        q.grad = torch.randn(q.shape, generator=g, dtype=q.dtype)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["decoupled_weight_decay"] is False
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    assert ours.param_groups[0]["decoupled_weight_decay"] is True
    assert theirs.param_groups[0]["decoupled_weight_decay"] is True
    for s in range(3):
        _step_both(ps, tw, ms, ours, theirs, s)
    _assert_same(ps, tw, ms, ours)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_add_param_group_with_named_parameters(kind):
    """torch.optim accepts named_parameters() in add_param_group (it records param_names);
    the masked optimizers raised AttributeError ('tuple' object has no attribute 'layout')."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).double()
    twin = copy.deepcopy(net)
    ticket = lthfast.Ticket.from_model(net, 0.5)
    ticket.apply(net)
    ticket.apply(twin)
    ours_cls, torch_cls = PAIRS[kind]
    ours = ours_cls(net[0].named_parameters(prefix="0"), lr=0.1, ticket=ticket)
    theirs = torch_cls(twin[0].named_parameters(prefix="0"), lr=0.1)
    ours.add_param_group({"params": net[1].named_parameters(prefix="1"), "lr": 0.05})
    theirs.add_param_group({"params": twin[1].named_parameters(prefix="1"), "lr": 0.05})
    assert ours.param_groups[1]["param_names"] == ["1.weight", "1.bias"]
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    assert ours.packed_mask_of(net[1].weight) is not None  # the ticket's mask was picked up
    # the same errors as torch for what it refuses, and nothing added
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        ours.add_param_group({"params": [1.0]})
    with pytest.raises(ValueError, match="with/without names"):
        ours.add_param_group({"params": [("x", torch.nn.Parameter(torch.zeros(2))),
                                         torch.nn.Parameter(torch.zeros(2))]})
    assert len(ours.param_groups) == 2
    ps, tw = list(net.parameters()), list(twin.parameters())
    ms = [ticket.mask_for(p) for p in ps]
    for s in range(3):
        _step_both(ps, tw, ms, ours, theirs, s)
    _assert_same(ps, tw, ms, ours)


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_tensor_betas_are_kept_and_read_each_step(kind):
    """torch keeps tensor betas (squeezed to 0-dim) in defaults / param_groups and reads them
    at every step; the masked optimizers froze them into floats at construction, so an
    in-place change (as with a tensor lr) was ignored."""
    betas = (torch.tensor([0.8], dtype=torch.float64), torch.tensor(0.95, dtype=torch.float64))
    ps, tw, ms, ours, theirs = _setup(kind, dict(lr=1e-2, betas=betas, foreach=False))
    assert repr(ours.defaults) == repr(theirs.defaults)
    assert all(isinstance(b, torch.Tensor) and b.dim() == 0 for b in ours.param_groups[0]["betas"])
    for s in range(4):
        _step_both(ps, tw, ms, ours, theirs, s)
        for opt in (ours, theirs):
            b1, b2 = opt.param_groups[0]["betas"]
            b1.mul_(0.9)
            b2.sub_(0.01)
    _assert_same(ps, tw, ms, ours)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_defaults_repr_and_old_state_dict_groups_match_torch(kind):
    """MaskedSGD stored weight_decay as float (repr 'weight_decay: 0.0' vs torch's 0) and
    filled a missing 'fused' with None where torch.optim.SGD uses False."""
    p = torch.nn.Parameter(torch.randn(3))
    q = torch.nn.Parameter(p.detach().clone())
    ours_cls, torch_cls = PAIRS[kind]
    for kw in [dict(lr=0.1), dict(lr=0.1, weight_decay=1)]:
        ours, theirs = ours_cls([p], **kw), torch_cls([q], **kw)
        assert repr(ours.defaults) == repr(theirs.defaults)
        assert repr(ours).replace("Masked", "") == repr(theirs)
    sd = theirs.state_dict()
    for k in ["fused", "foreach", "maximize", "differentiable", "nesterov", "capturable",
              "amsgrad", "decoupled_weight_decay"]:
        sd["param_groups"][0].pop(k, None)
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    assert repr(ours).replace("Masked", "") == repr(theirs)


# --- conventions that hold: guarded here so they keep holding -----------------------

S = torch.optim.lr_scheduler
SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, 3, 0.5),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=20, cycle_momentum=True),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=1),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 0.1, total_iters=3), S.ExponentialLR(o, 0.9)], milestones=[3]),
}


@pytest.mark.parametrize("lr_tensor", [False, True], ids=["lr_float", "lr_tensor"])
@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("kind", list(PAIRS))
def test_lr_schedulers_and_their_state_dicts(kind, sched, lr_tensor):
    """Schedulers write lr (and OneCycleLR momentum / betas) into param_groups; a scheduler +
    optimizer checkpoint resumed midway continues exactly like torch."""
    kw = _kw(kind)
    if lr_tensor:
        kw.update(lr=torch.tensor(kw["lr"], dtype=torch.float64), foreach=False)
    ps, tw, ms, ours, theirs = _setup(kind, kw)
    so, st = SCHEDULERS[sched](ours), SCHEDULERS[sched](theirs)

    def tick(s):
        if sched == "ReduceLROnPlateau":
            so.step(1.0)
            st.step(1.0)
        else:
            so.step()
            st.step()

    for s in range(5):
        _step_both(ps, tw, ms, ours, theirs, s)
        tick(s)
    ckpt = copy.deepcopy((ours.state_dict(), so.state_dict()))
    # resume into fresh objects (same params) and go on
    ours = PAIRS[kind][0](ps, masks={p: m for p, m in zip(ps, ms) if m is not None},
                          **_clone_kw(kw))
    so = SCHEDULERS[sched](ours)
    ours.load_state_dict(ckpt[0])
    so.load_state_dict(ckpt[1])
    for s in range(5, 10):
        _step_both(ps, tw, ms, ours, theirs, s)
        tick(s)
    g_o, g_t = ours.param_groups[0], theirs.param_groups[0]
    assert float(g_o["lr"]) == float(g_t["lr"])
    assert g_o.get("momentum") == g_t.get("momentum") and g_o.get("betas") == g_t.get("betas")
    _assert_same(ps, tw, ms, ours)


def _sgd_groups(ps):
    return [dict(params=ps[:1], momentum=0.9, nesterov=True),
            dict(params=ps[1:2], momentum=0.5, dampening=0.5, maximize=True, lr=0.2),
            dict(params=ps[2:], weight_decay=0.1)]


def _adam_groups(ps):
    return [dict(params=ps[:1], amsgrad=True, betas=(0.5, 0.9)),
            dict(params=ps[1:2], maximize=True, lr=0.02, eps=1e-3),
            dict(params=ps[2:], weight_decay=0.1, decoupled_weight_decay=True)]


@pytest.mark.parametrize("kind", list(PAIRS))
def test_per_group_options_hooks_closure_and_zero_grad(kind):
    """Per-group momentum/nesterov/dampening/maximize/amsgrad/betas/decay; step pre-hooks
    that edit grads and post-hooks; state_dict / load_state_dict hooks; step(closure) under
    no_grad; zero_grad(set_to_none=False) then a step on zero grads."""
    groups = _sgd_groups if kind == "SGD" else _adam_groups
    ps, tw, ms, ours, theirs = _setup(kind, dict(lr=0.01), groups=groups)
    log = []

    def pre(opt, args, kwargs):
        if opt is ours:
            log.append("pre")
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.mul_(2)

    for opt in (ours, theirs):
        opt.register_step_pre_hook(pre)
    ours.register_step_post_hook(lambda opt, a, k: log.append("post"))
    ours.register_state_dict_pre_hook(lambda opt: log.append("sd_pre"))
    ours.register_load_state_dict_post_hook(lambda opt: log.append("load_post"))
    global_hook = sys.modules["torch.optim.optimizer"].register_optimizer_step_pre_hook(
        lambda opt, a, k: log.append("global") if opt is ours else None)
    try:
        for s in range(3):
            _step_both(ps, tw, ms, ours, theirs, s)
    finally:
        global_hook.remove()
    assert log == ["global", "pre", "post"] * 3

    seen = []

    def closure(opt, params, masks):
        def run():
            seen.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = sum((p * p * (i + 1)).sum() for i, p in enumerate(params))
            loss.backward()
            if masks is not None:
                with torch.no_grad():
                    for p, m in zip(params, masks):
                        if m is not None:
                            p.grad.mul_(m)
            return loss
        return run

    with torch.no_grad():
        lo_ = ours.step(closure(ours, ps, None))
        lt_ = theirs.step(closure(theirs, tw, ms))
    _mask_weights(tw, ms)
    assert seen == [True, True] and lo_.requires_grad
    torch.testing.assert_close(lo_, lt_)
    for opt in (ours, theirs):
        opt.zero_grad(set_to_none=False)
        opt.step()  # all-zero grads: Adam still advances its state; SGD decays momentum
    _mask_weights(tw, ms)
    assert all(p.grad is not None and not p.grad.any() for p in ps)
    sd = ours.state_dict()
    ours.load_state_dict(sd)
    assert log[-2:] == ["sd_pre", "load_post"]
    _assert_same(ps, tw, ms, ours)
    ours.zero_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_state_from_another_ticket_keeps_this_optimizers_masks(kind):
    """Masks are not part of state_dict: loading state saved under another ticket keeps the
    loading optimizer's masks and zeroes their pruned weights and state at once (what
    set_ticket does); then it steps like torch loaded with the same state + masking."""
    kw = _kw(kind, **({} if kind == "SGD" else dict(amsgrad=True)))
    ps, tw, ms, ours, theirs = _setup(kind, kw)
    for s in range(2):
        _step_both(ps, tw, ms, ours, theirs, s)
    sd = copy.deepcopy(ours.state_dict())
    g = torch.Generator().manual_seed(9)
    ms2 = [torch.rand(p.shape, generator=g) > 0.5 if i != 2 else None for i, p in enumerate(ps)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours2 = PAIRS[kind][0](qs, masks={q: m for q, m in zip(qs, ms2) if m is not None}, **kw)
    ours2.load_state_dict(copy.deepcopy(sd))
    for q, m in zip(qs, ms2):
        assert (ours2.mask_of(q) is None) == (m is None)
        if m is not None:
            assert torch.equal(ours2.mask_of(q), m)
    theirs.load_state_dict(copy.deepcopy(sd))
    with torch.no_grad():
        for t, m in zip(tw, ms2):
            if m is not None:
                t.mul_(m)
                for v in theirs.state[t].values():
                    if v.shape == t.shape:
                        v.mul_(m)
    _assert_same(qs, tw, ms2, ours2)  # zeroed at load, before any step
    for s in range(2, 5):
        _step_both(qs, tw, ms2, ours2, theirs, s)
    _assert_same(qs, tw, ms2, ours2)


@pytest.mark.parametrize("kind", ["SGD", "AdamW"])
def test_swa_ema_and_grad_scaler_unscale(kind):
    """swa_utils.SWALR + an EMA AveragedModel on top, and GradScaler with an explicit
    unscale_ (grad_scale None, found_inf set) including a skipped inf step."""
    from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn
    kw = _kw(kind, **(dict(dampening=0.2) if kind == "SGD" else {}))
    ps, tw, ms, ours, theirs = _setup(kind, kw, dtype=torch.float32)
    m_o, m_t = torch.nn.ParameterList(ps), torch.nn.ParameterList(tw)
    e_o = AveragedModel(m_o, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    e_t = AveragedModel(m_t, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    s_o, s_t = SWALR(ours, swa_lr=0.02, anneal_epochs=3), SWALR(theirs, swa_lr=0.02, anneal_epochs=3)
    sc_o = torch.amp.GradScaler("cpu", init_scale=4.0)
    sc_t = torch.amp.GradScaler("cpu", init_scale=4.0)
    for s in range(4):
        _grads(ps, tw, ms, s)
        for sc, opt, params in ((sc_o, ours, ps), (sc_t, theirs, tw)):
            sc.scale(torch.ones(()))
            for p in params:
                p.grad.mul_(4.0)
                if s == 1:
                    p.grad.view(-1)[-1] = float("inf")
            sc.unscale_(opt)
            sc.step(opt)
            sc.update()
        _mask_weights(tw, ms)
        s_o.step()
        s_t.step()
        e_o.update_parameters(m_o)
        e_t.update_parameters(m_t)
    assert sc_o.get_scale() == sc_t.get_scale() == 4.0 * 0.5
    for a, b in zip(list(ps) + list(e_o.parameters()), list(tw) + list(e_t.parameters())):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    for p, m in zip(ps, ms):
        if m is not None:
            assert bool((p.detach()[~m] == 0).all())


def test_torch_compile_of_a_training_step():
    """A compiled training step that calls opt.step() (eager backend: the op's fake kernel
    and the step's Python under dynamo) keeps pruned weights 0 and matches eager."""
    kw = dict(lr=torch.tensor(0.01), foreach=False)
    ps, tw, ms, ours, theirs = _setup("AdamW", kw, dtype=torch.float32)
    torch._dynamo.reset()

    @torch.compile(backend="eager")
    def train_step(x):
        ours.zero_grad()
        loss = sum((p * x).pow(2).sum() for p in ps)
        loss.backward()
        ours.step()
        return loss

    for s in range(3):
        x = torch.tensor(1.0 + s)
        train_step(x)
        theirs.zero_grad()
        sum((p * x).pow(2).sum() for p in tw).backward()
        with torch.no_grad():
            for p, m in zip(tw, ms):
                if m is not None:
                    p.grad.mul_(m)
        theirs.step()
        _mask_weights(tw, ms)
    torch._dynamo.reset()
    for p, t, m in zip(ps, tw, ms):
        torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-5, atol=1e-6)
        if m is not None:
            assert bool((p.detach()[~m] == 0).all())


@pytest.mark.parametrize("kind", list(PAIRS))
def test_flags_accepted_like_torch_or_named_in_the_error(kind):
    ours_cls, torch_cls = PAIRS[kind]
    p = torch.nn.Parameter(torch.randn(3))
    for flag in ["foreach", "fused"]:
        for v in (True, False, None):
            opt = ours_cls([p], lr=0.1, **{flag: v})
            assert opt.param_groups[0][flag] is v
    bad = ["differentiable"] + (["capturable"] if kind != "SGD" else [])
    for flag in bad:
        ours_cls([p], lr=0.1, **{flag: False})
        with pytest.raises(ValueError, match=f"{flag}=True"):
            ours_cls([p], lr=0.1, **{flag: True})
    if kind == "SGD":
        with pytest.raises(TypeError, match="capturable"):  # torch.optim.SGD has no such flag
            ours_cls([p], lr=0.1, capturable=False)
    opt = ours_cls([p], lr=0.1)
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_pruning_a_scalar_parameter_keeps_adams_step_count(kind):
    """A 0-dim parameter (a learnable scale) has the shape of Adam's 'step' counter: masking
    it (set_masks, load_state_dict) zeroed the counter with the per-entry state, so after
    the mask was lifted the bias correction restarted, unlike torch.optim + masking."""
    ps = [torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64)),
          torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]
    tw = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, theirs = PAIRS[kind][0](ps, lr=0.1), PAIRS[kind][1](tw, lr=0.1)
    pruned = [torch.tensor(False), None]
    for s in range(3):
        _step_both(ps, tw, [None, None], ours, theirs, s)
    ours.set_masks({ps[0]: pruned[0]})
    with torch.no_grad():  # the oracle: weight and per-entry state masked, 'step' kept
        tw[0].zero_()
        theirs.state[tw[0]]["exp_avg"].zero_()
        theirs.state[tw[0]]["exp_avg_sq"].zero_()
    assert float(ours.state[ps[0]]["step"]) == 3.0
    for s in range(3, 5):
        _step_both(ps, tw, pruned, ours, theirs, s)
    ours.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert float(ours.state[ps[0]]["step"]) == float(theirs.state[tw[0]]["step"]) == 5.0
    ours.set_masks(None)  # e.g. dense fine-tuning after IMP
    for s in range(5, 8):
        _step_both(ps, tw, [None, None], ours, theirs, s)
    _assert_same(ps, tw, [None, None], ours)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_fused_and_foreach_together_are_refused_like_torch(name):
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(RuntimeError) as theirs:
        getattr(torch.optim, name)(p, lr=0.1, foreach=True, fused=True)
    with pytest.raises(RuntimeError) as ours:
        getattr(lthfast.optim, "Masked" + name)(p, lr=0.1, foreach=True, fused=True)
    assert str(ours.value) == str(theirs.value)
