"""`lthfast bench` runs end to end and writes the JSON it promises. Never asserts on speed."""
from __future__ import annotations

import json

import pytest
import torch
from _cli_env import kernels_or_reference, needs_torchvision  # noqa: F401 (autouse fixture)

from lthfast import _ops, bench
from lthfast.bench.measure import CpuMemoryProbe, measure
from lthfast.cli import main


@needs_torchvision
def test_bench_threshold_quick_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "threshold", "--quick", "--warmup", "0", "--quiet", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vs torch" in out and "x floor" in out and "resnet18" in out
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left

    r = json.loads(path.read_text())
    assert r["schema"] == "lthfast-bench/1"
    assert {"cpu_model", "logical_cores", "physical_cores", "torch_threads", "gpu"} <= set(r["machine"])
    assert r["torch"]["version"] == torch.__version__
    assert r["lthfast"]["build_info"]["compiled"] == _ops.available()
    assert r["config"] == {"device": "cpu", "quick": True, "repeat": 1, "warmup": 0, "models": None}
    assert r["bandwidth"]["bytes_per_s"] > 0

    t = r["suites"]["threshold"]
    assert t["status"] == "ok" and t["amount"] == 0.2
    sizes = t["models"]["resnet18"]
    assert sizes["n_layers"] == 21 and sizes["n_weights"] == 11678912
    assert sizes["weight_bytes"] == 4 * 11678912 and sizes["floor_s"] > 0
    assert [x["k"] for x in sizes["rounds"]] == [round(0.2 * 11678912),
                                                 round(0.2 * (11678912 - round(0.2 * 11678912)))]
    cases = {(c["method"], c["round"]): c for c in t["cases"]}
    assert set(cases) == {(m, rnd) for m in ("torch_prune", "lthfast_prune", "lthfast_masks",
                                             "format_only", "torch_kthvalue") for rnd in (1, 2)}
    from lthfast.bench.threshold import _need_lthfast_prune
    ok = ("torch_prune", "lthfast_masks", "torch_kthvalue")
    for key in ok + (("lthfast_prune",) if _need_lthfast_prune() is None else ()):
        for rnd in (1, 2):
            c = cases[(key, rnd)]
            assert c["status"] == "ok", c
            assert len(c["times_s"]) == 1 and c["median_s"] > 0 and c["floor_multiple"] > 0
            assert c["speedup_vs_baseline"] > 0
            if CpuMemoryProbe().available:
                assert c["peak_extra_bytes"] >= 0 and c["peak_extra_fraction_of_weights"] >= 0
    assert cases[("torch_prune", 1)]["speedup_vs_baseline"] == 1.0
    assert all({"what", "value", "limit", "met"} <= set(x) for x in t["targets"])


def test_every_suite_is_built(capsys):
    for name in ("threshold", "ticket", "optim", "conv"):
        assert bench.get(name).available, name
    assert main(["bench", "--list"]) == 0
    assert "not built yet" not in capsys.readouterr().out


@needs_torchvision
def test_bench_bad_arguments(tmp_path, capsys):
    assert main(["bench", "nosuch"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["bench", "threshold", "--models", "resnet5O"]) == 2  # a usage error, as argparse's invalid choice
    err = capsys.readouterr().err
    assert "--models 'resnet5O' is not a torchvision model name" in err and "resnet50" in err
    assert main(["bench", "threshold", "--json", str(tmp_path / "no" / "b.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cpu_memory_probe_sees_touched_not_untouched_memory():
    probe = CpuMemoryProbe()
    if not probe.available:
        pytest.skip(probe.method)
    n = 25_000_000  # 100 MB of float32
    cpu = torch.device("cpu")
    touched = measure(lambda: None, lambda _: torch.ones(n), cpu, repeat=1, warmup=0, probe=probe)
    assert 0.9 * 4 * n <= touched.peak_extra_max <= 1.2 * 4 * n
    transient = measure(lambda: None, lambda _: float(torch.ones(n).sum()), cpu, repeat=1, warmup=0,
                        probe=probe)
    assert transient.peak_extra_max >= 0.9 * 4 * n and transient.retained_median < 0.1 * 4 * n
    untouched = measure(lambda: None, lambda _: torch.empty(n), cpu, repeat=1, warmup=0, probe=probe)
    assert untouched.peak_extra_max < 0.1 * 4 * n


@needs_torchvision
def test_bench_failing_case_is_recorded_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    from lthfast.bench import threshold

    def broken(mw, rnd):
        def run(_):
            raise RuntimeError("kernel exploded")
        return (lambda: None), run

    monkeypatch.setattr(threshold, "METHODS", (
        threshold.Method("lthfast_masks", "lthfast.global_magnitude_masks", threshold._case_lthfast_masks),
        threshold.Method("broken", "a broken method", broken)))
    path = tmp_path / "b.json"
    assert main(["bench", "threshold", "--quick", "--warmup", "0", "--quiet",
                 "--models", "squeezenet1_1", "--json", str(path)]) == 1
    captured = capsys.readouterr()
    assert "kernel exploded" in captured.err and "ERROR" in captured.out
    cases = json.loads(path.read_text())["suites"]["threshold"]["cases"]
    assert {c["status"] for c in cases if c["method"] == "broken"} == {"error"}
    assert {c["status"] for c in cases if c["method"] == "lthfast_masks"} == {"ok"}
