"""The `ticket` suite: lthfast.Ticket files and the bit-pack ops, vs what users do
without lthfast, on the Conv/ConvTranspose/Linear weights of torchvision models at
80% sparsity (global magnitude masks; random init, seed 0).

Cases per model (same masks, same run):
  save    torch.save of the float masks torch.nn.utils.prune keeps (weight_mask
          buffers), torch.save of bool masks (baseline), Ticket.save
  load    torch.load(weights_only=True) of each file (baseline: bool masks), Ticket.load
  pack    bool masks -> bits: numpy.packbits (the CPU baseline) and the torch reference
          (the CUDA baseline: numpy is host-only) vs lthfast.bitmask.pack_bits;
          floor = (n + n/8) bytes / copy bandwidth
  unpack  bits -> bool masks: numpy.unpackbits (CPU baseline), the torch reference (CUDA
          baseline) vs lthfast.bitmask.unpack_bits
File sizes are reported with the target: ticket file <= weights / 8 bytes + 1%.
"""
from __future__ import annotations

import os
import tempfile

import torch

from lthfast import Ticket, bitmask
from lthfast import _reference_bitmask as ref
from lthfast.bench.measure import measure
from lthfast.cli._models import build_model

SPARSITY = 0.8
MODELS_FULL = ("resnet50", "maskrcnn_resnet50_fpn")
MODELS_QUICK = ("resnet18",)
TARGET_SIZE = 1.01  # ticket file bytes / (weights / 8)
BASELINES = {"save": "torch_save_bool", "load": "torch_load_bool", "pack": "numpy_packbits",
             "unpack": "numpy_unpackbits"}
#: numpy is host-only: on a GPU the torch reference is the pack/unpack baseline
BASELINES_CUDA = {**BASELINES, "pack": "torch_reference_pack", "unpack": "torch_reference_unpack"}


def baselines_for(device: torch.device) -> dict:
    return BASELINES_CUDA if torch.device(device).type == "cuda" else BASELINES
LABELS = {
    "torch_save_float": "torch.save float masks (prune's weight_mask)",
    "torch_save_bool": "torch.save bool masks",
    "ticket_save": "Ticket.save",
    "torch_load_float": "torch.load float masks",
    "torch_load_bool": "torch.load bool masks",
    "ticket_load": "Ticket.load",
    "numpy_packbits": "numpy.packbits (little)",
    "torch_reference_pack": "torch reference pack",
    "lthfast_pack": "lthfast pack_bits",
    "numpy_unpackbits": "numpy.unpackbits (little)",
    "torch_reference_unpack": "torch reference unpack",
    "lthfast_unpack": "lthfast unpack_bits",
}


def _cases(ticket, masks, folder, device):
    """[(op, method, setup, run, file path or None)] for one model."""
    names = ticket.names()
    paths = {k: os.path.join(folder, k) for k in ("float.pt", "bool.pt", "ticket.safetensors")}
    float_masks = {n: masks[n].float() for n in names}
    bool_masks = {n: masks[n] for n in names}
    packed = {n: ticket.packed(n) for n in names}
    cpu_masks = {n: m.cpu() for n, m in masks.items()}
    np_masks = {n: m.numpy().reshape(-1) for n, m in cpu_masks.items()}
    np_packed = {n: p.cpu().numpy() for n, p in packed.items()}
    none = lambda: None  # noqa: E731
    out = [
        ("save", "torch_save_float", none, lambda _: torch.save(float_masks, paths["float.pt"]), paths["float.pt"]),
        ("save", "torch_save_bool", none, lambda _: torch.save(bool_masks, paths["bool.pt"]), paths["bool.pt"]),
        ("save", "ticket_save", none, lambda _: ticket.save(paths["ticket.safetensors"]), paths["ticket.safetensors"]),
        ("load", "torch_load_float", none,
         lambda _: torch.load(paths["float.pt"], weights_only=True, map_location=device), None),
        ("load", "torch_load_bool", none,
         lambda _: torch.load(paths["bool.pt"], weights_only=True, map_location=device), None),
        ("load", "ticket_load", none, lambda _: Ticket.load(paths["ticket.safetensors"], device=device), None),
        ("pack", "numpy_packbits", none,
         lambda _: [__import__("numpy").packbits(m, bitorder="little") for m in np_masks.values()], None),
        ("pack", "torch_reference_pack", none, lambda _: [ref.pack_bits(m) for m in bool_masks.values()], None),
        ("pack", "lthfast_pack", none, lambda _: [bitmask.pack_bits(m) for m in bool_masks.values()], None),
        ("unpack", "numpy_unpackbits", none,
         lambda _: [__import__("numpy").unpackbits(p, bitorder="little") for p in np_packed.values()], None),
        ("unpack", "torch_reference_unpack", none,
         lambda _: [ref.unpack_bits(packed[n], masks[n].shape) for n in names], None),
        ("unpack", "lthfast_unpack", none, lambda _: [ticket[n] for n in names], None),
    ]
    if device.type == "cuda":  # numpy is host-only
        out = [c for c in out if not c[1].startswith("numpy")]
    return out


