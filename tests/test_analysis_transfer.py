"""lthfast.transfer: classifier tickets onto a detector's backbone (names mapped,
shapes checked, unmapped layers reported) and cross-task transfer of shared layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lthfast.ticket import Ticket
from lthfast.transfer import classifier_name_to_backbone, network_sparsity, transfer_ticket


class _Body(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, bias=False)
        self.layer1 = nn.Sequential(nn.Conv2d(c, c, 3, bias=False))


class _Backbone(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.body = _Body(c)
        self.fpn = nn.Conv2d(c, 2, 1)


class _Detector(nn.Module):
    def __init__(self, c=4, classes=3, head="mask_head"):
        super().__init__()
        self.backbone = _Backbone(c)
        self.box_predictor = nn.Linear(8, classes)
        self.add_module(head, nn.Linear(8, 5))


def _classifier_ticket(c=4):
    g = torch.Generator().manual_seed(0)
    return Ticket({"conv1.weight": torch.rand(c, 3, 3, 3, generator=g) < 0.3,
                   "layer1.0.weight": torch.rand(c, c, 3, 3, generator=g) < 0.3,
                   "fc.weight": torch.rand(10, c, generator=g) < 0.3})


def test_name_mapping():
    assert classifier_name_to_backbone("layer1.0.conv1.weight") == "backbone.body.layer1.0.conv1.weight"
    assert classifier_name_to_backbone("module.conv1.weight") == "backbone.body.conv1.weight"


def test_classifier_ticket_onto_backbone():
    model, src = _Detector(), _classifier_ticket()
    t = transfer_ticket(src, model, names=["backbone.fpn.weight", "box_predictor.weight"])
    assert t.kind == "classifier->backbone"
    assert t.mapping == {"conv1.weight": "backbone.body.conv1.weight",
                         "layer1.0.weight": "backbone.body.layer1.0.weight"}
    assert t.unmapped_source == ["fc.weight"]
    assert t.uncovered_target == ["backbone.fpn.weight", "box_predictor.weight"]
    assert t.ticket.names() == ["backbone.body.conv1.weight", "backbone.body.layer1.0.weight",
                                "backbone.fpn.weight", "box_predictor.weight"]  # model order
    assert torch.equal(t.ticket["backbone.body.conv1.weight"], src["conv1.weight"])
    assert t.ticket["backbone.fpn.weight"].all()
    pruned = sum(src.numel(n) - src.kept(n) for n in ("conv1.weight", "layer1.0.weight"))
    # the body's parameters (stop 30: the FPN counted in, unlike the backbone scope's column)
    bb_total = sum(p.numel() for n, p in model.named_parameters()
                   if n.startswith("backbone.body."))
    all_total = sum(p.numel() for p in model.parameters())
    assert t.sparsity["backbone"] == pytest.approx(pruned / bb_total)
    assert t.sparsity["network"] == pytest.approx(pruned / all_total)
    assert network_sparsity(t.ticket, model, transferred=t.mapping.values()) == t.sparsity
    # "transferred": the mapped layers only (the target's own layers start dense)
    assert t.sparsity["transferred"] == pytest.approx(pruned / sum(
        src.numel(n) for n in ("conv1.weight", "layer1.0.weight")))
    text = t.summary()
    assert "fc.weight" in text and "whole network" in text and "backbone" in text
    t.ticket.apply(model)  # it fits the model


def test_classifier_ticket_of_another_architecture_lists_the_mismatches():
    with pytest.raises(ValueError, match=r"shape mismatch in 2 layers.*conv1\.weight.*\(8, 3, 3, 3\)"):
        transfer_ticket(_classifier_ticket(c=8), _Detector(c=4))
    with pytest.raises(ValueError, match="no layer of the ticket matches"):
        transfer_ticket(Ticket({"foo.weight": torch.ones(3, dtype=torch.bool)}), _Detector())
    with pytest.raises(ValueError, match="not in the target model"):
        transfer_ticket(_classifier_ticket(), _Detector(), names=["nope.weight"])


def test_cross_task_transfer_keeps_shared_layers_only():
    det, seg = _Detector(classes=3, head="box_head2"), _Detector(classes=5, head="mask_head")
    src = Ticket({n: torch.rand(p.shape) < 0.5 for n, p in det.named_parameters()
                  if n.endswith("weight")})
    t = transfer_ticket(src, seg)
    assert t.kind == "shared layers"
    assert set(t.mapping) == {"backbone.body.conv1.weight", "backbone.body.layer1.0.weight",
                              "backbone.fpn.weight"}
    assert t.unmapped_source == ["box_head2.weight"]
    assert len(t.shape_mismatch) == 1 and "box_predictor.weight" in t.shape_mismatch[0]
    assert "shape differs" in t.summary()


def test_resnet18_ticket_onto_the_torchvision_detector():
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18
    from lthfast.detection.models import build_model
    cls = resnet18(num_classes=10)
    src = Ticket.from_model(cls, 0.5)
    det = build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, image_size=64)
    t = transfer_ticket(src, det)
    assert len(t.mapping) == len(src) - 1 and t.unmapped_source == ["fc.weight"]
    assert all(v.startswith("backbone.body.") for v in t.mapping.values())
    assert 0 < t.sparsity["network"] < t.sparsity["backbone"] < t.sparsity["transferred"]


def test_transfer_for_job_says_when_the_pruned_set_grows():
    from lthfast.transfer import transfer_for_job
    import tempfile, os
    model, src = _Detector(), _classifier_ticket()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        src.save(path)
        names, ticket, meta, describe = transfer_for_job(path, model, ["backbone.fpn.weight"], "hdr")
    assert len(names) > 1 and ticket is not None and meta["ticket_source"] == path
    assert f"pruned set: {len(names)} weight tensors, not the scope's 1" in describe
