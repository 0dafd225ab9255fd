"""Per-kernel time of the CUDA threshold, and where a masked optimizer step's time
goes. For a session lent a GPU (`tools/gpu_check.sh kernels`); prints tables, no files.

Threshold: `global_magnitude_masks` on the Conv/Linear weights of each model, round 1
(no masks) and round 2 (the round-1 masks given): the median time of a call between
CUDA events, the time of each kernel (torch.profiler), and the floor (one read of the
weights + one write of the bool masks at the measured copy bandwidth); each with the
candidate path (the default) and without it (LTHFAST_CUDA_CANDIDATES=0), masks compared.

Optimizer: `MaskedSGD` / `MaskedAdamW` on resnet50 (80% pruned, packed ticket masks):
the step's host time (until step() returns, the GPU idle before), back-to-back steps
(the larger of host and GPU time), one step between CUDA events, and the kernel time.
No gc.collect() between steps, unlike `lthfast bench optim` (see bench/README.md).
Each with ticket-bound packed masks and with bool masks (`masks=`).
    python tools/gpu_kernel_times.py [--models keypointrcnn_resnet50_fpn,wide_resnet101_2]
    python tools/gpu_kernel_times.py --device cpu --models resnet18 --optim-model resnet18  # dry run
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import lthfast
import lthfast.optim as lo
from lthfast.bench.machine import copy_bandwidth
from lthfast.cli._models import build_model, prunable_layers


def _weights(model):
    return [m.weight.detach() for _, m in prunable_layers(model)]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def events_median(fn, reps: int = 20) -> float:
    """Median ms of fn() between two CUDA events (perf_counter on a CPU dry run),
    after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if not torch.cuda.is_available():
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def kernel_times(fn) -> list[tuple[str, int, float]]:
    """(kernel name, launches, total us) of one fn() call, largest first (only device
    activity is recorded, so every event is a kernel, copy or memset)."""
    fn()
    _sync()
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        _sync()
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0:
            name = e.key.replace("(anonymous namespace)::", "").replace("lthfast::", "").split("(")[0]
            rows.append((name, e.count, us))
    return sorted(rows, key=lambda r: -r[2])


def threshold_times(model_name: str, dev, bw: float) -> None:
    torch.manual_seed(0)
    ws = _weights(build_model(model_name).to(dev))
    n = sum(w.numel() for w in ws)
    wbytes = sum(w.numel() * w.element_size() for w in ws)
    floor_ms = (wbytes + n) / bw * 1e3  # read the weights + write bool masks, at copy speed
    first = lthfast.global_magnitude_masks(ws, 0.2)
    print(f"\n== {model_name}: {len(ws)} weights, {n / 1e6:.1f}M entries, floor {floor_ms:.3f} ms "
          "(one read of the weights + the bool masks' write)")
    for rnd, kw in ((1, {}), (2, {"masks": first})):
        fn = lambda: lthfast.global_magnitude_masks(ws, 0.2, **kw)  # noqa: E731
        masks = {}
        for path, cap in (("candidates", None), ("no candidates", "0")):
            if cap is None:
                os.environ.pop("LTHFAST_CUDA_CANDIDATES", None)
            else:
                os.environ["LTHFAST_CUDA_CANDIDATES"] = cap
            masks[path] = fn()
            ms = events_median(fn)
            ks = kernel_times(fn)
            ktot = sum(us for _, _, us in ks) / 1e3
            same = "" if len(masks) == 1 else (
                "  same masks" if all(torch.equal(a, b) for a, b in zip(*masks.values())) else "  MASKS DIFFER")
            print(f"round {rnd} {path:13s}: {ms:.3f} ms per call ({ms / floor_ms:.1f}x floor), "
                  f"{ktot:.3f} ms in kernels{same}")
            for name, cnt, us in ks[:12]:
                print(f"    {us:8.1f} us  {cnt:2d}x  {name[:90]}")
        os.environ.pop("LTHFAST_CUDA_CANDIDATES", None)


def optim_breakdown(dev, model_name: str) -> None:
    torch.manual_seed(0)
    net = build_model(model_name).to(dev)
    ticket = lthfast.Ticket.from_model(net, 0.8)
    ticket.apply(net)
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"\n== optimizer step, {model_name} ({len(params)} params, 80% pruned)")
    named = dict(net.named_parameters())
    bool_masks = {named[n]: ticket[n].to(dev) for n in ticket.names()}
    for name, opt in (("MaskedSGD", lo.MaskedSGD(params, lr=1e-2, momentum=0.9, ticket=ticket)),
                      ("MaskedAdamW", lo.MaskedAdamW(params, lr=1e-3, ticket=ticket)),
                      ("MaskedSGD masks=bool", lo.MaskedSGD(params, lr=1e-2, momentum=0.9, masks=bool_masks)),
                      ("MaskedAdamW masks=bool", lo.MaskedAdamW(params, lr=1e-3, masks=bool_masks))):
        for _ in range(5):
            opt.step()
        _sync()
        host = []
        for _ in range(30):
            _sync()
            t0 = time.perf_counter()
            opt.step()
            host.append(time.perf_counter() - t0)
        _sync()
        t0 = time.perf_counter()
        for _ in range(50):
            opt.step()
        _sync()
        b2b = (time.perf_counter() - t0) / 50
        wall = events_median(opt.step, 30)
        ktot = sum(us for _, _, us in kernel_times(opt.step)) / 1e3
        print(f"{name:22s} host {statistics.median(host) * 1e3:.3f} ms (step() returns), back-to-back "
              f"{b2b * 1e3:.3f} ms/step, one step with sync {wall:.3f} ms, kernels {ktot:.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="keypointrcnn_resnet50_fpn,wide_resnet101_2")
    ap.add_argument("--optim-model", default="resnet50")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'} | torch {torch.__version__}")
    bw = copy_bandwidth(dev, 1 << (30 if dev.type == "cuda" else 26))["bytes_per_s"]
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    for m in args.models.split(","):
        threshold_times(m, dev, bw)
    optim_breakdown(dev, args.optim_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
