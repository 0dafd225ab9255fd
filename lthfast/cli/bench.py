"""`lthfast bench`: baselines and lthfast in the same run, a table of ratios, JSON."""
from __future__ import annotations

import argparse

from lthfast.cli._common import (CLIError, check_writable_target, eprint, int_at_least,
                                 resolve_device)

_DESCRIPTION = """\
Runs benchmark suites: each times the baseline (torch) and lthfast in the same run, on the
same inputs, and prints a table of ratios; --json also writes every timing with the machine
(CPU model, cores, GPU), torch version, lthfast build info and sizes.

suites:
  threshold  one IMP pruning step on the Conv/Linear weights of resnet50,
             fasterrcnn_resnet50_fpn and keypointrcnn_resnet50_fpn (CUDA: also
             wide_resnet101_2, 127M weights; --quick: resnet18) (random init): amount 0.2,
             then 0.2 of the remaining. torch.nn.utils.prune.global_unstructured vs
             lthfast.prune.global_unstructured vs lthfast.global_magnitude_masks vs
             torch.cat+kthvalue (+ torch.cat+topk and cupy on CUDA), and torch's pruned format
             alone (a float mask and w * mask per weight, no selection: the bound on any
             drop-in). Wall time (median), peak extra memory (CPU: resident set growth; CUDA:
             allocator peak), and time as a multiple of the bandwidth floor (2 x weight bytes /
             measured copy bandwidth).
  ticket     lthfast.Ticket save/load time and file size (vs torch.save/torch.load of float and
             bool masks) and bit pack/unpack throughput (vs numpy; CUDA: vs the torch
             reference; x bandwidth floor), on resnet50 and maskrcnn_resnet50_fpn masks at
             80% sparsity. --quick: resnet18.
  optim      one optimizer step on all parameters of resnet50 and maskrcnn_resnet50_fpn with
             the Conv/Linear weights 80% pruned: lthfast.optim.MaskedAdamW / MaskedSGD(momentum
             0.9) vs torch.optim AdamW / SGD (foreach, fused) with grad/weight *= mask around the
             step, and the dense foreach step; time as a multiple of the bandwidth floor (bytes
             the fused step moves / measured copy bandwidth). On CUDA the time per step of 10
             steps back to back (as in training). --quick: resnet18.
  conv       masked sparse convolution: lthfast.ops.masked_conv2d dense / sparse / auto /
             tuned vs F.conv2d(x, w * mask) for every distinct Conv2d shape of resnet50 at
             sparsity 0.5-0.98, batch 1 and 8 (GPU: 1, 8, 32), and resnet50 and
             fasterrcnn_resnet50_fpn eval end to end at 80% / 95%; the methods interleaved
             in balanced orders (each after each other one equally often, caches flushed
             between rounds), at least --repeat rounds and one whole set of orders per case,
             more while cheap, the minimum shown; auto / tuned against the better path, and
             an A/A control (the pre-masked call twice) for the 5% targets. --quick: end to
             end on resnet50 only (same shapes and sparsities). --models
             maskrcnn_resnet50_fpn (not with --quick) adds the conv shapes of its FPN and
             heads, --models fasterrcnn_resnet50_fpn every conv of that detector at the 800
             px it runs at (batch 1); no other --models.
  train_step one full training step (forward + backward + SGD momentum 0.9) of resnet18 (CPU,
             batch 16 x 112 px) / resnet50 (GPU) with the Conv/Linear weights 80% pruned: the
             dense model vs lthfast Ticket.apply + MaskedSGD vs torch.nn.utils.prune hooks vs
             ASP-style grad/weight *= mask; median step time vs dense, and the model's bytes
             (parameters + buffers + masks) vs dense; --repeat N: N x 5 steps of each
             method (CUDA: x 10). --quick: batch 4 x 64 px (CUDA: 16 x 112, 5 steps).
             --models NAME: that classifier instead (one name).
  imp_round  one IMP round of fasterrcnn_resnet18_fpn on shapes (96 px; CUDA:
             fasterrcnn_resnet50_fpn, 320 px, batch 8): prune 50% of the paper-scope weights,
             rewind, mask, train 20 iterations (CUDA: 50); lthfast (Ticket.prune + apply +
             MaskedSGD) vs the torch.nn.utils.prune loop (global_unstructured hooks, weight_orig
             rewind, custom_from_mask, torch SGD). Phase times, the pruning overhead as a
             fraction of the round, and the round time ratio. --quick: 3 iterations (CUDA: 10).
             No --models (the detector is fixed).

The full threshold suite takes about 10 minutes on 2 CPU cores (torch's pruning is the
slow part); --repeat 1 --warmup 0 cuts that to about a third."""

