"""Review follow-ups of lthfast.analysis.runs and lthfast.ticket._core: out-of-range rounds,
labels that stay distinct, damaged run files and unusable devices give one clear error
naming the argument / file and the value, for Python callers too."""
from __future__ import annotations

import json
import os

import pytest
import torch

from _analysis_fixtures import mask, three_round_tickets, write_run
from lthfast.analysis.runs import Run, RunError, distinct_labels, load_run, unique_labels
from lthfast.ticket import Ticket

ROWS = [{"round": r, "sparsity": s, "top1": 50.0} for r, s in enumerate((0.0, 0.5, 0.75))]


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run", three_round_tickets(), ROWS, task="classification")


# ------------------------------------------------------------------ Run.ticket
@pytest.mark.parametrize("r", [-4, -100, 3, 7])
def test_ticket_of_a_round_out_of_range_is_a_run_error(run_dir, r):
    run = load_run(run_dir)
    with pytest.raises(RunError) as e:  # was: IndexError (negative), or an unfinished round
        run.ticket(r)
    msg = str(e.value)
    assert run.path in msg and str(r) in msg and "[0, 1, 2]" in msg


def test_ticket_in_range_rounds_still_load(run_dir):
    run = load_run(run_dir)
    assert run.ticket().round == run.ticket(-1).round == run.ticket(2).round == 2
    assert run.ticket(-3).round == run.ticket(0).round == 0


def test_ticket_of_an_unfinished_round_with_a_ticket_file_is_refused(tmp_path):
    # a run being written has round_R/ticket.safetensors before round R's metrics row
    run_dir = write_run(tmp_path / "run", three_round_tickets(), ROWS[:2], state="running")
    with pytest.warns(UserWarning):
        run = load_run(run_dir)
    with pytest.raises(RunError, match=r"no finished round 2; finished rounds: \[0, 1\]"):
        run.ticket(2)


@pytest.mark.parametrize("bad", ["1", 1.0, True])
def test_ticket_round_must_be_an_int(run_dir, bad):
    with pytest.raises(TypeError, match="round_index="):
        load_run(run_dir).ticket(bad)


def test_ticket_of_a_run_with_no_rows(tmp_path):
    run = Run(path=str(tmp_path), label="x", config={}, rows=[], status={})
    with pytest.raises(RunError, match="no finished round"):
        run.ticket()


# ---------------------------------------------------------------- unique labels
def _runs(tmp_path, *rel, labels=None):
    out = []
    for i, p in enumerate(rel):
        d = write_run(tmp_path / p, three_round_tickets(), ROWS, task="classification")
        out.append(load_run(d, label=labels[i] if labels else None))
    return out


def test_unique_labels_adds_parents_until_labels_differ(tmp_path):
    runs = _runs(tmp_path, "exp1/s0/run", "exp2/s0/run", "other")
    unique_labels(runs)  # was: "s0/run" twice
    assert [r.label for r in runs] == ["exp1/s0/run", "exp2/s0/run", "other"]


def test_distinct_labels_agrees_with_the_cli(tmp_path):
    from lthfast.cli.report import distinct_labels as cli_distinct_labels
    paths = [str(tmp_path / p) for p in ("a/x/run", "b/x/run", "c/run", "d")]
    assert distinct_labels(paths) == cli_distinct_labels(paths) == [
        "a/x/run", "b/x/run", "c/run", "d"]


def test_distinct_labels_refuses_one_path_twice(tmp_path):
    with pytest.raises(RunError, match="more than once"):  # the CLI version loops forever
        distinct_labels([str(tmp_path / "run"), str(tmp_path / "run") + os.sep])


def test_unique_labels_refuses_a_duplicate_given_label_and_changes_nothing(tmp_path):
    runs = _runs(tmp_path, "a", "b", "c", labels=["same", "same", None])
    with pytest.raises(RunError, match="'same' is given to 2 runs"):
        unique_labels(runs)
    assert [r.label for r in runs] == ["same", "same", "c"]


def test_unique_labels_keeps_given_labels_and_moves_folder_names_off_them(tmp_path):
    runs = _runs(tmp_path, "a/run", "b/run", labels=["run", None])
    unique_labels(runs)
    assert [r.label for r in runs] == ["run", "b/run"]


def test_build_report_keeps_every_run(tmp_path):
    from lthfast.analysis.report import build_report
    a, b = (write_run(tmp_path / p, three_round_tickets(), ROWS, task="classification")
            for p in ("exp1/s0/run", "exp2/s0/run"))
    out, _ = build_report([a, b], str(tmp_path / "r.html"))
    html = open(out).read()
    assert "exp1/s0/run" in html and "exp2/s0/run" in html
    with pytest.raises(RunError, match="give each run its own label"):
        build_report([a, b], str(tmp_path / "r2.html"), labels=["x", "x"])
    assert not os.path.exists(tmp_path / "r2.html")


def test_load_run_label_argument(run_dir):
    with pytest.raises(RunError, match="label='' .* is empty"):
        load_run(run_dir, label="")
    with pytest.raises(TypeError, match="label=3"):
        load_run(run_dir, label=3)
    assert load_run(run_dir, label="mine").label == "mine"


