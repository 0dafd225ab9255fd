"""`lthfast prune`: global magnitude pruning of a torchvision model or a checkpoint."""
from __future__ import annotations

import argparse
import math
import os
import time

from lthfast.cli._common import (CLIError, atomic_write, check_writable_target, eprint,
                                 format_table, human_bytes, human_count, int_at_least,
                                 resolve_device, step)

_DESCRIPTION = """\
Prunes the weights of every convolution (1-D, 2-D, 3-D, transposed) and Linear layer of
MODEL with one global magnitude threshold (lthfast.prune.global_unstructured with
L1Unstructured, the drop-in for torch.nn.utils.prune), makes the pruning permanent
(prune.remove), and prints the sparsity of every layer (of the saved weights: zeros of an
earlier pruning count), the overall sparsity and the time of the pruning step.

MODEL is a torchvision model name (classification, detection, segmentation, video, ...;
built with random init: weights=None, weights_backbone=None) or a checkpoint written by
torch.save: a state_dict (pass --arch NAME) or a pickled full module (pass --trust-pickle).
Biases and normalization layers are not pruned. --amount is a fraction of all the pruned
layers' weights; entries that are already zero count as weights and go first (pruning
hooks a pickled module carries are made permanent first, and a state_dict of a model pruned
with torch.nn.utils.prune (NAME_orig, NAME_mask) is read as NAME = NAME_orig * NAME_mask,
so their pruned entries are such zeros). A weight tied between layers is pruned and counted once."""

_EPILOG = """\
examples:
  lthfast prune resnet50 --amount 0.8
  lthfast prune fasterrcnn_resnet50_fpn --amount 0.2 --device cuda --save frcnn_p20.pth
  lthfast prune resnet50 --weights resnet50.pth --amount 0.5 --save resnet50_p50.pth
  lthfast prune ckpt.pth --arch keypointrcnn_resnet50_fpn --amount 0.2 --no-table
  lthfast prune model.pt --trust-pickle --amount 0.9 --layerwise
  lthfast prune --list-models

reload a saved result:
  model = torchvision.models.get_model("resnet50", weights=None)
  model.load_state_dict(torch.load("resnet50_p50.pth"))"""


def amount_arg(text: str) -> float:
    """argparse type for --amount: a fraction in [0, 1]."""
    hint = "give the fraction of weights to prune, between 0 and 1 (e.g. 0.8 prunes 80%)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid amount {text!r}: {hint}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        # 80 for 80%; not 1.5 (a fraction over 1, not a percentage)
        extra = f"; did you mean {value / 100:g}?" if 2.0 <= value <= 100.0 else ""
        raise argparse.ArgumentTypeError(f"amount {text} is out of range: {hint}{extra}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="globally magnitude-prune a model and show per-layer sparsity",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="torchvision model name (see --list-models) or checkpoint path")
    p.add_argument("--model", dest="model_flag", metavar="NAME",
                   help="the same as MODEL (as in `lthfast imp --model NAME`)")
    p.add_argument("--amount", type=amount_arg, metavar="FRACTION",
                   help="fraction of the Conv/Linear weights to prune, in [0, 1] (required)")
    p.add_argument("--arch", metavar="NAME",
                   help="torchvision architecture of a state_dict checkpoint given as MODEL")
    p.add_argument("--weights", metavar="PATH",
                   help="state_dict to load into the named MODEL before pruning")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled full module (unpickling runs code from the "
                        "file: only for files you trust)")
    p.add_argument("--save", metavar="PATH",
                   help="write the pruned state_dict here (atomically: never a partial file)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to prune (default: cpu)")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--layerwise", action="store_true",
                   help="prune --amount of each layer separately (l1_unstructured) instead of "
                        "one global threshold")
    p.add_argument("--no-table", action="store_true", help="print only the summary, not every layer")
    p.add_argument("--list-models", action="store_true",
                   help="list the torchvision model names MODEL accepts and exit")
    p.set_defaults(func=run)


def _list_models() -> int:
    from lthfast.cli._models import detection_model_names, model_names
    detection = set(detection_model_names())
    for name in model_names():
        print(f"{name}  (detection)" if name in detection else name)
    return 0


def _check_args(args) -> None:
    if args.model_flag is not None:
        if args.model is not None and args.model != args.model_flag:
            raise CLIError(f"MODEL {args.model!r} and --model {args.model_flag!r} disagree; "
                           "give one of them", code=2)
        args.model = args.model_flag
    if args.model is None:
        raise CLIError("MODEL is required (a torchvision model name or a checkpoint path); "
                       "see `lthfast prune --help`", code=2)
    if args.amount is None:
        raise CLIError("--amount is required, e.g. --amount 0.8 to prune 80% of the weights", code=2)
    from lthfast.cli._models import check_model_flags
    check_model_flags(args.model, arch=args.arch, weights=getattr(args, "weights", None))
    if args.save is not None:
        check_writable_target(args.save, "--save")
        for src in (args.model, getattr(args, "weights", None)):
            if (src and os.path.isfile(src) and os.path.exists(args.save)
                    and os.path.samefile(args.save, src)):
                raise CLIError(f"--save {args.save!r} is the checkpoint being pruned; give "
                               "another file (the input is never overwritten)", code=2)


