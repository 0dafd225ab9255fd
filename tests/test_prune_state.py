"""lthfast.prune against torch.nn.utils.prune: the reparameterised module, hooks,
remove, pickling and state_dicts across the libraries; failed prunes that leave
the module unchanged; user compute_mask honoured (the kernel only for stock L1)."""
from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast
import lthfast.prune as lprune

from _prune_helpers import _kernel_or_reference  # noqa: F401 (autouse fixture)
from _prune_helpers import LIBS, make_net, assert_same_module, run_both, pairs_of


# --------------------------------------------- module state, hooks, remove
@LIBS
def test_reparameterization_layout(prune):
    m = nn.Linear(4, 3)
    weight = m.weight
    hook = prune.L1Unstructured.apply(m, "weight", 0.5)
    assert m.weight_orig is weight and isinstance(m.weight_orig, nn.Parameter)
    assert "weight" not in m._parameters and isinstance(m.weight, torch.Tensor)
    assert list(m.state_dict()) == ["bias", "weight_orig", "weight_mask"]
    assert m.weight_mask.dtype == weight.dtype
    assert list(m._forward_pre_hooks.values()) == [hook]
    assert isinstance(hook, tprune.BasePruningMethod) and hook._tensor_name == "weight"
    with torch.no_grad():
        m.weight_orig.add_(1.0)
    m(torch.randn(1, 4))  # the pre-hook recomputes weight from orig and mask
    assert torch.equal(m.weight, m.weight_orig * m.weight_mask)


@LIBS
def test_remove_keeps_parameter_object(prune):
    m = nn.Linear(4, 3)
    prune.l1_unstructured(m, "weight", 0.5)
    orig = m.weight_orig
    masked = (m.weight_orig * m.weight_mask).detach().clone()
    prune.remove(m, "weight")
    assert m.weight is orig and torch.equal(m.weight, masked)
    assert list(m.state_dict()) == ["bias", "weight"] and not m._forward_pre_hooks
    assert not prune.is_pruned(m)
    with pytest.raises(ValueError):
        prune.remove(m, "weight")


def test_remove_and_is_pruned_interoperate():
    for pruner, remover in [(tprune, lprune), (lprune, tprune)]:
        net = make_net()
        pruner.l1_unstructured(net[3], "weight", 0.5)
        pruner.l1_unstructured(net[3], "weight", 0.5)
        assert remover.is_pruned(net) and pruner.is_pruned(net)
        remover.remove(net[3], "weight")
        assert not remover.is_pruned(net) and list(net[3].state_dict()) == ["bias", "weight"]


def test_mixing_torch_and_lthfast_matches_pure_torch():
    def mixed(p, n):
        first, second = (tprune, lprune) if p is lprune else (tprune, tprune)
        first.l1_unstructured(n[3], "weight", 0.3)
        second.random_unstructured(n[3], "weight", 0.3)
        second.ln_structured(n[0], "weight", 1, 2, 0)
        first.l1_unstructured(n[0], "weight", 0.3)
    run_both(mixed)


@LIBS
def test_pickle_roundtrip(prune):
    net = make_net()
    prune.l1_unstructured(net[0], "weight", 0.3)
    prune.random_unstructured(net[0], "weight", 0.3, **({"generator": torch.Generator()}
                                                        if prune is lprune else {}))
    prune.global_unstructured(pairs_of(net), prune.L1Unstructured, amount=0.2)
    x = torch.randn(2, 3, 4, 4)
    net.eval()
    for loaded in (pickle.loads(pickle.dumps(net)), _torch_roundtrip(net)):
        assert torch.equal(loaded(x), net(x))
        assert_same_module(loaded, net)
        assert prune.is_pruned(loaded)
        prune.remove(loaded[0], "weight")


