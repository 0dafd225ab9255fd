"""The human table of the `conv` benchmark suite."""
from __future__ import annotations

from lthfast.cli._common import format_table


def _ms(s):
    return f"{s * 1e3:.2f}"


def format_conv(res: dict) -> str:
    lines = [f"conv: masked convolution, ms (minimum of runs interleaved in balanced orders); torch = F.conv2d(x, w*mask), premasked = "
             f"F.conv2d on w*mask made once; 'sp/dn' = dense time / sparse time (median of per-round ratios); {res['threads']} "
             f"threads; load average {res['load_average_start'][0]:.1f} -> {res['load_average_end'][0]:.1f}"]
    rows = []
    for c in res["cases"]:
        if c["status"] != "ok":
            # the same columns as an ok row: layer, shape, batch, sparsity, then the times
            rows.append([c["layer"], "", c["batch"], c["sparsity"], "ERROR", c["error"][:50]]
                        + [""] * 7)
            continue
        s, m = c["shape"], c["min_s"]
        desc = (f"{s['in']}->{s['out']} {s['kernel'][0]}x{s['kernel'][1]}/{s['stride'][0]}"
                f"{' g' + str(s['groups']) if s['groups'] > 1 else ''} @{s['hw'][0]}x{s['hw'][1]}")
        rows.append([c["layer"], desc, c["batch"], c["sparsity"], _ms(m["torch_masked"]),
                     _ms(m["torch_premasked"]), _ms(m["dense"]), _ms(m["sparse"]), _ms(m["auto"]),
                     _ms(m["tuned"]) if "tuned" in m else "", f"{c['sparse_speedup_vs_dense']:.2f}",
                     c["auto_choice"], c.get("tuned_choice", "")])
    lines.append(format_table(["layer", "shape", "batch", "sparsity", "torch", "premasked", "dense",
                               "sparse", "auto", "tuned", "sp/dn", "auto ran", "tuned ran"], rows,
                              align="llrrrrrrrrrll"))
    if res.get("e2e"):
        lines.append("")
        lines.append("end to end (eval, batch 1, global magnitude masks): ms (minimum)")
        rows = []
        for c in res["e2e"]:
            if c["status"] != "ok":
                rows.append([c["model"], c["sparsity"], "ERROR", c["error"][:60], "", "", "", "", ""])
                continue
            m = c["min_s"]
            tuned = "lthfast_tuned" in m
            rows.append([c["model"], c["sparsity"], _ms(m["torch_masked_weights"]), _ms(m["lthfast_auto"]),
                         _ms(m["lthfast_tuned"]) if tuned else "", _ms(m["lthfast_sparse"]),
                         f"{c['auto_speedup']:.2f}x", f"{c['tuned_speedup']:.2f}x" if tuned else "",
                         f"{c['n_layers_auto_sparse']}/{c['n_masked_layers']}",
                         f"{c['n_layers_tuned_sparse']}/{c['n_masked_layers']}" if tuned else "",
                         f"{c['tuning_call_s'] * 1e3:.0f}" if tuned else ""])
        lines.append(format_table(["model", "sparsity", "dense masked", "lthfast auto", "lthfast tuned",
                                   "all sparse", "auto speedup", "tuned speedup", "auto sparse",
                                   "tuned sparse", "tuning call ms"], rows))
    lines.append("")
    lines.append("measured rule (smallest sparsity from which sparse beat dense on every shape):")
    for r in res["rule_from_measurements"]:
        lines.append(f"  {r['kind']:<9} batch {r['batch']:<3} -> "
                     f"{'never' if r['min_sparsity'] is None else r['min_sparsity']}   worst sp/dn by "
                     "sparsity: " + ", ".join(f"{k}: {v:.2f}" for k, v in r["worst_speedup_by_sparsity"].items()))
    if res.get("targets"):
        lines.append("targets (reported, not enforced):")
        for t in res["targets"]:
            met = {True: "met", False: "NOT MET", None: "control"}[t["met"]]
            lines.append(f"  {met:>7}  {t['what']}: {t['value']:.3g} ({t['limit']}) at {t['where']}")
    return "\n".join(lines)
