"""Regression tests from the review of lthfast.analysis (and its CLI front-ends), plus
brute-force oracles for numbers the other analysis tests do not pin down."""
from __future__ import annotations

import json
import math
import os
import types

import pytest
import torch
from torch import nn

from _analysis_fixtures import mask, three_round_tickets, write_run
from lthfast.analysis import (early_bird, layer_stats, load_run, mask_overlap, perturbed,
                              random_iou, random_mask, retrain_perturbed, swap_mask)
from lthfast.analysis import perturb as pt
from lthfast.analysis.perturb import complement
from lthfast.analysis.runs import RunError
from lthfast.ticket import Ticket


def _ticket():
    g = torch.Generator().manual_seed(2)
    return Ticket({"a": torch.rand(6, 7, generator=g) < 0.4,
                   "b": torch.zeros(5, dtype=torch.bool),       # fully pruned
                   "c": torch.ones(3, 3, dtype=torch.bool)})    # dense


# ---------------------------------------------------------------- perturbation seeds
def _capture_masks(kinds, **kw):
    model = nn.Linear(7, 6, bias=False)
    ticket = Ticket({"weight": _ticket()["a"]})
    seen = {}

    def train_fn(ctx):
        seen[ctx.ticket.meta.get("perturbation")] = (ctx.ticket, ctx.seed)

    rows = retrain_perturbed(model, ticket, train_fn, lambda m, ctx: {"top1": 1.0},
                             kinds=kinds, **kw)
    return ticket, seen, rows


def test_random_mask_does_not_depend_on_the_position_in_kinds():
    # was: seed + index of the kind, so `--kinds random` and `--kinds complement,random`
    # retrained different random masks
    _, alone, _ = _capture_masks(["random"])
    _, second, _ = _capture_masks(["complement", "random"])
    assert alone["random"][0] == second["random"][0]


def test_mask_seed_draws_the_masks_and_seed_the_training():
    ticket, seen, rows = _capture_masks(["random", "swap10"], seed=3, round_index=2, mask_seed=11)
    assert seen["random"][0] == random_mask(ticket, seed=11)
    assert seen["swap10"][0] == swap_mask(ticket, 0.1, seed=11)
    assert seen["random"][1] == seen["swap10"][1] == 3 * 1000 + 2   # the engine's round seed
    assert [r["mask_seed"] for r in rows] == [11, 11]


def test_perturbation_uses_the_seed_it_is_given(tmp_path, monkeypatch):
    # was: `perturbation(seed=...)` (lthfast perturb --seed) was ignored for the run's seed
    tickets = three_round_tickets()
    rows = [{"round": r, "sparsity": t.sparsity(), "top1": 50.0 - r} for r, t in enumerate(tickets)]
    run = write_run(tmp_path / "run", tickets, rows, task="classification")
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(8))      # the fixture tickets' one layer "w"
    torch.save({"rewind": model.state_dict()}, os.path.join(run, "checkpoint.pt"))
    seen = []
    job = types.SimpleNamespace(model=model, train_fn=lambda ctx: seen.append(ctx),
                                eval_fn=lambda m, ctx: {"top1": 40.0})
    settings = types.SimpleNamespace(seed=5, rewind="init")
    monkeypatch.setattr(pt, "_job_of_run", lambda r, threads=None: (settings, job))
    res = pt.perturbation(run, kinds="random", seed=9, write=False)
    assert seen[0].ticket == random_mask(tickets[2], seed=9)
    assert seen[0].seed == 5 * 1000 + 2
    assert res["ticket"]["top1"] == 48.0 and res["results"][0]["top1"] == 40.0
    assert pt.table(res)[1]["mask seed"] == 9 and pt.table(res)[1]["change vs ticket"] == -8.0


def test_perturb_cli_shows_nan_as_a_dash():
    from lthfast.cli.perturb import _num
    assert _num(float("nan"), "{:+.2f}") == "-" and _num("", "{:.2f}") == "-"
    assert _num(0.0, "{:+.2f}") == "+0.00" and _num(3, "{:.2f}") == "3.00"


def test_perturbed_masks_keep_exact_per_layer_counts():
    t = _ticket()
    for kind in ("random", "swap10", "swap50", "swap100"):
        p = perturbed(t, kind, seed=4)
        assert p.kept_by_name() == t.kept_by_name(), kind
    c = perturbed(t, "complement")
    assert c.kept_by_name() == {n: t.numel(n) - t.kept(n) for n in t.names()}
    # swap: round(f * min(kept, pruned)) of each moved, so |a ∩ b| = kept - k per layer
    ka, na = t.kept("a"), t.numel("a")
    k = round(0.5 * min(ka, na - ka))
    assert t.iou(swap_mask(t, 0.5))["by_name"]["a"] == pytest.approx((ka - k) / (ka + k))


