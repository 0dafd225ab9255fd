"""Stop 29's review: an infinite weight with weight_decay=0 (torch adds no decay term),
a ticket's packed mask for a parameter whose shape changed, zero_pruned_ on an
expanded tensor."""
from __future__ import annotations

import pytest
import torch

import lthfast
import lthfast.optim as lo
from lthfast import _ops, bitmask

pytestmark = pytest.mark.skipif(not _ops.available(), reason="needs the compiled kernels")


@pytest.mark.parametrize("cls,ref,kw", [
    (lo.MaskedSGD, torch.optim.SGD, dict(lr=0.1)),
    (lo.MaskedSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (lo.MaskedAdam, torch.optim.Adam, dict(lr=0.1)),
    (lo.MaskedAdam, torch.optim.Adam, dict(lr=0.1, amsgrad=True)),
    (lo.MaskedAdamW, torch.optim.AdamW, dict(lr=0.1, weight_decay=0.0)),
])
@pytest.mark.parametrize("masked", [False, True])
def test_infinite_weight_without_weight_decay_stays_infinite(cls, ref, kw, masked):
    a = torch.nn.Parameter(torch.tensor([float("inf"), 1.0, -2.0]))
    b = torch.nn.Parameter(a.detach().clone())
    keep = torch.tensor([True, True, False])
    opt = cls([a], masks={a: keep} if masked else None, **kw)
    torch_opt = ref([b], foreach=False, **kw)
    for _ in range(3):
        a.grad = torch.tensor([0.5, 0.5, 0.5])
        b.grad = a.grad * keep if masked else a.grad.clone()
        opt.step()
        torch_opt.step()
        if masked:
            with torch.no_grad():
                b.mul_(keep)
    assert torch.equal(a.detach(), b.detach())  # inf stays inf (not NaN)
    for k, v in opt.state[a].items():
        if torch.is_tensor(v) and v.numel() == 3:
            assert not torch.isnan(v).any(), k


def test_packed_mask_of_a_reshaped_parameter_is_refused():
    m = torch.nn.Linear(3, 4, bias=False)
    ticket = lthfast.Ticket.from_model(m, 0.5)
    ticket.apply(m)
    m.weight.data = torch.randn(3, 4)  # same count, other shape
    with pytest.raises(ValueError, match=r"now has shape \(3, 4\).*\(4, 3\)"):
        ticket.packed_for(m.weight)
    with pytest.raises(ValueError, match="now has shape"):
        lo.MaskedSGD(m.parameters(), lr=0.1, ticket=ticket)


@pytest.mark.parametrize("reference", [False, True])
def test_zero_pruned_refuses_an_expanded_tensor(monkeypatch, reference):
    if reference:
        monkeypatch.setattr(_ops, "_C", None)
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    base = torch.ones(1, 4)
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1, 0] = False
    packed = bitmask.pack_bits(keep) if not reference else _pack(keep)
    with pytest.raises(RuntimeError, match="share memory"):
        bitmask.zero_pruned_(base.expand(3, 4), packed)
    assert torch.equal(base, torch.ones(1, 4))  # nothing written


def _pack(keep):
    from lthfast import _reference_bitmask
    return _reference_bitmask.pack_bits(keep)


@pytest.mark.parametrize("reference", [False, True])
def test_nan_policy_raise(monkeypatch, reference):
    if reference:
        monkeypatch.setattr(_ops, "_C", None)
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")
    a = torch.tensor([1.0, float("nan"), 3.0])
    b = torch.tensor([0.5, -2.0, 4.0, 0.1])
    # the default ranks NaN above +inf: pruned last
    assert lthfast.global_magnitude_masks([a, b], 2)[0].tolist() == [True, True, True]
    with pytest.raises(ValueError, match=r"tensors\[1\] has 1 NaN entry.*nan='raise'"):
        lthfast.global_magnitude_masks([b, a], 2, nan="raise")
    with pytest.raises(ValueError, match=r"tensors\[0\] has 1 NaN"):
        lthfast.global_magnitude_threshold([a], 1, nan="raise")
    with pytest.raises(ValueError, match=r"importance\[0\] has 1 NaN"):
        lthfast.global_magnitude_masks([b[:3]], 1, importance=[a], nan="raise")
    with pytest.raises(ValueError, match="nan='maybe' must be 'high'"):
        lthfast.global_magnitude_masks([b], 1, nan="maybe")
    # a NaN that is pruned already is no error
    keep = torch.tensor([True, False, True])
    assert lthfast.global_magnitude_masks([a], 1, masks=[keep], nan="raise")[0].tolist() == \
        [False, False, True]
    assert lthfast.global_magnitude_threshold([a], 1, masks=[keep], nan="raise") == (1.0, 1)


def test_fast_optimizer_entry_raises_what_torch_ops_raises():
    p, g = torch.zeros(4), torch.zeros(4).to_sparse()
    args = ([p], [g], [], [None], 0.1, None, 0.0, 0.0, 0.0, False, False, False, None, None)
    with pytest.raises(NotImplementedError):
        torch.ops.lthfast.masked_sgd_(*args)
    with pytest.raises(NotImplementedError):  # was a RuntimeError
        _ops._C._masked_sgd_(*args)
    with pytest.raises(RuntimeError, match="shape"):
        _ops._C._masked_sgd_([p], [torch.zeros(3)], *args[2:])


@pytest.mark.parametrize("stride", [7, 50_000])
def test_sparse_conv_with_a_huge_stride_needs_no_table_of_strides(stride):
    """The CPU sparse conv kept a table of stride_h * stride_w phases: stride 50000 asked
    for ~20 GB; it needs the phases the kernel taps read, at most KH * KW."""
    import torch.nn.functional as F
    from lthfast.ops import masked_conv2d
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 2, 2)
    m = torch.rand_like(w) > 0.3
    y = masked_conv2d(x, w, m, stride=stride, padding=1, dilation=(1, 2), path="sparse")
    torch.testing.assert_close(y, F.conv2d(x, w * m, stride=stride, padding=1, dilation=(1, 2)))


def test_a_meta_mask_is_named():
    p = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="parameter 0 is on the meta device"):
        lo.MaskedSGD([p], lr=0.1, masks={p: torch.ones(4, dtype=torch.bool, device="meta")})


def test_meta_masks_are_a_clear_error():
    w = torch.randn(10, device="meta")
    m = torch.ones(10, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="meta device: they have no values"):
        lthfast.global_magnitude_masks([w], 0.5, masks=[m])
    assert lthfast.global_magnitude_masks([w], 0.5)[0].device.type == "meta"  # no masks: fine


def test_zero_pruned_under_autograd_is_masked_fill():
    # stop 30: the compiled op has no backward: pruned entries got the clone's gradient
    from lthfast import bitmask as B
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4))
    keep = torch.rand(3, 4) > 0.5
    packed = B.pack_bits(keep)
    x = torch.randn(2, 4)
    w = weight.clone()
    B.zero_pruned_(w, packed)
    torch.nn.functional.linear(x, w).sum().backward()
    assert weight.grad[~keep].abs().sum() == 0
    assert torch.equal(w, weight.detach() * keep)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        B.zero_pruned_(torch.nn.Parameter(torch.randn(3, 4)), packed)
    with torch.no_grad():  # the one-pass kernel, as Ticket.apply uses it
        p = torch.nn.Parameter(torch.randn(3, 4))
        B.zero_pruned_(p, packed)
    assert (p[~keep] == 0).all()
