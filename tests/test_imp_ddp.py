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


_FAILING_RANK = '''
import sys, torch, torch.distributed as dist
from torch import nn
from lthfast.imp import ddp
from lthfast.imp.config import IMPConfig
from lthfast.imp.engine import run_imp
ddp.init("cpu")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
wrapped = ddp.wrap(model)
def train_fn(ctx):
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    for i in range(ctx.start_iter, 4):
        if ctx.round == 1 and dist.get_rank() == 1 and i == 2:
            raise ValueError("rank one broke on purpose")
        loss = wrapped(torch.randn(4, 8)).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        ctx.on_iter(i + 1, model)
run_imp(model, ["0.weight", "2.weight"], train_fn=train_fn, eval_fn=lambda m, c: {"acc": 1.0},
        config=IMPConfig(rounds=2), out=sys.argv[1])
'''


def test_status_names_the_cause_when_another_rank_fails(tmp_path):
    """Rank 0 only sees a broken collective when rank 1 fails; status.json (written by
    rank 0) names rank 1's error, which it left in the process group's store."""
    script, out = tmp_path / "fail.py", tmp_path / "run"
    script.write_text(_FAILING_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["round"] == 0
    assert status["error"].startswith("rank 1: ValueError: rank one broke on purpose"), status
