"""The `optim` suite: one optimizer step on all parameters of torchvision models
whose Conv/Linear weights are pruned to 80% (global magnitude), lthfast's fused
masked optimizers vs torch.optim with the masking users write today.

Methods per optimizer (AdamW; SGD with momentum 0.9), same model, same run:
  torch_foreach        torch.optim step, foreach, no masking (dense speed reference)
  torch_foreach_naive  grad.mul_(mask) before, p.mul_(mask) after (ASP-style, float masks)
                       around the foreach step: the baseline
  torch_fused_naive    the same around torch's fused step (fused=True), where available
  lthfast              lthfast.optim.MaskedAdamW / MaskedSGD (masking fused into the step)
'x floor' = time / (bytes the fused step must move / measured copy bandwidth).

On CUDA each timed sample is a burst of CUDA_BURST steps back to back, divided by
CUDA_BURST: in training the host issues a step while the GPU still runs the backward
pass, so a step's cost is the larger of its host and GPU time, which one step between
a pair of events (host then GPU, serially) would overstate for every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import lthfast
import lthfast.optim as lo
from lthfast.bench.measure import NoMemoryProbe, measure
from lthfast.cli._models import build_model, prunable_layers

SPARSITY = 0.8
MODELS_FULL = ("resnet50", "maskrcnn_resnet50_fpn")
MODELS_QUICK = ("resnet18",)
BASELINE = "torch_foreach_naive"
#: Targets (reported, not asserted): lthfast at least this much faster than the
#: baseline; on a GPU within 1 / TARGET_FLOOR_FRACTION of the bandwidth floor.
TARGET_SPEEDUP = 1.5
TARGET_FLOOR_FRACTION = 0.8
#: Steps per timed sample on CUDA (see the module docstring); 1 on CPU.
CUDA_BURST = 10


@dataclass
class ModelParams:
    name: str
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    masks: dict  # param -> bool mask (the pruned Conv/Linear weights)

    def clone(self):
        """Fresh parameter tensors (same values, grads and masks) for one method."""
        ps = [torch.nn.Parameter(p.detach().clone()) for p in self.params]
        ms = {}
        for old, new, g in zip(self.params, ps, self.grads):
            new.grad = g.clone()
            if old in self.masks:
                ms[new] = self.masks[old]
        return ps, ms

    def bytes_per_step(self, kind: str) -> int:
        """Bytes the fused step must move: read weight, grad, state, mask; write weight, state."""
        total = 0
        n_state = 2 if kind == "adamw" else 1
        for p in self.params:
            e = p.element_size()
            total += p.numel() * e * (2 + n_state + 1 + n_state)  # r: p,g,states  w: p,states
            if p in self.masks:
                total += (p.numel() + 7) // 8  # packed mask (1 bit per weight)
        return total


def load_model_params(name: str, device: torch.device) -> ModelParams:
    torch.manual_seed(0)
    model = build_model(name).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [m.weight for _, m in prunable_layers(model)]
    keep = lthfast.global_magnitude_masks(weights, SPARSITY)
    with torch.no_grad():
        for w, k in zip(weights, keep):
            w.mul_(k)
    g = torch.Generator(device=device).manual_seed(1)
    grads = [torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
             .contiguous(memory_format=_format_of(p)) for p in params]
    return ModelParams(name, params, grads, dict(zip(weights, keep)))


def _format_of(p):
    return torch.channels_last if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) \
        and not p.is_contiguous() else torch.contiguous_format


def _torch_opt(kind, params, **kw):
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, **kw)
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9, **kw)


def _naive(kind, **kw):
    def make(mp: ModelParams):
        ps, ms = mp.clone()
        opt = _torch_opt(kind, ps, **kw)
        # masks in the weight's dtype, as ASP / torch.nn.utils.prune keep them (a bool
        # mask makes mul_ a slower mixed-dtype op)
        pairs = [(p, m.to(p.dtype)) for p, m in ms.items()]

        @torch.no_grad()
        def step():
            for p, m in pairs:
                p.grad.mul_(m)
            opt.step()
            for p, m in pairs:
                p.mul_(m)
        return step
    return make


def _dense(kind):
    def make(mp):
        ps, _ = mp.clone()
        return _torch_opt(kind, ps, foreach=True).step
    return make


def _lthfast(kind):
    def make(mp):
        ps, ms = mp.clone()
        if kind == "adamw":
            return lo.MaskedAdamW(ps, lr=1e-3, masks=ms).step
        return lo.MaskedSGD(ps, lr=1e-2, momentum=0.9, masks=ms).step
    return make


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    make: Callable[[ModelParams], Callable[[], None]]


def methods(kind: str) -> list[Method]:
    name = "AdamW" if kind == "adamw" else "SGD(momentum=0.9)"
    return [
        Method("torch_foreach", f"torch.optim.{name} foreach, no masking", _dense(kind)),
        Method("torch_foreach_naive", f"torch.optim.{name} foreach + grad/weight *= mask",
               _naive(kind, foreach=True)),
        Method("torch_fused_naive", f"torch.optim.{name} fused + grad/weight *= mask",
               _naive(kind, fused=True)),
        Method("lthfast", f"lthfast.optim.Masked{'AdamW' if kind == 'adamw' else 'SGD'}",
               _lthfast(kind)),
    ]


KINDS = ("adamw", "sgd")


def _burst(step, n: int) -> None:
    for _ in range(n):
        step()


def run_suite(config, ctx) -> dict:
    device = config.device
    models = config.models or (MODELS_QUICK if config.quick else MODELS_FULL)
    bw = ctx["bandwidth"]["bytes_per_s"]
    n_methods = len(methods("adamw"))
    progress = ctx["progress"](len(models) * len(KINDS) * n_methods, "optim")
    burst = CUDA_BURST if torch.device(device).type == "cuda" else 1
    out = {"status": "ok", "sparsity": SPARSITY, "baseline": BASELINE, "models": {}, "cases": [],
           "steps_per_sample": burst}
    try:
        for name in models:
            progress.note(f"building {name} (random init, {SPARSITY:.0%} pruned) on {device}")
            mp = load_model_params(name, device)
            n = sum(p.numel() for p in mp.params)
            out["models"][name] = {"n_params": n, "n_tensors": len(mp.params),
                                   "n_masked": sum(p.numel() for p in mp.masks),
                                   "param_bytes": sum(p.numel() * p.element_size() for p in mp.params)}
            for kind in KINDS:
                floor_s = mp.bytes_per_step(kind) / bw
                for m in methods(kind):
                    progress.start(f"{name} {kind}: {m.label}")
                    case = {"model": name, "optimizer": kind, "method": m.key, "label": m.label,
                            "floor_s": floor_s, "bytes_per_step": mp.bytes_per_step(kind)}
                    try:
                        step = m.make(mp)
                        # no memory probe: its gc.collect() would slow every step down
                        res = measure(lambda: None, lambda _: _burst(step, burst), device,
                                      repeat=config.repeat, warmup=max(1, config.warmup),
                                      probe=NoMemoryProbe())
                        res.times_s = [t / burst for t in res.times_s]
                    except Exception as e:  # noqa: BLE001 - one failing case must not end the run
                        case.update(status="error", error=f"{type(e).__name__}: {e}")
                        progress.done(f"{name} {kind} {m.key}: ERROR {e}")
                    else:
                        case.update(status="ok", times_s=res.times_s, median_s=res.median_s,
                                    floor_multiple=res.median_s / floor_s)
                        progress.done(f"{name} {kind} {m.key}: {res.median_s * 1e3:.1f} ms")
                    out["cases"].append(case)
                    step = None
            del mp
    finally:
        progress.close()
    _ratios(out["cases"])
    out["targets"] = _targets(out["cases"], device)
    return out


def _ratios(cases):
    def times(method):
        return {(c["model"], c["optimizer"]): c["median_s"] for c in cases
                if c["method"] == method and c["status"] == "ok"}
    base, fused = times(BASELINE), times("torch_fused_naive")
    for c in cases:
        key, ok = (c["model"], c["optimizer"]), c["status"] == "ok"
        b, f = base.get(key), fused.get(key)
        c["speedup_vs_baseline"] = b / c["median_s"] if b and ok else None
        c["speedup_vs_fused_naive"] = f / c["median_s"] if f and ok else None


def _targets(cases, device):
    out = []
    for c in cases:
        if c["method"] != "lthfast" or c["status"] != "ok":
            continue
        sp = c["speedup_vs_baseline"]
        out.append({"what": f"{c['model']} {c['optimizer']}: baseline time / lthfast time",
                    "value": sp, "limit": f">= {TARGET_SPEEDUP}",
                    "met": sp is not None and sp >= TARGET_SPEEDUP})
        spf = c["speedup_vs_fused_naive"]
        out.append({"what": f"{c['model']} {c['optimizer']}: torch_fused_naive time / lthfast time",
                    "value": spf, "limit": f">= {TARGET_SPEEDUP}",
                    "met": None if spf is None else spf >= TARGET_SPEEDUP})
        if device.type == "cuda":
            frac = 1.0 / c["floor_multiple"]
            out.append({"what": f"{c['model']} {c['optimizer']}: bandwidth floor / lthfast time",
                        "value": frac, "limit": f">= {TARGET_FLOOR_FRACTION}",
                        "met": frac >= TARGET_FLOOR_FRACTION})
    return out


def format_optim(res: dict) -> str:
    from lthfast.cli._common import format_table, human_bytes, human_count
    burst = res.get("steps_per_sample", 1)
    lines = [f"optim: one optimizer step on all parameters, Conv/Linear weights "
             f"{res['sparsity']:.0%} pruned; 'vs baseline' = {BASELINE} time / method time; "
             "'x floor' = time / (bytes the fused step moves / copy bandwidth)"
             + (f"; time per step of {burst} steps back to back" if burst > 1 else "")]
    rows, last = [], None
    for c in res["cases"]:
        info = res["models"][c["model"]]
        model = "" if c["model"] == last else (f"{c['model']} ({human_count(info['n_params'])}, "
                                               f"{human_bytes(info['param_bytes'])})")
        last = c["model"]
        if c["status"] != "ok":
            rows.append([model, c["optimizer"], c["label"], "ERROR", c.get("error", "")[:50], ""])
            continue
        sp = c["speedup_vs_baseline"]
        ms = c["median_s"] * 1e3
        rows.append([model, c["optimizer"], c["label"], f"{ms:.2f}" if ms < 10 else f"{ms:.1f}",
                     "" if sp is None else f"{sp:.2f}x", f"{c['floor_multiple']:.1f}"])
    lines.append(format_table(["model", "optim", "method", "median ms", "vs baseline", "x floor"],
                              rows, align="lllrrr"))
    if res.get("targets"):
        lines.append("targets (reported, not enforced):")
        for t in res["targets"]:
            met = {True: "met", False: "NOT MET", None: "unknown"}[t["met"]]
            val = "n/a" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(f"  {met:>7}  {t['what']}: {val} ({t['limit']})")
    return "\n".join(lines)
