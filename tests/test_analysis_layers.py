"""Per-layer sparsity / fully pruned kernels and channels, and layer-wise vs global
pruning at the same sparsity, on hand-made masks and weights."""
from __future__ import annotations

import pytest
import torch

from lthfast.analysis import layer_stats, layerwise_vs_global, masks_at
from lthfast.analysis.layers import summary
from lthfast.analysis.layerwise import compare_tickets
from lthfast.ticket import Ticket


def test_zero_kernels_and_channels():
    conv = torch.ones(3, 2, 2, 2, dtype=torch.bool)
    conv[0] = False             # output channel 0: both of its kernels pruned
    conv[1, 0] = False          # one more kernel pruned (channel 1 keeps kernel (1, 1))
    conv[2, 1, 0, 0] = False    # a single weight: no kernel pruned
    lin = torch.tensor([[0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    stats = {d["name"]: d for d in layer_stats(Ticket({"conv": conv, "lin": lin}))}
    assert stats["conv"]["zero_kernels"] == 3
    assert stats["conv"]["zero_channels"] == 1
    assert stats["conv"]["out_channels"] == 3
    assert stats["conv"]["sparsity"] == pytest.approx(13 / 24)
    assert stats["lin"]["zero_channels"] == 1 and stats["lin"]["zero_kernels"] == 0
    s = summary(list(stats.values()))
    assert s["zero_kernels"] == 3 and s["zero_channels"] == 2 and s["params"] == 30
    assert s["fully_pruned_layers"] == 0


def test_layerwise_vs_global_known_answer():
    # "big" holds the 4 largest weights, so global pruning of 50% removes all of "small"
    weights = {"big": torch.tensor([10.0, 11.0, 12.0, 13.0]),
               "small": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    g, lw = masks_at(weights, 0.5, ["big", "small"])
    assert g["small"].sum() == 0 and g["big"].all()
    assert lw["small"].tolist() == [False, False, True, True]
    assert lw["big"].tolist() == [False, False, True, True]
    res = layerwise_vs_global(weights, 0.5, ["big", "small"])
    by = {d["name"]: d for d in res["layers"]}
    assert by["small"]["sparsity_global"] == 1.0 and by["small"]["sparsity_layerwise"] == 0.5
    assert by["small"]["iou"] == 0.0          # global keeps nothing there, layer-wise 2
    assert by["big"]["iou"] == 0.5            # {2, 3} / {0, 1, 2, 3}
    assert res["iou"] == pytest.approx(2 / 6)
    assert res["global_sparsity"] == res["layerwise_sparsity"] == 0.5


def test_layerwise_vs_global_on_a_module_and_two_tickets():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    res = layerwise_vs_global(net, 0.3, ["0.weight", "1.weight"])
    assert len(res["layers"]) == 2 and 0 <= res["iou"] <= 1
    g, lw = masks_at(net, 0.3, ["0.weight", "1.weight"])
    assert compare_tickets(g, lw)["iou"] == pytest.approx(res["iou"])
    with pytest.raises(ValueError, match="not found"):
        masks_at(net, 0.3, ["nope.weight"])
    with pytest.raises(ValueError, match="sparsity"):
        masks_at(net, 1.5)
