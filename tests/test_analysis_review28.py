"""Regressions from review (stop 28) of the analyses: the overall chance IoU, shared
layers of another shape, the transferred layers' sparsity, damaged run files in the
report and in perturb."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from _analysis_fixtures import mask, three_round_tickets, write_run
from lthfast.analysis import RunError, mask_overlap
from lthfast.cli import main
from lthfast.ticket import Ticket


def test_overall_chance_follows_the_per_layer_sparsities(capsys, tmp_path):
    """x kept only in A, y only in B: chance 0 per layer, so 0 overall (was 1/3, the
    chance of the overall sparsities)."""
    a = Ticket({"x": mask([1] * 4), "y": mask([0] * 4)})
    b = Ticket({"x": mask([0] * 4), "y": mask([1] * 4)})
    assert mask_overlap(a, b)["chance"] == 0.0
    c = Ticket({"x": mask([1, 1, 0, 0]), "y": mask([1, 0, 0, 0])})
    d = Ticket({"x": mask([1, 0, 1, 0]), "y": mask([1, 1, 1, 0])})
    # E|a&b| = 4*.5*.5 + 4*.25*.75, E|a|b| = 4*(.5+.5-.25) + 4*(.25+.75-.1875)
    assert mask_overlap(c, d)["chance"] == pytest.approx((1 + 0.75) / (3 + 3.25))
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    total = [line for line in capsys.readouterr().out.splitlines() if line.startswith("total")][0]
    assert total.split()[-2:] == ["0.000", "0.000"]


def test_shared_layers_of_another_shape_are_listed_not_fatal(tmp_path, capsys):
    a = Ticket({"a.weight": mask([1, 1, 0, 0]), "head.weight": mask([1] * 6, (3, 2))})
    b = Ticket({"a.weight": mask([1, 0, 1, 0]), "head.weight": mask([1] * 10, (5, 2))})
    with pytest.raises(ValueError, match=r"disagree on layer shapes.*head\.weight.*shared_only"):
        mask_overlap(a, b)
    res = mask_overlap(a, b, shared_only=True)
    assert [d["name"] for d in res["layers"]] == ["a.weight"]
    assert res["mismatched"] == ["head.weight: (3, 2) vs (5, 2)"]
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--shared"]) == 0
    assert "not compared (other shapes): ['head.weight: (3, 2) vs (5, 2)']" in capsys.readouterr().out


def test_transferred_sparsity_counts_the_transferred_layers_only():
    from lthfast.transfer import transfer_ticket

    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.body = nn.Module()
            self.backbone.body.conv1 = nn.Conv2d(3, 4, 3, bias=False)
            self.head = nn.Linear(8, 50)  # in the target's pruned set, dense at the start

    src = Ticket({"conv1.weight": torch.arange(108).reshape(4, 3, 3, 3) % 4 != 0})  # 25% pruned
    t = transfer_ticket(src, Det(), names=["head.weight"])
    assert t.sparsity["transferred"] == pytest.approx(0.25)
    assert t.ticket.sparsity() < 0.25  # (the whole new ticket: head.weight is dense)


def _run(tmp_path, name="r", **kw):
    return write_run(tmp_path / name, three_round_tickets(),
                     [{"round": r, "sparsity": s, "bbox_AP": 30.0 - r} for r, s in
                      enumerate((0.0, 0.5, 0.75))], **kw)


def test_a_damaged_checkpoint_or_ticket_leaves_the_rest_of_the_report(tmp_path, capsys):
    bad, good = _run(tmp_path, "bad"), _run(tmp_path, "good")
    with open(os.path.join(bad, "checkpoint.pt"), "wb") as f:
        f.write(b"PK\x03\x04 not a checkpoint")
    with open(os.path.join(bad, "round_2", "ticket.safetensors"), "wb") as f:
        f.write(b"damaged")
    out = tmp_path / "page.html"
    assert main(["report", bad, good, "--out", str(out)]) == 0
    page = out.read_text()
    assert "Traceback" not in capsys.readouterr().err
    assert "bad: not available" in page
    assert "good: sparsity" in page  # the good run's per-layer table is still there
    assert "good" in page.split("Early-bird stability")[1]


@pytest.mark.parametrize("content", ["[]", "{\"tests\": [1]}", "{\"tests\": "])
def test_a_damaged_perturbation_file_is_named(tmp_path, content, capsys):
    run = _run(tmp_path)
    path = os.path.join(run, "perturbation.json")
    with open(path, "w") as f:
        f.write(content)
    from lthfast.analysis.perturb import load_results, perturbation
    with pytest.raises(RunError, match="perturbation.json"):
        load_results(run)
    with pytest.raises(RunError, match="perturbation.json"):
        perturbation(run, write=True)  # before any retraining
    out = tmp_path / "page.html"
    assert main(["report", run, "--out", str(out)]) == 0
    assert "perturbation.json" in out.read_text() and "Traceback" not in capsys.readouterr().err


def test_perturb_names_a_damaged_checkpoint(tmp_path, capsys):
    run = _run(tmp_path)
    with open(os.path.join(run, "checkpoint.pt"), "wb") as f:
        f.write(b"\x80\x02 garbage")
    assert main(["perturb", run]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: cannot read the run's checkpoint" in err and "Traceback" not in err


def test_a_layerwise_run_is_not_compared_with_itself(tmp_path):
    run = _run(tmp_path)
    cfg = json.load(open(os.path.join(run, "config.json")))
    cfg["schedule"]["layerwise"] = True
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    out = tmp_path / "page.html"
    assert main(["report", run, "--out", str(out)]) == 0
    assert "a --layerwise run: both masks would be its own ticket" in out.read_text()


def test_network_sparsity_of_a_ticket_with_names_the_model_lacks():
    from lthfast.transfer import network_sparsity
    model = nn.Sequential(nn.Linear(4, 2))
    t = Ticket({"0.weight": mask([1, 0, 1, 0, 1, 0, 1, 0], (2, 4)), "gone.weight": mask([1, 0])})
    assert network_sparsity(t, model)["transferred"] == 0.5  # (was a KeyError)


def test_perturb_refuses_round_0_of_a_late_resetting_run_before_building_it(tmp_path, monkeypatch):
    from lthfast.analysis import perturb as pt
    run = write_run(tmp_path / "r", [Ticket({"w": mask([1, 1, 0, 0])}),
                                     Ticket({"w": mask([1, 0, 0, 0])}, round=1)],
                    [{"round": 0, "sparsity": 0.5, "bbox_AP": 1.0},
                     {"round": 1, "sparsity": 0.75, "bbox_AP": 1.0}],
                    settings={"task": "detection", "rewind": "iter:5"})
    monkeypatch.setattr(pt, "_job_of_run", lambda *a: pytest.fail("built the job first"))
    with pytest.raises(RunError, match="round 0 trained from the initial weights"):
        pt.perturbation(run, round=0, write=False)
