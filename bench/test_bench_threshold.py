"""The `threshold` suite of `lthfast bench` as pytest-benchmark cases: one IMP
pruning step (amount 0.2, then 0.2 of the remaining) on torchvision models,
torch.nn.utils.prune vs lthfast. The cases come from lthfast.bench.threshold, so
`lthfast bench threshold` and these measure the same thing.

    pytest bench/ --benchmark-only
    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-json=out.json
"""
from __future__ import annotations

import os

import pytest
import torch

from lthfast.bench import threshold
from lthfast.bench.measure import measure
from lthfast.bench.registry import config_from_env

CONFIG = config_from_env()
DEVICE = CONFIG.device
MEMORY = os.environ.get("LTHFAST_BENCH_MEMORY", "1") not in ("", "0")
METHODS = {m.key: m for m in threshold.methods_for(DEVICE)}


def _synced(run):
    if DEVICE.type != "cuda":
        return run

    def wrapped(state):
        out = run(state)
        torch.cuda.synchronize(DEVICE)
        return out
    return wrapped


def _synced_setup(setup):
    """pytest-benchmark's setup is untimed, but on CUDA the work it queues (the model's
    deepcopy, custom_from_mask) would still be running when the timer starts."""
    def wrapped():
        state = setup()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return (state,), {}
    return wrapped


@pytest.mark.parametrize("rnd", threshold.ROUNDS, ids=lambda r: f"round{r}")
@pytest.mark.parametrize("method", list(METHODS))
def test_threshold(benchmark, model_weights, bandwidth, method, rnd):
    m = METHODS[method]
    reason = m.missing()
    if reason:
        pytest.skip(reason)
    setup, run = m.make(model_weights, rnd)
    n_remaining, k = model_weights.counts(rnd)
    floor_s = 2 * model_weights.weight_bytes / bandwidth["bytes_per_s"]
    benchmark.group = f"threshold {model_weights.name} round {rnd} ({DEVICE.type})"
    benchmark.extra_info.update(
        model=model_weights.name, round=rnd, method=m.label, device=str(DEVICE),
        n_weights=model_weights.n_weights, weight_bytes=model_weights.weight_bytes,
        n_remaining=n_remaining, k=k, bandwidth_bytes_per_s=bandwidth["bytes_per_s"],
        floor_s=floor_s)
    benchmark.pedantic(_synced(run), setup=_synced_setup(setup), rounds=CONFIG.repeat,
                       iterations=1, warmup_rounds=CONFIG.warmup)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["floor_multiple"] = stats.stats.median / floor_s
    if MEMORY:
        mem = measure(setup, run, DEVICE, repeat=1, warmup=0)
        peak = mem.peak_extra_max
        benchmark.extra_info["peak_extra_bytes"] = peak
        if peak is not None:
            benchmark.extra_info["peak_extra_fraction_of_weights"] = peak / model_weights.weight_bytes
