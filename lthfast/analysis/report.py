"""`lthfast report`: one self-contained HTML page comparing IMP runs side by side
(plots embedded as base64 PNGs): sparsity vs accuracy, AP by object size / category
frequency / difficulty, mask overlap between the runs' tickets, early-bird stability,
per-layer structure, layer-wise vs global pruning and perturbation tests."""
from __future__ import annotations

import html
import os
import pickle
import warnings

from lthfast.analysis import ap_breakdown as apb
from lthfast.analysis import layers as lay
from lthfast.analysis import layerwise as lw
from lthfast.analysis import overlap as ov
from lthfast.analysis import perturb as pt
from lthfast.analysis._plot import literal_text, plt, png
from lthfast.analysis.runs import RunError, RunningWarning, load_run, unique_labels
from lthfast.imp.report import html_table, img, page, plot_curve

DETECTION_TASKS = ("detection", "segmentation", "keypoints")


def _note(text: str) -> str:
    return f"<p><i>{html.escape(text)}</i></p>"


def _guard(title: str, fn) -> str:
    """A section whose failure (missing data, an old run) is shown, not fatal."""
    try:
        return fn()
    except _UNREADABLE as e:
        return f"<h3>{html.escape(title)}</h3>" + _note(f"not available: {e}")


# What a missing, damaged or old run file raises (torch.load: RuntimeError / UnpicklingError)
_UNREADABLE = (ValueError, OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)


def _each_run(runs, fn) -> tuple[dict, list[str]]:
    """({label: fn(run)} for the runs it works for, notes on the others): one run's
    damaged file leaves the others' part of a section."""
    done, notes = {}, []
    for r in runs:
        try:
            done[r.label] = fn(r)
        except _UNREADABLE as e:
            notes.append(_note(f"{r.label}: not available: {e}"))
    return done, notes


def _final_metric(run) -> tuple[str, object]:
    try:
        k = pt.metric_key(run.rows[-1])
    except ValueError:
        return "", ""
    return k, run.rows[-1].get(k)


def _overview(runs) -> str:
    rows = []
    for r in runs:
        key, val = _final_metric(r)
        rows.append({"run": r.label, "task": r.task, "model": r.config.get("model", ""),
                     "data": r.config.get("data", ""), "status": r.status.get("state"),
                     "rounds done": len(r.rows), "final sparsity": r.rows[-1]["sparsity"],
                     "network sparsity": r.rows[-1].get("sparsity_network", ""),
                     "layer-wise": r.config.get("schedule", {}).get("layerwise", ""),
                     "rewind": r.config.get("schedule", {}).get("rewind", ""),
                     "final metric": key,
                     "value": round(val, 4) if isinstance(val, float) else val,
                     "ticket from": _ticket_from(r.config.get("ticket_source")),
                     "path": r.path})
    return "<h2>Runs</h2>" + html_table(rows) + _transfers(runs)


def _ticket_from(source) -> str:
    """A starting ticket's file, short: RUN/round_R for a run's ticket (every one is
    named ticket.safetensors), else the file name."""
    if not source:
        return "-"
    parts = os.path.normpath(str(source)).split(os.sep)
    if len(parts) >= 3 and parts[-1] == "ticket.safetensors" and parts[-2].startswith("round_"):
        return f"{parts[-3]}/{parts[-2]}"
    return parts[-1]


def _transfers(runs) -> str:
    """Runs started from a transferred ticket (lthfast imp --ticket)."""
    rows = []
    for r in runs:
        t = r.config.get("transfer")
        if not t:
            continue
        sp = t.get("sparsity", {})
        rows.append({"run": r.label, "ticket": r.config.get("ticket_source", ""),
                     "kind": t.get("kind"), "layers mapped": len(t.get("mapping", {})),
                     "not transferred": ", ".join(t.get("unmapped_source", [])
                                                  + t.get("shape_mismatch", [])) or "-",
                     "target layers left dense": len(t.get("uncovered_target", [])),
                     "sparsity of transferred layers": sp.get("transferred", ""),
                     "backbone sparsity": sp.get("backbone", ""),
                     "network sparsity": sp.get("network", "")})
    if not rows:
        return ""
    return ("<h2>Ticket transfer</h2>" + _note("sparsity at the start of round 0; backbone and "
            "network sparsity count every parameter of the backbone body (not the FPN) / model") + html_table(rows))


def _by_task(runs) -> dict:
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.task, []).append(r)
    return groups


