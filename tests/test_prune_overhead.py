"""Correctness of lthfast.prune's low-overhead paths (no timing here; see
bench/host_overhead_prune.py for the numbers).

- ``validate.has_attribute`` is ``hasattr`` without nn.Module's AttributeError;
- ``base._install_direct`` does what register_parameter / register_buffer / setattr /
  apply_mask do, on the module's dicts, only where that is exactly equivalent;
- ``global_unstructured`` takes one snapshot per module (none per tensor) and uses
  the hook ``_targets`` found;
- ``_yield_masks`` enters no_grad only where an input requires grad.
"""
from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast
import lthfast.prune as lprune
from lthfast.magnitude import iter_global_magnitude_masks
from lthfast.prune import base, validate

from _prune_helpers import _kernel_or_reference, assert_same_module, make_net, pairs_of  # noqa: F401


def _state(module):
    """Everything pruning may touch, by identity where identity matters."""
    return (list(module._parameters.items()), list(module._buffers.items()),
            set(module._non_persistent_buffers_set), list(module._forward_pre_hooks.items()),
            {k: v for k, v in module.__dict__.items() if isinstance(v, torch.Tensor)})


def _rounds(prune, net, rounds=3, amount=0.3):
    for _ in range(rounds):
        prune.global_unstructured(pairs_of(net), pruning_method=prune.L1Unstructured, amount=amount)


# ------------------------------------------------------------ has_attribute
class _Prop(nn.Linear):
    @property
    def weight_orig(self):  # a property that fails: hasattr is False
        raise AttributeError("no")

    @property
    def weight_mask(self):
        return 1


class _Lookup(nn.Linear):
    def __getattr__(self, name):
        if name == "magic":
            return 1
        return super().__getattr__(name)


@pytest.mark.parametrize("cls", [nn.Linear, _Prop, _Lookup])
@pytest.mark.parametrize("name", ["weight", "bias", "weight_orig", "weight_mask", "magic", "inst",
                                  "buf", "sub", "training", "forward", "nothing", "__dict__"])
def test_has_attribute_is_hasattr(cls, name):
    m = cls(2, 2)
    m.inst = 3
    m.register_buffer("buf", torch.zeros(1))
    m.sub = nn.ReLU()
    assert validate.has_attribute(m, name) == hasattr(m, name)
    if hasattr(m, name):
        got, want = validate.get_attribute(m, name), getattr(m, name)
        assert got is want or (callable(want) and got == want)
    else:
        with pytest.raises(AttributeError):
            validate.get_attribute(m, name)


# ------------------------------------------------------ direct installation
class _OwnRegisterBuffer(nn.Linear):
    """Overrides a method the direct path replaces: it must not be bypassed."""
    calls = 0

    def register_buffer(self, name, tensor, persistent=True):
        type(self).calls += 1
        super().register_buffer(name, tensor, persistent)


class _OwnSetattr(nn.Linear):
    calls = 0

    def __setattr__(self, name, value):
        type(self).calls += 1
        super().__setattr__(name, value)


@pytest.mark.parametrize("cls", [_OwnRegisterBuffer, _OwnSetattr])
def test_overridden_module_methods_are_called(cls):
    torch.manual_seed(0)
    m = cls(4, 3)
    cls.calls = 0
    lprune.global_unstructured([(m, "weight")], pruning_method=lprune.L1Unstructured, amount=0.5)
    first = cls.calls
    assert first > 0
    lprune.global_unstructured([(m, "weight")], pruning_method=lprune.L1Unstructured, amount=0.5)
    assert cls.calls > first
    assert int(m.weight_mask.sum()) == 3


def test_same_state_as_torch_methods_over_rounds():
    """Direct path (plain modules) vs torch's methods (a subclass that overrides
    register_buffer, so the direct path is off): identical modules, round after round,
    for global_unstructured and l1_unstructured."""
    class Slow(nn.Linear):
        def register_buffer(self, name, tensor, persistent=True):
            super().register_buffer(name, tensor, persistent)

    mods = []
    for cls in (nn.Linear, Slow):
        torch.manual_seed(1)
        a, b = cls(6, 5), cls(5, 4)
        with torch.no_grad():
            for p in (*a.parameters(), *b.parameters()):
                p.copy_(torch.randn_like(p))
        pairs = [(a, "weight"), (b, "weight"), (a, "bias")]
        for _ in range(3):
            lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.25)
        lprune.l1_unstructured(b, "bias", 2)
        lprune.l1_unstructured(b, "bias", 1)
        mods.append((a, b))
    for x, y in zip(mods[0], mods[1]):
        assert [k for k, _ in x.named_parameters()] == [k for k, _ in y.named_parameters()]
        assert [k for k, _ in x.named_buffers()] == [k for k, _ in y.named_buffers()]
        assert list(x.state_dict()) == list(y.state_dict())
        for k, v in x.state_dict().items():
            assert torch.equal(v, y.state_dict()[k]), k
        assert torch.equal(x.weight, y.weight) and x.weight.grad_fn is not None
        assert [type(h).__name__ for h in x._forward_pre_hooks.values()] == \
               [type(h).__name__ for h in y._forward_pre_hooks.values()]
        assert "weight" not in x._parameters and "weight" in x.__dict__


