"""Review regressions for lthfast.detection / lthfast.transfer: a hand-made real-COCO-layout
folder with edge cases (crowd RLE, uncompressed RLE, empty image, COCO-style id gaps, a
category without annotations, grey / RGBA / palette images, border and zero-area boxes),
evaluation equal to a direct pycocotools run, NaN-consistent metrics with no detections,
MobileNet classifier tickets onto MobileNet detectors, torchvision's freezing rules."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]

from lthfast import detection as det  # noqa: E402
from lthfast.detection.evaluate import _STAT_NAMES  # noqa: E402


def _make_coco(root):
    """COCO layout (train2017 = val2017) with edge cases; category ids 1, 3, 17, 90 (no anns)."""
    from PIL import Image
    from pycocotools import mask as mask_api
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for iid, w, h, mode, ext in [(1, 64, 48, "RGB", "png"), (2, 50, 60, "L", "png"), (5, 64, 64, "RGBA", "png"),
                                 (9, 40, 40, "RGB", "jpg"), (12, 64, 64, "P", "png")]:
        im = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode)
        name = f"{iid:012d}.{ext}"
        for split in ("train2017", "val2017"):
            (root / split).mkdir(exist_ok=True)
            im.save(root / split / name)
        images.append({"id": iid, "file_name": name, "width": w, "height": h})
    cats = [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"], "skeleton": []},
            {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}, {"id": 90, "name": "toothbrush"}]

    def box(aid, iid, cat, x, y, w, h, **kw):
        return {"id": aid, "image_id": iid, "category_id": cat, "iscrowd": 0, "bbox": [x, y, w, h],
                "area": float(w * h), "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], **kw}
    crowd = np.zeros((48, 64), np.uint8, order="F")
    crowd[20:40, :15] = 1
    rle = mask_api.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    m = np.zeros((60, 50), np.uint8)
    m[5:25, 5:45] = 1
    flat, counts, cur, run = m.flatten(order="F"), [], 0, 0
    for v in flat:  # uncompressed RLE with iscrowd 0
        if v == cur:
            run += 1
        else:
            counts, run, cur = counts + [run], 1, v
    counts.append(run)
    anns = [box(1, 1, 1, 2, 3, 20, 30, keypoints=[5, 5, 2, 10, 10, 1, 0, 0, 0], num_keypoints=2),
            box(2, 1, 3, 30, 10, 34, 38),  # touches the right and bottom border
            box(3, 1, 17, 40, 0, 0, 10),  # zero-area box
            {"id": 4, "image_id": 1, "category_id": 1, "segmentation": rle, "area": float(crowd.sum()),
             "bbox": [0, 20, 15, 20], "iscrowd": 1, "num_keypoints": 0, "keypoints": [0] * 9},
            {"id": 5, "image_id": 2, "category_id": 17, "segmentation": {"size": [60, 50], "counts": counts},
             "area": float(m.sum()), "bbox": [5, 5, 40, 20], "iscrowd": 0},
            box(6, 5, 1, 0, 0, 64, 64, keypoints=[1, 1, 2, 30, 30, 2, 60, 60, 2], num_keypoints=3),
            box(7, 12, 3, 10, 10, 8, 8)]  # image 9 has no annotation
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": [a for a in anns if a["category_id"] == 1],
             "categories": cats[:1]}))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return _make_coco(tmp_path_factory.mktemp("coco") / "coco")


class _Replay(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.i = outputs, 0

    def forward(self, images):
        out = self.outputs[self.i:self.i + len(images)]
        self.i += len(images)
        return out


def _noisy_outputs(ds, task, empty=False):
    """Ground truth with jitter plus two false positives per image (or nothing at all)."""
    outs = []
    for i in range(len(ds)):
        im, t = ds[i]
        h, w = im.shape[-2:]
        g = torch.Generator().manual_seed(int(t["image_id"]))
        n = 0 if empty else len(t["boxes"])
        fp = 0 if empty else 2
        boxes = torch.cat([t["boxes"][:n] + torch.randn(n, 4, generator=g) * 2,
                           torch.tensor([[1., 1., 20., 20.], [5., 5., 30., 40.]])[:fp]])
        labels = torch.cat([t["labels"][:n], torch.tensor([3, 1])[:fp]])
        o = {"boxes": boxes, "labels": labels, "scores": torch.rand(n + fp, generator=g)}
        if task == "segmentation":
            masks = torch.zeros(n + fp, 1, h, w)
            masks[:n, 0] = t["masks"][:n].float() * 0.9
            masks[n:, 0, :10, :10] = 0.8
            o["masks"] = masks
        if task == "keypoints":
            o["labels"] = torch.ones(n + fp, dtype=torch.int64)
            k = t["keypoints"].shape[1]
            o["keypoints"] = torch.cat([t["keypoints"][:n] + torch.randn(n, k, 3, generator=g),
                                        torch.full((fp, k, 3), 3.0)])
        outs.append(o)
    return outs


def _direct_cocoeval(ds, outs, iou):
    from pycocotools import mask as mask_api
    from pycocotools.cocoeval import COCOeval
    dets = []
    for image_id, o in zip(ds.ids, outs):
        xywh = o["boxes"].clone()
        xywh[:, 2:] -= xywh[:, :2]
        for j in range(len(xywh)):
            d = {"image_id": image_id, "category_id": int(o["labels"][j]), "score": float(o["scores"][j])}
            if iou == "bbox":
                d["bbox"] = xywh[j].tolist()
            elif iou == "segm":
                d["segmentation"] = mask_api.encode(np.asfortranarray((o["masks"][j, 0] > 0.5).numpy().astype(np.uint8)))
            else:
                k = o["keypoints"][j].clone()
                k[:, 2] = 1
                d["keypoints"] = k.flatten().tolist()
            dets.append(d)
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(ds.coco, ds.coco.loadRes(dets), iou)
        if iou == "keypoints":
            E.params.kpt_oks_sigmas = ds.kpt_oks_sigmas
        E.evaluate()
        E.accumulate()
        E.summarize()
    return [v * 100 if v > -1 else float("nan") for v in E.stats[:len(_STAT_NAMES[iou])]]


def test_real_coco_layout_edge_cases_load(coco_root):
    ds = det.load_dataset(f"coco:{coco_root}", "val", task="segmentation")
    assert ds.ids == [1, 2, 5, 9, 12] and ds.num_classes == 91  # COCO ids kept as labels
    assert ds.label_to_cat_id[90] == 90 and ds.category_counts()["toothbrush"] == 0
    for i in range(len(ds)):
        im, t = ds[i]
        assert im.shape[0] == 3 and len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()  # zero-area box and crowd dropped
        assert t["masks"].shape[1:] == im.shape[1:]
    assert ds[0][1]["labels"].tolist() == [1, 3]
    assert det.load_dataset(f"coco:{coco_root}", "train", task="detection").ids == [1, 2, 5, 12]
    assert det.load_dataset(f"coco:{coco_root}", "train", task="keypoints").ids == [1, 5]


@pytest.mark.parametrize("task", ["detection", "segmentation", "keypoints"])
def test_evaluate_equals_direct_pycocotools(coco_root, task):
    ds = det.load_dataset(f"coco:{coco_root}", "val", task=task)
    outs = _noisy_outputs(ds, task)
    m = det.evaluate(_Replay(outs), ds, task=task, batch_size=2)
    for iou in det.IOU_TYPES[task]:
        ours = [m[f"{iou}_{s}"] for s in _STAT_NAMES[iou]]
        ref = _direct_cocoeval(ds, outs, iou)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
        assert 0 < m[f"{iou}_AP"] < 100
        if task != "keypoints":
            assert math.isnan(m["per_category"][iou]["toothbrush"])  # no ground truth


@pytest.mark.parametrize("task", ["detection", "segmentation", "keypoints"])
def test_no_detections_gives_nan_where_there_is_no_ground_truth(coco_root, task):
    # Regression: with no detection at all every AP was a hard-coded 0.0, so APl (no large
    # object here) and AP of a category without annotations were 0 in that round, NaN in others.
    ds = det.load_dataset(f"coco:{coco_root}", "val", task=task)
    with_dets = det.evaluate(_Replay(_noisy_outputs(ds, task)), ds, task=task)
    empty = det.evaluate(_Replay(_noisy_outputs(ds, task, empty=True)), ds, task=task)
    assert empty["num_detections"] == 0
    for k in det.metric_names(task):
        assert math.isnan(empty[k]) == math.isnan(with_dets[k]), k
        assert math.isnan(empty[k]) or empty[k] == 0.0
    assert math.isnan(empty["bbox_APl"])
    for iou in det.IOU_TYPES[task]:
        assert empty["per_category"][iou].keys() == with_dets["per_category"][iou].keys()
        for name, areas in with_dets["per_category_area"][iou].items():
            assert empty["per_category_area"][iou][name].keys() == areas.keys()  # keypoints: no "small"
            for a, v in areas.items():
                assert math.isnan(empty["per_category_area"][iou][name][a]) == math.isnan(v)


def test_train_one_step_on_real_layout(coco_root):
    tr = det.load_dataset(f"coco:{coco_root}", "train", task="segmentation")
    torch.manual_seed(0)
    model = det.build_model_for("maskrcnn_resnet18_fpn", tr, image_size=64, verbose=False)
    r = det.train(model, tr, iters=1, batch_size=2, lr=0.005, progress=False)
    assert math.isfinite(r["final_loss"])


def test_image_size_disagreeing_with_the_json_is_an_error(tmp_path):
    # Regression: a file of another size than the JSON's width/height silently trained on
    # masks of the JSON's size (misplaced targets); now one error names the file.
    root = _make_coco(tmp_path / "coco")
    doc = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    doc["images"][0]["width"] = 100
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    # (detection: with segmentation the RLE of the same image no longer fits the JSON's
    # size, which the loader now refuses before any image is read)
    ds = det.load_dataset(f"coco:{root}", "val", task="detection")
    with pytest.raises(ValueError, match=r"000000000001\.png.*64x48 pixels.*says 100x48"):
        ds[0]


def test_mobilenet_classifier_ticket_onto_mobilenet_detector():
    # Regression: MobileNet classifiers name their body features.*, the detector's body is that
    # Sequential (backbone.body.0.0.weight): --backbone-weights mapped it, ticket transfer
    # raised "no layer of the ticket matches".
    from torchvision.models import mobilenet_v3_large
    from lthfast.ticket import Ticket
    from lthfast.transfer import transfer_ticket
    src = Ticket.from_model(mobilenet_v3_large(num_classes=10), 0.5)
    model = det.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", task="detection", num_classes=3,
                            image_size=64, verbose=False)
    t = transfer_ticket(src, model)
    assert t.kind == "classifier->backbone"
    assert t.mapping["features.0.0.weight"] == "backbone.body.0.0.weight"
    assert sorted(t.unmapped_source) == ["classifier.0.weight", "classifier.3.weight"]
    body = [n for n in det.prunable_names(model, "backbone")]
    assert sorted(t.mapping.values()) == sorted(body)
    for s, d in t.mapping.items():
        assert torch.equal(t.ticket[d], src[s])
    t.ticket.apply(model)


def test_pretrained_freezing_follows_torchvision(tmp_path):
    # Regression: a pre-trained MobileNet body trained every layer (torchvision: the last 3
    # stages), and the *_v2 models got frozen BatchNorm (torchvision keeps BatchNorm2d).
    from torchvision.models import mobilenet_v3_large, resnet18
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops import FrozenBatchNorm2d
    path = tmp_path / "mnv3.pth"
    torch.save(mobilenet_v3_large().state_dict(), path)
    m = det.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", task="detection", num_classes=3,
                        image_size=64, backbone_weights=str(path), verbose=False)
    ref = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    assert ({n for n, p in m.backbone.body.named_parameters() if p.requires_grad}
            == {n for n, p in ref.body.named_parameters() if p.requires_grad})
    assert any(not p.requires_grad for p in m.backbone.body.parameters())
    m6 = det.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", task="detection", num_classes=3,
                         image_size=64, backbone_weights=str(path), trainable_layers=6, verbose=False)
    assert all(p.requires_grad for p in m6.backbone.body.parameters())
    with pytest.raises(ValueError, match="trainable_layers"):
        det.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", task="detection", num_classes=3,
                        image_size=64, backbone_weights=str(path), trainable_layers=7, verbose=False)
    path18 = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path18)
    small = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, image_size=64,
                            backbone_weights=str(path18), verbose=False)
    assert any(isinstance(x, FrozenBatchNorm2d) for x in small.modules())  # v1 rule unchanged
    from torchvision.models import resnet50
    v2 = det.build_model("retinanet_resnet50_fpn_v2", task="detection", num_classes=3, image_size=64,
                         backbone_weights=resnet50().state_dict(), verbose=False)
    assert not any(isinstance(x, FrozenBatchNorm2d) for x in v2.modules())
    assert isinstance(v2.backbone.body.bn1, nn.BatchNorm2d) and not v2.backbone.body.layer1[0].conv1.weight.requires_grad


@pytest.mark.parametrize("name,task", [(n, {"maskrcnn": "segmentation", "keypointrcnn": "keypoints"}
                                        .get(n.split("_")[0], "detection")) for n in det.model_names()])
def test_every_model_scopes_cover_and_exclude_what_they_say(name, task):
    model = det.build_model(name, task=task, num_classes=3, image_size=64, verbose=False)
    layers = [f"{n}.weight" for n, mod in model.named_modules()
              if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    all_names = det.prunable_names(model, "all")
    assert all_names == layers and len(set(all_names)) == len(all_names)
    assert all(det.scope_of(n) != "other" for n in all_names)
    body = det.prunable_names(model, "backbone")
    paper = det.prunable_names(model, "paper")
    excluded = set(all_names) - set(paper)
    assert body[0] in excluded and all(".downsample." in n or n == body[0] or det.scope_of(n) != "backbone"
                                       for n in excluded)
    assert not any(n.startswith(("rpn.head.conv", "roi_heads.box_head", "head.classification_head.conv",
                                 "backbone.fpn")) for n in excluded)
