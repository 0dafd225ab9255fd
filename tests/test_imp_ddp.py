"""Data-parallel IMP with 2 gloo processes on CPU: same masks on every rank (the
engine checks a digest of every mask), one set of files written by rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lthfast.optim")
pytest.importorskip("torchvision")  # the vision extra


def test_two_gloo_processes_run_imp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "lthfast", "imp", "--nproc", "2", "--task", "classification",
           "--model", "resnet18", "--image-size", "16", "--n-train", "16", "--n-val", "8",
           "--iters", "2", "--batch-size", "4", "--warmup", "1", "--device", "cpu", "--quiet",
           "--threads", "1", "--rounds", "1", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert proc.stdout.count("run directory:") == 1  # only rank 0 reports
