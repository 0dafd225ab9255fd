"""Reading IMP run directories for the analyses, with clear errors for bad input:
a path that is no run, a run with no finished round, a run still being written,
a damaged config.json / status.json / metrics.json, runs of different tasks compared
where that makes no sense."""
from __future__ import annotations

import json
import numbers
import os
import warnings
from dataclasses import dataclass, field

from lthfast.imp.rundir import RunDir, writer_gone


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
    # True: `label` was given (load_run(label=...)) and is kept as it is by unique_labels;
    # False: the folder name, which unique_labels may lengthen; None (a Run made by hand):
    # given when it differs from the folder name
    label_given: bool | None = field(default=None, compare=False, repr=False)

    @property
    def task(self) -> str:
        return self.config.get("task") or self.settings.get("task", "?")

    @property
    def settings(self) -> dict:
        s = self.config.get("settings", {})
        return s if isinstance(s, dict) else {}

    @property
    def rounds(self) -> list[int]:
        return [int(r["round"]) for r in self.rows]

    def ticket_path(self, round_index: int) -> str:
        return RunDir(self.path).ticket_path(round_index)

    def ticket(self, round_index: int | None = None):
        """The ticket of finished round `round_index` (default: the last finished round;
        a negative index counts back from it: -1 is the last). RunError naming the run,
        the round and the finished rounds when there is no such finished round or its
        ticket file is missing; ValueError naming the file when it is damaged."""
        from lthfast.ticket import Ticket
        rounds = self.rounds
        if round_index is not None and (isinstance(round_index, bool)
                                        or not isinstance(round_index, numbers.Integral)):
            raise TypeError(f"round_index={round_index!r} must be an int (a round of run "
                            f"{self.path}: one of {rounds}, or negative to count back from "
                            "the last) or None")
        if not rounds:
            raise RunError(f"run {self.path} has no finished round (round {round_index} asked "
                           "for)")
        r = rounds[-1] if round_index is None else int(round_index)
        if r < 0:
            if -r > len(rounds):
                raise RunError(f"run {self.path} has no round {r}: it has {len(rounds)} finished "
                               f"round(s) {rounds} (a negative round counts back from the "
                               "last: -1 is the last)")
            r = rounds[r]
        elif r not in rounds:
            raise RunError(f"run {self.path} has no finished round {r}; finished rounds: "
                           f"{rounds}")
        path = self.ticket_path(r)
        if not os.path.exists(path):
            raise RunError(f"run {self.path}: round {r} has no ticket ({path} is missing); "
                           f"finished rounds: {rounds}")
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


def read_json_file(path: str, kind: type, what: str):
    """The JSON value in `path` (None when the file is missing); RunError naming the file
    and the problem when it cannot be read or is not a JSON value of `kind` (dict/list)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RunError(f"{path}: cannot read the run's {what}: {e}") from None
    if not isinstance(value, kind):
        raise RunError(f"{path}: the run's {what} is a JSON {type(value).__name__}, not a JSON "
                       f"{'object' if kind is dict else 'list'} (damaged, or not written by "
                       "lthfast imp)")
    return value


def check_metric_rows(rows: list, path: str) -> None:
    """RunError naming `path` (the metrics.json), the row and the problem when a row is not
    a JSON object with a round number and a sparsity in [0, 1]."""
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            raise RunError(f"{where} is {row!r:.60}, not a JSON object (damaged metrics)")
        r, s = row.get("round"), row.get("sparsity")
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise RunError(f"{where} has round {r!r}, not a round number (damaged metrics)")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise RunError(f"{where} (round {r}) has sparsity {s!r}, not a fraction in [0, 1] "
                           "(damaged metrics)")


def check_run_files(path: str) -> tuple[dict | None, dict | None, list | None]:
    """(config, status, metrics rows) of the run directory `path`, each None when its file
    is missing; RunError naming the file and the problem when one is not what lthfast imp
    writes (a damaged or hand-edited run). (None, None, None) when `path` is no directory
    (load_run says so)."""
    if not os.path.isdir(path):
        return None, None, None
    config = read_json_file(os.path.join(path, "config.json"), dict, "configuration")
    status = read_json_file(os.path.join(path, "status.json"), dict, "status")
    metrics = os.path.join(path, "metrics.json")
    rows = read_json_file(metrics, list, "metrics")
    check_metric_rows(rows or [], metrics)
    return config, status, rows


def load_run(path: str, *, label: str | None = None, allow_running: bool = True) -> Run:
    """The run in `path`. RunError when it is not a run, one of its config.json /
    status.json / metrics.json is damaged, or no round finished; a run still being written
    (status.json says running) warns (RunningWarning) or, with `allow_running=False`, is
    refused. `label` names the run in reports (default: its folder name)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path={path!r} must be a run directory path (str or os.PathLike), "
                        f"not {type(path).__name__}")
    path = os.fspath(path)
    if label is not None:
        if not isinstance(label, str):
            raise TypeError(f"label={label!r} must be a str or None, not {type(label).__name__}")
        if not label.strip():
            raise RunError(f"label={label!r} for run {path} is empty; give a name or None "
                           "(the folder name)")
    if not os.path.isdir(path):
        raise RunError(f"{path}: is a file, not a run directory" if os.path.exists(path)
                       else f"{path}: no such run directory")
    run = RunDir(path)
    if not os.path.exists(run.file("config.json")):
        raise RunError(f"{path}: not an lthfast run directory (no config.json)")
    config, status, rows = check_run_files(run.path)
    if config is None:  # removed since the check above
        raise RunError(f"{path}: not an lthfast run directory (no config.json)")
    if status is None:
        status = {"state": "unknown", "round": -1}
    rows = _nan_for_null(rows or [])
    if status.get("state") == "running" and writer_gone(status):
        warnings.warn(f"run {path} stopped before its last round (status.json says running, but "
                      f"process {status['pid']}, which wrote it, is gone: killed, e.g. kill -9 or "
                      "out of memory); only its finished rounds are used "
                      f"(`lthfast imp --resume {path}` continues it)", RunningWarning, stacklevel=2)
    elif status.get("state") == "running":
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
        state = status.get("state")
        if state == "running" and writer_gone(status):
            how = (f"it was killed: status.json says running, but process {status['pid']}, "
                   "which wrote it, is gone")
        elif state in ("failed", "interrupted"):
            how = f"it {'failed' if state == 'failed' else 'was interrupted'}: {status.get('error', '?')}"
        else:
            how = f"metrics.json has no rows; status {state!r}"
        hint = (f"; `lthfast imp --resume {path}` continues it" if how.startswith("it ") else "")
        raise RunError(f"run {path} is empty: no round finished yet ({how}){hint}")
    return Run(path=run.path, label=label or os.path.basename(run.path.rstrip(os.sep)),
               config=config, rows=rows, status=status, label_given=label is not None)


