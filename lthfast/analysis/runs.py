"""Reading IMP run directories for the analyses, with clear errors for bad input:
a path that is no run, a run with no finished round, a run still being written,
runs of different tasks compared where that makes no sense."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from lthfast.imp.rundir import RunDir


class RunError(ValueError):
    """A run directory that cannot be analysed (the message says why)."""


class RunningWarning(UserWarning):
    """The run directory is still being written; the analysis covers the finished rounds."""


@dataclass
class Run:
    path: str
    label: str
    config: dict
    rows: list
    status: dict

    @property
    def task(self) -> str:
        return self.config.get("task") or self.config.get("settings", {}).get("task", "?")

    @property
    def settings(self) -> dict:
        return self.config.get("settings", {})

    @property
    def rounds(self) -> list[int]:
        return [int(r["round"]) for r in self.rows]

    def ticket_path(self, round_index: int) -> str:
        return RunDir(self.path).ticket_path(round_index)

    def ticket(self, round_index: int | None = None):
        """The ticket of `round_index` (default: the last finished round)."""
        from lthfast.ticket import Ticket
        r = self.rounds[-1] if round_index is None else int(round_index)
        if r < 0:
            r = self.rounds[r]
        path = self.ticket_path(r)
        if not os.path.exists(path):
            raise RunError(f"run {self.path}: round {r} has no ticket ({path} is missing); "
                           f"finished rounds: {self.rounds}")
        return Ticket.load(path)

    def running(self) -> bool:
        return self.status.get("state") == "running"


def _nan_for_null(x):
    """metrics.json writes undefined metrics (e.g. APl with no large objects) as null;
    the analyses compute with them as NaN."""
    if isinstance(x, dict):
        return {k: _nan_for_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_for_null(v) for v in x]
    return float("nan") if x is None else x


def load_run(path: str, *, label: str | None = None, allow_running: bool = True) -> Run:
    """The run in `path`. RunError when it is not a run or no round finished; a run still
    being written (status.json says running) warns (RunningWarning) or, with
    `allow_running=False`, is refused."""
    if not os.path.isdir(path):
        raise RunError(f"{path}: no such run directory")
    run = RunDir(path)
    if not run.exists():
        raise RunError(f"{path}: not an lthfast run directory (no config.json)")
    status = run.status()
    rows = _nan_for_null(run.read_metrics())
    if status.get("state") == "running":
        msg = (f"run {path} is still being written (status.json: running, last finished round "
               f"{status.get('round')}); only its finished rounds are used")
        if not allow_running:
            raise RunError(msg.replace("; only its finished rounds are used",
                                       "; wait for it to finish"))
        warnings.warn(msg, RunningWarning, stacklevel=2)
    elif status.get("state") in ("failed", "interrupted"):
        warnings.warn(f"run {path} stopped before its last round ({status['state']}: "
                      f"{status.get('error', '?')}); only its finished rounds are used "
                      f"(`lthfast imp --resume {path}` continues it)", RunningWarning, stacklevel=2)
    if not rows:
        raise RunError(f"run {path} is empty: no round finished yet (metrics.json has no rows; "
                       f"status {status.get('state')!r})")
    return Run(path=run.path, label=label or os.path.basename(run.path.rstrip(os.sep)),
               config=run.config(), rows=rows, status=status)


def unique_labels(runs: list[Run]) -> None:
    """Makes the runs' labels distinct (parent dir added where basenames collide)."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            parent = os.path.basename(os.path.dirname(r.path))
            r.label = f"{parent}/{r.label}"


def check_same_task(runs: list[Run], what: str) -> str:
    """The common task of `runs`; RunError naming each run's task when they differ."""
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        listing = ", ".join(f"{r.label}: {r.task}" for r in runs)
        raise RunError(f"{what} compares runs of one task, but these runs are of different "
                       f"tasks ({listing}); their metrics are not comparable")
    return tasks.pop()
