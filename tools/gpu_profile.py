"""Where the time of the GPU paths goes: host work vs kernels, and how many launches.

The H200 run (bench/results/cuda-*.txt) left these open: global_magnitude_masks at
13.7x its bandwidth floor, round 2 3x slower than round 1, lthfast.prune round 2 no
faster than torch's, the fused optimizer steps at 5-9x their floor. All look host-bound
(a few hundred tensors of ~0.1-1 MB); this script shows it with torch.profiler: for
each case the wall time, the summed kernel time, the number of kernel launches and
the top host-side ops. `tools/gpu_check.sh profile` runs it.
    python tools/gpu_profile.py             # cuda
    python tools/gpu_profile.py --device cpu  # a dry run of the script
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import lthfast
import lthfast.optim as lo
import lthfast.prune as lprune
from lthfast.cli._models import build_model


def _weights(model):
    return [m.weight for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d))]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name, fn, device, reps=5):
    fn()  # warm-up (allocator, handles)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    wall = (time.perf_counter() - t0) / reps * 1e3
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        _sync(device)
    events = prof.key_averages()
    dev_us = sum(e.self_device_time_total for e in events) if device.type == "cuda" else 0.0
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                        "cudaLaunchKernelExC"))
    print(f"\n== {name}: {wall:.2f} ms wall, {dev_us / 1e3:.2f} ms in kernels, {launches} launches")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="keypointrcnn_resnet50_fpn")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    ws = [w.detach() for w in _weights(model)]
    print(f"{args.model}: {len(ws)} weights, {sum(w.numel() for w in ws) / 1e6:.1f}M entries, {device}")
    first = lthfast.global_magnitude_masks(ws, 0.2)
    run_case("global_magnitude_masks round 1", lambda: lthfast.global_magnitude_masks(ws, 0.2), device)
    run_case("global_magnitude_masks round 2", lambda: lthfast.global_magnitude_masks(ws, 0.2, masks=first),
             device)
    run_case("mask_counts (bool masks)", lambda: lthfast.magnitude.mask_counts(first), device)
    floats = [m.to(w.dtype) for m, w in zip(first, ws)]
    run_case("mask_counts (float masks, torch's format)", lambda: lthfast.magnitude.mask_counts(floats),
             device)

    def prune_round2():
        net = build_model(args.model).to(device)
        params = [(m, "weight") for m in net.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d))]
        lprune.global_unstructured(params, pruning_method=lprune.L1Unstructured, amount=0.2)
        _sync(device)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                                           else [])) as prof:
            lprune.global_unstructured(params, pruning_method=lprune.L1Unstructured, amount=0.2)
            _sync(device)
        print(f"\n== lthfast.prune.global_unstructured round 2: {(time.perf_counter() - t0) * 1e3:.2f} ms "
              f"(profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12,
                                        max_name_column_width=48))
    prune_round2()

    net = build_model("resnet50").to(device)
    ticket = lthfast.Ticket.from_model(net, 0.8)
    ticket.apply(net)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt = lo.MaskedAdamW(net.parameters(), lr=1e-3, ticket=ticket)
    run_case("MaskedAdamW step (resnet50, 80% pruned)", opt.step, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
