"""The `conv` benchmark suite's pieces run and produce the table (never asserts on speed)."""
import pytest
import torch

import lthfast
from lthfast.bench import conv
from lthfast.bench.conv_report import format_conv
from lthfast.bench.registry import BenchConfig

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def test_conv_suite_pieces():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1))
    shapes = conv.distinct_conv_shapes(model, torch.randn(1, 3, 10, 10))
    assert [s["count"] for s in shapes] == [1, 2, 1]
    cfg = BenchConfig(device=torch.device("cpu"), quick=True, repeat=1, warmup=0)
    cases = []
    for sp in (0.5, 0.95):
        c = conv._conv_case(dict(shapes[1], layer="layer3.x", model="toy"), 1, sp, cfg.device, cfg)
        cases.append(dict(c, status="ok"))
    assert set(cases[0]["min_s"]) == set(conv.METHODS)
    res = {"threads": 1, "load_average_start": [1.0] * 3, "load_average_end": [1.0] * 3,
           "cases": cases, "e2e": [], "rule_from_measurements": conv.suggest_rule(cases),
           "targets": conv.targets(cases, cfg.device)}
    assert cases[1]["tuned_choice"] in ("dense", "sparse") and cases[1]["tuned_vs_best"] > 0
    text = format_conv(res)
    assert "layer3.x" in text and "measured rule" in text and "auto ran" in text and "tuned ran" in text
    assert sum("tuned time / the better path" in t["what"] for t in res["targets"]) == 1
    assert cases[1]["better_path"] in ("dense", "sparse")


def test_conv_suite_end_to_end_case(monkeypatch):
    """The end-to-end case (a toy model in place of resnet50): auto, tuned and all-sparse
    models against the dense model with masked weights, and the table's row."""
    def toy(name):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 8, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(8, 4))
    monkeypatch.setattr(conv, "build_model", toy)
    cfg = BenchConfig(device=torch.device("cpu"), quick=True, repeat=1, warmup=0)
    case = dict(conv._e2e_case("toy", 0.9, cfg.device, cfg), status="ok")
    assert set(case["min_s"]) == {"torch_masked_weights", "lthfast_auto", "lthfast_sparse", "lthfast_tuned"}
    assert case["n_masked_layers"] == 3 and 0 <= case["n_layers_tuned_sparse"] <= 3
    assert case["tuning_call_s"] > 0 and case["tuned_speedup"] > 0
    text = format_conv({"threads": 1, "load_average_start": [1.0] * 3, "load_average_end": [1.0] * 3,
                        "cases": [], "e2e": [case], "rule_from_measurements": [], "targets": []})
    assert "lthfast tuned" in text and "tuning call ms" in text


