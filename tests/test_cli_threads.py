"""`--threads N` of `lthfast prune`, `perturb` and `bench` (as in `lthfast imp`): the
command's work runs on N torch threads, the caller's count comes back after main(), and
bad values are usage errors that name the option."""
from __future__ import annotations

import json

import pytest
import torch
from _cli_env import kernels_or_reference, needs_torchvision  # noqa: F401 (autouse fixture)

from lthfast.cli import main

SMALL = "squeezenet1_1"  # 1.2M prunable weights: the fast model
COMMANDS = ("prune", "perturb", "bench")


@pytest.fixture
def caller_threads():
    """The caller runs on 2 threads (not the 1 the commands are given); put back after."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(n)


# ------------------------------------------------------------------ parsing / help

@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_lists_threads(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--threads N" in out
    assert "CPU threads for torch (default: torch's choice)" in " ".join(out.split())


def test_bench_help_says_what_threads_measure(capsys):
    assert main(["bench", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "measured with that many threads" in out and "header" in out


_ARGS = {"prune": [SMALL, "--amount", "0.5"], "perturb": ["no-such-run"], "bench": ["threshold"]}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("value", ["0", "-2", "abc"])
def test_bad_threads_is_a_usage_error(cmd, value, capsys, caller_threads):
    assert main([cmd, *_ARGS[cmd], "--threads", value]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and value in err
    assert ("not an integer" if value == "abc" else "must be a positive integer") in err
    assert torch.get_num_threads() == caller_threads  # nothing ran


# ------------------------------------------------------------------ the work's thread count

@needs_torchvision
def test_prune_threads(monkeypatch, capsys, caller_threads):
    import lthfast.prune as prune
    seen = []
    real = prune.global_unstructured

    def recording(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(prune, "global_unstructured", recording)
    assert main(["prune", SMALL, "--amount", "0.5", "--no-table", "--threads", "1"]) == 0
    assert seen == [1]
    assert "overall sparsity: 50.00%" in capsys.readouterr().out
    assert torch.get_num_threads() == caller_threads

    seen.clear()  # without --threads: the caller's count
    assert main(["prune", SMALL, "--amount", "0.5", "--no-table"]) == 0
    assert seen == [caller_threads]


def test_perturb_threads(monkeypatch, tmp_path, capsys, caller_threads):
    from lthfast.analysis import perturb
    seen = []

    kw_seen = []

    def fake_perturbation(run_dir, **kw):
        seen.append(torch.get_num_threads())
        kw_seen.append(kw)
        return {"round": 1, "metric": "top1",
                "ticket": {"kind": "ticket", "sparsity": 0.2, "iou_with_ticket": 1.0, "top1": 50.0},
                "results": [{"kind": "random", "mask_seed": 0, "sparsity": 0.2,
                             "iou_with_ticket": 0.7, "top1": 40.0}]}

    monkeypatch.setattr(perturb, "perturbation", fake_perturbation)
    assert main(["perturb", str(tmp_path), "--kinds", "random", "--threads", "1"]) == 0
    assert seen == [1]
    assert kw_seen[-1]["threads"] == 1  # passed on: the retraining job sets its own count
    assert "random" in capsys.readouterr().out
    assert torch.get_num_threads() == caller_threads


def test_perturb_threads_override_the_runs_own(monkeypatch):
    """The retraining job is rebuilt from the run's settings, which may hold the
    run's own --threads; perturb's --threads wins over it."""
    from types import SimpleNamespace

    from lthfast.analysis import perturb
    from lthfast.imp import jobs
    built = []
    monkeypatch.setattr(jobs, "build_job", lambda s: built.append(s.threads) or "job")
    run = SimpleNamespace(settings={"task": "classification", "threads": 3, "seed": 1})
    assert perturb._job_of_run(run, 1)[1] == "job"
    assert perturb._job_of_run(run)[1] == "job"
    assert built == [1, 3]


@needs_torchvision
def test_bench_threads_in_header_and_json(tmp_path, capsys, caller_threads):
    path = tmp_path / "bench.json"
    assert main(["bench", "ticket", "--quick", "--warmup", "0", "--quiet", "--models", SMALL,
                 "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 threads of" in out.splitlines()[0]  # the header
    r = json.loads(path.read_text())
    assert r["machine"]["torch_threads"] == 1
    assert r["bandwidth"]["threads"] == 1
    assert r["suites"]["ticket"]["status"] == "ok"
    assert "--threads" in r["command"]
    assert torch.get_num_threads() == caller_threads
