"""Measure the built-in demo's training speed and AP (not a test): train the small default
detector on shapes for N iterations, evaluating at checkpoints. Records wall time, process
CPU time and the load average (the build machine is shared). Usage:
  python tools/calibrate_detection_demo.py --iters 200 --eval-at 100,200 --image-size 128 ...
"""
import argparse
import json
import os
import time

import torch

from lthfast.detection.data import load_dataset
from lthfast.detection.evaluate import evaluate
from lthfast.detection.models import build_model
from lthfast.detection.train import train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--eval-at", default="")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--representation-size", type=int, default=256)
    ap.add_argument("--trainable-layers", type=int, default=None)
    ap.add_argument("--lr-steps", default="")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    kw = dict(n_train=a.n_train, n_val=a.n_val, image_size=a.image_size)
    tr = load_dataset("shapes", "train", task="detection", **kw)
    va = load_dataset("shapes", "val", task="detection", **kw)
    print(f"data {time.perf_counter() - t0:.1f}s train={len(tr)} val={len(va)}", flush=True)
    torch.manual_seed(0)
    extra = {} if a.trainable_layers is None else {"trainable_layers": a.trainable_layers}
    m = build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=tr.num_classes,
                    image_size=a.image_size, fpn_channels=a.fpn_channels,
                    representation_size=a.representation_size, **extra)
    evals = sorted({int(x) for x in a.eval_at.split(",") if x} | {a.iters})
    steps = tuple(int(x) for x in a.lr_steps.split(",") if x)
    rows, done, opt, sch = [], 0, None, None
    for stop in evals:
        l0, c0, w0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
        r = train(m, tr, iters=stop, start_iter=done, batch_size=a.batch_size, lr=a.lr,
                  warmup_iters=a.warmup, lr_steps=steps, optimizer=opt, scheduler=sch,
                  progress=False, seed=0)
        opt, sch = r["optimizer"], r["scheduler"]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        l1 = os.getloadavg()[0]
        e0, ec0 = time.perf_counter(), time.process_time()
        ev = evaluate(m, va, task="detection", batch_size=8)
        row = {"iters": stop, "s_per_iter_wall": wall / (stop - done), "cpu_s_per_iter": cpu / (stop - done),
               "loss_last20": sum(r["losses"][-20:]) / len(r["losses"][-20:]),
               "eval_wall_s": time.perf_counter() - e0, "eval_cpu_s": time.process_time() - ec0,
               "load_before": l0, "load_after": l1, "threads": torch.get_num_threads(),
               **{k: round(v, 2) for k, v in ev.items() if k.startswith("bbox_")},
               "per_category": {k: round(v, 1) for k, v in ev["per_category"]["bbox"].items()}}
        done = stop
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
