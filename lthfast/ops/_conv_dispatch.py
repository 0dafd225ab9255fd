"""When `path="auto"` runs the sparse kernel instead of the dense one.

ONE table, set from `lthfast bench conv` (bench/results/cpu-conv*.txt, cuda-conv.txt): for each
(device, instruction set of the CPU sparse kernels, dtype, kernel class, CPU threads, batch,
weight size, fan-in, output size) the smallest weight sparsity (fraction of pruned weights) at which
the direct sparse kernel beat the library convolution on the masked weight. None: the sparse
kernel never wins there (or was not measured) and auto stays dense. Rows are matched top to
bottom; the first row whose device, isa (the kernels' instruction set,
`lthfast._C._sparse_cpu_isa()`: "avx512", "avx2" or "base"), dtype and kernel match, whose
`threads>=` the thread count reaches (torch.get_num_threads(), CPU only), whose `batch<=`
covers the batch, whose `weights>=` the weight's element count and `fan-in>=` its
multiply-adds per output value (in/groups * kh * kw) reach and whose `out px<=` covers the
output plane wins. A layer's path is chosen at its first call with an input shape.
"""
from __future__ import annotations

import torch

from lthfast import _ops

ANY = "*"
SPARSITY_SLACK = 0.005

# fmt: off
# weights = the weight's element count (out * in/groups * kh * kw); fan-in = the
# weights per output channel (in/groups * kh * kw); out px = output pixels per sample
# (oh * ow; linear: 1). The sparse kernel pays a fixed cost per
# output and input value (the padded input copy, the output write) and gains the
# multiply-adds it skips.
#
# AVX2 (no AVX-512): measured on a 2-core AMD EPYC, 2 threads, every distinct Conv2d of
# resnet50 at 224 px, sparsity 0.5-0.98, batch 1 and 8. Stop 26 re-read the rows off three
# runs timed in balanced orders (bench/results/cpu-conv-avx2-2threads-stop26-{a,b}.txt and the
# resnet50 part of cpu-conv-detection-avx2-2threads-stop26.txt;
# the runs before had timed the sparse path always right after the dense one, cold, which
# made it look ~15% slower) and changed them only where all three agree: layer4's 3x3 convs
# (>= 1M weights on 7x7 outputs) win from 50% at batch 1 (1.17-1.44x), the 7x7 stem from 80%
# at batch 1 (1.07-1.15x), 1x1 convs with >= 512 input channels from 80% at batch 8
# (1.05-1.54x in 7 of 8 shapes, layer3.0.downsample 0.97-1.19x). Kept from stops 20-21 (two
# runs): the stem at batch 8 and the 1x1 convs on 56x56 planes with >= 32768 weights
# (layer2.0.conv1) from 90%. One thread: not measured, the AVX-512 rows below apply.
# Detector planes (stop 24: `lthfast bench conv --models fasterrcnn_resnet50_fpn`, every
# conv of fasterrcnn_resnet50_fpn at the 800 px it runs at, batch 1;
# bench/results/cpu-conv-detection-avx2-2threads.txt): on planes larger than resnet's
# 56x56 (100x100 to 400x400) the sparse kernel beats oneDNN from 80% on 1x1 convs of
# >= 16384 weights (6 of 8 shapes, 1.15-1.97x; the other two 0.81x / 0.91x) and on the
# 7x7 stem (1.47x); 3x3 convs follow the 80% row everywhere (1.22-1.80x at 80%).
#
# AVX-512 (and the base kernels): measured on a 2-core AVX-512 Xeon, same cases;
# 2 threads: bench/results/cpu-conv-2threads.txt (rows threads>=2, also used with
# more threads), 1 thread: cpu-conv.txt. 3x3 / 7x7 convs go sparse from 80%; 1x1
# convs from 80-90%, except the small 64-channel ones on 56x56 planes (resnet layer1)
# at batch 8, and, on one thread, at batch 1 too. With two threads the sparse kernel
# splits output channels over the threads and gains more than oneDNN does on these
# small convs, so more 1x1 rows go sparse.
#  device  isa       dtypes                    kernel threads>= batch<= weights>= fan-in>= out px<= min sparsity
SPARSE_RULES = [
    ("cpu",  "avx2",  ("float32", "float64"), "3x3",       2,      1,  1000000,      0,      49,   0.50),   # layer4 3x3 on 7x7
    ("cpu",  "avx2",  ("float32", "float64"), "3x3",       2,      8,        0,      0,   10**9,   0.80),
    ("cpu",  "avx2",  ("float32", "float64"), "kxk",       2,      1,        0,      0,   10**9,   0.80),   # the stem, 224-800 px
    ("cpu",  "avx2",  ("float32", "float64"), "kxk",       2,      8,        0,      0,   10**9,   0.90),
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      1,        0,      0,     784,   0.80),
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      1,        0,      0,    3136,   0.90),   # <= 56x56
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      1,    16384,      0,   10**9,   0.80),   # detector planes
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      1,        0,      0,   10**9,   0.90),
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      8,        0,    512,   10**9,   0.80),   # >= 512 in-channels
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      8,        0,      0,     784,   0.90),
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      8,    16384,      0,   10**9,   0.90),
    ("cpu",  "avx2",  ("float32", "float64"), "1x1",       2,      8,        0,      0,   10**9,   None),   # 64->64 layer1
    ("cpu",  ANY,     ("float32", "float64"), "3x3",       2,      8,        0,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "kxk",       2,      8,        0,      0,   10**9,   0.80),   # resnet stem 7x7/2
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      1,        0,      0,     784,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      1,    32768,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      1,        0,      0,   10**9,   0.90),   # 64-channel layer1
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      8,        0,      0,     784,   0.90),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      8,    32768,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      8,    16384,      0,   10**9,   0.90),   # 64<->256 layer1
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       2,      8,        0,      0,   10**9,   None),   # 64->64 layer1
    ("cpu",  ANY,     ("float32", "float64"), "3x3",       1,      8,        0,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "kxk",       1,      8,        0,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       1,      1,        0,      0,     784,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       1,      8,        0,      0,     784,   0.90),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       1,      1,    32768,      0,   10**9,   0.90),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       1,      8,    32768,      0,   10**9,   0.95),
    ("cpu",  ANY,     ("float32", "float64"), "1x1",       1,      8,        0,      0,   10**9,   None),   # 64-channel layer1
    ("cpu",  ANY,     ("float32", "float64"), "linear",    1,      1,        0,      0,   10**9,   0.90),
    ("cpu",  ANY,     ("float32", "float64"), "linear",    1,      8,        0,      0,   10**9,   0.95),
    # More rows (a detection box head runs ~1000 proposals): sparse_linear runs the
    # conv kernel over the rows from 16 on. Measured at 2 threads on an AVX2 host
    # (bench/results/cpu-linear-rows-avx2.txt): fc6/fc7-sized layers win from 80%
    # up to 64 rows and from 90% up to 1000; 364x1024 from 80% / 95%; the
    # 91-output predictor never. More than 1024 rows: not measured, dense.
    ("cpu",  ANY,     ("float32", "float64"), "linear",    2,     64,  1000000,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "linear",    2,   1024,  1000000,      0,   10**9,   0.90),
    ("cpu",  ANY,     ("float32", "float64"), "linear",    2,     64,   262144,      0,   10**9,   0.80),
    ("cpu",  ANY,     ("float32", "float64"), "linear",    2,   1024,   262144,      0,   10**9,   0.95),
    # CUDA, measured (bench/results/cuda-conv.txt: NVIDIA H200, fp32, every resnet50
    # Conv2d, batch 1 / 8 / 32, sparsity 0.5-0.98): the direct sparse kernel never beat
    # cuDNN on the masked weight (at best 0.51x its speed, 7x7 at 98%; 0.1-0.3x typical).
    ("cuda", ANY,     ANY,                    ANY,         1,  10**9,        0,      0,   10**9,   None),
    # Not measured -> dense: batch > 8, depthwise, fp16/bf16 on CPU (oneDNN's
    # AMX/AVX-512 bf16 kernels).
    (ANY,    ANY,     ANY,                    ANY,         1,  10**9,        0,      0,   10**9,   None),
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


