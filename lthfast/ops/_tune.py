"""`path="tuned"`: the first eager inference call of each configuration times both paths
and keeps the faster one for every later call with that configuration, as
`torch.backends.cudnn.benchmark` does for cuDNN's algorithms.

Why: the `auto` table (_conv_dispatch) holds one threshold per class of layer, measured
on two machines; within a class some layers win where others lose (1x1 convs at batch
8 and 80% sparsity: up to 1.4x off the better path in `lthfast bench conv`), and a CPU
unlike those machines may differ everywhere. Timing the layer itself, on this machine,
with its own weights, removes both errors for the price of a few extra calls once.

A configuration is (device, dtype, layer geometry, input shape and memory format,
bias or not, torch's CPU thread count, weight sparsity to 0.01): what the two paths'
speed depends on. The choice is process-wide (layers of one shape share it, a new
IMP round's slightly different sparsity reuses it); `clear_tuned()` forgets them and
`tuned_paths()` lists them with the measured times. Like cudnn.benchmark, a choice made
under heavy load can differ from one made on a quiet machine, and so can the last
bits of the outputs (the two paths round differently).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch

#: at least this many timed rounds of both paths, more (up to MAX_ROUNDS) while the
#: measuring has taken less than BUDGET_S: small layers get more rounds, where one
#: round is a few microseconds and noise weighs more
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 3, 25, 0.02


class TunedPath(NamedTuple):
    """One configuration's choice: the path and the fastest time of each path (seconds)."""
    path: str
    dense_s: float
    sparse_s: float


_CHOICES: dict[tuple, TunedPath] = {}


def key(op: str, input: torch.Tensor, weight: torch.Tensor, bias, sparsity: float,
        geometry: tuple = ()) -> tuple:
    dev = input.device
    threads = torch.get_num_threads() if dev.type == "cpu" else 0
    return (op, str(dev), input.dtype, tuple(input.shape), tuple(input.stride()),
            tuple(weight.shape), bias is not None, geometry, threads, round(sparsity, 2))


def choice(k: tuple) -> bool | None:
    """True (sparse) / False (dense) when configuration `k` was tuned, else None."""
    c = _CHOICES.get(k)
    return None if c is None else c.path == "sparse"


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def tune(k: tuple, device: torch.device, dense: Callable[[], torch.Tensor],
         sparse: Callable[[], torch.Tensor]) -> tuple[bool, torch.Tensor]:
    """Times `dense` and `sparse` (one untimed call of each first: it builds the cached
    masked / packed weight), in alternating order, and records the faster by their
    fastest rounds. Returns (sparse?, the output of the chosen path's last call)."""
    runs = {"dense": dense, "sparse": sparse}
    best = {"dense": float("inf"), "sparse": float("inf")}
    last = {name: fn() for name, fn in runs.items()}
    spent, rounds = 0.0, 0
    while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and spent < BUDGET_S):
        order = ("dense", "sparse") if rounds % 2 == 0 else ("sparse", "dense")
        for name in order:
            t, last[name] = _timed(runs[name], device)
            best[name] = min(best[name], t)
            spent += t
        rounds += 1
    path = "sparse" if best["sparse"] < best["dense"] else "dense"
    _CHOICES[k] = TunedPath(path, best["dense"], best["sparse"])
    return path == "sparse", last[path]


def tuned_paths() -> dict[tuple, TunedPath]:
    """Every configuration tuned so far -> TunedPath(path, dense_s, sparse_s). A key is
    (op, device, dtype, input shape, input strides, weight shape, has bias, (stride,
    padding, dilation, groups) for conv2d, CPU threads, sparsity to 0.01)."""
    return dict(_CHOICES)


def clear_tuned() -> None:
    """Forgets every tuned choice: the next call of each configuration times both paths again."""
    _CHOICES.clear()
