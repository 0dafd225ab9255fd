"""AP by object size, by category frequency and by difficulty, for every round of a
detection-task run, from the COCOeval results `lthfast imp` saves in metrics.json:
`{iou}_APs/APm/APl` and `per_category` / `per_category_area` ({iou: {category: ...}}).

APs are in percent; NaN (no ground truth of that size/category) is kept as NaN in
the data and left out of plots."""
from __future__ import annotations

import math
import os

from lthfast.analysis._plot import finite, literal_text, plt, png

SIZES = ("small", "medium", "large")
_SIZE_KEY = {"small": "APs", "medium": "APm", "large": "APl"}


def default_iou(rows: list[dict]) -> str:
    """The IoU type the task is judged by: segm, keypoints, else bbox."""
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    for iou in ("segm", "keypoints", "bbox"):
        if f"{iou}_AP" in keys:
            return iou
    raise ValueError("these metrics have no COCO AP (bbox_AP / segm_AP / keypoints_AP): "
                     "AP breakdowns need a detection, segmentation or keypoints run")


def _rows_of(run_or_rows):
    """Rows of a Run, a run directory path or a list of metrics rows."""
    if isinstance(run_or_rows, (str, os.PathLike)):
        from lthfast.analysis.runs import load_run
        run_or_rows = load_run(run_or_rows)
    return run_or_rows.rows if hasattr(run_or_rows, "rows") else list(run_or_rows)


def ap_by_size(run_or_rows, iou: str | None = None) -> list[dict]:
    """One dict per round: round, sparsity, AP (all sizes), small, medium, large (%), and
    iou (the COCO evaluation they come from). COCO's keypoint evaluation has no small
    range: small is NaN for keypoints."""
    rows = _rows_of(run_or_rows)
    iou = iou or default_iou(rows)
    out = []
    for r in rows:
        d = {"round": r["round"], "sparsity": r["sparsity"], "AP": r.get(f"{iou}_AP")}
        for size in SIZES:
            v = r.get(f"{iou}_{_SIZE_KEY[size]}")
            if v is None and not (iou == "keypoints" and size == "small"):
                # (rows without the column: the mean over categories, where saved)
                v = _mean([a.get(size) for a in r.get("per_category_area", {}).get(iou, {}).values()])
            d[size] = float("nan") if v is None else v
        d["iou"] = iou
        out.append(d)
    return out


