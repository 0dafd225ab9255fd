"""The IMP engine on a tiny classifier: schedule, rewinding, run files, resume."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from lthfast.imp import IMPConfig, Rewind, run_imp
from lthfast.imp.classification import (ShapesClassification, evaluate_classifier,
                                        train_classifier)

pytest.importorskip("lthfast.ticket")
optim = pytest.importorskip("lthfast.optim")

ITERS = 6


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def job(model, *, seen=None, fail_in_round=None):
    train_set = ShapesClassification(32, size=16, seed=1)
    val_set = ShapesClassification(16, size=16, seed=2)

    def train_fn(ctx):
        if seen is not None:
            seen.append((ctx.round, ctx.start_iter,
                         {k: v.clone() for k, v in ctx.model.state_dict().items()}))
        if ctx.round == fail_in_round:
            raise KeyboardInterrupt("killed")
        opt = optim.MaskedSGD(ctx.model.parameters(), lr=0.05, momentum=0.9, ticket=ctx.ticket)
        ctx.objects["optimizer"] = opt
        return train_classifier(ctx.model, train_set, opt, iters=ITERS, batch_size=8, lr=0.05,
                                seed=ctx.seed, start_iter=ctx.start_iter, on_iter=ctx.on_iter)

    def eval_fn(model, ctx):
        return evaluate_classifier(model, val_set)

    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    return names, train_fn, eval_fn


def drop_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "train_s_per_iter"}
            for r in rows]


def test_rounds_prune_the_remaining_fraction_and_write_the_run(tmp_path):
    model = tiny_net()
    names, train_fn, eval_fn = job(model)
    res = run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn,
                  config=IMPConfig(rounds=2, rate=0.2), out=str(tmp_path))
    assert [r["round"] for r in res.rows] == [0, 1, 2]
    n = sum(dict(model.named_parameters())[k].numel() for k in names)
    pruned1 = round(0.2 * n)
    assert res.rows[0]["sparsity"] == 0.0
    assert res.rows[1]["sparsity"] == pytest.approx(pruned1 / n)
    assert res.rows[2]["sparsity"] == pytest.approx((pruned1 + round(0.2 * (n - pruned1))) / n)
    # pruned weights stay exactly zero through training
    for name in names:
        w = dict(model.named_parameters())[name]
        assert torch.all(w[~res.ticket[name]] == 0)
    for f in ("config.json", "metrics.json", "metrics.csv", "status.json", "pruned_params.txt",
              "checkpoint.pt", "report.html", "round_0/ticket.safetensors",
              "round_2/ticket.safetensors"):
        assert os.path.exists(tmp_path / f), f
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "complete"
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and "top1" in rows[0]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert (tmp_path / "pruned_params.txt").read_text().split() == names


def test_layer_collapse_is_reported():
    # the last layer's weights are tiny, so one global threshold takes all of them
    model = tiny_net()
    with torch.no_grad():
        model[-1].weight.mul_(1e-6)
    names, train_fn, eval_fn = job(model)
    lines = []
    res = run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn,
                  config=IMPConfig(rounds=2, rate=0.5, rewind="init"), log=lines.append)
    assert [r["collapsed_layers"] for r in res.rows] == [0, 1, 1]
    warned = [m for m in lines if "layer collapse" in m]
    assert len(warned) == 1 and "round 1" in warned[0] and "6.weight" in warned[0]


def test_report_cells_read_like_the_cli():
    from lthfast.imp.report import html_table
    table = html_table([{"round": 1, "sparsity": 0.5, "sparsity_fpn": 0.19166, "bbox_AP": 31.5123,
                         "bbox_APl": float("nan"), "segm_AP50": 40.0, "train_time_s": 9.7312,
                         "rewind": None}])
    cells = [c.split("</td>")[0] for c in table.split("<td>")[1:]]
    assert cells == ["1", "50.00%", "19.17%", "31.5", "–", "40.0", "9.731", "–"]


def test_target_sparsity_sets_the_per_round_rate():
    cfg = IMPConfig(rounds=3, target=0.8)
    assert cfg.expected_sparsity(3) == pytest.approx(0.8)
    assert IMPConfig(rounds=1, target=0.5).per_round_rate() == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [dict(rounds=-1), dict(rate=1.0), dict(rate=-0.1),
                                 dict(rate=float("nan")), dict(target=1.5),
                                 dict(rewind="iter:x"), dict(rewind="sometimes")])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        IMPConfig(**bad)


def test_rewind_parsing():
    assert Rewind.parse("iter:5") == Rewind("iter", 5)
    assert str(Rewind.parse("INIT")) == "init"


def test_late_resetting_rewinds_to_iteration_k_and_restarts_the_schedule_there(tmp_path):
    seen = []
    model = tiny_net()
    names, train_fn, eval_fn = job(model, seen=seen)
    snaps = {}

    def on_iter_spy(i, m):
        if i == 2:
            snaps["k"] = {k: v.clone() for k, v in m.state_dict().items()}

    def train_spy(ctx):
        inner = ctx.on_iter

        def both(i, m):
            inner(i, m)
            if ctx.round == 0:
                on_iter_spy(i, m)
        ctx.on_iter = both
        return train_fn(ctx)

    res = run_imp(model, names, train_fn=train_spy, eval_fn=eval_fn,
                  config=IMPConfig(rounds=1, rate=0.5, rewind="iter:2"), out=None)
    (r0, s0, _), (r1, s1, start_state) = seen
    assert (r0, s0, r1, s1) == (0, 0, 1, 2)
    for k, v in snaps["k"].items():
        expect = v * res.ticket[k] if k in names else v
        assert torch.equal(start_state[k], expect), k


def test_resume_after_a_kill_gives_the_same_run(tmp_path):
    cfg = IMPConfig(rounds=2, rate=0.3, rewind="init", seed=3)
    model = tiny_net()
    names, train_fn, eval_fn = job(model)
    ref = run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn, config=cfg,
                  out=str(tmp_path / "a"))

    model = tiny_net()
    names, train_fn, eval_fn = job(model, fail_in_round=2)
    with pytest.raises(KeyboardInterrupt):
        run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn, config=cfg,
                out=str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "status.json").read_text())["round"] == 1
    model = tiny_net()  # a new process: fresh model, state comes from the checkpoint
    names, train_fn, eval_fn = job(model)
    res = run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn, config=cfg,
                  out=str(tmp_path / "b"), resume=True)
    assert drop_times(res.rows) == drop_times(ref.rows)
    for r in range(3):
        a = (tmp_path / "a" / f"round_{r}" / "ticket.safetensors").read_bytes()
        b = (tmp_path / "b" / f"round_{r}" / "ticket.safetensors").read_bytes()
        assert a == b, r


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    model = tiny_net()
    names, train_fn, eval_fn = job(model)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn, config=IMPConfig(rounds=1),
                out=str(tmp_path / "nope"), resume=True)


def test_unknown_parameter_names_are_refused():
    model = tiny_net()
    _, train_fn, eval_fn = job(model)
    with pytest.raises(ValueError, match="not found"):
        run_imp(model, ["0.weight", "fc.weight"], train_fn=train_fn, eval_fn=eval_fn,
                config=IMPConfig(rounds=1))


def test_early_bird_masks_are_saved_and_the_last_one_is_round_1s(tmp_path):
    from lthfast.analysis import early_bird_iterations
    model = tiny_net()
    names, train_fn, eval_fn = job(model)
    run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn,
            config=IMPConfig(rounds=1, rate=0.3), out=str(tmp_path), early_bird_every=2)
    files = sorted(p.name for p in (tmp_path / "round_0" / "early_bird").iterdir())
    assert files == [f"iter_{i:07d}.safetensors" for i in (2, 4, 6)]
    rows = early_bird_iterations(str(tmp_path))
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    # after the last iteration the would-be mask is round 1's mask, exactly
    assert rows[-1]["iou_with_final"] == 1.0
    assert all(0.0 <= r["iou_with_final"] <= 1.0 for r in rows)
    assert rows[0]["sparsity"] == pytest.approx(0.3, abs=0.01)
    from lthfast.cli import main
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 0
    assert "During dense training" in (tmp_path / "r.html").read_text()


def test_early_bird_every_must_be_positive():
    model = tiny_net()
    names, train_fn, eval_fn = job(model)
    with pytest.raises(ValueError, match="early_bird_every"):
        run_imp(model, names, train_fn=train_fn, eval_fn=eval_fn, config=IMPConfig(rounds=1),
                early_bird_every=0)
