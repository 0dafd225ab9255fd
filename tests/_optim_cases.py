"""Shared builders for the masked optimizer tests (CPU and CUDA): parameter sets
with masks, the torch.optim counterpart of each masked optimizer, and the
"torch.optim + masking" oracle step."""
from __future__ import annotations

import torch

import lthfast.optim as lo

SGD_OPTIONS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.5, nesterov=True, weight_decay=1e-2, maximize=True),
    dict(lr=0.05, weight_decay=1e-2, maximize=True),
    dict(lr="tensor", momentum=0.9, dampening=0.1, weight_decay=1e-3),
]
ADAM_OPTIONS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=1e-2, betas=(0.3, 0.9), eps=1e-6, weight_decay=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr="tensor", betas=(0.8, 0.99), maximize=True)),
]


def opt_id(case) -> str:
    kind, kw = case if isinstance(case, tuple) else ("SGD", case)
    return kind + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


def make_params(device="cpu", dtype=torch.float32, seed=0):
    """Parameters of several shapes/layouts and their masks (some None)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    raw = [
        rnd(8, 4, 3, 3),                                              # conv weight
        rnd(8, 4, 3, 3).contiguous(memory_format=torch.channels_last),  # channels_last conv
        rnd(16, 12),                                                  # linear weight
        rnd(16),                                                      # bias (unmasked)
        rnd(40000),                                                   # > one CPU chunk
        rnd(0, 3),                                                    # empty
        rnd(5, 7),                                                    # unmasked matrix
    ]
    masked = [True, True, True, False, True, True, False]
    params, masks = [], {}
    for t, has_mask in zip(raw, masked):
        p = torch.nn.Parameter(torch.empty_like(t, dtype=dtype, device=device).copy_(t))
        params.append(p)
        if has_mask:
            m = torch.rand(t.shape, generator=g) > 0.7  # ~70% pruned
            masks[p] = m.to(device)
    return params, masks


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def masked_optimizer(case, params, masks):
    kind, kw = case if isinstance(case, tuple) else ("SGD", case)
    kw = dict(kw)
    if kw.get("lr") == "tensor":
        kw["lr"] = torch.tensor(0.02, dtype=torch.float64)
    cls = {"SGD": lo.MaskedSGD, "Adam": lo.MaskedAdam, "AdamW": lo.MaskedAdamW}[kind]
    return cls(params, masks=masks, **kw)


def torch_optimizer(case, params, **extra):
    kind, kw = case if isinstance(case, tuple) else ("SGD", case)
    kw = dict(kw)
    if kw.get("lr") == "tensor":
        kw["lr"] = torch.tensor(0.02, dtype=torch.float64)
        extra.setdefault("foreach", False)
    cls = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[kind]
    return cls(params, **kw, **extra)


def random_grads(params, seed, *, poison_masks=None):
    """Fresh grads; with poison_masks, pruned entries get NaN/Inf (must not leak)."""
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    for i, p in enumerate(params):
        gr = torch.randn(p.shape, generator=g, dtype=torch.float64)
        gr = torch.empty_like(p).copy_(gr)
        if poison_masks is not None and poison_masks[i] is not None:
            bad = torch.where(torch.rand(gr.shape, generator=g) > 0.5, float("nan"), float("inf"))
            bad = bad.to(gr.device, gr.dtype)
            gr = torch.where(poison_masks[i].to(gr.device), gr, bad)
        out.append(gr)
    return out


@torch.no_grad()
def oracle_step(opt, params, masks_list, grads):
    """torch.optim step on masked grads, then weights masked (the policy's oracle)."""
    for p, m, gr in zip(params, masks_list, grads):
        # in the param's layout: torch's fused CPU optimizers assume it
        p.grad = torch.empty_like(p).copy_(gr if m is None else torch.where(m, gr, 0.0))
    opt.step()
    for p, m in zip(params, masks_list):
        if m is not None:
            p.mul_(m)


def assert_pruned_zero(opt, params, masks_list):
    for i, (p, m) in enumerate(zip(params, masks_list)):
        if m is None:
            continue
        assert bool((p.detach()[~m] == 0).all()), f"param {i}: pruned weights not 0"
        for k, v in opt.state.get(p, {}).items():
            if k != "step" and isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert bool((v[~m] == 0).all()), f"param {i}: pruned {k} not 0"
