"""Stop 29's review of the IMP engine: a resume in the same process after eval_fn failed
(the model left in eval mode) trains in the run's own modes; an eval metric named like a
train_fn column; a damaged metrics.json."""
from __future__ import annotations

import json

import pytest
import torch

from lthfast.imp import IMPConfig
from lthfast.imp.rundir import RunDir

from test_imp_review import eval_fn, go, make_train, mlp, no_times


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_resume_after_a_failed_eval_trains_in_the_runs_modes(tmp_path):
    cfg = IMPConfig(rounds=3, rate=0.5, rewind="init", seed=1)

    def eval_in_eval_mode(model, ctx):
        model.eval()  # as most eval functions do
        return eval_fn(model, ctx)

    def eval_then_fail(model, ctx):
        out = eval_in_eval_mode(model, ctx)
        if ctx.round == 2:
            raise RuntimeError("eval broke")
        return out

    ref = go(mlp(bn=True), cfg, tmp_path / "ref", eval_fn=eval_in_eval_mode)

    m, modes = mlp(bn=True), []
    with pytest.raises(RuntimeError, match="eval broke"):
        go(m, cfg, tmp_path / "run", eval_fn=eval_then_fail)
    assert not m.training  # what the resume is handed
    res = go(m, cfg, tmp_path / "run", resume=True, train_fn=make_train(modes=modes),
             eval_fn=eval_in_eval_mode)
    assert modes == [(3, True)]  # round 2 was trained before its eval failed: not again
    assert no_times(res.rows) == no_times(ref.rows)


def test_eval_metric_named_like_a_train_column_is_refused():
    with pytest.raises(ValueError, match=r"\['train_loss'\].*train_<key>"):
        go(mlp(), IMPConfig(rounds=0), eval_fn=lambda m, ctx: {"train_loss": 1.0})


def test_damaged_metrics_json_names_the_file_and_resume_rewrites_it(tmp_path):
    cfg = IMPConfig(rounds=1, rate=0.5, rewind="init", seed=1)
    ref = go(mlp(), cfg, tmp_path / "run")
    path = tmp_path / "run" / "metrics.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match="metrics.json is damaged.*--resume rewrites"):
        RunDir(str(tmp_path / "run")).read_metrics()
    go(mlp(), cfg, tmp_path / "run", resume=True)
    assert no_times(json.loads(path.read_text())) == no_times(json.loads(json.dumps(ref.rows)))