# ---------------------------------------------------------------- AP breakdowns
def _rows():
    pc0 = {"a": 50.0, "b": 50.0, "c": 20.0, "d": float("nan")}
    return [{"round": 0, "sparsity": 0.0, "bbox_AP": 40.0, "per_category": {"bbox": pc0}},
            {"round": 1, "sparsity": 0.5, "bbox_AP": 30.0,
             "per_category": {"bbox": {"a": 40.0, "b": 10.0, "c": 5.0, "d": float("nan")}}}]


def test_tied_categories_share_a_rank_in_a_stable_order():
    from lthfast.analysis import ap_by_difficulty, ap_by_frequency
    freq = ap_by_frequency(_rows(), {"d": 7, "b": 7, "a": 3, "c": 3})
    assert [(d["category"], d["rank"]) for d in freq] == [("b", 1), ("d", 1), ("a", 3), ("c", 3)]
    diff = ap_by_difficulty(_rows())
    assert [(d["category"], d["rank"]) for d in diff] == [("a", 1), ("b", 1), ("c", 3), ("d", 4)]
    assert diff[1]["drop"] == 40.0 and math.isnan(diff[3]["drop"])


def test_category_plot_says_what_its_gaps_mean(monkeypatch):
    from lthfast.analysis import ap_breakdown as apb
    figs = []
    monkeypatch.setattr(apb, "png", lambda fig: figs.append(fig) or "png")
    apb.plot_ap_by_category(apb.ap_by_difficulty(_rows()), title="t", xlabel="category")
    # was: the note was appended after set_xlabel, so it never showed
    assert "gaps: no validation objects" in figs[0].axes[0].get_xlabel()
    figs[0].clf()


def test_size_range_without_ground_truth_is_a_dash_not_zero():
    from lthfast.analysis.report import _sizes
    from lthfast.analysis.runs import Run
    row = {"round": 0, "sparsity": 0.0, "bbox_AP": 30.0, "bbox_APs": 20.0, "bbox_APm": 40.0,
           "bbox_APl": float("nan")}
    run = Run(path="x", label="x", config={}, rows=[row], status={})
    cells = _sizes({"detection": [run]}).split("<tbody>")[1]
    assert cells.count("<td>–</td>") == 1 and "<td>20.0</td>" in cells


# ---------------------------------------------------------------- overlap
def test_iou_against_brute_force_on_odd_sizes():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        shapes = [(int(torch.randint(1, 30, (1,), generator=g)),), (3, 5), (2, 3, 3, 3), (7, 1, 5)]
        ma = {f"l{i}": torch.rand(s, generator=g) < float(torch.rand(1, generator=g))
              for i, s in enumerate(shapes)}
        mb = {n: torch.rand(m.shape, generator=g) < 0.5 for n, m in ma.items()}
        mb["l3"] = torch.zeros(7, 1, 5, dtype=torch.bool)
        ma["l3"] = torch.zeros(7, 1, 5, dtype=torch.bool)         # both empty: 1.0
        res = mask_overlap(Ticket(ma), Ticket(mb))
        inter = {n: int((ma[n] & mb[n]).sum()) for n in ma}
        union = {n: int((ma[n] | mb[n]).sum()) for n in ma}
        for d in res["layers"]:
            n = d["name"]
            assert d["iou"] == (inter[n] / union[n] if union[n] else 1.0)
        assert res["overall"] == pytest.approx(sum(inter.values()) / sum(union.values()))


def test_early_bird_of_nested_masks_is_the_density_ratio(tmp_path):
    rows = [{"round": r, "sparsity": t.sparsity()} for r, t in enumerate(three_round_tickets())]
    eb = early_bird(load_run(write_run(tmp_path / "run", three_round_tickets(), rows)))
    for d in eb:
        assert d["iou_with_final"] == pytest.approx((1 - 0.75) / (1 - d["sparsity"]))
    assert random_iou(1.0, 1.0) == 1.0 and random_iou(1.0, 0.5) == 0.0


