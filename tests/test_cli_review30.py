"""Stop 30's review of `lthfast prune` / `lthfast bench`: files written before the tables
(stdout closed early lost them), a state_dict of a model pruned with torch.nn.utils.prune,
files that are no checkpoint, usage errors exit 2 before loading, train_step's classifier,
no compiled extension said first."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _cli_env import kernels_or_reference, needs_torchvision  # noqa: F401
from lthfast.cli import main

pytestmark = needs_torchvision


def test_prune_save_survives_a_closed_stdout(tmp_path):
    # `lthfast prune ... --save F | head -1`: BrokenPipeError in the table skipped the save
    save = tmp_path / "p.pth"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lthfast", "prune", "resnet18", "--amount",
                             "0.5", "--save", str(save)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `| head` does once it has its lines (here: none)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert save.is_file()
    sd = torch.load(save, weights_only=True)
    assert float((sd["conv1.weight"] == 0).float().mean()) > 0.2


def test_prune_reads_a_state_dict_pruned_with_torch(tmp_path, capsys):
    import torch.nn.utils.prune as P
    import torchvision
    m = torchvision.models.resnet18()
    P.global_unstructured([(x, "weight") for x in m.modules()
                           if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))],
                          pruning_method=P.L1Unstructured, amount=0.5)
    src, out = tmp_path / "hooked.pth", tmp_path / "out.pth"
    torch.save(m.state_dict(), src)
    assert main(["prune", str(src), "--arch", "resnet18", "--amount", "0.6", "--no-table",
                 "--save", str(out)]) == 0
    err = capsys.readouterr().err
    assert "pruned with torch.nn.utils.prune" in err and "count in --amount" in err
    sd = torch.load(out, weights_only=True)
    assert "conv1.weight" in sd and "conv1.weight_orig" not in sd
    pruned = sum(int((v == 0).sum()) for k, v in sd.items() if k.endswith("weight") and v.dim() > 1)
    total = sum(v.numel() for k, v in sd.items() if k.endswith("weight") and v.dim() > 1)
    assert pruned / total == pytest.approx(0.6, abs=0.01)  # the earlier 50% counted in it


@pytest.mark.parametrize("content", [b"hello\n", b""])
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, capsys, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    assert main(["prune", str(path), "--arch", "resnet18", "--amount", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "is not a file torch.save wrote" in err and "Traceback" not in err


def test_a_bad_arch_is_a_usage_error_before_loading(tmp_path, capsys):
    path = tmp_path / "x.pth"
    torch.save({"w": torch.zeros(1)}, path)
    assert main(["prune", str(path), "--arch", "resnt18", "--amount", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--arch 'resnt18' is not a torchvision model name" in err and "loading" not in err
    assert main(["prune", "resnet18", "--arch", "resnet18", "--amount", "0.5"]) == 2


def test_bench_train_step_refuses_a_detector(capsys):
    assert main(["bench", "train_step", "--quick", "--models",
                 "ssdlite320_mobilenet_v3_large"]) == 2
    assert "not a torchvision classification model" in capsys.readouterr().err


def test_prune_without_the_extension_says_so_first(monkeypatch, capsys):
    from lthfast import _ops
    monkeypatch.setattr(_ops, "available", lambda: False)
    monkeypatch.setattr(_ops, "use_reference", lambda: False)
    assert main(["prune", "resnet18", "--amount", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "compiled kernels (lthfast._C) are not available" in err and "loading" not in err


def test_imp_interrupted_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from lthfast.cli import imp as cli_imp
    from lthfast.imp import jobs

    class Job:
        def run_and_print(self, _print):
            raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "build_job", lambda s: Job())
    monkeypatch.setattr(cli_imp, "_has_finished_rounds", lambda out: True)
    out = str(tmp_path / "run")
    assert main(["imp", "--task", "classification", "--iters", "2", "--out", out]) == 130
    err = capsys.readouterr().err
    assert f"`lthfast imp --resume {out}` continues it" in err and "interrupted" in err


TINY = ["--task", "classification", "--model", "resnet18", "--image-size", "16", "--n-train",
        "16", "--n-val", "8", "--iters", "4", "--batch-size", "4", "--warmup", "1", "--quiet",
        "--threads", "1"]


@pytest.mark.parametrize("argv,message", [
    (TINY + ["--rewind", "iter:4"], r"--rewind iter:4: the pruned rounds train iterations 4..--iters 4"),
    (TINY + ["--target", "0.5", "--rounds", "0"], r"--target 0.5 needs --rounds 1 or more"),
])
def test_imp_flags_that_would_do_nothing_are_refused(tmp_path, capsys, argv, message):
    import re
    assert main(["imp", *argv, "--out", str(tmp_path / "run")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_imp_detection_scope_name_is_checked_before_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path / "data"))
    assert main(["imp", "--n-train", "8", "--n-val", "4", "--image-size", "64", "--iters", "2",
                 "--scope", "foo", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--scope foo: unknown prune scope 'foo'" in err
    assert not (tmp_path / "data").exists()  # no data generated for a typo


def test_imp_early_bird_that_saves_nothing_is_said(capsys):
    from lthfast.imp.jobs import check_settings, settings_from_args
    from lthfast.cli import build_parser
    s = settings_from_args(build_parser().parse_args(["imp", *TINY, "--rounds", "0",
                                                      "--early-bird-every", "1"]))
    check_settings(s)
    assert "--early-bird-every 1 saves nothing: --rounds 0" in capsys.readouterr().err


def test_imp_with_target_records_no_default_rate(tmp_path):
    import json
    out = tmp_path / "run"
    assert main(["imp", *TINY, "--rounds", "2", "--target", "0.5", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["rate"] is None and cfg["schedule"]["rate"] is None
    assert cfg["schedule"]["target"] == 0.5
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert main(["imp", "--resume", str(out)]) == 0  # the same run: nothing to do, no refusal


def test_imp_resume_with_another_process_count_is_refused(tmp_path, capsys):
    import json
    out = tmp_path / "run"
    assert main(["imp", *TINY, "--rounds", "0", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 1
    cfg["world_size"] = 2  # as a run made with --nproc 2
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["imp", "--resume", str(out), "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "trained with 2 process(es), this resume would use 1" in err and "--nproc 2" in err
    cfg["world_size"] = 1
    (out / "config.json").write_text(json.dumps(cfg))
    # the launcher says it before starting torchrun
    assert main(["imp", "--resume", str(out), "--rounds", "1", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "trained with 1 process(es), this resume would use 2" in err and "no --nproc" in err


def test_imp_same_command_continues_a_target_run_made_before_stop_30(tmp_path):
    import json
    out = tmp_path / "run"
    argv = ["imp", *TINY, "--rounds", "1", "--target", "0.5", "--out", str(out)]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["settings"]["rate"] = cfg["schedule"]["rate"] = 0.2  # as runs before stop 30 saved it
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(argv[:-2] + ["--rounds", "1", "--out", str(out)]) == 0


def test_imp_resume_of_a_run_rewinding_to_its_last_iteration(tmp_path):
    # refused for new runs; a run made before that check must still resume
    out = tmp_path / "run"
    assert main(["imp", *TINY, "--rounds", "0", "--rewind", "iter:4", "--out", str(out)]) == 0
    assert main(["imp", "--resume", str(out), "--rounds", "1"]) == 0
