"""Small helpers shared by the `lthfast` commands and the benchmark runner:
errors, progress lines, plain-text tables, atomic file writes, size formatting."""
from __future__ import annotations

import contextlib
import os
import tempfile
import sys
import time
from typing import Callable, Iterable, Sequence

from lthfast._atomic import atomic_write as _atomic_write


class CLIError(Exception):
    """A user-facing error: printed as `lthfast CMD: error: MESSAGE`, exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def int_at_least(minimum: int):
    """An argparse `type=` for integers >= minimum, with an error naming the value."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"{text} must be {need}")
        return v
    return parse


def eprint(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, flush=True, **kwargs)


@contextlib.contextmanager
def step(message: str, *, quiet: bool = False):
    """Prints `message ... done (1.23 s)` on stderr around a block of work."""
    if not quiet:
        eprint(f"{message} ...", end="")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        if not quiet:
            eprint(" failed")
        raise
    if not quiet:
        eprint(f" done ({time.perf_counter() - t0:.2f} s)")


class Progress:
    """A progress indicator over `total` items on stderr: tqdm when installed,
    otherwise one `[i/total] description` line per item."""

    def __init__(self, total: int, desc: str = "", *, quiet: bool = False):
        self.total, self.desc, self.quiet, self.n = total, desc, quiet, 0
        self._bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm  # optional
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
            except ImportError:
                pass

    def start(self, item: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(item, refresh=True)
        else:
            eprint(f"  [{self.n + 1}/{self.total}] {item}")

    def note(self, message: str) -> None:
        """A line about work that is not one of the counted items."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(f"  {message}", file=sys.stderr)
        else:
            eprint(f"  {message}")

    def done(self, note: str = "") -> None:
        self.n += 1
        if self._bar is not None:
            self._bar.update(1)
            if note:
                self._bar.write(f"  {note}", file=sys.stderr)
        elif note and not self.quiet:
            eprint(f"      {note}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                 align: str | None = None) -> str:
    """A plain-text table. `align` has one char per column: 'l' or 'r' (default:
    first column left, the rest right)."""
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """lthfast._atomic.atomic_write, with a CLIError when the folder does not exist."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise CLIError(f"cannot write {os.fspath(path)!r}: directory {directory!r} does not exist")
    _atomic_write(path, write)


def check_writable_target(path: str | os.PathLike, what: str) -> None:
    """Fails early (before long work) when `path` cannot be written."""
    path = os.fspath(path)
    if not path.strip():
        raise CLIError(f"{what} is empty; give a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"{what} {path!r} is a directory; give a file path")
    if not os.path.isdir(directory):
        raise CLIError(f"{what} {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise CLIError(f"{what} {path!r}: directory {directory!r} is not writable")
    try:  # os.access says yes to root even where nothing can be created (/proc, read-only mounts)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".lthfast-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"{what} {path!r}: cannot create a file in {directory!r} ({e.strerror})") from None


def resolve_device(name: str):
    """torch.device for --device NAME, or a CLIError when lthfast cannot run there."""
    import torch

    from lthfast import _ops
    if name == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is "
                           "False); use --device cpu")
        if _ops.available() and not _ops.build_info().get("cuda"):
            raise CLIError("--device cuda: lthfast was built without CUDA kernels (see `lthfast "
                           "info`); rebuild it with a CUDA toolkit and a CUDA build of torch, or "
                           "use --device cpu")
    return torch.device(name)