def numel(weight_shape) -> int:
    n = 1
    for d in tuple(weight_shape):
        n *= int(d)
    return n


def kernel_isa(device: torch.device) -> str:
    """The instruction set the CPU sparse kernels run with ("avx512", "avx2", "base");
    "" off the CPU or without the compiled kernels."""
    if device.type != "cpu" or not _ops.available():
        return ""
    return _ops._C._sparse_cpu_isa()


def min_sparsity(device: torch.device, dtype: torch.dtype, kind: str, batch: int,
                 weight_shape=None, out_pixels: int | None = None, *,
                 isa: str | None = None) -> float | None:
    """The table's smallest sparsity at which the sparse kernel runs (None: never),
    for torch's current CPU thread count and the kernels' instruction set (``isa``:
    this CPU's, see kernel_isa, unless given). Rows match top to bottom; a column
    whose value is not given (weight_shape, out_pixels) is not checked."""
    name = str(dtype).replace("torch.", "")
    nw = None if weight_shape is None else numel(weight_shape)
    # fan-in: multiply-adds per output value (in/groups * kh * kw; linear: in)
    fan_in = None if weight_shape is None else nw // max(1, int(tuple(weight_shape)[0]))
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if isa is None:
        isa = kernel_isa(device)
    for dev, isas, dtypes, k, tmin, bmax, wmin, fmin, pmax, smin in SPARSE_RULES:
        if ((dev == ANY or dev == device.type) and (isas == ANY or isas == isa)
                and (dtypes == ANY or name in dtypes)
                and (k == ANY or k == kind) and threads >= tmin and batch <= bmax
                and (nw is None or (nw >= wmin and fan_in >= fmin))
                and (out_pixels is None or out_pixels <= pmax)):
            return smin
    return None


def use_sparse(device: torch.device, dtype: torch.dtype, kind: str, batch: int,
               sparsity: float, weight_shape=None, out_pixels: int | None = None, *,
               isa: str | None = None) -> bool:
    smin = min_sparsity(device, dtype, kind, batch, weight_shape, out_pixels, isa=isa)
    # A mask pruned "to 80%" lands at 0.799... as often as at 0.800...: the
    # thresholds are measured points, so within SPARSITY_SLACK of one counts.
    return smin is not None and sparsity >= smin - SPARSITY_SLACK
