"""The `conv` suite: masked convolution, lthfast's dense / sparse / auto / tuned paths vs
`F.conv2d(x, w * mask)` in the same run.

Per distinct Conv2d shape of torchvision resnet50 (224x224 input; with
`--models maskrcnn_resnet50_fpn`, not --quick, also that model's heads at 512x512;
with `--models fasterrcnn_resnet50_fpn` every conv of that detector at the 800 px it
runs at, batch 1; other --models names are refused by `lthfast bench conv`), at sparsities
0.5 / 0.8 / 0.9 / 0.95 / 0.98 and
batch 1 and 8 (CPU) or 1 / 8 / 32 (CUDA), methods interleaved call by call:
  torch_masked     F.conv2d(x, w * mask)          (the baseline: masks every call)
  torch_premasked  F.conv2d(x, w_masked)          (the floor of the dense path)
  dense / sparse / auto / tuned   lthfast.ops.masked_conv2d(..., path=...)
                   (tuned: its timing call runs before the timed rounds, as in use)
End to end: resnet50 (and, without --quick, fasterrcnn_resnet50_fpn) eval, batch 1,
global magnitude masks at 80% / 95%: the dense model with masked weights vs the
sparsified model (auto, tuned, and every layer sparse).
"""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

import lthfast
from lthfast.bench.measure import balanced_orders, flush_caches
from lthfast.cli._models import build_model
from lthfast.ops import masked_conv2d
from lthfast.ops._conv_dispatch import kernel_class, use_sparse

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
# torch_premasked_again is the same call as torch_premasked: the A/A control that shows
# how far two identical calls' paired ratio strays on this machine (the 5% targets'
# resolution)
METHODS = ("torch_masked", "torch_premasked", "dense", "sparse", "auto", "tuned",
           "torch_premasked_again")
E2E_SPARSITIES = (0.8, 0.95)


def distinct_conv_shapes(model: torch.nn.Module, inputs, prefix_filter=None) -> list[dict]:
    """Every distinct (conv config, input size) met in one forward pass, with the
    first layer name that has it and how many layers share it."""
    seen: dict[tuple, dict] = {}
    hooks = []
    for name, mod in model.named_modules():
        if type(mod) is torch.nn.Conv2d and (prefix_filter is None or prefix_filter(name)):
            def hook(m, args, _name=name):
                x = args[0]
                key = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                       m.dilation, m.groups, tuple(x.shape[2:]))
                if key in seen:
                    seen[key]["count"] += 1
                else:
                    seen[key] = {"layer": _name, "count": 1, "in": m.in_channels,
                                 "out": m.out_channels, "kernel": list(m.kernel_size),
                                 "stride": list(m.stride), "padding": list(m.padding),
                                 "dilation": list(m.dilation), "groups": m.groups,
                                 "hw": list(x.shape[2:])}
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return list(seen.values())