def test_load_run_path_argument():
    with pytest.raises(TypeError, match="path=None"):
        load_run(None)


# ------------------------------------------------------------- damaged run files
def _damage(run_dir, name, text):
    with open(os.path.join(run_dir, name), "w") as f:
        f.write(text)


@pytest.mark.parametrize("name,text,expect", [
    ("config.json", "{not json", "cannot read the run's configuration"),
    ("config.json", "[1, 2]", "configuration is a JSON list, not a JSON object"),
    ("status.json", "", "cannot read the run's status"),
    ("status.json", '"complete"', "status is a JSON str, not a JSON object"),
    ("metrics.json", "[{\"round\": 0,", "cannot read the run's metrics"),
    ("metrics.json", '{"round": 0}', "metrics is a JSON dict, not a JSON list"),
    ("metrics.json", "[1]", "row 0 is 1, not a JSON object"),
    ("metrics.json", '[{"sparsity": 0.0}]', "row 0 has round None"),
    ("metrics.json", '[{"round": "0", "sparsity": 0.0}]', "row 0 has round '0'"),
    ("metrics.json", '[{"round": -1, "sparsity": 0.0}]', "row 0 has round -1"),
    ("metrics.json", '[{"round": true, "sparsity": 0.0}]', "row 0 has round True"),
    ("metrics.json", '[{"round": 0, "sparsity": 0.0}, {"round": 1}]',
     r"row 1 \(round 1\) has sparsity None"),
    ("metrics.json", '[{"round": 0, "sparsity": "0.5"}]', "has sparsity '0.5'"),
    ("metrics.json", '[{"round": 0, "sparsity": 1.5}]', "has sparsity 1.5"),
    ("metrics.json", '[{"round": 0, "sparsity": NaN}]', "has sparsity nan"),
])
def test_load_run_names_the_damaged_file(run_dir, name, text, expect):
    _damage(run_dir, name, text)
    with pytest.raises(RunError, match=expect) as e:  # was: JSONDecodeError / KeyError / ...
        load_run(run_dir)
    assert os.path.join(os.path.abspath(run_dir), name) in str(e.value)


def test_load_run_and_the_cli_check_agree(run_dir):
    from lthfast.cli._common import CLIError
    from lthfast.cli.report import check_run_files
    _damage(run_dir, "metrics.json", '[{"round": 0, "sparsity": 2}]')
    with pytest.raises(CLIError) as cli:
        check_run_files(os.path.abspath(run_dir))
    with pytest.raises(RunError) as api:
        load_run(os.path.abspath(run_dir))
    assert str(cli.value) == str(api.value)


def test_load_run_config_json_is_a_directory(run_dir):
    os.remove(os.path.join(run_dir, "config.json"))
    os.mkdir(os.path.join(run_dir, "config.json"))
    with pytest.raises(RunError, match="cannot read the run's configuration"):
        load_run(run_dir)


def test_missing_status_is_still_unknown(run_dir):
    os.remove(os.path.join(run_dir, "status.json"))
    assert load_run(run_dir).status["state"] == "unknown"


def test_null_metrics_still_read_as_nan(run_dir):
    _damage(run_dir, "metrics.json", '[{"round": 0, "sparsity": 0.0, "APl": null}]')
    row = load_run(run_dir).rows[0]
    assert row["APl"] != row["APl"]


def test_settings_that_are_not_an_object(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("task")
    cfg["settings"] = ["task"]
    _damage(run_dir, "config.json", json.dumps(cfg))
    run = load_run(run_dir)
    assert run.settings == {} and run.task == "?"  # was: AttributeError on list.get


# ------------------------------------------------------------------- devices
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")


@needs_no_gpu
def test_load_on_cuda_without_a_gpu_names_the_device_argument(tmp_path):
    path = str(tmp_path / "t.safetensors")
    Ticket({"w": mask([1, 0, 1])}).save(path)
    with pytest.raises(ValueError, match=r"device='cuda': no CUDA GPU is visible"):
        Ticket.load(path, device="cuda")  # was: torch's "Torch not compiled with CUDA" / driver error
    with pytest.raises(ValueError, match=r"device='cuda:1'"):
        Ticket({"w": mask([1, 0, 1])}).to("cuda:1")


def test_device_argument_that_is_no_device(tmp_path):
    path = str(tmp_path / "t.safetensors")
    t = Ticket({"w": mask([1, 0, 1])})
    t.save(path)
    with pytest.raises(ValueError, match=r"device='gpu' is not a device"):
        Ticket.load(path, device="gpu")
    with pytest.raises(TypeError, match=r"device=1.5 must be a torch.device"):
        t.to(1.5)
    # the device is checked before the file: a bad device on a missing file names the device
    with pytest.raises(ValueError, match=r"device='gpu'"):
        Ticket.load(str(tmp_path / "missing.safetensors"), device="gpu")
    assert t.to("cpu") is t and Ticket.load(path, device=torch.device("cpu")) == t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_index_past_the_last_gpu():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"no CUDA device {n}; this machine has {n}"):
        Ticket({"w": mask([1, 0, 1])}).to(f"cuda:{n}")
