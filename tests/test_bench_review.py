"""Review of `lthfast bench` and `lthfast info`: bad input fails early and clearly, failing
cases of every suite are reported (no traceback), the JSON is written or kept, the CPU
memory probe's "held after", CUDA sync in the pytest-benchmark suites, the ticket
suite's baselines on a GPU, table layout. Fast: no real benchmark runs here."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import types

import pytest
import torch

from lthfast import bench
from lthfast.bench import registry, runner
from lthfast.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def no_run(monkeypatch):
    """Fails the test if a benchmark would start."""
    def refuse(*a, **k):
        raise AssertionError("the benchmark ran; the bad input should have stopped it first")
    monkeypatch.setattr(bench, "run", refuse)


@pytest.fixture
def fake_suite(monkeypatch):
    """A registered suite `fake` whose cases are shaped like the optim / ticket / conv
    ones (no `round` key), one of them failed; no real copy-bandwidth probe."""
    suites = dict(registry._SUITES)
    monkeypatch.setattr(registry, "_SUITES", suites)

    def run_suite(config, ctx):
        return {"status": "ok", "cases": [
            {"model": "m", "optimizer": "sgd", "method": "lthfast", "status": "ok", "median_s": 1.0},
            {"model": "m", "op": "pack", "method": "lthfast_pack", "status": "error",
             "error": "RuntimeError: kernel exploded"}]}

    registry.register(registry.Suite("fake", "a fake suite", run=run_suite,
                                     format=lambda res: "fake table"))
    monkeypatch.setattr(runner, "copy_bandwidth", lambda device, nbytes: {
        "bytes_per_s": 1e9, "tensor_bytes": nbytes, "median_s": 1.0, "times_s": [1.0],
        "threads": 1, "device": str(device), "how": "fake"})


# ------------------------------------------------------------------ failures()

def test_failures_name_the_cases_of_every_suite():
    result = {"suites": {
        "ticket": {"status": "ok", "cases": [
            {"model": "resnet18", "op": "pack", "method": "lthfast_pack", "status": "error",
             "error": "E1"}]},
        "optim": {"status": "ok", "cases": [
            {"model": "resnet18", "optimizer": "adamw", "method": "lthfast", "status": "error",
             "error": "E2"}]},
        "conv": {"status": "ok", "cases": [
            {"layer": "layer3.0.conv2", "batch": 8, "sparsity": 0.9, "status": "error", "error": "E3"}],
            "e2e": [{"model": "resnet50", "sparsity": 0.8, "status": "error", "error": "E4"}]},
        "threshold": {"status": "ok", "cases": [
            {"model": "resnet18", "round": 2, "method": "torch_prune", "status": "error",
             "error": "E5"}]},
        "imp_round": {"status": "error", "error": "E6"},
    }}
    lines = runner.failures(result)
    assert len(lines) == 6
    text = "\n".join(lines)
    for e in ("E1", "E2", "E3", "E4", "E5", "E6"):
        assert e in text
    assert "ticket resnet18 pack lthfast_pack" in text and "optim resnet18 adamw lthfast" in text
    assert "conv layer3.0.conv2 batch 8 sparsity 0.9" in text
    assert "conv resnet50 sparsity 0.8" in text and "threshold resnet18 round 2 torch_prune" in text


def test_failing_case_without_round_exits_1_with_a_message_and_the_json(fake_suite, tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "fake", "--quiet", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    assert "1 failed" in err and "kernel exploded" in err and "Traceback" not in err
    res = json.loads(path.read_text())
    assert res["suites"]["fake"]["cases"][1]["status"] == "error"
    # the command that ran, not the Python caller's sys.argv
    assert res["command"] == ["lthfast", "bench", "fake", "--quiet", "--json", str(path)]
    assert {"cpu_model", "torch_threads", "gpu"} <= set(res["machine"])
    assert res["torch"]["version"] == torch.__version__ and res["config"]["device"] == "cpu"


# ------------------------------------------------------------------ bad input

def test_empty_json_path_is_an_error_not_silently_no_json(no_run, capsys):
    assert main(["bench", "threshold", "--json", ""]) == 2
    assert "--json needs a file path" in capsys.readouterr().err


@pytest.mark.parametrize("models", [",,", " , "])
def test_models_naming_no_model_is_an_error_not_the_full_defaults(no_run, capsys, models):
    assert main(["bench", "threshold", "--models", models]) == 2
    assert "names no model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [
    (["imp_round", "--models", "resnet18"], "imp_round takes no --models"),
    (["train_step", "--models", "resnet18,resnet34"], "train_step takes one model"),
    (["conv", "--models", "resnet18"], "only takes maskrcnn_resnet50_fpn or fasterrcnn_resnet50_fpn"),
])
def test_models_a_suite_would_ignore_are_refused(no_run, capsys, argv, msg):
    assert main(["bench", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_repeat_zero_is_a_usage_error(no_run, capsys):
    assert main(["bench", "threshold", "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_json_where_no_file_can_be_created_fails_before_the_run(no_run, capsys):
    # os.access says W_OK on /proc to root; creating a file there fails
    assert main(["bench", "threshold", "--json", "/proc/lthfast-bench.json"]) == 1
    err = capsys.readouterr().err
    assert "--json" in err and "/proc" in err and "Traceback" not in err


def test_json_write_failing_after_the_run_keeps_the_results(fake_suite, tmp_path, monkeypatch, capsys):
    from lthfast.bench import report
    real = report.write_json
    target = tmp_path / "b.json"

    def flaky(path, result):
        if os.fspath(path) == os.fspath(target):
            raise OSError(28, "No space left on device")
        real(path, result)

    monkeypatch.setattr(report, "write_json", flaky)
    assert main(["bench", "fake", "--quiet", "--json", str(target)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the results are in" in err
    spare = err.split("the results are in ")[1].split()[0]
    try:
        assert json.loads(pathlib.Path(spare).read_text())["suites"]["fake"]["status"] == "ok"
    finally:
        os.unlink(spare)
    assert not target.exists()


def test_bench_config_and_env_reject_bad_repeat_counts():
    with pytest.raises(ValueError, match="repeat"):
        registry.BenchConfig(device=torch.device("cpu"), repeat=0)
    with pytest.raises(ValueError, match="warmup"):
        registry.BenchConfig(device=torch.device("cpu"), warmup=-1)
    with pytest.raises(ValueError, match="models"):
        registry.BenchConfig(device=torch.device("cpu"), models=())
    assert registry.BenchConfig(device="cpu").device == torch.device("cpu")
    for bad in ("0", "abc", "-2"):
        with pytest.raises(ValueError, match="LTHFAST_BENCH_ROUNDS"):
            registry.config_from_env({"LTHFAST_BENCH_ROUNDS": bad})
    with pytest.raises(ValueError, match="LTHFAST_BENCH_DEVICE"):
        registry.config_from_env({"LTHFAST_BENCH_DEVICE": "gpu"})
    cfg = registry.config_from_env({"LTHFAST_BENCH_QUICK": "1", "LTHFAST_BENCH_MODELS": "a, b"})
    assert cfg.repeat == 1 and cfg.models == ("a", "b") and cfg.device.type == "cpu"


# ------------------------------------------------------------------ memory probe

_HEAP_SCRIPT = r"""
import ctypes, ctypes.util, json
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: free() never gives the heap top back by itself
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 1 MiB blocks come from the heap
import torch
from lthfast.bench.measure import CpuMemoryProbe, measure
probe = CpuMemoryProbe()
if not probe.available or probe._trim is None:
    print(json.dumps(None)); raise SystemExit

