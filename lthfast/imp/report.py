"""report.html of one IMP run: the metrics table, the sparsity-vs-AP curve and the
per-layer sparsity of the last ticket. Self-contained: plots are embedded PNGs."""
from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
import re

from lthfast.imp.rundir import RunDir, write_text

# Metrics plotted against sparsity, in this order when present.
CURVE_KEYS = ("bbox_AP", "segm_AP", "keypoints_AP", "bbox_AP50", "top1", "top5", "accuracy")
# The ones in percent (COCO APs x 100; top-1 as lthfast.imp.classification reports it).
PERCENT_KEYS = CURVE_KEYS
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINESTYLES = ("-", "--", ":", "-.")


def literal_text(fn):
    """Runs the plotting function `fn` with matplotlib's mathtext off: a '$' in a run label
    or folder name ("lr$1e-3$") is drawn as written (it was garbled, or failed the plot)."""
    @functools.wraps(fn)
    def plot(*args, **kwargs):
        import matplotlib
        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)
    return plot


def subplots(*args, figsize=None, **kwargs):
    """(figure, axes) as `pyplot.subplots` gives them, on a Figure of its own: no pyplot,
    no `matplotlib.use` (a notebook's inline backend is left as it is) and nothing to
    close (the figure goes with its last reference)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def curve_keys(rows: list[dict]) -> list[str]:
    return [k for k in CURVE_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)]


@literal_text
def plot_curve(runs: dict[str, list[dict]]) -> str | None:
    """Sparsity (x, % pruned) vs each AP metric, one line per run. Base64 PNG."""
    keys = []
    for rows in runs.values():
        keys += [k for k in curve_keys(rows) if k not in keys]
    if not keys:
        return None
    fig, axes = subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, rows) in enumerate(runs.items()):
            pts = [(100 * r["sparsity"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                # runs that give the same numbers must stay visible on top of each other:
                # each run its own marker, line style and (shrinking) marker size
                ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)],
                        ls=_LINESTYLES[i % len(_LINESTYLES)], ms=max(3.0, 7.0 - 1.2 * i),
                        label=label)
                if len(runs) == 1 and pts[0][0] == 0:  # a dense round to compare with
                    ax.axhline(pts[0][1], color="grey", lw=0.8, ls="--", label="dense")
        ax.set_xlabel("sparsity of the pruned layers (%)")
        ax.set_ylabel(key.replace("_", " ") + (" (%)" if key in PERCENT_KEYS else ""))
        ax.set_title(f"{key} vs sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def layer_rows(ticket) -> list[dict]:
    out = []
    for name in ticket.names():
        n, kept = ticket.numel(name), ticket.kept(name)
        out.append({"name": name, "shape": "×".join(map(str, ticket.shapes[name])), "params": n,
                    "kept": kept, "sparsity": 1.0 - kept / n if n else 0.0})
    return out


def _coarse_scope(name: str) -> str:
    """backbone / fpn / rpn / roi_heads / head for torchvision detectors, else "other"."""
    try:
        from lthfast.detection.scopes import scope_of
    except ImportError:
        return "other"
    return scope_of(name)


@literal_text
def plot_layers(rows: list[dict], title: str) -> str | None:
    if not rows:
        return None
    fig, ax = subplots(figsize=(max(6.0, 0.12 * len(rows) + 2), 3.4))
    groups = [_coarse_scope(r["name"]) for r in rows]
    heights = [100 * r["sparsity"] for r in rows]
    if len(set(groups)) > 1:  # a detector: one colour per part (backbone, fpn, rpn, ...)
        for g in dict.fromkeys(groups):
            xs = [i for i, gg in enumerate(groups) if gg == g]
            ax.bar(xs, [heights[i] for i in xs], label=g)
        ax.legend(fontsize=8, loc="upper left", ncol=len(set(groups)))
        ax.set_ylim(0, 112)  # room for the legend above 100%
        ax.set_yticks(range(0, 101, 20))
    else:
        ax.bar(range(len(rows)), heights, color="tab:blue")
        ax.set_ylim(0, 100)
    ax.set_xlabel("layer (model order; see the table below)")
    ax.set_ylabel("pruned (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _fmt(v, col: str = "", ap: bool = False) -> str:
    """A cell as people read it: sparsities (fractions) as percentages, AP (already
    in percent, COCO style: columns named like bbox_AP50 or "AP r2", or listed in
    `ap`) with one decimal, other floats with 4 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"  # e.g. AP over a size range with no ground truth
    if isinstance(v, float) and math.isfinite(v):
        if "sparsity" in col and 0.0 <= v <= 1.0:
            text = f"{100 * v:.2f}%"  # not rounded to 100.00% / 0.00% unless it is
            return ("&gt;99.99%" if text == "100.00%" and v < 1.0
                    else "&lt;0.01%" if text == "0.00%" and v > 0.0 else text)
        if ap or re.search(r"(^|_)AP(\d+|[sml]| r\d+)?($|_)", col):
            return f"{v:.1f}"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return html.escape(str(v))


def html_table(rows: list[dict], cols: list[str] | None = None, *, ap_cols=()) -> str:
    """`ap_cols`: columns that hold AP (%) under other names (e.g. small / medium / large)."""
    if not rows:
        return "<p>(no rows)</p>"
    if cols is None:
        cols = []
        for r in rows:
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (dict, list))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''), c, c in ap_cols)}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(b64: str | None, alt: str) -> str:
    return "" if b64 is None else f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;margin:0.5em 0}code{background:#f3f3f3;padding:1px 4px}"""


def page(title: str, sections: list[str]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title)
            + f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            + "\n".join(sections) + "</body></html>\n")


def write_run_report(run_dir: str, out: str | None = None) -> str:
    """Writes RUN_DIR/report.html (or `out`) and returns its path."""
    from lthfast.ticket import Ticket
    run = RunDir(run_dir)
    rows, cfg, status = run.read_metrics(), run.config(), run.status()
    sections = [f"<p>run <code>{html.escape(run.path)}</code> — status "
                f"<b>{html.escape(str(status.get('state')))}</b>, "
                f"{len(rows)} round(s) finished</p>"]
    summary = {k: v for k, v in cfg.items() if not isinstance(v, (dict, list))}
    summary.update({f"schedule.{k}": v for k, v in cfg.get("schedule", {}).items()
                    if not isinstance(v, (dict, list))})
    sections.append("<h2>Configuration</h2>" + html_table([summary]))
    sections.append("<h2>Sparsity vs accuracy</h2>" + img(plot_curve({"this run": rows}),
                                                          "sparsity vs AP"))
    sections.append("<h2>Rounds</h2>" + html_table(rows))
    if rows:
        last = rows[-1]["round"]
        path = run.ticket_path(last)
        lrows, why = None, None
        if os.path.exists(path):
            try:
                lrows = layer_rows(Ticket.load(path))
            except ValueError as e:  # a damaged ticket file: the rest of the page still helps
                why = str(e)
        if lrows is not None:
            sections.append(f"<h2>Per-layer sparsity, round {last}</h2>"
                            + img(plot_layers(lrows, f"per-layer sparsity, round {last}"),
                                  "per-layer sparsity")
                            + html_table(lrows, ["name", "shape", "params", "kept", "sparsity"]))
        elif why is not None:
            sections.append(f"<h2>Per-layer sparsity, round {last}</h2>"
                            f"<p><i>not available: {html.escape(why)}</i></p>")
    target = out or run.file("report.html")
    write_text(target, page(f"lthfast IMP run: {cfg.get('model', '')}", sections))
    return target