def _curves(groups) -> str:
    out = ["<h2>Sparsity vs accuracy</h2>"]
    for task, runs in groups.items():
        out.append(f"<h3>{html.escape(task)}</h3>"
                   + img(plot_curve({r.label: r.rows for r in runs}), f"{task}: sparsity vs metric"))
    return "".join(out)


def _sizes(groups) -> str:
    out = ["<h2>AP by object size</h2>"]
    for task, runs in groups.items():
        if task not in DETECTION_TASKS:
            continue
        data = {r.label: apb.ap_by_size(r) for r in runs}
        out.append(f"<h3>{html.escape(task)}</h3>" + img(apb.plot_ap_by_size(data), "AP by size"))
        out.append(html_table([{"run": k, **row} for k, rows in data.items() for row in rows],
                              ["run", "round", "sparsity", "AP", "small", "medium", "large"],
                              ap_cols=("small", "medium", "large")))
    return "".join(out) if len(out) > 1 else ""


def _categories(runs) -> str:
    out = ["<h2>AP by category: training-set frequency and difficulty</h2>"]
    for r in runs:
        if r.task not in DETECTION_TASKS:
            continue

        def freq(r=r):
            table = apb.ap_by_frequency(r, apb.training_category_counts(r))
            return (f"<h3>{html.escape(r.label)}: by training-set frequency</h3>"
                    + img(apb.plot_ap_by_category(
                        table, title=f"{r.label}: AP per category, most frequent first",
                        xlabel="category (training annotations)", count_key="train_annotations"),
                        "AP by frequency") + html_table(table, ap_cols=("drop",)))

        def diff(r=r):
            table = apb.ap_by_difficulty(r)
            by = "dense AP" if table and "dense_AP" in table[0] else "starting ticket's AP"
            return (f"<h3>{html.escape(r.label)}: by difficulty ({by})</h3>"
                    + img(apb.plot_ap_by_category(
                        table, title=f"{r.label}: AP per category, easiest ({by}) first",
                        xlabel=f"category (ranked by the {by})"), "AP by difficulty")
                    + html_table(table, ap_cols=("drop",)))
        out += [_guard(f"{r.label}: by frequency", freq), _guard(f"{r.label}: by difficulty", diff)]
    return "".join(out) if len(out) > 1 else ""


def _overlap(runs) -> str:
    if len(runs) < 2:
        return ""
    out = ["<h2>Mask overlap of the final tickets</h2>",
           _note("IoU of kept weights = |kept in both| / |kept in either|; chance = the "
                 "expected IoU of random masks with the same per-layer sparsities.")]
    pairs, plots = [], []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            try:
                res = ov.mask_overlap(a.ticket(), b.ticket(), shared_only=True)
            except ValueError as e:
                pairs.append({"run A": a.label, "run B": b.label, "IoU": "", "note": str(e)})
                continue
            note = (f"shared layers only ({len(res['layers'])}; {len(res['only_a'])} only in A, "
                    f"{len(res['only_b'])} only in B)" if res["only_a"] or res["only_b"] else "")
            if res["mismatched"]:
                note += ("; " if note else "") + f"not compared (other shapes): {res['mismatched'][:3]}"
            pairs.append({"run A": a.label, "run B": b.label, "sparsity A": res["sparsity_a"],
                          "sparsity B": res["sparsity_b"], "IoU": res["overall"],
                          "chance IoU": res["chance"],
                          "note": note})
            if len(plots) < 6:
                plots.append(f"<h3>{html.escape(a.label)} vs {html.escape(b.label)}</h3>"
                             + img(ov.plot_overlap_layers(
                                 res["layers"], f"per-layer IoU: {a.label} vs {b.label}"),
                                 "per-layer IoU")
                             + html_table([{"index": j, **d} for j, d in enumerate(res["layers"])]))
    return "".join(out) + html_table(pairs) + "".join(plots)


