"""The IMP loop: train -> prune a fraction of the remaining weights -> rewind -> train.

Any model and any training loop: the caller gives `train_fn(ctx)` and
`eval_fn(model, ctx)`; the engine owns the schedule, the ticket, rewinding,
checkpoints and the run directory. Round 0 trains the dense model.

Resuming (`resume=True`) restarts after the last finished round from its
checkpoint. Each round reseeds every RNG from (seed, round) before training, so a
resumed run ends with the same tickets and metrics as an uninterrupted one (on
CPU; cuDNN may be nondeterministic unless the caller asks for determinism).
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from lthfast.imp import checkpoint as ckpt
from lthfast.imp.config import IMPConfig
from lthfast.imp.rundir import RunDir, write_json


@dataclass
class RoundContext:
    """What `train_fn` gets for one round.

    `train_fn` must train `model` for the iterations [start_iter, total), calling
    `on_iter(i, model)` after its i-th iteration (i counts from 1), and should use
    an optimizer that keeps the ticket's pruned weights at zero, e.g.
    `lthfast.optim.MaskedSGD(model.parameters(), ..., ticket=ctx.ticket)`. It may
    put its optimizer and scheduler in `ctx.objects` ("optimizer", "scheduler") to
    have their state saved in the round's checkpoint.
    """

    round: int
    model: nn.Module
    ticket: object
    start_iter: int
    seed: int
    on_iter: Callable[[int, nn.Module], None]
    objects: dict = field(default_factory=dict)


@dataclass
class IMPResult:
    rows: list
    ticket: object
    run_dir: str | None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def ticket_digest(ticket) -> str:
    """A hash of every mask bit, to check that all ranks hold the same ticket."""
    h = hashlib.sha256()
    for name in ticket.names():
        m = ticket[name].to("cpu").contiguous()
        h.update(name.encode())
        h.update(bytes(str(tuple(m.shape)), "ascii"))
        h.update(m.numpy().tobytes())
    return h.hexdigest()


def _check_same_ticket_on_all_ranks(ticket) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digest = ticket_digest(ticket)
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the pruning masks differ between ranks (digests {digests}); "
                           "every rank must hold the same weights before pruning")


def group_sparsity(ticket, group_of: Callable[[str], str] | None) -> dict:
    """Fraction pruned per group of parameters (e.g. backbone / fpn / rpn / roi_heads)."""
    if group_of is None:
        return {}
    total: dict[str, int] = {}
    kept: dict[str, int] = {}
    for name in ticket.names():
        g = group_of(name)
        total[g] = total.get(g, 0) + ticket.numel(name)
        kept[g] = kept.get(g, 0) + ticket.kept(name)
    return {f"sparsity_{g}": 1.0 - kept[g] / total[g] for g in total if total[g]}


def plain(x):
    """Metrics as plain Python values (JSON and weights_only checkpoints need them)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # undefined metrics (e.g. APl with no large objects): null in JSON
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy scalars
        return plain(x.item())
    return str(x)