def _path_parts(path: str) -> list[str]:
    return [p for p in os.path.abspath(os.fspath(path)).rstrip(os.sep).split(os.sep) if p] or [os.sep]


def distinct_labels(paths: list[str], *, taken=()) -> list[str]:
    """A name per run directory: its folder name, with as many parent folders as it takes
    to tell the runs apart (exp1/s0/run and exp2/s0/run: "exp1/s0/run", "exp2/s0/run") and
    from the names in `taken`. RunError when two paths cannot be told apart (one run
    directory given twice) or a path's every name is taken."""
    parts = [_path_parts(p) for p in paths]
    depth = [1] * len(paths)
    taken = set(taken)
    while True:
        labels = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        seen: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            seen.setdefault(label, []).append(i)
        clashes = [ix for label, ix in seen.items() if len(ix) > 1 or label in taken]
        if not clashes:
            return labels
        grew = False
        for ix in clashes:
            for i in ix:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    grew = True
        if not grew:
            ix = clashes[0]
            if len(ix) > 1:
                raise RunError(f"run directory {paths[ix[0]]} is given more than once "
                               f"(as {', '.join(repr(os.fspath(paths[i])) for i in ix)})")
            raise RunError(f"run {paths[ix[0]]}: its name {labels[ix[0]]!r} is the label given "
                           "to another run; give each run its own label")


def _label_given(run: Run) -> bool:
    if run.label_given is not None:
        return bool(run.label_given)
    return run.label != os.path.basename(os.path.abspath(run.path).rstrip(os.sep))


def unique_labels(runs: list[Run]) -> None:
    """Makes the runs' labels distinct, in place: a label given (load_run(label=...)) is
    kept, and two runs given one label are a RunError (reports key their tables and plots
    by label: one run would hide the other); a folder-name label gets as many parent
    folders as it takes to differ from every other label (see distinct_labels). Nothing
    is changed when it raises."""
    given = [r for r in runs if _label_given(r)]
    names: dict[str, list[Run]] = {}
    for r in given:
        names.setdefault(r.label, []).append(r)
    dup = [(label, rs) for label, rs in names.items() if len(rs) > 1]
    if dup:
        label, rs = dup[0]
        raise RunError(f"label {label!r} is given to {len(rs)} runs ("
                       + ", ".join(r.path for r in rs) + "); give each run its own label")
    rest = [r for r in runs if not _label_given(r)]
    labels = distinct_labels([r.path for r in rest], taken=names)
    for r, label in zip(rest, labels):
        r.label = label


def check_same_task(runs: list[Run], what: str) -> str:
    """The common task of `runs`; RunError naming each run's task when they differ."""
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        listing = ", ".join(f"{r.label}: {r.task}" for r in runs)
        raise RunError(f"{what} compares runs of one task, but these runs are of different "
                       f"tasks ({listing}); their metrics are not comparable")
    return tasks.pop()
