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
#  device  dtypes              kernel      batch<=  min sparsity for sparse
SPARSE_RULES = [
    ("cpu",  ("float32", "float64"), "3x3",      1,  0.90),
    ("cpu",  ("float32", "float64"), "3x3",      8,  0.95),
    ("cpu",  ("float32", "float64"), "1x1",      1,  0.95),
    ("cpu",  ("float32", "float64"), "1x1",      8,  0.98),
    ("cpu",  ("float32", "float64"), "kxk",      1,  0.95),
    ("cpu",  ("float32", "float64"), "linear",   1,  0.80),
    ("cpu",  ("float32", "float64"), "linear",   8,  0.95),
    # fp16/bf16 on CPU: the library kernels (AMX/AVX-512 bf16) win; CUDA: not
    # measured yet (no GPU where this table was made) -> dense.
    (ANY,    ANY,                    ANY,     10**9,  None),
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