# ---------------------------------------------------------------- per-layer structure
def test_conv_transpose_output_channels_are_dim_1():
    ct = nn.ConvTranspose2d(4, 6, 2, groups=2)          # weight (in 4, out/groups 3, 2, 2)
    m = torch.ones_like(ct.weight, dtype=torch.bool)
    m[:2, 1] = False     # output channel 1: group 0's inputs through column 1
    m[2:, 0] = False     # output channel 3: group 1's inputs through column 0
    m[0] = False         # input channel 0: prunes no output channel by itself
    t = Ticket({"0.weight": m})
    st = layer_stats(t, nn.Sequential(ct))[0]
    assert (st["zero_channels"], st["out_channels"]) == (2, 6)
    assert st["zero_kernels"] == int((~m.reshape(12, -1).any(1)).sum()) == 6
    # torchvision's Mask R-CNN conv5_mask is known by name (the report has no model)
    name = "roi_heads.mask_predictor.conv5_mask.weight"
    m2 = torch.ones(3, 2, 2, 2, dtype=torch.bool)
    m2[:, 1] = False
    st = layer_stats(Ticket({name: m2}))[0]
    assert (st["zero_channels"], st["out_channels"]) == (1, 2)
    # a plain conv: dim 0
    assert layer_stats(Ticket({"conv.weight": m2}))[0]["zero_channels"] == 0


def test_layer_stats_channels_last_and_1d_masks():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(4, 3, 3, 3, generator=g) < 0.5
    m[1] = False
    m[2, 0] = False
    cl = m.to(memory_format=torch.channels_last)
    for mm in (m, cl):
        st = layer_stats(Ticket({"c": mm}))[0]
        assert st["zero_kernels"] == int((~m.reshape(12, -1).any(1)).sum())
        assert st["zero_channels"] == int((~m.reshape(4, -1).any(1)).sum()) == 1
        assert st["kept"] == int(m.sum())
    st = layer_stats(Ticket({"bias": mask([0, 0, 0])}))[0]
    assert st["sparsity"] == 1.0 and st["zero_channels"] == st["out_channels"] == 0


# ---------------------------------------------------------------- report robustness
def test_report_survives_a_missing_round_ticket(tmp_path):
    from lthfast.analysis.report import build_report
    rows = [{"round": r, "sparsity": s, "top1": 50.0} for r, s in enumerate((0.0, 0.5, 0.75))]
    run = write_run(tmp_path / "run", three_round_tickets(), rows, task="classification")
    os.remove(os.path.join(run, "round_1", "ticket.safetensors"))
    out, _ = build_report([run], str(tmp_path / "r.html"))
    html = open(out).read()
    # was: the whole page failed with "round 1 has no ticket"
    assert "round 1 has no ticket" in html and "Per-layer structure" in html


def _fake_run_job(tmp_path, monkeypatch, eval_value=40.0):
    tickets = three_round_tickets()
    rows = [{"round": r, "sparsity": t.sparsity(), "top1": 50.0 - r} for r, t in enumerate(tickets)]
    run = write_run(tmp_path / "run", tickets, rows, task="classification")
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(8))
    torch.save({"rewind": model.state_dict()}, os.path.join(run, "checkpoint.pt"))
    seen = []
    job = types.SimpleNamespace(model=model, train_fn=lambda ctx: seen.append(ctx),
                                eval_fn=lambda m, ctx: {"top1": eval_value})
    settings = types.SimpleNamespace(seed=5, rewind="init")
    monkeypatch.setattr(pt, "_job_of_run", lambda r, threads=None: (settings, job))
    return run, tickets, seen


def test_perturbation_round_counts_back_from_the_last(tmp_path, monkeypatch):
    # as `lthfast compare --round`: -1 is the last finished round, -2 the one before
    run, tickets, seen = _fake_run_job(tmp_path, monkeypatch)
    assert pt.perturbation(run, round=-1, kinds="complement", write=False)["round"] == 2
    assert pt.perturbation(run, round=-2, kinds="complement", write=False)["round"] == 1
    assert seen[1].ticket == complement(tickets[1])
    with pytest.raises(RunError, match=r"no finished round -4; finished rounds: \[0, 1, 2\]"):
        pt.perturbation(run, round=-4, kinds="complement", write=False)


def test_a_diverged_retrain_is_written_as_null(tmp_path, monkeypatch):
    # perturbation.json is strict JSON: a NaN metric (a diverged retrain) is null, not NaN
    run, _, _ = _fake_run_job(tmp_path, monkeypatch, eval_value=float("nan"))
    pt.perturbation(run, kinds="random", write=True)
    text = open(os.path.join(run, "perturbation.json")).read()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in perturbation.json"))
    assert saved["tests"][0]["results"][0]["top1"] is None
