"""`lthfast imp`: help, argument errors, a tiny classification run and its resume."""
from __future__ import annotations

import json

import pytest
import torch

from lthfast.cli import main

pytest.importorskip("lthfast.optim")

TINY = ["--task", "classification", "--model", "resnet18", "--image-size", "16",
        "--n-train", "16", "--n-val", "8", "--iters", "2", "--batch-size", "4",
        "--warmup", "1", "--device", "cpu", "--quiet", "--threads", "1"]


def test_help_explains_rounds_and_rewinding(capsys):
    assert main(["imp", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--rounds", "--rate", "--rewind", "iter:K", "--resume", "--scope", "report.html",
                 "--nproc", "metrics.json"):
        assert word in out, word


@pytest.mark.parametrize("argv, message", [
    (["--rate", "1.5"], "not a fraction"),
    (["--rate", "20"], "not a fraction"),
    (["--iters", "0"], "positive"),
    (TINY + ["--rewind", "iter:x"], "iter:K"),
    (TINY + ["--rewind", "pretrained"], "--weights"),
    (TINY + ["--rewind", "iter:99"], "beyond --iters"),
    (TINY + ["--device", "tpu"], "--device"),
    (TINY + ["--amp"], "--amp needs"),
    (["--lr-steps", "5,2"], "increasing"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    assert main(["imp", *argv]) == 2
    assert message in capsys.readouterr().err


def test_nproc_reruns_the_command_it_was_given(monkeypatch):
    # main(argv) from Python: torchrun must get this argv, not the process's sys.argv
    import lthfast.imp.ddp as ddp
    got = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(ddp, "spawn", lambda n, argv: got.append((n, argv)) or 0)
    assert main(["imp", "--nproc", "2", "--iters", "3"]) == 0
    assert got == [(2, ["imp", "--nproc", "2", "--iters", "3"])]


def test_resume_of_nothing(tmp_path, capsys):
    assert main(["imp", "--resume", str(tmp_path / "none")]) == 2
    assert "no run there" in capsys.readouterr().err


def test_tiny_classification_run_then_grow_it_with_resume(tmp_path, capsys):
    pytest.importorskip("torchvision")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    assert main(["imp", *TINY, "--rounds", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # --threads 1 was for the run only
    printed = capsys.readouterr().out
    assert "sparsity" in printed and "top1" in printed and "report.html" in printed
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["iters"] == 2 and cfg["schedule"]["rate"] == 0.2

    # a flag that would change the results is refused; --rounds may grow the run
    assert main(["imp", "--resume", str(out), "--rate", "0.5"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["imp", "--resume", str(out), "--rounds", "2", "--quiet"]) == 0
    rows2 = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows2] == [0, 1, 2]
    assert rows2[:2] == rows
    assert rows2[2]["sparsity"] == pytest.approx(0.36, abs=1e-3)


def test_same_seed_same_run(tmp_path, capsys):
    """--seed fixes the whole run, initial weights included (torch's default generator
    starts from a random seed in each process; here the global state simply differs)."""
    pytest.importorskip("torchvision")
    rows = []
    for run, noise in (("a", 123), ("b", 456)):
        torch.manual_seed(noise)
        assert main(["imp", *TINY, "--rounds", "1", "--out", str(tmp_path / run)]) == 0
        got = json.loads((tmp_path / run / "metrics.json").read_text())
        rows.append([{k: v for k, v in r.items() if "time" not in k and "second" not in k and not k.endswith("_s")
                      and "per_iter" not in k} for r in got])
    assert rows[0] == rows[1]
    a = (tmp_path / "a" / "round_1" / "ticket.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "round_1" / "ticket.safetensors").read_bytes()


@pytest.mark.parametrize("task, metric", [("detection", "bbox_AP"), ("segmentation", "segm_AP"),
                                          ("keypoints", "keypoints_AP")])
def test_tiny_detection_task_runs_end_to_end(task, metric, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchvision")
    pytest.importorskip("pycocotools")
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / task
    argv = ["imp", "--task", task, "--iters", "2", "--rounds", "1", "--n-train", "4",
            "--n-val", "2", "--image-size", "64", "--rewind", "iter:1", "--quiet",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    assert metric in capsys.readouterr().out
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=1e-3)  # the demo's rate
    assert {"sparsity_backbone", "sparsity_roi_heads", metric, "bbox_AP"} <= set(rows[1])
    names = (out / "pruned_params.txt").read_text().split()
    assert "backbone.body.conv1.weight" not in names  # the paper preset keeps the stem dense