def _torch_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_state_dict_loads_across_libraries():
    tnet, lnet = make_net(), make_net(seed=1)
    tprune.l1_unstructured(tnet[3], "weight", 0.5)
    lprune.identity(lnet[3], "weight")
    lnet.load_state_dict(tnet.state_dict())
    lnet(torch.randn(1, 3, 4, 4))
    assert torch.equal(lnet[3].weight, tnet[3].weight)


# ------------------------------------------------------------- failures
def _state(module):
    return (list(module._parameters.items()), list(module._buffers.items()),
            list(module._forward_pre_hooks.items()), list(module.state_dict().items()),
            module.__dict__.get("weight"), module.__dict__.get("running_mean"),
            [len(h) for h in module._forward_pre_hooks.values() if isinstance(h, tprune.PruningContainer)])


def _assert_unchanged(before, module):
    after = _state(module)
    for b, a in zip(before[:3], after[:3]):
        assert [k for k, _ in b] == [k for k, _ in a]
        assert all(x is y for (_, x), (_, y) in zip(b, a))
    assert [k for k, _ in before[3]] == [k for k, _ in after[3]]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(before[3], after[3]))
    assert before[4] is after[4] and before[5] is after[5] and before[6] == after[6]


FAILURES = {
    "negative_amount": (ValueError, lambda p, m: p.l1_unstructured(m, "weight", -1)),
    "float_above_one": (ValueError, lambda p, m: p.random_unstructured(m, "weight", 1.5)),
    "count_too_big": (ValueError, lambda p, m: p.l1_unstructured(m, "weight", 1000)),
    "nan_amount": (ValueError, lambda p, m: p.l1_unstructured(m, "weight", float("nan"))),
    "amount_wrong_type": (TypeError, lambda p, m: p.l1_unstructured(m, "weight", "half")),
    "missing_name": (AttributeError, lambda p, m: p.l1_unstructured(m, "nope", 1)),
    "buffer": (TypeError, lambda p, m: p.l1_unstructured(m, "running_mean", 1)),
    "dim_out_of_range": (IndexError, lambda p, m: p.ln_structured(m, "weight", 1, 2, 4)),
    "negative_dim_out_of_range": (IndexError, lambda p, m: p.random_structured(m, "weight", 1, -5)),
    "structured_1d": (ValueError, lambda p, m: p.ln_structured(m, "bias", 1, 2, 0)),
    "channel_count_too_big": (ValueError, lambda p, m: p.random_structured(m, "weight", 9, 0)),
    "importance_shape": (AssertionError, lambda p, m: p.l1_unstructured(
        m, "weight", 1, importance_scores=torch.ones(3))),
    "custom_mask_shape": (AssertionError, lambda p, m: p.custom_from_mask(m, "weight", torch.ones(2))),
}


def _apply_unbroadcastable_mask(p, m):
    class BadMask(p.BasePruningMethod):  # fails late: when the mask is multiplied in
        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            return torch.ones(5)
    BadMask.apply(m, "weight")


FAILURES["mask_fails_to_apply"] = (RuntimeError, _apply_unbroadcastable_mask)


def _conv_with_buffer():
    torch.manual_seed(0)
    m = nn.Conv2d(2, 4, 3)
    m.register_buffer("running_mean", torch.zeros(4))
    return m


@pytest.mark.parametrize("case", FAILURES)
@pytest.mark.parametrize("already_pruned", [False, True], ids=["first", "again"])
def test_failed_prune_same_error_and_module_unchanged(case, already_pruned):
    exc, call = FAILURES[case]
    for prune in (tprune, lprune):
        if prune is tprune and already_pruned and case == "structured_1d":
            continue  # torch silently prunes the whole bias (a documented difference)
        m = _conv_with_buffer()
        if already_pruned:
            prune.l1_unstructured(m, "weight", 3)
            prune.l1_unstructured(m, "weight", 3)
            prune.identity(m, "bias")
        before = _state(m)
        with pytest.raises(exc):
            call(prune, m)
        if prune is lprune:
            _assert_unchanged(before, m)
            assert lprune.is_pruned(m) == already_pruned


