"""Regressions from the C++ kernel review (CPU; each runs in well under a second).

Each test names the kernel it guards. They call the dispatcher ops directly, as
`torch.library.opcheck` and C++ callers do, where the Python API's own checks do
not stand in front of the kernel."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lthfast
from lthfast import _ops
from lthfast import _reference_conv as ref

pytestmark = pytest.mark.skipif(not _ops.available(), reason="lthfast._C not built")
ops = torch.ops.lthfast


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _biases(n):
    # a strided view, an expanded (0-stride) one and a plain one
    return {"strided": torch.randn(2 * n)[::2], "expanded": torch.randn(1).expand(n),
            "contiguous": torch.randn(n)}


@pytest.mark.parametrize("kind", ["strided", "expanded", "contiguous"])
def test_sparse_linear_bias_of_any_strides(kind):
    # sparse_conv_cpu.cpp sparse_linear_cpu: bias read as bias[o] whatever its stride.
    w = torch.randn(5, 7)
    m = torch.rand(5, 7) > 0.3
    x = torch.randn(3, 7)
    b = _biases(5)[kind]
    want = F.linear(x, w * m, b)
    torch.testing.assert_close(ops.sparse_linear(x, *ops.sparse_pack(w, m), b), want)
    torch.testing.assert_close(lthfast.ops.masked_linear(x, w, m, b, path="sparse"), want)


@pytest.mark.parametrize("kind", ["strided", "expanded"])
def test_sparse_conv2d_bias_of_any_strides(kind):
    # sparse_conv_cpu.cpp conv_impl: bias read as bias[o] whatever its stride.
    w = torch.randn(4, 3, 3, 3)
    m = torch.rand(w.shape) > 0.5
    x = torch.randn(2, 3, 8, 8)
    b = _biases(4)[kind]
    got = ops.sparse_conv2d(x, *ops.sparse_pack(w, m), b, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    torch.testing.assert_close(got, F.conv2d(x, w * m, b, 1, 1))


def test_sparse_linear_rejects_rowptr_out_of_range():
    # sparse_linear_cpu checked only rowptr[-1] == nnz: a row past nnz was read
    # out of bounds of colidx / values (a segfault). In a child process, so that
    # a regression fails this test instead of killing the session.
    code = (
        "import torch, lthfast\n"
        "ops = torch.ops.lthfast\n"
        "x = torch.randn(3, 6); ci = torch.tensor([0, 1], dtype=torch.int32); va = torch.ones(2)\n"
        "for rp in ([0, 3, 2], [1, 2, 2], [0, 1 << 40, 2]):\n"
        "    try:\n"
        "        ops.sparse_linear(x, torch.tensor(rp), ci, va, None)\n"
        "    except ValueError as e:\n"
        "        assert 'rowptr must ascend' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit(f'rowptr {rp} was accepted')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])


def test_sparse_conv2d_without_input_channels_is_bias():
    # conv_impl: with C == 0 no channel block ran and the (reused, per-thread)
    # accumulator workspace was returned as the output.
    warm = torch.randn(4, 3, 3, 3)
    ops.sparse_conv2d(torch.randn(1, 3, 8, 8) * 100, *ops.sparse_pack(warm, torch.ones_like(warm, dtype=torch.bool)),
                      None, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    w = torch.randn(4, 0, 3, 3)
    packed = ops.sparse_pack(w, torch.ones_like(w, dtype=torch.bool))
    b = torch.randn(4)
    y = ops.sparse_conv2d(torch.randn(1, 0, 8, 8), *packed, b, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    assert torch.equal(y, b.view(1, 4, 1, 1).expand(1, 4, 8, 8))
    y = ops.sparse_conv2d(torch.randn(1, 0, 8, 8), *packed, None, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    assert torch.equal(y, torch.zeros(1, 4, 8, 8))


def test_sparse_linear_without_input_features():
    # sparse_linear_cpu: input.reshape(-1, 0) raised on K == 0.
    w = torch.randn(4, 0)
    m = torch.ones(4, 0, dtype=torch.bool)
    b = torch.randn(4)
    x = torch.randn(2, 3, 0)
    want = F.linear(x, w, b)
    torch.testing.assert_close(ops.sparse_linear(x, *ops.sparse_pack(w, m), b), want)
    torch.testing.assert_close(lthfast.ops.masked_linear(x, w, m, b, path="sparse"), want)


@pytest.mark.parametrize("out_f,in_f", [(0, 5), (4, 0)])
def test_masked_linear_backward_with_zero_features(out_f, in_f):
    # masked_conv_dense.cpp masked_linear_backward: reshape(-1, 0) raised.
    x = torch.randn(2, 3, in_f, requires_grad=True)
    w = torch.randn(out_f, in_f, requires_grad=True)
    b = torch.randn(out_f, requires_grad=True)
    m = torch.ones(out_f, in_f, dtype=torch.bool)
    ops.masked_linear(x, w, m, b).sum().backward()
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.linear(x2, w2, b2).sum().backward()
    for got, want in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sparse_pack_float_mask_scales_like_dense(dtype):
    # masked_conv_dense.cpp sparse_pack: a float mask's values were dropped (the
    # bare weight was packed), so path="sparse" computed F.linear(x, w) where the
    # dense path computes F.linear(x, w * mask).
    w = torch.randn(6, 9, dtype=dtype)
    m = (torch.rand(6, 9) * (torch.rand(6, 9) > 0.4)).to(dtype)  # 0 or a value in (0, 1)
    x = torch.randn(4, 9, dtype=dtype)
    dense = lthfast.ops.masked_linear(x, w, m, path="dense")
    sparse = lthfast.ops.masked_linear(x, w, m, path="sparse")
    tol = {} if dtype != torch.bfloat16 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(sparse, dense, **tol)
    for got, want in zip(ops.sparse_pack(w, m), ref.sparse_pack(w, m)):
        assert torch.equal(got, want)
    wc = torch.randn(4, 3, 3, 3, dtype=dtype)
    mc = (torch.rand(wc.shape) * (torch.rand(wc.shape) > 0.4)).to(dtype)
    xc = torch.randn(2, 3, 6, 6, dtype=dtype)
    torch.testing.assert_close(lthfast.ops.masked_conv2d(xc, wc, mc, padding=1, path="sparse"),
                               lthfast.ops.masked_conv2d(xc, wc, mc, padding=1, path="dense"), **tol)
