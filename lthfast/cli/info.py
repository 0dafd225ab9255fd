"""`lthfast info`: what was built (CPU/CUDA kernels, CUDA archs, torch) and what runs here."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info", help="show what lthfast was built with and what this machine can run",
        description="Prints the lthfast version, the torch it runs on and was built against, "
                    "whether the CPU and CUDA kernels were compiled (CUDA version and archs), "
                    "the visible GPUs and the ops registered under torch.ops.lthfast.",
        epilog="examples:\n  lthfast info\n  lthfast info --json > info.json\n"
               "  python -m lthfast.info",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the facts as JSON instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from lthfast import info
    facts = info.collect()
    print(json.dumps(facts, indent=2, default=str) if args.json else info.format_report(facts))
    return 0
