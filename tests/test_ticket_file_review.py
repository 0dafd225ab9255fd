"""Review of ticket files, the packed bitmask, `lthfast report` and `lthfast compare`:
regression tests for what a demanding user hit (raw tracebacks on bad input, lossy
round trips, misleading messages, tables and plots, files overwritten by mistake), and a
seeded randomized round trip of ticket save/load and pack/unpack against a plain oracle."""
from __future__ import annotations

import json
import os
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import lthfast
from _ticket_files import reseal
from lthfast import Ticket, bitmask

pytestmark = [pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built"),
              pytest.mark.usefixtures("one_thread")]


def _split(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _rewrite(path, edit):
    header, data = _split(path)
    edit(header)
    raw = json.dumps(reseal(header)).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def _small(path):
    Ticket({"a": torch.tensor([[True, False, True]])}, round=1).save(path)
    return path


# ------------------------------------------------------------------ bitmask

def test_unpack_bits_takes_an_int_shape_and_refuses_non_integer_sizes():
    m = torch.arange(20) % 3 == 0
    p = bitmask.pack_bits(m)
    assert torch.equal(bitmask.unpack_bits(p, 20), m)              # an int, as torch takes it
    assert torch.equal(bitmask.unpack_bits(p, torch.tensor(20)), m)
    assert torch.equal(bitmask.unpack_bits(p, [4, 5]), m.reshape(4, 5))
    assert torch.equal(bitmask.unpack_bits(p, torch.Size([2, 10])), m.reshape(2, 10))
    with pytest.raises(TypeError, match=r"shape \(4.0, 5\) has a float at position 0"):
        bitmask.unpack_bits(p, (4.0, 5))                          # was silently (4, 5)
    with pytest.raises(TypeError, match="bool at position 0"):
        bitmask.unpack_bits(p, (True, 20))                        # was silently (1, 20)
    with pytest.raises(TypeError, match="shape must be an int or a sequence of ints.*None"):
        bitmask.unpack_bits(p, None)
    with pytest.raises(TypeError, match="shape must be an int"):
        bitmask.unpack_bits(p, "20")


# ------------------------------------------------------------------ ticket files: saving

def test_save_refuses_a_mask_named_like_the_safetensors_metadata(tmp_path):
    t = Ticket({"__metadata__": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'__metadata__'.*rename"):
        t.save(tmp_path / "t.safetensors")   # was saved, then unreadable ("format is None")
    assert os.listdir(tmp_path) == []


def test_save_refuses_meta_keys_that_json_would_turn_into_strings(tmp_path):
    t = Ticket({"a": torch.ones(3, dtype=torch.bool)}, meta={"ok": {"nested": {3: "x"}}})
    with pytest.raises(TypeError, match=r"ticket.meta has the key 3 \(int\)"):
        t.save(tmp_path / "t.safetensors")   # was loaded back as {"3": "x"}
    assert os.listdir(tmp_path) == []
    t.meta = {"loop": []}
    t.meta["loop"].append(t.meta)
    with pytest.raises(TypeError, match="Circular reference"):
        t.save(tmp_path / "t.safetensors")
    t.meta = {"ok": {"nested": [{"x": (1, 2)}]}}
    t.save(tmp_path / "t.safetensors")
    assert Ticket.load(tmp_path / "t.safetensors").meta == {"ok": {"nested": [{"x": [1, 2]}]}}


def test_save_to_a_directory_or_into_a_missing_folder_names_the_path(tmp_path):
    t = Ticket({"a": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(IsADirectoryError, match="cannot save the ticket to .*it is a directory"):
        t.save(tmp_path)                       # was "[Errno 21] ... '/tmp/.xyz.tmp' -> ..."
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        t.save(str(tmp_path / "newdir") + os.sep)   # was NotADirectoryError on a temp file
    with pytest.raises(FileNotFoundError, match="directory .*nope.* does not exist"):
        t.save(tmp_path / "nope" / "t.safetensors")
    assert os.listdir(tmp_path) == [] and not any(
        n.endswith(".tmp") for n in os.listdir(os.path.dirname(tmp_path)))


# ------------------------------------------------------------------ ticket files: loading

def test_deeply_nested_header_is_a_clear_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    body = b"[" * 100_000
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(ValueError, match="deep.safetensors.*not valid JSON"):
        Ticket.load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["__metadata__"].update(shapes=json.dumps({"a": [True, 3]})),
     "not a list of sizes"),
    (lambda h: h["a"].update(data_offsets=[0, True]), "data offsets"),
    (lambda h: h["__metadata__"].update(kept=json.dumps({"a": 2.0})), "keeps 2.0 entries"),
])
def test_bools_and_floats_where_the_format_has_ints_are_refused(tmp_path, edit, match):
    path = _small(tmp_path / "t.safetensors")
    _rewrite(path, edit)   # each was accepted (shape (True, 3): a bool in Ticket.shapes)
    with pytest.raises(ValueError, match=match):
        Ticket.load(path)


def test_metadata_that_is_there_but_not_a_string_is_not_called_missing(tmp_path):
    path = _small(tmp_path / "t.safetensors")
    _rewrite(path, lambda h: h["__metadata__"].update(round=1))
    with pytest.raises(ValueError, match="metadata 'round' is 1, not a string"):
        Ticket.load(path)


def test_format_version_errors_say_what_to_do(tmp_path):
    path = _small(tmp_path / "t.safetensors")
    _rewrite(path, lambda h: h["__metadata__"].update(version="2", lthfast_version="9.0"))
    with pytest.raises(ValueError, match="version is 2, written by lthfast 9.0.*upgrade lthfast"):
        Ticket.load(path)
    _rewrite(path, lambda h: h["__metadata__"].update(version=1))
    # was "version 1 is not supported (this lthfast reads version 1)"
    with pytest.raises(ValueError, match=r"version is 1 \(int\).*'1' \(a str\)"):
        Ticket.load(path)


def test_a_checkpoint_given_as_a_ticket_is_named_and_not_read_whole(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, ckpt)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

    def counting_open(p, mode="r", *a, **k):
        f = real_open(p, mode, *a, **k)
        return Counting(f) if os.fspath(p) == str(ckpt) and "b" in mode else f
    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(ValueError, match="checkpoint.pt.*zip archive.*torch.save"):
        Ticket.load(ckpt)
    monkeypatch.undo()
    assert sum(reads) == 8  # the header length only, not the whole (possibly GB) file
    js = tmp_path / "config.json"
    js.write_text(json.dumps({"schedule": {"rounds": 3}}, indent=2))
    with pytest.raises(ValueError, match="config.json.*JSON text file"):
        Ticket.load(js)


# ------------------------------------------------------------------ ticket tables

def test_format_report_never_shows_100_or_0_percent_for_a_layer_that_is_not():
    few = torch.zeros(100_000, dtype=torch.bool)
    few[7] = True
    most = torch.ones(200_000, dtype=torch.bool)
    most[3] = False
    t = Ticket({"few": few.reshape(1000, 100), "most": most.reshape(2, 1000, 10, 10),
                "gone": torch.zeros(4, 4, dtype=torch.bool)})
    lines = {l.split()[0]: l for l in t.format_report().splitlines()[3:6]}
    assert ">99.99%" in lines["few"] and "100.00%" not in lines["few"]   # was 100.00%
    assert "<0.01%" in lines["most"] and "0.00%" not in lines["most"]    # was 0.00%
    assert "100.00%" in lines["gone"]
    assert t.format_report().splitlines()[-1] == "layer collapse (no weight kept): gone"


# ------------------------------------------------------------------ compare / report CLIs

def _run(path, tickets, *, state="complete", rows=None):
    from _analysis_fixtures import write_run
    rows = rows or [{"round": r, "sparsity": t.sparsity(), "top1": 50.0 - r}
                    for r, t in enumerate(tickets)]
    return write_run(path, tickets, rows, task="classification", state=state)


def _tickets():
    from _analysis_fixtures import three_round_tickets
    return three_round_tickets()


def test_compare_names_a_and_b_and_checks_round(tmp_path, capsys):
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    b = _run(tmp_path / "b", _tickets())
    assert main(["compare", a, b, "--round", "-2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"A: {a} (round 1)\nB: {b} (round 1)\n")
    assert main(["compare", a, b, "--round", "-9"]) == 2          # was IndexError traceback
    assert "--round -9: run" in capsys.readouterr().err
    fa = os.path.join(a, "round_1", "ticket.safetensors")
    fb = os.path.join(b, "round_2", "ticket.safetensors")
    assert main(["compare", fa, fb, "--round", "1"]) == 2         # was silently ignored
    assert "--round 1 is for run directories" in capsys.readouterr().err
    assert main(["compare", fa, fb]) == 0
    assert "A: " + fa + " (round 1)" in capsys.readouterr().out


def test_compare_damaged_ticket_or_run_files_is_one_error_line(tmp_path, capsys):
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    b = _run(tmp_path / "b", _tickets())
    path = os.path.join(b, "round_2", "ticket.safetensors")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:40])
    assert main(["compare", a, b]) == 2                          # was a ValueError traceback
    err = capsys.readouterr().err
    assert err.startswith("lthfast compare: error: ") and "round_2" in err and "truncated" in err
    with open(os.path.join(b, "metrics.json"), "w") as f:
        f.write("[{")
    assert main(["compare", a, b]) == 2                          # was a JSONDecodeError
    assert "metrics.json: cannot read the run's metrics" in capsys.readouterr().err


def test_compare_running_run_warns_as_one_line(tmp_path, capsys):
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    b = _run(tmp_path / "b", _tickets(), state="running")
    assert main(["compare", a, b]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lthfast compare: warning: run ") and "still being written" in err
    assert "RunningWarning" not in err


@pytest.mark.parametrize("content, match", [
    ("[{", "metrics.json: cannot read the run's metrics"),
    ("[1, 2]", "metrics.json: row 0 is 1, not a JSON object"),
    ('[{"round": 0}]', "row 0 \\(round 0\\) has sparsity None"),
    ('[{"round": "x", "sparsity": 0}]', "row 0 has round 'x'"),
    ('{"round": 0}', "metrics is a JSON dict, not a JSON list"),
])
def test_report_damaged_metrics_is_one_error_line(tmp_path, capsys, content, match):
    import re
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    with open(os.path.join(a, "metrics.json"), "w") as f:
        f.write(content)
    assert main(["report", a, "--out", str(tmp_path / "r.html")]) == 2   # were tracebacks
    err = capsys.readouterr().err
    assert err.startswith("lthfast report: error: ") and re.search(match, err), err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name, content, match", [
    ("status.json", "", "status.json: cannot read the run's status"),
    ("config.json", "[]", "config.json: the run's configuration is a JSON list"),
])
def test_report_damaged_status_or_config_is_one_error_line(tmp_path, capsys, name, content, match):
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    with open(os.path.join(a, name), "w") as f:
        f.write(content)
    assert main(["report", a, "--out", str(tmp_path / "r.html")]) == 2
    assert match in capsys.readouterr().err


def test_report_out_never_replaces_a_run_file_and_names_bad_paths(tmp_path, capsys):
    from lthfast.cli import main
    a = _run(tmp_path / "a", _tickets())
    cfg = os.path.join(a, "config.json")
    before = open(cfg).read()
    assert main(["report", a, "--out", cfg]) == 2       # was: config.json replaced by HTML
    assert "exists and is not an HTML page" in capsys.readouterr().err
    assert open(cfg).read() == before
    assert main(["report", a, "--out", str(tmp_path)]) == 2   # was IsADirectoryError traceback
    assert "is a directory" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "r.html"
    assert main(["report", a, "--out", str(missing)]) == 2    # was: folders created silently
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()
    page = tmp_path / "r.html"
    assert main(["report", a, "--out", str(page)]) == 0
    assert main(["report", a, "--out", str(page)]) == 0       # an earlier report: replaced
    assert main(["report", a, a, "--labels", "x,", "--out", str(page)]) == 2
    assert "--labels 'x,' has an empty name" in capsys.readouterr().err


def test_curve_keeps_identical_runs_visible_and_draws_dense_only_when_there_is_one(monkeypatch):
    from lthfast.imp import report as rep
    figs = []
    monkeypatch.setattr(rep, "_png", lambda fig: figs.append(fig) or "png")
    rows = [{"round": r, "sparsity": s, "top1": 25.0} for r, s in enumerate((0.0, 0.2, 0.36))]
    rep.plot_curve({"a": rows, "b": [dict(r) for r in rows]})
    ax = figs[-1].axes[0]
    styles = {(l.get_marker(), l.get_linestyle()) for l in ax.lines}
    assert len(styles) == 2          # were both "o" and "-": b hid a completely
    assert ax.get_ylabel() == "top1 (%)"
    transferred = [{"round": 0, "sparsity": 0.3, "top1": 20.0}, {"round": 1, "sparsity": 0.5,
                                                                  "top1": 19.0}]
    rep.plot_curve({"this run": transferred})
    labels = [l.get_label() for l in figs[-1].axes[0].lines]
    assert "dense" not in labels     # was a "dense" line at the 30%-sparse round 0
    import matplotlib.pyplot as plt
    for f in figs:
        plt.close(f)


def test_run_report_with_a_damaged_ticket_still_writes_the_page(tmp_path):
    from lthfast.imp.report import write_run_report
    a = _run(tmp_path / "a", _tickets())
    with open(os.path.join(a, "round_2", "ticket.safetensors"), "r+b") as f:
        f.truncate(30)
    out = write_run_report(a, str(tmp_path / "r.html"))   # was a ValueError: no page at all
    html = open(out).read()
    assert "Per-layer sparsity, round 2" in html and "not available" in html
    assert "Sparsity vs accuracy" in html


# ------------------------------------------------------------------ randomized round trip

def _oracle_pack(mask: torch.Tensor) -> torch.Tensor:
    """Row-major (logical order), least significant bit first, trailing bits zero."""
    flat = mask.detach().cpu().numpy().reshape(-1)
    return torch.from_numpy(np.packbits(flat.astype(np.uint8), bitorder="little").copy())


def _random_layout(rng: random.Random, m: torch.Tensor) -> torch.Tensor:
    """The same logical mask in another memory layout."""
    kind = rng.choice(["contiguous", "channels_last", "transposed", "sliced", "expanded"])
    if kind == "channels_last" and m.dim() == 4:
        return m.contiguous(memory_format=torch.channels_last)
    if kind == "transposed" and m.dim() >= 2:
        return m.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "sliced" and m.dim() >= 1:
        big = torch.zeros((m.shape[0] * 2,) + tuple(m.shape[1:]), dtype=torch.bool)
        big[::2] = m
        return big[::2]
    if kind == "expanded" and m.dim() >= 1 and m.numel() and bool((m == m[:1]).all()):
        return m[:1].expand(m.shape)
    return m.contiguous()


def _random_shape(rng: random.Random) -> tuple:
    nd = rng.choice([0, 1, 1, 2, 2, 3, 4, 4])
    sizes = [rng.choice([0, 1, 2, 3, 5, 7, 8, 9, 16, 17]) if rng.random() < 0.1
             else rng.randint(1, 13) for _ in range(nd)]
    return tuple(sizes)


def test_randomized_ticket_and_bitmask_round_trip(tmp_path):
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    for case in range(30):
        masks, oracle = {}, {}
        for j in range(rng.randint(0, 6)):
            shape = _random_shape(rng)
            p = rng.choice([0.0, 1.0, 0.5, rng.random(), 0.999, 0.001])
            m = torch.rand(shape, generator=gen) < p
            mm = _random_layout(rng, m)
            assert torch.equal(mm, m)
            name = f"layer{j}.{rng.choice(['weight', 'conv.weight', 'ünï'])}"
            masks[name], oracle[name] = mm, m
            # pack / unpack / count against the oracle, whatever the layout
            packed = bitmask.pack_bits(mm)
            assert torch.equal(packed, _oracle_pack(m)), (case, name, shape, mm.stride())
            assert bitmask.count_bits(packed) == int(m.sum())
            assert torch.equal(bitmask.unpack_bits(packed, shape), m)
            assert bitmask.unpack_bits(packed, shape).is_contiguous()
            out = torch.ones(tuple(reversed(shape)), dtype=torch.bool).permute(
                *reversed(range(len(shape)))) if shape else torch.ones((), dtype=torch.bool)
            assert torch.equal(bitmask.unpack_bits_into(packed, out), m)
        meta = {"case": case, "rewind": rng.choice(["init", "iter:50", None]),
                "ap": [rng.random() for _ in range(rng.randint(0, 3))],
                "nested": {"k": [1, {"x": 2}]}}
        t = Ticket(masks, round=rng.randint(0, 40), meta=meta, layerwise=rng.random() < 0.5)
        path = tmp_path / f"t{case}.safetensors"
        t.save(path)
        u = Ticket.load(path)
        assert u == t and u.names() == list(masks)
        assert (u.round, u.meta, u.layerwise) == (t.round, meta, t.layerwise)
        assert u.shapes == {n: tuple(m.shape) for n, m in oracle.items()}
        assert all(type(s) is int for shape in u.shapes.values() for s in shape)
        for n, m in oracle.items():
            assert u[n].dtype == torch.bool and u[n].is_contiguous() and torch.equal(u[n], m)
            assert u.kept(n) == int(m.sum()) and torch.equal(u.packed(n), _oracle_pack(m))
        total = sum(m.numel() for m in oracle.values())
        kept = sum(int(m.sum()) for m in oracle.values())
        assert u.sparsity() == pytest.approx(1 - kept / total if total else 0.0, abs=1e-12)
        header, data = _split(path)
        assert len(data) == sum((m.numel() + 7) // 8 for m in oracle.values())
        assert int(header["__metadata__"]["crc32"]) == zlib.crc32(data)
    assert sorted(os.listdir(tmp_path)) == sorted(f"t{c}.safetensors" for c in range(30))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_tied_parameters_round_trip_through_a_file(tmp_path, dtype):
    """A weight shared by two modules (and an embedding tied to a decoder) is covered once,
    under its first name; saved, loaded and applied, it masks the one tensor both use."""
    torch.manual_seed(3)

    def make():
        emb = nn.Embedding(11, 6)
        shared = nn.Linear(6, 6)
        dec = nn.Linear(6, 11, bias=False)
        dec.weight = emb.weight
        m = nn.ModuleDict({"emb": emb, "a": shared, "b": shared, "dec": dec,
                           "conv": nn.Conv2d(6, 4, 3)}).to(dtype)
        m["conv"].to(memory_format=torch.channels_last)
        return m
    model = make()
    t = Ticket.from_model(model, 0.4)
    assert t.names() == ["a.weight", "dec.weight", "conv.weight"]
    t.save(tmp_path / "t.safetensors")
    u = Ticket.load(tmp_path / "t.safetensors")
    assert u == t and u.shapes == t.shapes
    fresh = make()
    u.apply(fresh)
    assert fresh["b"].weight is fresh["a"].weight and fresh["emb"].weight is fresh["dec"].weight
    for n in t.names():
        p = fresh.get_parameter(n)
        assert p.dtype == dtype and torch.equal(u.mask_for(p), t[n])
        assert bool((p.detach()[~t[n]] == 0).all())
    assert torch.equal(u.mask_for(fresh["emb"].weight), t["dec.weight"])  # the same tensor
    assert fresh["conv"].weight.is_contiguous(memory_format=torch.channels_last)


def test_to_pruned_refuses_a_weight_tied_across_modules():
    emb = nn.Embedding(11, 6)
    dec = nn.Linear(6, 11, bias=False)
    dec.weight = emb.weight
    shared = nn.Linear(6, 6)
    model = nn.ModuleDict({"emb": emb, "dec": dec, "a": shared, "b": shared})
    t = Ticket.from_model(model, 0.5)
    assert t.names() == ["dec.weight", "a.weight"]
    # was: hooks on "dec" only, the embedding went on using the unmasked weight
    with pytest.raises(ValueError, match=r"'dec.weight' is tied to \['emb.weight'\].*ticket.apply"):
        t.to_pruned(model)
    assert not hasattr(model["dec"], "weight_orig") and not hasattr(model["a"], "weight_orig")
    # one module used twice is one set of hooks: fine
    only_shared = Ticket({"a.weight": t["a.weight"]})
    only_shared.to_pruned(model)
    assert bool((model["b"].weight[~t["a.weight"]] == 0).all())
    assert Ticket.from_pruned(model) == only_shared


def test_report_keeps_runs_with_the_same_folder_names_apart(tmp_path, capsys):
    from lthfast.cli import main
    a = _run(tmp_path / "exp1" / "s0" / "run", _tickets())
    b = _run(tmp_path / "exp2" / "s0" / "run", _tickets()[:2])
    page = tmp_path / "r.html"
    # was: both labelled "s0/run", one run silently dropped from every plot and table
    assert main(["report", a, b, "--out", str(page)]) == 0
    html = page.read_text()
    assert html.count("<td>exp1/s0/run</td>") >= 2 and html.count("<td>exp2/s0/run</td>") >= 2
    from lthfast.cli.report import distinct_labels
    assert distinct_labels([a, b, str(tmp_path / "c")]) == ["exp1/s0/run", "exp2/s0/run", "c"]
    assert main(["report", a, b, "--labels", "x,x", "--out", str(page)]) == 2
    assert "'x' more than once" in capsys.readouterr().err
    assert main(["report", a, a + os.sep, "--out", str(page)]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_compare_table_never_rounds_a_pruned_layer_to_0_or_a_kept_one_to_100(tmp_path, capsys):
    from lthfast.cli import main
    few = torch.ones(5000, dtype=torch.bool)
    few[0] = False
    most = torch.zeros(5000, dtype=torch.bool)
    most[1] = True
    Ticket({"w": few}).save(tmp_path / "a.safetensors")
    Ticket({"w": most}).save(tmp_path / "b.safetensors")
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("w ")][0]
    assert line.split()[2:4] == ["<0.1%", ">99.9%"]   # were "0.0%" and "100.0%"


def test_run_report_tables_never_round_a_sparsity_to_100_or_0():
    from lthfast.imp.report import html_table
    html = html_table([{"sparsity": 0.999996, "sparsity_network": 0.00004, "x": 1.0},
                       {"sparsity": 1.0, "sparsity_network": 0.0, "x": 2.0}])
    assert "<td>&gt;99.99%</td>" in html    # was 100.00%
    assert "<td>&lt;0.01%</td>" in html     # was 0.00%
    assert "<td>100.00%</td>" in html and "<td>0.00%</td>" in html


@pytest.mark.parametrize("old, new", [(b'"round":"1"', b'"round":"3"'),
                                      (b'"layerwise":"0"', b'"layerwise":"1"'),
                                      (b'"lr\\": 0.1', b'"lr\\": 0.3')])
def test_a_flipped_digit_in_the_header_fails_its_crc(tmp_path, old, new):
    """The data's CRC does not cover the metadata, and a flipped digit there is still
    valid JSON: the header has its own CRC (files written before it load as before)."""
    path = tmp_path / "t.safetensors"
    t = Ticket({"a": torch.tensor([[True, False, True]])}, round=1)
    t.meta["lr"] = 0.1
    t.save(path)
    blob = path.read_bytes()
    assert blob.count(old) == 1, blob[:400]
    path.write_bytes(blob.replace(old, new))  # same length: the header stays in place
    with pytest.raises(ValueError, match="t.safetensors.*header fails the CRC-32 check"):
        Ticket.load(path)
    header, data = _split(path)
    del header["__metadata__"]["header_crc32"]  # as written before the header CRC existed
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    assert Ticket.load(path).round == (3 if old.startswith(b'"round') else 1)
