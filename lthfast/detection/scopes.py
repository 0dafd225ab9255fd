"""Named prune scopes and presets for torchvision detection models.

A *scope* is a part of the model by parameter-name prefix (`backbone` = `backbone.body`,
`fpn`, `rpn`, `roi_heads` and its `box_head` / `mask_head` / `keypoint_head`, `head` of
RetinaNet/FCOS, `all`); scopes combine with `+` (e.g. `"fpn+rpn"`). A *preset* is a scope
with exclusions that reproduces a study's choice (`paper`, `backbone`, `all`).
`prunable_names(model, scope_or_preset)` returns the `weight` names of the Conv2d,
ConvTranspose2d and Linear layers it selects, in model order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

#: scope name -> parameter-name prefixes ("" matches everything).
SCOPES: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.body.",),
    "fpn": ("backbone.fpn.",),
    "rpn": ("rpn.",),
    "roi_heads": ("roi_heads.",),
    "box_head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
    "mask_head": ("roi_heads.mask_head.", "roi_heads.mask_predictor."),
    "keypoint_head": ("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor."),
    "head": ("head.",),
    "all": ("",),
}

#: Coarse scopes for per-scope sparsity (`scope_of`), most specific prefix first.
_COARSE = (("backbone.body.", "backbone"), ("backbone.fpn.", "fpn"), ("rpn.", "rpn"),
           ("roi_heads.", "roi_heads"), ("head.", "head"))

# Final predictors: the layers that output class scores, box deltas, mask logits, keypoint heatmaps.
_PREDICTOR_PREFIXES = (
    "rpn.head.cls_logits.", "rpn.head.bbox_pred.",
    "roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.",
    "roi_heads.keypoint_predictor.",
    "head.classification_head.cls_logits.", "head.regression_head.bbox_reg.",
    "head.regression_head.bbox_ctrness.",
)


def _is_shortcut(name: str) -> bool:
    return ".downsample." in name


@dataclass(frozen=True)
class Preset:
    description: str
    scope: str
    #: (name, names of the scope in model order) -> excluded?
    exclude: Callable[[str, list], bool] = lambda name, names: False


def _paper_exclude(name: str, names: list) -> bool:
    first_body = next((n for n in names if n.startswith("backbone.body.")), None)
    return name == first_body or _is_shortcut(name) or name.startswith(_PREDICTOR_PREFIXES)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "LTH for object recognition (Girish et al., CVPR 2021): every conv/linear weight except "
        "the first conv of the backbone, the shortcut (downsample) convs, the RPN objectness "
        "and box-delta layers and the final predictors (box, mask logits, keypoint logits; "
        "cls_logits/bbox_reg/bbox_ctrness for RetinaNet/FCOS)", "all", _paper_exclude),
    "backbone": Preset(
        "LTH for supervised and self-supervised pre-training (Chen et al., CVPR 2021): the "
        "backbone body only (all its conv layers); FPN and heads stay dense", "backbone"),
    "all": Preset("every conv/linear weight of the model", "all"),
}


def valid_scopes() -> list[str]:
    return sorted(set(SCOPES) | set(PRESETS))


def _layer_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None]


def _select(names: list[str], scope: str) -> list[str]:
    prefixes = ()
    for part in scope.split("+"):
        part = part.strip()
        if part in PRESETS and part not in SCOPES:  # (alone it is fine: callers look it up first)
            raise ValueError(f"prune scope {scope!r}: {part!r} is a preset, which cannot be combined "
                             f"with '+'; combine the scopes {', '.join(SCOPES)} (e.g. 'fpn+rpn')")
        if part not in SCOPES:
            raise ValueError(f"unknown prune scope {part!r}; valid scopes and presets: "
                             f"{', '.join(valid_scopes())} (scopes combine with '+', e.g. 'fpn+rpn')")
        prefixes += SCOPES[part]
    return [n for n in names if n.startswith(prefixes)]


def prunable_names(model: nn.Module, scope: str = "paper") -> list[str]:
    """Weight names (e.g. `backbone.body.layer1.0.conv1.weight`) of the Conv2d /
    ConvTranspose2d / Linear layers in `scope` (a scope, a `+`-union of scopes, or a preset),
    in model order. A scope (or a part of a union) that selects nothing in this model is an
    error."""
    if not isinstance(scope, str):
        raise TypeError(f"scope must be a string, got {type(scope).__name__}")
    scope = scope.strip()
    names = _layer_names(model)
    if scope in PRESETS:
        preset = PRESETS[scope]
        chosen = _select(names, preset.scope)
        chosen = [n for n in chosen if not preset.exclude(n, chosen)]
    else:
        chosen = _select(names, scope)
        # each part of a union too: `fpn+rpn` on a RetinaNet pruned the FPN alone, silently
        empty = [p.strip() for p in scope.split("+") if chosen and not _select(names, p.strip())]
        if empty:
            present = [s for s in SCOPES if _select(names, s)]
            raise ValueError(f"prune scope {scope!r}: {', '.join(map(repr, empty))} selects no "
                             f"conv/linear layer of this {type(model).__name__}; scopes it has: "
                             f"{', '.join(present)}")
    if not chosen:
        present = [s for s in SCOPES if _select(names, s)]
        raise ValueError(f"prune scope {scope!r} selects no conv/linear layer of this "
                         f"{type(model).__name__}; scopes it has: {', '.join(present)}")
    return chosen


def scope_of(param_name: str) -> str:
    """Coarse part of a parameter name: backbone, fpn, rpn, roi_heads, head (RetinaNet/FCOS)
    or other."""
    for prefix, scope in _COARSE:
        if param_name.startswith(prefix):
            return scope
    return "other"


def describe(scope: str) -> str:
    """One line that says what `scope` (a scope or preset) selects."""
    scope = scope.strip()
    if scope in PRESETS:
        return PRESETS[scope].description
    _select([], scope)  # validates the name(s)
    return "layers under " + ", ".join(p or "<everything>" for s in scope.split("+") for p in SCOPES[s.strip()])
