"""Packed masks (uint8, 1 bit per entry in the parameter's memory order) in the fused
optimizer ops: bit-identical to the bool form on every dtype and layout, several
chunks and sizes that are not a multiple of 8, opcheck, clear errors; the
optimizers hold packed masks only (a contiguous parameter shares the Ticket's)."""
import pytest
import torch

import lthfast
import lthfast.optim as lo
from lthfast import _reference_bitmask as ref_bits
from lthfast import _reference_optim as ref
from lthfast.optim._masks import pack_memory_order, unpack_memory_order

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")
needs_c = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (shape, channels_last): numel 315 and 47619 are not multiples of 8; 47619 and 70001
# span several CPU chunks (32768 entries)
SHAPES = [((3, 5, 7, 3), False), ((3, 5, 7, 3), True), ((70001,), False),
          ((37, 9, 11, 13), True), ((5,), False), ((0, 4), False)]
SGD_VARIANTS = [dict(momentum=0.0, first=False, nesterov=False),
                dict(momentum=0.9, first=True, nesterov=False),
                dict(momentum=0.9, first=False, nesterov=True)]
ADAM_VARIANTS = [dict(amsgrad=False, decoupled=True), dict(amsgrad=True, decoupled=False)]


def packed_in_memory_order(mask, p):
    """Independent oracle of the packed layout: p's memory, in order, packed LSB first."""
    laid = torch.empty_like(p, dtype=torch.bool).copy_(mask)
    return ref_bits.pack_bits(laid.as_strided((p.numel(),), (1,)))


def _tensor(shape, cl, dtype, g, device="cpu"):
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(device)


