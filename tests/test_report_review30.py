"""Stop 30's review of what users look at after runs: run labels with '$' in the plots."""
from __future__ import annotations

import base64
import re

import pytest

pytest.importorskip("matplotlib")

from _analysis_fixtures import three_round_tickets, write_run  # noqa: E402
from lthfast.cli import main  # noqa: E402


def _run(tmp_path, name):
    return write_run(tmp_path / name, three_round_tickets(),
                     [{"round": r, "sparsity": s, "bbox_AP": 30.0 - r} for r, s in
                      enumerate((0.0, 0.5, 0.75))])


def test_dollar_signs_in_labels_are_text_not_mathtext(tmp_path):
    # matplotlib read 'a$\q$' as mathtext: five sections were "not available: Unknown symbol"
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    out = tmp_path / "page.html"
    assert main(["report", a, b, "--labels", r"a$\q$,lr$1e-3$", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Unknown symbol" not in page and "ParseFatalException" not in page
    images = dict(re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page))
    assert {"detection: sparsity vs metric", "per-layer IoU", "early-bird stability",
            "per-layer structure"} <= set(images), list(images)
    assert all(base64.b64decode(x)[:4] == b"\x89PNG" for x in images.values())


def test_plot_functions_draw_dollar_text_literally():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lthfast.imp.report import literal_text

    @literal_text
    def plot():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 2], label=r"a$\q$")
        ax.set_title("run$1 vs run$2")
        ax.legend()
        fig.canvas.draw()  # failed: Unknown symbol \q
        return fig

    fig = plot()
    assert not fig.axes[0].title.get_parse_math()
    assert matplotlib.rcParams["text.parse_math"]  # the caller's setting is left as it was
    plt.close(fig)


def _dead_pid() -> int:
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set_running(run, pid, host=None):
    import json
    import os
    import socket
    with open(os.path.join(run, "status.json"), "w") as f:
        json.dump({"state": "running", "round": 2, "pid": pid,
                   "host": host or socket.gethostname()}, f)


def test_a_killed_run_is_not_waited_for(tmp_path):
    # kill -9 left status.json at "running" for ever: perturb refused, report said "wait"
    import os

    from lthfast.analysis.runs import RunError, RunningWarning, load_run
    run = _run(tmp_path, "r")
    _set_running(run, _dead_pid())
    with pytest.warns(RunningWarning, match=r"is gone: killed.*--resume"):
        assert load_run(run, allow_running=False).rounds == [0, 1, 2]
    _set_running(run, os.getpid())  # alive: still being written
    with pytest.raises(RunError, match="still being written"):
        load_run(run, allow_running=False)
    _set_running(run, _dead_pid(), host="another-machine")  # cannot tell: as before
    with pytest.raises(RunError, match="still being written"):
        load_run(run, allow_running=False)


def test_status_json_names_its_writer(tmp_path):
    import os
    import socket

    from lthfast.imp.rundir import RunDir, writer_gone
    run = RunDir(str(tmp_path / "r"))
    run.start({"x": 1}, ["w"])
    status = run.status()
    assert status["pid"] == os.getpid() and status["host"] == socket.gethostname()
    assert not writer_gone(status)
    assert writer_gone({**status, "pid": _dead_pid()})
    assert not writer_gone({"state": "running", "round": 0})  # runs made before: unknown


def test_a_run_killed_before_round_0_is_started_over(tmp_path):
    from lthfast.imp import jobs
    from lthfast.imp.rundir import RunDir
    run = RunDir(str(tmp_path / "r"))
    run.start({"x": 1}, ["w"])
    assert not jobs._stopped_before_round_0(run)  # this process: alive
    _set_running(run.path, _dead_pid())  # kill -9 before round 0 finished
    assert jobs._stopped_before_round_0(run)


def test_ticket_from_names_the_run_and_round():
    from lthfast.analysis.report import _ticket_from
    assert _ticket_from("/x/runs/cls/round_3/ticket.safetensors") == "cls/round_3"
    assert _ticket_from("/x/my_ticket.safetensors") == "my_ticket.safetensors"
    assert _ticket_from(None) == "-" and _ticket_from("") == "-"


def test_layerwise_pairs_use_the_rounds_of_closest_sparsity(tmp_path):
    import types

    from lthfast.analysis.report import _closest_rounds
    g = types.SimpleNamespace(rows=[{"round": 0, "sparsity": 0.0}, {"round": 1, "sparsity": 0.2}],
                              rounds=[0, 1])
    lw_run = types.SimpleNamespace(rows=[{"round": r, "sparsity": s} for r, s in
                                         enumerate((0.0, 0.2, 0.36))], rounds=[0, 1, 2])
    assert _closest_rounds(g, lw_run) == (1, 1)  # not the layer-wise run's final 36%
    dense = types.SimpleNamespace(rows=[{"round": 0, "sparsity": 0.0}], rounds=[0])
    assert _closest_rounds(dense, lw_run) == (0, 2)


@pytest.mark.filterwarnings("ignore:run .*:UserWarning")
def test_an_empty_stopped_run_says_how_it_stopped_and_how_to_resume(tmp_path):
    import json
    import os

    from lthfast.analysis.runs import RunError, load_run
    run = write_run(tmp_path / "r", [], [], state="running")
    _set_running(run, _dead_pid())
    with pytest.raises(RunError, match=r"no round finished yet \(it was killed.*is gone\); "
                                       r"`lthfast imp --resume .*` continues it"):
        load_run(run)
    with open(os.path.join(run, "status.json"), "w") as f:
        json.dump({"state": "interrupted", "round": -1, "error": "KeyboardInterrupt: "}, f)
    with pytest.raises(RunError, match=r"it was interrupted: KeyboardInterrupt.*--resume"):
        load_run(run)
    _set_running(run, os.getpid())  # running: no hint
    with pytest.raises(RunError, match=r"status 'running'\)$"):
        load_run(run, allow_running=True)


def test_perturb_on_a_run_with_only_the_dense_round(tmp_path):
    from lthfast.analysis import perturb as pt
    from lthfast.analysis.runs import RunError
    run = write_run(tmp_path / "r", three_round_tickets()[:1], [{"round": 0, "sparsity": 0.0}])
    with pytest.raises(RunError, match=r"dense \(nothing pruned\).*this run has none yet"):
        pt.perturbation(run, kinds="random", write=False)


def test_plots_leave_the_callers_matplotlib_backend(tmp_path):
    # every plot called matplotlib.use("Agg"): a notebook's inline backend was replaced
    import matplotlib
    before = matplotlib.get_backend()
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    matplotlib.use("svg")
    try:
        assert main(["report", a, b, "--out", str(tmp_path / "p.html")]) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_analyses_take_pathlib_paths(tmp_path):
    from lthfast.analysis import ap_by_size, early_bird, mask_overlap
    run = tmp_path / "a"
    _run(tmp_path, "a")
    assert len(early_bird(run)) == 3
    assert len(ap_by_size(run)) == 3
    t = run / "round_2" / "ticket.safetensors"
    assert mask_overlap(t, t)["overall"] == 1.0
