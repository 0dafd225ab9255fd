"""path="tuned": the first inference call of a configuration times both paths and
keeps the faster; later calls (any layer of that configuration) follow the choice
without timing again; training calls and torch.compile run dense."""
import pytest
import torch

import lthfast
from lthfast.ops import _tune, _weight_cache, clear_tuned, masked_conv2d, masked_linear, tuned_paths

from _masked_conv_cases import CONV_CASES, assert_conv_close, assert_linear_close, conv_problem

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


@pytest.fixture(autouse=True)
def fresh_choices():
    clear_tuned()
    yield
    clear_tuned()


def _fake_timer(monkeypatch, dense_s, sparse_s):
    """Each timed call reports dense_s or sparse_s (which path ran is seen through
    the order tune() runs them in: it alternates and records by name)."""
    calls = []
    real_tune = _tune.tune

    def tune(k, device, dense, sparse):
        def timed_dense():
            calls.append("dense")
            return dense()

        def timed_sparse():
            calls.append("sparse")
            return sparse()

        def fake_timed(fn, device):
            out = fn()
            return (dense_s if calls[-1] == "dense" else sparse_s), out

        monkeypatch.setattr(_tune, "_timed", fake_timed)
        return real_tune(k, device, timed_dense, timed_sparse)

    monkeypatch.setattr(_tune, "tune", tune)
    return calls


@pytest.mark.parametrize("winner", ["dense", "sparse"])
def test_conv_keeps_the_faster_path_and_times_once(monkeypatch, winner):
    calls = _fake_timer(monkeypatch, dense_s=1.0 if winner == "sparse" else 0.5,
                        sparse_s=0.5 if winner == "sparse" else 1.0)
    x, w, m, b, conf = conv_problem(CONV_CASES[1], sparsity=0.9, seed=1)
    with torch.no_grad():
        out = masked_conv2d(x, w, m, b, **conf, path="tuned")
    assert_conv_close(out, x, w, m, b, conf)
    assert calls.count("dense") >= _tune.MIN_ROUNDS + 1 and calls.count("sparse") >= _tune.MIN_ROUNDS + 1
    (key, choice), = tuned_paths().items()
    assert choice.path == winner
    assert key[0] == "conv2d" and abs(key[-1] - 0.9) < 0.03 and key[-2] == torch.get_num_threads()
    e = _weight_cache._CACHE[id(w)]
    assert e.last["tuned"][2] is (winner == "sparse")
    # the path not chosen let go of its cached weight
    assert (e.dense is None) == (winner == "sparse") and (e.packed is None) == (winner == "dense")
    n = len(calls)
    w2 = w.clone()  # another layer of the same configuration: no timing
    with torch.no_grad():
        for weight in (w, w2):
            assert_conv_close(masked_conv2d(x, weight, m, b, **conf, path="tuned"), x, weight, m, b, conf)
    assert len(calls) == n
    assert _weight_cache._CACHE[id(w2)].last["tuned"][2] is (winner == "sparse")


@pytest.mark.parametrize("winner", ["dense", "sparse"])
def test_linear_keeps_the_faster_path(monkeypatch, winner):
    calls = _fake_timer(monkeypatch, dense_s=1.0 if winner == "sparse" else 0.5,
                        sparse_s=0.5 if winner == "sparse" else 1.0)
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 40, generator=gen), torch.randn(30, 40, generator=gen)
    m, b = torch.rand(w.shape, generator=gen) > 0.8, torch.randn(30, generator=gen)
    with torch.no_grad():
        for _ in range(3):
            assert_linear_close(masked_linear(x, w, m, b, path="tuned"), x, w, m, b)
    (key, choice), = tuned_paths().items()
    assert key[0] == "linear" and choice.path == winner
    assert _weight_cache._CACHE[id(w)].last["tuned"][2] is (winner == "sparse")
    assert calls  # timed once, then followed


def test_configurations_are_told_apart():
    """Input shape, sparsity (to 0.01), bias and geometry each make their own choice;
    a sparsity within 0.005 shares one."""
    x, w, m, b, conf = conv_problem(CONV_CASES[0], sparsity=0.5, seed=2)
    with torch.no_grad():
        masked_conv2d(x, w, m, b, **conf, path="tuned")
        masked_conv2d(x[:1], w, m, b, **conf, path="tuned")          # another batch
        masked_conv2d(x, w, m, None, **conf, path="tuned")           # no bias
        masked_conv2d(x, w, torch.zeros_like(m), b, **conf, path="tuned")  # sparsity 1.0
        masked_conv2d(x, w, m, b, **dict(conf, padding=(0, 0)), path="tuned")
    assert len(tuned_paths()) == 5
    assert all(c.dense_s > 0 and c.sparse_s > 0 and c.path in ("dense", "sparse")
               for c in tuned_paths().values())
    clear_tuned()
    assert tuned_paths() == {}


def test_training_calls_run_dense_without_timing():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=4)
    wg = w.clone().requires_grad_()
    out = masked_conv2d(x, wg, m, b, **conf, path="tuned")
    out.sum().backward()
    assert bool((wg.grad[~m] == 0).all())
    assert_conv_close(out.detach(), x, w, m, b, conf)
    assert tuned_paths() == {}


def test_autocast_tunes_in_its_dtype_and_compile_runs_dense():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_conv2d(x, w, m, b, **conf, path="tuned")
    assert out.dtype == torch.bfloat16
    assert all(k[2] == torch.bfloat16 for k in tuned_paths())  # tuned in autocast's dtype
    compiled = torch.compile(lambda x: masked_conv2d(x, w, m, b, **conf, path="tuned"), fullgraph=True)
    clear_tuned()
    with torch.no_grad():
        assert_conv_close(compiled(x), x, w, m, b, conf)
    assert tuned_paths() == {}


def test_modules_and_sparsify_take_tuned():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5)).eval()
    masks = dict(zip(["0.weight", "3.weight"],
                     lthfast.global_magnitude_masks([model[0].weight, model[3].weight], 0.9)))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
        expected = model(x)
        sparse_model = lthfast.nn.sparsify(model, masks, path="tuned")
        assert "path='tuned'" in repr(sparse_model[0])
        torch.testing.assert_close(sparse_model(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse_model(x), expected, rtol=1e-5, atol=1e-5)
    assert {k[0] for k in tuned_paths()} == {"conv2d", "linear"}


def test_bad_path_lists_tuned():
    x, w, m, b, conf = conv_problem(CONV_CASES[0], seed=6)
    with pytest.raises(ValueError, match="tuned"):
        masked_conv2d(x, w, m, b, **conf, path="benchmark")
    with pytest.raises(ValueError, match="tuned"):
        lthfast.nn.MaskedLinear(3, 4, path="fastest")


def test_real_timing_picks_a_path_that_gives_the_right_answer():
    """No fake clock: whatever the machine measures, the output is right."""
    x, w, m, b, conf = conv_problem(CONV_CASES[6], sparsity=0.95, seed=7)
    with torch.no_grad():
        for _ in range(2):
            assert_conv_close(masked_conv2d(x, w, m, b, **conf, path="tuned"), x, w, m, b, conf)
    (choice,) = tuned_paths().values()
    assert choice.path == ("sparse" if choice.sparse_s < choice.dense_s else "dense")
