"""Calibrate the demo's IMP schedule (not a test): dense training with a late-reset snapshot,
then pruned rounds (global magnitude over the `paper` preset, rewind to the snapshot, retrain),
evaluating every round. Masks are re-applied after every step (plain SGD), which is what
MaskedSGD does in one pass. Records CPU time per iteration (1 thread) and the load average.
"""
import argparse
import copy
import json
import os
import time

import torch

from lthfast.detection import build_model_for, evaluate, load_dataset, prunable_names, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rewind", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--lr-steps", default="250")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    steps = tuple(int(x) for x in a.lr_steps.split(",") if x)
    t0 = time.perf_counter()
    kw = dict(n_train=300, n_val=100, image_size=a.image_size, seed=0)
    tr = load_dataset("shapes", "train", task="detection", **kw)
    va = load_dataset("shapes", "val", task="detection", **kw)
    torch.manual_seed(0)
    model = build_model_for("fasterrcnn_resnet18_fpn", tr, image_size=a.image_size, verbose=False)
    names = prunable_names(model, "paper")
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    snap = {}

    def on_iter(step, m):
        with torch.no_grad():
            for n, mk in masks.items():
                params[n].mul_(mk)
        if step == a.rewind:
            snap["state"] = copy.deepcopy(m.state_dict())

    rows = []
    for rnd in range(a.rounds + 1):
        l0, c0, w0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
        start = 0 if rnd == 0 else a.rewind
        r = train(model, tr, iters=a.iters, start_iter=start, batch_size=a.batch_size, lr=a.lr,
                  warmup_iters=a.warmup, lr_steps=steps, seed=0, progress=False, on_iter=on_iter)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        e0, ec0 = time.perf_counter(), time.process_time()
        ev = evaluate(model, va, task="detection", batch_size=8)
        pruned = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        row = {"round": rnd, "sparsity": round(pruned, 4), "train_iters": a.iters - start,
               "cpu_s_per_iter": cpu / (a.iters - start), "wall_s_per_iter": wall / (a.iters - start),
               "eval_cpu_s": time.process_time() - ec0, "eval_wall_s": time.perf_counter() - e0,
               "load": [round(l0, 2), round(os.getloadavg()[0], 2)],
               **{k: round(v, 2) for k, v in ev.items() if k.startswith("bbox_")},
               "per_category": {k: round(v, 1) for k, v in ev["per_category"]["bbox"].items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if rnd == a.rounds:
            break
        # prune `rate` of the remaining weights globally by magnitude, rewind
        with torch.no_grad():
            alive = torch.cat([params[n].detach().abs()[masks[n]].flatten() for n in names])
            k = round(a.rate * alive.numel())
            thr = alive.kthvalue(k).values if k else torch.tensor(-1.0)
            for n in names:
                masks[n] &= params[n].detach().abs() > thr
            model.load_state_dict(snap["state"])
            for n in names:
                params[n].mul_(masks[n])
    print(f"total wall {time.perf_counter() - t0:.0f}s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
