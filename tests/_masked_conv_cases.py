"""Shared cases and checks of the masked convolution tests (CPU and CUDA)."""
import copy

import torch
import torch.nn.functional as F

from lthfast import _reference_conv as ref

# (N, C, H, W, Cout, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 8, 11, 13, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 16, 14, 14, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1),      # resnet stride-2 3x3
    (2, 8, 9, 12, 12, (3, 3), (1, 2), (2, 0), (2, 1), 2),        # asymmetric, grouped, dilated
    (1, 12, 10, 10, 12, (3, 3), (1, 1), (1, 1), (1, 1), 12),     # depthwise
    (1, 12, 10, 10, 24, (5, 5), (2, 2), (2, 2), (1, 1), 12),     # depthwise multiplier 2
    (1, 3, 23, 21, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1),        # resnet stem
    (3, 8, 8, 8, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1),         # 1x1
    (2, 8, 9, 9, 16, (1, 1), (2, 2), (0, 0), (1, 1), 1),         # downsample 1x1 stride 2
    (1, 4, 6, 7, 5, (2, 3), (3, 1), (0, 1), (1, 3), 1),          # odd shapes
]


def conv_problem(case, dtype=torch.float32, sparsity=0.7, seed=0, bias=True, device="cpu"):
    n, c, h, w, cout, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(cout, c // g, *k, generator=gen, dtype=torch.float64)
    mask = torch.rand(wt.shape, generator=gen) >= sparsity
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(wt), mask.to(device), cast(b), dict(stride=s, padding=p, dilation=d, groups=g)


def assert_conv_close(out, x, w, mask, b, conf):
    """Error vs a float64 reference at most 2x that of the same-precision torch reference
    (plus a few ulps of the output scale), as the numerical policy asks."""
    wide = ref.masked_conv2d(x.double(), w.double(), mask, None if b is None else b.double(), **conf)
    same = F.conv2d(x, ref._masked(w, mask), b, **conf).double()
    assert out.shape == wide.shape and out.dtype == x.dtype
    scale = wide.abs().max().item() if wide.numel() else 1.0
    eps = torch.finfo(x.dtype).eps * max(1.0, scale) * 8
    err = (out.double() - wide).abs().max().item() if wide.numel() else 0.0
    base = (same - wide).abs().max().item() if wide.numel() else 0.0
    assert err <= 2 * base + eps, f"error {err} vs torch's {base} (eps {eps})"


def assert_linear_close(out, x, w, mask, b):
    wide = ref.masked_linear(x.double(), w.double(), mask, None if b is None else b.double())
    same = F.linear(x, ref._masked(w, mask), b).double()
    scale = wide.abs().max().item() if wide.numel() else 1.0
    eps = torch.finfo(x.dtype).eps * max(1.0, scale) * 8
    err = (out.double() - wide).abs().max().item() if wide.numel() else 0.0
    base = (same - wide).abs().max().item() if wide.numel() else 0.0
    assert out.shape == wide.shape and out.dtype == x.dtype
    assert err <= 2 * base + eps, f"error {err} vs torch's {base} (eps {eps})"


def random_masks(model, sparsity=0.8, seed=0):
    """{name: bool mask} for every 2-D / 4-D weight of `model`, about `sparsity` pruned."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=gen) >= sparsity
            for name, p in model.named_parameters()
            if name.endswith("weight") and p.dim() in (2, 4)}


def masked_copy(model, masks):
    """A deep copy of `model` with the pruned weights zeroed (the dense reference)."""
    dense = copy.deepcopy(model)
    params = dict(dense.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].masked_fill_(~m, 0)
    return dense
