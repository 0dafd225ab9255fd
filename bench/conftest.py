"""Configuration of the pytest-benchmark suites, by environment variable (so it is
the same whatever directory pytest starts from):

  LTHFAST_BENCH_DEVICE=cpu|cuda    device (default cpu)
  LTHFAST_BENCH_QUICK=1            the quick model set (resnet18) instead of the full one
  LTHFAST_BENCH_MODELS=a,b         explicit torchvision model names
  LTHFAST_BENCH_ROUNDS=N           timed rounds per case (default 3; 1 when quick)
  LTHFAST_BENCH_MEMORY=0           skip the extra run per case that measures peak memory
"""
from __future__ import annotations

import pytest
import torch

from lthfast import _ops
from lthfast.bench import threshold
from lthfast.bench.machine import copy_bandwidth
from lthfast.bench.registry import config_from_env

CONFIG = config_from_env()


def pytest_collection_modifyitems(config, items):
    reason = None
    if CONFIG.device.type == "cuda" and not torch.cuda.is_available():
        reason = "LTHFAST_BENCH_DEVICE=cuda but no CUDA GPU is visible"
    elif not _ops.available() and not _ops.use_reference():
        reason = "lthfast._C is not built (build it, or set LTHFAST_REFERENCE=1)"
    if reason:
        for item in items:
            if item.path.parent == __import__("pathlib").Path(__file__).parent:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def bench_config():
    return CONFIG


@pytest.fixture(scope="session")
def bandwidth() -> dict:
    mib = (64 if CONFIG.quick else 256) * (4 if CONFIG.device.type == "cuda" else 1)
    return copy_bandwidth(CONFIG.device, mib * 2**20)


@pytest.fixture(scope="module",
                params=CONFIG.models or (threshold.MODELS_QUICK if CONFIG.quick else threshold.MODELS_FULL))
def model_weights(request):
    return threshold.load_model_weights(request.param, CONFIG.device)
