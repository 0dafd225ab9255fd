"""lthfast.Ticket: magnitude pruning vs torch.nn.utils.prune, IMP rounds, in-place
apply and mask_for, overlap, report, interop, and bad input."""
import copy
import gc
import weakref

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import lthfast
from lthfast import Ticket

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(36, 10), nn.ReLU(), nn.Linear(10, 5))


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


WEIGHTS = ["conv.weight", "up.weight", "head.1.weight", "head.3.weight"]


def _torch_global(model, amount, names=WEIGHTS):
    params = [(model.get_submodule(n.rpartition(".")[0]), "weight") for n in names]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return {n: getattr(m, "weight_mask").bool() for n, (m, _) in zip(names, params)}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)


def test_default_scope_and_global_masks_equal_torch():
    model = net()
    before = _state(model)
    t = Ticket.from_model(model, 0.3)
    assert t.names() == WEIGHTS and t.round == 1 and len(t) == 4
    assert _same_state(model, before)  # from_model does not modify the model
    want = _torch_global(copy.deepcopy(model), 0.3)
    for n in WEIGHTS:
        assert torch.equal(t[n], want[n]), n
    assert t.kept() == t.numel() - round(0.3 * t.numel())


def test_layerwise_equals_torch_per_tensor():
    model = net(1)
    t = Ticket.from_model(model, 0.4, layerwise=True)
    ref = copy.deepcopy(model)
    for n in WEIGHTS:
        mod = ref.get_submodule(n.rpartition(".")[0])
        torch_prune.l1_unstructured(mod, "weight", amount=0.4)
        assert torch.equal(t[n], mod.weight_mask.bool()), n
        assert t.kept(n) == t.numel(n) - round(0.4 * t.numel(n))
    assert t.layerwise and t.prune(model, 0.5).layerwise


def test_prune_remaining_counts_and_equals_torch_second_round():
    model = net(2)
    t1 = Ticket.from_model(model, 0.2)
    t1_copy = copy.deepcopy(t1)
    t2 = t1.prune(model, 0.2)
    assert t2.round == 2 and t1 == t1_copy and t1.round == 1
    assert t2.kept() == t1.kept() - round(0.2 * t1.kept())
    for n in WEIGHTS:
        assert not (t2[n] & ~t1[n]).any()  # pruned stays pruned
    ref = copy.deepcopy(model)
    _torch_global(ref, 0.2)
    want = _torch_global(ref, 0.2)
    assert all(torch.equal(t2[n], want[n]) for n in WEIGHTS)
    t3 = t2.prune(model, 7)  # an int is a count of the remaining weights
    assert t3.kept() == t2.kept() - 7 and t3.round == 3


def test_dense_ticket_then_prune():
    model = net(3)
    d = Ticket.dense(model)
    assert d.round == 0 and d.sparsity() == 0.0 and d.kept() == d.numel()
    assert d.prune(model, 0.3) == Ticket.from_model(model, 0.3)


def test_scope_and_exclude():
    model = net()
    t = Ticket.from_model(model, 0.5, scope=["conv.weight", "conv.bias"])
    assert t.names() == ["conv.weight", "conv.bias"]
    t = Ticket.from_model(model, 0.5, scope=lambda n, p, m: isinstance(m, nn.Linear))
    assert t.names() == ["head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"]
    t = Ticket.from_model(model, 0.5, exclude=["head.*", "up.weight"])
    assert t.names() == ["conv.weight"]


def test_apply_zeroes_in_place_and_binds_masks():
    model = net(4)
    t = Ticket.from_model(model, 0.6)
    before = _state(model)
    weight_ids = {n: id(model.get_parameter(n)) for n in WEIGHTS}
    assert t.apply(model) is model
    after = model.state_dict()
    assert list(after) == list(before)  # plain state_dict: no weight_orig / weight_mask
    assert not any(m._forward_pre_hooks for m in model.modules())
    for n in WEIGHTS:
        p = model.get_parameter(n)
        assert id(p) == weight_ids[n] and isinstance(p, nn.Parameter)
        m = t[n]
        assert torch.equal(p[m], before[n][m]) and (p[~m] == 0).all()
        # unpacked on demand, never cached: the binding keeps no bool mask alive
        assert torch.equal(t.mask_for(p), m) and t.mask_for(p) is not t.mask_for(p)
        assert t.name_of(p) == n and t.packed_for(p) is t.packed(n)  # the ticket's own tensor
    assert t._bindings.held() == []
    assert t.mask_for(model.conv.bias) is None and t.mask_for(torch.zeros(3)) is None
    assert torch.equal(after["conv.bias"], before["conv.bias"])
    assert Ticket.from_model(model, t.numel() - t.kept()) == t  # the zeros are exactly the pruned
    plain = net(4)
    plain.load_state_dict(after)  # loads into a plain model


