"""Pruning again rewrites the old mask and pruned tensor in place when nothing else
holds them (lthfast.prune._inplace), and only then.

- ``threshold_mask_into`` writes exactly ``threshold_mask``'s result into ``out``;
- ``sole_holders`` sees every kind of holder: Python references, views and aliases,
  autograd graphs, weak references, memory lthfast's allocator does not own;
- ``global_unstructured``'s second round keeps the mask objects, gives the masks
  and pruned tensors torch gives (values, strides, gradients), leaves any tensor a
  user still holds untouched, and rolls back exactly on failure.
"""
from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast
import lthfast.prune as lprune
import lthfast.prune.global_ as lprune_global
from lthfast import _reference
from lthfast.bitmask import pack_bits, unpack_bits
from lthfast.prune._inplace import alias_of, as_product, sole_holders

from _prune_helpers import assert_same_module, make_net, pairs_of

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

_CUDA = pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and lthfast._ops.available()
                            and lthfast.build_info().get("cuda")), reason="no CUDA GPU or build")])
DEVICES = ["cpu", _CUDA]
op = torch.ops.lthfast


@pytest.fixture(autouse=True)
def _rewrite_small_tensors_too(monkeypatch):
    """The nets here are tiny; lthfast rewrites only tensors of >= 2^15 entries."""
    monkeypatch.setattr(lprune_global, "_REWRITE_MIN_NUMEL", 0)