def test_pruned_tensor_is_a_non_leaf_of_orig():
    m = nn.Linear(4, 3)
    lprune.global_unstructured([(m, "weight")], pruning_method=lprune.L1Unstructured, amount=0.5)
    assert m.weight.grad_fn is not None and m.weight_orig.is_leaf
    m.weight.sum().backward()
    assert torch.equal(m.weight_orig.grad, m.weight_mask)


def test_global_registration_hooks_are_called_as_torch():
    """torch's module-level registration hooks see the same registrations (and may
    replace the tensor) with lthfast as with torch.nn.utils.prune."""
    seen = {}
    for prune in (tprune, lprune):
        calls = seen[prune.__name__] = []
        h1 = nn.modules.module.register_module_buffer_registration_hook(
            lambda mod, name, t, calls=calls: calls.append(("buffer", name, t.dtype)))
        h2 = nn.modules.module.register_module_parameter_registration_hook(
            lambda mod, name, p, calls=calls: calls.append(("param", name)))
        try:
            net = make_net()
            _rounds(prune, net, rounds=2)
        finally:
            h1.remove()
            h2.remove()
    assert seen["lthfast.prune"] == seen["torch.nn.utils.prune"]
    assert seen["lthfast.prune"]


def test_non_persistent_mask_becomes_persistent_as_torch():
    nets = []
    for prune in (tprune, lprune):
        net = make_net()
        prune.global_unstructured(pairs_of(net), pruning_method=prune.L1Unstructured, amount=0.3)
        net[0]._non_persistent_buffers_set.add("weight_mask")
        prune.global_unstructured(pairs_of(net), pruning_method=prune.L1Unstructured, amount=0.3)
        nets.append(net)
    assert "weight_mask" not in nets[1][0]._non_persistent_buffers_set
    assert_same_module(*nets)


def test_torch_pruned_module_then_lthfast_matches_torch():
    nets = []
    for second in (tprune, lprune):
        net = make_net()
        tprune.global_unstructured(pairs_of(net), pruning_method=tprune.L1Unstructured, amount=0.3)
        tprune.l1_unstructured(net[3], "weight", 2)
        second.global_unstructured(pairs_of(net), pruning_method=second.L1Unstructured, amount=0.3)
        nets.append(net)
    assert_same_module(*nets)


def test_install_direct_refuses_and_changes_nothing():
    """Where it does not apply, _install_direct returns False with the module untouched."""
    m = nn.Linear(3, 2)
    hook = lprune.CustomFromMask(torch.ones(2, 3))
    hook._tensor_name = "weight"
    before = _state(m)
    h = nn.modules.module.register_module_buffer_registration_hook(lambda *a: None)
    try:
        assert base._install_direct(m, "weight", None, hook, torch.ones(2, 3)) is False
    finally:
        h.remove()
    m.weight_orig = nn.Parameter(torch.zeros(1))  # taken: torch's register_parameter refuses
    before = _state(m)
    assert base._install_direct(m, "weight", None, hook, torch.ones(2, 3)) is False
    assert _state(m) == before
    with pytest.raises(KeyError):
        lprune.global_unstructured([(m, "weight")], pruning_method=lprune.L1Unstructured, amount=1)
    assert _state(m) == before


# ------------------------------------------------ one snapshot per module
class _FailsOnHookRegistration:
    """Mixed into a module class: registering a forward pre-hook raises while `fail`."""
    fail = False

    def register_forward_pre_hook(self, hook, **kw):
        if self.fail:
            raise RuntimeError("boom")
        return super().register_forward_pre_hook(hook, **kw)


class _FailingHookRegistration(_FailsOnHookRegistration, nn.Linear):
    pass


class _FailingConv(_FailsOnHookRegistration, nn.Conv2d):
    pass


