"""The `lthfast` command: info, prune (save/reload, errors, no partial files), help."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lthfast import _ops
from lthfast.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = "squeezenet1_1"  # 1.2M prunable weights: the fast model for error paths


@pytest.fixture(autouse=True)
def _kernels_or_reference(monkeypatch):
    # Without the compiled extension, run the pure-PyTorch reference.
    if not _ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


needs_torchvision = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torchvision") is None, reason="needs torchvision")


def _needs_prune():
    try:
        import lthfast.prune as prune
    except ImportError as e:
        pytest.skip(f"lthfast.prune not importable: {e}")
    if not all(hasattr(prune, n) for n in ("global_unstructured", "L1Unstructured", "remove")):
        pytest.skip("lthfast.prune is incomplete")


def _prunable_sparsity(state_dict, arch):
    import torchvision
    from lthfast.cli._models import prunable_layers
    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(state_dict)  # strict: the saved state_dict is plain
    ws = [m.weight for _, m in prunable_layers(model)]
    n = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    return zeros, n


# ------------------------------------------------------------------ help / info

def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("info", "prune", "bench"):
        assert cmd in out
    assert "examples:" in out


@pytest.mark.parametrize("cmd", ["info", "prune", "bench"])
def test_command_help(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: lthfast {cmd}" in out
    assert "examples:" in out
    assert {"info": "--json", "prune": "--amount", "bench": "--quick"}[cmd] in out


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "usage: lthfast" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lthfast ")
    for needle in ("torch", "runtime", "built against", "kernels", "CPU", "CUDA", "GPU",
                   "ops (torch.ops.lthfast)", torch.__version__):
        assert needle in out
    if _ops.available():
        assert "global_magnitude_masks" in out and "global_threshold" in out
        assert f"on {torch.get_num_threads()} thread" in out
        isa = _ops.build_info()["cpu_sparse_isa"]
        assert re.search(rf"CPU sparse conv +{isa} kernels", out)
        isa = _ops.build_info()["cpu_threshold_isa"]
        assert isa in ("avx2", "base") and re.search(rf"CPU threshold +{isa} range and mask passes", out)
    else:
        assert "NOT BUILT" in out


def test_info_warns_about_a_build_without_openmp():
    from lthfast import info
    facts = info.collect()
    if not facts["cpu_kernels"] or not facts["torch_openmp"]:
        pytest.skip("needs the compiled CPU kernels and a torch with OpenMP")
    facts["cpu_openmp"] = False
    assert "built without OpenMP, so the CPU kernels run on one thread" in info.format_report(facts)


def test_missing_vision_extra_is_a_clear_error(monkeypatch, tmp_path, capsys):
    # pyproject's `vision` extra is optional: without torchvision `lthfast imp` says what
    # to install instead of a traceback (sys.modules[name] = None makes imports fail).
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert main(["imp", "--iters", "1", "--quiet", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "needs torchvision, which is not installed" in err
    assert "pip install 'lthfast[vision]'" in err and "Traceback" not in err


def test_other_missing_modules_keep_their_traceback(monkeypatch):
    def boom(args):
        import lthfast_no_such_module  # noqa: F401

    monkeypatch.setattr("lthfast.cli.info.run", boom)
    with pytest.raises(ModuleNotFoundError):
        main(["info"])


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["torch_runtime"] == torch.__version__
    assert facts["compiled"] == _ops.available()
    assert {"cpu_kernels", "cuda_kernels", "cuda_version", "cuda_archs", "gpus", "ops"} <= set(facts)
    if _ops.available():
        assert {o["name"] for o in facts["ops"]} >= {"global_threshold", "global_magnitude_masks"}


def test_info_marks_ops_composed_of_other_ops(monkeypatch, capsys):
    """An op whose CUDA side is composed of other ops (mask_counts_packed,
    threshold_mask_into) says so where CUDA kernels are built, and only there."""
    from lthfast import info
    ops = [{"name": "own", "cpu": True, "cuda": True, "composite": False, "fake": True},
           {"name": "composed", "cpu": True, "cuda": False, "composite": True, "fake": True}]
    monkeypatch.setattr(info, "registered_ops", lambda: ops)
    for cuda in (True, False):
        monkeypatch.setattr(_ops, "build_info", lambda: {"compiled": True, "cuda": cuda})
        assert main(["info"]) == 0
        text = capsys.readouterr().out
        line = next(l for l in text.splitlines() if l.strip().startswith("composed"))
        assert ("CUDA (composed of other ops)" in line) == cuda, line


def test_info_when_not_built(monkeypatch, capsys):
    from lthfast import info
    monkeypatch.setattr(_ops, "build_info", lambda: {"compiled": False, "error": "No module named x"})
    monkeypatch.setattr(info, "registered_ops", lambda: [])
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "NOT BUILT" in out and "pip install --no-build-isolation -e ." in out
    assert "LTHFAST_REFERENCE=1" in out


def test_python_m_lthfast_info_matches_lthfast_info(capsys):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    a = subprocess.run([sys.executable, "-m", "lthfast.info"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)
    assert a.returncode == 0, a.stderr
    assert main(["info"]) == 0
    assert a.stdout == capsys.readouterr().out and "ops (torch.ops.lthfast)" in a.stdout


# ------------------------------------------------------------------ prune

@needs_torchvision
def test_prune_resnet18_save_and_reload(tmp_path, capsys):
    _needs_prune()
    path = tmp_path / "r18.pth"
    assert main(["prune", "resnet18", "--amount", "0.8", "--save", str(path)]) == 0
    captured = capsys.readouterr()
    assert "layer" in captured.out and "sparsity" in captured.out and "layer4.1.conv2" in captured.out
    assert "overall sparsity: 80.00%" in captured.out
    assert "pruning time:" in captured.out and " ms" in captured.out
    assert "pruning" in captured.err  # progress line
    state = torch.load(path, weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    zeros, n = _prunable_sparsity(state, "resnet18")
    assert zeros == round(0.8 * n)  # random init has no exact zeros: exactly k pruned
    assert [p.name for p in tmp_path.iterdir()] == ["r18.pth"]  # no temp file left


@needs_torchvision
def test_prune_warns_about_layers_pruned_to_nothing(capsys):
    _needs_prune()
    assert main(["prune", "resnet18", "--amount", "0.9999", "--no-table"]) == 0
    err = capsys.readouterr().err
    assert "(layer collapse: nothing flows through it)" in err and "conv1" in err
    assert main(["prune", "resnet18", "--amount", "0.2", "--no-table"]) == 0
    assert "layer collapse" not in capsys.readouterr().err


@needs_torchvision
def test_prune_state_dict_checkpoint_with_arch(tmp_path, capsys):
    _needs_prune()
    import torchvision
    ckpt, out = tmp_path / "ckpt.pth", tmp_path / "out.pth"
    torch.save(torchvision.models.get_model(SMALL, weights=None).state_dict(), ckpt)
    assert main(["prune", str(ckpt), "--amount", "0.5", "--no-table"]) == 1
    assert "--arch" in capsys.readouterr().err
    assert main(["prune", str(ckpt), "--arch", SMALL, "--amount", "0.5", "--save", str(out),
                 "--no-table"]) == 0
    assert "overall sparsity: 50.00%" in capsys.readouterr().out
    zeros, n = _prunable_sparsity(torch.load(out, weights_only=True), SMALL)
    assert zeros == round(0.5 * n)
    # the same through a model name + --weights
    assert main(["prune", SMALL, "--weights", str(ckpt), "--amount", "0.3", "--no-table"]) == 0
    assert "overall sparsity: 30.00%" in capsys.readouterr().out


@needs_torchvision
def test_prune_pickled_module_needs_trust(tmp_path, capsys):
    _needs_prune()
    import torchvision
    ckpt = tmp_path / "full.pt"
    torch.save(torchvision.models.get_model(SMALL, weights=None), ckpt)
    assert main(["prune", str(ckpt), "--amount", "0.5", "--no-table"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["prune", str(ckpt), "--amount", "0.5", "--no-table", "--trust-pickle",
                 "--layerwise"]) == 0
    assert "overall sparsity: 50.00%" in capsys.readouterr().out


@pytest.mark.parametrize("amount,needle", [
    ("1.5", "between 0 and 1"), ("-0.1", "between 0 and 1"), ("abc", "invalid amount"),
    ("nan", "between 0 and 1"), ("80", "did you mean 0.8"),
])
def test_prune_bad_amount(amount, needle, tmp_path, capsys):
    path = tmp_path / "out.pth"
    assert main(["prune", SMALL, "--amount", amount, "--save", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--amount" in err and needle in err
    assert not path.exists()


def test_prune_missing_amount_and_model(capsys):
    assert main(["prune", SMALL]) == 2
    assert "--amount is required" in capsys.readouterr().err
    assert main(["prune", "--amount", "0.5"]) == 2
    assert "MODEL is required" in capsys.readouterr().err


@needs_torchvision
def test_prune_bad_model(tmp_path, capsys):
    path = tmp_path / "out.pth"
    assert main(["prune", "resnet5O", "--amount", "0.5", "--save", str(path)]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'resnet5O'" in err and "lthfast prune --list-models" in err
    assert "resnet50" in err  # close match suggested
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert main(["prune", str(tmp_path / "nope.pth"), "--amount", "0.5"]) == 1
    assert "does not exist" in capsys.readouterr().err


@needs_torchvision
def test_prune_list_models(capsys):
    assert main(["prune", "--list-models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "resnet50" in out and "keypointrcnn_resnet50_fpn  (detection)" in out


def test_prune_save_dir_missing_fails_before_work(tmp_path, capsys):
    assert main(["prune", SMALL, "--amount", "0.5", "--save", str(tmp_path / "no" / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "loading" not in err


@needs_torchvision
def test_prune_failed_save_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    _needs_prune()
    path = tmp_path / "out.pth"
    path.write_bytes(b"previous result")

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        main(["prune", SMALL, "--amount", "0.5", "--save", str(path), "--no-table"])
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pth"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@needs_torchvision
def test_prune_cuda_without_gpu(capsys):
    _needs_prune()
    assert main(["prune", SMALL, "--amount", "0.5", "--device", "cuda"]) == 1
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_torchvision
def test_prune_cuda(tmp_path, capsys):
    _needs_prune()
    path = tmp_path / "r18.pth"
    assert main(["prune", "resnet18", "--amount", "0.8", "--device", "cuda", "--save", str(path)]) == 0
    zeros, n = _prunable_sparsity(torch.load(path, weights_only=True), "resnet18")
    assert zeros == round(0.8 * n)


@needs_torchvision
def test_prune_again_reports_the_sparsity_it_saves(tmp_path, capsys):
    """Pruning a checkpoint pruned before (the help's round-after-round use): its zeros
    count as pruned in the table and summary (they were counted as kept: 20% shown, 60%
    saved)."""
    _needs_prune()
    import torchvision
    ckpt, once, twice = tmp_path / "ckpt.pth", tmp_path / "once.pth", tmp_path / "twice.pth"
    torch.save(torchvision.models.get_model(SMALL, weights=None).state_dict(), ckpt)
    assert main(["prune", str(ckpt), "--arch", SMALL, "--amount", "0.5", "--save", str(once),
                 "--no-table"]) == 0
    capsys.readouterr()
    assert main(["prune", str(once), "--arch", SMALL, "--amount", "0.2", "--save", str(twice),
                 "--no-table"]) == 0
    zeros, n = _prunable_sparsity(torch.load(twice, weights_only=True), SMALL)
    assert f"overall sparsity: {100 * zeros / n:.2f}%" in capsys.readouterr().out
    assert zeros / n == pytest.approx(0.5, abs=0.01)  # 20% of the weights, all zeros already


def test_prune_takes_every_convolution():
    from torch import nn
    from lthfast.cli._models import prunable_layers
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv3d(3, 4, 3), nn.ConvTranspose2d(4, 2, 3),
                        nn.Linear(4, 2), nn.BatchNorm1d(3))
    assert [n for n, _ in prunable_layers(net)] == ["0", "1", "2", "3"]
