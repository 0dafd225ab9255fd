import math
import pickle

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from tests._detection_fixtures import tiny_root  # noqa: E402,F401

pytestmark = [pytestmark, pytest.mark.usefixtures("one_thread")]
from lthfast.detection import (DEFAULT_MODELS, batch_indices, build_model_for, evaluate,  # noqa: E402
                               load_dataset, lr_factor, make_scheduler, make_sgd, metric_names, train)


def _data(root, task, split="train", drop_empty=None):
    return load_dataset(f"coco:{root}", split, task=task, drop_empty=drop_empty)


def _model(task, ds, seed=0):
    torch.manual_seed(seed)
    return build_model_for(DEFAULT_MODELS[task], ds, image_size=64, verbose=False)


def test_train_is_deterministic_and_calls_back(tiny_root):
    ds = _data(tiny_root, "detection")
    runs = []
    for _ in range(2):
        steps = []
        model = _model("detection", ds)
        r = train(model, ds, iters=2, batch_size=2, lr=0.01, warmup_iters=1, seed=5, progress=False,
                  on_iter=lambda step, m: steps.append(step))
        assert steps == [1, 2] and r["iters"] == 2 and len(r["losses"]) == 2
        assert all(math.isfinite(v) for v in r["losses"]) and r["time_s"] > 0
        assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(r["loss_components"])
        runs.append((r["losses"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    # continuing from iteration 2 with the returned optimizer/scheduler
    r2 = train(model, ds, iters=3, start_iter=2, batch_size=2, lr=0.01, warmup_iters=1, seed=5,
               progress=True, optimizer=r["optimizer"], scheduler=r["scheduler"])
    assert r2["iters"] == 1 and r["scheduler"].last_epoch == 3


@pytest.mark.parametrize("task", ["segmentation", "keypoints"])
def test_train_and_evaluate_other_tasks(tiny_root, task):
    ds = _data(tiny_root, task)
    model = _model(task, ds)
    r = train(model, ds, iters=1, batch_size=2, lr=0.005, warmup_iters=0, progress=False)
    assert math.isfinite(r["final_loss"]) and r["mean_loss"] == r["final_loss"]  # (one iteration)
    key = "loss_mask" if task == "segmentation" else "loss_keypoint"
    assert key in r["loss_components"]
    model.roi_heads.score_thresh = 0.0  # an untrained model must still produce output to convert
    m = evaluate(model, _data(tiny_root, task, "val"), task=task, batch_size=2)
    assert set(metric_names(task)) <= set(m) and m["eval_time_s"] > 0
    assert model.training  # evaluate restores the mode


def test_train_argument_errors(tiny_root):
    ds = _data(tiny_root, "detection")
    model = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        train(model, ds, iters=1, batch_size=1, lr=0.1, amp=True, device="cpu")
    with pytest.raises(ValueError, match="start_iter"):
        train(model, ds, iters=1, start_iter=2, batch_size=1, lr=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        train(model, ds, iters=1, batch_size=0, lr=0.1)


def test_loss_nan_is_an_error(tiny_root):
    ds = _data(tiny_root, "detection")

    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, images, targets):
            return {"loss": self.w * float("nan")}
    with pytest.raises(FloatingPointError, match="iteration 0"):
        train(Nan(), ds, iters=1, batch_size=1, lr=0.1, progress=False)


def test_schedule_and_batches():
    assert lr_factor(0, warmup_iters=10) == pytest.approx(0.001)
    assert lr_factor(10, warmup_iters=10, lr_steps=(20, 30)) == 1.0
    assert lr_factor(25, warmup_iters=10, lr_steps=(20, 30)) == pytest.approx(0.1)
    assert lr_factor(30, warmup_iters=10, lr_steps=(20, 30)) == pytest.approx(0.01)
    opt = make_sgd(nn.Linear(2, 2), lr=0.5)
    sch = make_scheduler(opt, warmup_iters=10, lr_steps=(20,), start_iter=25)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    pickle.loads(pickle.dumps(sch.state_dict()))  # checkpointable
    # every index once per epoch, and the same batches whatever the start
    seen = sum((batch_indices(10, 3, it, seed=1) for it in range(10)), [])
    assert sorted(seen[:9]) == sorted(set(seen[:9])) and sorted(seen[:10]) == list(range(10))
    assert batch_indices(10, 3, 4, seed=1) == batch_indices(10, 3, 4, seed=1)
    assert batch_indices(10, 3, 4, seed=1) != batch_indices(10, 3, 4, seed=2)


class GroundTruth(nn.Module):
    """Predicts the ground truth of the dataset (in dataset order) with score 1."""

    def __init__(self, ds, empty=False):
        super().__init__()
        self.targets = [ds[i][1] for i in range(len(ds))]
        self.empty, self.pos = empty, 0

    def forward(self, images):
        out = []
        for im in images:
            t = self.targets[self.pos]
            self.pos += 1
            keep = slice(0, 0) if self.empty else slice(None)
            o = {"boxes": t["boxes"][keep], "labels": t["labels"][keep],
                 "scores": torch.ones(len(t["boxes"]))[keep]}
            if "masks" in t:
                o["masks"] = t["masks"][keep, None].float()
            if "keypoints" in t:
                o["keypoints"] = t["keypoints"][keep]
            out.append(o)
        return out


@pytest.mark.parametrize("task", ["detection", "segmentation", "keypoints"])
def test_evaluate_perfect_and_empty_predictions(tiny_root, task):
    ds = _data(tiny_root, task, "train", drop_empty=False)
    m = evaluate(GroundTruth(ds), ds, task=task, batch_size=3)
    for key in metric_names(task):
        assert math.isnan(m[key]) or m[key] == pytest.approx(100.0), (key, m[key])
    for iou in ("bbox", "segm", "keypoints"):
        if f"{iou}_AP" in m:
            assert m[f"{iou}_AP"] == pytest.approx(100.0) and m[f"{iou}_AP50"] == pytest.approx(100.0)
            present = {n for n, c in ds.category_counts().items() if c}
            assert {k for k, v in m["per_category"][iou].items() if v == pytest.approx(100)} == present
            assert set(m["per_category_area"][iou]) == set(m["per_category"][iou])
    empty = evaluate(GroundTruth(ds, empty=True), ds, task=task, batch_size=3)
    assert empty["num_detections"] == 0
    # 0 where there is ground truth, NaN where there is none (APl at 64 px), as with detections
    assert all(empty[k] == 0.0 if not math.isnan(m[k]) else math.isnan(empty[k]) for k in metric_names(task))


def test_ranks_split_the_global_batch(tiny_root):
    ds = _data(tiny_root, "detection")
    seen = {}

    class Record(nn.Module):
        def __init__(self, rank):
            super().__init__()
            self.w, self.rank = nn.Parameter(torch.ones(())), rank

        def forward(self, images, targets):
            seen.setdefault(self.rank, []).append([t["image_id"] for t in targets])
            return {"loss": self.w * 0}
    for rank in (0, 1):
        train(Record(rank), ds, iters=2, batch_size=2, lr=0.1, rank=rank, world_size=2, progress=False)
    ids = [ds.ids[i] for it in range(2) for i in batch_indices(len(ds), 4, it, seed=0)]
    assert seen[0][0] + seen[1][0] + seen[0][1] + seen[1][1] == ids
    with pytest.raises(ValueError, match="rank"):
        train(Record(0), ds, iters=1, batch_size=1, lr=0.1, rank=2, world_size=2)


def test_iter_batches_matches_batch_indices():
    from lthfast.detection.train import iter_batches
    assert list(iter_batches(7, 3, 2, 9, seed=4)) == [batch_indices(7, 3, it, seed=4) for it in range(2, 9)]


def test_dataloader_workers_give_the_same_batches(tiny_root):
    ds = _data(tiny_root, "detection")
    seen = {}

    class Record(nn.Module):
        def __init__(self, key):
            super().__init__()
            self.w, self.key = nn.Parameter(torch.ones(())), key

        def forward(self, images, targets):
            seen.setdefault(self.key, []).append([t["image_id"] for t in targets])
            return {"loss": self.w * 0}
    for workers in (0, 1):
        train(Record(workers), ds, iters=3, batch_size=2, lr=0.1, num_workers=workers, progress=False)
    assert seen[0] == seen[1] and len(seen[0]) == 3
