"""Ticket transfer: put a ticket found on one model onto another.

- classifier -> detector: a ticket of an ImageNet-style torchvision classifier
  (`resnet18` / `resnet50` names: conv1.weight, layer1.0.conv1.weight, ..., fc.weight)
  goes onto a detection model's backbone (`backbone.body.<name>`). Shapes must match
  (else ValueError listing every mismatch); layers with no counterpart (fc) are reported.
- cross-task (detection / segmentation / keypoints, or any two models with common
  names): the layers both models have with the same shape are transferred; the others
  (task heads, predictors of another class count) are reported and left dense.

The result covers the target's `names` (the pruned set): transferred masks where there
are some, dense elsewhere, so IMP can train it with the mask fixed and optionally prune
further (`lthfast imp --ticket PATH`). Sparsity is reported for the backbone and for the
whole network (every parameter of the model), since studies compare at equal network
sparsity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

BACKBONE_PREFIX = "backbone.body."


@dataclass
class Transfer:
    ticket: object
    kind: str  # "classifier->backbone" or "shared layers"
    mapping: dict = field(default_factory=dict)       # source name -> target name
    unmapped_source: list = field(default_factory=list)
    shape_mismatch: list = field(default_factory=list)  # skipped (cross-task only)
    uncovered_target: list = field(default_factory=list)  # target pruned layers left dense
    sparsity: dict = field(default_factory=dict)

    def summary(self) -> str:
        s = self.sparsity
        bb = s["backbone"]
        bb = f"backbone {100 * bb:.2f}% of its parameters, " if bb == bb else ""
        lines = [f"ticket transfer ({self.kind}): {len(self.mapping)} layers mapped",
                 f"  sparsity: transferred layers {100 * s['transferred']:.2f}%, {bb}whole "
                 f"network {100 * s['network']:.2f}% of all parameters"]
        if self.unmapped_source:
            lines.append(f"  not transferred (no such layer in the target): {self.unmapped_source}")
        if self.shape_mismatch:
            lines.append(f"  not transferred (shape differs): {self.shape_mismatch}")
        if self.uncovered_target:
            lines.append(f"  target layers without a transferred mask (start dense): "
                         f"{len(self.uncovered_target)} ({_short(self.uncovered_target)})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mapping": self.mapping, "unmapped_source": self.unmapped_source,
                "shape_mismatch": self.shape_mismatch, "uncovered_target": self.uncovered_target,
                "sparsity": self.sparsity}


def _short(names: list, n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _strip(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def classifier_name_to_backbone(name: str) -> str:
    """conv1.weight -> backbone.body.conv1.weight (torchvision ResNet names)."""
    return BACKBONE_PREFIX + _strip(name)


def _backbone_target(name: str, params) -> str:
    """Target of classifier layer `name`: `backbone.body.<name>`, else (if the model has it)
    `backbone.body.<name minus its first part>`: a MobileNet classifier's body is `features.*`
    while the detector's body is that Sequential itself (`backbone.body.0.0.weight`), the same
    rule `--backbone-weights` uses, so a ticket maps wherever the weights do."""
    dst = classifier_name_to_backbone(name)
    rest = _strip(name).split(".", 1)
    if dst not in params and len(rest) == 2 and BACKBONE_PREFIX + rest[1] in params:
        return BACKBONE_PREFIX + rest[1]
    return dst


def detect_kind(ticket, model: nn.Module) -> str:
    names = [_strip(n) for n in ticket.names()]
    params = dict(model.named_parameters())
    has_body = any(n.startswith(BACKBONE_PREFIX) for n in params)
    # a ticket naming the model's own layers shares them (a detector ticket of the RPN or
    # ROI heads alone has no backbone.* name, and was taken for a classifier's)
    if has_body and not any(n.startswith("backbone.") or n in params for n in names):
        return "classifier->backbone"
    return "shared layers"


def network_sparsity(ticket, model: nn.Module, transferred=None) -> dict:
    """Pruned fraction of: the transferred layers (`transferred`, names in `model`; default:
    all the ticket's layers), the backbone body's parameters (`backbone.body.*`, as the
    `backbone` scope and the sparsity_backbone column: not the FPN) and all the model's
    parameters (weights, biases, norms: every nn.Parameter)."""
    params = dict(model.named_parameters())
    pruned = {n: ticket.numel(n) - ticket.kept(n) for n in ticket.names() if n in params}
    total = sum(p.numel() for p in params.values())
    bb = [n for n in params if n.startswith(BACKBONE_PREFIX)]
    bb_total = sum(params[n].numel() for n in bb)
    moved = [n for n in (ticket.names() if transferred is None else transferred) if n in pruned]
    moved_total = sum(ticket.numel(n) for n in moved)
    return {"transferred": sum(pruned[n] for n in moved) / moved_total if moved_total else 0.0,
            "backbone": (sum(v for n, v in pruned.items() if n.startswith(BACKBONE_PREFIX))
                         / bb_total) if bb_total else float("nan"),
            "network": sum(pruned.values()) / total if total else 0.0}


def transfer_ticket(ticket, model: nn.Module, *, names=None, kind: str = "auto") -> Transfer:
    """Maps `ticket` (a Ticket or a path) onto `model`; see the module docstring.

    `names`: the target's pruned set (default: the transferred layers only); the
    returned ticket covers `names` plus every transferred layer, in model order.
    `kind`: "auto", "classifier->backbone" or "shared layers"."""
    from lthfast.ticket import Ticket
    if isinstance(ticket, (str, os.PathLike)):
        ticket = Ticket.load(ticket)
    if kind == "auto":
        kind = detect_kind(ticket, model)
    if kind not in ("classifier->backbone", "shared layers"):
        raise ValueError(f"kind={kind!r}: use auto, classifier->backbone or shared layers")
    params = dict(model.named_parameters())
    mapping, unmapped, mismatch = {}, [], []
    for src in ticket.names():
        dst = _backbone_target(src, params) if kind == "classifier->backbone" else _strip(src)
        p = params.get(dst)
        if p is None:
            unmapped.append(src)
        elif tuple(p.shape) != ticket.shapes[src]:
            mismatch.append(f"{src} -> {dst}: ticket {ticket.shapes[src]}, model {tuple(p.shape)}")
        else:
            mapping[src] = dst
    if kind == "classifier->backbone" and mismatch:
        raise ValueError(f"the classifier ticket does not match the target's backbone "
                         f"({type(model).__name__}); shape mismatch in {len(mismatch)} layers: "
                         f"{'; '.join(mismatch[:4])}"
                         f"{f' and {len(mismatch) - 4} more' if len(mismatch) > 4 else ''} "
                         "(was the ticket found on another architecture?)")
    if not mapping:
        raise ValueError(f"no layer of the ticket matches the target model "
                         f"({type(model).__name__}): ticket layers {_short(ticket.names(), 6)} "
                         f"({kind}); model layers e.g. {_short([n for n in params if n.endswith('weight')], 6)}")
    names = list(names) if names is not None else []
    bad = [n for n in names if n not in params]
    if bad:
        raise ValueError(f"pruned-set names not in the target model: {bad}")
    covered = set(mapping.values())
    order = [n for n in params if n in covered or n in set(names)]
    masks = {}
    by_dst = {d: s for s, d in mapping.items()}
    for n in order:
        masks[n] = (ticket[by_dst[n]].to(params[n].device) if n in by_dst
                    else torch.ones(params[n].shape, dtype=torch.bool, device=params[n].device))
    meta = dict(ticket.meta)
    meta["transferred_from"] = {"kind": kind, "layers": len(mapping), "round": ticket.round}
    out = Ticket(masks, round=0, meta=meta, layerwise=ticket.layerwise)
    t = Transfer(ticket=out, kind=kind, mapping=mapping, unmapped_source=unmapped,
                 shape_mismatch=mismatch, uncovered_target=[n for n in names if n not in covered])
    # (the target's own layers in the pruned set start dense: not part of "transferred")
    t.sparsity = network_sparsity(out, model, transferred=mapping.values())
    return t


def with_network_sparsity(eval_fn, model: nn.Module):
    """`eval_fn` that also returns sparsity_network (pruned / all model parameters)."""
    def fn(m, ctx):
        res = eval_fn(m, ctx)
        if isinstance(res, dict) and getattr(ctx, "ticket", None) is not None:
            res = dict(res)
            res["sparsity_network"] = network_sparsity(ctx.ticket, model)["network"]
        return res
    return fn


def transfer_for_job(path, model: nn.Module, names: list, describe: str):
    """`lthfast imp --ticket PATH`: (names, initial ticket, config meta, description)."""
    if not path:
        return names, None, {}, describe
    import os
    if not os.path.exists(path):
        raise FileNotFoundError(f"--ticket {path}: no such file")
    t = transfer_ticket(path, model, names=names)
    meta = {"ticket_source": os.path.abspath(path), "transfer": t.to_dict()}
    n_scope, names = len(names), t.ticket.names()
    describe += "\n" + t.summary()
    if len(names) != n_scope:  # the header above counted the scope alone
        describe += (f"\n  pruned set: {len(names)} weight tensors, not the scope's {n_scope}: "
                     "the ticket's layers outside the scope are pruned too (see pruned_params.txt)")
    return names, t.ticket, meta, describe