@pytest.fixture
def threads():
    """Sets torch's CPU thread count for one test (the table has rows per thread count)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_dispatch_table_lookup(threads):
    """The rows measured with the AVX-512 kernels (which the base kernels use too)."""
    from functools import partial

    from lthfast.ops import _conv_dispatch
    from lthfast.ops._conv_dispatch import kernel_class
    min_sparsity = partial(_conv_dispatch.min_sparsity, isa="avx512")
    use_sparse = partial(_conv_dispatch.use_sparse, isa="avx512")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernel_class((3, 3), 1, 64) == "3x3" and kernel_class((1, 1), 1, 64) == "1x1"
    assert kernel_class((3, 3), 32, 32) == "depthwise" and kernel_class(None, 1, 8) == "linear"
    assert kernel_class((7, 7), 1, 3) == "kxk"
    for n in (1, 2, 16):
        threads(n)
        assert min_sparsity(cpu, torch.float32, "3x3", 1) == 0.8
        assert use_sparse(cpu, torch.float32, "3x3", 1, 0.95) and not use_sparse(cpu, torch.float32, "3x3", 1, 0.5)
        assert use_sparse(cpu, torch.float32, "1x1", 1, 0.9, (256, 512, 1, 1), 14 * 14)
        assert use_sparse(cpu, torch.float32, "1x1", 1, 0.798, (128, 256, 1, 1), 14 * 14)   # within the slack
        assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.99, (64, 64, 1, 1), 56 * 56)
        assert not use_sparse(cpu, torch.float32, "3x3", 64, 0.99)      # batch beyond the measured range
        assert not use_sparse(cpu, torch.bfloat16, "3x3", 1, 0.99)
    # 1x1 on resnet layer1's 56x56 planes: on one thread dense wins for the small weights
    threads(1)
    assert not use_sparse(cpu, torch.float32, "1x1", 1, 0.9, (64, 64, 1, 1), 56 * 56)
    assert not use_sparse(cpu, torch.float32, "1x1", 1, 0.99, (64, 256, 1, 1), 56 * 56)
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.9, (128, 256, 1, 1), 56 * 56)
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.9, (128, 256, 1, 1), 56 * 56)
    # ... with two threads (or more) the sparse kernel splits output channels over them
    # and gains more than oneDNN on these convs
    threads(2)
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.9, (64, 64, 1, 1), 56 * 56)
    assert not use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (64, 64, 1, 1), 56 * 56)
    assert use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (128, 256, 1, 1), 56 * 56)
    assert use_sparse(cpu, torch.float32, "1x1", 8, 0.9, (256, 64, 1, 1), 56 * 56)
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (256, 64, 1, 1), 56 * 56)
    # linear with many rows (a box head's ~1000 proposals): large layers from 80-90%
    fc6, fc7, pred = (1024, 12544), (1024, 1024), (91, 1024)
    assert use_sparse(cpu, torch.float32, "linear", 1000, 0.9, fc6)
    assert not use_sparse(cpu, torch.float32, "linear", 1000, 0.8, fc7)
    assert use_sparse(cpu, torch.float32, "linear", 64, 0.8, fc7)
    assert use_sparse(cpu, torch.float32, "linear", 1000, 0.95, (364, 1024))
    assert not use_sparse(cpu, torch.float32, "linear", 1000, 0.99, pred)
    assert not use_sparse(cpu, torch.float32, "linear", 4096, 0.99, fc6)  # not measured
    assert use_sparse(cpu, torch.float32, "linear", 8, 0.95, pred)       # the batch <= 8 rows
    threads(1)
    assert not use_sparse(cpu, torch.float32, "linear", 1000, 0.95, fc6)  # measured at 2 threads
    assert not use_sparse(cuda, torch.float32, "3x3", 1, 0.99)      # measured on an H200: cuDNN always wins


def test_dispatch_table_avx2_rows(threads):
    """The rows measured with the AVX2 kernels (2 threads); one thread falls back to the
    AVX-512 rows, as does the base ISA."""
    from functools import partial

    from lthfast.ops import _conv_dispatch
    use_sparse = partial(_conv_dispatch.use_sparse, isa="avx2")
    cpu = torch.device("cpu")
    threads(2)
    assert use_sparse(cpu, torch.float32, "3x3", 1, 0.8) and use_sparse(cpu, torch.float32, "3x3", 8, 0.8)
    # the 7x7 stem from 90% at batch 8 (80% on AVX-512), from 80% at batch 1
    assert not use_sparse(cpu, torch.float32, "kxk", 8, 0.8, (64, 3, 7, 7), 112 * 112)
    assert use_sparse(cpu, torch.float32, "kxk", 8, 0.9, (64, 3, 7, 7), 112 * 112)
    assert use_sparse(cpu, torch.float32, "kxk", 1, 0.8, (64, 3, 7, 7), 112 * 112)
    assert not use_sparse(cpu, torch.float32, "kxk", 1, 0.5, (64, 3, 7, 7), 112 * 112)
    # layer4's 3x3 convs (>= 1M weights, 7x7 outputs) from 50% at batch 1; not on the
    # detector's 25x25 planes, nor at batch 8, nor layer3's (589824 weights)
    assert use_sparse(cpu, torch.float32, "3x3", 1, 0.5, (512, 512, 3, 3), 7 * 7)
    assert not use_sparse(cpu, torch.float32, "3x3", 1, 0.4, (512, 512, 3, 3), 7 * 7)
    assert not use_sparse(cpu, torch.float32, "3x3", 1, 0.5, (512, 512, 3, 3), 25 * 25)
    assert not use_sparse(cpu, torch.float32, "3x3", 8, 0.5, (512, 512, 3, 3), 7 * 7)
    assert not use_sparse(cpu, torch.float32, "3x3", 1, 0.5, (256, 256, 3, 3), 7 * 7)
    # 1x1 convs with >= 512 input channels from 80% at batch 8, fewer from 90%
    assert use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (256, 512, 1, 1), 28 * 28)
    assert use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (512, 2048, 1, 1), 7 * 7)
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (1024, 256, 1, 1), 14 * 14)
    assert use_sparse(cpu, torch.float32, "1x1", 8, 0.9, (1024, 256, 1, 1), 14 * 14)
    # 1x1 on 56x56 planes with >= 32768 weights (layer2.0.conv1) from 90% (80% on AVX-512)
    for batch in (1, 8):
        assert not use_sparse(cpu, torch.float32, "1x1", batch, 0.8, (128, 256, 1, 1), 56 * 56)
        assert use_sparse(cpu, torch.float32, "1x1", batch, 0.9, (128, 256, 1, 1), 56 * 56)
    # the rest as on AVX-512
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (256, 512, 1, 1), 14 * 14)
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (512, 256, 1, 1), 14 * 14)
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.9, (64, 64, 1, 1), 56 * 56)
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.99, (64, 64, 1, 1), 56 * 56)
    assert use_sparse(cpu, torch.float32, "linear", 1000, 0.9, (1024, 12544))
    # detector planes (fasterrcnn at 800 px, batch 1): 1x1 convs of >= 16384 weights on
    # planes beyond 56x56 and the 7x7 stem on its 400x400 output from 80%
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (256, 64, 1, 1), 200 * 200)
    assert use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (512, 256, 1, 1), 100 * 100)
    assert not use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (64, 64, 1, 1), 200 * 200)
    assert not use_sparse(cpu, torch.float32, "1x1", 1, 0.8, (256, 64, 1, 1), 56 * 56)  # resnet's: 90%
    assert not use_sparse(cpu, torch.float32, "1x1", 8, 0.8, (256, 64, 1, 1), 200 * 200)  # batch 1 only
    assert use_sparse(cpu, torch.float32, "kxk", 1, 0.8, (64, 3, 7, 7), 400 * 400)
    assert not use_sparse(cpu, torch.float32, "kxk", 8, 0.8, (64, 3, 7, 7), 400 * 400)
    threads(1)  # not measured on AVX2: the AVX-512 rows
    assert use_sparse(cpu, torch.float32, "kxk", 1, 0.8, (64, 3, 7, 7), 112 * 112)
    threads(2)
    assert _conv_dispatch.use_sparse(cpu, torch.float32, "kxk", 1, 0.8, (64, 3, 7, 7), 112 * 112,
                                     isa="base")


def test_dispatch_table_uses_the_kernels_isa(threads):
    """Without isa=, the rows of the instruction set the sparse kernels run with (capped
    in tests) apply."""
    from lthfast.ops._conv_dispatch import kernel_isa, use_sparse
    cpu = torch.device("cpu")
    isa = lthfast._ops._C._sparse_cpu_isa()
    assert kernel_isa(cpu) == isa and kernel_isa(torch.device("meta")) == ""
    threads(2)
    shape, px = (128, 256, 1, 1), 56 * 56  # 1x1 at 80%: sparse on AVX-512, dense on AVX2
    try:
        for cap in ("avx512", "avx2", "base"):
            got = lthfast._ops._C._sparse_cpu_isa(cap)
            assert kernel_isa(cpu) == got
            assert use_sparse(cpu, torch.float32, "1x1", 1, 0.8, shape, px) == (got != "avx2")
    finally:
        lthfast._ops._C._sparse_cpu_isa("avx512")
        assert lthfast._ops._C._sparse_cpu_isa() == isa


def test_conv_suite_detector_shapes_run_at_batch_1(monkeypatch):
    """--models fasterrcnn_resnet50_fpn adds every conv of the detector (here a toy that
    takes a list of images, as detectors do), measured at batch 1 only."""
    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3, stride=8)

        def forward(self, images):
            return self.backbone(torch.stack(images))

    def build(name):
        return Detector() if name == "fasterrcnn_resnet50_fpn" else torch.nn.Conv2d(3, 4, 1, stride=16)
    monkeypatch.setattr(conv, "build_model", build)
    cfg = BenchConfig(device=torch.device("cpu"), quick=False, repeat=1, warmup=0,
                      models=("fasterrcnn_resnet50_fpn",))
    shapes = conv._shapes(cfg)
    det = [s for s in shapes if s["model"] == "fasterrcnn_resnet50_fpn"]
    assert len(det) == 1 and det[0]["batches"] == (1,) and det[0]["layer"] == "backbone"
    assert all("batches" not in s for s in shapes if s["model"] == "resnet50")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_balanced_orders_give_each_method_every_predecessor_alike(n):
    """A plain rotation keeps each method's predecessor fixed (the cache state it finds):
    the orders must put every method after every other one, and in every position,
    equally often."""
    from collections import Counter

    from lthfast.bench.measure import balanced_orders
    names = [f"m{i}" for i in range(n)]
    orders = balanced_orders(names)
    assert all(sorted(o) == names for o in orders)
    after = Counter((o[i], o[i + 1]) for o in orders for i in range(n - 1))
    at = Counter((o[i], i) for o in orders for i in range(n))
    assert len(after) == n * (n - 1) and len(set(after.values())) <= 1
    assert len(at) == n * n and len(set(at.values())) == 1


def test_interleaved_runs_whole_sets_of_balanced_orders():
    seq = []
    fns = {k: (lambda k=k: seq.append(k)) for k in ("a", "b", "c", "d")}
    _, _, times = conv._interleaved(fns, torch.device("cpu"), repeat=1, warmup=0, budget_s=10.0)
    assert len(times["a"]) == 28  # cheap rounds: 25, up to the end of a whole set of 4 orders
    follows = {(seq[i], seq[i + 1]) for i in range(len(seq) - 1) if i % 4 != 3}
    assert len(follows) == 12
    # an expensive case (no budget left after the first round) still runs a whole set
    _, _, times = conv._interleaved(fns, torch.device("cpu"), repeat=1, warmup=0, budget_s=0.0)
    assert len(times["a"]) == 4
    odd = {k: (lambda: None) for k in "abcdefg"}  # 7 methods: a set is 14 orders
    _, _, times = conv._interleaved(odd, torch.device("cpu"), repeat=3, warmup=0, budget_s=0.0)
    assert len(times["a"]) == 14


def test_auto_is_held_to_the_better_path_not_the_per_round_minimum():
    # two paths that trade places round by round: a per-round minimum beats both
    times = {"dense": [1.0, 2.0, 1.0, 2.0], "sparse": [2.0, 1.0, 2.0, 1.1], "auto": [1.0, 2.0, 1.0, 2.0]}
    assert conv._better_path(times) == "dense"
    assert conv._paired(times, "auto", conv._better_path(times)) == 1.0
