"""Stop 29's review of the command line: an --out that cannot be made, --ticket RUN_DIR,
unknown flags reported by the command, one set of training columns for every task."""
from __future__ import annotations

import os

import pytest

from _analysis_fixtures import three_round_tickets, write_run
from lthfast.cli import build_parser, main


def _settings(argv):
    from lthfast.imp.jobs import settings_from_args
    return settings_from_args(build_parser().parse_args(["imp", *argv]))


def test_imp_out_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, capsys):
    import lthfast.imp.rundir as rundir

    def refuse(path):
        raise PermissionError(1, "Operation not permitted", path)
    monkeypatch.setattr(rundir, "hold", refuse)  # as root on /sys: os.access says yes
    out = str(tmp_path / "run")
    assert main(["imp", "--task", "classification", "--iters", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create or lock the run directory (Operation not permitted" in err
    assert "Traceback" not in err


def test_report_out_where_no_file_can_be_made(tmp_path, monkeypatch, capsys):
    import tempfile
    run = write_run(tmp_path / "run", three_round_tickets(),
                    [{"round": r, "sparsity": s} for r, s in enumerate((0.0, 0.5, 0.75))])

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["report", run, "--out", str(tmp_path / "r.html")]) == 2
    assert "cannot create a file in" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_ticket_of_a_run_directory_is_its_last_rounds(tmp_path):
    from lthfast.imp.jobs import JobError
    run = write_run(tmp_path / "run", three_round_tickets(),
                    [{"round": r, "sparsity": s} for r, s in enumerate((0.0, 0.5, 0.75))])
    s = _settings(["--task", "classification", "--ticket", run, "--out", str(tmp_path / "t")])
    assert s.ticket == os.path.join(run, "round_2", "ticket.safetensors") and s.rounds == 0
    (tmp_path / "plain").mkdir()
    with pytest.raises(JobError, match="no finished IMP run.*ticket file"):
        _settings(["--ticket", str(tmp_path / "plain"), "--out", str(tmp_path / "u")])


@pytest.mark.parametrize("cmd", ["imp", "prune", "report"])
def test_unknown_flag_is_the_commands_error(cmd, capsys):
    assert main([cmd, *(["runs/x"] if cmd == "report" else []), "--bogus-flag"]) == 2
    err = capsys.readouterr().err
    assert f"usage: lthfast {cmd}" in err and f"lthfast {cmd}: error: unrecognized arguments: --bogus-flag" in err


def test_classification_training_has_the_detection_columns():
    import torch
    from lthfast.imp.classification import ShapesClassification, train_classifier
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, len(ShapesClassification.classes)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train_classifier(model, ShapesClassification(4, size=16), opt, iters=2, batch_size=2, lr=0.01)
    assert set(out) == {"final_loss", "mean_loss", "iters", "time_s", "s_per_iter"}
