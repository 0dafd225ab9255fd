"""lthfast.prune against torch.nn.utils.prune: the same scenarios through both,
compared on masks, modules, state_dicts, hooks and exception types; plus one test
per documented difference (docs/prune-differences.md).

Random inputs are tie-free (float32 randn), so L1 masks must be identical; ties
are tested separately against lthfast's documented policy.
"""
from __future__ import annotations

import copy
import gc
import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune
from hypothesis import given, settings
from hypothesis import strategies as st

import lthfast
import lthfast.prune as lprune

LIBS = pytest.mark.parametrize("prune", [tprune, lprune], ids=["torch", "lthfast"])


@pytest.fixture(autouse=True)
def _kernel_or_reference(monkeypatch):
    """Use the compiled kernel when built, else the pure-PyTorch reference."""
    if not lthfast._ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


def make_net(seed=0, dtype=torch.float32):
    """Conv2d + BatchNorm2d + Linear with tie-free random parameters."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net.to(dtype)


def hook_of(module, name="weight"):
    hooks = [h for h in module._forward_pre_hooks.values()
             if isinstance(h, tprune.BasePruningMethod) and h._tensor_name == name]
    assert len(hooks) == 1
    return hooks[0]


def assert_same_module(a, b):
    """Same parameters, buffers, state_dict (keys in order, values, dtypes), hook kinds."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert list(dict(a.named_parameters())) == list(dict(b.named_parameters()))
    assert list(dict(a.named_buffers())) == list(dict(b.named_buffers()))
    for ma, mb in zip(a.modules(), b.modules()):
        ha = [type(h).__name__ for h in ma._forward_pre_hooks.values()]
        hb = [type(h).__name__ for h in mb._forward_pre_hooks.values()]
        assert ha == hb
        for h1, h2 in zip(ma._forward_pre_hooks.values(), mb._forward_pre_hooks.values()):
            if isinstance(h1, tprune.PruningContainer):
                assert [type(m).__name__ for m in h1] == [type(m).__name__ for m in h2]
        for name in dict(ma.named_parameters(recurse=False)):
            if name.endswith("_orig"):
                base = name[: -len("_orig")]
                assert torch.equal(getattr(ma, base), getattr(mb, base))


def run_both(scenario, seed=0, **net_kw):
    """Run ``scenario(prune, net)`` with torch and lthfast from the same seed."""
    nets = []
    for prune in (tprune, lprune):
        net = make_net(**net_kw)
        torch.manual_seed(seed)
        scenario(prune, net)
        nets.append(net)
    assert_same_module(*nets)
    x = torch.randn(2, 3, 4, 4, dtype=nets[0][0].weight.dtype)
    nets[0].eval(), nets[1].eval()
    assert torch.equal(nets[0](x), nets[1](x))
    return nets


# ------------------------------------------------------------------ API
def test_public_api_is_complete():
    for name in ["identity", "random_unstructured", "l1_unstructured", "random_structured",
                 "ln_structured", "global_unstructured", "custom_from_mask", "remove", "is_pruned",
                 "BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured",
                 "L1Unstructured", "RandomStructured", "LnStructured", "CustomFromMask"]:
        assert hasattr(lprune, name), name
        assert name in lprune.__all__
    assert issubclass(lprune.BasePruningMethod, tprune.BasePruningMethod)
    assert issubclass(lprune.PruningContainer, tprune.PruningContainer)
    for cls in ["Identity", "RandomUnstructured", "L1Unstructured", "RandomStructured",
                "LnStructured", "CustomFromMask"]:
        assert getattr(lprune, cls).PRUNING_TYPE == getattr(tprune, cls).PRUNING_TYPE