def test_mask_for_channels_last_and_ticket_does_not_keep_model_alive():
    model = net(5).to(memory_format=torch.channels_last)
    t = Ticket.from_model(model, 0.5)
    t.apply(model)
    assert t.mask_for(model.conv.weight).shape == model.conv.weight.shape
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert len(t._bindings) == 0


def test_copies_do_not_share_bindings():
    import pickle
    model = net(9)
    t = Ticket.from_model(model, 0.5, meta={"k": [1]})
    t.apply(model)
    for c in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert c == t and c.meta == t.meta and c.mask_for(model.conv.weight) is None
    assert t.mask_for(model.conv.weight) is not None


def test_check_lists_every_problem_and_apply_changes_nothing():
    model = net(6)
    t = Ticket.from_model(model, 0.5)
    other = nn.Sequential(nn.Conv2d(3, 8, 5))
    with pytest.raises(ValueError, match="missing from the model") as e:
        t.check(other)
    assert "conv.weight" in str(e.value) and "head.3.weight" in str(e.value)
    bad = net(6)
    bad.head[3] = nn.Linear(10, 6)
    state = _state(bad)
    with pytest.raises(ValueError, match=r"shape mismatch: \['head.3.weight: ticket \(5, 10\), model \(6, 10\)'\]"):
        t.apply(bad)
    assert _same_state(bad, state)
    sub = Ticket.from_model(model, 0.5, scope=["conv.weight"])
    sub.check(model)
    with pytest.raises(ValueError, match="does not cover"):
        sub.check(model, strict=True)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        t.check("model")


def test_iou_by_hand():
    g = torch.Generator().manual_seed(0)
    a = {"x": torch.rand(10, 7, generator=g) < 0.4, "y": torch.rand(33, generator=g) < 0.7,
         "z": torch.zeros(5, dtype=torch.bool)}
    b = {"x": torch.rand(10, 7, generator=g) < 0.4, "y": torch.rand(33, generator=g) < 0.7,
         "z": torch.zeros(5, dtype=torch.bool)}
    res = Ticket(a).iou(Ticket(b))
    inter = {n: int((a[n] & b[n]).sum()) for n in a}
    union = {n: int((a[n] | b[n]).sum()) for n in a}
    assert res["by_name"]["x"] == inter["x"] / union["x"]
    assert res["by_name"]["y"] == inter["y"] / union["y"]
    assert res["by_name"]["z"] == 1.0  # both keep nothing
    assert res["overall"] == sum(inter.values()) / sum(union.values())
    assert Ticket(a).iou(Ticket(a))["overall"] == 1.0
    with pytest.raises(ValueError, match="different parameters"):
        Ticket(a).iou(Ticket({"x": a["x"]}))


def test_queries_repr_eq_to():
    g = torch.Generator().manual_seed(1)
    masks = {"a.weight": torch.rand(4, 3, generator=g) < 0.5, "b.weight": torch.ones(9, dtype=torch.bool)}
    t = Ticket(masks, round=3, meta={"seed": 1})
    assert list(t) == ["a.weight", "b.weight"] and "a.weight" in t and "c" not in t
    assert t.shapes == {"a.weight": (4, 3), "b.weight": (9,)} and t.numel() == 21
    assert t.kept("a.weight") == int(masks["a.weight"].sum()) and t.kept("b.weight") == 9
    assert t.sparsity() == pytest.approx(1 - t.kept() / 21)
    assert t.sparsity_by_name()["b.weight"] == 0.0
    assert "round=3" in repr(t) and "sparsity=" in repr(t)
    assert t.to("cpu") is t and t == Ticket(masks) and t != Ticket({"a.weight": masks["a.weight"]})
    assert t.packed("a.weight").numel() == 2
    with pytest.raises(KeyError, match="not in this ticket"):
        t["c.weight"]