# ------------------------------------------------------ threshold_mask_into
def _problem(seed, dtype, device, mask_kind, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, 3, 3, generator=g).round(decimals=1).to(dtype)  # ties
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    keep = torch.rand(w.shape, generator=g) > 0.3
    mask = {"none": None, "bool": keep, "float": keep.to(dtype), "bits": pack_bits(keep)}[mask_kind]
    w = w.to(device)
    mask = mask.to(device) if mask is not None else None
    t, ties = op.global_threshold([w], [] if mask is None else [mask], 100)
    return w, mask, t, ties


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "bits"])
@pytest.mark.parametrize("out_kind", ["bool", "score", "score_channels_last", "transposed"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_into_writes_threshold_masks_result(device, dtype, mask_kind, out_kind, channels_last):
    w, mask, t, ties = _problem(3, dtype, device, mask_kind, channels_last)
    out_dtype = torch.bool if out_kind == "bool" else dtype
    want = op.threshold_mask(w, mask, t, ties.clone(), out_dtype)
    if out_kind == "score_channels_last":
        out = torch.full_like(w, 7, dtype=out_dtype, memory_format=torch.channels_last)
    elif out_kind == "transposed":
        out = torch.full(w.shape[::-1], 7, dtype=out_dtype, device=device).permute(3, 2, 1, 0)
    else:
        out = torch.full_like(w, 7, dtype=out_dtype)
    left = ties.clone()
    assert op.threshold_mask_into(w, mask, t, left, out) is None
    assert torch.equal(out, want)
    assert int(left) == 0  # every tie pruned in this one tensor
    ref, ref_left = torch.full_like(out, 7).cpu(), ties.clone().cpu()
    ref_mask = None if mask is None else mask.cpu()
    if mask_kind == "bits":  # the reference takes the bool mask the bits hold
        ref_mask = unpack_bits(ref_mask, w.shape)
    _reference.threshold_mask_into(w.cpu(), ref_mask, t.cpu(), ref_left, ref)
    assert torch.equal(ref, want.cpu()) and int(ref_left) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "bits", "float"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed_out"])
@pytest.mark.parametrize("product_over_score", [False, True])
def test_into_writes_the_product_as_torch(device, dtype, mask_kind, layout, product_over_score):
    """product = out * orig, bit for bit as torch's mask * orig (-0.0 and NaN included),
    also when the product is laid over the score (the old pruned tensor it replaces,
    lthfast.prune's second round) and the score has ties across several chunks."""
    g = torch.Generator().manual_seed(7)
    n = 3 * 65536 + 5  # several of the kernel's chunks
    w = (torch.randn(n // 5, 5, generator=g) * 4).round().to(dtype)  # many ties
    orig = torch.randn(w.shape, generator=g).to(dtype)
    orig[0, 0], orig[1, 1], orig[2, 2] = float("nan"), float("-inf"), -0.0
    if layout == "channels_last":
        w = w.reshape(-1, 5, 1, 1).contiguous(memory_format=torch.channels_last)
        orig = orig.reshape(-1, 5, 1, 1).contiguous(memory_format=torch.channels_last)
    keep = torch.rand(w.shape, generator=g) > 0.3
    mask = {"none": None, "float": keep.to(dtype), "bits": pack_bits(keep)}[mask_kind]
    w, orig = w.to(device), orig.to(device)
    mask = mask.to(device) if mask is not None else None
    k = int((keep if mask is not None else torch.ones_like(keep)).sum()) // 2
    t, ties = op.global_threshold([w], [] if mask is None else [mask], k)
    want_mask = op.threshold_mask(w, mask, t, ties.clone(), dtype)
    want = want_mask * orig
    out = (torch.empty(w.shape[::-1], dtype=dtype, device=device).permute(*range(w.dim() - 1, -1, -1))
           if layout == "transposed_out" else torch.empty_like(w))
    score = w.clone() if product_over_score else w
    product = score if product_over_score else torch.empty_like(orig)
    left = ties.clone()
    op.threshold_mask_into(score, mask, t, left, out, orig, product)
    assert torch.equal(out, want_mask) and int(left) == 0
    if layout == "transposed_out":  # torch's own bf16/fp16 NaN bits depend on the layouts
        want = out * orig
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    assert torch.equal(product.view(bits), want.view(bits))  # NaN and -0.0 too


@pytest.mark.parametrize("bad, message", [
    (lambda w, o, p: (o, None), r"pass orig and product together"),
    (lambda w, o, p: (None, p), r"pass orig and product together"),
    (lambda w, o, p: (o, torch.empty(w.shape, dtype=torch.float64)), r"product must be Float"),
    (lambda w, o, p: (o, o), r"product shares memory with out or orig"),
    (lambda w, o, p: (o, "out"), r"product shares memory with out or orig"),
    (lambda w, o, p: (o, w._base[1:].view(w.shape)), r"laid over it exactly"),
    (lambda w, o, p: (o.to(torch.int32), p), r"orig has dtype Int"),
])
def test_into_refuses_a_bad_product(bad, message):
    w = torch.randn(31)[:30].view(6, 5)
    out = torch.empty(6, 5)
    orig, product = bad(w, torch.randn(6, 5), torch.empty(6, 5))
    product = out if isinstance(product, str) else product
    with pytest.raises(RuntimeError, match=message):
        op.threshold_mask_into(w, None, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0),
                               out, orig, product)


def test_opcheck_into_with_product():
    w, mask, t, ties = _problem(5, torch.float32, "cpu", "bits")
    orig = torch.randn(w.shape)
    torch.library.opcheck(op.threshold_mask_into,
                          (w, mask, t, ties.clone(), torch.empty(w.shape), orig, torch.empty(w.shape)))


def test_into_decrements_ties_as_threshold_mask():
    w = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])
    t = torch.tensor(2.0, dtype=torch.float64)
    out = torch.empty(5)
    left = torch.tensor(2)
    op.threshold_mask_into(w, None, t, left, out)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0] and int(left) == 0  # below t: pruned


def test_opcheck_into():
    w, mask, t, ties = _problem(4, torch.float32, "cpu", "bits")
    for out in (torch.empty(w.shape), torch.empty(w.shape, dtype=torch.bool)):
        torch.library.opcheck(op.threshold_mask_into, (w, mask, t, ties.clone(), out))
        torch.library.opcheck(op.threshold_mask_into, (w, None, t, ties.clone(), out))