# ------------------------------------------------------- single scenarios
SCENARIOS = {
    "identity": lambda p, n: (p.identity(n[0], "weight"), p.identity(n[3], "bias")),
    "random_unstructured_float": lambda p, n: p.random_unstructured(n[0], "weight", 0.37),
    "random_unstructured_int": lambda p, n: p.random_unstructured(n[3], "weight", 17),
    "l1_float": lambda p, n: p.l1_unstructured(n[0], "weight", 0.42),
    "l1_int": lambda p, n: p.l1_unstructured(n[3], "weight", 23),
    "l1_bias_all": lambda p, n: p.l1_unstructured(n[3], "bias", 1.0),
    "l1_zero": lambda p, n: p.l1_unstructured(n[3], "weight", 0),
    "l1_bn": lambda p, n: p.l1_unstructured(n[1], "weight", 2),
    "random_structured": lambda p, n: p.random_structured(n[0], "weight", 0.5, 0),
    "random_structured_neg_dim": lambda p, n: p.random_structured(n[3], "weight", 2, -1),
    "ln_structured_l2": lambda p, n: p.ln_structured(n[0], "weight", 0.5, 2, 0),
    "ln_structured_l1_dim1": lambda p, n: p.ln_structured(n[0], "weight", 1, 1, 1),
    "ln_structured_inf": lambda p, n: p.ln_structured(n[3], "weight", 2, float("inf"), 0),
    "ln_structured_neg_inf": lambda p, n: p.ln_structured(n[3], "weight", 2, float("-inf"), 1),
    "ln_structured_fro": lambda p, n: p.ln_structured(n[0], "weight", 2, "fro", 0),
    "ln_structured_nuc": lambda p, n: p.ln_structured(n[0], "weight", 2, "nuc", 3),
    "custom_from_mask": lambda p, n: p.custom_from_mask(
        n[3], "bias", mask=torch.tensor([0.0, 1, 0, 1, 1])),
    "class_apply": lambda p, n: (p.L1Unstructured.apply(n[0], "weight", 5),
                                 p.LnStructured.apply(n[3], "weight", 1, 2, 0)),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_single_prune_matches_torch(name):
    run_both(SCENARIOS[name])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_mask_dtype_follows_parameter(dtype):
    tnet, lnet = run_both(lambda p, n: (p.l1_unstructured(n[3], "weight", 0.3),
                                        p.random_structured(n[0], "weight", 1, 0)), dtype=dtype)
    assert lnet[3].weight_mask.dtype == dtype and lnet[0].weight_mask.dtype == dtype


@pytest.mark.parametrize("amount,expected", [(0.25, 2), (0.35, 4), (0.45, 4), (0.05, 0)])
def test_half_to_even_rounding(amount, expected):
    # a Linear(5, 2) weight has 10 entries: 2.5 -> 2, 3.5 -> 4, 4.5 -> 4, 0.5 -> 0
    for prune in (tprune, lprune):
        torch.manual_seed(0)
        m = nn.Linear(5, 2)
        prune.l1_unstructured(m, "weight", amount)
        assert int((m.weight_mask == 0).sum()) == expected == round(amount * 10)


def test_fractions_of_remaining_weights():
    def scenario(p, n):
        p.l1_unstructured(n[3], "weight", 0.5)   # 80 -> 40 left
        p.l1_unstructured(n[3], "weight", 0.5)   # prunes 20 of the 40
        p.random_unstructured(n[3], "weight", 0.25)  # 5 of the 20
    _, lnet = run_both(scenario)
    assert int(lnet[3].weight_mask.sum()) == 15


def test_repeated_pruning_container_rules_match_torch():
    def scenario(p, n):
        conv, lin = n[0], n[3]
        p.l1_unstructured(conv, "weight", 0.2)
        p.ln_structured(conv, "weight", 1, 2, 0)          # structured: among alive channels
        p.random_unstructured(conv, "weight", 7)          # unstructured: among mask == 1
        p.random_structured(conv, "weight", 0.34, 1)
        p.l1_unstructured(conv, "weight", 0.5)
        p.custom_from_mask(conv, "weight", torch.rand(conv.weight.shape) > 0.2)  # global
        p.identity(conv, "weight")
        p.ln_structured(lin, "weight", 2, 1, 1, importance_scores=torch.randn(5, 16))
        p.l1_unstructured(lin, "weight", 11, importance_scores=torch.randn(5, 16))
        p.random_structured(lin, "weight", 1, 0)
    tnet, lnet = run_both(scenario)
    assert len(hook_of(lnet[0])) == 7 and isinstance(hook_of(lnet[0]), lprune.PruningContainer)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_methods_same_seed_same_masks(seed):
    def scenario(p, n):
        p.random_unstructured(n[0], "weight", 0.3)
        p.random_unstructured(n[0], "weight", 0.3)
        p.random_structured(n[3], "weight", 0.4, 1)
        p.random_structured(n[3], "weight", 2, 1)
        p.random_unstructured(n[3], "bias", 2)
    run_both(scenario, seed=seed)


def test_importance_scores_match_torch():
    scores = {"c": torch.randn(4, 3, 3, 3), "l": torch.randn(5, 16), "b": torch.randn(4)}

    def scenario(p, n):
        p.l1_unstructured(n[0], "weight", 0.3, importance_scores=scores["c"])
        p.ln_structured(n[3], "weight", 0.4, 2, 0, importance_scores=scores["l"])
        p.global_unstructured([(n[0], "weight"), (n[3], "weight"), (n[1], "weight")],
                              p.L1Unstructured, amount=0.3,
                              importance_scores={(n[0], "weight"): scores["c"],
                                                 (n[1], "weight"): scores["b"]})
    run_both(scenario)


# ----------------------------------------------------------------- global
def _pairs(n):
    return [(n[0], "weight"), (n[1], "weight"), (n[3], "weight"), (n[0], "bias"), (n[3], "bias")]


@pytest.mark.parametrize("amount", [0.2, 0.5, 17, 0])
def test_global_l1_rounds_match_torch(amount):
    def scenario(p, n):
        for _ in range(3):
            p.global_unstructured(_pairs(n), pruning_method=p.L1Unstructured, amount=amount)
    run_both(scenario)


def test_global_after_local_pruning_matches_torch():
    def scenario(p, n):
        p.ln_structured(n[0], "weight", 1, 2, 0)
        p.l1_unstructured(n[3], "weight", 30)
        p.global_unstructured(_pairs(n), p.L1Unstructured, amount=0.4)
        p.global_unstructured(_pairs(n), p.RandomUnstructured, amount=0.3)
    run_both(scenario)


def test_global_random_same_seed_matches_torch():
    run_both(lambda p, n: p.global_unstructured(_pairs(n), p.RandomUnstructured, amount=0.45))


def test_global_with_user_method_matches_torch():
    def scenario(p, n):
        class KeepLargestPrunedFirst(p.BasePruningMethod):  # prunes the *largest* entries
            PRUNING_TYPE = "unstructured"

            def __init__(self, amount):
                self.amount = amount

            def compute_mask(self, t, default_mask):
                mask = default_mask.clone()
                mask.view(-1)[torch.topk(t.abs().view(-1), self.amount).indices] = 0
                return mask
        p.global_unstructured(_pairs(n), KeepLargestPrunedFirst, amount=9)
        p.global_unstructured(_pairs(n), KeepLargestPrunedFirst, amount=9)
    run_both(scenario)


def test_global_rejects_non_unstructured_methods():
    for prune in (tprune, lprune):
        with pytest.raises(TypeError):
            prune.global_unstructured(_pairs(make_net()), prune.LnStructured, amount=1, n=2, dim=0)


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
    prune.global_unstructured(_pairs(net), prune.L1Unstructured, amount=0.2)
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
    lprune.global_unstructured(_pairs(net), lprune.L1Unstructured, amount=0.5)
    remaining = sum(p.numel() for p in net.parameters()) - 4 - 60  # all but BN bias, minus pruned
    assert calls == [(1, 40, False), (1, 20, True), (5, round(0.5 * remaining), True)]


# ------------------------------------------------------------------ ties
def test_ties_pruned_in_row_major_order():
    m = nn.Linear(4, 3)
    with torch.no_grad():
        m.weight.fill_(0.5)
    lprune.l1_unstructured(m, "weight", 5)
    assert m.weight_mask.view(-1).tolist() == [0] * 5 + [1] * 7
    lprune.l1_unstructured(m, "weight", 2)  # next ties: the first unpruned ones
    assert m.weight_mask.view(-1).tolist() == [0] * 7 + [1] * 5


def test_ties_across_tensors_and_layouts():
    conv = nn.Conv2d(2, 2, 2).to(memory_format=torch.channels_last)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.fill_(-1.0)
        lin.weight.fill_(1.0)
        lin.weight[0, 0] = float("nan")
    lprune.global_unstructured([(lin, "weight"), (conv, "weight")], lprune.L1Unstructured,
                               amount=10)
    assert lin.weight_mask.view(-1).tolist() == [1, 0, 0, 0]  # NaN ranks highest
    # then the first 7 of conv in logical row-major order, although it is channels_last
    assert conv.weight_mask.reshape(-1).tolist() == [0] * 7 + [1] * 9


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), amount=st.floats(0, 1),
       seed=st.integers(0, 2**16), again=st.floats(0, 1))
