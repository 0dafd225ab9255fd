"""AP by object size, category frequency and difficulty, on a tiny COCO ground truth and
detections whose APs are worked out by hand, through the evaluator's own reduction of
COCOeval (lthfast.detection.evaluate._precision_reductions)."""
from __future__ import annotations

import contextlib
import io
import math

import pytest

pytest.importorskip("pycocotools")

from lthfast.analysis import (ap_by_difficulty, ap_by_frequency, ap_by_size,  # noqa: E402
                              plot_ap_by_category, plot_ap_by_size)
from lthfast.detection.evaluate import _precision_reductions  # noqa: E402

NAMES = {1: "cat_a", 2: "cat_b"}


def _coco_row():
    """One 200x200 image. cat_a: a small (10x10) and a large (100x100) object; only the
    small one is detected. cat_b: one medium (50x50) object, detected, plus a higher
    scored false positive (medium). By hand (101-point interpolated AP, all IoUs):
      cat_a small 100, large 0, medium none (NaN); all sizes: recall 0.5 at precision 1
      -> 51 of 101 recall points -> 100 * 51/101.
      cat_b medium: precision 1/2 at recall 1 -> 50; small / large none (NaN)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = {"images": [{"id": 1, "width": 200, "height": 200}],
          "categories": [{"id": 1, "name": "cat_a"}, {"id": 2, "name": "cat_b"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 90, 100, 100], "area": 10000, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 2, "bbox": [20, 100, 50, 50], "area": 2500, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [20, 100, 50, 50], "score": 0.8},
            {"image_id": 1, "category_id": 2, "bbox": [120, 20, 50, 50], "score": 0.95}]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        E = COCOeval(coco, coco.loadRes(dets), iouType="bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    per_cat, per_cat_area = _precision_reductions(E, NAMES)
    stats = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                     (float(v * 100) if v > -1 else float("nan") for v in E.stats)))
    return {"round": 0, "sparsity": 0.0, **{f"bbox_{k}": v for k, v in stats.items()},
            "per_category": {"bbox": per_cat}, "per_category_area": {"bbox": per_cat_area}}


@pytest.fixture(scope="module")
def row():
    return _coco_row()


def test_per_category_and_area_ap_by_hand(row):
    pca = row["per_category_area"]["bbox"]
    assert pca["cat_a"]["small"] == pytest.approx(100.0)
    assert pca["cat_a"]["large"] == pytest.approx(0.0)
    assert math.isnan(pca["cat_a"]["medium"])
    assert pca["cat_b"]["medium"] == pytest.approx(50.0)
    assert math.isnan(pca["cat_b"]["small"]) and math.isnan(pca["cat_b"]["large"])
    assert row["per_category"]["bbox"]["cat_a"] == pytest.approx(100 * 51 / 101)
    assert row["per_category"]["bbox"]["cat_b"] == pytest.approx(50.0)


def test_ap_by_size(row):
    pruned = dict(row, round=1, sparsity=0.2, bbox_APs=40.0, bbox_APm=30.0, bbox_APl=float("nan"))
    sizes = ap_by_size([row, pruned])
    assert sizes[0]["small"] == pytest.approx(100.0)   # mean over categories with small gt
    assert sizes[0]["medium"] == pytest.approx(50.0)
    assert sizes[0]["large"] == pytest.approx(0.0)
    assert sizes[0]["AP"] == pytest.approx((100 * 51 / 101 + 50) / 2)
    assert sizes[1] == {"round": 1, "sparsity": 0.2, "AP": row["bbox_AP"], "small": 40.0,
                        "medium": 30.0, "large": pytest.approx(float("nan"), nan_ok=True),
                        "iou": "bbox"}
    assert plot_ap_by_size({"run": sizes})


def test_ap_by_size_of_keypoints_has_no_small_range():
    # COCO's keypoint evaluation has the areas all / medium / large only
    rows = [{"round": 0, "sparsity": 0.0, "keypoints_AP": 40.0, "keypoints_APm": 35.0,
             "keypoints_APl": 45.0,
             "per_category_area": {"keypoints": {"person": {"medium": 35.0, "large": 45.0}}}}]
    sizes = ap_by_size(rows)
    assert math.isnan(sizes[0]["small"]) and sizes[0]["medium"] == 35.0 and sizes[0]["iou"] == "keypoints"
    assert plot_ap_by_size({"kp": sizes})


def test_ap_by_frequency_and_difficulty(row):
    pruned = dict(row, round=1, sparsity=0.2,
                  per_category={"bbox": {"cat_a": 10.0, "cat_b": 45.0}})
    freq = ap_by_frequency([row, pruned], {"cat_a": 2, "cat_b": 7})
    assert [d["category"] for d in freq] == ["cat_b", "cat_a"]   # most annotations first
    assert freq[0]["train_annotations"] == 7 and freq[0]["rank"] == 1
    assert freq[0]["AP r0"] == pytest.approx(50.0) and freq[0]["AP r1"] == 45.0
    diff = ap_by_difficulty([row, pruned])
    assert [d["category"] for d in diff] == ["cat_a", "cat_b"]   # dense AP 50.5 > 50
    assert diff[0]["drop"] == pytest.approx(100 * 51 / 101 - 10.0)
    assert plot_ap_by_category(diff, title="t", xlabel="x")
    with pytest.raises(ValueError, match="cat_b"):
        ap_by_frequency([row], {"cat_a": 1})


def test_runs_without_coco_metrics_are_refused():
    with pytest.raises(ValueError, match="need a detection"):
        ap_by_size([{"round": 0, "sparsity": 0.0, "top1": 50.0}])
    with pytest.raises(ValueError, match="per-category"):
        ap_by_difficulty([{"round": 0, "sparsity": 0.0, "bbox_AP": 1.0}])


def test_ap_by_difficulty_of_a_run_started_from_a_ticket(row):
    # round 0 of a --ticket run trains the starting ticket, not the dense model
    start = dict(row, sparsity=0.5)
    pruned = dict(row, round=1, sparsity=0.6,
                  per_category={"bbox": {"cat_a": 10.0, "cat_b": 45.0}})
    diff = ap_by_difficulty([start, pruned])
    assert "dense_AP" not in diff[0] and diff[0]["start_AP"] == pytest.approx(100 * 51 / 101)
    assert diff[0]["drop"] == pytest.approx(100 * 51 / 101 - 10.0)
    assert "dense_AP" in ap_by_difficulty([row, pruned])[0]
