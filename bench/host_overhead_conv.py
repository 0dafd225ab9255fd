"""Per-call host overhead of lthfast's masked layers against torch's, on the CPU.

On a GPU a small convolution takes 30-50 us, so what the masked modules spend on
the host per call decides whether a sparsified model keeps up with the dense one.
That cost does not depend on the device: here it is measured with tiny CPU inputs
(the kernels themselves take a few us), one thread, torch and lthfast interleaved.

  python bench/host_overhead_conv.py [--reps 200] [--calls 50]

Cases (per call, us; min and median over reps; extra = lthfast - torch):
  conv eval no_grad    nn.Conv2d(4,4,3) vs MaskedConv2d (50% mask), 1x4x8x8, eval, no_grad
  conv eval inference  same under torch.inference_mode
  conv eval autocast   same under no_grad + torch.autocast("cpu", bfloat16)
  conv train fwd+bwd   train mode, forward + backward of out.sum()
  conv functional      F.conv2d(x, w * mask) pre-masked vs lthfast.ops.masked_conv2d(x, w, mask)
  linear eval no_grad  nn.Linear(16,16) vs MaskedLinear, 1x16
  linear train fwd+bwd the same in train mode, forward + backward
  resnet18 eval        whole torchvision resnet18 (dense vs sparsified, 50% masks), 1x3x32x32
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import lthfast.nn as lnn
from lthfast.ops import masked_conv2d


def _mask_like(w: torch.Tensor, keep: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(w.shape, generator=gen) < keep


def _sparsified(model: nn.Module, keep: float = 0.5, path: str = "auto") -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    masked = copy.deepcopy(model)
    masks = {n: _mask_like(p, keep, gen) for n, p in masked.named_parameters()
             if n.endswith("weight") and p.dim() in (2, 4)}
    lnn.sparsify(masked, masks, path=path)
    # The dense model computes the same: its weights are the masked ones.
    dense = copy.deepcopy(masked)
    lnn.densify(dense)
    return dense, masked


def _time(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def compare(name: str, f_torch, f_lth, reps: int, calls: int) -> dict:
    for _ in range(3):
        f_torch(), f_lth()
    a, b, extra = [], [], []
    gc.disable()
    try:
        for i in range(reps):
            if i % 2:  # alternate the order too
                tb = _time(f_lth, calls)
                ta = _time(f_torch, calls)
            else:
                ta = _time(f_torch, calls)
                tb = _time(f_lth, calls)
            a.append(ta), b.append(tb), extra.append(tb - ta)
    finally:
        gc.enable()
    row = dict(case=name, torch_min=min(a), torch_med=statistics.median(a), lth_min=min(b),
               lth_med=statistics.median(b), extra_min=min(b) - min(a),
               extra_med=statistics.median(extra))
    print(f"{name:<24} {row['torch_min']:8.2f} {row['torch_med']:8.2f} {row['lth_min']:8.2f} "
          f"{row['lth_med']:8.2f} {row['extra_min']:8.2f} {row['extra_med']:8.2f} "
          f"{row['lth_med'] / row['torch_med']:6.3f}", flush=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--model-reps", type=int, default=60)
    ap.add_argument("--path", default="auto", choices=("auto", "dense", "sparse"))
    ap.add_argument("--only", default="", help="comma-separated case-name prefixes")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    only = [s for s in args.only.split(",") if s]

    def want(name):
        return not only or any(name.startswith(p) for p in only)

    import lthfast
    print(f"lthfast from {os.path.dirname(lthfast.__file__)}")
    print(f"torch {torch.__version__}, 1 thread, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'case (us per call)':<24} {'torch':>8} {'torch':>8} {'lthfast':>8} {'lthfast':>8} "
          f"{'extra':>8} {'extra':>8} {'ratio':>6}")
    print(f"{'':<24} {'min':>8} {'median':>8} {'min':>8} {'median':>8} {'min':>8} "
          f"{'median':>8} {'median':>6}")

    dense, masked = _sparsified(nn.Sequential(nn.Conv2d(4, 4, 3)), path=args.path)
    c, m = dense[0], masked[0]
    x = torch.randn(1, 4, 8, 8)
    c.eval(), m.eval()
    assert torch.allclose(c(x), m(x), atol=1e-6)
    if want("conv eval no_grad"):
        with torch.no_grad():
            compare("conv eval no_grad", lambda: c(x), lambda: m(x), args.reps, args.calls)
    if want("conv eval inference"):
        with torch.inference_mode():
            compare("conv eval inference", lambda: c(x), lambda: m(x), args.reps, args.calls)
    if want("conv eval autocast"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            compare("conv eval autocast bf16", lambda: c(x), lambda: m(x), args.reps, args.calls)
    if want("conv train fwd+bwd"):
        c.train(), m.train()

        def step(mod):
            def f():
                mod(x).sum().backward()
            return f
        compare("conv train fwd+bwd", step(c), step(m), args.reps // 2, args.calls)
        c.eval(), m.eval()

    if want("conv functional"):
        w, mk = m.weight.detach(), m.mask
        wm = w * mk
        with torch.no_grad():
            compare("conv functional", lambda: F.conv2d(x, wm),
                    lambda: masked_conv2d(x, w, mk, path=args.path), args.reps, args.calls)

    dl, ml = _sparsified(nn.Sequential(nn.Linear(16, 16)), path=args.path)
    dl.eval(), ml.eval()
    xl = torch.randn(1, 16)
    if want("linear eval no_grad"):
        with torch.no_grad():
            compare("linear eval no_grad", lambda: dl(xl), lambda: ml(xl), args.reps, args.calls)
    if want("linear train fwd+bwd"):
        dl.train(), ml.train()
        compare("linear train fwd+bwd", lambda: dl(xl).sum().backward(),
                lambda: ml(xl).sum().backward(), args.reps // 2, args.calls)
        dl.eval(), ml.eval()

    if want("resnet18"):
        import torchvision
        dm, mm = _sparsified(torchvision.models.resnet18(num_classes=10), path=args.path)
        dm.eval(), mm.eval()
        xr = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(dm(xr), mm(xr), atol=1e-4)
            compare("resnet18 eval no_grad", lambda: dm(xr), lambda: mm(xr), args.model_reps, 5)
        with torch.inference_mode():
            compare("resnet18 eval inference", lambda: dm(xr), lambda: mm(xr), args.model_reps, 5)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
