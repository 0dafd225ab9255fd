"""The per-round checkpoint of an IMP run: everything needed to go on after a kill.

One file, `RUN_DIR/checkpoint.pt`, replaced atomically after every round's training
(`pending`: the round is trained but not evaluated, so a failed or interrupted
evaluation does not cost the training) and again after its evaluation. It holds
only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)` (nothing is unpickled). The ticket itself is the
round's `ticket.safetensors`.
"""
from __future__ import annotations

import random

import torch

from lthfast.imp.rundir import CHECKPOINT, RunDir, atomic_write

FORMAT = "lthfast-imp-checkpoint/1"


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                     "gauss": gauss}}
    try:
        import numpy as np
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        st["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _restore_rng(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    p = st["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "numpy" in st:
        import numpy as np
        n = st["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _run_id(run: RunDir) -> str | None:
    """The id config.json gives the run (None for runs made before ids were)."""
    try:
        rid = run.config().get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) else None


def save(run: RunDir, *, round_index: int, model, ticket, rewind, rows, objects: dict,
         ticket_digest: str | None = None, modes=None, pending: dict | None = None) -> None:
    """`ticket_digest`: of the round's ticket file, so that a resume can tell that the
    file is the one this checkpoint was written with. `modes`: [(module name, training)]
    as the run started, which every round trains from (a resume in the same process
    would otherwise take them from a model an eval_fn left in eval mode). `pending`:
    round `round_index` is trained, not evaluated (`rows` end before it); what its
    evaluation needs (start_iter, train_stats, prune_time_s, train_time_s)."""
    payload = {
        "format": FORMAT,
        "run_id": _run_id(run),
        "round": round_index,
        "ticket_digest": ticket_digest,
        # (a module's extra state is kept as it is: plain values load with weights_only)
        "model": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                  for k, v in model.state_dict().items()},
        "rewind": rewind,
        "rows": rows,
        "rng": _rng_state(),
    }
    if pending is not None:
        payload["pending"] = pending
    if modes is not None:
        payload["modes"] = [[name, bool(mode)] for name, mode in modes]
    for key in ("optimizer", "scheduler"):
        obj = objects.get(key)
        if obj is not None and hasattr(obj, "state_dict"):
            payload[key] = obj.state_dict()
    atomic_write(run.file(CHECKPOINT), lambda tmp: torch.save(payload, tmp))


def load(run: RunDir, ticket_cls) -> dict | None:
    """The state after the last finished round (or after the training of the round after
    it: `pending`), or None when no round was trained."""
    path = run.file(CHECKPOINT)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:
        raise ValueError(f"cannot resume: {path} is not a readable lthfast checkpoint "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"cannot resume: {path} is not an lthfast IMP checkpoint "
                         f"(format {payload.get('format') if isinstance(payload, dict) else None!r})")
    ours, theirs = _run_id(run), payload.get("run_id")
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(f"cannot resume: {path} was written by another run (run id {theirs}; "
                         f"this run's config.json says {ours}); copy the whole run directory "
                         "to continue a run elsewhere")
    r = int(payload["round"])
    ticket = ticket_cls.load(run.ticket_path(r))
    _restore_rng(payload["rng"])
    pending = payload.get("pending")
    if pending is not None:  # round r trained: evaluate it next, with what it trained with
        pending = {**pending, "objects": {k: payload[k] for k in ("optimizer", "scheduler")
                                          if payload.get(k) is not None}}
    return {"next_round": r if pending is not None else r + 1, "round": r, "pending": pending,
            "rows": list(payload["rows"]), "ticket": ticket,
            "trained": payload["model"], "rewind": payload["rewind"],
            "ticket_digest": payload.get("ticket_digest"),
            "optimizer": payload.get("optimizer"), "scheduler": payload.get("scheduler"),
            "modes": payload.get("modes")}