def test_report_on_resnet18():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    t = Ticket.from_model(model, 0.9)
    rows = t.report()
    assert len(rows) == 21 and rows[0]["name"] == "conv1.weight"
    r = next(r for r in rows if r["name"] == "layer4.1.conv2.weight")
    m = t["layer4.1.conv2.weight"]
    assert r["zero_slices"] == int((~m.flatten(2).any(2)).sum()) and r["slice_kind"] == "kernels"
    fc = rows[-1]
    assert fc["name"] == "fc.weight" and fc["slice_kind"] == "rows"
    assert fc["zero_slices"] == int((~t["fc.weight"].any(1)).sum())
    assert sum(r["kept"] for r in rows) == t.kept() and r["shape"] == (512, 512, 3, 3)
    t.apply(model)
    rows = t.report(model)
    assert all(r["applied"] for r in rows) and rows[0]["module"] == "Conv2d"
    text = t.format_report(model)
    assert "layer4.1.conv2.weight" in text and "total" in text and "90.00%" in text
    assert ("layer collapse" in text) == any(r["kept"] == 0 for r in rows)
    fresh = torchvision.models.resnet18()
    with torch.no_grad():  # a layer pruned to nothing is named under the table
        fresh.fc.weight.mul_(1e-6)
    half = Ticket.from_model(fresh, 0.5)
    assert half.collapsed() == ["fc.weight"] and t.collapsed() == []
    collapsed = half.format_report()
    assert collapsed.splitlines()[-1] == "layer collapse (no weight kept): fc.weight"


def test_from_pruned_and_to_pruned_roundtrip():
    model = net(7)
    ref = copy.deepcopy(model)
    want = _torch_global(ref, 0.35)
    t = Ticket.from_pruned(ref)
    assert set(t.names()) == set(WEIGHTS) and all(torch.equal(t[n], want[n]) for n in WEIGHTS)
    fresh = net(7)
    t.to_pruned(fresh)
    assert hasattr(fresh.conv, "weight_orig") and torch.equal(fresh.conv.weight_mask.bool(), t["conv.weight"])
    assert Ticket.from_pruned(fresh) == t
    with pytest.raises(ValueError, match="already pruned|torch.nn.utils.prune hooks"):
        t.to_pruned(fresh)
    with pytest.raises(ValueError, match="torch.nn.utils.prune hooks"):
        t.apply(fresh)
    with pytest.raises(ValueError, match="no pruned parameters"):
        Ticket.from_pruned(net())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                   torch.int32], ids=str)
def test_from_pruned_reads_masks_as_nonzero(dtype):
    """Float masks are packed as they are (no bool copy), with `mask != 0`'s meaning:
    -0.0 pruned, NaN and values other than 1 kept; other dtypes through `!= 0`."""
    model = net(3)
    conv = model.conv
    torch.nn.utils.prune.identity(conv, "weight")
    mask = (torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5).to(dtype)
    if dtype.is_floating_point:
        mask.view(-1)[:3] = torch.tensor([-0.0, float("nan"), 0.5]).to(dtype)
    conv.weight_mask = mask
    t = Ticket.from_pruned(model)
    assert torch.equal(t["conv.weight"], mask != 0)
    assert t.kept("conv.weight") == int((mask != 0).sum())


def test_from_lthfast_prune():
    import lthfast.prune as lprune
    model = net(8)
    params = [(model.get_submodule(n.rpartition(".")[0]), "weight") for n in WEIGHTS]
    lprune.global_unstructured(params, pruning_method=lprune.L1Unstructured, amount=0.5)
    t = Ticket.from_pruned(model)
    assert t == Ticket.from_model(net(8), 0.5)


@pytest.mark.parametrize("amount", [1.5, -0.1, float("nan"), 10**9, -1, "half", True])
def test_bad_amount_changes_nothing(amount):
    model = net()
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match="amount"):
        Ticket.from_model(model, amount)
    with pytest.raises((ValueError, TypeError), match="amount"):
        Ticket.from_model(model, amount, layerwise=True)
    t = Ticket.from_model(model, 0.5)
    with pytest.raises((ValueError, TypeError), match="amount"):
        t.prune(model, amount)
    assert _same_state(model, state)


