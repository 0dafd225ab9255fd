"""Perturbation test: is it the ticket's exact mask that matters? Retrain from the
run's rewind point with (a) the ticket's complement, (b) a random mask of the same
per-layer sparsity, (c) the ticket with kept and pruned weights swapped in pairs, 10% of
the smaller of the two sets in every layer (so sparsity is unchanged), and compare their AP with the ticket's.

`perturbation(RUN_DIR)` rebuilds the run's model / train / eval functions from its
config.json settings (`lthfast.imp.jobs`), loads the rewind weights from checkpoint.pt
and writes RUN_DIR/perturbation.json, which `lthfast report` shows.
`retrain_perturbed(...)` is the same test for any model and train/eval functions."""
from __future__ import annotations

import os
import pickle
import time

import torch

KINDS = ("complement", "random", "swap10")
RESULTS_FILE = "perturbation.json"


def complement(ticket):
    """Keeps exactly the weights `ticket` prunes."""
    from lthfast.ticket import Ticket
    return Ticket({n: ~ticket[n] for n in ticket.names()}, round=ticket.round,
                  meta={"perturbation": "complement"})


def random_mask(ticket, *, seed: int = 0):
    """Uniformly random keep-mask with each layer's kept count of `ticket`."""
    from lthfast.ticket import Ticket
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for n in ticket.names():
        numel, k = ticket.numel(n), ticket.kept(n)
        m = torch.zeros(numel, dtype=torch.bool)
        m[torch.randperm(numel, generator=g)[:k]] = True
        masks[n] = m.reshape(ticket.shapes[n])
    return Ticket(masks, round=ticket.round, meta={"perturbation": "random", "seed": seed})


def swap_mask(ticket, fraction: float = 0.1, *, seed: int = 0):
    """`ticket` with round(fraction * min(kept, pruned)) kept weights of each layer
    pruned and as many pruned weights kept: same per-layer sparsity, mask moved."""
    from lthfast.ticket import Ticket
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for n in ticket.names():
        m = ticket[n].to("cpu").reshape(-1).clone()
        ones, zeros = m.nonzero().flatten(), (~m).nonzero().flatten()
        k = int(round(fraction * min(len(ones), len(zeros))))
        if k:
            m[ones[torch.randperm(len(ones), generator=g)[:k]]] = False
            m[zeros[torch.randperm(len(zeros), generator=g)[:k]]] = True
        masks[n] = m.reshape(ticket.shapes[n])
    return Ticket(masks, round=ticket.round, meta={"perturbation": f"swap{round(100 * fraction)}",
                                                   "seed": seed})


def perturbed(ticket, kind: str, *, seed: int = 0):
    """The mask of perturbation `kind` (complement, random, swapNN for NN% swapped)."""
    if kind == "complement":
        return complement(ticket)
    if kind == "random":
        return random_mask(ticket, seed=seed)
    if kind.startswith("swap") and kind[4:].isdigit() and 0 < int(kind[4:]) <= 100:
        return swap_mask(ticket, int(kind[4:]) / 100, seed=seed)
    raise ValueError(f"unknown perturbation kind {kind!r}; valid: complement, random, "
                     "swapNN (e.g. swap10: kept and pruned weights swapped in pairs, 10% of the "
                     "smaller set per layer)")


def parse_kinds(text) -> list[str]:
    kinds = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    if not kinds:
        raise ValueError("no perturbation kind given; valid: complement, random, swap10")
    from lthfast.ticket import Ticket
    probe = Ticket({"w": torch.tensor([True, False])})
    for k in kinds:
        perturbed(probe, k)  # raises ValueError naming a bad kind
    return kinds


