"""lthfast.ops.masked_conv2d / masked_linear on CPU: both paths against the
reference on fresh random inputs, gradients, errors, caching."""
import pytest
import torch
import torch.nn.functional as F

import lthfast
from lthfast import _reference_conv as ref
from lthfast.ops import masked_conv2d, masked_linear

from _masked_conv_cases import CONV_CASES, assert_conv_close, assert_linear_close, conv_problem

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

PATHS = ["dense", "sparse", "auto", "tuned"]


def _cpu_supports(dtype):
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
        return True
    except RuntimeError:
        return False


DTYPES = [torch.float32, torch.float64] + [d for d in (torch.bfloat16, torch.float16) if _cpu_supports(d)]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c[:6]) for c in CONV_CASES])
@pytest.mark.parametrize("path", PATHS)
def test_conv_matches_reference(case, path):
    for seed, sparsity in enumerate((0.0, 0.5, 0.95, 1.0)):
        x, w, m, b, conf = conv_problem(case, sparsity=sparsity, seed=seed, bias=seed % 2 == 0)
        assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_conv_dtypes(dtype, path):
    for case in CONV_CASES[:4]:
        x, w, m, b, conf = conv_problem(case, dtype=dtype, seed=3)
        assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_conv_layouts(path):
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=5)
    xl = x.contiguous(memory_format=torch.channels_last)
    out = masked_conv2d(xl, w, m, b, **conf, path=path)
    assert_conv_close(out, x, w, m, b, conf)
    assert out.is_contiguous(memory_format=torch.channels_last)
    wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    xs = wide[..., ::2]  # non-contiguous view
    assert_conv_close(masked_conv2d(xs, w, m, b, **conf, path=path), xs, w, m, b, conf)
    wl = w.contiguous(memory_format=torch.channels_last)  # weights in channels_last too
    assert_conv_close(masked_conv2d(x, wl, m, b, **conf, path=path), x, w, m, b, conf)
    xe = x[:0]  # empty batch
    assert masked_conv2d(xe, w, m, b, **conf, path=path).shape[0] == 0


def test_conv_float_mask_and_inputs_untouched():
    x, w, m, b, conf = conv_problem(CONV_CASES[2], seed=7)
    fm = m.to(w.dtype)
    copies = [t.clone() for t in (x, w, m, b)]
    for path in PATHS:
        assert_conv_close(masked_conv2d(x, w, fm, b, **conf, path=path), x, w, m, b, conf)
        assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    for t, c in zip((x, w, m, b), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("path", PATHS)
def test_cache_follows_inplace_updates(path):
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=8)
    masked_conv2d(x, w, m, b, **conf, path=path)
    with torch.no_grad():
        w.mul_(-2.0)                    # an optimizer step
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    m[0].logical_not_()                 # re-pruning in place
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    w.data = torch.randn_like(w)        # a new storage
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)


@pytest.mark.parametrize("path", PATHS)
def test_linear_cache_follows_updates_and_checks_repeat_calls(path):
    """Repeat calls take the fast path; in-place updates, a new mask, a new storage,
    another input shape and a gradient-needing call all still give the right answer,
    and bad input on a repeat call still gets the clear error."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(6, 40, generator=gen)
    w = torch.randn(33, 40, generator=gen)
    m = torch.rand(w.shape, generator=gen) > 0.8
    b = torch.randn(33, generator=gen)
    for _ in range(2):
        assert_linear_close(masked_linear(x, w, m, b, path=path), x, w, m, b)
    with torch.no_grad():
        w.mul_(-2.0)                    # an optimizer step
    assert_linear_close(masked_linear(x, w, m, b, path=path), x, w, m, b)
    m[0].logical_not_()                 # re-pruning in place
    assert_linear_close(masked_linear(x, w, m, b, path=path), x, w, m, b)
    m2 = m.clone()
    m2[1].logical_not_()                # another mask object
    assert_linear_close(masked_linear(x, w, m2, b, path=path), x, w, m2, b)
    w.data = torch.randn_like(w)        # a new storage
    assert_linear_close(masked_linear(x, w, m2, b, path=path), x, w, m2, b)
    x3 = torch.randn(2, 3, 40, generator=gen)
    assert_linear_close(masked_linear(x3, w, m2, b, path=path), x3, w, m2, b)
    wg = w.detach().requires_grad_()
    masked_linear(x, wg, m2, b, path=path).sum().backward()
    assert bool((wg.grad[~m2] == 0).all())
    with pytest.raises(TypeError, match="input dtype"):
        masked_linear(x.double(), w, m2, b, path=path)
    with pytest.raises(ValueError, match="in_features"):
        masked_linear(torch.randn(6, 41), w, m2, b, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_linear_matches_reference(path):
    gen = torch.Generator().manual_seed(11)
    for shape, dtype in (((5, 40), torch.float32), ((2, 3, 40), torch.float64), ((40,), torch.float32),
                         ((0, 40), torch.float32), ((4, 40), torch.bfloat16)):
        x = torch.randn(shape, generator=gen).to(dtype)
        w = torch.randn(33, 40, generator=gen).to(dtype)
        m = torch.rand(w.shape, generator=gen) > 0.8
        b = torch.randn(33, generator=gen).to(dtype)
        assert_linear_close(masked_linear(x, w, m, b, path=path), x, w, m, b)
        assert_linear_close(masked_linear(x.t() if x.dim() == 2 and x.shape[0] == 40 else x, w, m,
                                          None, path=path), x, w, m, None)


def test_gradients_zero_at_pruned_and_match_reference():
    x, w, m, b, conf = conv_problem(CONV_CASES[2], dtype=torch.float64, seed=9)
    for fn, rf, args in ((masked_conv2d, ref.masked_conv2d, conf), (None, None, None)):
        if fn is None:  # linear
            x, w = torch.randn(4, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
            m, b = torch.rand(5, 7) > 0.5, torch.randn(5, dtype=torch.float64)
            fn, rf, args = masked_linear, ref.masked_linear, {}
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        fn(leaves[0], leaves[1], m, leaves[2], **args).square().sum().backward()
        want = [t.clone().requires_grad_() for t in (x, w, b)]
        rf(want[0], want[1], m, want[2], **args).square().sum().backward()
        for got, exp in zip(leaves, want):
            torch.testing.assert_close(got.grad, exp.grad)
        assert (leaves[1].grad[~m] == 0).all()


def test_gradcheck_float64():
    tiny = (1, 4, 5, 6, 4, (3, 3), (1, 2), (1, 0), (2, 1), 2)
    x, w, m, b, conf = conv_problem(tiny, dtype=torch.float64, seed=10)
    ins = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda a, ww, bb: torch.ops.lthfast.masked_conv2d(
        a, ww, m, bb, conf["stride"], conf["padding"], conf["dilation"], conf["groups"]), ins)
    xl, wl = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    ml, bl = torch.rand(4, 6) > 0.5, torch.randn(4, dtype=torch.float64)
    ins = [t.requires_grad_() for t in (xl, wl, bl)]
    assert torch.autograd.gradcheck(lambda a, ww, bb: torch.ops.lthfast.masked_linear(a, ww, ml, bb), ins)


def test_no_grad_for_unrequested_inputs():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=12)
    w.requires_grad_()
    masked_conv2d(x, w, m, b, **conf).sum().backward()
    assert x.grad is None and b.grad is None and (w.grad[~m] == 0).all()
