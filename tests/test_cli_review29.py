"""Stop 29's review of the command line: an --out that cannot be made, --ticket RUN_DIR,
unknown flags reported by the command, one set of training columns for every task."""
from __future__ import annotations

import json
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


def test_the_nproc_launcher_forwards_a_signal_and_returns_its_status(tmp_path):
    """SIGTERM to `lthfast imp --nproc N` left torchrun and its workers training on."""
    import signal
    import sys
    import threading
    import time
    from lthfast.imp import ddp
    ready, got = tmp_path / "ready", tmp_path / "got"
    child = (f"import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda s, f: (pathlib.Path({str(got)!r}).write_text(str(s)), sys.exit(7)))\n"
             f"pathlib.Path({str(ready)!r}).write_text('1')\n"
             f"time.sleep(60)\n")

    def kill_when_ready():
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)  # to the launcher, which forwards it
    threading.Thread(target=kill_when_ready, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    code = ddp.run_in_own_session([sys.executable, "-c", child])
    assert code == 7 and got.read_text() == str(int(signal.SIGTERM))
    assert signal.getsignal(signal.SIGTERM) is before  # handlers put back
    # a child killed by a signal: the shell's 128 + signal
    assert ddp.run_in_own_session([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]) == 137


def test_nproc_flag_errors_are_made_once_before_spawning(tmp_path, monkeypatch, capsys):
    import torch
    from lthfast.imp import ddp
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    monkeypatch.setattr(ddp, "spawn", lambda *a: pytest.fail("spawned"))
    assert main(["imp", "--nproc", "2", "--device", "cuda", "--task", "classification",
                 "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.count("no CUDA GPU is visible") == 1


TINY = ["--task", "classification", "--iters", "2", "--n-train", "16", "--n-val", "8",
        "--image-size", "32", "--batch-size", "8", "--quiet"]


def test_ticket_run_resumes_after_its_ticket_file_is_gone(tmp_path, capsys):
    src = str(tmp_path / "src")
    assert main(["imp", *TINY, "--rounds", "1", "--out", src]) == 0
    ticket = tmp_path / "start.safetensors"
    ticket.write_bytes((tmp_path / "src" / "round_1" / "ticket.safetensors").read_bytes())
    run = str(tmp_path / "run")
    assert main(["imp", *TINY, "--rounds", "1", "--ticket", str(ticket), "--out", run]) == 0
    # --target below the ticket's sparsity: refused before any folder is made
    assert main(["imp", *TINY, "--rounds", "1", "--ticket", str(ticket), "--target", "0.1",
                 "--out", str(tmp_path / "none")]) == 2
    assert "below the sparsity" in capsys.readouterr().err and not (tmp_path / "none").exists()
    ticket.unlink()
    # killed in round 0 (no checkpoint): round 0 needs the ticket, so it is refused
    early = tmp_path / "early"
    early.mkdir()
    for name in ("config.json", "pruned_params.txt"):
        (early / name).write_bytes((tmp_path / "run" / name).read_bytes())
    (early / "status.json").write_text('{"state": "interrupted", "round": -1}')
    cfg = json.loads((early / "config.json").read_text())
    cfg["settings"]["out"] = str(early)
    (early / "config.json").write_text(json.dumps(cfg))
    assert main(["imp", "--resume", str(early), "--quiet"]) == 2
    assert "round 0 did not finish" in capsys.readouterr().err
    assert main(["imp", "--resume", run, "--rounds", "2", "--quiet"]) == 0
    assert "is gone" in capsys.readouterr().err
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["sparsity"] > rows[1]["sparsity"]
