"""The `train_step` suite: one full training step (forward + backward + SGD momentum 0.9
step) of a torchvision classifier whose Conv/Linear weights are 80% pruned (global
magnitude), and the bytes the pruned model holds.

Methods, same weights, same batch, interleaved (one step of each in turn, median):
  dense         the unpruned model + torch.optim.SGD (the speed and memory reference)
  lthfast       Ticket.apply(model) + lthfast.optim.MaskedSGD(ticket=ticket)
  torch_prune   torch.nn.utils.prune.global_unstructured hooks + torch.optim.SGD
  asp           torch.optim.SGD with grad.mul_(mask) before and p.mul_(mask) after
Memory = parameters + buffers + masks, summed over distinct tensor storages (not RSS);
the SGD momentum buffers are the same for every method and are not counted.
"""
from __future__ import annotations

import copy
import statistics
import subprocess

import torch
from torch import nn

import lthfast
import lthfast.optim as lo
from lthfast.bench.measure import balanced_orders, time_call
from lthfast.cli._models import build_model, prunable_layers

SPARSITY = 0.8
MODEL_CPU, MODEL_GPU = "resnet18", "resnet50"
#: (batch, image px, timed steps per method per repeat)
SIZES = {("cpu", False): (16, 112, 5), ("cpu", True): (4, 64, 5),
         ("cuda", False): (32, 224, 10), ("cuda", True): (16, 112, 5)}
BASELINE = "dense"
TARGET_SLOWDOWN = 1.02  # lthfast step time / dense step time
TARGET_MEMORY = 1.05    # lthfast model bytes / dense model bytes
METHODS = {"dense": "dense model + torch.optim.SGD",
           "lthfast": "Ticket.apply + lthfast.optim.MaskedSGD(ticket=)",
           "torch_prune": "torch.nn.utils.prune.global_unstructured hooks + torch.optim.SGD",
           "asp": "torch.optim.SGD + grad.mul_(mask) before / p.mul_(mask) after"}