def _early_bird(runs) -> str:
    data, notes = _each_run(runs, ov.early_bird)
    out = "<h2>Early-bird stability</h2>" + "".join(notes) + _note(
        "IoU of the mask of each round with the run's final ticket. IMP masks are nested (a "
        "pruned weight stays pruned), so this IoU is fixed by the sparsities: "
        "(1 - final sparsity) / (1 - round sparsity); whether the mask itself is found "
        "early shows in the masks drawn during dense training (lthfast imp "
        "--early-bird-every N), below when saved.")
    out += (img(ov.plot_early_bird(data), "early-bird stability")
            + html_table([{"run": k, **row} for k, rows in data.items() for row in rows]))
    iters, _ = _each_run(runs, ov.early_bird_iterations)
    if any(iters.values()):
        out += ("<h3>During dense training</h3>" + _note(
            "Masks drawn every few iterations of round 0 (lthfast imp --early-bird-every N) "
            "against round 1's mask at the same sparsity.")
            + img(ov.plot_early_bird_iterations(iters), "early-bird masks during training")
            + html_table([{"run": k, **row} for k, rows in iters.items() for row in rows]))
    return out


def _layers(runs) -> str:
    stats, notes = _each_run(runs, lambda r: lay.layer_stats(r.ticket()))
    groups: dict[tuple, dict] = {}
    for label, s in stats.items():
        groups.setdefault(tuple(d["name"] for d in s), {})[label] = s
    out = ["<h2>Per-layer structure of the final tickets</h2>", *notes,
           html_table([{"run": k, **lay.summary(s)} for k, s in stats.items()])]
    for names, grp in groups.items():
        out.append(img(lay.plot_layer_stats(grp, "per-layer sparsity and fully pruned channels: "
                                            + ", ".join(grp)), "per-layer structure"))
        first = next(iter(grp.values()))
        rows = []
        for j, name in enumerate(names):
            row = {"index": j, "name": name, "shape": first[j]["shape"], "params": first[j]["params"]}
            for label, s in grp.items():
                row[f"{label}: sparsity"] = s[j]["sparsity"]
                row[f"{label}: zero kernels"] = s[j]["zero_kernels"]
                row[f"{label}: zero channels"] = s[j]["zero_channels"]
            rows.append(row)
        out.append(html_table(rows))
    return "".join(out)


def _layerwise(runs) -> str:
    import torch
    out = ["<h2>Layer-wise vs global pruning at the same sparsity</h2>",
           _note("Both masks are computed from the run's last trained weights (checkpoint.pt) "
                 "at the final ticket's sparsity: one global magnitude threshold vs the same "
                 "fraction pruned in every layer. Pruned weights are 0 there, so the global "
                 "mask is the run's own ticket.")]
    for r in runs:
        def one(r=r):
            if r.config.get("schedule", {}).get("layerwise"):
                return f"<h3>{html.escape(r.label)}</h3>" + _note(
                    "a --layerwise run: both masks would be its own ticket (its pruned weights "
                    "are 0 and every layer is at the same sparsity); a global run of the same "
                    "task compares with it below")
            path = os.path.join(r.path, "checkpoint.pt")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            state = saved["model"]
            if int(saved.get("round", r.rounds[-1])) != r.rounds[-1]:
                why = ("trained, not yet evaluated" if saved.get("pending") is not None
                       else "a run caught between its writes")
                return f"<h3>{html.escape(r.label)}</h3>" + _note(
                    f"checkpoint.pt holds round {saved.get('round')}'s weights but metrics.json "
                    f"ends at round {r.rounds[-1]} ({why}): skipped")
            t = r.ticket()
            if t.sparsity() == 0:
                return f"<h3>{html.escape(r.label)}</h3>" + _note("the last ticket is dense")
            res = lw.layerwise_vs_global(state, t.sparsity(), t.names())
            return (f"<h3>{html.escape(r.label)}</h3>"
                    + img(lw.plot_layerwise_vs_global(res), "layer-wise vs global")
                    + html_table([{"overall IoU": res["iou"], "sparsity": res["sparsity"]}])
                    + html_table([{"index": j, **d} for j, d in enumerate(res["layers"])]))
        out.append(_guard(r.label, one))
    out.append(_guard("layer-wise vs global runs", lambda: _layerwise_run_pairs(runs)))
    return "".join(out)


def _layerwise_run_pairs(runs) -> str:
    """Runs of one task and pruned set, one --layerwise and one not: their tickets of the
    rounds whose sparsities are closest."""
    out = []
    flag = {r.label: bool(r.config.get("schedule", {}).get("layerwise")) for r in runs}
    for g in runs:
        for l in runs:
            if flag[g.label] or not flag[l.label] or g.task != l.task:
                continue
            rg, rl = _closest_rounds(g, l)
            tg, tl = g.ticket(rg), l.ticket(rl)
            if tg.names() != tl.names():
                continue
            res = lw.compare_tickets(tg, tl)
            out.append(f"<h3>runs: {html.escape(g.label)} (global, round {rg}) vs "
                       f"{html.escape(l.label)} (layer-wise, round {rl})</h3>"
                       + img(lw.plot_layerwise_vs_global(
                           res, f"{g.label} (global, {100 * res['global_sparsity']:.1f}%) vs "
                                f"{l.label} (layer-wise, {100 * res['layerwise_sparsity']:.1f}%): "
                                f"IoU {res['iou']:.3f}"), "layer-wise vs global runs")
                       + html_table([{"index": j, **d} for j, d in enumerate(res["layers"])]))
    return "".join(out)