_EPILOG = """\
examples:
  lthfast bench threshold                         full models, CPU
  lthfast bench threshold --json bench-cpu.json
  lthfast bench threshold --device cuda --json bench-gpu.json
  lthfast bench threshold --quick                 resnet18 only, 1 repeat (a smoke test)
  lthfast bench optim --json optim.json           fused masked optimizer step vs torch.optim
  lthfast bench conv --quick                      masked sparse conv paths vs F.conv2d
  lthfast bench train_step --quick               masked training step vs dense and torch prune
  lthfast bench imp_round --quick                one detector IMP round vs torch.nn.utils.prune
  lthfast bench all --repeat 5
  lthfast bench --list"""


def add_parser(sub) -> None:
    from lthfast.bench import names
    p = sub.add_parser("bench", help="benchmark lthfast against torch (table of ratios, JSON)",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", default="all", choices=[*names(), "all"],
                   help="which suite to run (default: all)")
    p.add_argument("--json", metavar="PATH",
                   help="also write all results (machine, torch and lthfast versions, sizes, "
                        "every timing) as one-line JSON, atomically (temp file + rename); the "
                        "folder is checked before the run starts")
    p.add_argument("--quick", action="store_true",
                   help="small and fast, per suite as described above (threshold, ticket, "
                        "optim: resnet18), 1 repeat unless --repeat, smaller bandwidth probe "
                        "(for smoke tests; not for quoting numbers)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to run (default: cpu); cuda needs a visible GPU and a CUDA build "
                        "of lthfast (see `lthfast info`)")
    p.add_argument("--repeat", type=int_at_least(1), metavar="N",
                   help="timed runs per case, median reported (conv: at least N interleaved "
                        "rounds, minimum shown; train_step: N x 5 or 10 steps) (default 3; "
                        "1 with --quick)")
    p.add_argument("--warmup", type=int_at_least(0), metavar="N",
                   help="untimed runs per case before timing (default 1; optim and "
                        "train_step always run at least 1)")
    p.add_argument("--models", metavar="A,B",
                   help="comma-separated torchvision model names instead of the defaults of "
                        "threshold, ticket and optim; train_step takes one classifier (with all: the "
                        "first name); conv "
                        "maskrcnn_resnet50_fpn (adds its heads' shapes) or fasterrcnn_resnet50_fpn (every "
                        "conv at 800 px); imp_round none")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice); every suite is "
                        "measured with that many threads, and the header and the JSON "
                        "(machine.torch_threads) show the count")
    p.add_argument("--list", action="store_true", help="list the suites and whether they run, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _list() -> int:
    from lthfast import bench
    for n in bench.names():
        s = bench.get(n)
        state = "available" if s.available else f"not built yet: {s.planned}"
        print(f"{n:<10} {s.description}\n{'':<10} ({state})")
    return 0


def run(args) -> int:
    if args.list:
        return _list()
    if args.threads is not None:  # main() restores the caller's count afterwards
        import torch
        torch.set_num_threads(args.threads)
    from lthfast import _ops, bench
    from lthfast.bench.report import format_not_built, header, write_json
    from lthfast.bench.runner import failures

    if args.json is not None:
        if not args.json.strip():
            raise CLIError("--json needs a file path (got an empty string)", code=2)
        _check_json_target(args.json)
    device = resolve_device(args.device)
    if not _ops.available() and not _ops.use_reference():
        raise CLIError(_ops.BUILD_HINT.format(err=_ops._IMPORT_ERROR))
    names = bench.names() if args.suite == "all" else [args.suite]
    if args.suite != "all" and not bench.get(args.suite).available:
        raise CLIError(f"suite {args.suite!r} is not built yet: {bench.get(args.suite).planned}")
    models = None
    if args.models:
        from lthfast.cli._models import model_names, unknown_model_error
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if not models:
            raise CLIError(f"--models {args.models!r} names no model; give comma-separated "
                           "torchvision model names, or leave --models out for the defaults",
                           code=2)
        known = set(model_names())
        for m in models:
            if m not in known:
                raise unknown_model_error(m, "--models")
        _check_models_for(args.suite, models, args.quick)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 1
    config = bench.BenchConfig(device=device, quick=args.quick,
                               repeat=repeat, warmup=warmup, models=models)
    if _ops.use_reference():
        eprint("note: the compiled extension is not built; lthfast runs the pure-PyTorch "
               "reference (LTHFAST_REFERENCE=1), so its timings are not the kernels'")

    result = bench.run(names, config, quiet=args.quiet)
    result["command"] = ["lthfast", *getattr(args, "argv", ())]  # not the caller's sys.argv

    if args.json is not None:  # before the tables: stdout closed early (`| head`) must
        _write_json_or_keep(write_json, args.json, result)  # not lose the results
    print(header(result))
    for name, res in result["suites"].items():
        print()
        if res["status"] == "not built yet":
            print(format_not_built(name, res))
        elif res["status"] == "error":
            print(f"{name}: ERROR {res['error']}")
        else:
            print(bench.get(name).format(res))
    failed = failures(result)
    if failed:
        eprint(f"lthfast bench: {len(failed)} failed:\n  " + "\n  ".join(failed))
        return 1
    return 0


#: how each suite uses --models (the others: every name instead of their defaults)
_CONV_MODELS = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn")


def _check_models_for(suite: str, models: tuple, quick: bool) -> None:
    if suite == "imp_round":
        raise CLIError("imp_round takes no --models: it always runs fasterrcnn_resnet18_fpn "
                       "(CUDA: fasterrcnn_resnet50_fpn) on shapes", code=2)
    if suite == "train_step" and len(models) != 1:
        raise CLIError(f"train_step takes one model (a classifier), got {len(models)}: "
                       f"{', '.join(models)}", code=2)
    if suite in ("train_step", "all") and models and models[0] not in _classifiers():
        raise CLIError(f"train_step trains a classifier on random images; {models[0]!r} is "
                       "not a torchvision classification model (e.g. resnet50, "
                       "mobilenet_v3_large)", code=2)
    if suite == "conv":
        other = [m for m in models if m not in _CONV_MODELS]
        if other:
            raise CLIError(f"conv always measures resnet50's conv shapes; --models only takes "
                           f"{' or '.join(_CONV_MODELS)} (adds the first's FPN and head shapes, "
                           f"the second's every conv at 800 px), not "
                           f"{', '.join(other)}", code=2)
        if quick:
            eprint("note: conv --quick leaves out the --models shapes; drop --quick to "
                   "measure them")
    if suite == "all":
        eprint("note: --models replaces the models of threshold, ticket and optim; train_step "
               "uses the first name; conv adds maskrcnn_resnet50_fpn's shapes when named; "
               "imp_round ignores it")


def _classifiers() -> set:
    import torchvision
    return set(torchvision.models.list_models(module=torchvision.models))


def _check_json_target(path: str) -> None:
    """Fails before the (long) run when the JSON cannot be written there: the usual
    checks, then a real file created and removed next to it (os.access says yes to
    root everywhere, e.g. on /proc or a read-only mount)."""
    import os
    import tempfile
    check_writable_target(path, "--json")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lthfast-bench-probe.", dir=directory)
    except OSError as e:
        raise CLIError(f"--json {path!r}: cannot create a file in {directory!r} "
                       f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def _write_json_or_keep(write_json, path: str, result: dict) -> None:
    """Writes the JSON; when that fails after the run (disk full, folder gone), keeps
    the results in a file under the temp folder instead of losing them."""
    import os
    import tempfile
    try:
        write_json(path, result)
    except (OSError, CLIError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        fd, spare = tempfile.mkstemp(prefix="lthfast-bench-", suffix=".json")
        os.close(fd)
        try:
            write_json(spare, result)
        except (OSError, CLIError):
            os.unlink(spare)
            raise CLIError(f"cannot write {path!r} ({why}); the results are only in the "
                           "table above") from None
        raise CLIError(f"cannot write {path!r} ({why}); the results are in {spare}") from None
    eprint(f"wrote {path}")