def retrain_perturbed(model, ticket, train_fn, eval_fn, *, kinds=KINDS, rewind_state=None,
                      start_iter: int = 0, seed: int = 0, round_index: int = 0,
                      mask_seed: int | None = None, log=None) -> list[dict]:
    """Retrains `model` from `rewind_state` (default: its current weights) once per
    perturbation kind with that mask fixed, via the IMP engine's `train_fn(ctx)` /
    `eval_fn(model, ctx)` contract. Training is seeded as the IMP engine seeds round
    `round_index` of a run with `seed`, so the ticket's own row is the fair baseline;
    the random / swapped masks are `perturbed(ticket, kind, seed=mask_seed)` (default:
    `seed`), whatever the order of `kinds`. Returns one row per kind: kind, mask_seed,
    sparsity, IoU with the ticket, the eval metrics and train time. `model` ends with the
    last kind's weights."""
    from lthfast.imp.engine import RoundContext
    from lthfast.imp.round_state import _seed_everything, plain, snapshot
    kinds = parse_kinds(kinds)
    start = snapshot(model) if rewind_state is None else rewind_state
    ticket.check(model)
    # one mask seed for every kind (not seed + position): `--kinds random` and
    # `--kinds complement,random` retrain the same random mask, reproducible by hand
    mask_seed = seed if mask_seed is None else int(mask_seed)
    rows = []
    for kind in kinds:
        mask = perturbed(ticket, kind, seed=mask_seed)
        model.load_state_dict(start)
        mask.apply(model)
        _seed_everything(seed * 1000 + round_index)
        ctx = RoundContext(round=round_index, model=model, ticket=mask, start_iter=start_iter,
                           seed=seed * 1000 + round_index, on_iter=lambda _i, _m: None)
        if log:
            log(f"perturbation {kind}: sparsity {100 * mask.sparsity():.1f}%, retraining")
        t0 = time.perf_counter()
        train_fn(ctx)
        t_train = time.perf_counter() - t0
        metrics = eval_fn(model, ctx) or {}
        rows.append(plain({"kind": kind, "mask_seed": mask_seed, "sparsity": mask.sparsity(),
                           "iou_with_ticket": mask.iou(ticket)["overall"], **metrics,
                           "train_time_s": t_train}))
    return rows


def _job_of_run(run, threads: int | None = None):
    from lthfast.imp import jobs
    s = jobs.Settings(**{k: v for k, v in run.settings.items() if k in jobs.Settings.__dataclass_fields__})
    s.quiet, s.resume = True, None
    if threads:  # the caller's count, not the one the run was made with
        s.threads = threads
    if s.device and s.device.startswith("cuda") and not torch.cuda.is_available():
        s.device = "cpu"
    return s, jobs.build_job(s)


