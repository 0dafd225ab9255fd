"""Models for the commands and benchmarks: torchvision models by name (random
init), checkpoints (state_dict or pickled module), and the layers that get pruned."""
from __future__ import annotations

import difflib
import inspect
import os
import pickle
import re

import torch
from torch import nn

from lthfast.cli._common import CLIError, eprint

#: Layer types whose `weight` is pruned by `lthfast prune` and the threshold benchmarks:
#: every convolution (1-D, 2-D, 3-D: the video models' too; transposed too) and Linear.
PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def _torchvision():
    try:
        import torchvision
    except ImportError as e:
        raise CLIError(f"torchvision is needed for model names ({e}); install it with "
                       "`pip install torchvision` (or `pip install lthfast[vision]`)") from None
    return torchvision


def model_names() -> list[str]:
    """Every torchvision model name `get_model` knows (classification, detection,
    segmentation, video, optical flow, ...), sorted."""
    return sorted(_torchvision().models.list_models())


def detection_model_names() -> list[str]:
    tv = _torchvision()
    return sorted(tv.models.list_models(module=tv.models.detection))


def unknown_model_error(name: str, flag: str | None = None) -> CLIError:
    """`flag`: the option that named it (--arch, --models), whose value can only be a
    torchvision model name; None: MODEL, which may also be a checkpoint file."""
    close = difflib.get_close_matches(name, model_names(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    what = (f"{flag} {name!r} is not a torchvision model name" if flag else
            f"unknown model {name!r}: it is neither a torchvision model name nor an existing "
            "checkpoint file")
    # a flag's value that can only be a name: a usage error (2), as argparse's choices
    return CLIError(f"{what}.{hint} Run `lthfast prune --list-models` to see the valid names.",
                    code=2 if flag else 1)


def build_model(name: str) -> nn.Module:
    """torchvision model `name` with random init (weights=None, and
    weights_backbone=None where the builder has a backbone)."""
    torchvision = _torchvision()
    if name not in set(torchvision.models.list_models()):
        raise unknown_model_error(name)
    builder = torchvision.models.get_model_builder(name)
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return builder(**kwargs)


def looks_like_path(model: str) -> bool:
    return model.endswith(_CHECKPOINT_SUFFIXES) or os.sep in model or "/" in model


def _unwrap_state_dict(obj):
    """A state_dict from the usual checkpoint containers ({'state_dict': ...},
    {'model': ...}), with a DistributedDataParallel 'module.' prefix removed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, (dict, nn.Module)):
                obj = inner
                break
    if isinstance(obj, nn.Module):
        return obj
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(
            f"the checkpoint holds a {type(obj).__name__} that is neither an nn.Module nor a "
            "state_dict (a dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return _fold_pruned(obj)


def _fold_pruned(state: dict) -> dict:
    """The state_dict of a model pruned with torch.nn.utils.prune / lthfast.prune (NAME_orig
    and NAME_mask per pruned tensor) as plain NAME = NAME_orig * NAME_mask: the pruned
    weights are zeros, which count in --amount (as a pickled module's hooks made permanent)."""
    folded = [k[:-len("_orig")] for k in state
              if k.endswith("_orig") and k[:-len("_orig")] + "_mask" in state]
    if not folded:
        return state
    out = dict(state)
    for f in folded:
        orig, mask = out.pop(f + "_orig"), out.pop(f + "_mask")
        out[f] = orig * mask
    eprint(f"note: the checkpoint holds {len(folded)} tensors pruned with torch.nn.utils.prune "
           "(NAME_orig, NAME_mask); read as NAME = NAME_orig * NAME_mask, so their pruned weights "
           "are zeros that count in --amount")
    return out


def _load_failure(e: Exception) -> str:
    """The line of a failed weights-only load that says why (torch's message opens with
    a paragraph of advice, ANSI bold included, and names the refused global further on)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    marker = "WeightsUnpickler error:"
    at = [i for i, ln in enumerate(lines) if marker in ln]
    if at:  # the reason follows the marker, on its line or the next
        i = at[0]
        text = lines[i].split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
        text = "weights-only load failed: " + (text.split(". ")[0].rstrip(".") or "unreadable")
    else:
        text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_checkpoint(path: str, *, trust_pickle: bool = False):
    """The nn.Module or state_dict in `path` (loaded on the CPU).

    Loads with `weights_only=True` first; a pickled full module needs
    `trust_pickle=True`, since unpickling runs code from the file."""
    if not os.path.isfile(path):
        raise CLIError(f"checkpoint {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if not trust_pickle:
            first = _load_failure(e)
            raise CLIError(
                f"cannot load {path!r} as plain weights ({first}). If it is a pickled full "
                "module (torch.save(model)) and you trust the file, pass --trust-pickle "
                "(unpickling runs code from the file); otherwise save a state_dict and pass "
                "--arch NAME.") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - reported to the user
            raise CLIError(f"cannot load checkpoint {path!r}: {type(e2).__name__}: {e2}") from None
    except (EOFError, KeyError, ValueError, OSError) as e:  # e.g. a text or empty file
        raise CLIError(f"cannot load checkpoint {path!r}: it is not a file torch.save wrote "
                       f"({type(e).__name__}: {str(e) or 'empty file'})") from None
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot load checkpoint {path!r}: {type(e).__name__}: {e}") from None
    return _unwrap_state_dict(obj)


def load_state_dict_into(model: nn.Module, state_dict: dict, source: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        missing, unexpected = _key_diff(model, state_dict)
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        msg = "; ".join(detail) if detail else str(e).strip().splitlines()[-1]
        raise CLIError(f"the weights in {source!r} do not fit this architecture: {msg}") from None


def _key_diff(model, state_dict):
    want = set(model.state_dict())
    have = set(state_dict)
    return sorted(want - have), sorted(have - want)


def _is_model_name(model: str) -> bool:
    return "/" not in model and os.sep not in model and model in set(model_names())


def check_model_flags(model: str, *, arch: str | None = None, weights: str | None = None) -> None:
    """The combinations of MODEL, --arch and --weights that cannot work: usage errors
    (exit 2), said before anything is loaded (a checkpoint may be large)."""
    is_name = _is_model_name(model)
    if arch is not None and is_name:
        raise CLIError("--arch goes with a checkpoint path as MODEL; here MODEL is a model name",
                       code=2)
    if arch is not None and arch not in set(model_names()):
        raise unknown_model_error(arch, "--arch")
    if weights is not None and not is_name and os.path.isfile(model):
        raise CLIError("--weights goes with a model name; MODEL is already a checkpoint path",
                       code=2)


def resolve_model(model: str, *, arch: str | None = None, weights: str | None = None,
                  trust_pickle: bool = False) -> tuple[nn.Module, str]:
    """The model the user named, and a short description of where it came from
    (check_model_flags has checked the flags)."""
    is_name = _is_model_name(model)
    if not is_name and not os.path.isfile(model):
        if looks_like_path(model) or os.path.exists(model):
            raise CLIError(f"checkpoint {model!r} does not exist or is not a file")
        raise unknown_model_error(model)
    if not is_name:
        obj = load_checkpoint(model, trust_pickle=trust_pickle)
        if isinstance(obj, nn.Module):
            if arch is not None:
                raise CLIError(f"{model!r} holds a full module; drop --arch {arch}", code=2)
            return obj, f"module from {model}"
        if arch is None:
            raise CLIError(
                f"{model!r} holds a state_dict: pass --arch NAME to say which torchvision "
                "architecture it belongs to (e.g. --arch resnet50)")
        net = build_model(arch)
        load_state_dict_into(net, obj, model)
        return net, f"{arch} with weights from {model}"
    net = build_model(model)
    if weights is None:
        return net, f"{model} (random init)"
    obj = load_checkpoint(weights, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    load_state_dict_into(net, obj, weights)
    return net, f"{model} with weights from {weights}"


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every convolution (Conv1d/2d/3d, transposed too) and Linear, in
    module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)]
