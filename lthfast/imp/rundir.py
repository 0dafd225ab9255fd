"""The files of an IMP run directory, every one written atomically.

RUN_DIR/
  config.json          what was asked (model, data, schedule, pruned set) and the run's id;
                       written first
  status.json          {"state": "running" | "complete" | "failed" | "interrupted",
                        "round": last done, "error": why it stopped (failed / interrupted;
                        "rank R: ..." when another DDP rank failed),
                        "pid", "host": the process that wrote it}
  metrics.json / .csv  one row per finished round
  pruned_params.txt    the exact set of pruned parameters, one name per line
  round_R/ticket.safetensors   the ticket of round R (round 0: dense)
  checkpoint.pt        the state to resume from: after the last finished round, or after the
                       training of the next one ("pending": its evaluation had not finished;
                       its round_R/ticket.safetensors is written with it)
  report.html          sparsity-vs-AP curve and per-layer sparsity (lthfast.imp.report)
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
from typing import Callable

from lthfast._atomic import atomic_write as _atomic_write

CHECKPOINT = "checkpoint.pt"


class RunDirBusy(RuntimeError):
    """Another process is running in this run directory."""


def hold(path: str) -> int | None:
    """Locks the run directory for this process (an exclusive flock on the folder itself,
    so no file is added to it; released when the descriptor is closed or the process
    ends): a second `lthfast imp`
    on the same folder stops at once instead of writing the same files. Returns the
    descriptor that holds the lock (None where flock does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(f"{path} is in use by another lthfast imp process; wait for it to end "
                         "(or stop it) before running or resuming there") from None
    except OSError:  # a file system without locks: run unlocked
        os.close(fd)
        return None
    return fd


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` then rename over `path`, creating the run's folders as needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_write(path, write)


def write_text(path: str, text: str) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, w)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    try:
        import torch
        if isinstance(x, torch.Tensor) and x.numel() == 1:
            return x.item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def metrics_csv(rows: list[dict]) -> str:
    """CSV of the metric rows; scalar columns only, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, (dict, list)):
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue()


def writer_gone(status: dict) -> bool:
    """True when `status` (status.json) was written on this machine by a process that no
    longer exists: a "running" run killed before it could record why."""
    pid, host = status.get("pid"), status.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    return False


class RunDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def ticket_path(self, round_index: int) -> str:
        return self.file(f"round_{round_index}", "ticket.safetensors")

    def exists(self) -> bool:
        return os.path.exists(self.file("config.json"))

    def start(self, config: dict, pruned_names: list[str]) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file("config.json"), config)
        write_text(self.file("pruned_params.txt"), "\n".join(pruned_names) + "\n")
        self.set_status("running", -1)

    def set_status(self, state: str, round_index: int, **extra) -> None:
        # who writes it: a "running" run whose process is gone was killed (kill -9, the
        # OOM killer), and the analyses need not wait for it (writer_gone)
        write_json(self.file("status.json"), {"state": state, "round": round_index, **extra,
                                              "pid": os.getpid(), "host": socket.gethostname()})

    def status(self) -> dict:
        try:
            return read_json(self.file("status.json"))
        except FileNotFoundError:
            return {"state": "unknown", "round": -1}

    def write_metrics(self, rows: list[dict]) -> None:
        write_json(self.file("metrics.json"), rows)
        write_text(self.file("metrics.csv"), metrics_csv(rows))

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.json ([] when there is none); ValueError naming the file
        when it is damaged (the checkpoint keeps the rows: a resume rewrites it)."""
        path = self.file("metrics.json")
        try:
            rows = read_json(path)
        except FileNotFoundError:
            return []
        except ValueError as e:  # JSONDecodeError, or undecodable bytes
            raise ValueError(f"{path} is damaged ({e}); the run's checkpoint keeps its rows, "
                             f"and --resume rewrites the file") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path} is damaged (not a list of rows); the run's checkpoint "
                             "keeps its rows, and --resume rewrites the file")
        return rows

    def config(self) -> dict:
        return read_json(self.file("config.json"))
