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

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lthfast.imp import checkpoint as ckpt
from lthfast.imp import ddp
from lthfast.imp.config import IMPConfig
from lthfast.imp.round_state import (  # noqa: F401  (also re-exported: engine.snapshot, ...)
    _as_metrics, _check_names, _check_same_ticket_on_all_ranks, _is_main, _raise_on_all_ranks,
    _SavedState, _seed_everything, group_sparsity, plain, snapshot, ticket_digest)
from lthfast.imp.rundir import RunDir, write_json


@dataclass
class RoundContext:
    """What `train_fn` gets for one round.

    `train_fn` must train `model` for the iterations [start_iter, total), calling
    `on_iter(i, model)` after its i-th iteration (i counts from 1; the engine snapshots
    its own `ctx.model`, so a DDP / compiled wrapper of it may be passed), and should use
    an optimizer that keeps the ticket's pruned weights at zero, e.g.
    `lthfast.optim.MaskedSGD(model.parameters(), ..., ticket=ctx.ticket)`. It may
    put its optimizer and scheduler in `ctx.objects` ("optimizer", "scheduler") to
    have their state saved in the round's checkpoint (a record: a resumed run does
    not hand it back, so build the optimizer and scheduler afresh in every round;
    state that `train_fn` carries from one round to the next is lost on resume).
    Before each call the engine puts every module back in the train/eval mode it
    had when the run started (an `eval_fn` that calls `model.eval()` does not leak
    into the next round, and a resumed run trains in the same modes).
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


# What the engine writes into config.json itself: `meta` may not replace them.
_ENGINE_CONFIG_KEYS = ("run_id", "schedule", "pruned_params", "initial_ticket")
# Columns the engine writes before eval_fn's metrics (and sparsity_<group> with group_of).
# A metric with one of these names used to overwrite them silently ("round": resume then
# read the wrong round). The *_time_s columns come after the metrics: the engine's win.
RESERVED_COLUMNS = ("round", "sparsity", "collapsed_layers")
# Schedule settings a resumed run keeps (its results depend on them); `rounds` may grow.
FIXED_ON_RESUME = ("rate", "target", "layerwise", "rewind", "seed")


class IMP:
    """Iterative magnitude pruning of `model` over the parameters `names`.

    `train_fn(ctx: RoundContext) -> dict | None` trains one round; `eval_fn(model,
    ctx) -> dict | None` returns metrics (numbers; nested dicts and lists go to
    metrics.json only; NaN / inf are written as null). A metric may not be named like a
    column the engine writes before it (`RESERVED_COLUMNS`, `sparsity_<group>`);
    train_fn's numbers (tensors too) appear as `train_<key>`.
    `group_of(name) -> str` adds a sparsity column per group. `out` is the run
    directory (None: nothing written); a fresh run refuses one that already holds a
    run (continue that with `resume=True`). `meta` is saved in config.json.
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
        # said now, not after round 0 trained (eval_fn=None failed once training was done,
        # and the run folder then refused the corrected call)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, IMPConfig):
            raise TypeError(f"config must be an lthfast.imp.IMPConfig, got {type(config).__name__}"
                            " (e.g. IMPConfig(rounds=3, rate=0.2))")
        for arg, fn in (("train_fn", train_fn), ("eval_fn", eval_fn)):
            if not callable(fn):
                raise TypeError(f"{arg} must be callable, got {type(fn).__name__} {fn!r:.60}")
        for arg, fn in (("group_of", group_of), ("log", log), ("on_round", on_round)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{arg} must be callable or None, got {type(fn).__name__}")
        if initial_ticket is not None and not isinstance(initial_ticket, Ticket):
            raise TypeError(f"initial_ticket must be an lthfast.Ticket or None, got "
                            f"{type(initial_ticket).__name__}")
        self.model, self.names, self.config = model, _check_names(model, names), config
        self.train_fn, self.eval_fn, self.group_of = train_fn, eval_fn, group_of
        self.meta = dict(meta or {})
        clash = sorted(set(self.meta) & set(_ENGINE_CONFIG_KEYS))
        if clash:  # they would replace the engine's own (a resume then checked nothing)
            raise ValueError(f"meta keys {clash} are written by the engine itself into "
                             "config.json; rename them")
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
            if config.target is not None and initial_ticket.sparsity() > config.target:
                raise ValueError(f"target={config.target!r} is below the sparsity of the starting "
                                 f"ticket (initial_ticket / --ticket: {initial_ticket.sparsity():.2%}):"
                                 " pruning cannot lower it")
        # train/eval mode of every module now: put back before each round's training
        self._modes = [(n, m.training) for n, m in model.named_modules()]

    # ------------------------------------------------------------------ state
    def _fresh_state(self, *, over_old_attempt: bool = False) -> dict:
        cfg = self.config
        error = None
        if self.run is not None and self.main and not over_old_attempt and (
                self.run.exists() or os.path.exists(self.run.file(ckpt.CHECKPOINT))):
            # it would have been overwritten file by file, and a resume after a kill in
            # round 0 would have gone on from the old run's checkpoint
            error = FileExistsError(
                f"{self.run.path} already holds an IMP run: continue it with resume=True "
                "(more rounds grow it), or give another `out`")
        _raise_on_all_ranks(error, "checking the run directory")
        ticket = (self.initial_ticket if self.initial_ticket is not None
                  else self._Ticket.dense(self.model, scope=self.names))
        rewind = cfg.rewind_point
        state = {"next_round": 0, "rows": [], "ticket": ticket, "trained": None,
                 "rewind": snapshot(self.model) if rewind.kind in ("init", "pretrained") else None,
                 "saved_round": -1, "kept0": ticket.kept()}
        if self.run is not None and self.main:
            # the id ties checkpoint.pt to this run: a resume refuses one copied from another
            self.run.start({"run_id": uuid.uuid4().hex, "schedule": cfg.to_dict(), **self.meta,
                            "pruned_params": len(self.names),
                            "initial_ticket": self._initial_ticket_record()}, self.names)
        return state

    def _check_resumable(self) -> None:
        """The run in `out` was made with this schedule and these parameters."""
        cfg, run = self.config, self.run
        try:
            sched = run.config().get("schedule") or {}
        except (ValueError, AttributeError) as e:
            raise ValueError(f"cannot resume {run.path}: config.json is not readable ({e})") from None
        changed = [f"{k}={sched[k]!r} (now {getattr(cfg, k)!r})" for k in FIXED_ON_RESUME
                   if k in sched and sched[k] != getattr(cfg, k)]
        if cfg.target is not None and "rounds" in sched and sched["rounds"] != cfg.rounds:
            changed.append(f"rounds={sched['rounds']!r} (now {cfg.rounds!r}; with a target "
                           "sparsity the rate per round follows from the rounds)")
        if changed:
            raise ValueError(f"cannot resume {run.path}: it was made with {', '.join(changed)}; "
                             "resume with the run's own settings (only `rounds` may grow)")
        try:
            with open(run.file("pruned_params.txt"), encoding="utf-8") as f:
                saved = [line for line in f.read().splitlines() if line]
        except FileNotFoundError:
            return
        if set(saved) != set(self.names):
            a, b = set(saved), set(self.names)
            raise ValueError(f"cannot resume {run.path}: it prunes other parameters (only in the "
                             f"run: {sorted(a - b)[:5]}, only in `names`: {sorted(b - a)[:5]})")

    def _initial_ticket_record(self) -> dict | None:
        t = self.initial_ticket
        return None if t is None else {"digest": ticket_digest(t), "sparsity": t.sparsity()}

    def _check_same_start(self) -> None:
        """A run killed in round 0 starts over: from the ticket it started from (or dense),
        not silently from another one."""
        try:
            config = self.run.config()
        except (ValueError, AttributeError, OSError):
            return
        if not isinstance(config, dict) or "initial_ticket" not in config:  # (older runs)
            return
        saved, now = config["initial_ticket"], self._initial_ticket_record()
        if (saved or {}).get("digest") != (now or {}).get("digest"):
            def say(x):
                return ("dense" if x is None else
                        f"an initial_ticket of sparsity {float(x.get('sparsity', 0)):.2%}")
            error = ValueError(f"cannot resume {self.run.path}: it started from {say(saved)}, "
                               f"this resume from {say(now)} (pass the run's own initial_ticket)")
        else:
            error = None
        _raise_on_all_ranks(error, f"resuming {self.run.path}")

    def _check_model_matches(self, trained: dict) -> None:
        own = self.model.state_dict()
        missing = [k for k in trained if k not in own]
        extra = [k for k in own if k not in trained]
        shapes = [f"{k}: run {tuple(v.shape)}, model {tuple(own[k].shape)}"
                  for k, v in trained.items()
                  if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
                  and tuple(v.shape) != tuple(own[k].shape)]  # (extra state: no shape)
        if missing or extra or shapes:
            raise ValueError(f"cannot resume {self.run.path}: the model differs from the run's "
                             f"(only in the run: {missing[:5]}, only in the model: {extra[:5]}, "
                             f"other shapes: {shapes[:5]})")

    def _resume_state(self) -> dict:
        if self.run is None or not self.run.exists():
            raise FileNotFoundError("nothing to resume: the run directory "
                                    f"{None if self.run is None else self.run.path!r} has no config.json")
        st, error = None, None
        try:  # every rank checks (before rank 0 rewrites config.json) and all agree
            self._check_resumable()
            st = ckpt.load(self.run, self._Ticket)
            if st is not None:
                self._check_model_matches(st["trained"])
                if st.get("ticket_digest") not in (None, ticket_digest(st["ticket"])):
                    raise ValueError(f"cannot resume {self.run.path}: "
                                     f"{self.run.ticket_path(st['round'])} is not the "
                                     "ticket its checkpoint was written with")
                # a pending round (trained, not evaluated) counts: its weights replaced
                # the round before's, which a run of fewer rounds would end with
                done = st["round"] if st.get("pending") is not None else st["next_round"] - 1
                if self.config.rounds < done:
                    how = "trained" if st.get("pending") is not None else "finished"
                    raise ValueError(f"cannot resume {self.run.path} with rounds="
                                     f"{self.config.rounds}: it has already {how} round "
                                     f"{done} (rounds can grow a run, not shrink it)")
                st["ticket"].check(self.model)
        except (ValueError, OSError) as e:
            error = e
        _raise_on_all_ranks(error, f"resuming {self.run.path}")
        if st is None:  # killed before round 0 was trained: start over, from the same start
            self._check_same_start()
            return self._fresh_state(over_old_attempt=True)
        self.model.load_state_dict(st["trained"])
        if st.get("modes") is not None:  # (checkpoints before stop 29 have none)
            self._modes = [(str(n), bool(m)) for n, m in st["modes"]]
        st["saved_round"] = st["next_round"] - 1
        st["kept0"] = None  # read from round 0's ticket when a target schedule needs it
        if self.main:  # config.json says what the run now does (a grown run: its new rounds)
            write_json(self.run.file("config.json"), {**self.run.config(), **self.meta,
                                                      "schedule": self.config.to_dict()})
            self.run.set_status("running", st["saved_round"])
        self.log(f"resuming {self.run.path}: round {st['round']} is trained, its evaluation "
                 "goes first" if st.get("pending") is not None else
                 f"resuming {self.run.path} after round {st['saved_round']}")
        return st

    def _amount(self, r: int, ticket, state: dict):
        """What round r prunes. `target` is the final sparsity of the whole prunable set
        (the `sparsity` column), a starting ticket's pruned weights included: the kept
        fraction goes geometrically from round 0's, k0, to 1 - target over the rounds,
        k_r = k0 * ((1 - target) / k0) ** (r / rounds). Globally that is a count, so that
        after round r exactly round(s_r * n) of the n weights are pruned (per-round rates
        would not add up after rounding; the last round lands on the target as one-shot
        pruning does); layer-wise, each tensor prunes the per-round rate."""
        cfg = self.config
        if cfg.target is None:
            return cfg.per_round_rate()
        if state.get("kept0") is None:
            path = self.run.ticket_path(0) if self.run is not None else None
            state["kept0"] = (self._Ticket.load(path).kept() if path and os.path.exists(path)
                              else ticket.numel())
        n, kept0 = ticket.numel(), state["kept0"]
        if n == 0 or kept0 == 0:
            return 0
        ratio = (1.0 - float(cfg.target)) * n / kept0  # kept at the end / kept in round 0
        if cfg.layerwise:
            return max(0.0, 1.0 - ratio ** (1.0 / cfg.rounds))
        s = float(cfg.target) if r >= cfg.rounds else 1.0 - kept0 / n * ratio ** (r / cfg.rounds)
        want = round(s * n) - (n - ticket.kept())
        return min(max(int(want), 0), ticket.kept())

    def _restore_modes(self) -> None:
        """Every module back in the train/eval mode it had when the run started (pre-order:
        a parent's train() also sets its children, which are then corrected)."""
        modules = dict(self.model.named_modules())
        for name, mode in self._modes:
            m = modules.get(name)
            if m is not None and m.training != mode:
                m.train(mode)

    # ------------------------------------------------------------------ loop
    def run_rounds(self, resume: bool = False) -> IMPResult:
        state = self._resume_state() if resume else self._fresh_state()
        try:
            return self._rounds(state)
        except BaseException as e:
            # status.json said "running" for ever after an error or Ctrl-C; the last
            # round whose checkpoint was written stays valid for --resume
            ddp.tell_failure(e)  # another rank: rank 0 names the cause in status.json
            if self.run is not None and self.main:
                state_name = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                error = f"{type(e).__name__}: {e}"[:500]
                # rank 0 sees only a broken collective (or torchrun's SIGTERM) when
                # another rank fails: the cause is what that rank left in the store
                elsewhere = ddp.failure_elsewhere()
                if elsewhere is not None:
                    state_name, error = "failed", f"{elsewhere} (here: {error})"[:1000]
                try:
                    self.run.set_status(state_name, state["saved_round"], error=error)
                except OSError:  # a full disk must not hide the original error
                    pass
            raise

    def _rounds(self, state: dict) -> IMPResult:
        cfg = self.config
        rows, first = state["rows"], state["next_round"]
        for r in range(first, cfg.rounds + 1):
            pending = state.pop("pending", None)  # resumed: round r trained, not evaluated
            if pending is not None:
                ctx, train_stats, t_prune, t_train = self._pending_round(r, state, pending)
            else:
                ctx, train_stats, t_prune, t_train = self._train_round(r, state)
            self._evaluate_round(r, state, ctx, train_stats, t_prune, t_train)
        if first > cfg.rounds and self.run is not None and self.main:
            # nothing left to train: the last run may have stopped after writing the
            # checkpoint but before metrics.json / status.json; bring them up to date
            self.run.write_metrics(rows)
            self.run.set_status("complete", state["saved_round"])
            self._write_report()
        return IMPResult(rows=rows, ticket=state["ticket"],
                         run_dir=None if self.run is None else self.run.path)

    def _pending_round(self, r: int, state: dict, pending: dict):
        """A round whose training finished before the run stopped (its evaluation failed or
        was interrupted): its trained weights are loaded; evaluate it without training again."""
        self.log(f"round {r}/{self.config.rounds}: trained before the run stopped; evaluating")
        state["ticket"].apply(self.model)  # (zeros already: binds the masks, as training does)
        objects = {k: _SavedState(v) for k, v in pending["objects"].items()}
        ctx = RoundContext(round=r, model=self.model, ticket=state["ticket"],
                           start_iter=int(pending["start_iter"]), seed=self.config.seed * 1000 + r,
                           on_iter=lambda _i, _m=None: None, objects=objects)
        self._restore_modes()
        return ctx, dict(pending["train_stats"]), float(pending["prune_time_s"]), \
            float(pending["train_time_s"])

    def _train_round(self, r: int, state: dict):
        """Prunes (r > 0), rewinds and trains round r; saves the trained state (so that a
        failed evaluation does not cost the training). Returns (ctx, train_stats, prune
        time, train time)."""
        cfg = self.config
        rewind, ticket = cfg.rewind_point, state["ticket"]
        t_prune = time.perf_counter()
        collapsed_before = ticket.collapsed()
        if r > 0:
            ticket = ticket.prune(self.model, self._amount(r, ticket, state),
                                  layerwise=cfg.layerwise)
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

        def on_iter(i, model=None, _r=r, _ticket=ticket):
            # the engine's own model, whatever train_fn passes: a DDP / DataParallel /
            # compiled wrapper of it has other state_dict keys (round 1 could not rewind)
            if _r == 0 and rewind.kind == "iter" and i == rewind.iteration:
                state["rewind"] = snapshot(self.model)
            if _r == 0 and self.early_bird_every and i % self.early_bird_every == 0:
                self._save_early_bird(i, self.model, _ticket, state)

        start = rewind.iteration if (r > 0 and rewind.kind == "iter") else 0
        if r == 0 and rewind.kind == "iter" and rewind.iteration == 0:
            state["rewind"] = snapshot(self.model)
        ctx = RoundContext(round=r, model=self.model, ticket=ticket, start_iter=start,
                           seed=seed, on_iter=on_iter)
        sparsity = ticket.sparsity()
        self.log(f"round {r}/{cfg.rounds}: sparsity {100 * sparsity:.1f}%, training "
                 f"from iteration {start}")
        self._restore_modes()
        t0 = time.perf_counter()
        train_stats = _as_metrics(self.train_fn(ctx), "train_fn")
        t_train = time.perf_counter() - t0
        if r == 0 and rewind.kind == "iter" and state["rewind"] is None and cfg.rounds > 0:
            # said now, not after evaluating and pruning (and a resume that fails again)
            raise RuntimeError(
                f"rewind {rewind}: train_fn never called ctx.on_iter({rewind.iteration}, "
                f"model) in round 0, so there is no late-resetting point (it must call "
                "ctx.on_iter(i, model) after its i-th iteration, and run at least "
                f"{rewind.iteration} iterations)")
        state["ticket"] = ticket
        error = None
        try:
            if self.run is not None and self.main:
                self._save(r, ticket, state, state["rows"], ctx.objects, pending={
                    "start_iter": start, "train_stats": plain(train_stats),
                    "prune_time_s": t_prune, "train_time_s": t_train})
        except Exception as e:
            error = e
        _raise_on_all_ranks(error, f"saving round {r}'s trained state")
        return ctx, train_stats, t_prune, t_train

    def _save(self, r: int, ticket, state: dict, rows: list, objects: dict,
              pending: dict | None = None) -> None:
        """Round r's ticket file and the checkpoint: after evaluation (`rows` holds round r's
        row), or after training (`pending`: what evaluating it on resume needs)."""
        ticket.meta.update({"round": r})
        os.makedirs(os.path.dirname(self.run.ticket_path(r)), exist_ok=True)
        ticket.save(self.run.ticket_path(r))
        ckpt.save(self.run, round_index=r, model=self.model, ticket=ticket,
                  rewind=state["rewind"], rows=rows, objects=objects,
                  ticket_digest=ticket_digest(ticket), modes=self._modes, pending=pending)

    def _evaluate_round(self, r: int, state: dict, ctx, train_stats: dict, t_prune: float,
                        t_train: float) -> None:
        """Evaluates round r, then writes its row, ticket, checkpoint and report."""
        cfg, rows, ticket = self.config, state["rows"], state["ticket"]
        sparsity, collapsed = ticket.sparsity(), ticket.collapsed()
        error = None
        try:  # rank 0 evaluates and writes: a failure there must reach every rank
            t0 = time.perf_counter()
            metrics = _as_metrics(self.eval_fn(self.model, ctx), "eval_fn")
            t_eval = time.perf_counter() - t0
            groups = group_sparsity(ticket, self.group_of)
            trained = {f"train_{k}" for k in train_stats}
            clash = [k for k in metrics if str(k) in RESERVED_COLUMNS or str(k) in groups
                     or str(k) in trained]
            if clash:
                raise ValueError(f"eval_fn returned {clash}: the engine writes these "
                                 "columns itself (train_fn's results as train_<key>); "
                                 "rename the metric")
            row = {"round": r, "sparsity": sparsity, **groups,
                   "collapsed_layers": len(collapsed), **metrics, "prune_time_s": t_prune,
                   "train_time_s": t_train, "eval_time_s": t_eval,
                   # plain first: a tensor loss was dropped; NaN stays a (null) column
                   **{f"train_{k}": v for k, v in plain(train_stats).items()
                      if v is None or isinstance(v, (int, float))}}
            row = plain(row)
            if self.run is not None and self.main:
                self._save(r, ticket, state, rows + [row], ctx.objects)
            rows.append(row)
            state["saved_round"] = r
            if self.run is not None and self.main:
                self.run.write_metrics(rows)
                self.run.set_status("running" if r < cfg.rounds else "complete", r)
                self._write_report()
            self.on_round(row)
        except Exception as e:
            error = e
        _raise_on_all_ranks(error, f"in round {r}")

    def _save_early_bird(self, i: int, model: nn.Module, ticket, state: dict) -> None:
        """The mask round 1 would get if round 0 stopped after iteration i (early-bird
        analysis: lthfast.analysis.early_bird_iterations compares it with round 1's)."""
        if self.run is None or not self.main or self.config.rounds < 1:
            return
        early = ticket.prune(model, self._amount(1, ticket, state),
                             layerwise=self.config.layerwise)
        early.meta.update({"iteration": i})
        path = self.run.file("round_0", "early_bird", f"iter_{i:07d}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        early.save(path)

    def _write_report(self) -> None:
        try:
            from lthfast.imp.report import write_run_report
            write_run_report(self.run.path)
        except Exception as e:  # a report problem must not lose the run
            hint = ("; install it with: pip install matplotlib (or 'lthfast[vision]')"
                    if isinstance(e, ModuleNotFoundError) and e.name == "matplotlib" else "")
            self.log(f"warning: report.html not written: {type(e).__name__}: {e}{hint}")


def run_imp(model: nn.Module, names: list[str], *, train_fn, eval_fn, config: IMPConfig,
            out: str | None = None, resume: bool = False, **kwargs) -> IMPResult:
    """Runs IMP; see `IMP`. `resume=True` continues the run in `out`."""
    return IMP(model, names, train_fn=train_fn, eval_fn=eval_fn, config=config, out=out,
               **kwargs).run_rounds(resume=resume)
