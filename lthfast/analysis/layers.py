"""Per-layer sparsity of a ticket and its structure: fully pruned conv kernels
(Ticket.report's zero slices) and fully pruned output channels / linear rows."""
from __future__ import annotations

from lthfast.analysis._plot import literal_text, plt, png


# ConvTranspose2d weights of torchvision's detectors: (in, out / groups, kH, kW), so their
# output channels are dim 1, not dim 0 (a ticket alone does not know the module type)
TRANSPOSED = ("roi_heads.mask_predictor.conv5_mask.weight",
              "roi_heads.keypoint_predictor.kps_score_lowres.weight")


def _transposed(model) -> dict[str, int]:
    """{weight name: groups} of the transposed convs of `model` (an nn.Module, an iterable
    of names, or None: the torchvision detector names in TRANSPOSED)."""
    if model is None:
        return dict.fromkeys(TRANSPOSED, 1)
    if hasattr(model, "named_modules"):
        import torch.nn as nn
        return {f"{n}.weight" if n else "weight": m.groups for n, m in model.named_modules()
                if isinstance(m, nn.modules.conv._ConvTransposeNd)}
    return dict.fromkeys(model, 1)


def _zero_out_channels(mask, groups: int | None) -> tuple[int, int]:
    """(fully pruned output channels, output channels); `groups` for a transposed conv."""
    if groups is None:  # Conv / Linear: (out, in / groups, ...)
        return int((~mask.reshape(mask.shape[0], -1).any(dim=1)).sum()), mask.shape[0]
    # (in, out / groups, ...): output channel g * (out / groups) + j reads the in / groups
    # inputs of group g through column j
    m = mask.reshape(groups, mask.shape[0] // groups, mask.shape[1], -1)
    kept = m.any(dim=3).any(dim=1)  # (groups, out / groups)
    return int((~kept).sum()), kept.numel()


def layer_stats(ticket, transposed=None) -> list[dict]:
    """One dict per tensor: name, shape, params, kept, sparsity, zero_kernels (conv:
    (out, in) kernels with no weight kept), zero_channels (output channels / linear
    rows with no weight kept), out_channels (0 for 1-D tensors, e.g. biases: they have
    no channels to prune). `transposed`: the model (or the names of its ConvTranspose
    weights, whose output channels are dim 1); default: torchvision's detector names."""
    tr = _transposed(transposed)
    out = []
    for r in ticket.report():
        mask = ticket[r["name"]]
        zero_ch, out_ch = 0, 0
        if mask.dim() >= 2:
            if mask.numel():
                zero_ch, out_ch = _zero_out_channels(mask, tr.get(r["name"]) if mask.dim() > 2
                                                     else None)
            else:
                out_ch = mask.shape[1] * tr[r["name"]] if r["name"] in tr else mask.shape[0]
        out.append({"name": r["name"], "shape": "×".join(map(str, r["shape"])),
                    "params": r["params"], "kept": r["kept"], "sparsity": r["sparsity"],
                    "zero_kernels": r["zero_slices"] if r["slice_kind"] == "kernels" else 0,
                    "zero_channels": zero_ch, "out_channels": out_ch})
    return out


def summary(stats: list[dict]) -> dict:
    params = sum(d["params"] for d in stats)
    kept = sum(d["kept"] for d in stats)
    return {"layers": len(stats), "params": params, "kept": kept,
            "sparsity": 1 - kept / params if params else 0.0,
            "zero_kernels": sum(d["zero_kernels"] for d in stats),
            "zero_channels": sum(d["zero_channels"] for d in stats),
            "fully_pruned_layers": sum(1 for d in stats if d["params"] and not d["kept"])}


@literal_text
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
