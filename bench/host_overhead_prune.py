"""Host (Python + dispatcher) overhead of global_unstructured: torch.nn.utils.prune vs lthfast.prune.

Tiny layers (Conv2d(4, 4, 3): 144 weights each) make the kernels' own work negligible, so
the time per layer is the per-layer host cost that dominates on a GPU. One thread; each
rep builds a fresh model (same seed) and times round 1 and round 2 of
``global_unstructured(params, pruning_method=L1Unstructured, amount=0.2)`` for torch and
lthfast, interleaved; gc.collect() before each timed call (gc is left enabled during it,
as in real use). Reports min and median over the reps.

    .venv/bin/python bench/host_overhead_prune.py [--layers 160] [--reps 40] [--bias]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch
import torch.nn.utils.prune as tprune

import lthfast.prune as lprune


def build(n_layers, seed, device):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3) for _ in range(n_layers)]).to(device)


def params_of(model, bias):
    out = []
    for m in model:
        out.append((m, "weight"))
        if bias:
            out.append((m, "bias"))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rounds(lib, model, bias, device):
    times = []
    for _ in range(2):
        params = params_of(model, bias)
        gc.collect()
        sync(device)
        t0 = time.perf_counter()
        lib.global_unstructured(params, pruning_method=lib.L1Unstructured, amount=0.2)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=160)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--bias", action="store_true", help="prune the biases too")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    libs = {"torch": tprune, "lthfast": lprune}
    res = {(lib, r): [] for lib in libs for r in (0, 1)}
    for name, lib in libs.items():  # warm-up (and a check that both give the same masks)
        time_rounds(lib, build(args.layers, 0, device), args.bias, device)
    a, b = build(args.layers, 1, device), build(args.layers, 1, device)
    for mod, lib in ((a, tprune), (b, lprune)):
        for _ in range(2):
            lib.global_unstructured(params_of(mod, args.bias), pruning_method=lib.L1Unstructured,
                                    amount=0.2)
    same = all(torch.equal(x.weight_mask, y.weight_mask) for x, y in zip(a, b))
    for rep in range(args.reps):
        order = list(libs.items()) if rep % 2 == 0 else list(libs.items())[::-1]
        for name, lib in order:
            model = build(args.layers, rep, device)
            for r, t in enumerate(time_rounds(lib, model, args.bias, device)):
                res[(name, r)].append(t)
            del model
    # lthfast's one global_threshold call per round: on the CPU a fixed ~1 ms of compute
    # (an asynchronous launch on a GPU), to read the per-layer host cost without it
    kernel = {0: [], 1: []}
    model = build(args.layers, 0, device)
    for r in (0, 1):
        ws = [w.detach() for _, w in model.named_parameters() if w.dim() > 1 or args.bias]
        ms = [m.weight_mask for m in model] if r else []
        if args.bias and r:
            ms = [t for m in model for t in (m.weight_mask, m.bias_mask)]
        k = round(0.2 * sum(int(m.sum()) for m in ms)) if r else round(0.2 * sum(w.numel() for w in ws))
        for _ in range(max(10, args.reps // 2)):
            sync(device)
            t0 = time.perf_counter()
            torch.ops.lthfast.global_threshold(ws, ms, k)
            sync(device)
            kernel[r].append(time.perf_counter() - t0)
        if r == 0:
            lprune.global_unstructured(params_of(model, args.bias), pruning_method=lprune.L1Unstructured,
                                       amount=0.2)
            ws = [m.weight_orig.detach() for m in model]
    n = args.layers * (2 if args.bias else 1)
    print(f"{args.layers} x Conv2d(4,4,3){' +bias' if args.bias else ''}: {n} tensors, "
          f"{args.reps} reps, {args.threads} thread(s), {device}, torch {torch.__version__}, "
          f"load avg {os.getloadavg()[0]:.2f}, masks equal torch's: {same}")
    print(f"{'round':<6}{'stat':<7}{'torch ms':>10}{'lthfast ms':>12}{'torch us/t':>12}"
          f"{'lthfast us/t':>14}{'torch/lthfast':>15}")
    for r in (0, 1):
        for stat, f in (("min", min), ("median", statistics.median)):
            t, l = f(res[("torch", r)]) * 1e3, f(res[("lthfast", r)]) * 1e3
            print(f"{r + 1:<6}{stat:<7}{t:>10.2f}{l:>12.2f}{t * 1e3 / n:>12.1f}{l * 1e3 / n:>14.1f}"
                  f"{t / l:>15.2f}")
    print("lthfast without its global_threshold kernel (min of each, subtracted):")
    for r in (0, 1):
        g = min(kernel[r]) * 1e3
        t, l = min(res[("torch", r)]) * 1e3, min(res[("lthfast", r)]) * 1e3 - g
        print(f"{r + 1:<6}{'min':<7}{t:>10.2f}{l:>12.2f}{t * 1e3 / n:>12.1f}{l * 1e3 / n:>14.1f}"
              f"{t / l:>15.2f}   (global_threshold {g:.2f} ms)")


if __name__ == "__main__":
    main()
