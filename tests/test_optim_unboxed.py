"""The masked optimizers' unboxed entries (lthfast._C._masked_sgd_ / _masked_adam_, used by
the planned step) and the ops' Autograd kernels: the same results as torch.ops, the same
errors (without a C++ backtrace), and torch.ops whenever __torch_function__ must see the
call (a tensor subclass, a torch function mode)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lthfast
import lthfast.optim as lo
from test_optim_api import _op_args

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

OPS = {"sgd": "masked_sgd_", "adam": "masked_adam_"}
VARIANTS = [dict(), dict(with_masks=False, lr_tensor=True),
            dict(scaler=True, dtype=torch.bfloat16), dict(dtype=torch.float64)]


def _clone(args):
    return copy.deepcopy(args)


def _saw(funcs, name):
    """Whether torch.ops.lthfast.<name> (the packet or an overload) is among `funcs`."""
    packet = getattr(torch.ops.lthfast, name)
    return any(f is packet or f is packet.default for f in funcs)


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, list):
            yield from (t for t in a if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_unboxed_entry_equals_torch_ops(kind, variant):
    args = _op_args(kind, **variant)
    a, b = _clone(args), _clone(args)
    getattr(torch.ops.lthfast, OPS[kind])(*a)
    assert getattr(lthfast._ops._C, "_" + OPS[kind])(*b) is True
    for x, y in zip(_tensors(a), _tensors(b)):
        assert torch.equal(x, y)


class Tagged(torch.Tensor):
    """A __torch_function__ subclass that records the torch.ops overloads it sees."""
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_unboxed_entry_declines_a_tensor_subclass_and_changes_nothing():
    args = _op_args("sgd")
    args[0][1] = args[0][1].as_subclass(Tagged)
    before = [t.clone() for t in _tensors(args)]
    assert lthfast._ops._C._masked_sgd_(*args) is False
    for x, y in zip(_tensors(args), before):
        assert torch.equal(x, y)


def test_subclass_params_step_through_torch_function():
    torch.manual_seed(0)
    plain = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    sub = [torch.Tensor._make_subclass(Tagged, p.detach().clone(), True) for p in plain]
    masks = [torch.rand(4, 3) > 0.5, None]
    grads = [torch.randn(4, 3) for _ in plain]
    a = lo.MaskedSGD(plain, lr=0.1, momentum=0.9, masks={plain[0]: masks[0]})
    b = lo.MaskedSGD(sub, lr=0.1, momentum=0.9, masks={sub[0]: masks[0]})
    for _ in range(3):  # the first step is the checked path, the next ones the plan's
        for ps in (plain, sub):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        Tagged.seen.clear()
        a.step()
        b.step()
        assert _saw(Tagged.seen, "masked_sgd_")
        for p, q in zip(plain, sub):
            assert torch.equal(p.detach(), torch.Tensor(q.detach()))


def _planned(opt_cls, **kw):
    """A one-parameter optimizer stepped into its planned path, with a fresh grad set."""
    p = torch.nn.Parameter(torch.randn(5))
    opt = opt_cls([p], lr=0.1, masks={p: torch.rand(5) > 0.5}, **kw)
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    assert opt._plan is not None
    p.grad = torch.randn(5)
    return opt


class _RecordFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _RecordDispatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_sees_the_planned_step():
    opt = _planned(lo.MaskedAdamW)
    with _RecordFunctions() as mode:
        opt.step()
    assert _saw(mode.seen, "masked_adam_")


def test_torch_dispatch_mode_sees_the_unboxed_call():
    """The entry calls the op through the dispatcher: dispatch modes see it as through
    torch.ops (and so do FakeTensor and functionalization)."""
    opt = _planned(lo.MaskedSGD, momentum=0.9)
    with _RecordDispatch() as mode:
        opt.step()
    assert torch.ops.lthfast.masked_sgd_.default in mode.seen


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_unboxed_entry_errors_are_clean_and_change_nothing(kind):
    args = _op_args(kind)
    args[1].pop()  # one grad fewer than params
    before = [t.clone() for t in _tensors(args)]
    with pytest.raises(RuntimeError) as info:
        getattr(lthfast._ops._C, "_" + OPS[kind])(*args)
    msg = str(info.value)
    assert "grads has" in msg and "Exception raised from" not in msg
    for x, y in zip(_tensors(args), before):
        assert torch.equal(x, y)


def test_bad_grad_on_the_planned_step_gives_the_ops_error():
    p = torch.nn.Parameter(torch.randn(4))
    opt = lo.MaskedSGD([p], lr=0.1, momentum=0.9)
    for _ in range(3):
        p.grad = torch.randn(4)
        opt.step()
    assert opt._plan is not None
    before = p.detach().clone()
    p.grad = torch.randn(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_autograd_kernel_steps_leaves_without_recording():
    """The ops have their own Autograd kernel (not torch's boxed fallback); with grad mode
    on and params that require grad, the op updates in place, records nothing and bumps
    no version (as torch's fused steps)."""
    for name in ("lthfast::masked_sgd_", "lthfast::masked_adam_"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd"), name
    p = torch.nn.Parameter(torch.ones(3))
    g = torch.ones(3)
    torch.ops.lthfast.masked_sgd_([p], [g], [], [None], 0.5, None, 0.0, 0.0, 0.0, False, False,
                                  False, None, None)
    assert torch.equal(p.detach(), torch.full((3,), 0.5))
    assert p.grad_fn is None and p.requires_grad and p._version == 0
