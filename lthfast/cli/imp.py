"""`lthfast imp`: iterative magnitude pruning of torchvision detection, segmentation,
keypoint and classification models, with a run directory you can resume."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from lthfast.cli._common import CLIError, eprint, format_table, int_at_least

_DESCRIPTION = """\
Finds lottery tickets with iterative magnitude pruning (IMP). Round 0 trains the dense
model; each of the --rounds later rounds prunes --rate of the weights still unpruned (one
global magnitude threshold over the --scope; --layerwise prunes each layer by itself),
rewinds the weights (--rewind) and trains again with lthfast.optim.MaskedSGD, which keeps
pruned weights and their momentum at exactly zero. After every round the model is evaluated
(COCO AP for detection tasks via pycocotools, top-1 (and top-5 with more than 5 classes) for
classification) and RUN_DIR gets an atomic checkpoint, so a killed run continues with
--resume RUN_DIR.

With no arguments it runs the built-in demo: a small Faster R-CNN (resnet18-FPN) on the
synthetic `shapes` dataset, sized to finish in 5-10 minutes on a 2-core CPU.

RUN_DIR holds config.json, metrics.json / metrics.csv (one row per round: sparsity,
per-scope sparsity, collapsed_layers (tensors pruned to nothing), every AP, times),
round_R/ticket.safetensors (the masks of each round; load with lthfast.Ticket.load),
pruned_params.txt (the exact pruned set), checkpoint.pt and report.html (sparsity-vs-AP
curve, per-layer sparsity)."""

_EPILOG = """\
examples:
  lthfast imp                                         the built-in demo (shapes, small Faster R-CNN)
  lthfast imp --task segmentation --rounds 3 --out runs/mask
  lthfast imp --model fasterrcnn_resnet50_fpn --data coco:/data/coco --device cuda \\
      --weights frcnn_r50_coco.pth --rewind pretrained --iters 20000 --batch-size 8
  lthfast imp --rewind iter:100 --scope paper --rounds 5 --out runs/late
  lthfast imp --target 0.8 --rounds 1                 one-shot pruning to 80% sparsity
  lthfast imp --task classification --model resnet18 --data shapes --rounds 4
  lthfast imp --resume runs/demo                      continue a killed run (same settings)
  torchrun --nproc_per_node 2 -m lthfast imp ...      data-parallel training (DDP)