def uptime() -> str | None:
    """`uptime` (load averages) for the record: the machine is shared."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _sgd(params):
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (shared storage counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _model_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


class Case:
    """One method: a model copy, its optimizer and its step()."""

    def __init__(self, key, model, step, memory):
        self.key, self.model, self.step, self.memory = key, model, step, memory


def build_cases(base: nn.Module, names: list[str], masks: list[torch.Tensor], batch):
    """The four methods on copies of `base` (dense weights; masks from its magnitudes)."""
    x, y = batch
    loss_fn = nn.CrossEntropyLoss()

    def make_step(model, opt, before=None, after=None):
        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            if before:
                before()
            opt.step()
            if after:
                after()
        return step

    cases = {}
    dense = copy.deepcopy(base)
    cases["dense"] = Case("dense", dense, make_step(dense, _sgd(dense.parameters())),
                          {"parameters_and_buffers": _storage_bytes(_model_tensors(dense))})

    m = copy.deepcopy(base)
    ticket = lthfast.Ticket(dict(zip(names, masks)))
    ticket.apply(m)
    opt = lo.MaskedSGD(m.parameters(), lr=1e-3, momentum=0.9, ticket=ticket)
    # what is really held: the ticket's packed masks, the optimizer's packed masks that are
    # not the ticket's own tensors (channels_last copies), what the bindings keep
    packed = [ticket.packed(n) for n in names]
    opt_masks = [opt.packed_mask_of(p) for p in m.parameters()]
    bound = ticket._bindings.held()
    cases["lthfast"] = Case("lthfast", m, make_step(m, opt), {
        "parameters_and_buffers": _storage_bytes(_model_tensors(m)),
        "ticket_packed": _storage_bytes(packed),
        "optimizer_packed_not_shared_with_ticket":
            _storage_bytes(packed + opt_masks) - _storage_bytes(packed),
        "ticket_bound_masks":
            _storage_bytes(packed + opt_masks + bound) - _storage_bytes(packed + opt_masks)})

    m = copy.deepcopy(base)
    import torch.nn.utils.prune as tprune
    pairs = [(m.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
    tprune.global_unstructured(pairs, pruning_method=tprune.L1Unstructured, amount=SPARSITY)
    recomputed = [getattr(mod, attr) for mod, attr in pairs]  # plain tensors the hook rebuilds
    cases["torch_prune"] = Case("torch_prune", m, make_step(m, _sgd(m.parameters())), {
        "parameters_and_buffers": _storage_bytes(_model_tensors(m)),
        "recomputed_weights": _storage_bytes(recomputed)})

    m = copy.deepcopy(base)
    fmask = [(m.get_parameter(n), k.to(m.get_parameter(n).dtype)) for n, k in zip(names, masks)]
    with torch.no_grad():
        for p, k in fmask:
            p.mul_(k)

    @torch.no_grad()
    def grad_mask():
        for p, k in fmask:
            p.grad.mul_(k)

    @torch.no_grad()
    def weight_mask():
        for p, k in fmask:
            p.mul_(k)
    cases["asp"] = Case("asp", m, make_step(m, _sgd(m.parameters()), grad_mask, weight_mask), {
        "parameters_and_buffers": _storage_bytes(_model_tensors(m)),
        "float_masks": _storage_bytes([k for _, k in fmask])})
    for c in cases.values():
        c.memory["total"] = sum(c.memory.values())
    return cases


def run_suite(config, ctx, *, sizes=None) -> dict:
    device = config.device
    name = (config.models or (MODEL_GPU if device.type == "cuda" else MODEL_CPU,))[0]
    batch_size, px, steps = sizes or SIZES[(device.type, bool(config.quick))]
    out = {"status": "ok", "model": name, "sparsity": SPARSITY, "baseline": BASELINE,
           "batch_size": batch_size, "image_px": px, "methods": METHODS,
           "uptime_before": uptime(), "cases": []}
    torch.manual_seed(0)
    base = build_model(name).to(device).train()
    names = [f"{ln}.weight" for ln, _ in prunable_layers(base)]
    weights = [base.get_parameter(n) for n in names]
    masks = lthfast.global_magnitude_masks(weights, SPARSITY)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch_size, 3, px, px, generator=g).to(device)
    y = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
    cases = build_cases(base, names, masks, (x, y))
    out["n_params"] = sum(p.numel() for p in base.parameters())
    out["n_masked"] = sum(w.numel() for w in weights)
    n_rep = max(1, config.repeat)
    progress = ctx["progress"](n_rep * len(cases), "train_step")
    times = {k: [] for k in cases}
    try:
        for c in cases.values():  # warm-up: momentum buffers, allocator, one-time init
            for _ in range(max(1, config.warmup)):
                c.step()
        keys = list(cases)
        orders = balanced_orders(keys)
        for r in range(n_rep):
            progress.start(f"repeat {r + 1}: {steps} steps of each method, interleaved")
            for s in range(steps):
                # one step of each method in turn (a load burst hits all of them), in the
                # orders of balanced_orders: no method always runs first or after the same
                # one (no flush between rounds: a whole training step leaves nothing cached)
                for k in orders[(r * steps + s) % len(orders)]:
                    times[k].append(time_call(cases[k].step, device)[0])
            for k in keys:
                progress.done(f"repeat {r + 1}: {k} {statistics.median(times[k]) * 1e3:.1f} ms")
    finally:
        progress.close()
    out["uptime_after"] = uptime()
    dense_t = statistics.median(times[BASELINE])
    dense_mem = cases[BASELINE].memory["total"]
    for k, c in cases.items():
        med = statistics.median(times[k])
        # times[k][i] and times[dense][i] ran back to back: the median of their ratios
        # cancels the load drifting over the run, which the ratio of medians does not
        paired = statistics.median(t / d for t, d in zip(times[k], times[BASELINE]))
        out["cases"].append({"model": name, "round": 1, "method": k, "label": METHODS[k],
                             "status": "ok", "times_s": times[k], "median_s": med,
                             "ratio_vs_dense": med / dense_t, "paired_ratio_vs_dense": paired,
                             "memory_bytes": c.memory,
                             "memory_vs_dense": c.memory["total"] / dense_mem})
    lt = next(c for c in out["cases"] if c["method"] == "lthfast")
    out["targets"] = [
        {"what": "lthfast step time / dense step time (median of back-to-back pairs)",
         "value": lt["paired_ratio_vs_dense"], "limit": f"<= {TARGET_SLOWDOWN}",
         "met": lt["paired_ratio_vs_dense"] <= TARGET_SLOWDOWN},
        {"what": "lthfast model bytes (params+buffers+packed ticket+optimizer/bound masks) / dense",
         "value": lt["memory_vs_dense"], "limit": f"<= {TARGET_MEMORY}",
         "met": lt["memory_vs_dense"] <= TARGET_MEMORY}]
    return out


def format_train_step(res: dict) -> str:
    from lthfast.cli._common import format_table, human_bytes, human_count
    lines = [f"train_step: {res['model']} ({human_count(res['n_params'])} params, "
             f"{human_count(res['n_masked'])} masked at {res['sparsity']:.0%}), batch "
             f"{res['batch_size']} x {res['image_px']} px, forward + backward + SGD(momentum 0.9); "
             "'vs dense' = median time / dense median; 'paired' = median of (time / dense time "
             "of the step run just before or after it); memory = params + buffers + masks "
             "(bytes of the tensors; SGD momentum buffers, the same for all, not counted)",
             f"load: {res.get('uptime_before')}"]
    rows = []
    for c in res["cases"]:
        mem = c["memory_bytes"]
        extra = ", ".join(f"{k} {human_bytes(v)}" for k, v in mem.items()
                          if k not in ("total", "parameters_and_buffers") and v)
        rows.append([c["method"], c["label"], f"{c['median_s'] * 1e3:.1f}",
                     f"{c['ratio_vs_dense']:.3f}", f"{c['paired_ratio_vs_dense']:.3f}",
                     human_bytes(mem["total"]),
                     f"{c['memory_vs_dense']:.3f}", extra])
    lines.append(format_table(["method", "what", "median ms", "vs dense", "paired", "memory",
                               "vs dense", "of which (besides params+buffers)"], rows,
                              align="llrrrrrl"))
    lines.append("targets (reported, not enforced):")
    for t in res["targets"]:
        met = {True: "met", False: "NOT MET"}[t["met"]]
        lines.append(f"  {met:>7}  {t['what']}: {t['value']:.3f} ({t['limit']})")
    return "\n".join(lines)
