"""Pre-trained weights from local files (or a torchvision download where there is network):
a detection checkpoint onto the whole model, or an ImageNet classifier onto `backbone.body`."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

_NO_NETWORK_HINT = ("no network to download it: download the file on a machine that has one "
                    "and pass the local file (--weights PATH for a detection checkpoint, "
                    "--backbone-weights PATH for an ImageNet classifier state_dict)")


class WeightsError(ValueError):
    """A weights argument that cannot be used (missing file, no network, wrong content)."""


@dataclass
class LoadReport:
    source: str
    target: str  # "model" or "backbone.body"
    loaded: list = field(default_factory=list)
    reinitialised: list = field(default_factory=list)  # shape differs: kept fresh init
    missing: list = field(default_factory=list)  # model keys the file does not have
    unmapped: list = field(default_factory=list)  # file keys with no place in the model

    def summary(self) -> str:
        lines = [f"weights {self.source} -> {self.target}: {len(self.loaded)} tensors loaded"]
        for label, keys in (("re-initialised (shape differs)", self.reinitialised),
                            ("not in the file (fresh init)", self.missing),
                            ("unmapped keys of the file", self.unmapped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {label}: {shown}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("source", "target", "loaded", "reinitialised", "missing", "unmapped")}


def _download(spec: str, name: str, backbone: bool) -> dict:
    """State dict of the torchvision weights named `spec` ("DEFAULT", "COCO_V1", or
    "Enum.NAME") for model `name` (or its backbone)."""
    import torchvision
    from torchvision.models import get_model_weights
    try:
        if "." in spec:
            enum = torchvision.models.get_weight(spec)
        else:
            if backbone:  # fasterrcnn_resnet50_fpn_v2 -> resnet50, ..._mobilenet_v3_large_320_fpn -> mobilenet_v3_large
                arch = re.sub(r"(_320)?_fpn(_v2)?$", "", name.split("_", 1)[1])
                enums = get_model_weights(arch)
            else:
                enums = get_model_weights(name)
            enum = enums[spec] if spec != "DEFAULT" else enums.DEFAULT
    except (KeyError, ValueError, AttributeError, IndexError):
        raise WeightsError(f"{spec!r} is neither an existing file nor a torchvision weights name for "
                           f"{name}{' backbone' if backbone else ''}") from None
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise WeightsError(f"cannot download torchvision weights {enum} ({type(e).__name__}: {e}); "
                           + _NO_NETWORK_HINT) from None


def read_state_dict(spec, *, name: str, backbone: bool) -> tuple[dict, str]:
    if isinstance(spec, dict):  # what torch.load gave: unwrapped as a file is
        return _unwrap(spec, "<state_dict>"), "<state_dict>"
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"weights must be a file path, a state_dict or a torchvision weights name, "
                        f"got {type(spec).__name__}")
    path = os.fspath(spec)
    if not os.path.exists(path):
        looks_like_path = os.sep in path or path.endswith((".pt", ".pth", ".ckpt", ".bin", ".tar"))
        if looks_like_path:
            flag = "--backbone-weights" if backbone else "--weights"
            raise WeightsError(f"weights file {path} ({flag}) does not exist")
        return _download(path, name, backbone), path
    try:
        # torchvision's reference scripts save their argparse.Namespace ("args") next to
        # "model": a plain record, safe to let the weights-only unpickler build
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        # torch's own message is a page long and suggests weights_only=False: keep its gist
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
        detail = detail[0] if detail else ""
        raise WeightsError(f"cannot read weights file {path}: not a state_dict saved with "
                           f"torch.save ({type(e).__name__}: {detail[:200]})") from None
    return _unwrap(obj, path), path


def _unwrap(obj, where: str) -> dict:
    """The state_dict in a checkpoint ({'model' | 'state_dict' | 'model_state_dict': sd}),
    with DDP's 'module.' prefix removed."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{where} is not a state_dict (a dict of tensors, or one under 'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _apply(model: nn.Module, mapped: dict, report: LoadReport, prefix: str = "") -> LoadReport:
    own = model.state_dict()
    ok = {}
    for k, v in mapped.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            report.reinitialised.append(k)
        else:
            ok[k] = v
    model.load_state_dict(ok, strict=False)
    report.loaded = sorted(ok)
    report.missing = [k for k in own if k.startswith(prefix) and k not in mapped
                      and not k.endswith("num_batches_tracked")]
    return report


def load_detection_weights(model: nn.Module, spec, *, name: str, source: str | None = None) -> LoadReport:
    """Load a torchvision detection checkpoint (path, weights name or state_dict); tensors
    whose shape differs (heads for another number of classes) keep their fresh init and are
    reported."""
    sd, src = read_state_dict(spec, name=name, backbone=False)
    src = source or src
    own = model.state_dict()
    report = LoadReport(src, "model")
    report.unmapped = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    if not any(k in own and own[k].shape == v.shape for k, v in sd.items()):
        # loading nothing would train from scratch with the layers frozen for pre-trained
        # weights left at their random init
        roots = sorted({k.split(".")[0] for k in sd})[:6]
        hint = ("; it looks like an ImageNet classifier: pass it as --backbone-weights"
                if any(k.startswith(("conv1.", "layer1.", "features.")) for k in sd) else "")
        raise WeightsError(f"no tensor of {src} fits {name} (file keys start with {roots}, the "
                           f"model's with {sorted({k.split('.')[0] for k in own})[:6]}): it is not "
                           f"a detection checkpoint of this model{hint}")
    return _apply(model, sd, report)


def load_backbone_weights(model: nn.Module, spec, *, name: str, source: str | None = None) -> LoadReport:
    """Map an ImageNet classifier state_dict onto `backbone.body.*`: `conv1.weight` ->
    `backbone.body.conv1.weight`; `features.0.0.weight` (MobileNet) -> `backbone.body.0.0.weight`.
    Keys with no place in the body (the classifier `fc.*`) are reported as unmapped."""
    sd, src = read_state_dict(spec, name=name, backbone=True)
    src = source or src
    own = model.state_dict()
    report = LoadReport(src, "backbone.body")
    mapped = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        cands = ["backbone.body." + k]
        if "." in k:
            cands.append("backbone.body." + k.split(".", 1)[1])
        dest = next((c for c in cands if c in own), None)
        if dest is None:
            report.unmapped.append(k)
        else:
            mapped[dest] = v
    if not mapped:
        raise WeightsError(f"no key of {src} maps onto backbone.body of {name} "
                           f"(file keys start with {sorted({k.split('.')[0] for k in sd})[:6]}); "
                           "is it a classifier of the same architecture?")
    return _apply(model, mapped, report, prefix="backbone.body.")
