"""`lthfast report RUN_DIR [RUN_DIR ...] --out report.html`: one self-contained HTML
page comparing IMP runs (lthfast.analysis)."""
from __future__ import annotations

import argparse

from lthfast.cli._common import CLIError, eprint

_EPILOG = """\
examples:
  lthfast report runs/dense-vs-ticket --out report.html
  lthfast report runs/imagenet-ticket runs/direct --labels transferred,direct --out cmp.html

The page holds: the runs table, sparsity vs accuracy, AP by object size (small / medium /
large), AP per category by training-set frequency and by difficulty (dense AP), IoU of the
final tickets (overall and per layer), early-bird stability, per-layer sparsity with fully
pruned kernels / channels, layer-wise vs global pruning at the same sparsity, and the
perturbation tests saved by `lthfast perturb`. A run still being written is shown with
its finished rounds and a warning."""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="HTML page comparing IMP runs (AP breakdowns, overlap, ...)",
                       description=__doc__, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of lthfast imp")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--labels", default=None, metavar="A,B",
                   help="comma-separated names of the runs in the page (default: folder names)")
    p.add_argument("--title", default=None, help="page title")
    p.set_defaults(func=run)


def run(args) -> int:
    from lthfast.analysis.report import build_report
    from lthfast.analysis.runs import RunError
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise CLIError(f"--labels has {len(labels)} names for {len(args.runs)} runs", code=2)
    try:
        out, notes = build_report(args.runs, args.out, labels=labels, title=args.title)
    except RunError as e:
        raise CLIError(str(e), code=2) from None
    for n in notes:
        eprint(f"lthfast report: warning: {n}")
    print(f"report: {out}")
    return 0
