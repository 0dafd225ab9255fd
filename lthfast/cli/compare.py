"""`lthfast compare TICKET TICKET`: overlap (IoU of kept weights) of two tickets, overall
and per layer, printed as a table."""
from __future__ import annotations

import argparse
import os

from lthfast.cli._common import CLIError, format_table

_EPILOG = """\
examples:
  lthfast compare runs/a/round_3/ticket.safetensors runs/b/round_3/ticket.safetensors
  lthfast compare runs/a runs/b                 the last tickets of two runs
  lthfast compare det.safetensors seg.safetensors --shared   only the layers both have

IoU = |kept in both| / |kept in either| (1.0 where both keep nothing); "chance" is the
expected IoU of random masks with the same per-layer sparsities."""


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="IoU of the kept weights of two tickets, per layer",
                       description=__doc__, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="TICKET", help="a ticket .safetensors file or a run directory")
    p.add_argument("b", metavar="TICKET", help="the other ticket (file or run directory)")
    p.add_argument("--shared", action="store_true",
                   help="compare only the layers both tickets have (e.g. detection vs segmentation)")
    p.add_argument("--round", type=int, default=None,
                   help="for run directories: the round whose ticket to use (default: last)")
    p.set_defaults(func=run)


def _ticket(path: str, round_index):
    from lthfast.analysis.runs import RunError, load_run
    from lthfast.ticket import Ticket
    if os.path.isdir(path):
        try:
            return load_run(path).ticket(round_index)
        except RunError as e:
            raise CLIError(str(e), code=2) from None
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such ticket file or run directory", code=2)
    try:
        return Ticket.load(path)
    except ValueError as e:
        raise CLIError(str(e), code=2) from None


def run(args) -> int:
    from lthfast.analysis.overlap import mask_overlap, random_iou
    a, b = _ticket(args.a, args.round), _ticket(args.b, args.round)
    try:
        res = mask_overlap(a, b, shared_only=args.shared)
    except ValueError as e:
        raise CLIError(str(e).replace("shared_only=True (lthfast compare --shared)", "--shared"),
                       code=2) from None
    rows = [[d["name"], d["params"], f"{100 * d['sparsity_a']:.1f}%", f"{100 * d['sparsity_b']:.1f}%",
             f"{d['iou']:.3f}", f"{random_iou(d['sparsity_a'], d['sparsity_b']):.3f}"]
            for d in res["layers"]]
    rows.append(["total", sum(d["params"] for d in res["layers"]), f"{100 * res['sparsity_a']:.1f}%",
                 f"{100 * res['sparsity_b']:.1f}%", f"{res['overall']:.3f}",
                 f"{random_iou(res['sparsity_a'], res['sparsity_b']):.3f}"])
    print(format_table(["layer", "params", "pruned A", "pruned B", "IoU", "chance"], rows))
    if res["only_a"] or res["only_b"]:
        print(f"\nnot compared: {len(res['only_a'])} layers only in A {res['only_a'][:6]}, "
              f"{len(res['only_b'])} only in B {res['only_b'][:6]}")
    return 0
