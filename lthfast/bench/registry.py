"""The benchmark suites `lthfast bench` knows: each kernel family registers one.

A suite is a function `run(config, progress) -> dict` (JSON-able, with a
"status" key) and `format(result) -> str` (the human table). A suite whose
kernels do not exist yet is registered with `planned=` (the reason), so
`lthfast bench` says so instead of pretending to measure something.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    quick: bool = False
    repeat: int = 3
    warmup: int = 1
    models: tuple[str, ...] | None = None  # override a suite's default models

    def __post_init__(self):
        if not isinstance(self.device, torch.device):
            object.__setattr__(self, "device", torch.device(self.device))
        for name, low in (("repeat", 1), ("warmup", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"BenchConfig.{name} must be an integer >= {low}, got {v!r}")
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
            if not self.models:
                raise ValueError("BenchConfig.models is empty: give model names or None "
                                 "(the suites' defaults)")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    run: Callable[..., dict] | None = None
    format: Callable[[dict], str] | None = None
    planned: str | None = None  # why it cannot run yet

    @property
    def available(self) -> bool:
        return self.run is not None and self.planned is None


_SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    if suite.name in _SUITES or suite.name == "all":
        raise ValueError(f"benchmark suite {suite.name!r} is already registered")
    if suite.run is None and suite.planned is None:
        raise ValueError(f"suite {suite.name!r} needs run= or planned=")
    _SUITES[suite.name] = suite
    return suite


def get(name: str) -> Suite:
    try:
        return _SUITES[name]
    except KeyError:
        raise KeyError(f"unknown benchmark suite {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return list(_SUITES)


def config_from_env(environ=None) -> BenchConfig:
    """BenchConfig for the pytest-benchmark suites in bench/, from LTHFAST_BENCH_DEVICE
    (cpu|cuda), LTHFAST_BENCH_QUICK=1, LTHFAST_BENCH_MODELS=a,b, LTHFAST_BENCH_ROUNDS=N."""
    import os
    env = os.environ if environ is None else environ
    quick = env.get("LTHFAST_BENCH_QUICK", "") not in ("", "0")
    models = tuple(m.strip() for m in env.get("LTHFAST_BENCH_MODELS", "").split(",") if m.strip())
    device = env.get("LTHFAST_BENCH_DEVICE", "cpu").strip() or "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"LTHFAST_BENCH_DEVICE={device!r}: expected cpu or cuda")
    rounds = env.get("LTHFAST_BENCH_ROUNDS", "").strip() or ("1" if quick else "3")
    try:
        repeat = int(rounds)
    except ValueError:
        repeat = 0
    if repeat < 1:
        raise ValueError(f"LTHFAST_BENCH_ROUNDS={rounds!r}: expected a positive integer")
    return BenchConfig(device=torch.device(device), quick=quick, repeat=repeat,
                       warmup=1, models=models or None)
