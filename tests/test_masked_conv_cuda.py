"""Masked convolution / linear on CUDA: both paths against the float64 reference,
gradients, opcheck. Skips cleanly without a GPU or without the CUDA build."""
import pytest
import torch

import lthfast
from lthfast.ops import masked_conv2d, masked_linear

from _masked_conv_cases import CONV_CASES, assert_conv_close, assert_linear_close, conv_problem


def _cuda_kernels_built():
    return lthfast._ops.available() and bool(lthfast.build_info().get("cuda"))


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _cuda_kernels_built(), reason="lthfast._C built without CUDA kernels"),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c[:6]) for c in CONV_CASES])
@pytest.mark.parametrize("path", ["dense", "sparse", "auto", "tuned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_conv_cuda(case, path, dtype):
    for seed, sparsity in enumerate((0.0, 0.6, 0.97)):
        x, w, m, b, conf = conv_problem(case, dtype=dtype, sparsity=sparsity, seed=seed, device="cuda")
        out = masked_conv2d(x, w, m, b, **conf, path=path)
        assert out.is_cuda
        assert_conv_close(out.cpu(), x.cpu(), w.cpu(), m.cpu(), None if b is None else b.cpu(), conf)
        xl = x.contiguous(memory_format=torch.channels_last)
        out = masked_conv2d(xl, w, m, b, **conf, path=path)
        assert_conv_close(out.cpu(), x.cpu(), w.cpu(), m.cpu(), None if b is None else b.cpu(), conf)


@pytest.mark.parametrize("path", ["dense", "sparse", "tuned"])
def test_linear_cuda(path):
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(3, 5, 70, generator=gen).to(dtype)
        w = torch.randn(33, 70, generator=gen).to(dtype)
        m = torch.rand(w.shape, generator=gen) > 0.7
        b = torch.randn(33, generator=gen).to(dtype)
        out = masked_linear(x.cuda(), w.cuda(), m.cuda(), b.cuda(), path=path)
        assert_linear_close(out.cpu(), x, w, m, b)


def test_grad_and_opcheck_cuda():
    x, w, m, b, conf = conv_problem(CONV_CASES[2], dtype=torch.float64, seed=4, device="cuda")
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    masked_conv2d(xg, wg, m, bg, **conf).square().sum().backward()
    assert (wg.grad[~m] == 0).all()
    args = (x, w, m, b, list(conf["stride"]), list(conf["padding"]), list(conf["dilation"]), conf["groups"])
    torch.library.opcheck(torch.ops.lthfast.masked_conv2d, args)
    packed = torch.ops.lthfast.sparse_pack(w, m)
    torch.library.opcheck(torch.ops.lthfast.sparse_conv2d,
                          (x, *packed, b, list(w.shape[2:]), *args[4:]))
