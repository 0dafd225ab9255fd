"""Random inputs for the threshold tests, shared by the CPU and CUDA suites."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced"]


def make_tensor(shape, dtype, layout, values, gen):
    """A tensor of `shape` whose memory layout is `layout`, filled by `values`:
    'normal' (random floats, rarely tied), 'ties' (a few distinct magnitudes, signs
    mixed), or 'special' (normal plus NaN, +-Inf, +-0)."""
    n = 1
    for s in shape:
        n *= s
    if values == "ties":
        x = torch.randint(0, 4, (n,), generator=gen).to(torch.float64) * 0.5
        x = x * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
    else:
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        if values == "special" and n:
            specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0],
                                    dtype=torch.float64)
            pick = torch.randint(0, n, (max(1, n // 5),), generator=gen)
            x[pick] = specials[torch.randint(0, 5, (pick.numel(),), generator=gen)]
    x = x.to(dtype).reshape(shape)
    if layout == "channels_last" and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and len(shape) >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "sliced" and len(shape) >= 1:
        big = torch.empty((shape[0] * 2,) + tuple(shape[1:]), dtype=dtype)
        big[::2] = x
        x = big[::2]
    return x


SHAPES = st.one_of(
    st.tuples(st.integers(0, 300)),
    st.tuples(st.integers(1, 20), st.integers(1, 20)),
    st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
)


@st.composite
def threshold_problem(draw, max_tensors=4):
    """(tensors, masks or None, k) with a fresh random seed."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    values = draw(st.sampled_from(["normal", "ties", "special"]))
    count = draw(st.integers(1, max_tensors))
    mixed = draw(st.booleans())
    base_dtype = draw(st.sampled_from(DTYPES))
    tensors = []
    for _ in range(count):
        shape = draw(SHAPES)
        dtype = draw(st.sampled_from(DTYPES)) if mixed else base_dtype
        layout = draw(st.sampled_from(LAYOUTS))
        tensors.append(make_tensor(shape, dtype, layout, values, gen))
    masks = None
    if draw(st.booleans()):
        p = draw(st.sampled_from([0.0, 0.3, 0.9]))
        masks = [torch.rand(t.shape, generator=gen) >= p for t in tensors]
    n = sum(int(m.sum()) for m in masks) if masks is not None else sum(t.numel() for t in tensors)
    k = draw(st.one_of(st.integers(0, n), st.sampled_from([0, n, max(0, n - 1), min(1, n)])))
    return tensors, masks, k
