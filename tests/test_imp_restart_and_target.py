"""Regressions from review (stop 28): --target with a starting ticket, a run that failed
before round 0 finished, metrics that are arrays, empty parameters in the masked
optimizers, --seed / --rewind / --lr-steps on the command line. All tiny and fast."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lthfast.cli import build_parser, main
from lthfast.imp import IMPConfig, run_imp

Ticket = pytest.importorskip("lthfast.ticket").Ticket
optim = pytest.importorskip("lthfast.optim")

X = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


NAMES = ["0.weight", "2.weight", "4.weight"]


def train_fn(ctx):
    opt = optim.MaskedSGD(ctx.model.parameters(), lr=0.1, ticket=ctx.ticket)
    for _ in range(2):
        loss = nn.functional.cross_entropy(ctx.model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"loss": loss.item()}


def eval_fn(model, ctx):
    return {}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("layerwise", [False, True])
def test_target_is_the_final_sparsity_from_a_starting_ticket_too(layerwise):
    """A 20%-sparse starting ticket and target 0.5: the run ends at 50% of the prunable
    set (it ended at 60%, the target taken of the weights the ticket left)."""
    model = mlp()
    start = Ticket.from_model(model, 0.2, scope=NAMES)
    res = run_imp(model, NAMES, train_fn=train_fn, eval_fn=eval_fn, initial_ticket=start,
                  config=IMPConfig(rounds=2, target=0.5, layerwise=layerwise))
    n = res.ticket.numel()
    sparsities = [r["sparsity"] for r in res.rows]
    assert sparsities[0] == pytest.approx(start.sparsity())
    if layerwise:  # each tensor by the same rate: 50% up to each tensor's rounding
        assert sparsities[-1] == pytest.approx(0.5, abs=3 / n)
    else:
        assert n - res.ticket.kept() == round(0.5 * n)
    # the middle round: the kept fraction halfway (geometrically) from 80% to 50%
    assert 1 - sparsities[1] == pytest.approx((0.8 * 0.5) ** 0.5, abs=3 / n)
    # from a dense start nothing changed: 1 - (1 - target) ** (r / rounds)
    res = run_imp(mlp(), NAMES, train_fn=train_fn, eval_fn=eval_fn,
                  config=IMPConfig(rounds=2, target=0.5, layerwise=layerwise))
    assert res.rows[1]["sparsity"] == pytest.approx(1 - 0.5 ** 0.5, abs=3 / n)


def test_target_below_the_starting_ticket_is_refused_before_training():
    model = mlp()
    start = Ticket.from_model(model, 0.6, scope=NAMES)
    trained = []
    with pytest.raises(ValueError, match=r"target=0\.5 is below the sparsity of the starting ticket.*60"):
        run_imp(model, NAMES, train_fn=lambda ctx: trained.append(1) or {}, eval_fn=eval_fn,
                initial_ticket=start, config=IMPConfig(rounds=1, target=0.5))
    assert trained == []


def test_array_metrics_are_kept_as_lists(tmp_path):
    res = run_imp(mlp(), NAMES, train_fn=train_fn, out=str(tmp_path), config=IMPConfig(rounds=0),
                  eval_fn=lambda m, ctx: {"per_class": torch.tensor([0.5, 0.25]),
                                          "np": np.array([[1, 2]]), "one": np.array([3.5])})
    row = res.rows[0]
    assert row["per_class"] == [0.5, 0.25] and row["np"] == [[1, 2]] and row["one"] == [3.5]
    assert json.loads((tmp_path / "metrics.json").read_text())[0]["per_class"] == [0.5, 0.25]


@pytest.mark.parametrize("shape", [(3, 0), (2, 0, 4), (0, 3)])
@pytest.mark.parametrize("cls", ["MaskedSGD", "MaskedAdam", "MaskedAdamW"])
def test_empty_parameters_of_any_strides_are_taken(shape, cls):
    """nn.Linear(0, 3).weight is (3, 0) with strides (1, 1): torch.optim takes it, and the
    masked optimizers called it "not dense in memory" (advice it could not follow)."""
    p = nn.Parameter(torch.empty(*shape))
    opt = getattr(optim, cls)([p, nn.Parameter(torch.ones(2))], lr=0.1)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert p.shape == shape


# ------------------------------------------------------------------ the command

BASE = ["imp", "--task", "classification", "--iters", "2", "--rounds", "1", "--n-train", "8",
        "--n-val", "4", "--image-size", "16", "--quiet", "--threads", "1"]


def test_a_run_that_failed_before_round_0_is_started_over_with_new_flags(tmp_path, capsys):
    pytest.importorskip("torchvision")
    out = tmp_path / "run"
    assert main([*BASE, "--batch-size", "1", "--out", str(out)]) == 1  # BatchNorm needs 2
    assert "--batch-size 2 or more" in capsys.readouterr().err
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert main([*BASE, "--batch-size", "2", "--out", str(out)]) == 0  # was: "holds an earlier run"
    assert "stopped before finishing round 0: starting over" in capsys.readouterr().err
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert json.loads((out / "config.json").read_text())["settings"]["batch_size"] == 2
    # a run with a finished round is still never started over
    assert main([*BASE, "--batch-size", "4", "--out", str(out)]) == 2
    assert "holds an earlier run made with other --batch-size" in capsys.readouterr().err


def test_a_failed_start_with_files_of_the_user_is_left_alone(tmp_path, capsys):
    from lthfast.imp.jobs import _stopped_before_round_0
    from lthfast.imp.rundir import RunDir

    run = RunDir(str(tmp_path))
    run.start({"settings": {}}, ["a.weight"])
    run.set_status("failed", -1)
    assert _stopped_before_round_0(run)
    (tmp_path / "notes.txt").write_text("mine")
    assert not _stopped_before_round_0(run)
    run.set_status("running", -1)  # (a run going on, or killed with -9)
    (tmp_path / "notes.txt").unlink()
    assert not _stopped_before_round_0(run)


def _settings(argv):
    from lthfast.imp.jobs import settings_from_args
    return settings_from_args(build_parser().parse_args(["imp", *argv]))


def test_seed_out_of_range_names_the_flag(tmp_path, capsys):
    for bad in ("99999999999999999999999", str(2**32), "-1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["imp", "--seed", bad])
        assert "--seed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed"):
        IMPConfig(seed=2**40)


def test_rewind_in_capitals_is_the_same_rewind(tmp_path):
    s = _settings(["--task", "classification", "--rewind", "INIT", "--out", str(tmp_path / "a")])
    assert s.rewind == "init"
    run = tmp_path / "run"  # a run as `lthfast imp` leaves it, made with --rewind init
    run.mkdir()
    saved = {"task": "classification", "model": "resnet18", "data": "shapes", "rounds": 1,
             "rate": 0.2, "target": None, "iters": 2, "seed": 0, "rewind": "init", "out": str(run)}
    (run / "config.json").write_text(json.dumps({"settings": saved}))
    (run / "metrics.json").write_text(json.dumps([{"round": 0}, {"round": 1}]))
    assert _settings(["--resume", str(run), "--rewind", "INIT"]).rewind == "init"
    from lthfast.imp.jobs import JobError
    with pytest.raises(JobError, match="--rewind"):
        _settings(["--resume", str(run), "--rewind", "iter:1"])


def test_tiny_runs_get_no_warning_about_a_default_lr_step(tmp_path, capsys):
    for iters in ("1", "2"):
        s = _settings(["--iters", iters, "--out", str(tmp_path / iters)])
        assert all(k < s.iters for k in s.lr_steps)
    from lthfast.imp.jobs import check_settings
    check_settings(s)
    assert "beyond --iters" not in capsys.readouterr().err