def _shapes(config) -> list[dict]:
    torch.manual_seed(0)
    shapes = [dict(s, model="resnet50") for s in
              distinct_conv_shapes(build_model("resnet50").eval(), torch.randn(1, 3, 224, 224))]
    if not config.quick and config.models and "maskrcnn_resnet50_fpn" in config.models:
        det = build_model("maskrcnn_resnet50_fpn").eval()
        heads = distinct_conv_shapes(det, [torch.rand(3, 512, 512)],
                                     prefix_filter=lambda n: not n.startswith("backbone.body"))
        shapes += [dict(s, model="maskrcnn_resnet50_fpn") for s in heads]
    if not config.quick and config.models and "fasterrcnn_resnet50_fpn" in config.models:
        # every conv (backbone, FPN, RPN) at the resolution the detector runs at (its
        # transform resizes the 512 px image to 800 px): planes up to 400x400, which
        # resnet50 at 224 px never has; batch 1 (one 800 px image is a batch's worth)
        det = build_model("fasterrcnn_resnet50_fpn").eval()
        shapes += [dict(s, model="fasterrcnn_resnet50_fpn", batches=(1,))
                   for s in distinct_conv_shapes(det, [torch.rand(3, 512, 512)])]
    return shapes


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _interleaved(fns: dict, device, repeat: int, warmup: int,
                 budget_s: float = 0.5) -> tuple[dict, dict, dict]:
    """(min, median, per-round list) seconds of each callable, the methods run in
    turn so that load on the machine hits them alike, in balanced orders (each method
    follows each other one equally often: measure.balanced_orders; the caches are
    flushed before each round, whose first method would otherwise follow the previous
    round's last: the sparse kernel's timings differ 1.5x after a call that left its
    packed weight in the caches and after a dense one). At least `repeat` rounds, more
    while a round is cheap (within about `budget_s`, up to 25), and always on to the end
    of a set of orders: with an odd number of methods the first half of a set is not
    balanced on its own. Tables show the minimum; ratios are medians of per-round ratios
    (_paired)."""
    times = {k: [] for k in fns}
    orders = balanced_orders(list(fns))
    most = -(-25 // len(orders)) * len(orders)  # 25 rounds, up to a whole set of orders
    with torch.no_grad():
        for _ in range(warmup):
            for f in fns.values():
                f()
        spent, rounds = 0.0, 0
        while rounds < repeat or rounds % len(orders) or (rounds < most and spent < budget_s):
            flush_caches(device)
            for k in orders[rounds % len(orders)]:
                t = _time(fns[k], device)
                times[k].append(t)
                spent += t
            rounds += 1
    return ({k: min(v) for k, v in times.items()}, {k: statistics.median(v) for k, v in times.items()},
            times)


def _paired(times: dict, num: str, den: str) -> float:
    """Median over rounds of num time / den time. The methods of a round ran back to
    back, so load on the shared machine hits both: steadier than a ratio of minima,
    which pairs one method's luckiest round with another's."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def _better_path(times: dict) -> str:
    """The faster of dense and sparse over the whole case (by median), which `auto`
    and `tuned` are held to. Not the faster one per round: where the two are close,
    the per-round minimum of two noisy times is below either's typical time, a
    target no choice of path can meet."""
    return "dense" if statistics.median(times["dense"]) <= statistics.median(times["sparse"]) else "sparse"


def _conv_case(shape, batch, sparsity, device, config) -> dict:
    gen = torch.Generator().manual_seed(1)
    cin_g = shape["in"] // shape["groups"]
    w = torch.randn(shape["out"], cin_g, *shape["kernel"], generator=gen).to(device)
    mask = (torch.rand(w.shape, generator=gen) >= sparsity).to(device)
    x = torch.randn(batch, shape["in"], *shape["hw"], generator=gen).to(device)
    conf = dict(stride=shape["stride"], padding=shape["padding"], dilation=shape["dilation"],
                groups=shape["groups"])
    wm = w * mask
    fns = {"torch_masked": lambda: F.conv2d(x, w * mask, None, **conf),
           "torch_premasked": lambda: F.conv2d(x, wm, None, **conf)}
    for p in ("dense", "sparse", "auto", "tuned"):
        fns[p] = (lambda p=p: masked_conv2d(x, w, mask, None, **conf, path=p))
    fns["torch_premasked_again"] = lambda: F.conv2d(x, wm, None, **conf)
    with torch.no_grad():
        fns["tuned"]()  # the one call that times both paths
    tuned_choice = "sparse" if _ran_sparse(w, "tuned") else "dense"
    med, median, times = _interleaved(fns, device, config.repeat, config.warmup)
    better = _better_path(times)
    kind = kernel_class(tuple(shape["kernel"]), shape["groups"], shape["in"])
    real_sparsity = 1.0 - mask.float().mean().item()
    oh, ow = ((shape["hw"][i] + 2 * shape["padding"][i] - shape["dilation"][i] * (shape["kernel"][i] - 1)
               - 1) // shape["stride"][i] + 1 for i in range(2))
    auto_choice = ("sparse" if use_sparse(device, x.dtype, kind, batch, real_sparsity, tuple(w.shape),
                                          oh * ow) else "dense")
    return {"layer": shape["layer"], "model": shape["model"], "kind": kind, "batch": batch,
            "sparsity": sparsity, "shape": {k: shape[k] for k in ("in", "out", "kernel", "stride",
                                                                 "padding", "dilation", "groups", "hw")},
            "min_s": med, "median_s": median, "auto_choice": auto_choice, "tuned_choice": tuned_choice,
            "rounds": len(times["dense"]),
            # ratios: medians of per-round ratios (see _paired); the ratios of
            # the minima are kept as *_of_min
            "dense_vs_premasked": _paired(times, "dense", "torch_premasked"),
            "premasked_again_vs_premasked": _paired(times, "torch_premasked_again", "torch_premasked"),
            "sparse_speedup_vs_dense": _paired(times, "dense", "sparse"),
            "better_path": better,
            "auto_vs_best": _paired(times, "auto", better),
            "tuned_vs_best": _paired(times, "tuned", better),
            "dense_vs_premasked_of_min": med["dense"] / med["torch_premasked"],
            "sparse_speedup_vs_dense_of_min": med["dense"] / med["sparse"],
            "auto_vs_best_of_min": med["auto"] / min(med["dense"], med["sparse"]),
            "tuned_vs_best_of_min": med["tuned"] / min(med["dense"], med["sparse"]),
            "speedup_vs_torch_masked": med["torch_masked"] / min(med["auto"], med["sparse"], med["dense"])}


def _e2e_case(name, sparsity, device, config) -> dict:
    torch.manual_seed(0)
    model = build_model(name).eval().to(device)
    layers = {n: m for n, m in model.named_modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear)}
    names = [f"{n}.weight" for n in layers]
    weights = [layers[n].weight for n in layers]
    masks = dict(zip(names, lthfast.global_magnitude_masks(weights, sparsity)))
    with torch.no_grad():
        for w, m in zip(weights, masks.values()):
            w.masked_fill_(~m, 0)
    if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
        x = [torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(2)).to(device)]
    else:
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
    import copy
    dense = copy.deepcopy(model)
    auto = lthfast.nn.sparsify(copy.deepcopy(model), masks, path="auto")
    sparse = lthfast.nn.sparsify(copy.deepcopy(model), masks, path="sparse")
    tuned = lthfast.nn.sparsify(copy.deepcopy(model), masks, path="tuned")
    with torch.no_grad():
        t0 = time.perf_counter()
        tuned(x)  # the call that times both paths of every layer
        tuning_s = time.perf_counter() - t0
    med, median, _ = _interleaved({"torch_masked_weights": lambda: dense(x),
                                   "lthfast_auto": lambda: auto(x), "lthfast_sparse": lambda: sparse(x),
                                   "lthfast_tuned": lambda: tuned(x)},
                                  device, config.repeat, config.warmup, budget_s=3.0)
    n_sparse = _layers_runs_sparse(auto, "auto")
    return {"model": name, "sparsity": sparsity, "min_s": med, "median_s": median,
            "auto_speedup": med["torch_masked_weights"] / med["lthfast_auto"],
            "sparse_speedup": med["torch_masked_weights"] / med["lthfast_sparse"],
            "tuned_speedup": med["torch_masked_weights"] / med["lthfast_tuned"],
            "tuning_call_s": tuning_s, "n_layers_tuned_sparse": _layers_runs_sparse(tuned, "tuned"),
            "n_masked_layers": len(masks), "n_layers_auto_sparse": n_sparse}


def _layers_runs_sparse(model, path: str) -> int:
    """How many masked layers `path` ("auto" / "tuned") sent to the sparse kernel in
    the timed runs (the path each layer's weight cache recorded for its input shape)."""
    n = 0
    for m in model.modules():
        if isinstance(m, (lthfast.nn.MaskedConv2d, lthfast.nn.MaskedLinear)):
            n += _ran_sparse(m.weight, path)
    return n


def _ran_sparse(weight, path: str) -> bool:
    """Whether `path` ran the sparse kernel on `weight` (its weight cache's record)."""
    from lthfast.ops import _weight_cache
    e = _weight_cache._CACHE.get(id(weight))
    return e is not None and any(v for k, v in e.choice.items() if k[-1] == path)


def run_suite(config, ctx) -> dict:
    device = config.device
    batches = (1, 8, 32) if device.type == "cuda" else (1, 8)
    shapes = _shapes(config)
    e2e_models = ("resnet50",) if config.quick else ("resnet50", "fasterrcnn_resnet50_fpn")
    n = (sum(len(s.get("batches", batches)) for s in shapes) * len(SPARSITIES)
         + len(e2e_models) * len(E2E_SPARSITIES))
    progress = ctx["progress"](n, "conv")
    out = {"status": "ok", "methods": list(METHODS), "sparsities": list(SPARSITIES),
           "batches": list(batches), "threads": torch.get_num_threads(),
           "load_average_start": list(os.getloadavg()), "cases": [], "e2e": []}
    try:
        for shape in shapes:
            for batch in shape.get("batches", batches):
                for sp in SPARSITIES:
                    label = f"{shape['layer']} b{batch} s{sp}"
                    progress.start(label)
                    try:
                        case = _conv_case(shape, batch, sp, device, config)
                        case["status"] = "ok"
                        progress.done(f"{label}: sparse x{case['sparse_speedup_vs_dense']:.2f} vs dense")
                    except Exception as e:  # noqa: BLE001 - one failing case must not end the run
                        case = {"layer": shape["layer"], "batch": batch, "sparsity": sp,
                                "status": "error", "error": f"{type(e).__name__}: {e}"}
                        progress.done(f"{label}: ERROR {e}")
                    out["cases"].append(case)
        for name in e2e_models:
            for sp in E2E_SPARSITIES:
                progress.start(f"{name} end to end s{sp}")
                try:
                    case = dict(_e2e_case(name, sp, device, config), status="ok")
                except Exception as e:  # noqa: BLE001
                    case = {"model": name, "sparsity": sp, "status": "error",
                            "error": f"{type(e).__name__}: {e}"}
                progress.done(f"{name} s{sp}")
                out["e2e"].append(case)
    finally:
        progress.close()
    out["load_average_end"] = list(os.getloadavg())
    out["rule_from_measurements"] = suggest_rule(out["cases"])
    out["targets"] = targets(out["cases"], device)
    return out


def suggest_rule(cases) -> list[dict]:
    """Per (kernel class, batch): the smallest measured sparsity from which the sparse
    path beat dense on every shape of that class at that and every higher sparsity."""
    groups: dict[tuple, dict[float, list[float]]] = {}
    for c in cases:
        if c.get("status") == "ok":
            groups.setdefault((c["kind"], c["batch"]), {}).setdefault(c["sparsity"], []).append(
                c["sparse_speedup_vs_dense"])
    rules = []
    for (kind, batch), by_sp in sorted(groups.items()):
        smin = None
        for sp in sorted(by_sp, reverse=True):
            if min(by_sp[sp]) > 1.0:
                smin = sp
            else:
                break
        rules.append({"kind": kind, "batch": batch, "min_sparsity": smin,
                      "worst_speedup_by_sparsity": {str(s): min(v) for s, v in sorted(by_sp.items())}})
    return rules


def targets(cases, device) -> list[dict]:
    ok = [c for c in cases if c.get("status") == "ok"]
    out = []
    if ok:
        worst = max(ok, key=lambda c: c["dense_vs_premasked"])
        n_ok = sum(c["dense_vs_premasked"] <= 1.05 for c in ok)
        out.append({"what": f"dense path time / F.conv2d on pre-masked weights (worst case; {n_ok} of "
                            f"{len(ok)} cases within 1.05)",
                    "value": worst["dense_vs_premasked"], "limit": "<= 1.05",
                    "met": worst["dense_vs_premasked"] <= 1.05,
                    "where": f"{worst['layer']} b{worst['batch']} s{worst['sparsity']}"})
        aa = [c["premasked_again_vs_premasked"] for c in ok if "premasked_again_vs_premasked" in c]
        if aa:
            out.append({"what": "F.conv2d on pre-masked weights against the same call (A/A, not a target; "
                                f"{sum(v <= 1.05 for v in aa)} of {len(aa)} cases within 1.05)",
                        "value": max(aa), "limit": "the noise these 5% targets are measured in",
                        "met": None, "where": "worst case"})
        for p in ("auto", "tuned"):
            worst = max(ok, key=lambda c: c[f"{p}_vs_best"])
            n_ok = sum(c[f"{p}_vs_best"] <= 1.05 for c in ok)
            out.append({"what": f"{p} time / the better path's, dense or sparse (worst case; {n_ok} of "
                                f"{len(ok)} cases within 1.05)",
                        "value": worst[f"{p}_vs_best"], "limit": "<= 1.05",
                        "met": worst[f"{p}_vs_best"] <= 1.05,
                        "where": f"{worst['layer']} b{worst['batch']} s{worst['sparsity']}"})
    l34 = [c for c in ok if c["batch"] == 1 and c["sparsity"] >= 0.9 and c["kind"] == "3x3"
           and c["layer"].startswith(("layer3", "layer4"))]
    if l34:
        worst = min(l34, key=lambda c: c["sparse_speedup_vs_dense"])
        limit = 1.3 if device.type == "cuda" else 2.0
        out.append({"what": "sparse speedup over dense, resnet50 layer3-4 3x3, batch 1, sparsity >= 0.9 "
                            "(worst case)", "value": worst["sparse_speedup_vs_dense"],
                    "limit": f">= {limit}", "met": worst["sparse_speedup_vs_dense"] >= limit,
                    "where": f"{worst['layer']} b1 s{worst['sparsity']}"})
    return out