def test_l1_masks_equal_torch_without_ties(rows, cols, amount, seed, again):
    masks = []
    for prune in (tprune, lprune):
        torch.manual_seed(seed)
        m = nn.Linear(cols, rows)
        prune.l1_unstructured(m, "weight", amount)
        prune.l1_unstructured(m, "weight", again)
        masks.append(m.weight_mask)
    assert torch.equal(*masks)


# ------------------------------------------------- documented differences
def test_deepcopy_of_pruned_module():
    net = make_net()
    lprune.l1_unstructured(net[0], "weight", 0.3)
    lprune.global_unstructured(_pairs(net), lprune.L1Unstructured, amount=0.3)
    x = torch.randn(2, 3, 4, 4)
    net.eval()
    out = net(x)
    clone = copy.deepcopy(net)
    assert clone[0].weight_orig is not net[0].weight_orig
    assert torch.equal(clone(x), out)
    assert_same_module(clone, net)
    clone(x).sum().backward()  # the copy trains: gradients reach weight_orig
    assert clone[0].weight_orig.grad is not None and net[0].weight_orig.grad is None
    copy.deepcopy(clone)
    tnet = make_net()
    tprune.l1_unstructured(tnet[0], "weight", 0.3)
    with pytest.raises(RuntimeError):  # torch's bug; if this fails, update the docs
        copy.deepcopy(tnet)


