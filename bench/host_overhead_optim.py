"""Host (Python) overhead of one masked optimizer step, measured on the CPU with tiny
parameters so that the kernels' arithmetic is negligible and what is left is the per-step
bookkeeping (lists of params / grads / states / masks, state checks, lr / grad-scaler
handling, optimizer hooks). That part is the same on a GPU, where it makes the step
host-bound (bench/results/cuda-optim.txt).

    OMP_NUM_THREADS=1 python bench/host_overhead_optim.py [--reps 40] [--inner 50]

Lines: "lthfast" (one group), "lthfast no plan" (the plan switched off: the step as it was
before the plan cache), "lthfast 2 groups" (120 weights / the other 50 params, whose grads are
checked in Python before the first call writes). Model: 160 weights of 36 floats (150 Conv2d(2, 2, 3) weights, 10 Linear(6, 6) weights
with their 10 biases of 6): 170 parameters in one group; 120 of the weights masked by an
applied Ticket (50% pruned), the rest unmasked. Compared with torch.optim's fused=True and
foreach=True on identical (unmasked) parameters; methods interleaved, min and median of
`--reps` timings of `--inner` consecutive steps each. The "raw op" line is the C++ op
alone called with prebuilt lists through torch.ops, "lthfast unboxed" the same through
lthfast._C's unboxed entry that the planned step uses (a floor for the kernel + dispatcher
part).
Runs in well under a minute.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch
from torch import nn

import lthfast
import lthfast.optim as lo


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 2, 3, bias=False) for _ in range(150)]
    layers += [nn.Linear(6, 6) for _ in range(10)]
    return nn.ModuleList(layers)


def with_grads(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return model


def build(kind: str):
    """{label: (optimizer, params)} on separate copies of the same model."""
    out = {}
    m = with_grads(make_model())
    names = [n for n, p in m.named_parameters() if p.dim() > 1][:120]
    ticket = lthfast.Ticket.from_model(m, 0.5, scope=names)
    ticket.apply(m)
    if kind == "SGD":
        kw = dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)
        ours, theirs = lo.MaskedSGD, torch.optim.SGD
    elif kind == "Adam":
        kw = dict(lr=1e-3)
        ours, theirs = lo.MaskedAdam, torch.optim.Adam
    else:
        kw = dict(lr=1e-3, weight_decay=1e-2)
        ours, theirs = lo.MaskedAdamW, torch.optim.AdamW
    out["lthfast"] = ours(m.parameters(), ticket=ticket, **kw)
    # the same step with the plan off: every list rebuilt and every grad checked per step
    # (what every step did before the plan)
    m1 = with_grads(make_model())
    t1 = lthfast.Ticket.from_model(m1, 0.5, scope=names)
    t1.apply(m1)
    out["lthfast no plan"] = ours(m1.parameters(), ticket=t1, **kw)
    out["lthfast no plan"]._planned_step = lambda: False
    # two groups (the usual decay / no-decay split): the second call's grads are pre-checked
    m2 = with_grads(make_model())
    ps2 = list(m2.parameters())
    t2 = lthfast.Ticket.from_model(m2, 0.5, scope=names)
    t2.apply(m2)
    out["lthfast 2 groups"] = ours([{"params": ps2[:120]},
                                    {"params": ps2[120:], "weight_decay": 0.0}], ticket=t2, **kw)
    for flag in ("fused", "foreach"):
        mm = with_grads(make_model())
        out[f"torch {flag}"] = theirs(mm.parameters(), **{flag: True}, **kw)
    return out


def raw_op(opt, unboxed: bool = False):
    """A closure calling the C++ op with lists built once (after a first step): through
    torch.ops, or (unboxed) through lthfast._C's entry that the planned step uses."""
    from lthfast.optim import _kernels
    sgd_, adam_ = ((_kernels.step_sgd_, _kernels.step_adam_) if unboxed
                   else (_kernels.masked_sgd_, _kernels.masked_adam_))
    opt.step()
    params = [p for g in opt.param_groups for p in g["params"]]
    grads = [p.grad for p in params]
    masks = [opt._masks.get(p) for p in params]
    st = [opt.state[p] for p in params]
    g = opt.param_groups[0]
    if isinstance(opt, lo.MaskedSGD):
        bufs = [s["momentum_buffer"] for s in st]
        return lambda: sgd_(params, grads, bufs, masks, g["lr"], None, g["momentum"], 0.0,
                            g["weight_decay"], False, False, False, None, None)
    ea, eq, steps = [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [s["step"] for s in st]
    b1, b2 = g["betas"]
    return lambda: adam_(params, grads, ea, eq, [], steps, masks, g["lr"], None, b1, b2,
                         g["weight_decay"], g["eps"], False, False, g["decoupled_weight_decay"],
                         None, None)


def time_all(fns: dict, reps: int, inner: int) -> dict:
    for f in fns.values():  # warm-up (state init, first-step paths)
        for _ in range(3):
            f()
    res = {k: [] for k in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    f()
                res[k].append((time.perf_counter() - t0) / inner)
    finally:
        if gc_was:
            gc.enable()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--inner", type=int, default=50)
    ap.add_argument("--kinds", default="SGD,Adam,AdamW")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for kind in args.kinds.split(","):
        opts = build(kind)
        nparams = sum(len(g["params"]) for g in opts["lthfast"].param_groups)
        fns = {k: o.step for k, o in opts.items()}
        fns["lthfast raw op"] = raw_op(build(kind)["lthfast"])
        fns["lthfast unboxed"] = raw_op(build(kind)["lthfast"], unboxed=True)
        res = time_all(fns, args.reps, args.inner)
        ref = statistics.median(res["torch fused"])
        print(f"\n{kind} ({nparams} params, {args.reps} x {args.inner} steps)")
        print(f"  {'method':<18}{'min us/step':>12}{'med us/step':>12}{'med us/param':>14}"
              f"{'med / fused':>12}")
        for k, ts in res.items():
            mn, md = min(ts) * 1e6, statistics.median(ts) * 1e6
            print(f"  {k:<18}{mn:>12.1f}{md:>12.1f}{md / nparams:>14.3f}"
                  f"{statistics.median(ts) / ref:>12.2f}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
