"""What the compiled repeat call (lthfast._C._conv_repeat) gains on real convolutions.

Batch-1 resnet50 layers on the CPU, each run by masked_conv2d with a fixed path twice
(the compiled call: "compiled", and the same again: "compiled_again", the A/A control)
and once with the compiled call swapped out, so that the Python path runs ("python"):
interleaved in balanced orders with the caches flushed before each round, as `lthfast
bench conv` runs its methods. Ratios are medians of per-round ratios. (The Python path
is the full checks since stop 28; the stop-27 results in bench/results/ compare against
the Python fast path the compiled call replaced then, removed since.)

  python bench/repeat_path_conv.py [--rounds 60] [--repeat 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from lthfast.bench.conv import _interleaved, _paired
from lthfast.ops import _masked_conv, masked_conv2d

# (name, in, out, kernel, input size, stride, sparsity, path)
CASES = [
    ("layer1.0.conv2", 64, 64, 3, 56, 1, 0.95, "sparse"),
    ("layer2.1.conv2", 128, 128, 3, 28, 1, 0.95, "sparse"),
    ("layer3.1.conv2", 256, 256, 3, 14, 1, 0.9, "sparse"),
    ("layer3.1.conv1", 1024, 256, 1, 14, 1, 0.98, "sparse"),
    ("layer4.0.conv3", 512, 2048, 1, 7, 1, 0.95, "sparse"),
    ("layer2.0.conv3", 128, 512, 1, 28, 1, 0.9, "dense"),
    ("layer4.1.conv2", 512, 512, 3, 7, 1, 0.5, "dense"),
]


def run_case(name, cin, cout, k, hw, stride, sparsity, path, rounds, repeat):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(cout, cin, k, k, generator=g)
    m = torch.rand(w.shape, generator=g) >= sparsity
    x = torch.randn(1, cin, hw, hw, generator=g)
    conf = dict(stride=stride, padding=k // 2)
    compiled = _masked_conv._conv_repeat

    def python():
        _masked_conv._conv_repeat = lambda *args: None
        try:
            return masked_conv2d(x, w, m, **conf, path=path)
        finally:
            _masked_conv._conv_repeat = compiled

    fns = {"compiled": lambda: masked_conv2d(x, w, m, **conf, path=path), "python": python,
           "compiled_again": lambda: masked_conv2d(x, w, m, **conf, path=path)}
    with torch.no_grad():
        fns["compiled"]()
    out = []
    for _ in range(repeat):
        _, med, times = _interleaved(fns, torch.device("cpu"), rounds, 3)
        row = dict(layer=name, path=path, sparsity=sparsity, rounds=len(times["compiled"]),
                   median_us={k: v * 1e6 for k, v in med.items()},
                   python_vs_compiled=_paired(times, "python", "compiled"),
                   again_vs_compiled=_paired(times, "compiled_again", "compiled"))
        print(f"{name:<16} {path:<6} {sparsity:4.2f}  compiled {row['median_us']['compiled']:7.0f} us"
              f"  python {row['median_us']['python']:7.0f} us  python/compiled "
              f"{row['python_vs_compiled']:.3f}  A/A {row['again_vs_compiled']:.3f}", flush=True)
        out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows = [r for case in CASES for r in run_case(*case, args.rounds, args.repeat)]
    if args.json:
        tmp = args.json + ".tmp"  # written whole or not at all
        with open(tmp, "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows), f,
                      indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