def perturbation(run_dir: str, *, round: int | None = None, kinds=KINDS, seed: int = 0,
                 write: bool = True, log=None, threads: int | None = None) -> dict:
    """The perturbation test on the ticket of `round` (default: the last; -1 is the last,
    -2 the one before, ...) of the run in `run_dir`; `seed` draws the random / swapped
    masks (retraining uses the run's own seed, as its round did); `threads`: CPU threads for the retraining (default: those
    the run was made with, if it set any). Returns {"round", "metric", "ticket": the run's own row, "results": [rows]}
    and (write=True) merges it into RUN_DIR/perturbation.json."""
    from lthfast.analysis.runs import RunError, load_run
    from lthfast.imp.config import Rewind
    from lthfast.imp.rundir import RunDir, write_json
    run = load_run(run_dir, allow_running=False)
    kinds = parse_kinds(kinds)
    r = run.rounds[-1] if round is None else int(round)
    if r < 0 and -r <= len(run.rounds):  # as `lthfast compare --round`: -1 is the last
        r = run.rounds[r]
    if r not in run.rounds:
        raise RunError(f"run {run.path} has no finished round {round}; finished rounds: "
                       f"{run.rounds} (a negative round counts back from the last: -1 is the last)")
    ticket = run.ticket(r)
    if ticket.sparsity() == 0:
        pruned = [x["round"] for x in run.rows if isinstance(x.get("sparsity"), (int, float))
                  and x["sparsity"] > 0]
        raise RunError(f"round {r}'s ticket is dense (nothing pruned): the perturbations need a "
                       "pruned round; " + (f"pick one with --round ({pruned})" if pruned else
                                           "this run has none yet"))
    results_path = RunDir(run.path).file(RESULTS_FILE)
    # a damaged file: said now, not after the retraining
    saved = _saved_tests(results_path) if write else []
    rewind = Rewind.parse(run.settings.get("rewind") or "init")
    if r == 0 and rewind.kind == "iter":  # (round 0 of a run started from a --ticket)
        raise RunError(f"round 0 trained from the initial weights, which the run does not keep "
                       f"(it rewinds to iteration {rewind.iteration}): only the rounds that "
                       "start from the rewind point can be retrained; pick one with --round")
    ckpt_path = RunDir(run.path).file("checkpoint.pt")
    try:
        payload = torch.load(ckpt_path, map_location="cpu", weights_only=True) if os.path.exists(
            ckpt_path) else None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise RunError(f"{ckpt_path}: cannot read the run's checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("rewind") is None:
        raise RunError(f"run {run.path} has no saved rewind point (checkpoint.pt missing or "
                       "made with --rewind none): the perturbed masks cannot be retrained "
                       "from the ticket's starting weights")
    s, job = _job_of_run(run, threads)
    rewind = Rewind.parse(s.rewind)
    start_iter = rewind.iteration if rewind.kind == "iter" else 0
    rows = retrain_perturbed(job.model, ticket, job.train_fn, job.eval_fn, kinds=kinds,
                             rewind_state=payload["rewind"], start_iter=start_iter,
                             seed=s.seed, round_index=r, mask_seed=seed, log=log)
    own = next(x for x in run.rows if int(x["round"]) == r)
    metric = metric_key(own)
    result = {"round": r, "metric": metric, "ticket": {"kind": "ticket", "sparsity": own["sparsity"],
                                                       "iou_with_ticket": 1.0, metric: own.get(metric)},
              "results": rows}
    if write:
        tests = [t for t in saved if t.get("round") != r]
        old = next((t for t in saved if t.get("round") == r), None)
        if old:  # keep earlier kinds of this round that were not rerun
            result["results"] = [x for x in old["results"] if x["kind"] not in kinds] + rows
        from lthfast.imp.round_state import plain  # (NaN metrics: null, as in metrics.json)
        write_json(results_path, plain({"tests": sorted(tests + [result], key=lambda t: t["round"])}))
    return result


def _saved_tests(path: str) -> list[dict]:
    """The tests in a perturbation.json ([] when there is none); RunError naming the file
    when it is not one lthfast perturb wrote."""
    from lthfast.analysis.runs import RunError, read_json_file
    saved = read_json_file(path, dict, "perturbation tests")
    if saved is None:
        return []
    tests = saved.get("tests", [])
    if not (isinstance(tests, list) and all(
            isinstance(t, dict) and isinstance(t.get("round"), int) and isinstance(t.get("metric"), str)
            and isinstance(t.get("ticket"), dict) and isinstance(t.get("results"), list)
            and all(isinstance(x, dict) and "kind" in x and "sparsity" in x for x in t["results"])
            for t in tests)):
        raise RunError(f"{path}: not the perturbation tests lthfast perturb writes (damaged?); "
                       "move it away to start them over")
    return tests


def metric_key(row: dict) -> str:
    for k in ("segm_AP", "keypoints_AP", "bbox_AP", "top1"):
        if k in row:
            return k
    raise ValueError(f"no AP / top1 metric in the run's rows (keys: {sorted(row)})")


def load_results(run_path: str) -> list[dict]:
    """The perturbation tests saved in RUN_DIR/perturbation.json ([] when none); RunError
    naming the file when it is damaged."""
    return _saved_tests(os.path.join(run_path, RESULTS_FILE))


def table(test: dict) -> list[dict]:
    """Rows ticket + each kind: kind, sparsity, IoU with the ticket, metric, change."""
    metric = test["metric"]
    base = test["ticket"].get(metric)
    out = []
    for row in [test["ticket"], *test["results"]]:
        v = row.get(metric)
        out.append({"mask": row["kind"], "mask seed": row.get("mask_seed", ""),
                    "sparsity": row["sparsity"],
                    "IoU with ticket": row.get("iou_with_ticket"), metric: v,
                    "change vs ticket": (v - base) if isinstance(v, (int, float)) and
                    isinstance(base, (int, float)) else ""})
    return out
