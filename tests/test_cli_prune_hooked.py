"""`lthfast prune` on pickled modules that carry earlier pruning hooks or tied weights:
--amount is a fraction of all the weights, and a shared weight is pruned and counted once."""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune

from lthfast import _ops
from lthfast.cli import main


@pytest.fixture(autouse=True)
def _kernels_or_reference(monkeypatch):
    if not _ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 10))


def test_earlier_hooks_are_made_permanent_first(tmp_path, capsys):
    model = _net()
    params = [(model[0], "weight"), (model[3], "weight")]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.5)
    torch_prune.l1_unstructured(model[3], "bias", amount=0.5)
    ckpt, out = tmp_path / "hooked.pt", tmp_path / "out.pth"
    torch.save(model, ckpt)
    assert main(["prune", str(ckpt), "--trust-pickle", "--amount", "0.75", "--no-table",
                 "--save", str(out)]) == 0
    captured = capsys.readouterr()
    # 75% of all the weights, not 75% of the remaining half (87.5%)
    assert "overall sparsity: 75.00%" in captured.out
    assert "pruning hooks on 3 tensors" in captured.err
    state = torch.load(out, weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "3.bias", "3.weight"]  # plain keys
    fresh = _net()
    fresh.load_state_dict(state)
    # the earlier pruning stays: what was pruned before is pruned now
    old = model[0].weight_mask == 0
    assert bool((fresh[0].weight[old] == 0).all())


def test_tied_weight_is_pruned_and_counted_once(tmp_path, capsys):
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.weight = a.weight
    ckpt = tmp_path / "tied.pt"
    torch.save(torch.nn.Sequential(a, torch.nn.ReLU(), b), ckpt)
    assert main(["prune", str(ckpt), "--trust-pickle", "--amount", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "overall sparsity: 50.00%" in captured.out
    assert "(32 pruned, 32 kept)" in captured.out
    assert "2 shares its weight with 0" in captured.err


def test_untrusted_pickle_error_names_the_refused_global(tmp_path, capsys):
    ckpt = tmp_path / "full.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), ckpt)
    assert main(["prune", str(ckpt), "--amount", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "\x1b[" not in err  # torch's message carries ANSI bold
    assert "Unsupported global" in err and "Sequential" in err and "--trust-pickle" in err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    assert main(["prune", str(junk), "--amount", "0.5"]) == 1
    assert "weights-only load failed: Unsupported operand" in capsys.readouterr().err


def test_float16_amount_does_not_overflow():
    np = pytest.importorskip("numpy")
    import lthfast
    import lthfast.prune as prune
    w = torch.randn(100_000)
    assert int((~lthfast.global_magnitude_masks([w], np.float16(0.5))[0]).sum()) == 50_000
    layer = torch.nn.Linear(1000, 100)
    prune.l1_unstructured(layer, "weight", amount=np.float16(0.25))
    assert int((layer.weight_mask == 0).sum()) == 25_000
    # the product stays in the amount's own type where it fits, as in torch
    assert int((~lthfast.global_magnitude_masks([torch.randn(5)], np.float32(0.7))[0]).sum()) == 4