def _mean(values) -> float:
    vals = [v for v in values if finite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _per_category(rows: list[dict], iou: str) -> dict[int, dict[str, float]]:
    out = {}
    for r in rows:
        pc = r.get("per_category", {}).get(iou)
        if pc is None:
            raise ValueError(f"round {r['round']} has no per-category {iou} AP in metrics.json "
                             "(runs made before lthfast saved per_category cannot be broken down)")
        out[int(r["round"])] = pc
    return out


def _category_table(rows, iou, order: list[str], extra: dict[str, dict],
                    rank_key=None) -> list[dict]:
    """Categories in `order`; `rank_key(cat)` (lower = first) gives tied categories one
    shared rank (1, 1, 3, ...): equal counts / equal dense AP are not ranked apart."""
    per = _per_category(rows, iou)
    table = []
    keys = [rank_key(c) if rank_key else i for i, c in enumerate(order)]
    for i, cat in enumerate(order):
        rank = 1 + sum(1 for k in keys if k < keys[i])
        d = {"rank": rank, "category": cat, **{k: v[cat] for k, v in extra.items()}}
        for rnd, pc in per.items():
            d[f"AP r{rnd}"] = pc.get(cat, float("nan"))
        table.append(d)
    return table


def ap_by_frequency(run_or_rows, counts: dict[str, int], iou: str | None = None) -> list[dict]:
    """Categories sorted by training-set frequency (most annotations first; equal counts
    by name, sharing one rank): rank, category, train_annotations, `AP r<round>` for
    every round."""
    rows = _rows_of(run_or_rows)
    iou = iou or default_iou(rows)
    cats = list(_per_category(rows, iou)[int(rows[0]["round"])])
    missing = [c for c in cats if c not in counts]
    if missing:
        raise ValueError(f"no training-set count for categories {missing}")
    order = sorted(cats, key=lambda c: (-counts[c], c))  # ties: by name, a stable order
    return _category_table(rows, iou, order, {"train_annotations": counts},
                           rank_key=lambda c: -counts[c])


def ap_by_difficulty(run_or_rows, iou: str | None = None) -> list[dict]:
    """Categories ranked by the dense round's AP (rank 1 = easiest; equal APs share a
    rank, listed by name; NaN last): rank, category, dense_AP, `AP r<round>` per round,
    and drop (dense AP - last round's AP). A run that started from a ticket has no dense
    round: its first round ranks them, and the column is start_AP."""
    rows = _rows_of(run_or_rows)
    iou = iou or default_iou(rows)
    per = _per_category(rows, iou)
    first = min(per)
    start = per[first]
    key = "dense_AP" if _is_dense(rows, first) else "start_AP"
    def hardness(c):  # NaN (no validation objects) ranks last
        return -(start[c] if finite(start[c]) else -math.inf)
    order = sorted(start, key=lambda c: (hardness(c), c))
    table = _category_table(rows, iou, order, {key: start}, rank_key=hardness)
    last = per[max(per)]
    for d in table:
        d["drop"] = d[key] - last.get(d["category"], float("nan"))
    return table


def _is_dense(rows, rnd: int) -> bool:
    """Whether round ``rnd`` of the metrics rows trained the dense model (no sparsity
    recorded counts as dense: rows written by hand)."""
    row = next((r for r in rows if int(r["round"]) == rnd), {})
    sparsity = row.get("sparsity", 0.0)
    return not (isinstance(sparsity, (int, float)) and sparsity > 0)


def training_category_counts(run) -> dict[str, int]:
    """Annotations per category in the run's training split (re-read through the same
    dataset loader `lthfast imp` used, with its --n-train part; shapes data comes from its
    cache; the images themselves are not needed)."""
    from lthfast.detection import data as det_data
    if isinstance(run, (str, os.PathLike)):
        from lthfast.analysis.runs import load_run
        run = load_run(run)
    ds = det_data.run_split({**run.settings, "task": run.task}, "train", check_images=False)
    return ds.category_counts()


# ------------------------------------------------------------------ plots
@literal_text
def plot_ap_by_size(runs: dict[str, list[dict]]) -> str | None:
    """AP (%) vs sparsity (%) for small / medium / large objects, one line per run.
    `runs`: {label: ap_by_size(...) rows}."""
    if not runs:
        return None
    p = plt()
    # one sparsity axis: a panel with nothing to draw showed 0-1 under a label in percent
    fig, axes = p.subplots(1, 3, figsize=(13, 3.8), sharey=True, sharex=True)
    for ax, size in zip(axes, SIZES):
        drawn = False
        for label, rows in runs.items():
            pts = [(100 * r["sparsity"], r[size]) for r in rows if finite(r.get(size))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=label)
                drawn = True
        if not drawn:
            keypoints = size == "small" and all(r.get("iou") == "keypoints"
                                                for rows in runs.values() for r in rows)
            text = ("COCO's keypoint evaluation\nhas no small range" if keypoints
                    else f"no {size} objects\nin the validation set")
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(f"{size} objects")
        ax.set_xlabel("sparsity of the pruned layers (%)")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("AP (%)")
    fig.suptitle("AP by object size (COCO areas: small < 32², medium < 96², large ≥ 96² px)")
    fig.tight_layout()
    return png(fig)


@literal_text
def plot_ap_by_category(table: list[dict], *, title: str, xlabel: str,
                        count_key: str | None = None) -> str | None:
    """AP (%) per category in the table's order, one line per round."""
    if not table:
        return None
    p = plt()
    round_keys = [k for k in table[0] if k.startswith("AP r")]
    fig, ax = p.subplots(figsize=(max(6.5, 0.35 * len(table) + 3), 4.2))
    xs = list(range(len(table)))
    for k in round_keys:
        ys = [d[k] if finite(d[k]) else float("nan") for d in table]
        ax.plot(xs, ys, marker="o", label=f"round {k[4:]}")
    labels = [d["category"] + (f" ({d[count_key]})" if count_key else "") for d in table]
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=45 if len(table) > 4 else 0, ha="right" if len(table) > 4 else "center",
                       fontsize=8)
    if any(not finite(d[k]) for d in table for k in round_keys):  # before set_xlabel
        xlabel += "; gaps: no validation objects of that category"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="IMP round")
    fig.tight_layout()
    return png(fig)
