"""Review of the IMP engine's Python API (run_imp): regressions for bugs found with
tiny MLPs on random data and custom train_fn / eval_fn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lthfast.imp import IMPConfig, run_imp

pytest.importorskip("lthfast.ticket")
optim = pytest.importorskip("lthfast.optim")

ITERS = 4
X = torch.randn(48, 6, generator=torch.Generator().manual_seed(5))
Y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(6))


def mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    mid = [nn.BatchNorm1d(16)] if bn else []
    return nn.Sequential(nn.Linear(6, 16), *mid, nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def weights(m):
    return [f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]


def make_train(*, call_on_iter=True, modes=None, fail_round=None):
    def train_fn(ctx):
        if modes is not None:
            modes.append((ctx.round, ctx.model.training))
        if ctx.round == fail_round:
            raise KeyboardInterrupt("killed")
        opt = optim.MaskedSGD(ctx.model.parameters(), lr=0.1, momentum=0.9, ticket=ctx.ticket)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
        ctx.objects.update(optimizer=opt, scheduler=sched)
        for i in range(ctx.start_iter, ITERS):
            idx = torch.randint(0, len(X), (12,))
            loss = nn.functional.cross_entropy(ctx.model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if call_on_iter:
                ctx.on_iter(i + 1, ctx.model)
        return {"loss": loss.detach()}  # a tensor: was dropped from the row
    return train_fn


def eval_fn(model, ctx):
    with torch.no_grad():
        return {"acc": (model(X).argmax(1) == Y).float().mean().item()}


def go(model, cfg, out=None, **kw):
    kw.setdefault("train_fn", make_train())
    kw.setdefault("eval_fn", eval_fn)
    return run_imp(model, weights(model), config=cfg, out=None if out is None else str(out), **kw)


def no_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_metric_named_like_an_engine_column_is_refused():
    # {"round": 7} used to overwrite the row's round (resume then read the wrong round)
    m = mlp()
    with pytest.raises(ValueError, match="round"):
        go(m, IMPConfig(rounds=0), eval_fn=lambda mm, ctx: {"round": 7})


@pytest.mark.parametrize("who", ["train_fn", "eval_fn"])
def test_non_dict_results_are_a_clear_error(who):
    m = mlp()
    kw = {who: (lambda ctx: 0.5) if who == "train_fn" else (lambda mm, ctx: 0.5)}
    with pytest.raises(TypeError, match=f"{who} must return a dict"):
        go(m, IMPConfig(rounds=0), **kw)


def test_tensor_and_nan_metrics_become_plain_values():
    m = mlp()
    res = go(m, IMPConfig(rounds=0),
             eval_fn=lambda mm, ctx: {"nan": torch.tensor(float("nan")), "t": torch.tensor(2.5)})
    row = res.rows[0]
    assert row["nan"] is None and row["t"] == 2.5  # NaN tensor: null, not NaN in JSON
    assert isinstance(row["train_loss"], float)    # train_fn's tensor loss is kept


def test_rewind_iteration_never_reached_fails_in_round_0():
    m = mlp()
    evals = []
    with pytest.raises(RuntimeError, match=r"never called ctx.on_iter\(2"):
        go(m, IMPConfig(rounds=1, rewind="iter:2"), train_fn=make_train(call_on_iter=False),
           eval_fn=lambda mm, ctx: evals.append(ctx.round) or {})
    assert evals == []  # before evaluating round 0, not after pruning round 1


def test_tied_parameter_under_its_second_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)
            self.again = self.a

        def forward(self, x):
            return self.b(self.again(self.a(x).relu()))

    torch.manual_seed(0)
    m = Tied()
    cfg = IMPConfig(rounds=1)
    res = run_imp(m, ["again.weight", "b.weight"], train_fn=make_train(), eval_fn=eval_fn,
                  config=cfg)
    assert sorted(res.ticket.names()) == ["again.weight", "b.weight"]
    with pytest.raises(ValueError, match="names one parameter twice"):
        run_imp(m, ["a.weight", "again.weight"], train_fn=make_train(), eval_fn=eval_fn,
                config=cfg)


def test_target_is_reached_exactly_after_several_rounds():
    # 400 weights, 5 rounds to 70%: rounding each round's rate pruned 281, not 280
    m = mlp()
    res = go(m, IMPConfig(rounds=5, target=0.7))
    n = res.ticket.numel()
    assert n == 400 and n - res.ticket.kept() == 280
    assert res.rows[-1]["sparsity"] == 0.7


def test_eval_mode_set_by_eval_fn_does_not_leak_into_training(tmp_path):
    # eval_fn leaves the model in eval mode: later rounds trained BatchNorm in eval mode,
    # but a resumed run (fresh model, train mode) did not: different results
    def ev(mm, ctx):
        mm.eval()
        return eval_fn(mm, ctx)

    cfg = IMPConfig(rounds=2, rate=0.3)
    modes = []
    m = mlp(bn=True)
    ref = go(m, cfg, tmp_path / "a", train_fn=make_train(modes=modes), eval_fn=ev)
    assert modes == [(0, True), (1, True), (2, True)]
    ref_state = m.state_dict()
    m = mlp(bn=True)
    with pytest.raises(KeyboardInterrupt):
        go(m, cfg, tmp_path / "b", train_fn=make_train(fail_round=2), eval_fn=ev)
    m = mlp(bn=True)
    res = go(m, cfg, tmp_path / "b", eval_fn=ev, resume=True)
    assert no_times(res.rows) == no_times(ref.rows)
    assert all(torch.equal(v, ref_state[k]) for k, v in m.state_dict().items())


def _kill_when(monkeypatch, target, attr, round_index):
    class Boom(Exception):
        pass
    orig = getattr(target, attr)

    def wrapped(*a, **k):
        if any(f"round_{round_index}" in str(x) for x in a) or k.get("round_index") == round_index \
                or (a and isinstance(a[-1], list) and a[-1] and a[-1][-1].get("round") == round_index):
            raise Boom(attr)
        return orig(*a, **k)
    monkeypatch.setattr(target, attr, wrapped)
    return Boom


@pytest.mark.parametrize("where", ["ticket", "checkpoint", "metrics"])
def test_kill_while_writing_the_last_round_then_resume(tmp_path, monkeypatch, where):
    from lthfast.imp import checkpoint, rundir
    from lthfast.ticket import Ticket
    cfg = IMPConfig(rounds=2, rate=0.3, rewind="iter:1", seed=2)
    m = mlp()
    ref = go(m, cfg, tmp_path / "a")
    target, attr = {"ticket": (Ticket, "save"), "checkpoint": (checkpoint, "save"),
                    "metrics": (rundir.RunDir, "write_metrics")}[where]
    with monkeypatch.context() as mp:
        boom = _kill_when(mp, target, attr, 2)
        with pytest.raises(boom):
            go(mlp(), cfg, tmp_path / "b")
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    # the round whose checkpoint was written (status said 2 after a failed ticket write)
    assert status["state"] == "failed" and status["round"] == (2 if where == "metrics" else 1)
    m = mlp(seed=1)  # the weights come from the checkpoint
    res = go(m, cfg, tmp_path / "b", resume=True)
    assert no_times(res.rows) == no_times(ref.rows)
    # a kill after the last checkpoint left metrics.json without round 2 and the
    # status "failed" for ever: a resume with nothing left to train brings them up to date
    assert [r["round"] for r in json.loads((tmp_path / "b" / "metrics.json").read_text())] == [0, 1, 2]
    assert json.loads((tmp_path / "b" / "status.json").read_text())["state"] == "complete"
    for r in range(3):
        assert ((tmp_path / "a" / f"round_{r}" / "ticket.safetensors").read_bytes()
                == (tmp_path / "b" / f"round_{r}" / "ticket.safetensors").read_bytes())


def test_resume_refuses_other_settings_names_or_model(tmp_path):
    cfg = IMPConfig(rounds=1, rate=0.3)
    m = mlp()
    go(m, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"rate=0.3 \(now 0.5\)"):
        go(mlp(), IMPConfig(rounds=1, rate=0.5), tmp_path, resume=True)
    m = mlp()
    with pytest.raises(ValueError, match="prunes other parameters"):
        run_imp(m, weights(m)[:2], train_fn=make_train(), eval_fn=eval_fn, config=cfg,
                out=str(tmp_path), resume=True)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="model differs"):
        go(other, cfg, tmp_path, resume=True)
    with pytest.raises(ValueError, match="not shrink"):
        go(mlp(), IMPConfig(rounds=0, rate=0.3), tmp_path, resume=True)
    # more rounds grow the run
    assert [r["round"] for r in go(mlp(), IMPConfig(rounds=2, rate=0.3), tmp_path,
                                   resume=True).rows] == [0, 1, 2]


def test_resume_refuses_a_ticket_file_that_is_not_the_checkpoints(tmp_path):
    cfg = IMPConfig(rounds=1, rate=0.3)
    go(mlp(), cfg, tmp_path)
    (tmp_path / "round_1" / "ticket.safetensors").write_bytes(
        (tmp_path / "round_0" / "ticket.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not the ticket its checkpoint"):
        go(mlp(), IMPConfig(rounds=2, rate=0.3), tmp_path, resume=True)


def test_resume_refuses_a_checkpoint_copied_from_another_run(tmp_path):
    """Two runs of the same model and schedule give the same tickets, so the ticket digest
    cannot tell their checkpoints apart: the run id in config.json does."""
    cfg = IMPConfig(rounds=1, rate=0.3)
    go(mlp(), cfg, tmp_path / "a")
    go(mlp(), cfg, tmp_path / "b")
    ids = [json.loads((tmp_path / d / "config.json").read_text())["run_id"] for d in "ab"]
    assert ids[0] != ids[1]
    before = {f: (tmp_path / "b" / f).read_bytes() for f in ("config.json", "metrics.json")}
    (tmp_path / "b" / "checkpoint.pt").write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match="written by another run"):
        go(mlp(), IMPConfig(rounds=2, rate=0.3), tmp_path / "b", resume=True)
    assert {f: (tmp_path / "b" / f).read_bytes() for f in before} == before
    # a run made before run ids (no id in config.json or checkpoint) still resumes
    cfg_json = json.loads(before["config.json"])
    del cfg_json["run_id"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg_json))
    rows = go(mlp(), IMPConfig(rounds=2, rate=0.3), tmp_path / "b", resume=True).rows
    assert [r["round"] for r in rows] == [0, 1, 2]


def test_fresh_run_into_an_existing_run_is_refused(tmp_path):
    # it overwrote the run file by file; killed in round 0, resume=True then went on
    # from the old run's checkpoint under the new config.json
    go(mlp(), IMPConfig(rounds=1), tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        go(mlp(), IMPConfig(rounds=1, rate=0.5), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


DDP_SCRIPT = textwrap.dedent("""
    import datetime, json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    sys.path.insert(0, {tests!r})
    import test_imp_review as t
    from lthfast.imp import IMPConfig, run_imp, ticket_digest

    def main(rank, base, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        for mode in ("ok", "fail"):
            one(rank, f"{{base}}_{{mode}}", mode)
        dist.destroy_process_group()

    def one(rank, out, mode):
        m = t.mlp()
        ev = t.eval_fn
        if mode == "fail":
            def ev(mm, ctx):
                if ctx.round == 1 and rank == 0:
                    raise ValueError("eval broke on rank 0")
                return t.eval_fn(mm, ctx)
        try:
            res = run_imp(m, t.weights(m), train_fn=t.make_train(), eval_fn=ev,
                          config=IMPConfig(rounds=2, rate=0.3), out=out)
            result = {{"digest": ticket_digest(res.ticket), "rounds": len(res.rows)}}
        except Exception as e:
            result = {{"error": f"{{type(e).__name__}}: {{e}}"}}
        with open(f"{{out}}.rank{{rank}}.json", "w") as f:
            json.dump(result, f)

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        torch.multiprocessing.spawn(main, args=(sys.argv[1], port), nprocs=2)
""")


def test_ddp_two_gloo_ranks(tmp_path):
    script = tmp_path / "ddp_imp.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__)))
    base = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), base], capture_output=True,
                          text=True, timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def results(mode):
        return [json.loads(open(f"{base}_{mode}.rank{i}.json").read()) for i in range(2)]

    r0, r1 = results("ok")
    assert r0 == r1 and r0["rounds"] == 3  # same masks on both ranks
    assert [r["round"] for r in json.loads(open(f"{base}_ok/metrics.json").read())] == [0, 1, 2]
    # rank 0's error reaches rank 1, which used to wait in its next collective (here:
    # until the 60 s gloo timeout; by default 30 minutes)
    r0, r1 = results("fail")
    assert r0["error"] == "ValueError: eval broke on rank 0"
    assert r1["error"].startswith("OtherRankFailed: rank 0 failed in round 1"), r1
    status = json.loads(open(f"{base}_fail/status.json").read())
    assert status["state"] == "failed" and status["round"] == 0