def test_failed_global_prune_prunes_nothing():
    for bad in [("buffer", "running_mean"), ("missing", "nope")]:
        m, lin = _conv_with_buffer(), nn.Linear(3, 3)
        lprune.l1_unstructured(lin, "weight", 2)
        before = (_state(m), _state(lin))
        with pytest.raises((TypeError, AttributeError)):
            lprune.global_unstructured([(m, "weight"), (lin, "weight"), (m, bad[1])],
                                       lprune.L1Unstructured, amount=0.5)
        _assert_unchanged(before[0], m)
        _assert_unchanged(before[1], lin)
    with pytest.raises(ValueError):  # amount larger than what is left, across all params
        lprune.global_unstructured([(m, "weight"), (lin, "weight")], lprune.L1Unstructured,
                                   amount=1000)
    _assert_unchanged(before[1], lin)


# ---------------------------------------------- honouring compute_mask
def test_overridden_compute_mask_is_used():
    calls = []

    class MyL1(lprune.L1Unstructured):
        def compute_mask(self, t, default_mask):
            calls.append(t.shape)
            return default_mask * 0  # prune everything

    m = nn.Linear(4, 3)
    MyL1.apply(m, "weight", 0.1)
    assert int(m.weight_mask.sum()) == 0 and calls
    m2 = nn.Linear(4, 3)
    lprune.l1_unstructured(m2, "weight", 0.1)
    MyL1.apply(m2, "weight", 0.1)  # inside a container: sees only the unpruned entries
    assert calls[-1] == (11,) and int(m2.weight_mask.sum()) == 0
    lprune.global_unstructured([(nn.Linear(2, 2), "weight")], MyL1, amount=1)
    assert calls[-1] == (4,)


def test_monkeypatched_compute_mask_is_used(monkeypatch):
    def spy_kernel(*a, **k):
        raise AssertionError("the kernel must not run when compute_mask is patched")

    def prune_first_entries(self, t, default_mask):
        mask = default_mask.clone()
        mask.view(-1)[: self.amount] = 0
        return mask

    monkeypatch.setattr(lthfast, "global_magnitude_masks", spy_kernel)
    monkeypatch.setattr(lprune.L1Unstructured, "compute_mask", prune_first_entries)
    m = nn.Linear(3, 2)
    lprune.l1_unstructured(m, "weight", 2)
    lprune.l1_unstructured(m, "weight", 1)
    lprune.global_unstructured([(m, "weight")], lprune.L1Unstructured, amount=1)
    assert m.weight_mask.view(-1).tolist() == [0, 0, 0, 0, 1, 1]


def test_stock_l1_uses_the_kernel(monkeypatch):
    calls = []
    real = lthfast.global_magnitude_masks

    def spy(tensors, amount, **kw):
        calls.append((len(tensors), amount, kw.get("masks") is not None))
        return real(tensors, amount, **kw)

    real_iter = lthfast.magnitude.iter_global_magnitude_masks

    def spy_iter(tensors, amount, **kw):  # global_unstructured: one mask at a time
        calls.append((len(tensors), amount, kw.get("masks") is not None))
        return real_iter(tensors, amount, **kw)

    import lthfast.prune.global_ as global_mod
    monkeypatch.setattr(lthfast, "global_magnitude_masks", spy)
    monkeypatch.setattr(global_mod, "iter_global_magnitude_masks", spy_iter)
    net = make_net()
    lprune.l1_unstructured(net[3], "weight", 0.5)
    lprune.l1_unstructured(net[3], "weight", 0.5)
    lprune.global_unstructured(pairs_of(net), lprune.L1Unstructured, amount=0.5)
    remaining = sum(p.numel() for p in net.parameters()) - 4 - 60  # all but BN bias, minus pruned
    assert calls == [(1, 40, False), (1, 20, True), (5, round(0.5 * remaining), True)]
