"""The bitmask ops on CUDA: bit for bit against the CPU kernels and the reference.
Skips cleanly without a GPU or without the CUDA build."""
import pytest
import torch

import lthfast
from lthfast import _reference_bitmask as ref
from lthfast import bitmask

from _bitmask_cases import masks


def _cuda_kernels_built():
    return lthfast._ops.available() and bool(lthfast.build_info().get("cuda"))


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _cuda_kernels_built(), reason="lthfast._C built without CUDA kernels"),
]


def to_cuda(x):
    """x on the GPU with the same strides (views stay non-dense)."""
    if x.stride() and 0 in x.stride():
        return x.cuda()
    y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")
    y.copy_(x)
    return y


@pytest.mark.parametrize("label,mask", masks(0), ids=[c[0] for c in masks(0)])
def test_cuda_matches_cpu(label, mask):
    cpu = bitmask.pack_bits(mask)
    got = bitmask.pack_bits(to_cuda(mask.contiguous()) if label == "expanded" else to_cuda(mask))
    assert got.device.type == "cuda" and torch.equal(got.cpu(), cpu)
    un = bitmask.unpack_bits(got, mask.shape)
    assert un.is_cuda and torch.equal(un.cpu(), mask)
    assert bitmask.count_bits(got) == int(mask.sum())
    other = torch.rand(mask.shape) < 0.5
    po = bitmask.pack_bits(other.cuda())
    assert bitmask.overlap_bits(got, po) == bitmask.overlap_bits(cpu, po.cpu())


def test_cuda_unpack_into_layouts_and_offsets():
    mask = torch.rand(6, 5, 3, 4) < 0.5
    p = bitmask.pack_bits(mask).cuda()
    cl = torch.zeros(6, 5, 3, 4, dtype=torch.bool, device="cuda").contiguous(memory_format=torch.channels_last)
    assert torch.equal(bitmask.unpack_bits_into(p, cl).cpu(), mask)
    flat = torch.zeros(mask.numel() + 3, dtype=torch.bool, device="cuda")
    bitmask.unpack_bits_into(p, flat[3:].view(mask.shape))  # unaligned output
    assert torch.equal(flat[3:].view(mask.shape).cpu(), mask) and not flat[:3].any()
    big = torch.cat([torch.zeros(1, dtype=torch.uint8, device="cuda"), p])[1:]  # unaligned input
    assert torch.equal(bitmask.unpack_bits(big, mask.shape).cpu(), mask)


def test_cuda_large_and_reference():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3_000_017, generator=g) < 0.2
    p = bitmask.pack_bits(mask.cuda())
    assert torch.equal(p.cpu(), ref.pack_bits(mask))
    assert bitmask.count_bits(p) == int(mask.sum())
    assert torch.equal(bitmask.unpack_bits(p, mask.shape).cpu(), mask)


def test_cuda_opcheck():
    m = (torch.rand(4, 3, 5, 5) < 0.5).cuda()
    p = torch.ops.lthfast.pack_bits(m)
    torch.library.opcheck(torch.ops.lthfast.pack_bits, (m,))
    torch.library.opcheck(torch.ops.lthfast.unpack_bits, (p, list(m.shape)))
    torch.library.opcheck(torch.ops.lthfast.unpack_bits_into, (p, torch.empty_like(m)))
    torch.library.opcheck(torch.ops.lthfast.count_bits, (p,))
    torch.library.opcheck(torch.ops.lthfast.overlap_bits, (p, p.clone()))


def test_cuda_zero_pruned():
    """On CUDA zero_pruned_ is composed of unpack_bits and masked_fill_: same result."""
    g = torch.Generator().manual_seed(4)
    for shape in ((1001,), (6, 5, 3, 4)):
        w = torch.randn(shape, generator=g)
        w.view(-1)[0] = float("nan")
        keep = torch.rand(shape, generator=g) < 0.5
        want = w.clone().masked_fill_(~keep, 0)
        got = bitmask.zero_pruned_(w.cuda(), bitmask.pack_bits(keep).cuda())
        assert torch.equal(got.cpu(), want)
    torch.library.opcheck(torch.ops.lthfast.zero_pruned_,
                          (w.cuda(), bitmask.pack_bits(keep).cuda()))


def test_cuda_ticket_roundtrip():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4)).cuda()
    t = lthfast.Ticket.from_model(model, 0.5)
    assert t.device.type == "cuda"
    t.apply(model)
    m = t.mask_for(model[0].weight)
    assert m.is_cuda and int(m.sum()) == t.kept("0.weight")
    assert t.to("cpu") == t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_cuda_pack_float_masks(dtype):
    """A float mask (torch's pruned format) packs as mask != 0, as on the CPU."""
    g = torch.Generator().manual_seed(2)
    m = (torch.rand(3, 70001, generator=g) < 0.5).to(dtype)
    m.view(-1)[:4] = torch.tensor([-0.0, float("nan"), 0.5, float("-inf")]).to(dtype)
    got = bitmask.pack_bits(m.cuda())
    assert got.is_cuda and torch.equal(got.cpu(), bitmask.pack_bits(m))
    assert torch.equal(got.cpu(), ref.pack_bits(m != 0))
    cl = m.view(3, 1, 1, 70001).cuda().contiguous(memory_format=torch.channels_last)
    assert torch.equal(bitmask.pack_bits(cl).cpu(), bitmask.pack_bits(m))
    torch.library.opcheck(torch.ops.lthfast.pack_bits, (m[:, :50].cuda(),))