def run_suite(config, ctx) -> dict:
    device = config.device
    models = config.models or (MODELS_QUICK if config.quick else MODELS_FULL)
    bw = ctx["bandwidth"]["bytes_per_s"]
    baselines = baselines_for(device)
    out = {"status": "ok", "sparsity": SPARSITY, "baselines": baselines, "methods": LABELS,
           "models": {}, "cases": []}
    n_cases = len(LABELS) - (2 if device.type == "cuda" else 0)  # no numpy cases on a GPU
    progress = ctx["progress"](len(models) * n_cases, "ticket")
    try:
        for name in models:
            progress.note(f"building {name} (random init) on {device}")
            torch.manual_seed(0)
            model = build_model(name).to(device)
            ticket = Ticket.from_model(model, SPARSITY)
            masks = {n: ticket[n] for n in ticket}
            n = ticket.numel()
            del model
            out["models"][name] = {"n_tensors": len(ticket), "n_weights": n, "kept": ticket.kept(),
                                   "sparsity": ticket.sparsity(), "bits_bytes": n / 8}
            with tempfile.TemporaryDirectory(prefix="lthfast-bench-ticket-") as folder:
                for op, method, setup, run, path in _cases(ticket, masks, folder, device):
                    progress.start(f"{name} {op}: {LABELS[method]}")
                    case = {"model": name, "op": op, "method": method, "label": LABELS[method]}
                    try:
                        m = measure(setup, run, device, repeat=config.repeat, warmup=config.warmup)
                    except Exception as e:  # noqa: BLE001 - one failing case must not end the run
                        case.update(status="error", error=f"{type(e).__name__}: {e}")
                    else:
                        case.update(status="ok", times_s=m.times_s, median_s=m.median_s)
                        if path is not None:
                            case["file_bytes"] = os.path.getsize(path)
                            case["file_bytes_per_weight_bit"] = case["file_bytes"] / (n / 8)
                        if op in ("pack", "unpack"):
                            case["floor_s"] = (n + n / 8) / bw  # read + write once
                            case["floor_multiple"] = m.median_s / case["floor_s"]
                    progress.done(f"{name} {op} {method}: " + (
                        f"{case['median_s'] * 1e3:.1f} ms" if case["status"] == "ok"
                        else f"ERROR {case['error']}"))
                    out["cases"].append(case)
    finally:
        progress.close()
    _add_ratios(out["cases"], baselines)
    out["targets"] = [
        {"what": f"{c['model']}: ticket file bytes / (weights / 8)", "value": c["file_bytes_per_weight_bit"],
         "limit": f"<= {TARGET_SIZE}", "met": c["file_bytes_per_weight_bit"] <= TARGET_SIZE}
        for c in out["cases"] if c["method"] == "ticket_save" and c["status"] == "ok"]
    return out


def _add_ratios(cases, baselines=BASELINES) -> None:
    base = {(c["model"], c["op"]): c["median_s"] for c in cases
            if c["status"] == "ok" and c["method"] == baselines[c["op"]]}
    for c in cases:
        b = base.get((c["model"], c["op"]))
        c["speedup_vs_baseline"] = b / c["median_s"] if b and c["status"] == "ok" else None


def format_ticket(res: dict) -> str:
    from lthfast.cli._common import format_table, human_bytes, human_count
    if res.get("status") != "ok":
        return f"ticket: {res.get('status')}: {res.get('error', res.get('reason', ''))}"
    rows, last = [], None
    for c in res["cases"]:
        info = res["models"][c["model"]]
        model = "" if c["model"] == last else f"{c['model']} ({human_count(info['n_weights'])} weights)"
        last = c["model"]
        if c["status"] != "ok":
            rows.append([model, c["op"], c["label"], "ERROR", c["error"], "", "", ""])
            continue
        sp = c.get("speedup_vs_baseline")
        fb = c.get("file_bytes")
        rows.append([model, c["op"], c["label"], f"{c['median_s'] * 1e3:.1f}",
                     "" if sp is None else f"{sp:.1f}x",
                     "" if fb is None else human_bytes(fb),
                     "" if fb is None else f"{c['file_bytes_per_weight_bit']:.3f}",
                     "" if "floor_multiple" not in c else f"{c['floor_multiple']:.1f}"])
    table = format_table(["model", "op", "method", "median ms", "vs base", "file", "file/(w/8)", "x floor"],
                         rows, align="lllrrrrr")
    lines = [f"ticket: masks at {100 * res['sparsity']:.0f}% sparsity; 'vs base' = baseline time / "
             "method time (baseline: torch.save/load of bool masks; pack/unpack: "
             f"{res.get('baselines', BASELINES)['pack']} / {res.get('baselines', BASELINES)['unpack']}); "
             "'x floor' = time / ((n + n/8) bytes / copy bandwidth)", table]
    for t in res.get("targets", ()):
        lines.append(f"target {t['what']} {t['limit']}: {t['value']:.4f} ({'met' if t['met'] else 'NOT met'})")
    return "\n".join(lines)
