"""`lthfast imp` and friends on input a new user gets wrong: empty values (an unset shell
variable), --rate with --target, an --out that cannot be made, two processes on one run
directory, SIGTERM, weights that fit nothing, schedule points past the end."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from lthfast.cli import build_parser, main

pytest.importorskip("lthfast.optim")


def _settings(argv):
    from lthfast.imp.jobs import settings_from_args
    return settings_from_args(build_parser().parse_args(["imp", *argv]))


@pytest.mark.parametrize("flag", ["--out", "--resume", "--ticket", "--scope", "--weights",
                                  "--data", "--model"])
def test_an_empty_value_is_an_error_not_a_default(flag, tmp_path, monkeypatch):
    from lthfast.imp.jobs import JobError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobError, match=f"{flag} is empty"):
        _settings([flag, ""])
    assert os.listdir(tmp_path) == []  # nothing written into the current folder


def test_rate_and_target_together_is_an_error():
    from lthfast.imp.jobs import JobError
    with pytest.raises(JobError, match="--rate 0.2 and --target 0.8: give one"):
        _settings(["--rate", "0.2", "--target", "0.8", "--out", "r"])


def test_an_out_that_cannot_be_made_is_named_before_any_work(tmp_path):
    from lthfast.imp.jobs import JobError
    (tmp_path / "afile").write_text("x")
    with pytest.raises(JobError, match="--out .*afile/sub.*is a file, not a folder"):
        _settings(["--out", str(tmp_path / "afile" / "sub" / "run")])


def test_one_process_per_run_directory(tmp_path, capsys):
    from lthfast.imp.rundir import RunDirBusy, hold
    out = str(tmp_path / "run")
    fd = hold(out)
    assert fd is not None and os.path.isdir(out)
    try:
        with pytest.raises(RunDirBusy, match="in use by another lthfast imp process"):
            hold(out)
        assert main(["imp", "--out", out, "--quiet"]) == 2
        assert "in use by another" in capsys.readouterr().err
    finally:
        os.close(fd)
    os.close(hold(out))  # free again


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, monkeypatch, capsys):
    import lthfast.imp.jobs as jobs
    from lthfast.cli.imp import Terminated
    assert issubclass(Terminated, KeyboardInterrupt)  # the engine records "interrupted"
    before = signal.getsignal(signal.SIGTERM)

    class Job:
        def run_and_print(self, _print):
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("not reached")

    monkeypatch.setattr(jobs, "build_job", lambda s: Job())
    assert main(["imp", "--out", str(tmp_path / "run")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path, monkeypatch):
    import lthfast.imp.jobs as jobs

    def fail(s):
        raise jobs.JobError("unknown model")

    monkeypatch.setattr(jobs, "build_job", fail)
    assert main(["imp", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_detection_weights_that_fit_nothing_are_an_error(tmp_path):
    from lthfast.detection.weights import WeightsError, load_detection_weights
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(WeightsError, match="no tensor of .* fits det.*file keys start with \\['foo'\\]"):
        load_detection_weights(model, {"foo": torch.zeros(2)}, name="det")
    with pytest.raises(WeightsError, match="ImageNet classifier: pass it as --backbone-weights"):
        load_detection_weights(model, {"conv1.weight": torch.zeros(2)}, name="det")
    rep = load_detection_weights(model, {"0.weight": torch.ones(4, 3, 3, 3), "x": torch.zeros(1)},
                                 name="det")
    assert rep.loaded == ["0.weight"] and rep.unmapped == ["x"]


def test_schedule_points_past_the_end_warn(capsys):
    from lthfast.imp.jobs import check_settings
    check_settings(_settings(["--iters", "6", "--lr-steps", "400", "--out", "r"]))
    assert "warning: --lr-steps 400" in capsys.readouterr().err
    check_settings(_settings(["--iters", "6", "--warmup", "100", "--out", "r"]))
    assert "warning: --warmup 100" in capsys.readouterr().err


def test_report_and_prune_refuse_empty_outputs(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert main(["prune", "resnet18", "--amount", "0.5", "--save", ""]) != 0
    assert "--save is empty" in capsys.readouterr().err


def test_prune_never_overwrites_its_input(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    before = ckpt.read_bytes()
    assert main(["prune", str(ckpt), "--arch", "resnet18", "--amount", "0.5",
                 "--save", str(ckpt)]) == 2
    assert "is the checkpoint being pruned" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_an_unknown_detection_model_is_named_before_the_data_are_made(tmp_path, monkeypatch,
                                                                      capsys):
    pytest.importorskip("torchvision")
    from lthfast.detection import data as det_data

    def no_data(*a, **k):
        raise AssertionError("the data were made before the model name was checked")

    monkeypatch.setattr(det_data, "load_dataset", no_data)
    assert main(["imp", "--model", "nosuch", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown detection model 'nosuch'" in err and "fasterrcnn_resnet18_fpn" in err
    assert not (tmp_path / "run").exists()


def test_model_name_errors_name_their_flag(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    assert main(["prune", str(ckpt), "--arch", "resnet1", "--amount", "0.5"]) != 0
    err = capsys.readouterr().err
    assert "--arch 'resnet1' is not a torchvision model name" in err and "resnet18" in err
    assert main(["bench", "threshold", "--models", "nosuch"]) != 0
    assert "--models 'nosuch' is not a torchvision model name" in capsys.readouterr().err
    assert main(["prune", "resnet18", "--amount", "1.5"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # 1.5 is no percentage
    assert main(["prune", "resnet18", "--amount", "80"]) == 2
    assert "did you mean 0.8?" in capsys.readouterr().err


def test_report_on_a_file_says_it_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "afile"), "--out", str(tmp_path / "r.html")]) != 0
    assert "is a file, not a run directory" in capsys.readouterr().err
