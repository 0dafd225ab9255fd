"""The `optim` suite of `lthfast bench` as pytest-benchmark cases: one optimizer
step on all parameters of torchvision models with the Conv/Linear weights 80%
pruned, lthfast.optim.MaskedAdamW / MaskedSGD vs torch.optim + masking. The cases
come from lthfast.bench.optim, so `lthfast bench optim` and these measure the same.

    pytest bench/test_bench_optim.py --benchmark-only --benchmark-group-by=group
"""
from __future__ import annotations

import pytest
import torch

from lthfast.bench import optim
from lthfast.bench.registry import config_from_env

CONFIG = config_from_env()
DEVICE = CONFIG.device


@pytest.fixture(scope="module",
                params=CONFIG.models or (optim.MODELS_QUICK if CONFIG.quick else optim.MODELS_FULL))
def model_params(request):
    return optim.load_model_params(request.param, DEVICE)


@pytest.mark.parametrize("kind", optim.KINDS)
@pytest.mark.parametrize("method", [m.key for m in optim.methods("adamw")])
def test_optim_step(benchmark, model_params, bandwidth, kind, method):
    m = {x.key: x for x in optim.methods(kind)}[method]
    step = m.make(model_params)
    step()  # state initialisation is not timed ...
    if DEVICE.type == "cuda":  # ... nor is it still running when the first timed round starts
        torch.cuda.synchronize(DEVICE)

    def run():
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    floor_s = model_params.bytes_per_step(kind) / bandwidth["bytes_per_s"]
    benchmark.group = f"optim {kind} {model_params.name} ({DEVICE.type})"
    benchmark.extra_info.update(model=model_params.name, optimizer=kind, method=m.label,
                                device=str(DEVICE), sparsity=optim.SPARSITY,
                                bytes_per_step=model_params.bytes_per_step(kind),
                                bandwidth_bytes_per_s=bandwidth["bytes_per_s"], floor_s=floor_s)
    benchmark.pedantic(run, rounds=CONFIG.repeat, iterations=1, warmup_rounds=CONFIG.warmup)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["floor_multiple"] = stats.stats.median / floor_s
