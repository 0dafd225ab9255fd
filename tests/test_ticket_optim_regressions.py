"""Regression tests for bugs found by review: optimizer copies, add_param_group
atomicity, GradScaler-skipped first SGD steps, tied weights and DataParallel names
in Ticket, and ticket-file metadata errors."""
import copy
import io
import json
import struct

import pytest
import torch
from torch import nn

import lthfast
from _ticket_files import reseal
import lthfast.optim as lo

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


@pytest.mark.parametrize("cls", [lo.MaskedSGD, lo.MaskedAdamW])
@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copied_optimizer_keeps_masking(cls, how):
    """torch.optim.Optimizer pickles defaults/state/param_groups only: the copy lost its
    masks and its next step raised AttributeError ('_masks')."""
    model = _net()
    ticket = lthfast.Ticket.from_model(model, 0.5)
    ticket.apply(model)
    opt = cls(model.parameters(), lr=0.1, ticket=ticket)
    _set_grads(model.parameters(), 0)
    opt.step()
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        buf = io.BytesIO()
        torch.save((model, opt), buf)
        buf.seek(0)
        model2, opt2 = torch.load(buf, weights_only=False)
    params2 = list(model2.parameters())
    assert [id(p) for g in opt2.param_groups for p in g["params"]] == [id(p) for p in params2]
    for p, p2 in zip(model.parameters(), params2):
        m, m2 = opt.mask_of(p), opt2.mask_of(p2)
        assert (m is None) == (m2 is None) and (m is None or torch.equal(m, m2))
    _set_grads(model.parameters(), 1)
    _set_grads(params2, 1)
    opt.step()
    opt2.step()
    for p, p2 in zip(model.parameters(), params2):
        assert torch.equal(p, p2)
    for n in ticket:
        assert bool((model2.get_parameter(n)[~ticket[n]] == 0).all())


@pytest.mark.parametrize("with_ticket", [False, True])
def test_add_param_group_with_a_bad_param_changes_nothing(with_ticket):
    model = _net()
    params = list(model.parameters())
    ticket = lthfast.Ticket.from_model(model, 0.5)
    ticket.apply(model)
    opt = lo.MaskedAdam(params[:2], lr=0.1, ticket=ticket if with_ticket else None)
    bad = nn.Parameter(torch.zeros(3, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match=r"parameter 3 .*int32"):
        opt.add_param_group({"params": [params[2], bad]})
    assert len(opt.param_groups) == 1 and opt.packed_mask_of(params[2]) is None
    # a generator of params is read once, and the group still works
    opt.add_param_group({"params": (p for p in params[2:]), "lr": 0.2})
    assert len(opt.param_groups[1]["params"]) == 2
    assert (opt.packed_mask_of(params[2]) is not None) == with_ticket


def test_sgd_dampening_after_a_grad_scaler_skipped_first_step_matches_torch():
    """A first step skipped by GradScaler left a zero momentum buffer, so the next step
    dampened the grad (buf = (1 - dampening) * g) where torch.optim.SGD starts afresh."""
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(5))]
    twin = [nn.Parameter(p.detach().clone()) for p in ours]
    mask = torch.rand(6, 5) > 0.5
    with torch.no_grad():
        twin[0].mul_(mask)
    kw = dict(lr=0.01, momentum=0.9, dampening=0.3)
    a = lo.MaskedSGD(ours, masks={ours[0]: mask}, **kw)
    b = torch.optim.SGD(twin, foreach=False, **kw)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) for _ in range(2)]
    for step in range(4):
        grads = [torch.randn_like(p) for p in ours]
        if step == 0:
            grads[1][2] = float("inf")  # overflow: both skip this step
        for scaler, params, opt, masked in ((scalers[0], ours, a, False), (scalers[1], twin, b, True)):
            scaler.scale(torch.tensor(1.0))
            for p, g in zip(params, grads):
                p.grad = g * scaler.get_scale()
            if masked:
                params[0].grad.mul_(mask)
            scaler.step(opt)
            scaler.update()
            if masked:
                with torch.no_grad():
                    params[0].mul_(mask)
        if step == 0:
            assert "momentum_buffer" not in a.state[ours[0]]
    for p, t in zip(ours, twin):
        torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-6, atol=1e-7)


