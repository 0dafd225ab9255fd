"""The scripts a session lent a GPU runs (tools/gpu_check.sh) must not fail there for
a reason a CPU run would show: each has a CPU dry run, exercised here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_gpu_smoke_dry_run():
    r = _run("tools/gpu_smoke.py", env={"LTHFAST_SMOKE_DEVICE": "cpu"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") >= 6, r.stdout


@pytest.mark.slow
def test_gpu_kernel_times_dry_run():
    r = _run("tools/gpu_kernel_times.py", "--device", "cpu", "--models", "resnet18",
             "--optim-model", "resnet18")
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("round 1 candidates", "round 1 no candidates", "round 2 candidates",
                 "round 2 no candidates"):
        assert line in r.stdout, r.stdout
    assert r.stdout.count("same masks") == 2, r.stdout  # each round: the two paths agree
    assert "MaskedSGD masks=bool" in r.stdout and "MaskedAdamW masks=bool" in r.stdout


def test_gpu_check_script_parses_and_knows_its_stages():
    r = subprocess.run(["bash", "-n", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "tools/gpu_check.sh", "nonsense"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OUT="/tmp/lthfast-gpu-check-test"))
    assert r.returncode == 2 and "kernels" in r.stdout
