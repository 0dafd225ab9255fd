"""`lthfast perturb RUN_DIR`: the perturbation test of a run's ticket (retrain with its
complement, a random mask of the same per-layer sparsity, 10% swapped), saved in
RUN_DIR/perturbation.json for `lthfast report`."""
from __future__ import annotations

import argparse

from lthfast.cli._common import CLIError, eprint, format_table, int_at_least

_EPILOG = """\
examples:
  lthfast perturb runs/demo                      last round, all three perturbations
  lthfast perturb runs/demo --round 2 --kinds random,swap10

Each perturbed mask is retrained from the run's rewind point with the run's own settings
(config.json), so it costs one IMP round per kind. Kinds: complement (keeps exactly what
the ticket prunes), random (same kept count per layer), swapNN (kept and pruned weights
swapped in pairs, NN% of the smaller of the two sets in every layer)."""


def add_parser(sub) -> None:
    p = sub.add_parser("perturb", help="retrain perturbed masks of a ticket and compare AP",
                       description=__doc__, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished lthfast imp run")
    p.add_argument("--round", type=int, default=None, help="the round whose ticket (default: the last finished round; -1 is the last, -2 the "
                        "one before, ...)")
    p.add_argument("--kinds", default="complement,random,swap10",
                   help="comma-separated perturbations (default: complement,random,swap10)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random and swapped masks (default: 0); retraining "
                        "uses the run's own seed, as its round did")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice); when not given, the "
                        "retraining uses the --threads the run was made with, if any")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads is not None:  # main() restores the caller's count afterwards
        import torch
        torch.set_num_threads(args.threads)
    from lthfast.analysis.perturb import parse_kinds, perturbation, table
    from lthfast.analysis.runs import RunError
    try:
        kinds = parse_kinds(args.kinds)
        res = perturbation(args.run_dir, round=args.round, kinds=kinds, seed=args.seed,
                           log=None if args.quiet else eprint, threads=args.threads)
    except (RunError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e), code=2) from None
    metric = res["metric"]
    rows = [[d["mask"], f"{100 * d['sparsity']:.1f}%", f"{d['IoU with ticket']:.3f}",
             _num(d[metric], "{:.2f}"), _num(d["change vs ticket"], "{:+.2f}")]
            for d in table(res)]
    print(format_table(["mask", "sparsity", "IoU with ticket", metric, "change"], rows))
    print(f"\nrandom / swapped masks drawn with --seed {args.seed}; saved in "
          f"{args.run_dir}/perturbation.json (shown by lthfast report)")
    return 0


def _num(v, fmt: str) -> str:
    """A metric cell: '-' where there is none or it is NaN (a diverged retrain), not 'nan'."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return "-"
    return fmt.format(v)
