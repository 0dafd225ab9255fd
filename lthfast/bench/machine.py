"""The machine a benchmark ran on, and its measured copy bandwidth."""
from __future__ import annotations

import os
import platform
import statistics
import sys

import torch

from lthfast.bench.measure import time_call


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        cores, phys = set(), None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
        return len(cores) or None
    except OSError:
        return None


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(device: torch.device) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": _physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "gpu": None,
    }
    if torch.cuda.is_available():
        idx = device.index if device.type == "cuda" and device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                       "memory_bytes": int(p.total_memory), "count": torch.cuda.device_count(),
                       "used_for_bench": device.type == "cuda"}
    return info


def copy_bandwidth(device: torch.device, nbytes: int, repeat: int = 5) -> dict:
    """Memory bandwidth of `dst.copy_(src)` on `device` for `nbytes`-byte float32
    tensors, counting each copy as nbytes read + nbytes written (STREAM 'copy')."""
    n = max(1, nbytes // 4)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults, lazy init
    times = [time_call(lambda: dst.copy_(src), device)[0] for _ in range(repeat)]
    seconds = statistics.median(times)
    nbytes = n * 4
    del src, dst
    return {"bytes_per_s": 2 * nbytes / seconds, "tensor_bytes": nbytes, "median_s": seconds,
            "times_s": times, "threads": torch.get_num_threads(), "device": str(device),
            "how": "median time of dst.copy_(src); bandwidth = (bytes read + bytes written) / time"}
