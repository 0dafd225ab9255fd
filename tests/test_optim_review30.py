"""Stop 30's review of lthfast.optim: after `scaler.step(opt)` the grads are unscaled, as
torch's fused optimizers leave them (a skipped step leaves them scaled)."""
from __future__ import annotations

import pytest
import torch

import lthfast.optim as lo

PAIRS = [
    (lambda ps: lo.MaskedSGD(ps, lr=0.1, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True)),
    (lambda ps: lo.MaskedSGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True)),
    (lambda ps: lo.MaskedAdam(ps, lr=0.1), lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True)),
    (lambda ps: lo.MaskedAdamW(ps, lr=0.1, amsgrad=True),
     lambda ps: torch.optim.AdamW(ps, lr=0.1, amsgrad=True, fused=True)),
]


def _grads_after_steps(make, losses, dtype=torch.float32):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(8, dtype=dtype)),
          torch.nn.Parameter(torch.randn(3, 4, dtype=dtype).t())]  # a transposed one too
    opt = make(ps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = []
    for factor in losses:
        opt.zero_grad()
        loss = sum((p * torch.arange(p.numel(), dtype=dtype).reshape(p.shape)).sum() for p in ps)
        scaler.scale(loss * factor).backward()
        scaler.step(opt)
        seen.append([p.grad.clone() for p in ps] + [p.detach().clone() for p in ps])
        scaler.update()
    return seen


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_grads_after_scaler_step_match_torch_fused(pair):
    ours, theirs = PAIRS[pair]
    losses = [1.0, float("inf"), 1.0, 2.0]  # the second step is skipped
    a = _grads_after_steps(ours, losses)
    b = _grads_after_steps(theirs, losses)
    for step, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(x, y):
            if u.isfinite().all():
                torch.testing.assert_close(u, v, msg=f"step {step}")
            else:  # the skipped step's grads: left scaled (inf) by both
                assert torch.equal(u.isinf(), v.isinf())


def test_no_scaler_leaves_grads_alone():
    p = torch.nn.Parameter(torch.randn(5))
    opt = lo.MaskedAdam([p], lr=0.1)
    p.grad = torch.full((5,), 3.0)
    opt.step()
    assert torch.equal(p.grad, torch.full((5,), 3.0))
