"""When `path="auto"` runs the sparse kernel instead of the dense one.

ONE table, set from `lthfast bench conv` (bench/results/cpu-conv.txt): for each
(device, dtype, kernel class, batch) the smallest weight sparsity (fraction of
pruned weights) at which the direct sparse kernel beat the library convolution
on the masked weight. None: the sparse kernel never wins there (or was not
measured) and auto stays dense. Rows are matched top to bottom; the first row
whose device, dtype and kernel match and whose `batch<=` covers the batch wins.
"""
from __future__ import annotations

import torch

ANY = "*"

# fmt: off
# Measured: bench/results/cpu-conv.txt (resnet50 shapes, 1 thread, Xeon with
# AVX-512) and, for linear, resnet50's fc (2048 -> 1000). "never": the sparse
# kernel lost at every measured sparsity (1x1 convs: oneDNN's GEMM wins up to 98%).
#  device  dtypes                    kernel      batch<=  min sparsity for sparse
SPARSE_RULES = [
    ("cpu",  ("float32", "float64"), "3x3",       8,      0.90),
    ("cpu",  ("float32", "float64"), "kxk",       8,      0.80),   # resnet stem 7x7/2
    ("cpu",  ("float32", "float64"), "1x1",       8,      None),
    ("cpu",  ("float32", "float64"), "linear",    1,      0.90),
    ("cpu",  ("float32", "float64"), "linear",    8,      0.95),
    # Not measured -> dense: batch > 8, depthwise, fp16/bf16 on CPU (oneDNN's
    # AMX/AVX-512 bf16 kernels), and CUDA (no GPU where this table was made).
    (ANY,    ANY,                    ANY,     10**9,      None),
]
# fmt: on


def kernel_class(kernel_size, groups: int, in_channels: int) -> str:
    """'1x1', '3x3', 'kxk', 'depthwise' (groups == in_channels > 1) or 'linear' (kernel_size None)."""
    if kernel_size is None:
        return "linear"
    if groups > 1 and groups == in_channels:
        return "depthwise"
    kh, kw = kernel_size
    if (kh, kw) == (1, 1):
        return "1x1"
    if (kh, kw) == (3, 3):
        return "3x3"
    return "kxk"


def min_sparsity(device: torch.device, dtype: torch.dtype, kind: str, batch: int) -> float | None:
    name = str(dtype).replace("torch.", "")
    for dev, dtypes, k, bmax, smin in SPARSE_RULES:
        if ((dev == ANY or dev == device.type) and (dtypes == ANY or name in dtypes)
                and (k == ANY or k == kind) and batch <= bmax):
            return smin
    return None


def use_sparse(device: torch.device, dtype: torch.dtype, kind: str, batch: int,
               sparsity: float) -> bool:
    smin = min_sparsity(device, dtype, kind, batch)
    return smin is not None and sparsity >= smin