def snapshot(model: nn.Module) -> dict:
    """A deep CPU copy of the model's state_dict (the rewind point)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class IMP:
    """Iterative magnitude pruning of `model` over the parameters `names`.

    `train_fn(ctx: RoundContext) -> dict` trains one round; `eval_fn(model, ctx) ->
    dict` returns metrics (floats; nested dicts go to metrics.json only).
    `group_of(name) -> str` adds a sparsity column per group. `out` is the run
    directory (None: nothing written); `meta` is saved in config.json.
    `log(str)` prints progress lines; `on_round(row)` is called after each round.
    `initial_ticket` (over exactly `names`) replaces the dense start: round 0 trains
    with that mask fixed and later rounds prune further from it (ticket transfer).
    """

    def __init__(self, model: nn.Module, names: list[str], *, train_fn, eval_fn,
                 config: IMPConfig, out: str | None = None, meta: dict | None = None,
                 group_of: Callable[[str], str] | None = None,
                 log: Callable[[str], None] | None = None,
                 on_round: Callable[[dict], None] | None = None, initial_ticket=None,
                 early_bird_every: int | None = None):
        from lthfast.ticket import Ticket
        if not names:
            raise ValueError("IMP needs at least one parameter to prune; `names` is empty")
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"parameters to prune not found in the model: {missing[:5]}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        self.model, self.names, self.config = model, list(names), config
        self.train_fn, self.eval_fn, self.group_of = train_fn, eval_fn, group_of
        self.meta = dict(meta or {})
        self.log = log or (lambda s: None)
        self.on_round = on_round or (lambda row: None)
        self.run = RunDir(out) if out is not None else None
        self.main = _is_main()
        self._Ticket = Ticket
        self.initial_ticket = initial_ticket
        if early_bird_every is not None and (isinstance(early_bird_every, bool)
                                             or not isinstance(early_bird_every, int)
                                             or early_bird_every <= 0):
            raise ValueError(f"early_bird_every must be a positive int, got {early_bird_every!r}")
        self.early_bird_every = early_bird_every
        if initial_ticket is not None:  # ticket transfer: start from a given mask
            if set(initial_ticket.names()) != set(self.names):
                raise ValueError("initial_ticket must cover exactly the pruned parameters `names`")
            initial_ticket.check(model)

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> dict:
        cfg = self.config
        ticket = (self.initial_ticket if self.initial_ticket is not None
                  else self._Ticket.dense(self.model, scope=self.names))
        rewind = cfg.rewind_point
        state = {"next_round": 0, "rows": [], "ticket": ticket, "trained": None,
                 "rewind": snapshot(self.model) if rewind.kind in ("init", "pretrained") else None}
        if self.run is not None and self.main:
            self.run.start({"schedule": cfg.to_dict(), **self.meta,
                            "pruned_params": len(self.names)}, self.names)
        return state

    def _resume_state(self) -> dict:
        if self.run is None or not self.run.exists():
            raise FileNotFoundError("nothing to resume: the run directory "
                                    f"{None if self.run is None else self.run.path!r} has no config.json")
        st = ckpt.load(self.run, self._Ticket)
        if st is None:  # killed before the first round finished: start over
            return self._fresh_state()
        self.model.load_state_dict(st["trained"])
        if self.main:  # config.json says what the run now does (a grown run: its new rounds)
            write_json(self.run.file("config.json"), {**self.run.config(), **self.meta,
                                                      "schedule": self.config.to_dict()})
        self.log(f"resuming {self.run.path} after round {st['next_round'] - 1}")
        return st

    # ------------------------------------------------------------------ loop
    def run_rounds(self, resume: bool = False) -> IMPResult:
        state = self._resume_state() if resume else self._fresh_state()
        try:
            return self._rounds(state)
        except BaseException as e:
            # status.json said "running" for ever after an error or Ctrl-C; the last
            # finished round's checkpoint stays valid for --resume
            if self.run is not None and self.main:
                done = state["rows"][-1]["round"] if state["rows"] else -1
                state_name = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                self.run.set_status(state_name, done, error=f"{type(e).__name__}: {e}"[:500])
            raise

    def _rounds(self, state: dict) -> IMPResult:
        cfg = self.config
        rewind = cfg.rewind_point
        rows, ticket = state["rows"], state["ticket"]
        for r in range(state["next_round"], cfg.rounds + 1):
            t_prune = time.perf_counter()
            collapsed_before = ticket.collapsed()
            if r > 0:
                ticket = ticket.prune(self.model, cfg.per_round_rate(), layerwise=cfg.layerwise)
                _check_same_ticket_on_all_ranks(ticket)
                if rewind.kind != "none":
                    if state["rewind"] is None:
                        raise RuntimeError(f"rewind point {rewind} was never reached: round 0 "
                                           f"ran fewer than {rewind.iteration} iterations")
                    self.model.load_state_dict(state["rewind"])
            ticket.apply(self.model)
            t_prune = time.perf_counter() - t_prune  # prune + rewind + mask: IMP's own overhead
            collapsed = ticket.collapsed()
            new = [n for n in collapsed if n not in collapsed_before]
            if new:
                self.log(f"warning: round {r} prunes every weight of {', '.join(new)} (layer "
                         "collapse: nothing flows through it any more); layer-wise pruning, a "
                         "scope without it or a lower rate avoid that")
            seed = cfg.seed * 1000 + r
            _seed_everything(seed)

            def on_iter(i, model, _r=r, _ticket=ticket):
                if _r == 0 and rewind.kind == "iter" and i == rewind.iteration:
                    state["rewind"] = snapshot(model)
                if _r == 0 and self.early_bird_every and i % self.early_bird_every == 0:
                    self._save_early_bird(i, model, _ticket)

            start = rewind.iteration if (r > 0 and rewind.kind == "iter") else 0
            if r == 0 and rewind.kind == "iter" and rewind.iteration == 0:
                state["rewind"] = snapshot(self.model)
            ctx = RoundContext(round=r, model=self.model, ticket=ticket, start_iter=start,
                               seed=seed, on_iter=on_iter)
            sparsity = ticket.sparsity()
            self.log(f"round {r}/{cfg.rounds}: sparsity {100 * sparsity:.1f}%, training "
                     f"from iteration {start}")
            t0 = time.perf_counter()
            train_stats = self.train_fn(ctx) or {}
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = self.eval_fn(self.model, ctx) or {}
            t_eval = time.perf_counter() - t0
            row = {"round": r, "sparsity": sparsity, **group_sparsity(ticket, self.group_of),
                   "collapsed_layers": len(collapsed), **metrics, "prune_time_s": t_prune,
                   "train_time_s": t_train, "eval_time_s": t_eval,
                   **{f"train_{k}": v for k, v in train_stats.items()
                      if isinstance(v, (int, float))}}
            row = plain(row)
            rows.append(row)
            if self.run is not None and self.main:
                ticket.meta.update({"round": r})
                os.makedirs(os.path.dirname(self.run.ticket_path(r)), exist_ok=True)
                ticket.save(self.run.ticket_path(r))
                ckpt.save(self.run, round_index=r, model=self.model, ticket=ticket,
                          rewind=state["rewind"], rows=rows, objects=ctx.objects)
                self.run.write_metrics(rows)
                self.run.set_status("running" if r < cfg.rounds else "complete", r)
                self._write_report()
            self.on_round(row)
        if self.run is not None and self.main and not rows:
            self.run.set_status("complete", -1)
        return IMPResult(rows=rows, ticket=ticket,
                         run_dir=None if self.run is None else self.run.path)

    def _save_early_bird(self, i: int, model: nn.Module, ticket) -> None:
        """The mask round 1 would get if round 0 stopped after iteration i (early-bird
        analysis: lthfast.analysis.early_bird_iterations compares it with round 1's)."""
        if self.run is None or not self.main or self.config.rounds < 1:
            return
        early = ticket.prune(model, self.config.per_round_rate(), layerwise=self.config.layerwise)
        early.meta.update({"iteration": i})
        path = self.run.file("round_0", "early_bird", f"iter_{i:07d}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        early.save(path)

    def _write_report(self) -> None:
        try:
            from lthfast.imp.report import write_run_report
            write_run_report(self.run.path)
        except Exception as e:  # a report problem must not lose the run
            self.log(f"warning: report.html not written: {type(e).__name__}: {e}")


def run_imp(model: nn.Module, names: list[str], *, train_fn, eval_fn, config: IMPConfig,
            out: str | None = None, resume: bool = False, **kwargs) -> IMPResult:
    """Runs IMP; see `IMP`. `resume=True` continues the run in `out`."""
    return IMP(model, names, train_fn=train_fn, eval_fn=eval_fn, config=config, out=out,
               **kwargs).run_rounds(resume=resume)
