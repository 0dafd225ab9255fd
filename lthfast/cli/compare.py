"""`lthfast compare TICKET TICKET`: overlap (IoU of kept weights) of two tickets, overall
and per layer, printed as a table."""
from __future__ import annotations

import argparse
import os
import warnings

from lthfast.cli._common import CLIError, eprint, format_table

_EPILOG = """\
examples:
  lthfast compare runs/a/round_3/ticket.safetensors runs/b/round_3/ticket.safetensors
  lthfast compare runs/a runs/b                 the last tickets of two runs
  lthfast compare runs/a runs/b --round 1       their round-1 tickets
  lthfast compare det.safetensors seg.safetensors --shared   only the layers both have

The first TICKET is A, the second B (both named above the table). "pruned A" / "pruned B"
are the fractions of each layer's weights the ticket prunes; IoU = |kept in both| / |kept in
either| (1.0 where both keep nothing); "chance" is the expected IoU of random masks with the
same per-layer sparsities, so an IoU well above it means the tickets agree on which weights
matter."""


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="IoU of the kept weights of two tickets, per layer",
                       description=__doc__, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="TICKET", help="a ticket .safetensors file or a run directory (A)")
    p.add_argument("b", metavar="TICKET", help="the other ticket, file or run directory (B)")
    p.add_argument("--shared", action="store_true",
                   help="compare only the layers both tickets have (e.g. detection vs segmentation)")
    p.add_argument("--round", type=int, default=None,
                   help="for run directories: the round whose ticket to use (default: the last "
                        "finished round; -1 is the last, -2 the one before, ...)")
    p.set_defaults(func=run)


def _run_ticket(path: str, round_index):
    """(ticket, description) of a run directory's round (default: its last finished one)."""
    from lthfast.analysis.runs import RunError, RunningWarning, load_run
    from lthfast.cli.report import check_run_files
    check_run_files(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunningWarning)
        try:
            run = load_run(path)
        except RunError as e:
            raise CLIError(str(e), code=2) from None
    for w in caught:
        if issubclass(w.category, RunningWarning):
            eprint(f"lthfast compare: warning: {w.message}")
    rounds = run.rounds
    r = rounds[-1] if round_index is None else round_index
    if r < 0:
        if -r > len(rounds):
            raise CLIError(f"--round {round_index}: run {path} has {len(rounds)} finished "
                           f"round(s) {rounds} (a negative --round counts back from the last: "
                           "-1 is the last)", code=2)
        r = rounds[r]
    try:
        ticket = run.ticket(r)
    except ValueError as e:  # RunError (no ticket for that round) or a damaged ticket file
        raise CLIError(str(e), code=2) from None
    return ticket, f"{path} (round {r})"


def _ticket(path: str, round_index):
    from lthfast.ticket import Ticket
    if os.path.isdir(path):
        return _run_ticket(path, round_index)
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such ticket file or run directory", code=2)
    try:
        t = Ticket.load(path)
    except ValueError as e:
        raise CLIError(str(e), code=2) from None
    return t, f"{path} (round {t.round})"


def _pct(sparsity: float) -> str:
    """A pruned fraction as a percentage, never rounded to 0.0% / 100.0% unless it is."""
    text = f"{100 * sparsity:.1f}%"
    if text == "100.0%" and sparsity < 1.0:
        return ">99.9%"
    if text == "0.0%" and sparsity > 0.0:
        return "<0.1%"
    return text


def run(args) -> int:
    from lthfast.analysis.overlap import mask_overlap, random_iou
    if args.round is not None and not (os.path.isdir(args.a) or os.path.isdir(args.b)):
        raise CLIError(f"--round {args.round} is for run directories, but both TICKETs are files "
                       f"({args.a}, {args.b}): a ticket file holds one round", code=2)
    (a, what_a), (b, what_b) = _ticket(args.a, args.round), _ticket(args.b, args.round)
    try:
        res = mask_overlap(a, b, shared_only=args.shared)
    except ValueError as e:
        raise CLIError(str(e).replace("shared_only=True (lthfast compare --shared)", "--shared"),
                       code=2) from None
    rows = [[d["name"], d["params"], _pct(d["sparsity_a"]), _pct(d["sparsity_b"]),
             f"{d['iou']:.3f}", f"{random_iou(d['sparsity_a'], d['sparsity_b']):.3f}"]
            for d in res["layers"]]
    rows.append(["total", sum(d["params"] for d in res["layers"]), _pct(res["sparsity_a"]),
                 _pct(res["sparsity_b"]), f"{res['overall']:.3f}",
                 f"{res['chance']:.3f}"])
    print(f"A: {what_a}\nB: {what_b}\n")
    print(format_table(["layer", "params", "pruned A", "pruned B", "IoU", "chance"], rows))
    if res["only_a"] or res["only_b"]:
        print(f"\nnot compared: {len(res['only_a'])} layers only in A {res['only_a'][:6]}, "
              f"{len(res['only_b'])} only in B {res['only_b'][:6]}")
    if res["mismatched"]:
        print(f"not compared (other shapes): {res['mismatched'][:6]}")
    return 0
