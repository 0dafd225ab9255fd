"""The `lthfast` command: one subcommand per module in this package.

Each command module defines `add_parser(subparsers)` (which sets `func` to its
runner) and keeps heavy imports (torchvision) inside its runner, so `lthfast
--help` stays fast. To add a command, add its module name to COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lthfast._version import __version__
from lthfast.cli._common import CLIError

COMMANDS = ("info", "imp", "prune", "bench", "report", "compare", "perturb")

_EPILOG = """\
examples:
  lthfast imp                                    IMP on the built-in demo (small Faster R-CNN, shapes)
  lthfast imp --task segmentation --out runs/seg IMP of a small Mask R-CNN; see `lthfast imp --help`
  lthfast info                                   what was built (CPU/CUDA kernels, archs, ops)
  lthfast prune resnet50 --amount 0.8            prune a random-init resnet50 to 80% sparsity
  lthfast prune ckpt.pth --arch resnet50 --amount 0.2 --save pruned.pth
  lthfast bench threshold --json bench.json      baseline vs lthfast, table + JSON
  lthfast report runs/a runs/b --out report.html  compare IMP runs (AP by size/frequency, overlap, ...)
  lthfast compare runs/a runs/b                  IoU of two tickets, per layer
  lthfast perturb runs/a                         retrain the complement / random / swapped masks

run `lthfast COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lthfast",
        description="lthfast: find lottery tickets fast (iterative magnitude pruning of "
                    "torchvision detection and classification models).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lthfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        importlib.import_module(f"lthfast.cli.{name}").add_parser(sub)
    parser.commands = sub.choices  # name -> the command's parser
    return parser


# The `vision` extra (pyproject.toml): what the detection / classification commands
# import lazily. pip name for each module.
_OPTIONAL = {"torchvision": "torchvision  (or: pip install 'lthfast[vision]')",
             "pycocotools": "pycocotools  (or: pip install 'lthfast[vision]')",
             "matplotlib": "matplotlib  (or: pip install 'lthfast[vision]')"}


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]) and returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # as the command's own usage error, not the top level's
            command = parser.commands.get(getattr(args, "command", None) or "")
            (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, --version, usage errors (argparse prints them)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. for `imp --nproc`
    # A command's --threads is for that command, not for a Python caller of main()
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"lthfast {args.command}: error: {e}", file=sys.stderr, flush=True)
        return e.code
    except ModuleNotFoundError as e:
        if e.name not in _OPTIONAL:  # a real bug: keep the traceback
            raise
        print(f"lthfast {args.command}: error: this command needs {e.name}, which is not "
              f"installed; install it with: pip install {_OPTIONAL[e.name]}",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"lthfast {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # e.g. `lthfast prune ... | head`
        return 0
    finally:
        if threads is not None and sys.modules["torch"].get_num_threads() != threads:
            sys.modules["torch"].set_num_threads(threads)