@pytest.mark.parametrize("bad, message", [
    (lambda w: torch.empty(3, 4), r"out has shape \[3, 4\] but score has shape"),
    (lambda w: torch.empty(w.shape, dtype=torch.int32), r"out has dtype Int; expected bool or"),
    (lambda w: torch.empty(w.shape, dtype=torch.float64), r"out has dtype Double"),
    (lambda w: torch.empty(1, 1, 1, 1).expand(w.shape), r"out has entries that share memory"),
    (lambda w: w, r"out shares memory with score"),
    (lambda w: "mask", r"out shares memory with mask"),
])
def test_into_refuses_bad_out_and_writes_nothing(bad, message):
    w = torch.randn(6, 5, 3, 3)
    mask = (torch.rand(w.shape) > 0.5).float()
    before_w, before_mask = w.clone(), mask.clone()
    out = bad(w)
    out = mask if isinstance(out, str) else out
    left = torch.tensor(0)
    with pytest.raises(RuntimeError, match=message):
        op.threshold_mask_into(w, mask, torch.tensor(0.5, dtype=torch.float64), left, out)
    assert torch.equal(w, before_w) and torch.equal(mask, before_mask) and int(left) == 0


# ------------------------------------------------------------ sole_holders
def _sole(held, key, n_python=1, n_storage=1):
    # not sole_holders(held[key], ...) inside an assert: pytest's assert rewriting
    # keeps the subexpression held[key] in a variable of its own (one more holder).
    # Passed as a local variable, as lthfast's callers do (+1 holder)
    t = held[key]
    return sole_holders(t, n_python + 1, n_storage)


def test_sole_holders_counts_every_holder():
    held = {"t": torch.randn(4, 5)}
    assert _sole(held, "t", 1)
    t = held["t"]  # a second Python reference
    assert not _sole(held, "t", 1) and _sole(held, "t", 2)
    del t
    v = held["t"].view(-1)  # a view shares the storage
    assert not _sole(held, "t", 1)
    del v
    d = held["t"].detach()  # so does an alias (a state_dict entry is one)
    assert not _sole(held, "t", 1)
    del d
    r = weakref.ref(held["t"])
    assert not _sole(held, "t", 1)
    del r
    x = torch.randn(4, 5, requires_grad=True)
    graph = x * held["t"]  # mul saves the tensor for backward: a C++ holder
    assert not _sole(held, "t", 1)
    del graph
    assert _sole(held, "t", 1)
    assert _sole(held, "t", 1, None)


def test_sole_holders_refuses_memory_it_does_not_own():
    held = {"np": torch.from_numpy(np.ones((4, 5), dtype=np.float32)),
            "shm": torch.ones(4, 5).share_memory_(),
            "param": nn.Parameter(torch.ones(4, 5))}
    for key in held:
        assert not _sole(held, key), key
    with torch.inference_mode():
        held["inference"] = torch.ones(3)
    assert not _sole(held, "inference", 1)


def test_alias_and_as_product():
    orig = nn.Parameter(torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last))
    mask = (torch.rand(orig.shape) > 0.5).float().contiguous(memory_format=torch.channels_last)
    old = mask * orig
    mem = alias_of(old)
    assert mem.data_ptr() == old.data_ptr() and not mem._is_view() and mem.grad_fn is None
    del old
    with torch.no_grad():
        torch.mul(mask, orig, out=mem)  # as the mask pass writes it
    got = as_product(orig, mask, mem)
    assert got is mem and got.data_ptr() == mem.data_ptr()
    want = mask * orig
    assert torch.equal(got, want) and got.stride() == want.stride()
    g = torch.randn(orig.shape)
    got.backward(g)
    assert torch.equal(orig.grad, g * mask)
    assert as_product(orig, mask, torch.empty(4, 3, 2, 2)) is None  # other strides
    with torch.no_grad():
        assert as_product(orig, mask, alias_of(want)).grad_fn is None


# -------------------------------------------------- global_unstructured, round 2
def _net(channels_last=False, dtype=torch.float32):
    net = make_net(dtype=dtype)
    if channels_last:
        net[0].weight.data = net[0].weight.data.contiguous(memory_format=torch.channels_last)
    return net


