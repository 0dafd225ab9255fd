"""Per-layer sparsity of a ticket and its structure: fully pruned conv kernels
(Ticket.report's zero slices) and fully pruned output channels / linear rows."""
from __future__ import annotations

from lthfast.analysis._plot import plt, png


def layer_stats(ticket) -> list[dict]:
    """One dict per tensor: name, shape, params, kept, sparsity, zero_kernels (conv:
    (out, in) kernels with no weight kept), zero_channels (output channels / linear
    rows with no weight kept), out_channels."""
    out = []
    for r in ticket.report():
        mask = ticket[r["name"]]
        zero_ch = 0
        if mask.dim() >= 2 and mask.numel():
            zero_ch = int((~mask.reshape(mask.shape[0], -1).any(dim=1)).sum())
        out.append({"name": r["name"], "shape": "×".join(map(str, r["shape"])),
                    "params": r["params"], "kept": r["kept"], "sparsity": r["sparsity"],
                    "zero_kernels": r["zero_slices"] if r["slice_kind"] == "kernels" else 0,
                    "zero_channels": zero_ch,
                    "out_channels": mask.shape[0] if mask.dim() >= 2 else 0})
    return out


def summary(stats: list[dict]) -> dict:
    params = sum(d["params"] for d in stats)
    kept = sum(d["kept"] for d in stats)
    return {"layers": len(stats), "params": params, "kept": kept,
            "sparsity": 1 - kept / params if params else 0.0,
            "zero_kernels": sum(d["zero_kernels"] for d in stats),
            "zero_channels": sum(d["zero_channels"] for d in stats),
            "fully_pruned_layers": sum(1 for d in stats if d["params"] and not d["kept"])}


def plot_layer_stats(runs: dict[str, list[dict]], title: str) -> str | None:
    """Per-layer sparsity (%) bars (one colour per ticket) over fully pruned channels (%)."""
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    p = plt()
    n = max(len(v) for v in runs.values())
    fig, (ax, ax2) = p.subplots(2, 1, figsize=(max(7.0, 0.16 * n * len(runs) + 2.5), 6),
                                sharex=True)
    width = 0.8 / len(runs)
    for i, (label, stats) in enumerate(runs.items()):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(stats))]
        ax.bar(xs, [100 * d["sparsity"] for d in stats], width=width, label=label)
        ax2.bar(xs, [100 * d["zero_channels"] / d["out_channels"] if d["out_channels"] else 0
                     for d in stats], width=width, label=label)
    ax.set_ylabel("weights pruned (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax2.set_ylabel("output channels fully pruned (%)")
    if not any(d["zero_channels"] for stats in runs.values() for d in stats):
        ax2.set_ylim(0, 5)
        ax2.text(0.5, 0.5, "no output channel is fully pruned", ha="center", va="center",
                 transform=ax2.transAxes, color="grey")
    ax2.set_xlabel("layer index (model order; see the table)")
    for a in (ax, ax2):
        a.grid(axis="y", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