def _remove_earlier_pruning(model, prune) -> int:
    """Makes the pruning hooks a checkpoint carries (a pickled module pruned with
    torch.nn.utils.prune or lthfast.prune) permanent, so --amount is a fraction of all the
    weights (their pruned entries are zeros, which go first) and the saved state_dict has
    plain keys; returns how many tensors had hooks."""
    from lthfast.prune._state import is_pruning_hook
    n = 0
    for module in model.modules():
        for hook in [h for h in module._forward_pre_hooks.values() if is_pruning_hook(h)]:
            prune.remove(module, hook._tensor_name)
            n += 1
    return n


def _unique_weights(layers):
    """``layers`` with each weight tensor once (a weight tied between two layers is pruned
    and counted once, under its first layer), and the (dropped, kept) layer-name pairs."""
    first, unique, shared = {}, [], []
    for name, m in layers:
        key = id(m.weight)
        if key in first:
            shared.append((name, first[key]))
        else:
            first[key] = name
            unique.append((name, m))
    return unique, shared


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> int:
    if args.list_models:
        return _list_models()
    _check_args(args)
    from lthfast import _ops
    if not _ops.available() and not _ops.use_reference():  # said now, not after loading
        raise CLIError(_ops.BUILD_HINT.format(err=_ops._IMPORT_ERROR))
    if _ops.use_reference():
        eprint("note: the compiled extension is not built; lthfast runs the pure-PyTorch "
               "reference (LTHFAST_REFERENCE=1), so the pruning time is not the kernels'")
    import torch
    if args.threads is not None:  # main() restores the caller's count afterwards
        torch.set_num_threads(args.threads)
    from lthfast.cli._models import prunable_layers, resolve_model
    try:
        import lthfast.prune as prune
    except ImportError as e:
        raise CLIError(f"lthfast.prune is not available ({e})") from None
    needed = ("l1_unstructured",) if args.layerwise else ("global_unstructured", "L1Unstructured")
    lacking = [n for n in (*needed, "remove") if not hasattr(prune, n)]
    if lacking:
        raise CLIError(f"lthfast.prune lacks {', '.join(lacking)} (is it fully installed?)")

    device = resolve_device(args.device)

    with step(f"loading {args.model}"):
        model, source = resolve_model(args.model, arch=args.arch, weights=args.weights,
                                      trust_pickle=args.trust_pickle)
        model.to(device)
    permanent = _remove_earlier_pruning(model, prune)
    if permanent:
        eprint(f"note: {source} carried pruning hooks on {permanent} tensors; made them "
               "permanent first (prune.remove), so their pruned weights are zeros that count "
               "in --amount")
    layers, shared = _unique_weights(prunable_layers(model))
    if not layers:
        raise CLIError(f"{source} has no convolution or Linear layers to prune")
    if shared:
        eprint("note: " + "; ".join(f"{a} shares its weight with {b}" for a, b in shared)
               + ": each shared weight is pruned and counted once")
    n_weights = sum(m.weight.numel() for _, m in layers)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for _, m in layers)

    how = "layer by layer" if args.layerwise else "globally"
    eprint(f"pruning {args.amount:g} of {human_count(n_weights)} weights in {len(layers)} layers "
           f"({human_bytes(weight_bytes)}) of {source} {how} on {device} ...", end="")
    _sync(device)
    t0 = time.perf_counter()
    if args.layerwise:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=args.amount)
    else:
        prune.global_unstructured([(m, "weight") for _, m in layers],
                                  pruning_method=prune.L1Unstructured, amount=args.amount)
    _sync(device)
    seconds = time.perf_counter() - t0
    eprint(f" done ({seconds * 1e3:.1f} ms)")

    rows, kept_total = [], 0
    for name, m in layers:
        prune.remove(m, "weight")
        # what the saved model keeps: weights that were 0 already (a checkpoint pruned
        # before) count as pruned, not as kept by this run's mask
        kept = int(m.weight.count_nonzero())
        kept_total += kept
        n = m.weight.numel()
        rows.append([name, "x".join(map(str, m.weight.shape)), n, kept, f"{100 * (1 - kept / n):.2f}%"])

    sparsity = 1 - kept_total / n_weights
    if args.save:  # before the tables: stdout closed early (`| head`) must not lose the file
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with step(f"saving pruned state_dict to {args.save}"):
            atomic_write(args.save, lambda tmp: torch.save(state, tmp))
    if not args.no_table:
        rows.append(["total", "", n_weights, kept_total, f"{100 * sparsity:.2f}%"])
        print(format_table(["layer", "shape", "params", "kept", "sparsity"], rows, align="llrrr"))
        print()
    n_all = sum(p.numel() for p in model.parameters())
    print(f"model:            {source}")
    print(f"pruned layers:    {len(layers)} convolution / Linear, "
          f"{n_weights:,} weights ({human_bytes(weight_bytes)})")
    print(f"overall sparsity: {100 * sparsity:.2f}% of the pruned layers' weights "
          f"({n_weights - kept_total:,} pruned, {kept_total:,} kept); "
          f"{100 * (n_weights - kept_total) / n_all:.2f}% of all {n_all:,} parameters")
    print(f"pruning time:     {seconds * 1e3:.1f} ms ({how}, {device}, "
          f"lthfast.prune.{'l1_unstructured' if args.layerwise else 'global_unstructured'})")
    collapsed = [r[0] for r in rows if r[0] != "total" and r[3] == 0]
    if collapsed:
        eprint(f"warning: every weight of {', '.join(collapsed)} is pruned (layer collapse: "
               "nothing flows through it); "
               + ("a lower --amount avoids that" if args.layerwise
                  else "--layerwise or a lower --amount avoids that"))
    return 0
