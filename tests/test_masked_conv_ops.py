"""Masked convolution ops: opcheck, torch.compile(fullgraph=True), bad input."""
import pytest
import torch

import lthfast
from lthfast.ops import masked_conv2d, masked_linear

from _masked_conv_cases import CONV_CASES, assert_conv_close, conv_problem

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")
ops = torch.ops.lthfast


def _conv_args(case, dtype=torch.float64, seed=0, bias=True):
    x, w, m, b, c = conv_problem(case, dtype=dtype, seed=seed, bias=bias)
    return x, w, m, b, list(c["stride"]), list(c["padding"]), list(c["dilation"]), c["groups"]


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[3]])
def test_opcheck_conv(case):
    x, w, m, b, s, p, d, g = _conv_args(case)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(ops.masked_conv2d, (x, w, m, b, s, p, d, g))
    torch.library.opcheck(ops.masked_conv2d, (x.detach().float(), w.detach().float(), m, None, s, p, d, g))
    gy = torch.randn_like(ops.masked_conv2d(x, w, m, b, s, p, d, g))
    for need in ([True, True, True], [False, True, False]):
        torch.library.opcheck(ops._masked_conv2d_backward, (gy, x.detach(), w.detach(), m, s, p, d, g, need))
    packed = ops.sparse_pack(w.detach(), m)
    torch.library.opcheck(ops.sparse_pack, (w.detach(), m))
    torch.library.opcheck(ops.sparse_conv2d, (x.detach(), *packed, b.detach(), list(w.shape[2:]), s, p, d, g))


def test_opcheck_linear():
    x, w = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    m, b = torch.rand(5, 6) > 0.5, torch.randn(5, dtype=torch.float64)
    torch.library.opcheck(ops.masked_linear, (x.requires_grad_(), w.requires_grad_(), m, b.requires_grad_()))
    gy = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.library.opcheck(ops._masked_linear_backward, (gy, x.detach(), w.detach(), m, [True, True, True]))
    packed = ops.sparse_pack(w.detach(), m)
    torch.library.opcheck(ops.sparse_linear, (x.detach().float(), *ops.sparse_pack(w.detach().float(), m), None))
    torch.library.opcheck(ops.sparse_linear, (x.detach(), *packed, b.detach()))


def test_sparse_pack_matches_reference():
    from lthfast import _reference_conv as ref
    w = torch.randn(6, 3, 3, 3).to(torch.bfloat16)
    m = torch.rand(w.shape) > 0.6
    for got, want in zip(ops.sparse_pack(w, m), ref.sparse_pack(w, m)):
        assert torch.equal(got, want)


def test_compile_fullgraph():
    """In a subprocess: compiled graphs keep fake tensors alive in this process, and
    tests that walk every live tensor (test_prune_compat) must not meet them."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", "import test_masked_conv_ops as t; t._compile_checks()"],
                       cwd=here, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _compile_checks():
    x, w, m, b, conf = conv_problem(CONV_CASES[1], seed=4)
    lw = torch.randn(7, 16 * 3 * 3)
    lm = torch.rand(lw.shape) > 0.5

    def net(x, w, b, lw, path):
        y = masked_conv2d(x, w, m, b, **conf, path=path).relu()
        y = torch.nn.functional.avg_pool2d(y, 2).flatten(1)
        return masked_linear(y, lw, lm, None, path=path)

    for path in ("auto", "sparse"):
        got = torch.compile(net, fullgraph=True, backend="aot_eager")(x, w, b, lw, path)
        torch.testing.assert_close(got, net(x, w, b, lw, "dense"), rtol=1e-4, atol=1e-4)
    # training through the compiled graph: the gradient of pruned weights is exactly 0
    wg = w.clone().requires_grad_()
    out = torch.compile(net, fullgraph=True, backend="aot_eager")(x, wg, b, lw, "auto")
    out.sum().backward()
    assert (wg.grad[~m] == 0).all() and wg.grad[m].abs().sum() > 0


def _err(fn, exc, *words):
    with pytest.raises(exc) as info:
        fn()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_errors_name_argument_and_value():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=1)
    conv = lambda **kw: masked_conv2d(**{**dict(input=x, weight=w, mask=m, bias=b), **conf, **kw})  # noqa: E731
    _err(lambda: conv(mask=m[:, :2]), ValueError, "mask shape", str(tuple(m[:, :2].shape)))
    _err(lambda: conv(mask=m.to(torch.int8)), TypeError, "mask dtype", "torch.int8")
    _err(lambda: conv(mask=m.to("meta")), ValueError, "mask is on meta")
    _err(lambda: conv(input=x.double()), TypeError, "input dtype torch.float64", "torch.float32")
    _err(lambda: conv(input=x[:, :5]), ValueError, "input has 5 channels")
    _err(lambda: conv(padding=-1), ValueError, "padding", "(-1, -1)")
    _err(lambda: conv(stride=0), ValueError, "stride", "(0, 0)")
    _err(lambda: conv(input=x[0]), ValueError, "4-D", "3-D")
    _err(lambda: conv(input=x[0, 0, 0]), ValueError, "4-D", "1-D")
    _err(lambda: conv(groups=4), ValueError, "groups = 4")
    _err(lambda: conv(bias=b[:3]), ValueError, "bias must have shape")
    _err(lambda: conv(path="fast"), ValueError, "path", "'fast'")
    _err(lambda: conv(stride="1"), TypeError, "stride", "'1'")
    _err(lambda: conv(input=x[..., :1, :1], padding=0), ValueError, "smaller than the dilated kernel")
    xl, wl, ml = torch.randn(2, 5), torch.randn(3, 5), torch.rand(3, 5) > 0.5
    _err(lambda: masked_linear(xl[:, :4], wl, ml), ValueError, "in_features = 5")
    _err(lambda: masked_linear(xl, wl, ml.t()), ValueError, "mask shape (5, 3)")
    _err(lambda: masked_linear(xl.half(), wl, ml), TypeError, "input dtype torch.float16")
    _err(lambda: masked_linear(xl, wl.int(), ml), TypeError, "weight must be float")


def test_op_level_errors_are_clean():
    """Direct torch.ops callers get the same checks from C++ (no crash)."""
    x, w, m, b, s, p, d, g = _conv_args(CONV_CASES[0], dtype=torch.float32)
    _err(lambda: ops.masked_conv2d(x, w, m[:1], b, s, p, d, g), ValueError, "mask shape")
    _err(lambda: ops.masked_conv2d(x, w, m, b, s, [-1, 0], d, g), ValueError, "padding", "-1")
    _err(lambda: ops.masked_conv2d(x[0], w, m, b, s, p, d, g), ValueError, "4-D", "3-D")
    _err(lambda: ops.masked_conv2d(x.double(), w, m, b, s, p, d, g), TypeError, "input dtype")
    rp, ci, va = ops.sparse_pack(w, m)
    _err(lambda: ops.sparse_conv2d(x, rp, ci, va.double(), b, [3, 3], s, p, d, g), TypeError, "values")
    _err(lambda: ops.sparse_conv2d(x, rp, ci + 1000, va, b, [3, 3], s, p, d, g), ValueError, "colidx")
    _err(lambda: ops.sparse_conv2d(x, rp, ci, va, b, [3, 3], s, p, d, 3), ValueError, "groups = 3")


def test_failed_call_leaves_cache_consistent():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=2)
    with pytest.raises(ValueError):
        masked_conv2d(x, w, m, b, **{**conf, "padding": -1})
    assert_conv_close(masked_conv2d(x, w, m, b, **conf), x, w, m, b, conf)