def _setup(shape, cl, dtype, n_state, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    p = _tensor(shape, cl, dtype, g, device)
    states = [_tensor(shape, cl, dtype, g, device).abs() for _ in range(n_state)]
    mask = (torch.rand(shape, generator=g) > 0.6).to(device)
    grads = [_tensor(shape, False, dtype, g, device) for _ in range(4)]  # other layout: copied
    return p, states, mask, grads


def _sgd_call(op, p, states, mask, grad, v, lr_t=None):
    op([p], [grad], states if v["momentum"] else [], [mask], 0.05, lr_t, v["momentum"], 0.1,
       1e-2, v["nesterov"], False, v["first"], None, None)


def _adam_call(op, p, states, mask, grad, step, v):
    m, s, x = states
    op([p], [grad], [m], [s], [x] if v["amsgrad"] else [], [step], [mask], 1e-2, None, 0.8,
       0.95, 1e-2, 1e-6, v["amsgrad"], False, v["decoupled"], None, None)


def _run(kind, v, p, states, mask, grads, op):
    step = torch.tensor(0.0)
    for gr in grads:
        if kind == "sgd":
            _sgd_call(op, p, states, mask, gr, v)
        else:
            _adam_call(op, p, states, mask, gr, step, v)


def _ops(kind):
    if lthfast._ops.available():
        return getattr(torch.ops.lthfast, f"masked_{kind}_")
    return getattr(ref, f"masked_{kind}_")


@pytest.mark.parametrize("shape,cl", SHAPES, ids=lambda x: str(x))
def test_pack_memory_order_layout(shape, cl):
    g = torch.Generator().manual_seed(3)
    p = _tensor(shape, cl, torch.float32, g)
    mask = torch.rand(shape, generator=g) > 0.5
    packed = pack_memory_order(mask, p)
    assert packed.dtype == torch.uint8 and packed.numel() == (p.numel() + 7) // 8
    assert torch.equal(packed, packed_in_memory_order(mask, p))
    back = unpack_memory_order(packed, p)
    assert torch.equal(back, mask) and (p.numel() <= 1 or back.stride() == p.stride())


@pytest.mark.parametrize("kind,v", [("sgd", v) for v in SGD_VARIANTS] +
                         [("adam", v) for v in ADAM_VARIANTS], ids=str)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_and_bool_masks_give_identical_trajectories(kind, v, shape, cl, dtype):
    n_state = 1 if kind == "sgd" else 3
    p, states, mask, grads = _setup(shape, cl, dtype, n_state)
    bool_mask = torch.empty_like(p, dtype=torch.bool).copy_(mask)  # the param's strides
    packed = packed_in_memory_order(mask, p)
    a, sa = p.clone(), [s.clone() for s in states]
    b, sb = p.clone(), [s.clone() for s in states]
    _run(kind, v, a, sa, bool_mask, grads, _ops(kind))
    _run(kind, v, b, sb, packed, grads, _ops(kind))
    assert torch.equal(a, b)
    for x, y in zip(sa, sb):
        assert torch.equal(x, y)
    if p.numel():
        assert bool((b[~mask] == 0).all())
        if kind == "adam" or v["momentum"]:
            assert bool((sb[0][~mask] == 0).all())
    # the reference reads both forms the same way too
    c, sc = p.clone(), [s.clone() for s in states]
    _run(kind, v, c, sc, packed, grads, getattr(ref, f"masked_{kind}_"))
    d, sd = p.clone(), [s.clone() for s in states]
    _run(kind, v, d, sd, bool_mask, grads, getattr(ref, f"masked_{kind}_"))
    assert torch.equal(c, d)
    if dtype in (torch.float32, torch.float64):
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(b, c, **tol)


def _packed_masks(ps, g):
    """Packed masks (memory order), none for params[1], a bool one for params[3]."""
    ms = [None if i == 1 else pack_memory_order(torch.rand(p.shape, generator=g) > 0.5, p)
          for i, p in enumerate(ps)]
    ms[3] = torch.empty_like(ps[3], dtype=torch.bool).copy_(torch.rand(13, 5, generator=g) > 0.5)
    return ms


def _op_args_packed(kind, **variant):
    from test_optim_api import _op_args
    return _op_args(kind, shapes=((4, 3, 2, 2), (7,), (0, 2), (13, 5)), make_masks=_packed_masks,
                    **variant)


@needs_c
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("variant", [dict(), dict(lr_tensor=True, scaler=True),
                                     dict(dtype=torch.bfloat16), dict(dtype=torch.float64)],
                         ids=str)
def test_opcheck_packed_masks(kind, variant):
    """Packed and bool masks mixed in one call."""
    op = torch.ops.lthfast.masked_sgd_ if kind == "sgd" else torch.ops.lthfast.masked_adam_
    torch.library.opcheck(op, _op_args_packed(kind, **variant))


def _bad_call(kind, p, mask):
    g = torch.randn_like(p)
    if kind == "sgd":
        torch.ops.lthfast.masked_sgd_([p], [g], [], [mask], 0.1, None, 0.0, 0.0, 0.0, False,
                                      False, False, None, None)
    else:
        torch.ops.lthfast.masked_adam_([p], [g], [torch.zeros_like(p)], [torch.zeros_like(p)],
                                       [], [torch.tensor(0.0)], [mask], 0.1, None, 0.9, 0.99,
                                       0.0, 1e-8, False, False, False, None, None)


@needs_c
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_packed_mask_errors_change_nothing(kind):
    p = torch.randn(3, 7)  # 21 entries: 3 bytes
    before = p.clone()
    cases = [
        (torch.zeros(2, dtype=torch.uint8), r"masks\[0\] \(packed uint8\) has 2 bytes but "
                                            r"params\[0\] has 21 entries and needs .* 3 bytes"),
        (torch.zeros(4, dtype=torch.uint8), r"has 4 bytes .* needs .* 3 bytes"),
        (torch.zeros(3, 1, dtype=torch.uint8), r"masks\[0\] is uint8 \(a packed mask\) of shape"),
        (torch.zeros(6, dtype=torch.uint8)[::2], r"masks\[0\] \(packed uint8\) has stride"),
        (torch.zeros(3, dtype=torch.int32), r"masks\[0\] has dtype Int; a mask is bool .* or "
                                            r"packed uint8"),
        (torch.zeros(3, 7), r"masks\[0\] has dtype Float"),
    ]
    for mask, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            _bad_call(kind, p, mask)
        assert torch.equal(p, before)


def test_reference_rejects_a_wrong_byte_count():
    p = torch.randn(21)
    with pytest.raises(ValueError, match="3 bytes"):
        ref.masked_sgd_([p], [torch.randn(21)], [], [torch.zeros(2, dtype=torch.uint8)], 0.1,
                        None, 0.0, 0.0, 0.0, False, False, False, None, None)


def test_optimizers_hold_packed_masks_shared_with_the_ticket():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 5))
    ticket = lthfast.Ticket.from_model(model, 0.7)
    ticket.apply(model)
    assert ticket._bindings.held() == []
    for cls in (lo.MaskedSGD, lo.MaskedAdam, lo.MaskedAdamW):
        opt = cls(model.parameters(), lr=0.01, ticket=ticket)
        for name in ticket.names():
            p = model.get_parameter(name)
            held = opt.packed_mask_of(p)
            assert held is ticket.packed(name)  # the same tensor: no copy
            assert torch.equal(opt.mask_of(p), ticket[name])
        assert all(m.dtype == torch.uint8 for m in opt._masks.values())
        assert opt.packed_mask_of(model[0].bias) is None and opt.mask_of(model[0].bias) is None


