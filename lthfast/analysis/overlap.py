"""Mask overlap: IoU of the kept weights of two tickets, overall and per layer
(`Ticket.iou`), and early-bird stability: IoU of each round's mask with the run's
final ticket, and of masks drawn during dense training with round 1's."""
from __future__ import annotations

import os

from lthfast.analysis._plot import literal_text, plt, png


def _load(t):
    from lthfast.ticket import Ticket
    return Ticket.load(t) if isinstance(t, (str, os.PathLike)) else t


def mask_overlap(a, b, *, shared_only: bool = False) -> dict:
    """IoU of kept weights of tickets `a` and `b` (Ticket or path).

    Returns {"overall": IoU, "chance": the expected IoU of random masks with the same
    per-layer sparsities, "layers": [{name, params, kept_a, kept_b, sparsity_a,
    sparsity_b, iou}], "only_a": [...], "only_b": [...], "mismatched": [...]}. Tickets over
    different parameters (or shapes of one name) raise ValueError listing them, unless
    `shared_only` (then the IoU is over the shared layers of one shape and the others are
    listed: only_a / only_b, and mismatched, "name: shape vs shape")."""
    a, b = _load(a), _load(b)
    na, nb = set(a.names()), set(b.names())
    if not na & nb:  # a classifier ticket vs a detector's: compare on the backbone
        a, b, mapped = _map_backbone(a, b)
        na, nb = set(a.names()), set(b.names())
    only_a, only_b = [n for n in a.names() if n not in nb], [n for n in b.names() if n not in na]
    if (only_a or only_b) and not shared_only:
        raise ValueError(f"the tickets cover different layers (only in the first: "
                         f"{_short(only_a)}; only in the second: {_short(only_b)}); compare "
                         "the shared layers with "
                         "shared_only=True (lthfast compare --shared)")
    shared = [n for n in a.names() if n in nb]
    bad = [f"{n}: {a.shapes[n]} vs {b.shapes[n]}" for n in shared if a.shapes[n] != b.shapes[n]]
    if bad and not shared_only:
        raise ValueError(f"the tickets disagree on layer shapes: {bad}; compare the layers of one "
                         "shape with shared_only=True (lthfast compare --shared)")
    # (a classifier's fc layer of another class count: not compared, listed)
    shared = [n for n in shared if a.shapes[n] == b.shapes[n]]
    if not shared:
        raise ValueError("the tickets share no layer" + (f" of one shape ({bad})" if bad else "")
                         + ": nothing to compare")
    from lthfast.ticket import Ticket
    sub_a = Ticket({n: a[n] for n in shared}) if len(shared) < len(a.names()) else a
    sub_b = Ticket({n: b[n] for n in shared}) if len(shared) < len(b.names()) else b
    res = sub_a.iou(sub_b)
    layers = [{"name": n, "params": a.numel(n), "kept_a": a.kept(n), "kept_b": b.kept(n),
               "sparsity_a": a.sparsity(n), "sparsity_b": b.sparsity(n),
               "iou": res["by_name"][n]} for n in shared]
    return {"overall": res["overall"], "chance": chance_iou(layers), "layers": layers,
            "only_a": only_a, "only_b": only_b, "mismatched": bad,
            "sparsity_a": sub_a.sparsity(), "sparsity_b": sub_b.sparsity()}


def chance_iou(layers: list[dict]) -> float:
    """The expected overall IoU of random masks with the layers' sparsities (each layer
    random within itself, as in the per-layer chance column): E|a∩b| / E|a∪b| summed over
    layers. Not random_iou of the overall sparsities: a layer kept only in A and one kept
    only in B overlap by chance 0, not 1/3."""
    inter = sum(d["kept_a"] * d["kept_b"] / d["params"] for d in layers if d["params"])
    union = sum(d["kept_a"] + d["kept_b"] - d["kept_a"] * d["kept_b"] / d["params"]
                for d in layers if d["params"])
    return inter / union if union else 1.0


def _short(names: list, n: int = 8) -> str:
    return f"{names[:n]}" + (f" and {len(names) - n} more" if len(names) > n else "")


def _map_backbone(a, b):
    """(a, b, mapped): a classifier ticket renamed to `backbone.body.*` when the other
    ticket is a detector's (see lthfast.transfer); unchanged otherwise."""
    from lthfast.ticket import Ticket
    from lthfast.transfer import _backbone_target
    for x, y, swap in ((a, b, False), (b, a, True)):
        # (the rule --ticket transfer uses: a MobileNet's features.* is the detector's body)
        theirs = set(y.names())
        to_bb = {n: _backbone_target(n, theirs) for n in x.names()}
        if set(to_bb.values()) & theirs and len(set(to_bb.values())) == len(to_bb):
            # only the layers the other ticket has are renamed: a classifier's fc stays
            # "fc.weight" (as "backbone.body.fc.weight" it named a layer of neither model)
            names = {n: (to_bb[n] if to_bb[n] in theirs else n) for n in x.names()}
            if len(set(names.values())) != len(names):
                names = to_bb
            x = Ticket({names[n]: x[n] for n in x.names()}, round=x.round, meta=x.meta)
            return (y, x, True) if swap else (x, y, True)
    return a, b, False


