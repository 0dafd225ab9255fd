"""Shared by the lthfast.prune compatibility tests (test_prune_*.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast
import lthfast.prune as lprune

LIBS = pytest.mark.parametrize("prune", [tprune, lprune], ids=["torch", "lthfast"])


@pytest.fixture(autouse=True)
def _kernel_or_reference(monkeypatch):
    """Use the compiled kernel when built, else the pure-PyTorch reference."""
    if not lthfast._ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


def make_net(seed=0, dtype=torch.float32):
    """Conv2d + BatchNorm2d + Linear with tie-free random parameters."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net.to(dtype)


def hook_of(module, name="weight"):
    hooks = [h for h in module._forward_pre_hooks.values()
             if isinstance(h, tprune.BasePruningMethod) and h._tensor_name == name]
    assert len(hooks) == 1
    return hooks[0]


def assert_same_module(a, b):
    """Same parameters, buffers, state_dict (keys in order, values, dtypes), hook kinds."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert list(dict(a.named_parameters())) == list(dict(b.named_parameters()))
    assert list(dict(a.named_buffers())) == list(dict(b.named_buffers()))
    for ma, mb in zip(a.modules(), b.modules()):
        ha = [type(h).__name__ for h in ma._forward_pre_hooks.values()]
        hb = [type(h).__name__ for h in mb._forward_pre_hooks.values()]
        assert ha == hb
        for h1, h2 in zip(ma._forward_pre_hooks.values(), mb._forward_pre_hooks.values()):
            if isinstance(h1, tprune.PruningContainer):
                assert [type(m).__name__ for m in h1] == [type(m).__name__ for m in h2]
        for name in dict(ma.named_parameters(recurse=False)):
            if name.endswith("_orig"):
                base = name[: -len("_orig")]
                assert torch.equal(getattr(ma, base), getattr(mb, base))


def run_both(scenario, seed=0, **net_kw):
    """Run ``scenario(prune, net)`` with torch and lthfast from the same seed."""
    nets = []
    for prune in (tprune, lprune):
        net = make_net(**net_kw)
        torch.manual_seed(seed)
        scenario(prune, net)
        nets.append(net)
    assert_same_module(*nets)
    x = torch.randn(2, 3, 4, 4, dtype=nets[0][0].weight.dtype)
    nets[0].eval(), nets[1].eval()
    assert torch.equal(nets[0](x), nets[1](x))
    return nets


def pairs_of(n):
    """(module, name) pairs of make_net's net: weights and biases of the conv and linear."""
    return [(n[0], "weight"), (n[1], "weight"), (n[3], "weight"), (n[0], "bias"), (n[3], "bias")]
