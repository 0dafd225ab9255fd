"""Perturbed masks (complement, random, swap) and their retraining through the IMP
engine's train_fn / eval_fn contract."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lthfast.analysis import complement, random_mask, retrain_perturbed, swap_mask
from lthfast.analysis.perturb import parse_kinds, perturbed, table
from lthfast.ticket import Ticket


def _ticket():
    g = torch.Generator().manual_seed(1)
    return Ticket({"a": torch.rand(10, 10, generator=g) < 0.5,
                   "b": torch.tensor([True] * 10 + [False] * 10)})


def test_complement_keeps_exactly_the_pruned_weights():
    t = _ticket()
    c = complement(t)
    for n in t.names():
        assert torch.equal(c[n], ~t[n])
    assert t.iou(c)["overall"] == 0.0


def test_random_mask_has_the_same_per_layer_sparsity():
    t = _ticket()
    r = random_mask(t, seed=3)
    assert r.kept_by_name() == t.kept_by_name()
    assert r != t
    assert random_mask(t, seed=3) == r  # seeded


def test_swap_moves_ten_percent_and_keeps_sparsity():
    t = _ticket()
    s = swap_mask(t, 0.1)
    assert s.kept_by_name() == t.kept_by_name()
    # layer b: 10 kept, 10 pruned -> 1 swapped each way: |a ∩ b| = 9, |a ∪ b| = 11
    assert t.iou(s)["by_name"]["b"] == pytest.approx(9 / 11)
    moved = (s["b"] != t["b"]).sum()
    assert moved == 2
    assert perturbed(t, "swap10") == swap_mask(t, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        swap_mask(t, 1.5)


def test_bad_kinds_are_named():
    assert parse_kinds("complement, random,swap25") == ["complement", "random", "swap25"]
    with pytest.raises(ValueError, match="'flip'"):
        parse_kinds("random,flip")
    with pytest.raises(ValueError, match="no perturbation kind"):
        parse_kinds(" , ")


def test_retrain_perturbed_applies_each_mask_from_the_rewind_point():
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = Ticket({"weight": torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool)})
    seen = []

    def train_fn(ctx):
        # what the run's training sees: the rewind weights, masked by the perturbed ticket
        w = ctx.model.weight.detach()
        assert torch.equal(w, start["weight"] * ctx.ticket["weight"])
        seen.append(ctx.ticket)
        return {}

    def eval_fn(m, ctx):
        return {"top1": float(ctx.ticket["weight"][:, 0].sum())}

    rows = retrain_perturbed(model, ticket, train_fn, eval_fn, kinds=["complement", "random", "swap10"])
    assert [r["kind"] for r in rows] == ["complement", "random", "swap10"]
    assert rows[0]["iou_with_ticket"] == 0.0 and rows[0]["sparsity"] == 0.5
    assert all(r["sparsity"] == 0.5 for r in rows)
    assert rows[0]["top1"] == 0.0  # the complement drops column 0
    t = table({"metric": "top1", "ticket": {"kind": "ticket", "sparsity": 0.5,
                                            "iou_with_ticket": 1.0, "top1": 3.0},
               "results": rows})
    assert t[1]["change vs ticket"] == -3.0 and t[0]["mask"] == "ticket"