def test_channels_last_weights():
    def build():
        torch.manual_seed(0)
        return nn.Conv2d(3, 8, 3), nn.Linear(4, 4)

    conv_t, lin_t = build()
    conv_l, lin_l = build()
    conv_l.to(memory_format=torch.channels_last)
    torch.manual_seed(5)
    tprune.l1_unstructured(conv_t, "weight", 0.3)
    tprune.random_unstructured(conv_t, "weight", 0.3)
    tprune.global_unstructured([(conv_t, "weight"), (lin_t, "weight")], tprune.L1Unstructured, amount=0.4)
    torch.manual_seed(5)
    lprune.l1_unstructured(conv_l, "weight", 0.3)
    lprune.random_unstructured(conv_l, "weight", 0.3)
    lprune.global_unstructured([(conv_l, "weight"), (lin_l, "weight")], lprune.L1Unstructured, amount=0.4)
    assert torch.equal(conv_l.weight_mask, conv_t.weight_mask)
    assert torch.equal(lin_l.weight_mask, lin_t.weight_mask)
    assert conv_l.weight_mask.is_contiguous(memory_format=torch.channels_last)
    assert conv_l.weight.is_contiguous(memory_format=torch.channels_last)
    conv_bad = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError):  # torch's bug; if this fails, update the docs
        tprune.l1_unstructured(conv_bad, "weight", 0.3)


