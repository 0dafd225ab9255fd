"""Review of `lthfast imp` / report / compare / perturb / prune as a user meets them:
help texts, run directories that must not be overwritten, --resume refusals, warnings
under --quiet, failed runs, defaults that scale with --iters. All tiny and fast."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from lthfast.cli import build_parser, main

pytest.importorskip("lthfast.optim")


def _settings(argv):
    from lthfast.imp.jobs import settings_from_args
    return settings_from_args(build_parser().parse_args(["imp", *argv]))


def _fake_run(path, rounds=1, done=1, **settings):
    """A run directory as `lthfast imp` leaves it (config.json, metrics.json), no weights."""
    os.makedirs(path, exist_ok=True)  # (lthfast imp makes the folder first, to lock it)
    saved = {"task": "classification", "model": "resnet18", "data": "shapes", "rounds": rounds,
             "rate": 0.2, "target": None, "iters": 2, "seed": 0, "out": str(path), **settings}
    (path / "config.json").write_text(json.dumps({"settings": saved}))
    (path / "metrics.json").write_text(json.dumps([{"round": r} for r in range(done + 1)]))


# ------------------------------------------------------------------ help

@pytest.mark.parametrize("cmd, tail", [("report", "page comparing IMP runs"),
                                       ("compare", "and per layer"),
                                       ("perturb", "perturbation.json")])
def test_help_description_is_not_cut_mid_sentence(cmd, tail, capsys):
    assert main([cmd, "--help"]) == 0
    assert tail in capsys.readouterr().out


def test_prune_takes_model_as_a_flag_too(capsys):
    # `lthfast imp --model NAME`; `lthfast prune --model NAME` was "unrecognized arguments"
    assert main(["prune", "resnet50", "--model", "resnet18", "--amount", "0.5"]) == 2
    assert "disagree" in capsys.readouterr().err
    args = build_parser().parse_args(["prune", "--model", "resnet18", "--amount", "0.5"])
    assert args.model_flag == "resnet18"


# ------------------------------------------------------------------ --out

def test_out_that_is_a_file_is_one_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["imp", "--iters", "2", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err
    assert f.read_text() == "x"


def test_out_never_overwrites_an_earlier_run_or_other_files(tmp_path, capsys):
    _fake_run(tmp_path / "run")
    before = (tmp_path / "run" / "config.json").read_text()
    assert main(["imp", "--iters", "2", "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_text() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["imp", "--iters", "2", "--out", str(tmp_path / "other")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path / "other") == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert _settings(["--out", str(tmp_path / "empty")]).out == str(tmp_path / "empty")


def test_the_same_command_again_continues_its_run(tmp_path, capsys):
    # e.g. a second `make demo` (lthfast imp --out runs/demo): go on, never start over
    import dataclasses
    from lthfast.imp.jobs import JobError
    argv = ["--task", "classification", "--iters", "2", "--out", str(tmp_path / "run")]
    _fake_run(tmp_path / "run", **dataclasses.asdict(_settings(argv)))
    s = _settings(argv)
    assert s.resume == str(tmp_path / "run") and "continuing it" in s.continuing
    with pytest.raises(JobError, match="holds an earlier run"):
        _settings([*argv, "--iters", "3"])
    # while another process holds the folder, only the "in use" error is printed
    import os
    from lthfast.cli import main
    from lthfast.imp.rundir import hold
    capsys.readouterr()
    lock = hold(str(tmp_path / "run"))
    try:
        assert main(["imp", *argv]) == 2
    finally:
        os.close(lock)
    err = capsys.readouterr().err
    assert "in use" in err and "continuing it" not in err


# ------------------------------------------------------------------ --resume

def test_resume_refuses_what_it_cannot_do(tmp_path):
    from lthfast.imp.jobs import JobError
    run = tmp_path / "run"
    _fake_run(run, rounds=2, done=2, seed=1)
    with pytest.raises(JobError, match="--seed"):  # the parser's default 0 used to pass
        _settings(["--resume", str(run), "--seed", "0"])
    with pytest.raises(JobError, match="own directory"):  # --out used to be ignored
        _settings(["--resume", str(run), "--out", str(tmp_path / "elsewhere")])
    with pytest.raises(JobError, match="not shrink"):
        _settings(["--resume", str(run), "--rounds", "1"])
    assert _settings(["--resume", str(run), "--rounds", "3"]).rounds == 3
    assert _settings(["--resume", str(run), "--out", str(run)]).seed == 1
    tgt = tmp_path / "tgt"
    _fake_run(tgt, rounds=1, target=0.5)
    with pytest.raises(JobError, match="--target"):  # would change the rate per round
        _settings(["--resume", str(tgt), "--rounds", "2"])
    api = tmp_path / "api"
    api.mkdir()
    (api / "config.json").write_text(json.dumps({"schedule": {"rounds": 1}}))
    with pytest.raises(JobError, match="run_imp"):
        _settings(["--resume", str(api)])


def test_resume_writes_the_grown_schedule_into_config_json(tmp_path):
    from lthfast.imp import IMPConfig, run_imp
    model = nn.Linear(8, 4)

    def train(ctx):
        with torch.no_grad():
            ctx.model.weight.add_(0.01)
        return {}

    kw = dict(train_fn=train, eval_fn=lambda m, ctx: {"top1": 1.0}, out=str(tmp_path / "r"))
    run_imp(model, ["weight"], config=IMPConfig(rounds=1, rate=0.5), meta={"task": "x"}, **kw)
    run_imp(model, ["weight"], config=IMPConfig(rounds=2, rate=0.5), resume=True, **kw)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["schedule"]["rounds"] == 2 and cfg["task"] == "x"  # meta kept
    assert len(json.loads((tmp_path / "r" / "metrics.json").read_text())) == 3


# ------------------------------------------------------------------ failures, --quiet

@pytest.mark.parametrize("exc, state", [(OSError("cannot read image a.png"), "failed"),
                                        (KeyboardInterrupt(), "interrupted")])
def test_a_run_that_stops_says_so_in_status_json(exc, state, tmp_path):
    from lthfast.imp import IMPConfig, run_imp

    def train(ctx):
        if ctx.round == 1:
            raise exc
        return {}

    with pytest.raises(type(exc)):
        run_imp(nn.Linear(8, 4), ["weight"], train_fn=train, eval_fn=lambda m, c: {"top1": 1.0},
                config=IMPConfig(rounds=2, rate=0.5), out=str(tmp_path / "r"))
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == state and status["round"] == 0  # round 0 stays resumable


def test_an_error_mid_run_is_one_line_with_the_way_on(tmp_path, monkeypatch, capsys):
    import lthfast.imp.jobs as jobs
    out = tmp_path / "run"

    class Job:
        def run_and_print(self, _print):
            _fake_run(out)
            raise OSError("cannot read image /d/x.png (image id 3)")

    monkeypatch.setattr(jobs, "build_job", lambda s: Job())
    assert main(["imp", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "x.png" in err and "--resume" in err and "Traceback" not in err


def test_quiet_keeps_warnings(monkeypatch, capsys):
    import lthfast.imp.jobs as jobs
    from lthfast.imp.engine import IMPResult

    class FakeIMP:
        def __init__(self, *a, log, **kw):
            self.log = log

        def run_rounds(self, resume):
            self.log("round 1/1: sparsity 50.0%")
            self.log("warning: round 1 prunes every weight of fc.weight")
            return IMPResult(rows=[], ticket=None, run_dir="r")

    monkeypatch.setattr(jobs, "IMP", FakeIMP)
    s = jobs.Settings(quiet=True, out="r")
    job = jobs.Job(settings=s, config=jobs.IMPConfig(rounds=1), model=None, names=[],
                   train_fn=None, eval_fn=None, group_of=None, meta={}, describe="d")
    job.run_and_print(lambda rows, task, file=None: None)
    err = capsys.readouterr().err
    assert "warning: round 1" in err and "sparsity 50.0%" not in err


def test_no_progress_bar_redraws_into_a_log_file(capsys):
    from lthfast.detection.train import train

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, images, targets):
            return {"loss": self.w * sum(im.mean() for im in images)}

    data = [(torch.rand(3, 8, 8), {"boxes": torch.zeros(0, 4)}) for _ in range(4)]
    train(Tiny(), data, iters=3, batch_size=2, lr=0.01, progress=True)
    assert "train:" not in capsys.readouterr().err  # stderr is no terminal here


# ------------------------------------------------------------------ inputs and defaults

def test_warmup_scales_with_iters_like_the_rewind_point(tmp_path):
    s = _settings(["--iters", "30", "--out", str(tmp_path / "a")])
    assert (s.warmup, s.lr_steps, s.rewind) == (5, [25], "iter:5")  # 50/250/50 of 300
    s = _settings(["--task", "classification", "--iters", "20", "--out", str(tmp_path / "b")])
    assert s.warmup == 2  # 20 of 200
    s = _settings(["--iters", "30", "--warmup", "7", "--out", str(tmp_path / "c")])
    assert s.warmup == 7


def test_input_paths_are_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    s = _settings(["--data", "coco:coco", "--out", "r"])
    assert s.data == f"coco:{tmp_path / 'coco'}"  # --resume from another folder finds it
    assert _settings(["--weights", "DEFAULT", "--out", "r"]).weights == "DEFAULT"
    _fake_run(tmp_path / "run", data=f"coco:{tmp_path / 'coco'}")
    assert _settings(["--resume", "run", "--data", "coco:coco"]).data.endswith("coco")


def test_classifier_weights_and_names_are_clear_errors(tmp_path, capsys):
    pytest.importorskip("torchvision")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    base = ["imp", "--task", "classification", "--iters", "2", "--n-train", "4", "--n-val", "2",
            "--image-size", "16", "--quiet", "--threads", "1"]
    assert main([*base, "--weights", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "not a state_dict" in err and "Traceback" not in err and "weights_only" not in err
    assert main([*base, "--model", "nosuch", "--out", str(tmp_path / "b")]) == 2
    assert "resnet18" in capsys.readouterr().err  # the valid names are listed
