"""lthfast.prune: the tie policy, and one test per documented difference from
torch.nn.utils.prune (README, "What differs")."""
from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune
from torch._subclasses.fake_tensor import FakeTensor
from hypothesis import given, settings
from hypothesis import strategies as st

import lthfast
import lthfast.prune as lprune

from _prune_helpers import _kernel_or_reference  # noqa: F401 (autouse fixture)
from _prune_helpers import make_net, assert_same_module, pairs_of


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
    lprune.global_unstructured(pairs_of(net), lprune.L1Unstructured, amount=0.3)
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
            prune.global_unstructured(pairs_of(net), prune.L1Unstructured, amount=0.3)
        tensors = [t for m in net.modules() for h in m._forward_pre_hooks.values()
                   for t in _tensors_in(h)]
        held[prune] = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    total = sum(getattr(m, n).numel() for m, n in pairs_of(make_net())) * 4
    # torch: each round's whole float mask stays alive, shared by every hook
    assert sorted(held[tprune].values()) == [total] * 3
    assert held[lprune] == {}


def _live_tensor_bytes():
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if (issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu"
                and not isinstance(obj, FakeTensor)):  # opcheck leftovers have no storage
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return sum(storages.values())


def test_global_memory_does_not_grow_across_rounds():
    growth = {}
    for prune in (tprune, lprune):
        net = make_net()
        prune.global_unstructured(pairs_of(net), prune.L1Unstructured, amount=0.2)
        before = _live_tensor_bytes()
        for _ in range(3):
            prune.global_unstructured(pairs_of(net), prune.L1Unstructured, amount=0.2)
        growth[prune] = _live_tensor_bytes() - before
        del net
    assert growth[lprune] == 0
    assert growth[tprune] >= 3 * 4 * sum(getattr(m, n).numel() for m, n in pairs_of(make_net()))


def test_generator_argument():
    net_a, net_b = make_net(), make_net()
    state = torch.get_rng_state()
    lprune.global_unstructured(pairs_of(net_a), lprune.RandomUnstructured, amount=0.3,
                               generator=torch.Generator().manual_seed(7))
    lprune.random_unstructured(net_a[3], "weight", 0.3, generator=torch.Generator().manual_seed(8))
    lprune.random_structured(net_a[0], "weight", 1, 0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    torch.manual_seed(7)  # same seed on the global RNG gives torch's masks
    tprune.global_unstructured(pairs_of(net_b), tprune.RandomUnstructured, amount=0.3)
    torch.manual_seed(8)
    tprune.random_unstructured(net_b[3], "weight", 0.3)
    torch.manual_seed(9)
    tprune.random_structured(net_b[0], "weight", 1, 0)
    assert_same_module(net_a, net_b)
    with pytest.raises(TypeError):
        tprune.global_unstructured(pairs_of(make_net()), tprune.RandomUnstructured, amount=0.3,
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
    lprune.global_unstructured((pair for pair in pairs_of(net)), lprune.L1Unstructured, amount=10)
    assert sum(int((getattr(m, n + "_mask") == 0).sum()) for m, n in pairs_of(net)) == 10
    with pytest.raises((ValueError, RuntimeError)):  # torch's bug; if this fails, update the docs
        tprune.global_unstructured((p for p in pairs_of(make_net())), tprune.L1Unstructured, amount=10)


def test_global_rejects_duplicates_and_bad_importance():
    net = make_net()
    with pytest.raises(ValueError):
        lprune.global_unstructured(pairs_of(net) + [(net[0], "weight")], lprune.L1Unstructured, amount=1)
    with pytest.raises(AssertionError):
        lprune.global_unstructured(pairs_of(net), lprune.L1Unstructured, amount=1,
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
        lprune.global_unstructured(pairs_of(net), lprune.L1Unstructured, amount=0.4)
        lprune.ln_structured(net[3], "weight", 1, 2, 0)
        torch.manual_seed(3)  # channel scores are drawn on the CPU, so CUDA masks match
        lprune.random_structured(net[0], "weight", 1, 1)
    cpu_state, cuda_state = nets[0].state_dict(), nets[1].state_dict()
    assert list(cpu_state) == list(cuda_state)
    for key in cpu_state:
        assert torch.equal(cpu_state[key], cuda_state[key].cpu()), key


# ------------------------------------------------------------------ meta device
def test_global_l1_on_the_meta_device():
    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3, device="meta"), nn.Linear(4, 2, device="meta"))

    params = lambda m: [(m[0], "weight"), (m[1], "weight")]  # noqa: E731
    m = net()
    with pytest.raises(NotImplementedError):
        tprune.global_unstructured(params(m), tprune.L1Unstructured, amount=0.3)
    m = net()
    lprune.global_unstructured(params(m), lprune.L1Unstructured, amount=0.3)
    for mod in m:
        assert mod.weight_mask.device.type == "meta"
        assert mod.weight_mask.shape == mod.weight.shape == mod.weight_orig.shape
    before = ([(n, id(t)) for n, t in m.named_parameters()]
              + [(n, id(t)) for n, t in m.named_buffers()])
    hooks = [list(mod._forward_pre_hooks.values()) for mod in m]
    with pytest.raises(NotImplementedError):
        lprune.global_unstructured(params(m), lprune.L1Unstructured, amount=0.3)
    assert before == ([(n, id(t)) for n, t in m.named_parameters()]
                      + [(n, id(t)) for n, t in m.named_buffers()])
    assert hooks == [list(mod._forward_pre_hooks.values()) for mod in m]