@pytest.mark.parametrize("pruned_before", [0, 1, 2])
def test_failure_midway_restores_every_module(pruned_before):
    """A failure while installing the 3rd of 4 tensors (no per-tensor snapshot on the
    kernel path) leaves all modules exactly as they were: same parameter, buffer and
    hook objects, containers with the same methods."""
    torch.manual_seed(0)
    mods = [_FailingHookRegistration(5, 4) for _ in range(3)]
    pairs = [(mods[0], "weight"), (mods[1], "weight"), (mods[2], "weight"), (mods[2], "bias")]
    for _ in range(pruned_before):
        lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.2)
    before = [_state(m) for m in mods]
    methods = [[list(h) if isinstance(h, tprune.PruningContainer) else h
                for h in m._forward_pre_hooks.values()] for m in mods]
    mods[2].fail = True
    with pytest.raises(RuntimeError, match="boom"):
        lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.2)
    mods[2].fail = False
    assert [_state(m) for m in mods] == before
    assert methods == [[list(h) if isinstance(h, tprune.PruningContainer) else h
                        for h in m._forward_pre_hooks.values()] for m in mods]
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.2)


_CUDA = pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and lthfast._ops.available()
                            and lthfast.build_info().get("cuda")), reason="no CUDA GPU or build")])


@pytest.mark.parametrize("device", ["cpu", _CUDA])
@pytest.mark.parametrize("channels_last", [False, True])
def test_failure_midway_rebuilds_released_masks_exactly(channels_last, device):
    """Pruning again, each replaced mask and pruned tensor is let go as the call goes
    (the snapshot keeps 1 bit per entry): when nothing else holds them and a later
    tensor fails, the rollback rebuilds them with the same values, dtype, shape and
    strides, and the pruned tensor as orig * mask."""
    torch.manual_seed(1)
    mods = [_FailingHookRegistration(6, 5) for _ in range(2)] + [_FailingConv(3, 4, 3)]
    for m in mods:
        m.to(device)
    if channels_last:
        mods[2].weight.data = mods[2].weight.data.contiguous(memory_format=torch.channels_last)
    pairs = [(mods[0], "weight"), (mods[1], "weight"), (mods[2], "weight")]
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    values = [(m.weight_mask.clone(), m.weight_mask.stride(), m.weight.detach().clone(),
               m.weight_orig) for m in mods]
    ref = copy.deepcopy(mods)  # copies: the originals stay held by the modules only
    released = [weakref.ref(m.weight_mask) for m in mods] + [weakref.ref(m.weight) for m in mods]
    mods[2].fail = True
    with pytest.raises(RuntimeError, match="boom"):
        lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    mods[2].fail = False
    # module 0's old pruned tensor was let go (its memory holds the new one); its old
    # mask was either let go or rewritten in place (written back now)
    assert released[3]() is None, "module 0's old pruned tensor was held"
    assert released[0]() is None or released[0]() is mods[0].weight_mask
    for m, (mask, stride, weight, orig) in zip(mods, values):
        assert m.weight_mask.dtype == mask.dtype and m.weight_mask.stride() == stride
        assert torch.equal(m.weight_mask, mask)
        assert torch.equal(m.weight.detach(), weight) and m.weight_orig is orig
        assert m.weight.grad_fn is not None  # orig * mask, as the hook computes it
    # and the rolled-back modules prune again as copies of the state before the failure
    lprune.global_unstructured([(r, "weight") for r in ref], pruning_method=lprune.L1Unstructured,
                               amount=0.3)
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    for m, r in zip(mods, ref):
        assert torch.equal(m.weight_mask, r.weight_mask)


def test_several_names_per_module_share_one_snapshot():
    net = make_net()
    ref = make_net()
    for prune, n in ((tprune, ref), (lprune, net)):
        pairs = [(n[0], "weight"), (n[3], "weight"), (n[0], "bias"), (n[3], "bias")]
        for _ in range(2):
            prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.4)
    assert_same_module(ref, net)


def test_empty_importance_dict_subclass_is_consulted():
    class Scores(dict):
        def get(self, key, default=None):
            return torch.arange(float(key[0].weight.numel())).reshape(key[0].weight.shape)

    m = nn.Linear(3, 2)
    lprune.global_unstructured([(m, "weight")], pruning_method=lprune.L1Unstructured,
                               importance_scores=Scores(), amount=2)
    assert m.weight_mask.view(-1).tolist() == [0, 0, 1, 1, 1, 1]


# ------------------------------------------------------------ grad mode
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_masks_never_require_grad(dtype):
    ws = [torch.randn(4, 3, requires_grad=True), torch.randn(5)]
    masks = [torch.ones(4, 3, requires_grad=True), torch.ones(5)]
    for ms in (None, masks):
        got = list(iter_global_magnitude_masks(ws, 0.5, masks=ms, dtype=dtype))
        assert all(not g.requires_grad and g.dtype == dtype for g in got)
        want = lthfast.global_magnitude_masks([w.detach() for w in ws], 0.5,
                                              masks=None if ms is None else [m.detach() for m in ms])
        assert all(torch.equal(g.bool(), w) for g, w in zip(got, want))
        assert torch.is_grad_enabled()
