"""Human tables and the JSON file of a benchmark run."""
from __future__ import annotations

import json

from lthfast.cli._common import atomic_write, format_table, human_bytes, human_count


def header(result: dict) -> str:
    m, cfg, lt = result["machine"], result["config"], result["lthfast"]
    dev = cfg["device"]
    isa = lt["build_info"].get("cpu_sparse_isa")  # the CPU conv rows depend on it
    where = (f"{m['gpu']['name']}" if dev.startswith("cuda") and m.get("gpu")
             else f"{m['cpu_model']}, {m['torch_threads']} threads of {m['usable_cores']} cores"
             + (f", {isa} kernels" if isa else ""))
    kernels = "compiled kernels" if lt["build_info"].get("compiled") else (
        "PURE-PYTORCH REFERENCE (extension not built: lthfast timings are not the kernels')")
    lines = [f"lthfast bench | device {dev} ({where}) | torch {result['torch']['version']} | "
             f"lthfast {lt['version']}, {kernels}",
             f"repeat {cfg['repeat']} (median), warm-up {cfg['warmup']}"
             + (" | --quick" if cfg["quick"] else "")]
    bw = result.get("bandwidth")
    if bw:
        lines.append(f"copy bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s (read+write, "
                     f"{human_bytes(bw['tensor_bytes'])} tensors, {dev})")
    return "\n".join(lines)


def _ms(s):
    return "" if s is None else f"{s * 1e3:.1f}"


def format_threshold(res: dict) -> str:
    lines = [f"threshold: global magnitude pruning of Conv/Linear weights, amount {res['amount']}, "
             f"round 2 = {res['amount']} of the remaining; 'vs torch' = "
             f"{res['methods'].get(res['baseline'], res['baseline'])} time / method time; "
             "'x floor' = time / (2 x weight bytes / copy bandwidth)"]
    rows, last_model = [], None
    for c in res["cases"]:
        sizes = res["models"][c["model"]]
        model = ""
        if c["model"] != last_model:
            model = f"{c['model']} ({human_count(sizes['n_weights'])}, {human_bytes(sizes['weight_bytes'])})"
            last_model = c["model"]
        if c["status"] != "ok":
            note = c.get("reason") or c.get("error", "")
            rows.append([model, c["round"], c["label"], c["status"].upper(), note[:60], "", "", ""])
            continue
        frac = c["peak_extra_fraction_of_weights"]
        tfrac = c.get("transient_fraction_of_weights")
        sp = c["speedup_vs_baseline"]
        rows.append([model, c["round"], c["label"], _ms(c["median_s"]),
                     "" if sp is None else f"{sp:.1f}x",
                     human_bytes(c["peak_extra_bytes"]),
                     "" if frac is None else f"{100 * frac:.1f}%",
                     human_bytes(c.get("retained_bytes")),
                     "" if tfrac is None else f"{100 * tfrac:.1f}%",
                     f"{c['floor_multiple']:.1f}"])
    lines.append(format_table(["model", "round", "method", "median ms", "vs torch", "peak extra",
                               "% weights", "held after", "transient %", "x floor"], rows,
                              align="lrlrrrrrrr"))
    lines.append(f"peak extra memory: {res['memory_method']}; held after: RSS growth still held "
                 "after the call (the result: masks, and for prune the <name>_mask buffers and "
                 "masked <name> tensors, 2x the weights in torch's format); transient % = "
                 "(peak extra - held after) / weight bytes")
    if res.get("targets"):
        lines.append("targets (reported, not enforced):")
        for t in res["targets"]:
            v = t["value"]
            val = "n/a" if v is None else f"{v:.3g}"
            met = {True: "met", False: "NOT MET", None: "info" if t["limit"] == "reference"
                   else "unknown"}[t["met"]]
            lines.append(f"  {met:>7}  {t['what']}: {val} ({t['limit']})")
    return "\n".join(lines)


def format_not_built(name: str, res: dict) -> str:
    return f"{name}: not built yet -- {res['reason']}"


def write_json(path: str, result: dict) -> None:
    # One line: per-shape suites (conv) hold thousands of records; `python -m json.tool`
    # pretty-prints it for reading.
    text = json.dumps(result, separators=(",", ":"), default=str, allow_nan=True)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text + "\n")

    atomic_write(path, write)