def _closest_rounds(a, b) -> tuple[int, int]:
    """The pruned rounds of runs a and b whose sparsities are closest (the later pair on a
    tie; their last rounds when none is pruned)."""
    def pruned(run):
        return {int(x["round"]): float(x["sparsity"]) for x in run.rows
                if isinstance(x.get("sparsity"), (int, float)) and x["sparsity"] > 0}
    sa, sb = pruned(a), pruned(b)
    pairs = [(abs(x - y), -ra, -rb) for ra, x in sa.items() for rb, y in sb.items()]
    if not pairs:
        return a.rounds[-1], b.rounds[-1]
    _, ra, rb = min(pairs)
    return -ra, -rb


def _perturbation(runs) -> str:
    saved, notes = _each_run(runs, lambda r: pt.load_results(r.path))
    out = ["<h2>Perturbation tests</h2>", *notes]
    found = False
    for r in runs:
        for test in saved.get(r.label, []):
            found = True
            table = pt.table(test)
            out.append(f"<h3>{html.escape(r.label)}, round {test['round']}</h3>"
                       + img(plot_perturbation(table, test["metric"], r.label), "perturbation")
                       + html_table(table, ap_cols=(test["metric"], "change vs ticket")))
    if not found:
        out.append(_note("no perturbation test saved; run `lthfast perturb RUN_DIR` to add one."))
    return "".join(out)


@literal_text
def plot_perturbation(table: list[dict], metric: str, label: str) -> str | None:
    vals = [(f"{d['mask']}\n({100 * d['sparsity']:.0f}% pruned)", d[metric]) for d in table
            if isinstance(d.get(metric), (int, float))]
    if not vals:
        return None
    p = plt()
    fig, ax = p.subplots(figsize=(6, 3.6))
    colors = ["tab:blue"] + ["tab:orange"] * (len(vals) - 1)
    ax.bar([v[0] for v in vals], [v[1] for v in vals], color=colors)
    ax.set_xlabel("mask retrained from the rewind point")
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.set_title(f"{label}: the ticket vs its perturbed masks")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png(fig)


def build_report(paths: list[str], out: str, *, labels: list[str] | None = None,
                 title: str | None = None) -> tuple[str, list[str]]:
    """Writes the comparison page of the runs in `paths` to `out`; returns (out, warnings).
    RunError for a path that is no run or an empty run."""
    if not paths:
        raise RunError("no run directory given")
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunningWarning)
        runs = [load_run(p, label=(labels[i] if labels and i < len(labels) else None))
                for i, p in enumerate(paths)]
    notes += [str(w.message) for w in caught if issubclass(w.category, RunningWarning)]
    unique_labels(runs)
    groups = _by_task(runs)
    if len(groups) > 1:
        notes.append("these runs are of different tasks (" + ", ".join(
            f"{r.label}: {r.task}" for r in runs) + "): accuracy and AP are compared within each "
            "task only; mask overlap is over the layers the tickets share")
    # every section that reads tickets or metrics is guarded: a run with a round's ticket
    # missing (copied without its round_R folders, an older layout) loses that section,
    # not the whole page
    sections = ["".join(f"<p style='color:#a40'><b>warning:</b> {html.escape(n)}</p>" for n in notes),
                _overview(runs), _guard("Sparsity vs accuracy", lambda: _curves(groups)),
                _guard("AP by object size", lambda: _sizes(groups)), _categories(runs),
                _guard("Mask overlap", lambda: _overlap(runs)),
                _guard("Early-bird stability", lambda: _early_bird(runs)),
                _guard("Per-layer structure", lambda: _layers(runs)), _layerwise(runs),
                _guard("Perturbation tests", lambda: _perturbation(runs))]
    from lthfast.imp.rundir import write_text
    write_text(out, page(title or f"lthfast report: {len(runs)} run(s)", sections))
    return out, notes
