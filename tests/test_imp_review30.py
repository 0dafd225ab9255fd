"""Stop 30's review of the IMP engine: a round's training survives a failed evaluation
(checkpoint.pt after training, `pending`); on_iter given a wrapper of the model; meta keys
that would replace the engine's own; a resume of a run killed in round 0 from another
starting ticket; modules with extra state; a numpy seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lthfast.imp import IMPConfig
from lthfast.ticket import Ticket

from test_imp_review import eval_fn, go, make_train, mlp, no_times, weights


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _counting(train_fn, seen):
    def wrapped(ctx):
        seen.append(ctx.round)
        return train_fn(ctx)
    return wrapped


@pytest.mark.parametrize("rewind,fail_round", [("init", 0), ("iter:2", 0), ("iter:2", 2)])
def test_a_failed_eval_does_not_cost_the_rounds_training(tmp_path, rewind, fail_round):
    cfg = IMPConfig(rounds=2, rate=0.5, rewind=rewind, seed=3)
    ref = go(mlp(), cfg, tmp_path / "ref")

    def eval_then_fail(model, ctx):
        if ctx.round == fail_round:
            raise RuntimeError("eval broke")
        return eval_fn(model, ctx)

    with pytest.raises(RuntimeError, match="eval broke"):
        go(mlp(), cfg, tmp_path / "run", eval_fn=eval_then_fail)
    seen = []
    res = go(mlp(), cfg, tmp_path / "run", resume=True, train_fn=_counting(make_train(), seen))
    assert seen == list(range(fail_round + 1, 3))  # the failed round is evaluated, not retrained
    assert no_times(res.rows) == no_times(ref.rows)
    assert res.ticket == ref.ticket
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    want = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    assert "pending" not in saved and saved["round"] == 2
    for k, v in want["model"].items():
        assert torch.equal(saved["model"][k], v), k
    # the optimizer's record of a round evaluated after the resume is the one it trained with
    assert saved["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]


def _fail_eval(model, ctx):
    raise RuntimeError("eval broke")


def _trained_not_evaluated(out, cfg):
    """A run whose round 0 trained and whose evaluation then failed."""
    with pytest.raises(RuntimeError, match="eval broke"):
        go(mlp(), cfg, out, eval_fn=_fail_eval)


def test_checkpoint_after_training_marks_the_round_pending(tmp_path):
    _trained_not_evaluated(tmp_path / "run", IMPConfig(rounds=1, rate=0.5, seed=3))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["round"] == 0 and saved["rows"] == []
    assert saved["pending"]["start_iter"] == 0 and "loss" in saved["pending"]["train_stats"]


def test_on_iter_may_be_given_a_wrapper_of_the_model(tmp_path):
    # a late-resetting run whose train_fn passes the DataParallel / DDP wrapper it trains
    cfg = IMPConfig(rounds=1, rate=0.5, rewind="iter:2", seed=3)
    ref = go(mlp(), cfg)
    inner = make_train(call_on_iter=False)

    def train_fn(ctx):
        wrapper = nn.DataParallel(ctx.model)
        calls = []
        real = ctx.on_iter
        ctx.on_iter = lambda i, m: calls.append(i)
        out = inner(ctx)
        for i in range(ctx.start_iter + 1, 5):
            real(i, wrapper)
        return out

    # rewinds to the weights after training (on_iter called late): only the keys matter here
    res = go(mlp(), cfg, train_fn=train_fn)
    assert [r["round"] for r in res.rows] == [0, 1] and ref.rows[1]["sparsity"] == res.rows[1]["sparsity"]


@pytest.mark.parametrize("key", ["schedule", "run_id", "pruned_params", "initial_ticket"])
def test_meta_may_not_replace_the_engines_config_keys(key):
    with pytest.raises(ValueError, match=rf"meta keys \['{key}'\]"):
        go(mlp(), IMPConfig(rounds=0), meta={key: "x"})


def test_resume_of_a_run_killed_in_round_0_checks_its_starting_ticket(tmp_path):
    model = mlp()
    start = Ticket.from_model(model, 0.5, scope=weights(model))
    cfg = IMPConfig(rounds=1, rate=0.3, seed=3)
    with pytest.raises(KeyboardInterrupt):
        go(mlp(), cfg, tmp_path / "run", train_fn=make_train(fail_round=0), initial_ticket=start)
    with pytest.raises(ValueError, match="started from an initial_ticket of sparsity 50.00%, "
                                         "this resume from dense"):
        go(mlp(), cfg, tmp_path / "run", resume=True)
    res = go(mlp(), cfg, tmp_path / "run", resume=True, initial_ticket=start)
    assert res.rows[0]["sparsity"] == pytest.approx(0.5, abs=0.01)

    with pytest.raises(KeyboardInterrupt):
        go(mlp(), cfg, tmp_path / "dense", train_fn=make_train(fail_round=0))
    with pytest.raises(ValueError, match="started from dense, this resume from an initial_ticket"):
        go(mlp(), cfg, tmp_path / "dense", resume=True, initial_ticket=start)


class _WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)

    def get_extra_state(self):
        return {"calls": self.calls}

    def set_extra_state(self, state):
        self.calls = state["calls"]


def test_modules_with_extra_state_can_be_pruned_and_resumed(tmp_path):
    res = go(_WithExtra(), IMPConfig(rounds=1, rate=0.5, seed=3), tmp_path / "run")
    assert [r["round"] for r in res.rows] == [0, 1]
    res = go(_WithExtra(), IMPConfig(rounds=2, rate=0.5, seed=3), tmp_path / "run", resume=True)
    assert [r["round"] for r in res.rows] == [0, 1, 2]


def test_a_pending_round_cannot_be_dropped_by_fewer_rounds(tmp_path):
    # its trained weights replaced round 1's: a resume with rounds=1 ended with round 2's
    # ticket and weights under round 1's rows
    cfg = IMPConfig(rounds=2, rate=0.5, seed=3)

    def fail_in_2(model, ctx):
        if ctx.round == 2:
            raise RuntimeError("eval broke")
        return eval_fn(model, ctx)

    with pytest.raises(RuntimeError):
        go(mlp(), cfg, tmp_path / "run", eval_fn=fail_in_2)
    with pytest.raises(ValueError, match="already trained round 2"):
        go(mlp(), IMPConfig(rounds=1, rate=0.5, seed=3), tmp_path / "run", resume=True)
    res = go(mlp(), cfg, tmp_path / "run", resume=True)
    assert [r["round"] for r in res.rows] == [0, 1, 2]


def test_a_numpy_seed_is_taken_as_an_int():
    cfg = IMPConfig(rounds=0, seed=np.int64(3))
    assert type(cfg.seed) is int and cfg.seed == 3
    go(mlp(), cfg)


def test_resume_log_says_a_trained_round_is_evaluated_first(tmp_path):
    cfg = IMPConfig(rounds=1, rate=0.5, seed=3)
    _trained_not_evaluated(tmp_path / "run", cfg)
    lines = []
    go(mlp(), cfg, tmp_path / "run", resume=True, log=lines.append)
    assert lines[0].endswith("round 0 is trained, its evaluation goes first"), lines
    assert "trained before the run stopped; evaluating" in lines[1]


@pytest.mark.parametrize("kw,match", [
    (dict(eval_fn=None), r"eval_fn must be callable, got NoneType"),
    (dict(train_fn="train"), r"train_fn must be callable"),
    (dict(config={"rounds": 1}), r"config must be an lthfast.imp.IMPConfig, got dict"),
    (dict(initial_ticket={}), r"initial_ticket must be an lthfast.Ticket or None, got dict"),
    (dict(log=print, on_round=3), r"on_round must be callable or None"),
])
def test_run_imp_checks_its_arguments_before_training(tmp_path, kw, match):
    from lthfast.imp import run_imp
    m, trained = mlp(), []
    args = dict(train_fn=lambda ctx: trained.append(ctx.round), eval_fn=eval_fn,
                config=IMPConfig(rounds=1), out=str(tmp_path / "run"))
    args.update(kw)
    with pytest.raises(TypeError, match=match):
        run_imp(m, weights(m), **args)
    assert trained == [] and not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got generator"):
        run_imp(m.parameters(), weights(m), train_fn=lambda c: None, eval_fn=eval_fn,
                config=IMPConfig(rounds=1))


def test_imp_config_takes_numpy_numbers_and_refuses_other_types():
    cfg = IMPConfig(rounds=np.int64(3), rate=np.float32(0.25))
    assert type(cfg.rounds) is int and type(cfg.rate) is float and cfg.rate == 0.25
    with pytest.raises(TypeError, match="rounds must be an integer >= 0, got str"):
        IMPConfig(rounds="3")
    with pytest.raises(TypeError, match="rate must be a fraction in \\[0, 1\\), got str"):
        IMPConfig(rate="0.2")
    with pytest.raises(ValueError, match="rate must be a fraction"):
        IMPConfig(rate=1.5)


def test_nn_and_ticket_name_the_wrong_argument_types():
    from lthfast.nn import densify, sparsify
    from lthfast.ticket import Ticket
    m = mlp()
    with pytest.raises(TypeError, match="sparsify: model must be a torch.nn.Module, got list"):
        sparsify([m], {})
    with pytest.raises(TypeError, match="densify: model must be a torch.nn.Module, got Ticket"):
        densify(Ticket.dense(m))
    t = Ticket.dense(m)
    t.apply(m)
    with pytest.raises(TypeError, match=r"a mask by name is ticket\[name\]"):
        t.mask_for("0.weight")
    import lthfast.nn
    assert set(lthfast.nn.__all__) == {"MaskedConv2d", "MaskedLinear", "sparsify", "densify"}


def test_imp_config_rate_none_needs_a_target():
    with pytest.raises(ValueError, match="rate=None needs a target"):
        IMPConfig(rounds=1, rate=None)
    assert IMPConfig(rounds=1, rate=None, target=0.5).per_round_rate() == pytest.approx(0.5)
    IMPConfig(rounds=0, rate=None)  # nothing to prune


def test_transfer_ticket_takes_a_pathlib_path(tmp_path):
    from pathlib import Path

    from lthfast.ticket import Ticket
    from lthfast.transfer import transfer_ticket
    m = mlp()
    t = Ticket.from_model(m, 0.5, scope=weights(m))
    t.save(str(tmp_path / "t.safetensors"))
    out = transfer_ticket(Path(tmp_path / "t.safetensors"), mlp())
    assert out.ticket == t
