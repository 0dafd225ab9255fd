"""The CPU sparse convolution kernel's own code paths (tile widths, channel
blocks, stride phases, threads, scratch reuse; each instruction set this CPU
runs: AVX-512, AVX2, the baseline) and masked_conv2d's fast path for an
unchanged weight, against the reference and F.conv2d."""
import pytest
import torch
import torch.nn.functional as F

import lthfast
from lthfast.ops import masked_conv2d

from _masked_conv_cases import assert_conv_close, assert_linear_close, conv_problem

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

ops = torch.ops.lthfast
ISAS = ("base", "avx2", "avx512")


def _isas_here():
    if not lthfast._ops.available():
        return ["base"]
    best = lthfast._ops._C._sparse_cpu_isa("avx512")  # no cap: the best this CPU has
    return list(ISAS[:ISAS.index(best) + 1])


@pytest.fixture(params=_isas_here())
def isa(request):
    """Runs the test with the sparse kernels of each instruction set this CPU has."""
    got = lthfast._ops._C._sparse_cpu_isa(request.param)
    assert got == request.param
    try:
        yield got
    finally:
        lthfast._ops._C._sparse_cpu_isa("avx512")

# (N, C, H, W, Cout, kernel, stride, padding, dilation, groups), chosen for the kernel's paths.
KERNEL_CASES = [
    (1, 6, 3, 3, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),        # 3x3 output: a 1-vector tile
    (1, 8, 5, 6, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),        # 2-3 vector tiles (4 / 2 accumulator sets)
    (2, 4, 41, 39, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # several tiles, last one shorter
    (1, 300, 9, 9, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # many channel blocks
    (2, 6, 17, 19, 8, (2, 2), (3, 3), (1, 0), (1, 1), 1),      # stride 3, kernel 2: unused phases
    (1, 6, 16, 16, 8, (1, 1), (2, 2), (0, 0), (1, 1), 1),      # 1x1/2: one phase of four
    (2, 6, 15, 16, 8, (3, 3), (2, 2), (2, 2), (2, 2), 2),      # dilation 2 with stride 2, grouped
    (3, 16, 12, 10, 16, (3, 3), (2, 1), (1, 1), (1, 1), 16),   # depthwise, batch 3
    (1, 8, 20, 20, 8, (5, 5), (1, 1), (2, 2), (1, 1), 1),      # 5x5
    (4, 3, 30, 30, 16, (7, 7), (2, 2), (3, 3), (1, 1), 1),     # resnet stem, batch 4
    (1, 8, 28, 28, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),      # 14x14 out: pitch 15 -> 16, de-interleave
    (2, 5, 27, 29, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),      # odd sizes, vector copy up to the tensor's end
    (1, 4, 13, 14, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # stride 1, pitch 16, vector row copy
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[str(c[:6]) for c in KERNEL_CASES])
def test_kernel_paths_match_reference(case, isa):
    for seed, sparsity in enumerate((0.0, 0.6, 0.9, 0.99, 1.0)):
        x, w, m, b, conf = conv_problem(case, sparsity=sparsity, seed=seed, bias=seed % 2 == 1)
        out = masked_conv2d(x, w, m, b, **conf, path="sparse")
        assert_conv_close(out, x, w, m, b, conf)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_kernel_strided_copy_other_dtypes(dtype, isa):
    # stride 2 and non-contiguous rows go through the generic (converting) copy
    for case in (KERNEL_CASES[4], KERNEL_CASES[6]):
        x, w, m, b, conf = conv_problem(case, dtype=dtype, sparsity=0.8, seed=4)
        try:
            F.conv2d(x[:1], w, None, **conf)
        except RuntimeError:
            pytest.skip(f"F.conv2d has no CPU kernel for {dtype}")
        assert_conv_close(masked_conv2d(x, w, m, b, **conf, path="sparse"), x, w, m, b, conf)


def test_kernel_noncontiguous_and_channels_last_input_with_stride(isa):
    case = (2, 6, 15, 16, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1)
    x, w, m, b, conf = conv_problem(case, sparsity=0.7, seed=6)
    wide = torch.randn(2, 6, 15, 32)
    xs = wide[..., ::2]                      # column stride 2 with conv stride 2
    assert_conv_close(masked_conv2d(xs, w, m, b, **conf, path="sparse"), xs, w, m, b, conf)
    xl = x.contiguous(memory_format=torch.channels_last)
    assert_conv_close(masked_conv2d(xl, w, m, b, **conf, path="sparse"), x, w, m, b, conf)


def test_kernel_two_threads_and_scratch_reuse(isa):
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            # a large call, a small one, a large one: the reused scratch buffers
            # must not leak values from one call into the next
            for case in (KERNEL_CASES[2], KERNEL_CASES[0], KERNEL_CASES[3], KERNEL_CASES[2]):
                x, w, m, b, conf = conv_problem(case, sparsity=0.85, seed=threads)
                assert_conv_close(masked_conv2d(x, w, m, b, **conf, path="sparse"), x, w, m, b, conf)
    finally:
        torch.set_num_threads(old)


def test_kernel_rows_without_weights_in_some_blocks(isa):
    # only the first and the last input channel kept: every other channel block is empty
    x, w, m, b, conf = conv_problem(KERNEL_CASES[3], sparsity=0.0, seed=7)
    m[:] = False
    m[:, 0, 1, 1] = True
    m[::3, -1, 0, 2] = True
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path="sparse"), x, w, m, b, conf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_sparse_linear_with_many_rows_runs_as_a_conv(dtype, isa):
    """From 16 rows on, sparse_linear runs the conv kernel over a 1 x rows plane (x read
    through its row stride); fewer rows keep the per-row gather. Both against the
    reference, with bias or not, 2-D / 3-D / non-contiguous inputs, empty output rows."""
    gen = torch.Generator().manual_seed(21)
    w = torch.randn(37, 70, generator=gen).to(dtype)
    m = torch.rand(w.shape, generator=gen) > 0.85
    m[5] = False  # an output with no kept weight: bias only
    b = torch.randn(37, generator=gen).to(dtype)
    packed = ops.sparse_pack(w, m)
    for shape in ((15, 70), (16, 70), (17, 70), (130, 70), (3, 40, 70)):
        x = torch.randn(shape, generator=gen).to(dtype)
        for bias in (b, None):
            assert_linear_close(ops.sparse_linear(x, *packed, bias), x, w, m, bias)
    wide = torch.randn(50, 140, generator=gen).to(dtype)
    xs = wide[:, ::2]  # rows of stride 140, columns of stride 2
    assert_linear_close(ops.sparse_linear(xs, *packed, b), xs, w, m, b)


def test_isa_is_reported_and_a_bad_cap_names_the_value():
    info = lthfast._ops._C.build_info()
    assert info["cpu_sparse_isa"] in ISAS
    assert lthfast._ops._C._sparse_cpu_isa() == info["cpu_sparse_isa"]
    with pytest.raises(ValueError, match='got "sse9"'):
        lthfast._ops._C._sparse_cpu_isa("sse9")
    assert lthfast._ops._C._sparse_cpu_isa() == info["cpu_sparse_isa"]  # unchanged


def test_kernel_rejects_corrupt_packs(isa):
    x, w, m, b, conf = conv_problem(KERNEL_CASES[1], sparsity=0.5, seed=8)
    rp, ci, va = ops.sparse_pack(w, m)
    args = (b, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    bad = ci.clone()
    bad[len(bad) // 2] = -1
    with pytest.raises(ValueError, match="column indices outside"):
        ops.sparse_conv2d(x, rp, bad, va, *args)
    rp_bad = rp.clone()
    rp_bad[1] = rp_bad[2] + 1
    with pytest.raises(ValueError, match="rowptr must ascend"):
        ops.sparse_conv2d(x, rp_bad, ci, va, *args)


@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
def test_fast_path_still_checks_and_follows_changes(path):
    x, w, m, b, conf = conv_problem(KERNEL_CASES[1], sparsity=0.9, seed=9)
    for _ in range(2):  # the second call takes the fast path
        assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    # different bias / no bias / another batch size on the warm entry
    assert_conv_close(masked_conv2d(x, w, m, None, **conf, path=path), x, w, m, None, conf)
    x3 = torch.randn(3, *x.shape[1:])
    assert_conv_close(masked_conv2d(x3, w, m, b, **conf, path=path), x3, w, m, b, conf)
    # bad input on a warm entry still gets the clear errors
    with pytest.raises(ValueError, match="input has 5 channels"):
        masked_conv2d(x[:, :5], w, m, b, **conf, path=path)
    with pytest.raises(ValueError, match="4-D"):
        masked_conv2d(x[0], w, m, b, **conf, path=path)
    with pytest.raises(TypeError, match="input dtype"):
        masked_conv2d(x.double(), w, m, b, **conf, path=path)
    with pytest.raises(ValueError, match="padding"):
        masked_conv2d(x, w, m, b, **{**conf, "padding": -1}, path=path)
    with pytest.raises(ValueError, match="bias must have shape"):
        masked_conv2d(x, w, m, b[:2], **conf, path=path)
    with pytest.raises(ValueError, match="padding must be 'valid', 'same'"):
        masked_conv2d(x, w, m, b, **{**conf, "padding": "full"}, path=path)
    with pytest.raises(TypeError, match="padding"):
        masked_conv2d(x, w, m, b, **{**conf, "padding": 1.5}, path=path)
    # gradients after warm inference calls: the autograd op, zero at pruned weights
    wg = w.clone().requires_grad_()
    masked_conv2d(x, wg, m, b, **conf, path=path)
    with torch.no_grad():
        masked_conv2d(x, wg, m, b, **conf, path=path)
    masked_conv2d(x, wg, m, b, **conf, path=path).sum().backward()
    assert (wg.grad[~m] == 0).all()
    # in-place changes of weight and mask after the fast path ran
    with torch.no_grad():
        w.mul_(0.5)
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    m[0].logical_not_()
    assert_conv_close(masked_conv2d(x, w, m, b, **conf, path=path), x, w, m, b, conf)
    m2 = m.clone()
    m2[1].logical_not_()                # another mask object for the same weight
    assert_conv_close(masked_conv2d(x, w, m2, b, **conf, path=path), x, w, m2, b, conf)


def test_weight_cache_entry_goes_with_its_weight():
    from lthfast.ops import _weight_cache
    x, w, m, b, conf = conv_problem(KERNEL_CASES[0], sparsity=0.5, seed=10)
    masked_conv2d(x, w, m, b, **conf)
    key = id(w)
    assert key in _weight_cache._CACHE
    del w
    import gc
    gc.collect()
    assert key not in _weight_cache._CACHE or _weight_cache._CACHE[key].ref() is not None


def test_compiled_weight_stamp_matches_the_python_one():
    """The compiled stamp gives what the Python one gives: the same tuples for plain,
    permuted and offset views, meta tensors; None for inference tensors. (What the
    compiled repeat call does with it: tests/test_dense_repeat.py.)"""
    from lthfast.ops import _weight_cache as wc
    if wc._stamp is wc._py_stamp:
        pytest.skip("lthfast._C not built")
    w = torch.randn(6, 4, 3, 3)
    m = torch.rand(w.shape) > 0.5
    cases = [(w, m), (w.permute(1, 0, 2, 3), m.permute(1, 0, 2, 3)), (w[2:], m[2:]),
             (w[:, :, 1], m[:, :, 1]), (torch.randn(3, 2, device="meta"),
                                        torch.ones(3, 2, dtype=torch.bool, device="meta"))]
    for a, b in cases:
        assert wc._stamp(a, b) == wc._py_stamp(a, b) is not None
    with torch.inference_mode():
        wi = torch.randn(3)
    assert wc._stamp(wi, torch.ones(3, dtype=torch.bool)) is None is wc._py_stamp(wi, torch.ones(3, dtype=torch.bool))


def _cache_index_consistent(wc) -> bool:
    """_ON_STORAGE holds exactly the (storage, key) pairs of the entries in _CACHE."""
    pairs = {(sid, k) for sid, keys in wc._ON_STORAGE.items() for k in keys}
    return (pairs == {(e.place[0], k) for k, e in wc._CACHE.items()}
            and all(wc._ON_STORAGE.values()))


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_weight_cache_keeps_one_entry_per_place(path):
    """A fresh view of the weight on every call (its storage kept alive by the weight)
    leaves one cache entry, not one per dead view with its derived tensors; views at
    other places, other weights, new storage under the same object, storage death,
    forget() and clear() keep the cache's index consistent."""
    import gc
    from lthfast.ops import _weight_cache as wc
    wc.clear()
    x, w, m, b, conf = conv_problem(KERNEL_CASES[0], sparsity=0.5, seed=11)
    views = []
    with torch.no_grad():
        for _ in range(12):
            v = w.view(w.shape)
            views.append(v)  # alive: ids cannot be reused
            assert_conv_close(masked_conv2d(x, v, m, b, **conf, path=path), x, w, m, b, conf)
        assert len(wc._CACHE) == 1 and id(views[-1]) in wc._CACHE
        # the first view again: rebuilt (its entry was replaced), still correct
        assert_conv_close(masked_conv2d(x, views[0], m, b, **conf, path=path), x, w, m, b, conf)
        assert set(wc._CACHE) == {id(views[0])}
        flat = w.view(w.shape[0], -1)[:, :].reshape(w.shape)  # same bytes, another object
        masked_conv2d(x, flat, m, b, **conf, path=path)
        other = w.clone()
        masked_conv2d(x, other, m, b, **conf, path=path)
        assert set(wc._CACHE) == {id(flat), id(other)} and _cache_index_consistent(wc)
        other.data = torch.randn_like(other)  # same object, new storage: a new entry
        assert_conv_close(masked_conv2d(x, other, m, b, **conf, path=path), x, other, m, b, conf)
        assert set(wc._CACHE) == {id(flat), id(other)} and _cache_index_consistent(wc)
    del other
    gc.collect()  # its storage died: its entry went with it
    assert set(wc._CACHE) == {id(flat)} and _cache_index_consistent(wc)
    wc.forget(w)  # the weight itself was never called: its views' entries go
    assert not wc._CACHE and _cache_index_consistent(wc)
    masked_conv2d(x, views[3], m, b, **conf, path=path)
    wc.clear()
    assert not wc._CACHE and not wc._ON_STORAGE


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_a_fused_step_drops_the_entries_of_views_of_its_parameters(path):
    """A fused optimizer step does not bump _version: the entries of views of its
    parameters go too, so a fresh view made after the step (which can get a dropped
    view's id, and then its stamp) is never served the weight from before the step."""
    from lthfast.ops import _weight_cache as wc
    wc.clear()
    x, w, m, b, conf = conv_problem(KERNEL_CASES[0], sparsity=0.5, seed=12)
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.SGD([p], lr=0.5, fused=True)
    with torch.no_grad():
        assert_conv_close(masked_conv2d(x, p.view(p.shape), m, b, **conf, path=path), x, w, m, b, conf)
    assert len(wc._CACHE) == 1
    p.grad = torch.randn_like(p)
    opt.step()
    assert not wc._CACHE and _cache_index_consistent(wc)
    with torch.no_grad():
        want = p.detach().clone()
        assert_conv_close(masked_conv2d(x, p.view(p.shape), m, b, **conf, path=path), x, want, m, b,
                          conf)


@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
def test_fresh_temporary_masks_are_never_mistaken_for_a_dead_one(path):
    # A temporary mask can come back with the id, data pointer and version of
    # the previous (freed) one: the cache must still see a new mask.
    x = torch.randn(1, 8, 10, 10)
    w = torch.randn(8, 8, 3, 3)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _ in range(40):
            m = torch.rand(w.shape, generator=gen) > 0.5
            want = F.conv2d(x, w * m, None, 1, 1)
            got = masked_conv2d(x, w, m, None, 1, 1, path=path)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            del m