@pytest.mark.parametrize("cls", [lo.MaskedSGD, lo.MaskedAdamW])
def test_channels_last_model_with_ticket_matches_oracle(cls):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 6, 3)).to(memory_format=torch.channels_last)
    model = model.double()
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3)).double()
    twin.load_state_dict(model.state_dict())
    ticket = lthfast.Ticket.from_model(model, 0.6)
    ticket.apply(model)
    ticket.apply(twin)
    kw = dict(lr=0.05, momentum=0.9) if cls is lo.MaskedSGD else dict(lr=1e-2)
    ours = cls(model.parameters(), ticket=ticket, **kw)
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    held = ours.packed_mask_of(w)
    assert held.data_ptr() != ticket.packed("0.weight").data_ptr()  # a copy in memory order
    assert torch.equal(held, packed_in_memory_order(ticket["0.weight"], w))
    base = torch.optim.SGD if cls is lo.MaskedSGD else torch.optim.AdamW
    theirs = base(twin.parameters(), **kw)
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    for _ in range(4):
        for m, o in ((model, ours), (twin, theirs)):
            o.zero_grad()
            m(x).square().mean().backward()
        for n in ticket.names():
            twin.get_parameter(n).grad.mul_(ticket[n])
        ours.step()
        theirs.step()
        with torch.no_grad():
            for n in ticket.names():
                twin.get_parameter(n).mul_(ticket[n])
        for (n, a), b in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-13, msg=n)


def test_set_masks_with_bool_dict_stores_packed_and_keeps_no_bool_mask():
    p = torch.nn.Parameter(torch.randn(6, 5))
    m = torch.rand(6, 5) > 0.5
    opt = lo.MaskedAdam([p], lr=0.1, masks={p: m})
    held = opt.packed_mask_of(p)
    assert held.dtype == torch.uint8 and held.numel() == 4
    assert held.untyped_storage().data_ptr() != m.untyped_storage().data_ptr()
    assert torch.equal(opt.mask_of(p), m)


def test_zero_pruned_from_bits_any_layout_and_state_strides():
    """The optimizers zero a parameter's pruned entries and its per-entry state straight
    from the bits (memory order): channels_last parameters, state with the parameter's
    strides or others, and 'step' left alone."""
    from lthfast.optim._masks import zero_pruned
    g = torch.Generator().manual_seed(5)
    for fmt in (torch.contiguous_format, torch.channels_last):
        p = torch.randn(6, 5, 3, 3, generator=g).contiguous(memory_format=fmt)
        keep = torch.rand(p.shape, generator=g) < 0.5
        state = {"exp_avg": torch.randn(p.shape, generator=g).contiguous(memory_format=fmt),
                 "momentum_buffer": torch.randn(p.shape, generator=g),  # contiguous: other strides
                 "step": torch.tensor(3.0)}
        want = {k: v.clone().masked_fill_(~keep, 0) for k, v in state.items() if k != "step"}
        want_p = p.clone().masked_fill_(~keep, 0)
        zero_pruned(p, pack_memory_order(keep, p), state)
        assert torch.equal(p, want_p) and p.is_contiguous(memory_format=fmt)
        for k, v in want.items():
            assert torch.equal(state[k], v), k
        assert state["step"].item() == 3.0
