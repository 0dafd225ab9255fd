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
