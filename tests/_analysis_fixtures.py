"""Hand-made run directories and tickets for the lthfast.analysis tests."""
from __future__ import annotations

import json
import os

import torch

from lthfast.ticket import Ticket


def mask(bits, shape=None) -> torch.Tensor:
    t = torch.tensor(bits, dtype=torch.bool)
    return t.reshape(shape) if shape else t


def write_run(path, tickets: list, rows: list, *, task="detection", state="complete",
              settings=None) -> str:
    """A run directory as lthfast imp writes it: config, status, metrics, round_R tickets."""
    os.makedirs(path, exist_ok=True)
    cfg = {"schedule": {"rounds": len(rows) - 1, "layerwise": False, "rewind": "init"},
           "task": task, "model": "toy", "data": "shapes", "settings": settings or {"task": task}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": state, "round": len(rows) - 1}, f)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        json.dump(rows, f)
    for r, t in enumerate(tickets):
        os.makedirs(os.path.join(path, f"round_{r}"), exist_ok=True)
        t.save(os.path.join(path, f"round_{r}", "ticket.safetensors"))
    return str(path)


def three_round_tickets():
    """Rounds 0 (dense), 1, 2 of one 8-weight layer; the final keeps {0, 1}."""
    return [Ticket({"w": mask([1] * 8)}),
            Ticket({"w": mask([1, 1, 1, 0, 1, 0, 0, 0])}, round=1),
            Ticket({"w": mask([1, 1, 0, 0, 0, 0, 0, 0])}, round=2)]
