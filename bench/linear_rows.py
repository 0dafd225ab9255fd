"""masked_linear dense vs sparse by number of input rows (bench/results/cpu-linear-rows-avx2.txt).

The box-head shapes of torchvision's detectors (fc6, fc7, the box and class predictors) and a
1000 x 2048 classifier head, at sparsity 0.5-0.98, for the row counts given (default
16,64,1000). Prints dense time / sparse time, the median of interleaved pairs (the packed
weight is cached, as in a model). Usage: python bench/linear_rows.py 16,64,1000
"""
import statistics
import sys
import time

import torch

from lthfast.ops import masked_linear

SHAPES = [(1024, 12544), (1024, 1024), (364, 1024), (91, 1024), (1000, 2048)]
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)


def ratio(x, w, m) -> float:
    dense = lambda: masked_linear(x, w, m, path="dense")  # noqa: E731
    sparse = lambda: masked_linear(x, w, m, path="sparse")  # noqa: E731
    pairs = 5 if x.shape[0] * w.numel() > 1e9 else 15
    ratios = []
    with torch.no_grad():
        for f in (dense, sparse, dense, sparse):
            f()
        for i in range(pairs):  # alternate which runs first
            first, second = (dense, sparse) if i % 2 == 0 else (sparse, dense)
            t0 = time.perf_counter()
            first()
            t1 = time.perf_counter()
            second()
            t2 = time.perf_counter()
            td, ts = (t1 - t0, t2 - t1) if first is dense else (t2 - t1, t1 - t0)
            ratios.append(td / ts)
    return statistics.median(ratios)


def main(argv):
    torch.manual_seed(0)
    rows = [int(a) for a in argv[0].split(",")] if argv else [16, 64, 1000]
    for out_f, in_f in SHAPES:
        for m_rows in rows:
            x = torch.randn(m_rows, in_f)
            cells = []
            for sp in SPARSITIES:
                w = torch.randn(out_f, in_f)
                m = torch.rand_like(w) >= sp
                cells.append(f"{sp}:{ratio(x, w, m):.2f}")
            print(f"linear {out_f}x{in_f} rows {m_rows}: sp/dn " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
