"""`lthfast report RUN_DIR [RUN_DIR ...] --out report.html`: one self-contained HTML
page comparing IMP runs (lthfast.analysis)."""
from __future__ import annotations

import argparse
import os

from lthfast.cli._common import CLIError, check_writable_target, eprint

_EPILOG = """\
examples:
  lthfast report runs/dense-vs-ticket --out report.html
  lthfast report runs/imagenet-ticket runs/direct --labels transferred,direct --out cmp.html

The page holds: the runs table, sparsity vs accuracy, AP by object size (small / medium /
large), AP per category by training-set frequency and by difficulty (dense AP), IoU of the
final tickets (overall and per layer), early-bird stability, per-layer sparsity with fully
pruned kernels / channels, layer-wise vs global pruning at the same sparsity, and the
perturbation tests saved by `lthfast perturb`. A run still being written is shown with
its finished rounds and a warning; a section a run cannot fill (a missing or damaged
round_R/ticket.safetensors, no checkpoint.pt) says why instead.

--out is overwritten when it is an HTML page (an earlier report); any other existing file
is left alone (an error), so a typo cannot replace a run's config.json or a ticket."""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="HTML page comparing IMP runs (AP breakdowns, overlap, ...)",
                       description=__doc__, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of lthfast imp")
    p.add_argument("--out", default="report.html",
                   help="HTML file to write, in an existing folder (default: report.html)")
    p.add_argument("--labels", default=None, metavar="A,B",
                   help="comma-separated names of the runs in the page, one per RUN_DIR, in "
                        "order (default: folder names)")
    p.add_argument("--title", default=None,
                   help="page title (default: 'lthfast report: N run(s)')")
    p.set_defaults(func=run)


def check_run_files(path: str) -> None:
    """CLIError naming the file and the problem when a run directory's config.json,
    status.json or metrics.json is not what lthfast imp writes (a damaged or hand-edited
    run), instead of a traceback from deep inside an analysis."""
    from lthfast.analysis.runs import RunError, check_run_files as check
    try:
        check(path)
    except RunError as e:
        raise CLIError(str(e), code=2) from None


def _check_out(path: str) -> None:
    """--out must be a file path in an existing folder, and never an existing file that is
    not an HTML page (a run's config.json, a ticket): those are not overwritten."""
    if not path.strip():
        raise CLIError("--out is empty; give the HTML file to write, e.g. report.html", code=2)
    if os.path.isdir(path):
        raise CLIError(f"--out {path!r} is a directory; give the HTML file to write, e.g. "
                       f"{os.path.join(path, 'report.html')}", code=2)
    try:  # (a file can be made in the folder: os.access says yes to root on /sys)
        check_writable_target(path, "--out")
    except CLIError as e:
        raise CLIError(str(e), code=2) from None
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                head = f.read(256).lstrip().lower()
        except OSError as e:
            raise CLIError(f"--out {path!r}: cannot read the existing file: {e}", code=2) from None
        if head and not head.startswith((b"<!doctype html", b"<html")):
            raise CLIError(f"--out {path!r} exists and is not an HTML page; it is left as it is "
                           "(give another path, or remove it first)", code=2)


def distinct_labels(paths: list[str]) -> list[str]:
    """A name per run directory for the page: its folder name, with as many parent folders
    as it takes to tell runs apart (see lthfast.analysis.runs.distinct_labels)."""
    from lthfast.analysis.runs import RunError, distinct_labels as distinct
    try:
        return distinct(paths)
    except RunError as e:
        raise CLIError(str(e), code=2) from None


def run(args) -> int:
    from lthfast.analysis.report import build_report
    from lthfast.analysis.runs import RunError
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise CLIError(f"--labels {args.labels!r} has {len(labels)} names for {len(args.runs)} "
                       "runs (one per RUN_DIR, comma-separated)", code=2)
    if labels and not all(labels):
        raise CLIError(f"--labels {args.labels!r} has an empty name", code=2)
    real = [os.path.realpath(p) for p in args.runs]
    twice = sorted({p for p, r in zip(args.runs, real) if real.count(r) > 1})
    if twice:
        raise CLIError(f"RUN_DIR {twice[0]} is given more than once", code=2)
    if labels:
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:  # the page's plots and tables are keyed by label: one run would hide the other
            raise CLIError(f"--labels {args.labels!r} has the name {dup[0]!r} more than once; "
                           "give each run its own name", code=2)
    else:
        labels = distinct_labels(args.runs)
    _check_out(args.out)
    for path in args.runs:
        check_run_files(path)
    try:
        out, notes = build_report(args.runs, args.out, labels=labels, title=args.title)
    except RunError as e:
        raise CLIError(str(e), code=2) from None
    for n in notes:
        eprint(f"lthfast report: warning: {n}")
    print(f"report: {out}")
    return 0
