"""Fused masked optimizers on CUDA: the same trajectories as on CPU (vs torch.optim
+ masking), GradScaler skip without host sync, and CPU masks moved to the GPU.
Skips cleanly without a GPU or without the CUDA build."""
import pytest
import torch

import lthfast
import lthfast.optim as lo

from _optim_cases import (ADAM_OPTIONS, SGD_OPTIONS, assert_pruned_zero, clone_params,
                          make_params, masked_optimizer, opt_id, oracle_step, random_grads,
                          torch_optimizer)


def _cuda_kernels_built():
    return lthfast._ops.available() and bool(lthfast.build_info().get("cuda"))


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _cuda_kernels_built(), reason="lthfast._C built without CUDA kernels"),
]

DEV = "cuda"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", SGD_OPTIONS + ADAM_OPTIONS, ids=opt_id)
def test_cuda_trajectory_matches_torch(case, dtype):
    params, masks = make_params(device=DEV, dtype=dtype)
    masks_list = [masks.get(p) for p in params]
    twin = clone_params(params)
    ours = masked_optimizer(case, params, masks)
    with torch.no_grad():
        for t, m in zip(twin, masks_list):
            if m is not None:
                t.mul_(m)
    theirs = torch_optimizer(case, twin)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for step in range(8):
        grads = random_grads(params, step, poison_masks=masks_list)
        for p, gr in zip(params, grads):
            p.grad = gr
        ours.step()
        oracle_step(theirs, twin, masks_list, grads)
        for i, (p, t) in enumerate(zip(params, twin)):
            torch.testing.assert_close(p.detach(), t.detach(), **tol,
                                       msg=lambda m: f"step {step} param {i}: {m}")
    assert_pruned_zero(ours, params, masks_list)
    for p in params:
        if "step" in ours.state[p]:
            st = ours.state[p]["step"]
            assert st.device.type == "cuda" and st.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision_equals_cpu_kernel(dtype):
    """Same fp32 math on both devices: CPU and CUDA results agree to one ulp."""
    cpu_params, cpu_masks = make_params(dtype=dtype, seed=4)
    gpu_params = [torch.nn.Parameter(p.detach().to(DEV)) for p in cpu_params]
    gpu_masks = {g: cpu_masks[c] for c, g in zip(cpu_params, gpu_params) if c in cpu_masks}
    a = lo.MaskedAdamW(cpu_params, lr=1e-2, amsgrad=True, masks=cpu_masks)
    b = lo.MaskedAdamW(gpu_params, lr=1e-2, amsgrad=True, masks=gpu_masks)  # CPU masks: moved
    for step in range(4):
        for c, g, gr in zip(cpu_params, gpu_params, random_grads(cpu_params, step)):
            c.grad, g.grad = gr, gr.to(DEV)
        a.step()
        b.step()
    ulp = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
    for c, g in zip(cpu_params, gpu_params):
        torch.testing.assert_close(g.detach().cpu().float(), c.detach().float(), rtol=2 * ulp,
                                   atol=1e-3)
        assert b.mask_of(g) is None or b.mask_of(g).device.type == "cuda"


def test_cuda_grad_scaler_skip_keeps_step_on_device():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).to(DEV)
    mask = (torch.rand(4, 16) > 0.5).to(DEV)
    opt = lo.MaskedAdam(model.parameters(), lr=1e-2, masks={model.weight: mask})
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(8, 16, device=DEV)
    for s in range(3):
        opt.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        if s == 1:
            model.bias.grad[0] = float("nan")
            before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        if s == 1:
            for p, q in zip(model.parameters(), before):
                assert torch.equal(p.detach(), q)
    assert float(opt.state[model.weight]["step"]) == 2.0
    assert bool((model.weight.detach()[~mask] == 0).all())


def _to_dev(x):
    """x on the GPU with the same strides (lists element by element)."""
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=DEV).copy_(x)
    if isinstance(x, list):
        return [_to_dev(y) for y in x]
    return x


def test_cuda_opcheck():
    from test_optim_api import _op_args

    for kind, op in (("sgd", torch.ops.lthfast.masked_sgd_), ("adam", torch.ops.lthfast.masked_adam_)):
        for variant in (dict(), dict(scaler=True, dtype=torch.bfloat16, lr_tensor=True)):
            torch.library.opcheck(op, tuple(_to_dev(a) for a in _op_args(kind, **variant)))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cuda_unboxed_entry_equals_torch_ops(kind):
    """lthfast._C's unboxed entry (the planned step's) gives what torch.ops gives."""
    from test_optim_api import _op_args

    name = f"masked_{kind}_"
    for variant in (dict(), dict(scaler=True, dtype=torch.bfloat16, lr_tensor=True)):
        args = _op_args(kind, **variant)
        a = tuple(_to_dev(x) for x in args)
        b = tuple(_to_dev(x) for x in args)
        getattr(torch.ops.lthfast, name)(*a)
        assert getattr(lthfast._ops._C, "_" + name)(*b) is True
        for x, y in zip(a, b):
            for u, v in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y]):
                if isinstance(u, torch.Tensor):
                    assert torch.equal(u, v)