def _two_rounds(prune, net, between=None):
    prune.global_unstructured(pairs_of(net), pruning_method=prune.L1Unstructured, amount=0.3)
    if between is not None:
        between(net)
    prune.global_unstructured(pairs_of(net), pruning_method=prune.L1Unstructured, amount=0.4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_second_round_rewrites_the_masks_in_place_with_torchs_result(channels_last, dtype):
    # (torch's global_unstructured fails on channels_last weights: its reference is
    # the contiguous net; values compare the same, strides follow each weight)
    net, ref = _net(channels_last, dtype), _net(False, dtype)
    lprune.global_unstructured(pairs_of(net), pruning_method=lprune.L1Unstructured, amount=0.3)
    tprune.global_unstructured(pairs_of(ref), pruning_method=tprune.L1Unstructured, amount=0.3)
    ids = [(id(getattr(m, n + "_mask")), getattr(m, n + "_mask").data_ptr(), getattr(m, n).data_ptr())
           for m, n in pairs_of(net)]
    lprune.global_unstructured(pairs_of(net), pruning_method=lprune.L1Unstructured, amount=0.4)
    tprune.global_unstructured(pairs_of(ref), pruning_method=tprune.L1Unstructured, amount=0.4)
    assert_same_module(net, ref)
    for (m, n), (r, _), (mask_id, mask_ptr, pruned_ptr) in zip(pairs_of(net), pairs_of(ref), ids):
        mask, pruned = getattr(m, n + "_mask"), getattr(m, n)
        want_mask, want = getattr(r, n + "_mask"), getattr(r, n)
        assert id(mask) == mask_id and mask.data_ptr() == mask_ptr
        assert pruned.data_ptr() == pruned_ptr  # the old pruned tensor's memory
        assert pruned.stride() == mask.stride() == getattr(m, n + "_orig").stride()
        assert torch.equal(pruned, want) and torch.equal(mask, want_mask)
        # the pruned tensor's gradient reaches <name>_orig as torch's does
        g = torch.randn(pruned.shape).to(dtype)
        pruned.backward(g)
        want.backward(g)
        assert torch.equal(getattr(m, n + "_orig").grad, getattr(r, n + "_orig").grad)


def _hold(kind):
    """What a user may hold between rounds, and the tensor it makes unsafe to rewrite."""
    def between(net):
        m = net[0]
        if kind == "mask_ref":
            net.held = m.weight_mask
        elif kind == "pruned_ref":
            net.held = m.weight
        elif kind == "state_dict":
            net.held = m.state_dict()  # detached aliases of the mask (and orig)
        elif kind == "graph":
            net.held = (m(torch.randn(2, 3, 6, 6)).sum())  # the forward saved the mask
        elif kind == "weakref":
            net.held = weakref.ref(m.weight_mask)
    return between


@pytest.mark.parametrize("kind", ["mask_ref", "pruned_ref", "state_dict", "graph", "weakref"])
def test_a_tensor_a_user_holds_is_left_as_it_was(kind):
    """Whatever still sees an old tensor sees it unchanged, as with torch (which makes
    new ones); the module gets torch's result either way."""
    net, ref = _net(), _net()
    _two_rounds(tprune, ref)
    lprune.global_unstructured(pairs_of(net), pruning_method=lprune.L1Unstructured, amount=0.3)
    m = net[0]
    old_mask, old_weight = m.weight_mask.clone(), m.weight.detach().clone()
    _hold(kind)(net)
    lprune.global_unstructured(pairs_of(net), pruning_method=lprune.L1Unstructured, amount=0.4)
    held = net.held
    if kind == "mask_ref":
        assert held is not m.weight_mask and torch.equal(held, old_mask)
    elif kind == "pruned_ref":
        assert held is not m.weight and torch.equal(held, old_weight)
    elif kind == "state_dict":
        assert torch.equal(held["weight_mask"], old_mask)
    elif kind == "graph":
        held.backward()  # the old graph still works: its mask was not rewritten
        assert m.weight_orig.grad is not None
    elif kind == "weakref":
        assert held() is not m.weight_mask
    del net.held
    assert torch.equal(m.weight_mask, ref[0].weight_mask)
    assert torch.equal(m.weight, ref[0].weight)


def test_after_a_training_step_the_new_pruned_tensor_uses_the_new_weights():
    """module.weight is stale after an optimizer step (the hook recomputes it on the
    next forward): the scores are that stale tensor, as in torch, but the new pruned
    tensor is orig * mask from the current weights."""
    def step(net):
        out = net(torch.randn(2, 3, 4, 4)).sum()
        out.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
    net, ref = _net(), _net()
    torch.manual_seed(5)
    _two_rounds(lprune, net, step)
    torch.manual_seed(5)
    _two_rounds(tprune, ref, step)
    assert_same_module(net, ref)


def test_failure_midway_writes_the_old_masks_back():
    """A failure after some masks were rewritten puts their old values back into the
    same objects; the pruned tensors are rebuilt as orig * mask."""
    from test_prune_overhead import _FailingHookRegistration
    torch.manual_seed(2)
    mods = [_FailingHookRegistration(6, 5) for _ in range(3)]
    pairs = [(m, "weight") for m in mods]
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    before = [(id(m.weight_mask), m.weight_mask.clone(), m.weight.detach().clone()) for m in mods]
    mods[2].fail = True
    with pytest.raises(RuntimeError, match="boom"):
        lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    mods[2].fail = False
    for m, (mask_id, mask, weight) in zip(mods, before):
        assert id(m.weight_mask) == mask_id and torch.equal(m.weight_mask, mask)
        assert torch.equal(m.weight, weight) and m.weight.grad_fn is not None


def test_no_grad_second_round_gives_a_tensor_without_history():
    net, ref = _net(), _net()
    with torch.no_grad():
        _two_rounds(lprune, net)
        _two_rounds(tprune, ref)
    assert_same_module(net, ref)
    assert net[0].weight.grad_fn is None and ref[0].weight.grad_fn is None


def test_deepcopy_and_later_rounds_after_an_in_place_round():
    net, ref = _net(), _net()
    for _ in range(2):
        _two_rounds(lprune, net)
        _two_rounds(tprune, ref)
    assert_same_module(copy.deepcopy(net), ref)
    gc.collect()
    out, want = net(torch.ones(1, 3, 4, 4)), ref(torch.ones(1, 3, 4, 4))
    assert torch.equal(out, want)


def test_a_mask_shared_by_two_modules_is_not_rewritten():
    """One mask object registered in two modules (a user's shortcut): each module
    gets its own new mask, and the shared one keeps its values."""
    torch.manual_seed(3)
    a, b, ra, rb = (nn.Linear(6, 5) for _ in range(4))
    rb.load_state_dict(b.state_dict())
    ra.load_state_dict(a.state_dict())
    shared = (torch.rand(5, 6) > 0.3).float()
    for lib, (x, y) in ((lprune, (a, b)), (tprune, (ra, rb))):
        lib.custom_from_mask(x, "weight", shared)
        lib.custom_from_mask(y, "weight", shared)
        x._buffers["weight_mask"] = y._buffers["weight_mask"] = shared
    before = shared.clone()
    lprune.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=lprune.L1Unstructured,
                               amount=0.4)
    tprune.global_unstructured([(ra, "weight"), (rb, "weight")], pruning_method=tprune.L1Unstructured,
                               amount=0.4)
    assert torch.equal(shared, before)
    assert a.weight_mask is not shared and b.weight_mask is not shared
    assert torch.equal(a.weight_mask, ra.weight_mask) and torch.equal(b.weight_mask, rb.weight_mask)
    assert torch.equal(a.weight, ra.weight) and torch.equal(b.weight, rb.weight)


def test_only_tensors_of_2_15_entries_or_more_are_rewritten(monkeypatch):
    """Small tensors come from heap pages already mapped and cost mostly Python time:
    they get new tensors, as before; large ones are rewritten."""
    monkeypatch.setattr(lprune_global, "_REWRITE_MIN_NUMEL", 1 << 15)
    torch.manual_seed(4)
    small, big = nn.Linear(8, 8), nn.Linear(256, 128)  # 64 and 32768 weights
    pairs = [(small, "weight"), (big, "weight")]
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    ids = [(id(m.weight_mask), m.weight.data_ptr()) for m, _ in pairs]
    lprune.global_unstructured(pairs, pruning_method=lprune.L1Unstructured, amount=0.3)
    assert id(big.weight_mask) == ids[1][0] and big.weight.data_ptr() == ids[1][1]
    # (ids and addresses of freed tensors may come back: the pruned tensor's history tells)
    assert type(small.weight.grad_fn).__name__ == "MulBackward0"
    assert type(big.weight.grad_fn).__name__ == "_MaskProductBackward"
