"""Every CUDA op once, on moderate random inputs, against the CPU kernels / torch.

Short enough to run under compute-sanitizer (memcheck, racecheck) on a lent GPU;
tools/gpu_check.sh runs it. Exit status 1 when any check fails.
    python tools/gpu_smoke.py
    LTHFAST_SMOKE_DEVICE=cpu python tools/gpu_smoke.py   # checks the script itself
"""
from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.nn.functional as F

import lthfast
import lthfast.optim as lo
import lthfast.prune as lprune
from lthfast import bitmask
from lthfast.magnitude import mask_counts
from lthfast.ops import masked_conv2d, masked_linear

DEV = os.environ.get("LTHFAST_SMOKE_DEVICE", "cuda")  # "cpu": a dry run of the script itself
# float32 comparisons at float32 tolerance: no TF32 in cuDNN convolutions or matmuls.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
CHECKS: list = []


def check(name):
    def register(fn):
        CHECKS.append((name, fn))
        return fn
    return register


def _tensors(g):
    return [torch.randn(64, 32, 3, 3, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randn(1000, 300, generator=g).half(),
            torch.randn(70_001, generator=g).to(torch.bfloat16),
            torch.randn(257, 129, generator=g).t()]


@check("threshold: masks, threshold, threshold_mask sequence (= CPU, bit for bit)")
def _threshold():
    g = torch.Generator().manual_seed(0)
    cpu = _tensors(g)
    gpu = [t.to(DEV) for t in cpu]
    for amount in (0.0, 0.2, 0.9, 1.0):
        for masks in (None, [torch.rand(t.shape, generator=g) > 0.3 for t in cpu]):
            want = lthfast.global_magnitude_masks(cpu, amount, masks=masks)
            got = lthfast.global_magnitude_masks(gpu, amount, masks=None if masks is None
                                                 else [m.to(DEV) for m in masks])
            assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), amount
    # straddling ties: ~14000 (the ordered pass over every entry) and ~1400 in a
    # transposed layout (ranked in one block on the candidate path)
    for ties in ([torch.randint(-3, 4, (50_000,), generator=g).float()],
                 [torch.randint(-3, 4, (100, 50), generator=g).float().t(), torch.randn(3000, generator=g)]):
        got = lthfast.global_magnitude_masks([t.to(DEV) for t in ties], 0.5)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, lthfast.global_magnitude_masks(ties, 0.5)))


@check("mask_counts (= CPU)")
def _mask_counts():
    g = torch.Generator().manual_seed(1)
    special = torch.tensor([0.0, -0.0, 1.0, 0.5, -1.0, float("nan"), float("inf")])
    big = (torch.rand(200_000, generator=g) > 0.5).float()  # several chunks
    big[torch.randint(0, big.numel(), (500,), generator=g)] = 0.5
    ms = [special, special.half(), special.bfloat16(), special.double(), big, big > 0,
          (torch.rand(30, 40, generator=g) > 0.5).half().t(), torch.zeros(0),
          (torch.rand(60, 50, generator=g) > 0.5).double()[:, ::3]]  # a strided view
    assert torch.equal(mask_counts([m.to(DEV) for m in ms]).cpu(), mask_counts(ms))


@check("lthfast.prune.global_unstructured on CUDA (= CPU masks)")
def _prune():
    torch.manual_seed(2)
    nets = [torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Linear(16, 10)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[1].to(DEV)
    for _ in range(2):
        for n in nets:
            lprune.global_unstructured([(n[0], "weight"), (n[1], "weight")],
                                       pruning_method=lprune.L1Unstructured, amount=0.3)
    for a, b in zip(nets[0].buffers(), nets[1].buffers()):
        assert torch.equal(a, b.cpu())


@check("bitmask: pack / unpack / count / overlap (= CPU)")
def _bitmask():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(37, 1001, generator=g) > 0.4
    b = torch.rand(37, 1001, generator=g) > 0.6
    pa = bitmask.pack_bits(a)
    assert torch.equal(bitmask.pack_bits(a.to(DEV)).cpu(), pa)
    assert torch.equal(bitmask.unpack_bits(pa.to(DEV), a.shape).cpu(), a)
    assert bitmask.count_bits(pa.to(DEV)) == int(a.sum())
    assert bitmask.overlap_bits(pa.to(DEV), bitmask.pack_bits(b).to(DEV)) == \
        bitmask.overlap_bits(pa, bitmask.pack_bits(b))


def _optim_run(device, opt_cls, **kw):
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    model = model.to(device)
    model[0].to(memory_format=torch.channels_last)
    ticket = lthfast.Ticket.from_model(model, 0.7)
    ticket.apply(model)
    opt = opt_cls(model.parameters(), ticket=ticket, **kw)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)).to(device)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


@check("MaskedSGD / MaskedAdam / MaskedAdamW on CUDA (~ CPU, pruned entries exactly 0)")
def _optim():
    for cls, kw in ((lo.MaskedSGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)),
                    (lo.MaskedAdam, dict(lr=1e-2, amsgrad=True)),
                    (lo.MaskedAdamW, dict(lr=1e-2, weight_decay=0.1))):
        cpu, gpu = _optim_run("cpu", cls, **kw), _optim_run(DEV, cls, **kw)
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            assert torch.equal(a == 0, b == 0) or a.dim() == 1, cls.__name__


@check("masked_conv2d / masked_linear: dense and sparse paths, forward and backward (~ F.conv2d)")
def _conv():
    g = torch.Generator().manual_seed(6)
    for groups, stride, dil in ((1, 1, 1), (1, 2, 1), (4, 1, 2), (32, 1, 1)):
        x = torch.randn(2, 32, 17, 19, generator=g).to(DEV)
        w = torch.randn(64, 32 // groups, 3, 3, generator=g).to(DEV)
        m = (torch.rand(w.shape, generator=g) > 0.85).to(DEV)
        b = torch.randn(64, generator=g).to(DEV)
        want = F.conv2d(x, w * m, b, stride, dil, dil, groups)
        for path in ("dense", "sparse", "auto"):
            got = masked_conv2d(x, w, m, b, stride, dil, dil, groups, path=path)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        wg = w.clone().requires_grad_()
        masked_conv2d(x, wg, m, b, stride, dil, dil, groups, path="dense").sum().backward()
        assert bool((wg.grad[~m] == 0).all())
    x = torch.randn(8, 300, generator=g).to(DEV)
    w = torch.randn(100, 300, generator=g).to(DEV)
    m = (torch.rand(w.shape, generator=g) > 0.9).to(DEV)
    for path in ("dense", "sparse"):
        torch.testing.assert_close(masked_linear(x, w, m, path=path), F.linear(x, w * m),
                                   rtol=1e-4, atol=1e-4)


def main() -> int:
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible")
        return 2
    failed = 0
    for name, fn in CHECKS:
        try:
            fn()
            if DEV == "cuda":
                torch.cuda.synchronize()
            print(f"ok    {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every check
            traceback.print_exc()
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
