"""A parameter whose memory layout changes after the masked optimizer was built (the same
Parameter object with new strides: `model.to(memory_format=torch.channels_last)` sets
`p.data`). The masks are packed in memory order, so they are repacked before the next
step; the optimizer state follows the new strides. The trajectory stays that of
torch.optim + masking, as if the layout had never changed."""
import copy

import pytest
import torch

import lthfast
import lthfast.optim as lo

pytestmark = pytest.mark.skipif(not (lthfast._ops.available() or lthfast._ops.use_reference()),
                                reason="lthfast._C not built")

CL = torch.channels_last


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))


def _masks(model):
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() > 1 and n != "4.weight"}  # the Linear unmasked


def _torch_step(model, opt, masks):
    names = dict(model.named_parameters())
    for n, m in masks.items():
        names[n].grad.mul_(m)
    opt.step()
    with torch.no_grad():
        for n, m in masks.items():
            names[n].mul_(m)


def _loss(model, x):
    return model(x).square().sum()


OPTS = [(lo.MaskedSGD, torch.optim.SGD, dict(lr=0.05)),
        (lo.MaskedSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
        (lo.MaskedAdamW, torch.optim.AdamW, dict(lr=1e-2)),
        (lo.MaskedAdam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True))]


@pytest.mark.parametrize("masked_cls,torch_cls,kw", OPTS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("change_at", [0, 2])  # before the first step / with state
def test_layout_change_after_the_optimizer_is_built(masked_cls, torch_cls, kw, change_at):
    ours, theirs = _model(), _model()
    masks = _masks(ours)
    with torch.no_grad():
        for model in (ours, theirs):
            for n, p in model.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
    opt = masked_cls(ours.parameters(), **kw,
                     masks={p: masks[n] for n, p in ours.named_parameters() if n in masks})
    ref = torch_cls(theirs.parameters(), **kw)
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        if step == change_at:
            ours.to(memory_format=CL)
            assert ours[0].weight.is_contiguous(memory_format=CL)
            assert torch.equal(opt.mask_of(ours[0].weight), masks["0.weight"])
        if step == change_at + 2:
            ours.to(memory_format=torch.contiguous_format)  # and back
        x = torch.randn(2, 3, 8, 8, generator=g)
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            _loss(model, x).backward()
        opt.step()
        _torch_step(theirs, ref, masks)
        for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}, {n}")
            if n in masks:
                assert not a[~masks[n]].any(), f"step {step}: pruned entries of {n} moved"
    for n, p in ours.named_parameters():
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.numel() > 1:
                assert v.stride() == p.stride(), (n, k)
                if n in masks:
                    assert not v[~masks[n]].any(), (n, k)


def test_ticket_masks_follow_a_layout_change():
    """With a Ticket (the optimizer shares its packed tensors while parameters are
    contiguous), after channels_last the optimizer holds its own memory-order copy."""
    model = _model()
    ticket = lthfast.Ticket.from_model(model, 0.6)
    ticket.apply(model)
    opt = lo.MaskedSGD(model.parameters(), lr=0.1, ticket=ticket)
    w = model[0].weight
    shared = opt.packed_mask_of(w)
    model.to(memory_format=CL)
    assert opt.packed_mask_of(w) is not shared
    assert torch.equal(opt.mask_of(w), ticket["0.weight"])
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert not w[~ticket["0.weight"]].any()
    assert w[ticket["0.weight"]].ne(0).all()


def test_deepcopy_keeps_the_layouts():
    model = _model()
    opt = lo.MaskedSGD(model.parameters(), lr=0.1, momentum=0.9,
                       masks={model[0].weight: torch.rand(model[0].weight.shape) > 0.5})
    both = copy.deepcopy({"model": model, "opt": opt})
    m2, o2 = both["model"], both["opt"]
    m2.to(memory_format=CL)
    mask = o2.mask_of(m2[0].weight)
    assert torch.equal(mask, opt.mask_of(model[0].weight))