def random_iou(sparsity_a: float, sparsity_b: float) -> float:
    """Expected IoU of two independent random masks keeping 1-s_a and 1-s_b: the
    chance level an observed overlap should be compared with."""
    ka, kb = 1 - sparsity_a, 1 - sparsity_b
    inter = ka * kb
    union = ka + kb - inter
    return inter / union if union else 1.0


def early_bird(run) -> list[dict]:
    """IoU of every round's mask with the run's final ticket: one dict per round
    (round, sparsity, iou_with_final, chance_iou). Round 0 is dense (IoU = final density).
    IMP masks are nested, so iou_with_final = (1 - final sparsity) / (1 - sparsity): the
    mask-stability question is early_bird_iterations'."""
    if isinstance(run, (str, os.PathLike)):
        from lthfast.analysis.runs import load_run
        run = load_run(run)
    rounds = run.rounds
    final = run.ticket(rounds[-1])
    out = []
    for r in rounds:
        t = run.ticket(r)
        iou = t.iou(final)["overall"]
        out.append({"round": r, "sparsity": t.sparsity(), "iou_with_final": iou,
                    "chance_iou": tickets_chance_iou(t, final)})
    return out


def tickets_chance_iou(a, b) -> float:
    """chance_iou of tickets ``a`` and ``b`` over the layers they share: each layer's
    masks random at that layer's sparsities (a global ticket's layers differ widely, so
    random_iou of the overall sparsities is not the chance level)."""
    return chance_iou([{"params": a.numel(n), "kept_a": a.kept(n), "kept_b": b.kept(n)}
                       for n in a.names() if n in set(b.names())])


def early_bird_iterations(run) -> list[dict]:
    """IoU of the mask that round 1 would get if round 0 stopped after iteration i (saved
    by `lthfast imp --early-bird-every N` in round_0/early_bird/) with round 1's actual
    mask (from the end of round 0), at the same sparsity: one dict per saved iteration
    (iteration, sparsity, iou_with_final, chance_iou). Empty when none were saved."""
    import glob
    import os
    if isinstance(run, (str, os.PathLike)):
        from lthfast.analysis.runs import load_run
        run = load_run(run)
    files = sorted(glob.glob(os.path.join(run.path, "round_0", "early_bird", "iter_*.safetensors")))
    if not files or 1 not in run.rounds:
        return []
    final = run.ticket(1)
    out = []
    for f in files:
        t = _load(f)
        it = int(t.meta.get("iteration", os.path.basename(f)[5:12]))
        out.append({"iteration": it, "sparsity": t.sparsity(),
                    "iou_with_final": t.iou(final)["overall"],
                    "chance_iou": tickets_chance_iou(t, final)})
    return out


def plot_early_bird_iterations(runs: dict[str, list[dict]]) -> str | None:
    """IoU with round 1's mask vs training iteration of round 0, one line per run."""
    return _plot_iou_curves({k: v for k, v in runs.items() if v}, "iteration",
                            xlabel="training iteration of the dense round",
                            ylabel="IoU of kept weights with round 1's mask",
                            title="Early-bird tickets: the mask drawn during dense training")


def plot_early_bird(runs: dict[str, list[dict]]) -> str | None:
    """IoU with the final mask vs round, one line per run (dashed: chance level)."""
    return _plot_iou_curves({k: v for k, v in runs.items() if len(v) > 1}, "round",
                            xlabel="IMP round (0 = dense)",
                            ylabel="IoU of kept weights with the final ticket",
                            title="Each round's mask vs the final ticket (nested: IoU = kept ratio)",
                            integer_ticks=True)


@literal_text
def _plot_iou_curves(runs: dict[str, list[dict]], x: str, *, xlabel: str, ylabel: str,
                     title: str, integer_ticks: bool = False) -> str | None:
    """`iou_with_final` against `x`, one line per run; dashed: the chance level."""
    if not runs:
        return None
    p = plt()
    fig, ax = p.subplots(figsize=(6.5, 4))
    markers = "osD^vP*X"  # runs with equal curves (same schedule) stay visible
    for i, (label, rows) in enumerate(runs.items()):
        xs = [r[x] for r in rows]
        line, = ax.plot(xs, [r["iou_with_final"] for r in rows], marker=markers[i % 8],
                        markersize=max(3, 8 - 2 * i), label=label)
        ax.plot(xs, [r["chance_iou"] for r in rows], ls="--", color=line.get_color(),
                alpha=0.6, label=f"{label}: random masks (chance)")
    if integer_ticks:
        ax.set_xticks(sorted({r[x] for rows in runs.values() for r in rows}))
    else:  # iterations: whole numbers (a short run had ticks at 3.5, 4.5, ...)
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: never on a curve
    fig.tight_layout()
    return png(fig)


@literal_text
def plot_overlap_layers(layers: list[dict], title: str) -> str | None:
    """Per-layer IoU bars in model order."""
    if not layers:
        return None
    p = plt()
    fig, ax = p.subplots(figsize=(max(6.5, 0.14 * len(layers) + 2.5), 3.6))
    ax.bar(range(len(layers)), [d["iou"] for d in layers], color="tab:green")
    chance = [random_iou(d["sparsity_a"], d["sparsity_b"]) for d in layers]
    ax.plot(range(len(layers)), chance, "k_", markersize=8, label="chance (random masks)")
    ax.set_xlabel("layer (model order; see the table)")
    ax.set_ylabel("IoU of kept weights")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