class _Tied(nn.Module):
    """A language-model head tied to its embedding (one Parameter, two names)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight


def test_ticket_on_tied_weights():
    torch.manual_seed(0)
    model = _Tied()
    # the default scope covers the head Linear's weight, even though named_parameters()
    # lists that tensor first as the Embedding's "emb.weight"
    ticket = lthfast.Ticket.from_model(model, 0.5)
    assert ticket.names() == ["mid.weight", "out.weight"]
    # as torch.nn.utils.prune's global pruning of the same (module, "weight") pairs
    ref = _Tied()
    ref.load_state_dict(model.state_dict())
    torch.nn.utils.prune.global_unstructured([(ref.mid, "weight"), (ref.out, "weight")],
                                             torch.nn.utils.prune.L1Unstructured, amount=0.5)
    assert lthfast.Ticket.from_pruned(ref) == ticket
    # alias names work in scope= / check / apply; a tensor is selected once
    only = lthfast.Ticket.from_model(model, 0.5, scope=["out.weight", "emb.weight"])
    assert only.names() == ["emb.weight"]
    assert lthfast.Ticket.from_model(model, 0.5, exclude="emb.*").names() == ["mid.weight"]
    ticket.apply(model)
    assert bool((model.emb.weight[~ticket["out.weight"]] == 0).all())
    opt = lo.MaskedSGD(model.parameters(), lr=0.1, ticket=ticket)
    assert opt.packed_mask_of(model.emb.weight) is not None
    ticket.prune(model, 0.5)
    # two masks for one tensor: a clear error, nothing applied
    both = lthfast.Ticket({"emb.weight": torch.ones(10, 6, dtype=torch.bool),
                           "out.weight": torch.zeros(10, 6, dtype=torch.bool)})
    before = model.emb.weight.detach().clone()
    with pytest.raises(ValueError, match=r"tied parameter.*emb\.weight and out\.weight"):
        both.apply(model)
    assert torch.equal(model.emb.weight, before)


def test_ticket_names_of_a_data_parallel_model_get_a_hint():
    model = _net()
    wrapped = nn.DataParallel(model)
    t = lthfast.Ticket.from_model(wrapped, 0.5)
    with pytest.raises(ValueError, match=r"missing from the model.*DataParallel.*wrapped model"):
        t.apply(model)
    with pytest.raises(ValueError, match=r"wrapped in DataParallel.*model\.module"):
        lthfast.Ticket.from_model(model, 0.5).apply(wrapped)
    t.apply(wrapped)  # binds the same tensors the inner model holds
    assert len(lo.MaskedSGD(model.parameters(), lr=0.1, ticket=t).param_groups) == 1
    assert all(lo.MaskedSGD(model.parameters(), lr=0.1, ticket=t).packed_mask_of(p) is not None
               for p in (model[0].weight, model[2].weight))


def test_scope_of_a_wrong_type_is_a_clear_error():
    with pytest.raises(TypeError, match=r"scope must be parameter names or a callable.*got 5"):
        lthfast.Ticket.from_model(_net(), 0.5, scope=5)
    with pytest.raises(TypeError, match=r"exclude must be parameter names or glob patterns"):
        lthfast.Ticket.from_model(_net(), 0.5, exclude=3)


def _rewrite_metadata(src, dst, **changes):
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    h = json.dumps(reseal(header)).encode()
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + raw[8 + n:])


@pytest.mark.parametrize("changes, msg", [
    (dict(round="-3"), r"metadata 'round' is -3"),
    (dict(layerwise="yes"), r"metadata 'layerwise' is 'yes'"),
])
def test_ticket_file_bad_round_or_layerwise_names_the_file(tmp_path, changes, msg):
    t = lthfast.Ticket.from_model(_net(), 0.5)
    t.save(tmp_path / "t.safetensors")
    _rewrite_metadata(tmp_path / "t.safetensors", tmp_path / "bad.safetensors", **changes)
    with pytest.raises(ValueError, match=r"bad\.safetensors.*" + msg):
        lthfast.Ticket.load(tmp_path / "bad.safetensors")
    # a file written before 'layerwise' existed still loads
    raw = open(tmp_path / "t.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    del header["__metadata__"]["layerwise"]
    del header["__metadata__"]["header_crc32"]  # nor its header CRC
    h = json.dumps(header).encode()
    (tmp_path / "old.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    assert lthfast.Ticket.load(tmp_path / "old.safetensors") == t


def test_from_model_names_layers_under_prune_hooks():
    """The default scope sees a hooked layer's weight as `weight_orig`: it used to leave the
    layer out without a word (or blame scope= when every layer was hooked)."""
    import torch.nn.utils.prune as tprune

    model = _net()
    tprune.l1_unstructured(model[0], "weight", 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for make in (lambda: lthfast.Ticket.from_model(model, 0.5), lambda: lthfast.Ticket.dense(model)):
        with pytest.raises(ValueError, match=r"torch\.nn\.utils\.prune hooks.*\['0\.weight'\].*from_pruned"):
            make()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # what the message says to do works
    assert lthfast.Ticket.from_pruned(model).names() == ["0.weight"]
    tprune.remove(model[0], "weight")
    assert lthfast.Ticket.from_model(model, 0.5).names() == ["0.weight", "2.weight"]
    # an explicit scope is the user's choice
    tprune.l1_unstructured(model[2], "weight", 0.5)
    assert lthfast.Ticket.from_model(model, 0.5, scope=["0.weight"]).names() == ["0.weight"]


@pytest.mark.parametrize("bad", ["false", "no", 2, None, 0.5])
def test_layerwise_must_be_a_bool(bad):
    from lthfast.imp import IMPConfig

    model = _net()
    t = lthfast.Ticket.from_model(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"layerwise must be True or False, got " + repr(bad)):
        lthfast.Ticket.from_model(model, 0.5, layerwise=bad)
    if bad is not None:  # (None: prune keeps the ticket's own setting)
        with pytest.raises(TypeError, match=r"layerwise must be True or False"):
            t.prune(model, 0.5, layerwise=bad)
    with pytest.raises(TypeError, match=r"layerwise must be True or False"):
        lthfast.Ticket({"0.weight": torch.ones(5, 6, dtype=torch.bool)}, layerwise=bad)
    with pytest.raises(TypeError, match=r"layerwise must be True or False"):
        IMPConfig(layerwise=bad)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert lthfast.Ticket.from_model(model, 0.5, layerwise=1).layerwise is True
    assert t.prune(model, 0.5, layerwise=0).layerwise is False


@pytest.mark.parametrize("bad", [None, 5, ["t.safetensors"]])
def test_save_and_load_name_a_bad_path(bad, tmp_path):
    t = lthfast.Ticket.from_model(_net(), 0.5)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike, got " + repr(bad).replace("[", r"\[")):
        t.save(bad)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        lthfast.Ticket.load(bad)


def test_from_model_refuses_a_sparsified_model():
    """sparsify keeps pruned weights (the mask buffer masks them): masks drawn from the
    weights kept entries the model does not use (stop 29)."""
    from lthfast.nn import MaskedLinear, sparsify
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    ticket = lthfast.Ticket.from_model(model, 0.8)
    sparse = sparsify(copy.deepcopy(model), ticket)
    for make in (lambda: lthfast.Ticket.from_model(sparse, 0.5), lambda: lthfast.Ticket.dense(sparse)):
        with pytest.raises(ValueError, match=r"lthfast.nn masked layers.*\['1.weight'\].*densify"):
            make()
    assert ticket.prune(sparse, 0.5).sparsity() == pytest.approx(0.9, abs=0.01)  # the way to go on
    # a masked layer whose mask prunes nothing (built with lthfast.nn) is fine
    assert lthfast.Ticket.from_model(nn.Sequential(MaskedLinear(4, 4)), 0.5).sparsity() == 0.5


def test_an_exclude_pattern_that_matches_nothing_is_refused():
    # stop 30: exclude="0" (meant: module 0) matched no parameter and excluded nothing
    from lthfast import Ticket
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"exclude patterns match no parameter.*\['0'\].*\['0\.\*'\]"):
        Ticket.from_model(m, 0.5, exclude="0")
    t = Ticket.from_model(m, 0.5, exclude="0.*")
    assert t.names() == ["1.weight"]