def _tensors_in(obj, seen=None):
    """Every tensor reachable from a hook object's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o, seen)]
    if isinstance(obj, tprune.BasePruningMethod):
        return [t for o in vars(obj).values() for t in _tensors_in(o, seen)]
    return []


def test_global_hooks_keep_no_concatenated_masks():
    held = {}
    for prune in (tprune, lprune):
        net = make_net()
        for _ in range(3):
            prune.global_unstructured(_pairs(net), prune.L1Unstructured, amount=0.3)
        tensors = [t for m in net.modules() for h in m._forward_pre_hooks.values()
                   for t in _tensors_in(h)]
        held[prune] = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    total = sum(getattr(m, n).numel() for m, n in _pairs(make_net())) * 4
    # torch: each round's whole float mask stays alive, shared by every hook
    assert sorted(held[tprune].values()) == [total] * 3
    assert held[lprune] == {}


def _live_tensor_bytes():
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return sum(storages.values())


def test_global_memory_does_not_grow_across_rounds():
    growth = {}
    for prune in (tprune, lprune):
        net = make_net()
        prune.global_unstructured(_pairs(net), prune.L1Unstructured, amount=0.2)
        before = _live_tensor_bytes()
        for _ in range(3):
            prune.global_unstructured(_pairs(net), prune.L1Unstructured, amount=0.2)
        growth[prune] = _live_tensor_bytes() - before
        del net
    assert growth[lprune] == 0
    assert growth[tprune] >= 3 * 4 * sum(getattr(m, n).numel() for m, n in _pairs(make_net()))


def test_generator_argument():
    net_a, net_b = make_net(), make_net()
    state = torch.get_rng_state()
    lprune.global_unstructured(_pairs(net_a), lprune.RandomUnstructured, amount=0.3,
                               generator=torch.Generator().manual_seed(7))
    lprune.random_unstructured(net_a[3], "weight", 0.3, generator=torch.Generator().manual_seed(8))
    lprune.random_structured(net_a[0], "weight", 1, 0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    torch.manual_seed(7)  # same seed on the global RNG gives torch's masks
    tprune.global_unstructured(_pairs(net_b), tprune.RandomUnstructured, amount=0.3)
    torch.manual_seed(8)
    tprune.random_unstructured(net_b[3], "weight", 0.3)
    torch.manual_seed(9)
    tprune.random_structured(net_b[0], "weight", 1, 0)
    assert_same_module(net_a, net_b)
    with pytest.raises(TypeError):
        tprune.global_unstructured(_pairs(make_net()), tprune.RandomUnstructured, amount=0.3,
                                   generator=torch.Generator())


def test_pruning_container_constructor():
    a, b = lprune.L1Unstructured(0.2), lprune.RandomUnstructured(0.1)
    a._tensor_name = b._tensor_name = "weight"
    for container in (lprune.PruningContainer(a, b), lprune.PruningContainer([a, b])):
        assert list(container) == [a, b] and container._tensor_name == "weight"
    empty = lprune.PruningContainer()
    empty.add_pruning_method(a)
    assert empty._tensor_name == "weight" and len(empty) == 1
    c = lprune.L1Unstructured(0.2)
    c._tensor_name = "bias"
    with pytest.raises(ValueError):
        lprune.PruningContainer(a, c)
    with pytest.raises(TypeError):
        lprune.PruningContainer(a, "not a method")
    with pytest.raises(AttributeError):  # torch's bug; if this fails, update the docs
        tprune.PruningContainer(a, b)


def test_failed_reprune_keeps_hook_unlike_torch():
    for prune in (tprune, lprune):
        m = nn.Linear(4, 3)
        prune.l1_unstructured(m, "weight", 2)
        with pytest.raises(ValueError):
            prune.l1_unstructured(m, "weight", 100)
        assert prune.is_pruned(m) == (prune is lprune)  # torch dropped its hook


def test_failed_first_prune_keeps_parameter_order_unlike_torch():
    for prune in (tprune, lprune):
        m = nn.Linear(4, 3)
        with pytest.raises(ValueError):
            prune.l1_unstructured(m, "weight", 100)
        expected = ["weight", "bias"] if prune is lprune else ["bias", "weight"]
        assert list(m.state_dict()) == expected


def test_structured_pruning_of_pruned_1d_tensor_raises():
    m = nn.Linear(3, 3)
    lprune.identity(m, "bias")
    with pytest.raises(ValueError):
        lprune.ln_structured(m, "bias", 1, 2, 0)
    assert torch.equal(m.bias_mask, torch.ones(3))
    t = nn.Linear(3, 3)
    tprune.identity(t, "bias")
    tprune.ln_structured(t, "bias", 1, 2, 0)  # torch prunes every entry
    assert int(t.bias_mask.sum()) == 0


def test_global_accepts_a_generator_of_pairs():
    net = make_net()
    lprune.global_unstructured((pair for pair in _pairs(net)), lprune.L1Unstructured, amount=10)
    assert sum(int((getattr(m, n + "_mask") == 0).sum()) for m, n in _pairs(net)) == 10
    with pytest.raises((ValueError, RuntimeError)):  # torch's bug; if this fails, update the docs
        tprune.global_unstructured((p for p in _pairs(make_net())), tprune.L1Unstructured, amount=10)


def test_global_rejects_duplicates_and_bad_importance():
    net = make_net()
    with pytest.raises(ValueError):
        lprune.global_unstructured(_pairs(net) + [(net[0], "weight")], lprune.L1Unstructured, amount=1)
    with pytest.raises(AssertionError):
        lprune.global_unstructured(_pairs(net), lprune.L1Unstructured, amount=1,
                                   importance_scores={(net[0], "weight"): torch.ones(3)})
    with pytest.raises(ValueError):
        lprune.global_unstructured([], lprune.L1Unstructured, amount=1)
    assert not lprune.is_pruned(net)


def test_errors_name_the_value():
    m = nn.Linear(3, 3)
    for call, text in [(lambda: lprune.l1_unstructured(m, "weight", -3), "amount=-3"),
                       (lambda: lprune.l1_unstructured(m, "weight", 99), "amount=99"),
                       (lambda: lprune.l1_unstructured(m, "wieght", 1), "'wieght'"),
                       (lambda: lprune.ln_structured(m, "weight", 1, 2, 5), "dim=5"),
                       (lambda: lprune.ln_structured(m, "bias", 1, 2, 0), "(3,)")]:
        with pytest.raises(Exception, match=None) as info:
            call()
        assert text in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_masks_match_cpu():
    if lthfast._ops.available() and not lthfast.build_info().get("cuda"):
        pytest.skip("lthfast was built without CUDA kernels")
    nets = [make_net(), make_net().cuda()]
    for net in nets:
        lprune.l1_unstructured(net[0], "weight", 0.3)
        lprune.global_unstructured(_pairs(net), lprune.L1Unstructured, amount=0.4)
        lprune.ln_structured(net[3], "weight", 1, 2, 0)
        torch.manual_seed(3)  # channel scores are drawn on the CPU, so CUDA masks match
        lprune.random_structured(net[0], "weight", 1, 1)
    cpu_state, cuda_state = nets[0].state_dict(), nets[1].state_dict()
    assert list(cpu_state) == list(cuda_state)
    for key in cpu_state:
        assert torch.equal(cpu_state[key], cuda_state[key].cpu()), key
