"""End to end: tiny classification and detection runs, a ticket transferred from the
classifier onto the detector's backbone (`lthfast imp --ticket`), a perturbation test
(`lthfast perturb`), `lthfast compare` and the `lthfast report` page with its images."""
from __future__ import annotations

import base64
import json
import re

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("lthfast.optim")

from _analysis_fixtures import three_round_tickets, write_run  # noqa: E402
from lthfast.cli import main  # noqa: E402
from lthfast.ticket import Ticket  # noqa: E402

COMMON = ["--iters", "2", "--batch-size", "2", "--warmup", "1", "--device", "cpu", "--quiet",
          "--threads", "1"]
CLS = ["--task", "classification", "--model", "resnet18", "--image-size", "16", "--n-train",
       "16", "--n-val", "8", *COMMON]
DET = ["--n-train", "8", "--n-val", "4", "--image-size", "64", *COMMON]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTHFAST_DATA_DIR", str(root / "data"))
    try:
        assert main(["imp", *CLS, "--rounds", "1", "--out", str(root / "cls")]) == 0
        assert main(["imp", *DET, "--rounds", "1", "--out", str(root / "det")]) == 0
        ticket = str(root / "cls" / "round_1" / "ticket.safetensors")
        assert main(["imp", *DET, "--ticket", ticket, "--out", str(root / "det_t")]) == 0
        yield {k: str(root / k) for k in ("cls", "det", "det_t")}
    finally:
        mp.undo()


def _images(html: str) -> dict:
    return dict(re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', html))


def test_transferred_ticket_trains_with_the_mask_fixed(runs):
    cfg = json.load(open(f"{runs['det_t']}/config.json"))
    assert cfg["transfer"]["kind"] == "classifier->backbone"
    assert cfg["transfer"]["unmapped_source"] == ["fc.weight"]
    assert cfg["schedule"]["rounds"] == 0          # --ticket alone: no further pruning
    rows = json.load(open(f"{runs['det_t']}/metrics.json"))
    assert len(rows) == 1
    assert rows[0]["sparsity_backbone"] > 0.19      # the classifier ticket's 20% (+ dense conv1 etc.)
    assert 0 < rows[0]["sparsity_network"] < rows[0]["sparsity"]
    t0 = Ticket.load(f"{runs['det_t']}/round_0/ticket.safetensors")
    src = Ticket.load(f"{runs['cls']}/round_1/ticket.safetensors")
    assert (t0["backbone.body.layer1.0.conv1.weight"] == src["layer1.0.conv1.weight"]).all()


def test_ticket_that_does_not_fit_is_refused_with_its_layers(runs, tmp_path, capsys):
    import torch
    bad = tmp_path / "bad.safetensors"
    Ticket({"conv1.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)}).save(bad)
    assert main(["imp", *DET, "--ticket", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "conv1.weight" in err and "(8, 3, 3, 3)" in err and "shape mismatch" in err


def test_perturb_then_report(runs, tmp_path, capsys):
    assert main(["perturb", runs["cls"], "--kinds", "random,swap10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "swap10" in out and "IoU with ticket" in out
    saved = json.load(open(f"{runs['cls']}/perturbation.json"))
    assert [r["kind"] for r in saved["tests"][0]["results"]] == ["random", "swap10"]

    page = tmp_path / "report.html"
    assert main(["report", runs["det"], runs["det_t"], runs["cls"], "--out", str(page)]) == 0
    err = capsys.readouterr().err
    assert "different tasks" in err and "cls: classification" in err
    html = page.read_text()
    imgs = _images(html)
    for alt in ("detection: sparsity vs metric", "classification: sparsity vs metric",
                "AP by size", "AP by frequency", "AP by difficulty", "early-bird stability",
                "per-layer structure", "per-layer IoU", "layer-wise vs global", "perturbation"):
        assert alt in imgs, alt
    for b64 in imgs.values():
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Ticket transfer" in html and "classifier-&gt;backbone" in html
    for title in ("AP by object size", "Mask overlap", "Early-bird", "Per-layer structure",
                  "Layer-wise vs global", "Perturbation tests"):
        assert title in html
    assert "not available" not in html
    assert "src=\"http" not in html  # self-contained


def test_compare_runs_classifier_vs_detector(runs, capsys):
    assert main(["compare", runs["cls"], runs["det_t"], "--shared"]) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("backbone.body.layer1.0.conv1.weight")][0]
    assert line.split()[-2] == "1.000"   # the transferred layer is the classifier's mask


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    empty = write_run(tmp_path / "empty", [], [], state="running")
    assert main(["report", empty, "--out", str(tmp_path / "r.html")]) == 2
    assert "empty" in capsys.readouterr().err
    rows = [{"round": r, "sparsity": s, "top1": 50.0} for r, s in enumerate((0.0, 0.5))]
    running = write_run(tmp_path / "running", three_round_tickets()[:2], rows, state="running",
                        task="classification")
    assert main(["report", running, "--out", str(tmp_path / "r.html")]) == 0
    assert "still being written" in capsys.readouterr().err
    assert "still being written" in (tmp_path / "r.html").read_text()
    assert main(["perturb", running]) == 2
    assert "wait for it to finish" in capsys.readouterr().err
    assert main(["report", running, running, "--labels", "a", "--out", str(tmp_path / "r.html")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_report_pairs_a_global_and_a_layerwise_run(tmp_path):
    from lthfast.analysis.report import build_report
    rows = [{"round": r, "sparsity": s, "top1": 50.0 - 10 * r} for r, s in enumerate((0.0, 0.5, 0.75))]
    g = write_run(tmp_path / "global", three_round_tickets(), rows, task="classification")
    lw = write_run(tmp_path / "layerwise", three_round_tickets(), rows, task="classification")
    cfg = json.load(open(f"{lw}/config.json"))
    cfg["schedule"]["layerwise"] = True
    json.dump(cfg, open(f"{lw}/config.json", "w"))
    out, notes = build_report([g, lw], str(tmp_path / "r.html"))
    html = open(out).read()
    imgs = _images(html)
    assert notes == []
    assert "layer-wise vs global runs" in imgs and "per-layer IoU" in imgs
    assert "not available" in html  # hand-made runs have no checkpoint.pt: said, not fatal


def test_perturb_refuses_bad_rounds_and_kinds(runs, capsys):
    assert main(["perturb", runs["cls"], "--round", "0"]) == 2
    assert "dense" in capsys.readouterr().err
    assert main(["perturb", runs["cls"], "--round", "7"]) == 2
    assert "finished rounds: [0, 1]" in capsys.readouterr().err
    assert main(["perturb", runs["cls"], "--kinds", "flip"]) == 2
    assert "'flip'" in capsys.readouterr().err


def test_perturb_on_a_ticket_run_says_why_not(runs, capsys):
    """Round 0 of an `imp --ticket` run is the transferred (sparse) ticket: it was refused
    as "the dense model"; it cannot be retrained because the run rewinds to iteration K."""
    assert main(["perturb", runs["det_t"]]) == 2
    err = capsys.readouterr().err
    assert "dense" not in err and "round 0 trained from the initial weights" in err