rounds: round 0 is dense; --rounds N adds N pruned rounds, so --rate 0.2 --rounds 5 ends at
1 - 0.8^5 = 67% sparsity. --target S reaches S after --rounds instead.
rewind: init (the weights before training), pretrained (the --weights you started from),
iter:K (late resetting: the weights after K iterations of round 0; pruned rounds then
train iterations K..--iters), none (fine-tune without rewinding)."""

TASKS = ("detection", "segmentation", "keypoints", "classification")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid fraction {text!r}: give a number in [0, 1)") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1) (0.2 prunes 20%)")
    return v


_positive_int = int_at_least(1)
_nonneg_int = int_at_least(0)


def _seed(text: str) -> int:
    v = _nonneg_int(text)
    if v >= 2**32:  # (rounds and iterations derive their seeds from it, within torch's 64 bits)
        raise argparse.ArgumentTypeError(f"{text} is too large: give a seed in 0 .. 2**32 - 1")
    return v


def _steps(text: str) -> list:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --lr-steps {text!r}: give iterations like 200,260") from None
    if any(x <= 0 for x in steps) or steps != sorted(steps):
        raise argparse.ArgumentTypeError(f"--lr-steps {text}: iterations must be positive and increasing")
    return steps


def add_parser(sub) -> None:
    p = sub.add_parser("imp", help="iterative magnitude pruning (find lottery tickets)",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every default is None (or False): the real ones come from lthfast.imp.jobs, so that
    # --resume can tell a flag given on the command line from one left out.
    g = p.add_argument_group("what to prune")
    g.add_argument("--task", choices=TASKS, default=None,
                   help="detection (boxes), segmentation (Mask R-CNN), keypoints (Keypoint "
                        "R-CNN) or classification (default: detection)")
    g.add_argument("--model", metavar="NAME",
                   help="torchvision model name, e.g. fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, "
                        "resnet50; small CPU defaults: fasterrcnn_resnet18_fpn, maskrcnn_resnet18_fpn, "
                        "keypointrcnn_resnet18_fpn, resnet18")
    g.add_argument("--data", default=None, metavar="SPEC",
                   help="shapes (built-in synthetic COCO-format data), coco:PATH (COCO layout), "
                        "or for classification folder:PATH (ImageFolder: PATH/train/CLASS/*, "
                        "PATH/val/CLASS/*; val is labelled with train's classes and may lack some; "
                        "images are normalised with the ImageNet mean/std, as torchvision "
                        "classifiers expect) (default: shapes). COCO "
                        "annotation files are checked before training: a malformed entry stops the "
                        "run naming the file and the entry. Training uses the images with at least "
                        "one box (as torchvision's reference scripts), evaluation every image. An image "
                        "that fails to decode stops the run with an error naming the file (the last "
                        "round's checkpoint stays valid: fix or remove it, then --resume)")
    g.add_argument("--scope", default=None, metavar="PRESET",
                   help="which weights to prune. Detection tasks: all, backbone, fpn, rpn, "
                        "roi_heads, ... (combine with +) or the preset paper (default: paper). "
                        "Classification: all (default: every Conv/Linear and attention "
                        "projection) or features (all but the classifier head). "
                        "Printed and saved with the run")
    g.add_argument("--weights", metavar="PATH",
                   help="local checkpoint to start from (a torchvision detection state_dict; "
                        "with --task classification, a state_dict of that architecture: only the "
                        "classifier head may differ, another number of classes keeps a fresh head); "
                        "or a torchvision weights name of the model (DEFAULT, COCO_V1, "
                        "Enum.NAME), downloaded: needs network")
    g.add_argument("--backbone-weights", metavar="PATH",
                   help="local ImageNet classifier state_dict mapped onto the detection backbone "
                        "(or a torchvision weights name of the backbone, e.g. IMAGENET1K_V1, "
                        "downloaded: needs network). "
                        "With --weights or --backbone-weights a detector's backbone trains as "
                        "torchvision's does from pre-trained weights: its first stages (conv1, "
                        "layer1) stay frozen, the last 3 train, BatchNorm is frozen (not in *_v2 "
                        "models); without either, every layer trains from random init. (The "
                        "number of trainable stages is set in Python: "
                        "lthfast.detection.build_model(..., trainable_layers=K))")
    g.add_argument("--ticket", metavar="PATH",
                   help="start from this ticket (.safetensors, or a run directory: its last "
                        "round's ticket) instead of the dense model: a "
                        "classifier ticket (resnet names) goes onto the detection backbone, a "
                        "detection/segmentation/keypoint ticket onto the shared layers "
                        "(lthfast.transfer); round 0 trains with it fixed, --rounds N prunes on "
                        "from it (default with --ticket: --rounds 0)")
    s = p.add_argument_group("schedule")
    s.add_argument("--rounds", type=_nonneg_int, default=None,
                   help="pruned rounds after the dense round 0 (default: 2 for detection tasks, "
                        "3 for classification)")
    s.add_argument("--rate", type=_fraction, default=None,
                   help="fraction of the remaining weights pruned per round (default: the demo's "
                        "0.5 for detection tasks, 0.2 for classification)")
    s.add_argument("--target", type=_fraction, default=None,
                   help="final sparsity of the pruned set instead of --rate (with --rounds 1: "
                        "one-shot pruning; with --ticket, counted over all its weights, the "
                        "ticket's pruned ones included)")
    s.add_argument("--layerwise", action="store_true",
                   help="prune --rate of every layer separately instead of one global threshold")
    s.add_argument("--rewind", default=None, metavar="POINT",
                   help="init | pretrained | iter:K | none (default for detection tasks: the "
                        "demo's late resetting, iter:50 of 300 iterations, i.e. K = --iters / 6; "
                        "init for classification)")
    t = p.add_argument_group("training")
    t.add_argument("--iters", type=_positive_int, default=None,
                   help="training iterations of a round (default: 300 detection, 200 classification)")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per iteration (default: 4 detection, 32 classification)")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of SGD with momentum 0.9 (default: 0.02)")
    t.add_argument("--warmup", type=_nonneg_int, default=None,
                   help="linear warm-up iterations (default: 50 of 300 detection, 20 of 200 "
                        "classification; scaled with --iters, i.e. --iters / 6 and / 10)")
    t.add_argument("--lr-steps", type=_steps, default=None, metavar="I,J",
                   help="iterations at which the learning rate drops 10x, e.g. 200,260 (default "
                        "for detection: 5/6 of --iters; classification uses cosine decay)")
    t.add_argument("--image-size", type=_positive_int, default=None,
                   help="image side for shapes data, the centre crop of folder:PATH images "
                        "(default 224), and the detector's resize (default: 96 detection on "
                        "shapes, the model's own with coco:PATH; 32 classification)")
    t.add_argument("--n-train", type=_positive_int, default=None,
                   help="shapes: training images (default: 300 detection, 2000 classification); "
                        "with folder:PATH or coco:PATH, a seeded random subset of that many "
                        "(default: all)")
    t.add_argument("--n-val", type=_positive_int, default=None,
                   help="shapes: validation images (default: 100 detection, 500 classification); "
                        "with folder:PATH or coco:PATH, a seeded random subset of that many "
                        "(default: all)")
    t.add_argument("--device", default=None, metavar="DEV",
                   help="cpu or cuda (default: cuda when a GPU is visible, else cpu)")
    t.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    t.add_argument("--seed", type=_seed, default=None, help="seed of everything (default: 0)")
    t.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice)")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="run directory (default: runs/imp-TASK-MODEL-TIMESTAMP; with DDP, rank "
                        "0's timestamp, the same folder for every process)")
    o.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR with its saved settings: --rounds may grow "
                        "it, and --device, --threads and --quiet may change; other flags that "
                        "differ from the run's are refused, and --nproc must be the run's")
    o.add_argument("--early-bird-every", type=_positive_int, default=None, metavar="N",
                   help="every N iterations of round 0, save the mask round 1 would get if "
                        "training stopped there (round_0/early_bird/); `lthfast report` then "
                        "plots how early the ticket is found")
    o.add_argument("--quiet", action="store_true",
                   help="no progress bars and no per-round lines (warnings, errors and the "
                        "final table still print)")
    o.add_argument("--nproc", type=_positive_int, default=None,
                   help="start this many data-parallel processes (DDP; gloo on CPU, nccl on GPU)")
    p.set_defaults(func=run)


def _print_table(rows: list[dict], task: str, file=None) -> None:
    if task == "classification":
        keys = ["top1"] + (["top5"] if any("top5" in r for r in rows) else [])
    else:
        prefix = {"detection": "bbox", "segmentation": "segm", "keypoints": "keypoints"}[task]
        # (COCO's keypoint AP has no small-object AP: its column would always be empty)
        keys = [f"{prefix}_{k}" for k in ("AP", "AP50", "APs", "APm", "APl")
                if not (task == "keypoints" and k == "APs")]
        if task != "detection":
            keys = ["bbox_AP"] + keys
    headers = ["round", "sparsity"] + keys + ["prune s", "train s", "eval s"]
    out = []
    for r in rows:
        cells = [r["round"], f"{100 * r['sparsity']:.1f}%"]
        for k in keys:
            v = r.get(k)
            cells.append("-" if v is None or v != v or v < 0 else f"{v:.1f}")
        cells += [f"{r.get('prune_time_s', 0):.2f}", f"{r.get('train_time_s', 0):.0f}",
                  f"{r.get('eval_time_s', 0):.0f}"]
        out.append(cells)
    print(format_table(headers, out), file=file or sys.stdout, flush=True)


def _has_finished_rounds(out) -> bool:
    from lthfast.imp.rundir import RunDir
    try:
        run = RunDir(out)
        return run.exists() and (os.path.exists(run.file("checkpoint.pt")) or bool(run.read_metrics()))
    except (OSError, ValueError):
        return False


def run(args) -> int:
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        _check_before_spawning(args)
        from lthfast.imp.ddp import spawn
        return spawn(args.nproc, getattr(args, "argv", sys.argv[1:]))
    from lthfast.imp.jobs import JobError, settings_from_args
    from lthfast.imp.rundir import RunDirBusy, hold
    try:
        settings = settings_from_args(args)
        made = not os.path.exists(settings.out)
    except (JobError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e), code=2) from None
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:  # DDP: rank 0 writes the files and holds the lock
        lock = hold(settings.out) if main_rank else None
    except RunDirBusy as e:
        raise CLIError(str(e), code=2) from None
    except OSError as e:  # the folder cannot be made (or locked) there
        raise _lock_error(args, settings, e) from None
    if getattr(settings, "continuing", None) and main_rank:
        eprint(f"lthfast imp: {settings.continuing}")
    try:
        return _run_locked(settings, made)
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock (main() may be called again in this process)


def _check_before_spawning(args) -> None:
    """--nproc N: the flag checks every process would make, made once here (each of N
    processes printed the same error, under torchrun's report of the failed workers)."""
    from lthfast.imp.jobs import JobError, check_same_world_size, check_settings, settings_from_args
    from lthfast.imp.rundir import RunDirBusy, hold
    import contextlib
    import io
    try:
        # (its notes stay: clearing a run that stopped before round 0 happens here)
        settings = settings_from_args(args)
        with contextlib.redirect_stderr(io.StringIO()):  # (its warnings: rank 0 prints them)
            check_settings(settings)
        if settings.resume:
            check_same_world_size(settings.resume, args.nproc)
        if os.path.isdir(settings.out):  # held by another run: say so now
            lock = hold(settings.out)
            if lock is not None:
                os.close(lock)
    except (JobError, ValueError, FileNotFoundError, RunDirBusy) as e:
        raise CLIError(str(e), code=2) from None
    except OSError as e:  # the folder cannot be locked
        raise _lock_error(args, settings, e) from None


def _lock_error(args, settings, e: OSError) -> CLIError:
    flag = "--resume" if getattr(args, "resume", None) else "--out"
    return CLIError(f"{flag} {settings.out}: cannot create or lock the run directory "
                    f"({e.strerror or e}: {e.filename or settings.out})", code=2)


def _run_locked(settings, made: bool) -> int:
    from lthfast.imp.ddp import OtherRankFailed
    from lthfast.imp.jobs import JobError, build_job
    try:
        job = build_job(settings)
    except OtherRankFailed as e:
        raise CLIError(str(e), code=1) from None
    except (JobError, ValueError, FileNotFoundError) as e:
        if made and os.path.isdir(settings.out) and not os.listdir(settings.out):
            os.rmdir(settings.out)  # made for the lock: leave nothing behind
        raise CLIError(str(e), code=2) from None
    previous = _raise_on_sigterm()
    try:
        return job.run_and_print(_print_table)
    except OtherRankFailed as e:  # the failing rank prints the cause (and keeps its traceback)
        raise CLIError(str(e), code=1) from None
    except (OSError, ValueError, FloatingPointError) as e:
        # user-facing failures mid-run (an unreadable image, a diverged loss, a bad
        # checkpoint to resume): one line, and how to go on; other errors keep the traceback
        hint = ""
        if _has_finished_rounds(settings.out):
            hint = (f"; finished rounds are kept in {settings.out}: fix the cause, then "
                    f"`lthfast imp --resume {settings.out}`")
        raise CLIError(f"{e}{hint}", code=1) from None
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: main() says "interrupted"; how to go on
        if int(os.environ.get("RANK", "0")) == 0 and _has_finished_rounds(settings.out):
            eprint(f"lthfast imp: what was done is kept in {settings.out}; "
                   f"`lthfast imp --resume {settings.out}` continues it")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, docker stop, a batch scheduler's time limit): stops the run as
    Ctrl-C does, so status.json says "interrupted" instead of "running" for ever."""


def _on_sigterm(signum, frame):
    raise Terminated("SIGTERM")


def _raise_on_sigterm():
    """Installs _on_sigterm (main thread only); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)
