"""Runs benchmark suites and assembles one JSON-able result: machine, versions,
configuration, measured copy bandwidth, and every suite's cases."""
from __future__ import annotations

import dataclasses
import datetime
import sys
import traceback

import torch

import lthfast
from lthfast import _ops
from lthfast.bench import registry
from lthfast.bench.machine import copy_bandwidth, machine_info
from lthfast.cli._common import Progress

SCHEMA = "lthfast-bench/1"


def _bandwidth_bytes(config) -> int:
    if config.device.type == "cuda":
        return (256 if config.quick else 1024) * 2**20
    return (64 if config.quick else 256) * 2**20


def run(suite_names, config: registry.BenchConfig, *, quiet: bool = False) -> dict:
    """Runs the named suites (those not built yet are recorded as such)."""
    suites = [registry.get(n) for n in suite_names]
    result = {
        "schema": SCHEMA,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "machine": machine_info(config.device),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "git": getattr(torch.version, "git_version", None)},
        "lthfast": {"version": lthfast.__version__, "build_info": _ops.build_info(),
                    "reference_mode": _ops.use_reference()},
        "config": {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                   "device": str(config.device)},
        "bandwidth": None,
        "suites": {},
    }
    if any(s.available for s in suites):
        result["bandwidth"] = copy_bandwidth(config.device, _bandwidth_bytes(config))
    ctx = {"bandwidth": result["bandwidth"],
           "progress": lambda total, desc: Progress(total, desc, quiet=quiet)}
    for s in suites:
        if not s.available:
            result["suites"][s.name] = {"status": "not built yet", "reason": s.planned,
                                        "description": s.description}
            continue
        try:
            res = s.run(config, ctx)
        except Exception as e:  # noqa: BLE001 - recorded; the other suites still run
            traceback.print_exc()
            res = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        res["description"] = s.description
        result["suites"][s.name] = res
    return result


def failures(result: dict) -> list[str]:
    """One line per suite or case that ended in an error."""
    out = []
    for name, res in result["suites"].items():
        if res.get("status") == "error":
            out.append(f"{name}: {res.get('error', '?')}")
        # each suite names its cases by its own keys (threshold: model/round/method; ticket:
        # model/op/method; optim: model/optimizer/method; conv: layer/batch/sparsity, and
        # its end-to-end cases under "e2e")
        for c in (*res.get("cases", ()), *res.get("e2e", ())):
            if c.get("status") == "error":
                out.append(f"{name} {_case_name(c)}: {c.get('error', '?')}")
    return out


_CASE_KEYS = ("model", "layer", "round", "op", "optimizer", "batch", "sparsity", "method")


def _case_name(case: dict) -> str:
    parts = []
    for k in _CASE_KEYS:
        if k in case:
            v = case[k]
            parts.append(str(v) if k in ("model", "layer", "method", "op", "optimizer")
                         else f"{k} {v}")
    return " ".join(parts) or "a case"
