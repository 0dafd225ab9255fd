"""Training loop for torchvision detection models: SGD (or any optimizer passed in, e.g.
`lthfast.optim.MaskedSGD`), linear warm-up + step decay, AMP on CUDA, deterministic data
order, and a per-iteration callback (late-resetting snapshots for IMP)."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from lthfast.detection.data import collate_fn


def make_sgd(model: nn.Module, *, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
             optimizer_cls=torch.optim.SGD, **kw) -> torch.optim.Optimizer:
    """SGD (or `optimizer_cls`) over the parameters that require grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return optimizer_cls(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)


def lr_factor(it: int, *, warmup_iters: int, lr_steps=(), gamma: float = 0.1,
              warmup_factor: float = 0.001) -> float:
    """LR multiplier at iteration `it`: linear warm-up from `warmup_factor` over
    `warmup_iters`, times `gamma` for every step in `lr_steps` already passed."""
    f = 1.0
    if it < warmup_iters:
        a = it / warmup_iters
        f = warmup_factor * (1 - a) + a
    return f * gamma ** sum(1 for s in lr_steps if it >= s)


class _Factor:  # picklable (a lambda is not), so the scheduler's state_dict can be saved
    def __init__(self, warmup_iters, lr_steps, gamma):
        self.warmup_iters, self.lr_steps, self.gamma = warmup_iters, tuple(lr_steps), gamma

    def __call__(self, it):
        return lr_factor(it, warmup_iters=self.warmup_iters, lr_steps=self.lr_steps, gamma=self.gamma)


def make_scheduler(optimizer, *, warmup_iters: int, lr_steps=(), gamma: float = 0.1,
                   start_iter: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + step-decay LambdaLR (stepped once per iteration), positioned at `start_iter`."""
    if warmup_iters < 0 or any(s < 0 for s in lr_steps):
        raise ValueError(f"warmup_iters and lr_steps must be >= 0, got {warmup_iters}, {lr_steps}")
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(warmup_iters, lr_steps, gamma),
                                             last_epoch=start_iter - 1)


def batch_indices(n: int, batch_size: int, it: int, seed: int) -> list[int]:
    """Dataset indices of iteration `it`: epoch e is a permutation drawn from a generator
    seeded with (seed, e), and iterations walk through the epochs in order. Depends only on
    (n, batch_size, it, seed), so a run restarted at `start_iter` sees the same batches."""
    out, pos = [], it * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        take = min(batch_size - len(out), n - off)
        out += perm[off:off + take].tolist()
        pos += take
    return out


def iter_batches(n: int, batch_size: int, start_iter: int, iters: int, seed: int):
    """`batch_indices(n, batch_size, it, seed)` for it in [start_iter, iters), drawing each
    epoch's permutation once."""
    perms = {}

    def perm(epoch):
        if epoch not in perms:
            perms.clear()
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return perms[epoch]
    for it in range(start_iter, iters):
        out, pos = [], it * batch_size
        while len(out) < batch_size:
            epoch, off = divmod(pos, n)
            take = min(batch_size - len(out), n - off)
            out += perm(epoch)[off:off + take].tolist()
            pos += take
        yield out


class _RankBatches:
    """Batch sampler for a DataLoader: this rank's slice of every global batch."""

    def __init__(self, n, batch_size, start_iter, iters, seed, rank, world_size):
        self.args = (n, batch_size * world_size, start_iter, iters, seed)
        self.lo, self.hi, self.len = rank * batch_size, (rank + 1) * batch_size, iters - start_iter

    def __iter__(self):
        for idx in iter_batches(*self.args):
            yield idx[self.lo:self.hi]

    def __len__(self):
        return self.len


def _to(target: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in target.items()}


def backward_and_step(loss, optimizer, scaler=None) -> None:
    """zero_grad, backward and one optimizer step; through `scaler` (a GradScaler) when AMP
    is on, which skips the step when the grads hold inf/NaN."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train(model: nn.Module, dataset, *, iters: int, batch_size: int, lr: float, momentum: float = 0.9,
          weight_decay: float = 1e-4, warmup_iters: int = 0, lr_steps=(), gamma: float = 0.1,
          device="cpu", amp: bool = False, seed: int = 0, optimizer=None, scheduler=None,
          on_iter=None, progress: bool = True, start_iter: int = 0, rank: int = 0,
          world_size: int = 1, num_workers: int = 0) -> dict:
    """Train `model` from iteration `start_iter` up to `iters` (total, not additional).

    `optimizer` defaults to `make_sgd(model, lr, momentum, weight_decay)`; `scheduler`
    to `make_scheduler(...)` positioned at `start_iter` (pass both to continue a checkpointed
    run). Deterministic given `seed`: batches come from `batch_indices` and the global RNG
    (RPN/RoI sampling) is reseeded per iteration inside a forked RNG, so iteration i is the
    same whatever `start_iter` was. Under DDP pass `rank`/`world_size`: every iteration draws
    one global batch of `batch_size * world_size` and each rank takes its own slice (the
    global RNG is reseeded per rank). `num_workers` > 0 loads batches in DataLoader worker
    processes (same batches). `on_iter(step, model)` runs after every iteration with
    `step` = iterations done (start_iter+1 .. iters). Returns a dict with `losses` (total
    loss per iteration), `loss_components` (mean of each loss over the run), `final_loss`,
    `mean_loss`, `iters`, `time_s`, `s_per_iter`, `optimizer`, `scheduler`.
    """
    if not isinstance(iters, int) or iters < 0 or not isinstance(start_iter, int) or not 0 <= start_iter <= iters:
        raise ValueError(f"need integers 0 <= start_iter <= iters, got start_iter={start_iter!r}, iters={iters!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    device = torch.device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device (got device={device}); AMP is GPU-only")
    model.to(device).train()
    if optimizer is None:
        optimizer = make_sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if scheduler is None:
        scheduler = make_scheduler(optimizer, warmup_iters=warmup_iters, lr_steps=lr_steps,
                                   gamma=gamma, start_iter=start_iter)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    bar = None
    if progress:
        from tqdm.auto import tqdm
        # disable=None: no bar when stderr is not a terminal (a log file got every redraw)
        bar = tqdm(total=iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                   disable=None)
    losses, sums = [], {}
    t0 = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        sampler = _RankBatches(len(dataset), batch_size, start_iter, iters, seed, rank, world_size)
        if num_workers > 0:
            batches = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                                  num_workers=num_workers)
        else:
            batches = (collate_fn([dataset[i] for i in idx]) for idx in sampler)
        for it, (images, targets) in zip(range(start_iter, iters), batches):
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [_to(t, device) for t in targets]
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed * 1_000_003 + 7919 * it + 104_729 * rank + 1)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    loss_dict = model(images, targets)
                    loss = sum(loss_dict.values())
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss is {value} at iteration {it} "
                    f"({ {k: float(v.detach()) for k, v in loss_dict.items()} }); lower the learning rate")
            backward_and_step(loss, optimizer, scaler)
            scheduler.step()
            losses.append(value)
            for k, v in loss_dict.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if on_iter is not None:
                on_iter(it + 1, model)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
    finally:
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    n = len(losses)
    return {"losses": losses, "loss_components": {k: v / n for k, v in sums.items()} if n else {},
            "final_loss": losses[-1] if losses else float("nan"),
            "mean_loss": sum(losses) / n if n else float("nan"), "iters": n, "time_s": dt,
            "s_per_iter": dt / n if n else float("nan"), "optimizer": optimizer, "scheduler": scheduler}