# ---------------------------------------------------------------- packed masks

def _packed_run(kind, v, p, states, mask, grads, device):
    from test_optim_packed import _adam_call, _sgd_call
    op = getattr(torch.ops.lthfast, f"masked_{kind}_")
    step = torch.zeros((), dtype=torch.float32, device=device) if device != "cpu" else torch.tensor(0.0)
    for gr in grads:
        if kind == "sgd":
            _sgd_call(op, p, states, mask, gr, v)
        else:
            _adam_call(op, p, states, mask, gr, step, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("kind,v", [("sgd", dict(momentum=0.9, first=False, nesterov=True)),
                                    ("adam", dict(amsgrad=True, decoupled=True))], ids=str)
def test_cuda_packed_and_bool_masks_identical_and_match_cpu(kind, v, dtype):
    from test_optim_packed import SHAPES, _setup, packed_in_memory_order
    n_state = 1 if kind == "sgd" else 3
    for shape, cl in SHAPES:
        p, states, mask, grads = _setup(shape, cl, dtype, n_state)
        packed = packed_in_memory_order(mask, p)
        bool_mask = torch.empty_like(p, dtype=torch.bool).copy_(mask)
        cpu_p, cpu_s = p.clone(), [s.clone() for s in states]
        _packed_run(kind, v, cpu_p, cpu_s, packed, grads, "cpu")
        runs = []
        for m in (bool_mask, packed):
            q = p.clone().to(DEV)  # .to keeps channels_last strides
            sq = [s.clone().to(DEV) for s in states]
            _packed_run(kind, v, q, sq, m.to(DEV), [g.to(DEV) for g in grads], DEV)
            runs.append((q, sq))
        (a, sa), (b, sb) = runs
        assert b.stride() == p.stride() or p.numel() <= 1
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb))
        tol = {torch.float64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=1e-5, atol=1e-6),
               torch.float16: dict(rtol=2e-3, atol=1e-3), torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}
        torch.testing.assert_close(b.cpu(), cpu_p, **tol[dtype], msg=f"{shape} cl={cl}")


def test_cuda_opcheck_packed_masks():
    from test_optim_packed import _op_args_packed

    for kind, op in (("sgd", torch.ops.lthfast.masked_sgd_), ("adam", torch.ops.lthfast.masked_adam_)):
        for variant in (dict(), dict(scaler=True, dtype=torch.bfloat16, lr_tensor=True)):
            torch.library.opcheck(op, tuple(_to_dev(a) for a in _op_args_packed(kind, **variant)))


def test_cuda_packed_mask_on_cpu_is_a_clear_error():
    p = torch.randn(3, 7, device=DEV)
    before = p.clone()
    with pytest.raises(RuntimeError, match=r"masks\[0\] is on cpu but params\[0\] is on cuda"):
        torch.ops.lthfast.masked_sgd_([p], [torch.randn_like(p)], [],
                                      [torch.zeros(3, dtype=torch.uint8)], 0.1, None, 0.0, 0.0,
                                      0.0, False, False, False, None, None)
    assert torch.equal(p, before)


def test_cuda_model_with_cpu_ticket_shares_the_bound_packed_copy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4))
    ticket = lthfast.Ticket.from_model(model, 0.6)  # on the CPU
    model.to(DEV)
    ticket.apply(model)
    opt = lo.MaskedSGD(model.parameters(), lr=0.1, momentum=0.9, ticket=ticket)
    for n in ticket.names():
        p = model.get_parameter(n)
        held = opt.packed_mask_of(p)
        assert held.device.type == "cuda" and held is ticket.packed_for(p)
        assert torch.equal(ticket.mask_for(p).cpu(), ticket[n])
    assert len(ticket._bindings.held()) == len(ticket)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cuda_model_moved_after_the_optimizer_was_built(kind):
    """torch.optim allows `model.cuda()` between building the optimizer and its first step;
    so do the masked optimizers: the masks follow their parameters to the GPU, and the
    trajectory is the one of an optimizer built on the GPU."""
    torch.manual_seed(0)

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                                   torch.nn.Linear(8 * 6 * 6, 4))

    def make_opt(model, ticket):
        if kind == "sgd":
            return lo.MaskedSGD(model.parameters(), lr=0.1, momentum=0.9, ticket=ticket)
        return lo.MaskedAdamW(model.parameters(), lr=0.01, ticket=ticket)

    moved, ref = build(), build().to(DEV)
    ticket = lthfast.Ticket.from_model(moved, 0.6)
    ticket.apply(moved)
    opt = make_opt(moved, ticket)  # built on the CPU
    moved.to(DEV)
    ref_ticket = lthfast.Ticket.from_model(ref, 0.6)
    ref_ticket.apply(ref)
    ref_opt = make_opt(ref, ref_ticket)
    x = torch.randn(5, 3, 8, 8, device=DEV)
    for _ in range(3):
        for model, o in ((moved, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for (n, a), b in zip(moved.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    for n in ticket.names():
        p = moved.get_parameter(n)
        assert opt.packed_mask_of(p).device.type == "cuda"
        assert not p[~opt.mask_of(p)].any()
