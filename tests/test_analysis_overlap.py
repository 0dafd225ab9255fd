"""Mask overlap (IoU of kept weights), early-bird stability and `lthfast compare` on
hand-made tickets with known answers."""
from __future__ import annotations

import warnings

import pytest
import torch

from _analysis_fixtures import mask, three_round_tickets, write_run
from lthfast.analysis import RunError, RunningWarning, early_bird, load_run, mask_overlap, random_iou
from lthfast.cli import main
from lthfast.ticket import Ticket


def test_iou_of_hand_made_masks():
    a = Ticket({"x": mask([1, 1, 0, 0]), "y": mask([1, 0, 1, 0, 1, 0], (2, 3))})
    b = Ticket({"x": mask([1, 0, 1, 0]), "y": mask([1, 0, 1, 0, 1, 0], (2, 3))})
    res = mask_overlap(a, b)
    by = {d["name"]: d for d in res["layers"]}
    assert by["x"]["iou"] == pytest.approx(1 / 3)   # {0} / {0, 1, 2}
    assert by["y"]["iou"] == 1.0
    assert res["overall"] == pytest.approx((1 + 3) / (3 + 3))
    assert by["x"]["kept_a"] == 2 and by["x"]["sparsity_b"] == 0.5


def test_iou_both_empty_is_one_and_disjoint_is_zero():
    a = Ticket({"x": mask([0, 0]), "z": mask([1, 0])})
    b = Ticket({"x": mask([0, 0]), "z": mask([0, 1])})
    by = {d["name"]: d["iou"] for d in mask_overlap(a, b)["layers"]}
    assert by == {"x": 1.0, "z": 0.0}


def test_random_iou_chance_level():
    assert random_iou(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    assert random_iou(0.0, 0.0) == 1.0
    # empirical check with large random masks
    g = torch.Generator().manual_seed(0)
    a = Ticket({"w": torch.rand(20000, generator=g) < 0.2})
    b = Ticket({"w": torch.rand(20000, generator=g) < 0.2})
    assert mask_overlap(a, b)["overall"] == pytest.approx(random_iou(0.8, 0.8), abs=0.02)


def test_different_layers_are_listed_or_compared_on_the_shared_ones():
    a = Ticket({"x": mask([1, 0]), "head_a": mask([1, 1])})
    b = Ticket({"x": mask([1, 1]), "head_b": mask([0, 1])})
    with pytest.raises(ValueError, match=r"only in the first: \['head_a'\].*only in the second: \['head_b'\]"):
        mask_overlap(a, b)
    res = mask_overlap(a, b, shared_only=True)
    assert [d["name"] for d in res["layers"]] == ["x"] and res["overall"] == 0.5
    assert res["only_a"] == ["head_a"] and res["only_b"] == ["head_b"]
    with pytest.raises(ValueError, match="shapes"):
        mask_overlap(Ticket({"x": mask([1, 0])}), Ticket({"x": mask([1, 0, 1])}))


def test_classifier_ticket_is_compared_on_the_detector_backbone():
    cls = Ticket({"conv1.weight": mask([1, 1, 0, 0]), "fc.weight": mask([1, 0])})
    det = Ticket({"backbone.body.conv1.weight": mask([1, 0, 0, 0]),
                  "rpn.head.conv.weight": mask([1, 1])})
    res = mask_overlap(cls, det, shared_only=True)
    assert [d["name"] for d in res["layers"]] == ["backbone.body.conv1.weight"]
    assert res["overall"] == 0.5


def test_early_bird_iou_with_final(tmp_path):
    rows = [{"round": r, "sparsity": s} for r, s in enumerate((0.0, 0.5, 0.75))]
    run = load_run(write_run(tmp_path / "run", three_round_tickets(), rows))
    eb = early_bird(run)
    assert [d["round"] for d in eb] == [0, 1, 2]
    assert [d["iou_with_final"] for d in eb] == pytest.approx([2 / 8, 2 / 4, 1.0])
    assert eb[1]["chance_iou"] == pytest.approx(random_iou(0.5, 0.75))
    assert early_bird(run.path) == eb  # a run directory path works too


def test_bad_run_directories(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        load_run(str(tmp_path / "nothing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunError, match="no config.json"):
        load_run(str(tmp_path / "plain"))
    empty = write_run(tmp_path / "empty", [], [], state="running")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RunError, match="empty"):
            load_run(empty)
    rows = [{"round": 0, "sparsity": 0.0}]
    running = write_run(tmp_path / "running", three_round_tickets()[:1], rows, state="running")
    with pytest.warns(RunningWarning, match="still being written"):
        assert load_run(running).rounds == [0]
    with pytest.raises(RunError, match="wait for it to finish"):
        load_run(running, allow_running=False)


def test_compare_cli_prints_the_overlap_table(tmp_path, capsys):
    a = Ticket({"x": mask([1, 1, 0, 0]), "y": mask([1, 1])})
    b = Ticket({"x": mask([1, 0, 1, 0]), "y": mask([1, 1])})
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "IoU" in out and "chance" in out and "0.333" in out
    total = [l for l in out.splitlines() if l.startswith("total")][0]
    assert "0.600" in total  # (1 + 2) / (3 + 2)


def test_compare_cli_errors(tmp_path, capsys):
    Ticket({"x": mask([1, 0])}).save(tmp_path / "a.safetensors")
    Ticket({"z": mask([1, 0])}).save(tmp_path / "b.safetensors")
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "missing")]) == 2
    assert "no such ticket file" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "different layers" in err and "'x'" in err and "'z'" in err and "--shared" in err
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--shared"]) == 2
    assert "share no layer" in capsys.readouterr().err


def test_early_bird_chance_is_per_layer(tmp_path):
    # a global ticket: layer "a" keeps all, layer "b" none in the final round; random
    # masks at these per-layer sparsities overlap by |a| / (|a| + 2), not by the
    # random_iou of the overall sparsities
    tickets = [Ticket({"a": mask([1] * 4), "b": mask([1] * 4)}),
               Ticket({"a": mask([1] * 4), "b": mask([1, 1, 0, 0])}, round=1),
               Ticket({"a": mask([1] * 4), "b": mask([0] * 4)}, round=2)]
    rows = [{"round": r, "sparsity": s} for r, s in enumerate((0.0, 0.25, 0.5))]
    eb = early_bird(load_run(write_run(tmp_path / "run", tickets, rows)))
    assert eb[1]["chance_iou"] == pytest.approx(4 / 6)  # b: 2 kept by round 1, 0 by the final
    assert eb[1]["chance_iou"] != pytest.approx(random_iou(0.25, 0.5))
    assert eb[2]["chance_iou"] == 1.0
