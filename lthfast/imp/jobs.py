"""What `lthfast imp` runs: settings (flags over task defaults, or a saved run's), and
the model, data, pruned set, train and eval functions of each task."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from lthfast.imp import ddp
from lthfast.imp.config import IMPConfig, Rewind
from lthfast.imp.engine import IMP
from lthfast.imp.rundir import RunDir, writer_gone


class JobError(ValueError):
    pass


@dataclass
class Settings:
    task: str = "detection"
    model: str | None = None
    data: str = "shapes"
    scope: str | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    rounds: int | None = None
    rate: float | None = None
    target: float | None = None
    layerwise: bool = False
    rewind: str | None = None
    iters: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    lr_steps: list | None = None
    image_size: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    device: str | None = None
    amp: bool = False
    seed: int = 0
    threads: int | None = None
    out: str | None = None
    resume: str | None = None
    quiet: bool = False
    ticket: str | None = None  # transfer: start from this ticket (lthfast.transfer)
    early_bird_every: int | None = None  # save round 1's would-be mask every N iterations


# Settings a resumed run may change: they do not change its results.
RESUME_MAY_CHANGE = ("rounds", "device", "quiet", "threads", "resume", "out")

CLASSIFICATION_DEFAULTS = dict(model="resnet18", image_size=32, n_train=2000, n_val=500,
                               iters=200, batch_size=32, lr=0.02, warmup=20, rounds=3,
                               rewind="init", rate=0.2, scope="all")


def task_defaults(task: str) -> dict:
    if task == "classification":
        return dict(CLASSIFICATION_DEFAULTS)
    from lthfast.detection import defaults as det_defaults
    from lthfast.detection.models import DEFAULT_MODELS
    demo = dict(det_defaults.DEMO)
    out = {k: demo[k] for k in ("n_train", "n_val", "image_size", "batch_size", "lr", "iters")
           if k in demo}
    out["warmup"] = demo.get("warmup_iters", 0)
    out["lr_steps"] = list(demo.get("lr_steps", ()))
    for k, fallback in (("rounds", 3), ("rewind", "init"), ("rate", 0.2), ("scope", "paper")):
        out[k] = demo.get(k, fallback)
    out["model"] = DEFAULT_MODELS[task]
    return out


def _resume_settings(given: dict) -> Settings:
    path = given["resume"]
    run = RunDir(path)
    if not run.exists():
        raise JobError(f"--resume {path}: no run there (no config.json)")
    try:
        saved = run.config().get("settings")
    except (ValueError, AttributeError) as e:
        raise JobError(f"--resume {path}: config.json is not readable ({e})") from None
    if not isinstance(saved, dict):
        raise JobError(f"--resume {path}: not a run of `lthfast imp` (config.json has no "
                       "settings); continue a run of the Python API with run_imp(..., resume=True)")
    # None / False: not on the command line (the parser's defaults are None for that)
    changed = [k for k, v in given.items() if k not in RESUME_MAY_CHANGE and v is not None
               and v is not False and saved.get(k, getattr(Settings(), k)) != _absolute(k, v)
               and not (k == "rewind" and saved.get(k) == _normal_rewind(v))]  # INIT is init
    if changed:
        flags = ", ".join("--" + c.replace("_", "-") for c in changed)
        raise JobError("--resume continues a run with its saved settings; these flags would "
                       f"change its results: {flags}")
    if given.get("out") and os.path.abspath(given["out"]) != os.path.abspath(path):
        raise JobError(f"--out {given['out']} with --resume {path}: a resumed run stays in its "
                       "own directory; leave out --out (or copy the run first)")
    rounds = given.get("rounds")
    if rounds is not None and rounds != saved.get("rounds"):
        try:
            done = len(run.read_metrics()) - 1
        except ValueError:  # a damaged metrics.json: the engine checks against the checkpoint
            done = -1
        if rounds < done:
            raise JobError(f"--rounds {rounds}: {path} has already finished round {done}; "
                           "--rounds can grow a run, not shrink it")
        if saved.get("target") is not None:
            raise JobError(f"--rounds {rounds}: {path} prunes to --target {saved['target']} "
                           f"over --rounds {saved.get('rounds')} (the rate per round follows "
                           "from both); more rounds would change that rate: start a new run")
    merged = {**saved, **{k: given[k] for k in RESUME_MAY_CHANGE if given.get(k) is not None}}
    merged["out"] = path
    return Settings(**{k: v for k, v in merged.items() if k in Settings.__dataclass_fields__})


def _normal_rewind(value):
    """--rewind as the run saves it (INIT -> init), or as given when it does not parse
    (check_settings names it)."""
    try:
        return None if value is None else str(Rewind.parse(value))
    except ValueError:
        return value


def _absolute(key: str, value):
    """An input file as an absolute path: config.json keeps it, and --resume from another
    working directory must find the same file (names such as DEFAULT stay as they are)."""
    if key in ("weights", "backbone_weights", "ticket") and value and os.path.exists(value):
        return os.path.abspath(value)
    if key == "data" and isinstance(value, str):
        kind, sep, path = value.partition(":")
        if sep and kind in ("coco", "folder") and os.path.exists(path):
            return f"{kind}:{os.path.abspath(path)}"
    return value


def _check_given(given: dict) -> None:
    """What no default can mend: an empty path or name (an unset shell variable, `--out
    $RUN`, would otherwise start a new run in the current folder or ignore the flag),
    and --rate with --target (the target decides the rate per round)."""
    for key, value in given.items():
        if isinstance(value, str) and not value.strip():
            raise JobError(f"--{key.replace('_', '-')} is empty: give a value (or leave the "
                           "flag out for its default)")
    if given.get("rate") is not None and given.get("target") is not None:
        raise JobError(f"--rate {given['rate']} and --target {given['target']}: give one (with "
                       "--target the rate per round follows from it and --rounds)")


def _last_ticket_of(path: str) -> str:
    """--ticket RUN_DIR: the ticket file of the run's last finished round (as `lthfast
    compare` reads a run directory)."""
    import warnings

    from lthfast.analysis.runs import RunError, load_run
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a run still going: its last finished round
            run = load_run(path)
        return RunDir(path).ticket_path(run.rounds[-1])
    except RunError as e:
        raise JobError(f"--ticket {path}: a folder that is no finished IMP run ({e}); give a "
                       "ticket file (RUN/round_R/ticket.safetensors) or a run directory") from None


def settings_from_args(args) -> Settings:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if hasattr(args, f.name)}
    _check_given(given)
    if given.get("resume"):
        return _resume_settings(given)
    s = Settings(**{k: v for k, v in given.items() if v is not None})  # the rest: defaults
    if s.ticket and os.path.isdir(s.ticket):
        s.ticket = _last_ticket_of(s.ticket)
    if s.ticket and s.rounds is None:
        if s.target is not None:
            raise JobError(f"--target {s.target} with --ticket needs --rounds N (the rounds that "
                           "prune on from the ticket; --ticket alone trains it as it is, --rounds 0)")
        s.rounds = 0  # --ticket alone: train with the transferred mask fixed
    defaults = task_defaults(s.task)
    rewind_given, iters_given = s.rewind is not None, s.iters is not None
    steps_given, warmup_given = s.lr_steps is not None, s.warmup is not None
    if s.data != "shapes":  # sizes of the built-in data; real data keeps the model's resize
        for k in ("n_train", "n_val", "image_size"):
            defaults.pop(k, None)
    for k, v in defaults.items():
        if k == "rate" and s.target is not None:  # the target decides the rate per round:
            continue  # config.json said rate 0.2 beside it, a rate never used
        if getattr(s, k, None) is None:
            setattr(s, k, v)
    if not rewind_given and iters_given:
        # The default late-resetting point keeps its place in the schedule:
        # iter:50 of 300 iterations becomes iter:K with K = iters / 6.
        point = Rewind.parse(s.rewind)
        if point.kind == "iter" and defaults.get("iters"):
            s.rewind = f"iter:{round(point.iteration * s.iters / defaults['iters'])}"
    if not steps_given and iters_given and defaults.get("iters"):
        # likewise the learning-rate drop (at 250 of 300 iterations in the demo)
        # (a drop scaled onto or past the end of a tiny run is left out: no warning about a
        # flag that was not given)
        s.lr_steps = [k for k in (round(x * s.iters / defaults["iters"]) for x in s.lr_steps or ())
                      if k < s.iters]
    if not warmup_given and iters_given and defaults.get("iters"):
        # and the warm-up: 50 of 300 iterations kept a short run (--iters 20) below its peak lr
        s.warmup = round(s.warmup * s.iters / defaults["iters"])
    for key in ("weights", "backbone_weights", "ticket", "data"):
        setattr(s, key, _absolute(key, getattr(s, key)))
    s.rewind = _normal_rewind(s.rewind)
    if s.device is None:
        s.device = "cuda" if torch.cuda.is_available() else "cpu"
    if s.out is None:
        # one name for every DDP rank: rank 0's clock decides (each rank stamping its own
        # could straddle a second and disagree on where the run is)
        s.out = ddp.decided_on_main(s.device, default_out, s.task, s.model)
    if _run_differs(s, RunDir(s.out)) == []:
        # the same command again (a second `make demo`, or after Ctrl-C): go on with that run
        # (the command prints the note once it holds the folder: a second process is refused)
        resumed = _resume_settings({**{k: given.get(k) for k in RESUME_MAY_CHANGE},
                                    "resume": s.out, "out": None})
        resumed.continuing = (f"{s.out} holds a run with these settings: continuing it (as with "
                              f"--resume {s.out}); delete the folder to start over")
        return resumed
    differs = _run_differs(s, RunDir(s.out))
    if differs and _stopped_before_round_0(RunDir(s.out)):
        # its fix is often a flag that changes results (--batch-size, --lr): start over
        if int(os.environ.get("RANK", "0")) != 0:  # (the process group may not be up yet)
            return s  # rank 0 clears it
        from lthfast.cli._common import eprint
        eprint(f"lthfast imp: {s.out} holds a run that stopped before finishing round 0: "
               "starting over there with these settings")
        _clear_attempt(RunDir(s.out))
        differs = None
    check_new_run_dir(s.out, differs)
    return s


# What a run writes before its first round ends (RunDir.start, a failure's status and report).
_ATTEMPT_FILES = ("config.json", "status.json", "pruned_params.txt", "metrics.json", "metrics.csv",
                  "report.html")


def _stopped_before_round_0(run: RunDir) -> bool:
    """An `lthfast imp` run that failed, was interrupted or killed before any round finished: no
    checkpoint, no metric rows, no file but those it wrote when it started."""
    try:
        status = run.status()
        return ((status.get("state") in ("failed", "interrupted")
                 or (status.get("state") == "running" and writer_gone(status)))
                and not os.path.exists(run.file("checkpoint.pt")) and not run.read_metrics()
                and set(os.listdir(run.path)) <= set(_ATTEMPT_FILES))
    except (OSError, ValueError, AttributeError):
        return False


def _clear_attempt(run: RunDir) -> None:
    """Removes the files of such a run, holding its lock (a run going on there: RunDirBusy)."""
    from lthfast.imp.rundir import hold
    fd = hold(run.path)
    try:
        if _stopped_before_round_0(run):  # (again, under the lock)
            for name in _ATTEMPT_FILES:
                if os.path.exists(run.file(name)):
                    os.remove(run.file(name))
    finally:
        if fd is not None:
            os.close(fd)


def default_out(task: str, model: str) -> str:
    """The run directory when --out is not given: runs/imp-TASK-MODEL-TIMESTAMP."""
    return os.path.join("runs", f"imp-{task}-{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def _run_differs(s: Settings, run: RunDir) -> list | None:
    """The flags whose values differ from those `run` was made with ([]: the same run up
    to what --resume may change; None: no `lthfast imp` run there)."""
    try:
        saved = run.config().get("settings") if run.exists() else None
    except (ValueError, AttributeError):
        return None
    if not isinstance(saved, dict):
        return None
    return ["--" + k.replace("_", "-") for k, v in dataclasses.asdict(s).items()
            if k not in RESUME_MAY_CHANGE and saved.get(k) != v
            # runs made before stop 30 saved the unused default rate beside a target
            and not (k == "rate" and v is None and s.target is not None
                     and saved.get("target") == s.target)]


def check_new_run_dir(out: str, differs: list | None = None) -> None:
    """A fresh run writes only into a new or empty folder: an earlier run there would be
    overwritten file by file (its extra rounds' tickets left behind), other files mixed in.
    `differs`: the flags in which an earlier run there differs, for the message."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise JobError(f"--out {out}: is a file, not a run directory; give a new folder")
    # the folder is made later, after data and model: say now if it cannot be
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise JobError(f"--out {out}: {parent} is a file, not a folder; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JobError(f"--out {out}: cannot create folders in {parent} (no write permission)")
    if RunDir(out).exists():
        why = f" made with other {', '.join(differs)}" if differs else ""
        raise JobError(f"--out {out}: holds an earlier run{why}; continue it as it was with "
                       f"--resume {out}, or give another --out")
    if os.path.isdir(out) and os.listdir(out):
        raise JobError(f"--out {out}: the folder exists and is not empty; give a new or "
                       "empty folder for the run directory")


def check_settings(s: Settings) -> IMPConfig:
    index = s.device[5:] if s.device.startswith("cuda:") else None
    if s.device not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise JobError(f"--device {s.device!r}: use cpu, cuda or cuda:N (N a GPU index)")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise JobError(f"--device {s.device}: no CUDA GPU is visible; use --device cpu")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise JobError(f"--device {s.device}: only {torch.cuda.device_count()} CUDA GPU(s) are "
                       f"visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if s.amp and not s.device.startswith("cuda"):
        raise JobError("--amp needs --device cuda (mixed precision on CPU is not supported)")
    if s.lr is not None and not (s.lr > 0 and math.isfinite(s.lr)):
        raise JobError(f"--lr must be a finite number > 0, got {s.lr}")
    rewind = Rewind.parse(s.rewind)
    if rewind.kind == "pretrained" and not (s.weights or s.backbone_weights):
        raise JobError("--rewind pretrained needs the pre-trained weights: pass --weights PATH "
                       "or --backbone-weights PATH")
    if rewind.kind == "iter" and rewind.iteration > s.iters:
        raise JobError(f"--rewind {rewind}: K={rewind.iteration} is beyond --iters {s.iters}")
    if rewind.kind == "iter" and rewind.iteration == s.iters and s.rounds > 0 and not s.resume:
        # (not on --resume: a run made before this check cannot change --rewind)
        # the pruned rounds train iterations K..--iters: none (one-shot pruning, unsaid)
        raise JobError(f"--rewind {rewind}: the pruned rounds train iterations "
                       f"{rewind.iteration}..--iters {s.iters}, none at all; give K below --iters")
    if s.target is not None and s.rounds == 0:
        raise JobError(f"--target {s.target} needs --rounds 1 or more (got --rounds 0)")
    if s.early_bird_every is not None and (s.rounds == 0 or s.early_bird_every > s.iters):
        from lthfast.cli._common import eprint
        why = ("--rounds 0 has no round 1 to compare with" if s.rounds == 0
               else f"it is beyond --iters {s.iters}")
        eprint(f"lthfast imp: warning: --early-bird-every {s.early_bird_every} saves nothing: "
               f"{why}")
    late = [k for k in (s.lr_steps or ()) if k >= s.iters]
    if late or (s.warmup or 0) > s.iters:
        from lthfast.cli._common import eprint
        what = (f"--lr-steps {','.join(map(str, late))} (the rate never drops there)" if late
                else f"--warmup {s.warmup} (the rate never reaches --lr)")
        eprint(f"lthfast imp: warning: {what} is beyond --iters {s.iters}")
    if s.task != "classification" and s.data.startswith("folder:"):
        raise JobError(f"--data {s.data}: image folders are for --task classification; "
                       "detection tasks take shapes or coco:PATH")
    if s.task != "classification" and s.image_size is not None and s.image_size < 32:
        raise JobError(f"--image-size {s.image_size}: detection models and the shapes data need "
                       "32 or more")
    return IMPConfig(rounds=s.rounds, rate=s.rate, target=s.target, layerwise=s.layerwise,
                     rewind=s.rewind, seed=s.seed)


@dataclass
class Job:
    settings: Settings
    config: IMPConfig
    model: torch.nn.Module
    names: list
    train_fn: object
    eval_fn: object
    group_of: object
    meta: dict
    describe: str
    initial_ticket: object = None

    def run_and_print(self, print_table) -> int:
        from lthfast.cli._common import eprint
        s = self.settings
        # --quiet drops progress lines, not warnings (layer collapse, report not written)
        if not ddp.is_main():
            log = lambda m: None  # noqa: E731
        elif s.quiet:
            log = lambda m: eprint(m) if m.startswith("warning:") else None  # noqa: E731
        else:
            log = eprint
        if ddp.is_main():
            eprint(self.describe)
        # a resumed run's tables start with the rounds it had already finished
        try:
            printed = RunDir(s.out).read_metrics() if s.resume else []
        except ValueError:  # damaged: the resumed run rewrites it from its checkpoint
            printed = []

        def on_round(row):
            printed.append(row)
            if ddp.is_main() and not s.quiet and len(printed) < self.config.rounds + 1:
                eprint("")
                print_table(printed, s.task, file=sys.stderr)

        imp = IMP(self.model, self.names, train_fn=self.train_fn, eval_fn=self.eval_fn,
                  config=self.config, out=s.out, meta=self.meta, group_of=self.group_of,
                  log=log, on_round=on_round, initial_ticket=self.initial_ticket,
                  early_bird_every=s.early_bird_every)
        res = imp.run_rounds(resume=bool(s.resume))
        if ddp.is_main():
            print()
            print_table(res.rows, s.task)
            report = os.path.join(res.run_dir, "report.html")
            print(f"\nrun directory: {res.run_dir}"
                  + (f"  (report: {report})" if os.path.exists(report) else "  (no report.html)"))
        ddp.shutdown()
        return 0


def _saved_pruned_names(path: str) -> list[str]:
    try:
        with open(RunDir(path).file("pruned_params.txt"), encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line]
    except OSError as e:
        raise JobError(f"--resume {path}: the run started from a ticket file that is gone, and "
                       f"its pruned_params.txt is not readable ({e})") from None


def check_same_world_size(run_dir: str, world_size: int) -> None:
    """A resume runs with as many processes as the run did: each trains on its share of
    every batch (BatchNorm statistics per process), so the results depend on the count."""
    try:
        saved = RunDir(run_dir).config().get("world_size")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(saved, int) and not isinstance(saved, bool) and saved != world_size:
        raise JobError(f"--resume {run_dir}: the run trained with {saved} process(es), this "
                       f"resume would use {world_size} (the results depend on it); resume with "
                       + (f"--nproc {saved}" if saved > 1 else "one process (no --nproc)"))


def build_job(s: Settings) -> Job:
    config = check_settings(s)
    if s.threads:
        torch.set_num_threads(s.threads)
    ddp.init(s.device)
    if s.resume:
        check_same_world_size(s.resume, ddp.world_size())
    device = ddp.local_device(s.device)
    if s.task == "classification":
        from lthfast.imp.task_classification import build
    else:
        from lthfast.imp.task_detection import build
    # --seed fixes the initial weights too: torch's default generator starts from a
    # random seed in every process, so an unseeded build gave every run another init.
    from lthfast.imp.round_state import _seed_everything
    _seed_everything(s.seed)
    model, names, train_fn, eval_fn, group_of, describe = build(s, device)
    from lthfast.transfer import transfer_for_job, with_network_sparsity
    if s.ticket and s.resume and not os.path.exists(s.ticket):
        # the starting ticket is only round 0's: after round 0 the run folder keeps its
        # pruned set and tickets (before it, round 0 starts over and needs the ticket)
        if not os.path.exists(RunDir(s.resume).file("checkpoint.pt")):
            raise JobError(f"--resume {s.resume}: round 0 did not finish, and it starts from "
                           f"--ticket {s.ticket}, which is gone; put the ticket file back")
        names = _saved_pruned_names(s.resume)
        initial, transfer_meta = None, {}
        describe += (f"\n  --ticket {s.ticket} is gone: the run goes on with its own pruned set "
                     f"({len(names)} tensors, pruned_params.txt)")
    else:
        names, initial, transfer_meta, describe = transfer_for_job(s.ticket, model, names, describe)
        if initial is not None and s.target is not None and initial.sparsity() > s.target:
            # (the engine refuses it too; here, before the run folder is written)
            raise JobError(f"--target {s.target} is below the sparsity of the --ticket "
                           f"({initial.sparsity():.4f}): pruning cannot make it denser")
    eval_fn = with_network_sparsity(eval_fn, model)
    meta = {"settings": dataclasses.asdict(s), "task": s.task, "model": s.model, "data": s.data,
            "scope": s.scope, "device": str(device), "world_size": ddp.world_size(),
            "torch": torch.__version__}
    return Job(settings=s, config=config, model=model, names=names, train_fn=train_fn,
               eval_fn=eval_fn, group_of=group_of, meta={**meta, **transfer_meta},
               describe=describe, initial_ticket=initial)
