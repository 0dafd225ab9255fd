"""Layer-wise vs global magnitude pruning at the same sparsity: how differently the
two spread the pruning over the layers, and how much their kept weights overlap."""
from __future__ import annotations

from lthfast.analysis._plot import literal_text, plt, png


def _weights(source, names):
    if hasattr(source, "named_parameters"):
        params = dict(source.named_parameters())
    else:
        params = dict(source)
    names = list(names) if names is not None else [n for n, p in params.items() if p.dim() > 1]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"weights not found: {missing}")
    if not names:
        raise ValueError("no weights to prune")
    return names, [params[n].detach().float().cpu() for n in names]


def masks_at(source, sparsity: float, names=None):
    """(global ticket, layer-wise ticket) pruning `sparsity` of the weights `names` of
    `source` (an nn.Module or a {name: tensor} state dict, e.g. a run's checkpoint)."""
    from lthfast.magnitude import global_magnitude_masks
    from lthfast.ticket import Ticket
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    names, tensors = _weights(source, names)
    glob = global_magnitude_masks(tensors, float(sparsity))
    lw = [global_magnitude_masks([t], float(sparsity))[0] for t in tensors]
    return (Ticket(dict(zip(names, glob)), round=1, meta={"pruning": "global"}),
            Ticket(dict(zip(names, lw)), round=1, meta={"pruning": "layerwise"}, layerwise=True))


def layerwise_vs_global(source, sparsity: float, names=None) -> dict:
    """Both masks at `sparsity` from the same weights: {"sparsity", "iou" (overall),
    "layers": [{name, params, sparsity_global, sparsity_layerwise, iou}]}."""
    g, lw = masks_at(source, sparsity, names)
    iou = g.iou(lw)
    layers = [{"name": n, "params": g.numel(n), "sparsity_global": g.sparsity(n),
               "sparsity_layerwise": lw.sparsity(n), "iou": iou["by_name"][n]} for n in g.names()]
    return {"sparsity": sparsity, "iou": iou["overall"], "layers": layers,
            "global_sparsity": g.sparsity(), "layerwise_sparsity": lw.sparsity()}


def compare_tickets(global_ticket, layerwise_ticket) -> dict:
    """The same comparison for two tickets already found (e.g. two IMP runs, one with
    --layerwise); their overall sparsities should match (reported, not enforced)."""
    iou = global_ticket.iou(layerwise_ticket)
    layers = [{"name": n, "params": global_ticket.numel(n),
               "sparsity_global": global_ticket.sparsity(n),
               "sparsity_layerwise": layerwise_ticket.sparsity(n), "iou": iou["by_name"][n]}
              for n in global_ticket.names()]
    return {"sparsity": global_ticket.sparsity(), "iou": iou["overall"], "layers": layers,
            "global_sparsity": global_ticket.sparsity(),
            "layerwise_sparsity": layerwise_ticket.sparsity()}


@literal_text
def plot_layerwise_vs_global(res: dict, title: str | None = None) -> str | None:
    layers = res["layers"]
    if not layers:
        return None
    p = plt()
    fig, ax = p.subplots(figsize=(max(7.0, 0.16 * len(layers) + 2.5), 3.8))
    xs = range(len(layers))
    ax.plot(xs, [100 * d["sparsity_global"] for d in layers], "o-", label="global (one threshold)")
    ax.plot(xs, [100 * d["sparsity_layerwise"] for d in layers], "s--", label="layer-wise")
    ax.bar(xs, [100 * d["iou"] for d in layers], color="tab:green", alpha=0.3,
           label="IoU of kept weights (%)")
    ax.set_xlabel("layer index (model order; see the table)")
    ax.set_ylabel("pruned (%) / IoU (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title or f"layer-wise vs global pruning at {100 * res['sparsity']:.1f}% sparsity "
                          f"(overall IoU {res['iou']:.3f})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.tight_layout()
    return png(fig)