def test_unsupported_parameters():
    model = net()
    model.register_parameter("ints", nn.Parameter(torch.ones(3, dtype=torch.int64), requires_grad=False))
    model.register_parameter("cplx", nn.Parameter(torch.ones(3, dtype=torch.complex64)))
    Ticket.from_model(model, 0.5)  # the default scope does not pick them
    with pytest.raises(TypeError, match="'ints' has dtype torch.int64"):
        Ticket.from_model(model, 0.5, scope=["conv.weight", "ints"])
    with pytest.raises(TypeError, match="'cplx' has dtype torch.complex64"):
        Ticket.from_model(model, 0.5, scope=lambda n, p, m: n == "cplx")
    model.register_parameter("sp", nn.Parameter(torch.eye(3).to_sparse()))
    with pytest.raises(ValueError, match="'sp' has layout"):
        Ticket.from_model(model, 0.5, scope=["sp"])
    with pytest.raises(ValueError, match="does not have"):
        Ticket.from_model(model, 0.5, scope=["nope.weight"])
    with pytest.raises(ValueError, match="no parameter is selected"):
        Ticket.from_model(model, 0.5, exclude="*")
    model = net()
    model.register_parameter("ints", nn.Parameter(torch.ones(3, dtype=torch.int64), requires_grad=False))
    t = Ticket({"ints": torch.ones(3, dtype=torch.bool), "conv.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)})
    state = _state(model)
    with pytest.raises(ValueError, match="unsupported parameters:.*'ints' has dtype torch.int64"):
        t.apply(model)
    assert _same_state(model, state)
    with pytest.raises(TypeError, match="torch.bool"):
        Ticket({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="round"):
        Ticket({"a": torch.ones(3, dtype=torch.bool)}, round=-1)


def test_prune_reads_the_tickets_bits_as_the_unpacked_masks_give(monkeypatch):
    """Ticket.prune passes its packed masks to the op as the eligibility (no bool mask
    per tensor): the same ticket as through unpacked masks; bad amounts keep their
    documented errors."""
    import lthfast.ticket._core as core
    model = net(5)
    t1 = Ticket.from_model(model, 0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # trained a little: new magnitudes
    via_bits = t1.prune(model, 0.4)
    monkeypatch.setattr(core, "_global_masks_from_bits", lambda *a: None)
    assert t1.prune(model, 0.4) == via_bits and via_bits.round == 2
    monkeypatch.undo()
    for bad, err in ((1.5, ValueError), (True, TypeError), (10**9, ValueError)):
        with pytest.raises(err, match="amount"):
            t1.prune(model, bad)


def test_bindings_survive_swapped_conversions():
    """Bindings hold no weak reference to the parameters: torch.utils.swap_tensors
    refuses those, so `model.to(...)` and `load_state_dict` failed after apply under
    torch.__future__.set_swap_module_params_on_conversion(True). A swap keeps the
    Parameter object, and its binding; a parameter replaced in the model is unbound."""
    model = net(7)
    t = Ticket.from_model(model, 0.5)
    t.apply(model)
    ids = {n: id(model.get_parameter(n)) for n in WEIGHTS}
    state = copy.deepcopy(model.state_dict())
    was = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
        model.load_state_dict({k: v.double() for k, v in state.items()})
    finally:
        torch.__future__.set_swap_module_params_on_conversion(was)
    for n in WEIGHTS:
        p = model.get_parameter(n)
        assert id(p) == ids[n] and p.dtype == torch.float64
        assert t.name_of(p) == n and torch.equal(t.mask_for(p), t[n])
    assert len(t._bindings) == len(WEIGHTS)
    old = model.conv.weight
    model.conv.weight = nn.Parameter(old.detach().clone())
    assert t.mask_for(model.conv.weight) is None and t.mask_for(old) is None
    assert len(t._bindings) == len(WEIGHTS) - 1
    opt = lthfast.optim.MaskedSGD(model.parameters(), lr=0.1, ticket=t)  # finds the rest
    assert opt.mask_of(model.get_parameter(WEIGHTS[-1])) is not None


def test_a_ticket_applied_to_two_models_binds_both():
    a, b = net(8), net(8)
    t = Ticket.from_model(a, 0.5)
    t.apply(a)
    t.apply(b)
    for m in (a, b):
        assert all(t.name_of(m.get_parameter(n)) == n for n in WEIGHTS)
    del a
    gc.collect()
    assert len(t._bindings) == len(WEIGHTS)
    assert t.name_of(b.conv.weight) == "conv.weight"
