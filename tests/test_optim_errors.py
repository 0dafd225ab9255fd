"""Bad input to the masked optimizers: a clear error, and nothing changed."""
import pytest
import torch

import lthfast
import lthfast.optim as lo

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")

OPTS = [lo.MaskedSGD, lo.MaskedAdam, lo.MaskedAdamW]


@pytest.mark.parametrize("cls", OPTS)
def test_mask_shape_mismatch_names_the_parameter_and_changes_nothing(cls):
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(4,\) but the parameter has shape \(5,\)"):
        cls([a, b], lr=0.1, masks={a: torch.zeros(4, 3, dtype=torch.bool), b: torch.ones(4, dtype=torch.bool)})
    assert torch.equal(a.detach(), before)  # a's mask was valid, but nothing was applied


@pytest.mark.parametrize("cls", OPTS)
def test_non_bool_mask(cls):
    a = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(TypeError, match="must be bool"):
        cls([a], lr=0.1, masks={a: torch.ones(4)})
    with pytest.raises(TypeError, match="bool tensor"):
        cls([a], lr=0.1, masks={a: [True] * 4})


def test_mask_key_not_a_parameter():
    a = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        lo.MaskedSGD([a], lr=0.1, masks={torch.randn(4): torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="dict"):
        lo.MaskedSGD([a], lr=0.1, masks=[torch.ones(4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="not both"):
        lo.MaskedSGD([a], lr=0.1, masks={}, ticket=object())
    with pytest.raises(TypeError, match="mask_for"):
        lo.MaskedSGD([a], lr=0.1, ticket=object())


@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("kind", ["complex", "integer", "sparse"])
def test_unsupported_params(cls, kind):
    # built here, not in the parametrize list: no tensor outlives the test
    param = {"complex": lambda: torch.zeros(3, dtype=torch.complex64),
             "integer": lambda: torch.zeros(3, dtype=torch.int64),
             "sparse": lambda: torch.zeros(3, 3).to_sparse()}[kind]()
    with pytest.raises(TypeError, match=kind):
        cls([param], lr=0.1)


def test_non_dense_param():
    base = torch.randn(4, 6)
    with pytest.raises(ValueError, match="not dense"):
        lo.MaskedSGD([base[:, ::2]], lr=0.1)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (dict(lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1"),
    (dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    (dict(lr=0.1, differentiable=True), "differentiable"),
])
def test_sgd_hyper_parameters(kwargs, msg):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=msg):
        lo.MaskedSGD([p], **kwargs)
    try:  # the same message as torch.optim.SGD
        torch.optim.SGD([p], **kwargs)
    except ValueError as e:
        assert msg.split(":")[0] in str(e) or "differentiable" in msg
    else:
        assert "differentiable" in msg


@pytest.mark.parametrize("cls", [lo.MaskedAdam, lo.MaskedAdamW])
@pytest.mark.parametrize("kwargs,msg", [
    (dict(lr=-1e-3), "Invalid learning rate"),
    (dict(eps=-1.0), "Invalid epsilon value"),
    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (dict(capturable=True), "capturable"),
])
def test_adam_hyper_parameters(cls, kwargs, msg):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=msg):
        cls([p], **kwargs)


def test_bad_grad_changes_nothing():
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(5))
    opt = lo.MaskedAdam([a, b], lr=0.1)
    a.grad = torch.randn(4)
    b.grad = torch.randn(5).to_sparse()
    before = a.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(a.detach(), before) and len(opt.state) == 0


@pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
def test_op_rejects_mismatched_state_and_changes_nothing():
    p = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(p)
    m = torch.zeros(4, 3, 2, 2)  # contiguous: other strides than p
    v = torch.zeros_like(p)
    step = torch.tensor(0.0)
    before = p.clone()
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] has strides"):
        torch.ops.lthfast.masked_adam_([p], [g], [m], [v], [], [step], [None], 0.1, None, 0.9,
                                       0.99, 0.0, 1e-8, False, False, False, None, None)
    with pytest.raises(RuntimeError, match=r"masks\[0\] has dtype Float"):
        torch.ops.lthfast.masked_sgd_([p], [g], [], [torch.ones_like(p)], 0.1, None, 0.0, 0.0,
                                      0.0, False, False, False, None, None)
    with pytest.raises(RuntimeError, match="momentum_buffers"):
        torch.ops.lthfast.masked_sgd_([p], [g], [], [None], 0.1, None, 0.9, 0.0, 0.0, False,
                                      False, False, None, None)
    assert torch.equal(p, before) and float(step) == 0.0
    # a grad in another layout is fine (copied into the param's layout)
    torch.ops.lthfast.masked_sgd_([p], [g.contiguous()], [], [None], 0.1, None, 0.0, 0.0, 0.0,
                                  False, False, False, None, None)
    torch.testing.assert_close(p, before - 0.1 * g)


def test_mask_that_cannot_be_moved_is_a_clear_error():
    # the only device here is the CPU: a meta mask cannot be copied, which must be a clear error
    a = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="meta device"):
        lo.MaskedSGD([a], lr=0.1, masks={a: torch.ones(4, dtype=torch.bool, device="meta")})


def test_reference_fallback_without_the_extension(monkeypatch):
    """LTHFAST_REFERENCE=1 and no lthfast._C: the pure-PyTorch reference runs the step."""
    import lthfast._ops as ops
    params, grads = [torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64)) for _ in range(2)], \
        [torch.randn(6, 5, dtype=torch.float64) for _ in range(2)]
    mask = torch.rand(6, 5) > 0.5
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    a = lo.MaskedAdamW(params, lr=0.01, amsgrad=True, masks={params[0]: mask})
    for p, g in zip(params, grads):
        p.grad = g
    a.step()
    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    b = lo.MaskedAdamW(twin, lr=0.01, amsgrad=True, masks={twin[0]: mask})
    for p, g in zip(twin, grads):
        p.grad = g
    b.step()
    for p, q in zip(params, twin):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    monkeypatch.delenv("LTHFAST_REFERENCE")
    with pytest.raises(RuntimeError, match="LTHFAST_REFERENCE=1"):
        b.step()
