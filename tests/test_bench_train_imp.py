"""The train_step and imp_round bench suites run end to end at tiny sizes and report
what they promise. Never asserts on speed."""
from __future__ import annotations

import pytest
import torch
from _cli_env import kernels_or_reference, needs_torchvision  # noqa: F401 (autouse fixture)

from lthfast import bench
from lthfast.bench import imp_round, train_step
from lthfast.cli._common import Progress


def _ctx():
    return {"bandwidth": None, "progress": lambda total, desc: Progress(total, desc, quiet=True)}


def test_suites_registered():
    assert {"train_step", "imp_round"} <= set(bench.names())
    assert bench.get("train_step").available and bench.get("imp_round").available


@needs_torchvision
def test_train_step_tiny():
    cfg = bench.BenchConfig(device=torch.device("cpu"), quick=True, repeat=1, warmup=1)
    res = train_step.run_suite(cfg, _ctx(), sizes=(2, 32, 1))
    assert res["status"] == "ok" and res["model"] == "resnet18"
    cases = {c["method"]: c for c in res["cases"]}
    assert set(cases) == {"dense", "lthfast", "torch_prune", "asp"}
    assert cases["dense"]["ratio_vs_dense"] == 1.0 and cases["dense"]["memory_vs_dense"] == 1.0
    assert cases["dense"]["paired_ratio_vs_dense"] == 1.0 and cases["lthfast"]["paired_ratio_vs_dense"] > 0
    for c in cases.values():
        assert len(c["times_s"]) == 1 and c["median_s"] > 0
    dense = cases["dense"]["memory_bytes"]["total"]
    n_masked = res["n_masked"]
    # 4-byte weights: packed ticket = 1 bit, shared by the optimizer (contiguous weights) and
    # no bool masks kept by the ticket's bindings; torch float mask = 4 bytes
    lt = cases["lthfast"]["memory_bytes"]
    assert lt["parameters_and_buffers"] == dense
    assert n_masked // 8 <= lt["ticket_packed"] <= n_masked // 8 + 64 * 21
    assert lt["optimizer_packed_not_shared_with_ticket"] == 0
    assert lt["ticket_bound_masks"] == 0
    assert cases["lthfast"]["memory_vs_dense"] < 1.05
    tp = cases["torch_prune"]["memory_bytes"]
    assert tp["parameters_and_buffers"] == dense + 4 * n_masked
    assert tp["recomputed_weights"] == 4 * n_masked
    assert "lthfast" in train_step.format_train_step(res)


@needs_torchvision
def test_imp_round_tiny(tmp_path):
    cfg = bench.BenchConfig(device=torch.device("cpu"), quick=True, repeat=1, warmup=0)
    res = imp_round.run_suite(cfg, _ctx(), root_cache=tmp_path,
                              settings=dict(iters=1, batch_size=1, n_train=4, n_val=2))
    assert res["status"] == "ok"
    cases = {c["method"]: c for c in res["cases"]}
    assert set(cases) == {"lthfast", "torch_prune"}
    # both loops prune the same weights (same magnitudes, same global threshold)
    assert cases["lthfast"]["kept"] == cases["torch_prune"]["kept"]
    assert cases["lthfast"]["kept"] == res["n_pruned_weights"] - round(0.5 * res["n_pruned_weights"])
    for c in cases.values():
        ph = c["median_phase_s"]
        assert all(ph[p] >= 0 for p in imp_round.PHASES) and 0 <= c["overhead_fraction"] < 1
    assert {t["what"] for t in res["targets"]} and "overhead" in imp_round.format_imp_round(res)