def run(_):
    chunks = [torch.ones(256 * 1024) for _ in range(100)]  # 100 MiB of temporaries
    keep = torch.ones(1024)                                # the result: 4 KiB
    del chunks
    return keep

m = measure(lambda: None, run, torch.device("cpu"), repeat=2, warmup=0, probe=probe)
print(json.dumps([m.peak_extra_max, m.retained_median, m.transient_max]))
"""


def test_cpu_probe_held_after_does_not_count_freed_heap_memory():
    import subprocess
    import sys
    # own process: the malloc settings that make the heap keep freed memory stay there
    out = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res is None:
        pytest.skip("needs Linux /proc/self/clear_refs and glibc malloc_trim")
    peak, held, transient = res
    assert peak >= 90 * 2**20, res
    assert held < 10 * 2**20, res  # freed-but-cached heap is not "held after"
    assert transient >= 80 * 2**20, res


# ------------------------------------------------------------------ pytest-benchmark on CUDA

def _load_bench_module(name):
    spec = importlib.util.spec_from_file_location(f"_review_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FakeBenchmark:
    def __init__(self):
        self.group, self.extra_info, self.stats = None, {}, None

    def pedantic(self, target, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        for _ in range(warmup_rounds + rounds):
            args, kwargs = setup() if setup is not None else ((), {})
            target(*args, **kwargs)


def test_pytest_benchmark_threshold_syncs_cuda_after_the_untimed_setup(monkeypatch):
    mod = _load_bench_module("test_bench_threshold")
    log = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))

    def make(mw, rnd):
        return (lambda: log.append("setup")), (lambda state: log.append("run"))

    monkeypatch.setattr(mod, "DEVICE", torch.device("cuda"))
    monkeypatch.setattr(mod, "MEMORY", False)
    monkeypatch.setattr(mod, "METHODS", {"fake": mod.threshold.Method("fake", "fake", make)})
    mw = types.SimpleNamespace(name="m", n_weights=10, weight_bytes=40, counts=lambda rnd: (10, 2))
    mod.test_threshold(_FakeBenchmark(), mw, {"bytes_per_s": 1e9}, "fake", 1)
    runs = [i for i, e in enumerate(log) if e == "run"]
    assert runs and all(log[i - 1] == "sync" and log[i - 2] == "setup" for i in runs), log


def test_pytest_benchmark_optim_syncs_cuda_after_the_untimed_first_step(monkeypatch):
    mod = _load_bench_module("test_bench_optim")
    log = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    from lthfast.bench import optim
    monkeypatch.setattr(optim, "methods", lambda kind: [
        optim.Method("fake", "fake", lambda mp: (lambda: log.append("step")))])
    monkeypatch.setattr(mod, "DEVICE", torch.device("cuda"))
    mp = types.SimpleNamespace(name="m", bytes_per_step=lambda kind: 1000)
    mod.test_optim_step(_FakeBenchmark(), mp, {"bytes_per_s": 1e9}, "sgd", "fake")
    assert log[:3] == ["step", "sync", "step"], log  # the init step is done before timing


# ------------------------------------------------------------------ suites' pieces

def test_ticket_pack_unpack_have_a_baseline_on_cuda_too(tmp_path):
    from lthfast import Ticket
    from lthfast.bench import ticket as tb
    g = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(4, 3, 3, 3, generator=g) > 0.8,
             "b.weight": torch.rand(10, 7, generator=g) > 0.8}
    t = Ticket(dict(masks))
    for dev in ("cpu", "cuda"):
        cases = tb._cases(t, masks, str(tmp_path), torch.device(dev))
        methods = {c[1] for c in cases}
        base = tb.baselines_for(torch.device(dev))
        for op in ("save", "load", "pack", "unpack"):
            assert base[op] in methods, (dev, op)
        assert not any(m.startswith("numpy") for m in methods) or dev == "cpu"
    # every CPU case runs (the new reference unpack returns the masks)
    cases = tb._cases(t, masks, str(tmp_path), torch.device("cpu"))
    for op, method, setup, run, _ in cases:
        out = run(setup())
        if method == "torch_reference_unpack":
            assert all(torch.equal(o, masks[n]) for o, n in zip(out, t.names()))
    fake = [{"model": "m", "op": "pack", "method": "torch_reference_pack", "status": "ok", "median_s": 2.0},
            {"model": "m", "op": "pack", "method": "lthfast_pack", "status": "ok", "median_s": 0.5}]
    tb._add_ratios(fake, tb.baselines_for(torch.device("cuda")))
    assert fake[1]["speedup_vs_baseline"] == 4.0  # baseline time / method time


def test_conv_table_error_row_keeps_the_columns():
    from lthfast.bench.conv_report import format_conv
    ok = {"status": "ok", "layer": "layer1.0.conv1", "batch": 1, "sparsity": 0.5,
          "shape": {"in": 64, "out": 64, "kernel": [1, 1], "stride": [1, 1], "padding": [0, 0],
                    "dilation": [1, 1], "groups": 1, "hw": [56, 56]},
          "min_s": {k: 1e-3 for k in ("torch_masked", "torch_premasked", "dense", "sparse", "auto")},
          "sparse_speedup_vs_dense": 1.0, "auto_choice": "dense"}
    bad = {"status": "error", "layer": "layer4.0.conv2", "batch": 8, "sparsity": 0.95,
           "error": "RuntimeError: boom"}
    text = format_conv({"threads": 1, "load_average_start": [0.0] * 3, "load_average_end": [0.0] * 3,
                        "cases": [ok, bad], "e2e": [], "rule_from_measurements": [], "targets": []})
    lines = text.splitlines()
    hdr = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    end_batch = lines[hdr].index("batch") + len("batch")  # right-aligned column
    end_sparsity = lines[hdr].index("sparsity") + len("sparsity")
    row = next(line for line in lines if line.startswith("layer4.0.conv2"))
    assert row[end_batch - 1] == "8" and row[end_sparsity - 4:end_sparsity] == "0.95", (lines[hdr], row)
