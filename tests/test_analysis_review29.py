"""Stop 29's review of the analyses: a MobileNet classifier ticket against a detector's,
the report's layer-wise section on a run caught between its writes."""
from __future__ import annotations

import os

import torch

from _analysis_fixtures import mask, three_round_tickets, write_run
from lthfast.analysis import mask_overlap
from lthfast.cli import main
from lthfast.ticket import Ticket


def test_mobilenet_classifier_ticket_meets_the_detector_body():
    # torchvision's MobileNet classifier body is features.*; the detector's body is that
    # Sequential itself (backbone.body.0.0.weight), as --ticket transfer maps it
    cls = Ticket({"features.0.0.weight": mask([1, 1, 0, 0]), "classifier.0.weight": mask([1, 0])})
    det = Ticket({"backbone.body.0.0.weight": mask([1, 0, 0, 0]),
                  "rpn.head.conv.weight": mask([1, 1])})
    res = mask_overlap(cls, det, shared_only=True)
    assert [d["name"] for d in res["layers"]] == ["backbone.body.0.0.weight"]
    assert res["overall"] == 0.5


def test_report_skips_layerwise_when_the_checkpoint_is_a_round_ahead(tmp_path):
    run = write_run(tmp_path / "r", three_round_tickets(),
                    [{"round": r, "sparsity": s} for r, s in enumerate((0.0, 0.5))],
                    state="running")
    torch.save({"round": 2, "model": {"w": torch.arange(8.0)}}, os.path.join(run, "checkpoint.pt"))
    out = tmp_path / "page.html"
    assert main(["report", run, "--out", str(out)]) == 0
    assert "holds round 2&#x27;s weights but metrics.json ends at round 1" in out.read_text() or \
        "holds round 2's weights but metrics.json ends at round 1" in out.read_text()

