"""Stop 30's review of lthfast.detection: torchvision's `weights_backbone` name, checkpoints
of torchvision's reference scripts (an argparse.Namespace beside "model"), a state_dict
given in memory unwrapped as a file is, and every part of a scope union must select."""
from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("torchvision")

from lthfast import detection as det  # noqa: E402


@pytest.fixture(scope="module")
def small_sd():
    return det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5,
                           verbose=False).state_dict()


def test_weights_backbone_is_taken_as_backbone_weights():
    from torchvision.models import resnet18
    sd = resnet18().state_dict()
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5,
                        weights_backbone=sd, verbose=False)
    assert torch.equal(m.backbone.body.conv1.weight, sd["conv1.weight"])
    assert m.lthfast_weights_report  # loaded, and said so
    with pytest.raises(ValueError, match="both given"):
        det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5,
                        weights_backbone=sd, backbone_weights=resnet18().state_dict())


def test_reference_script_checkpoint_loads(tmp_path, small_sd):
    path = tmp_path / "ref.pth"
    torch.save({"model": small_sd, "optimizer": {}, "epoch": 3,
                "args": argparse.Namespace(lr=0.02)}, path)
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5,
                        weights=str(path), verbose=False)
    k = "backbone.body.layer1.0.conv1.weight"
    assert torch.equal(m.state_dict()[k], small_sd[k])


@pytest.mark.parametrize("wrap", [lambda sd: {"model": sd},
                                  lambda sd: {"module." + k: v for k, v in sd.items()}])
def test_a_state_dict_in_memory_is_unwrapped_as_a_file_is(small_sd, wrap):
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5,
                        weights=wrap(small_sd), verbose=False)
    k = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(m.state_dict()[k], small_sd[k])


def test_every_part_of_a_scope_union_must_select_something():
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, verbose=False)
    with pytest.raises(ValueError, match=r"'head' selects no conv/linear layer.*scopes it has"):
        det.prunable_names(m, "fpn+head")
    assert len(det.prunable_names(m, "fpn+rpn")) == (len(det.prunable_names(m, "fpn"))
                                                     + len(det.prunable_names(m, "rpn")))


def test_a_detector_ticket_without_backbone_layers_transfers_as_shared_layers():
    # a --scope roi_heads ticket was taken for a classifier's (no backbone.* name)
    from lthfast.ticket import Ticket
    from lthfast.transfer import detect_kind, transfer_ticket
    src = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, verbose=False)
    t = Ticket.from_model(src, 0.5, scope=det.prunable_names(src, "roi_heads"))
    dst = det.build_model("maskrcnn_resnet18_fpn", task="segmentation", num_classes=3,
                          verbose=False)
    assert detect_kind(t, dst) == "shared layers"
    out = transfer_ticket(t, dst)
    name = "roi_heads.box_head.fc6.weight"
    assert torch.equal(out.ticket[name], t[name])


def test_transfer_backbone_sparsity_is_the_body_not_the_fpn():
    from lthfast.ticket import Ticket
    from lthfast.transfer import network_sparsity
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, verbose=False)
    fpn_only = Ticket.from_model(m, 0.5, scope=det.prunable_names(m, "fpn"))
    assert network_sparsity(fpn_only, m)["backbone"] == 0.0
    body = Ticket.from_model(m, 0.5, scope=det.prunable_names(m, "backbone"))
    assert 0.4 < network_sparsity(body, m)["backbone"] < 0.5  # (norms and biases are dense)


def test_compare_keeps_a_classifier_head_name():
    import torchvision

    from lthfast.analysis.overlap import _map_backbone
    from lthfast.ticket import Ticket
    cls = Ticket.from_model(torchvision.models.resnet18(num_classes=4), 0.5)
    m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, verbose=False)
    dtk = Ticket.from_model(m, 0.5, scope=det.prunable_names(m, "backbone"))
    a, _, mapped = _map_backbone(cls, dtk)
    assert mapped and "fc.weight" in a.names() and "backbone.body.layer1.0.conv1.weight" in a.names()
