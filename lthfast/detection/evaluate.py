"""COCO evaluation (pycocotools COCOeval) of torchvision detection models: `bbox`, `segm`
(segmentation task) and `keypoints` (keypoint task).

APs are in percent (0-100, the COCO convention); an AP over an area range with no ground
truth (e.g. APl when no object is large) is NaN.
"""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import torch

from lthfast.detection.data import check_task, collate_fn

IOU_TYPES = {"detection": ("bbox",), "segmentation": ("bbox", "segm"), "keypoints": ("bbox", "keypoints")}
_STAT_NAMES = {"bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
               "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
               "keypoints": ("AP", "AP50", "AP75", "APm", "APl")}
AREAS = ("all", "small", "medium", "large")


def metric_names(task: str) -> list[str]:
    """Keys of the scalar APs `evaluate` returns for `task`, e.g. bbox_AP ... bbox_APl."""
    return [f"{t}_{s}" for t in IOU_TYPES[check_task(task)] for s in _STAT_NAMES[t]]


def _to_coco_results(output: dict, image_id: int, label_to_cat_id: dict, iou_types) -> list[dict]:
    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    res = [{"image_id": image_id, "category_id": label_to_cat_id.get(int(lab), int(lab)),
            "bbox": [round(v, 3) for v in b], "score": s}
           for b, s, lab in zip(xywh.tolist(), scores, labels)]
    if "segm" in iou_types:
        from pycocotools import mask as mask_api
        masks = (output["masks"].detach().cpu() > 0.5).squeeze(1).numpy().astype(np.uint8)
        for r, m in zip(res, masks):
            rle = mask_api.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
    if "keypoints" in iou_types:
        kps = output["keypoints"].detach().float().cpu()
        for r, k in zip(res, kps):
            k = k.clone()
            k[:, 2] = 1
            r["keypoints"] = [round(v, 3) for v in k.flatten().tolist()]
    return res


def _empty_results(coco):
    """A pycocotools result object with no detection (for the images/categories of `coco`)."""
    from pycocotools.coco import COCO
    dt = COCO()
    dt.dataset = {"images": list(coco.dataset["images"]), "categories": list(coco.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def _precision_reductions(E, names: dict) -> tuple[dict, dict]:
    """Per-category AP (IoU .50:.95, all areas, max dets) and per-category per-area AP from
    COCOeval's accumulated precision array [T, R, K, A, M]."""
    prec = E.eval["precision"]
    per_cat, per_cat_area = {}, {}
    area_labels = E.params.areaRngLbl
    for k, cat_id in enumerate(E.params.catIds):
        name = names[cat_id]
        row = {}
        for a, label in enumerate(area_labels):
            p = prec[:, :, k, a, -1]
            p = p[p > -1]
            row[label] = float(p.mean() * 100) if p.size else float("nan")
        per_cat[name] = row["all"]
        per_cat_area[name] = {lab: v for lab, v in row.items() if lab != "all"}
    return per_cat, per_cat_area


@torch.no_grad()
def predict(model, dataset, *, device="cpu", batch_size: int = 4, progress: bool = False):
    """Model outputs for every image of `dataset`, in dataset order: list of (image_id, output)."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    out = []
    it = range(0, len(dataset), batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="eval", unit="batch", dynamic_ncols=True)
    try:
        for start in it:
            images, targets = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            outputs = model([im.to(device) for im in images])
            out += [(t["image_id"], {k: v.cpu() for k, v in o.items()}) for t, o in zip(targets, outputs)]
    finally:
        model.train(was_training)
    return out


def evaluate(model, dataset, *, task: str, device="cpu", batch_size: int = 4, progress: bool = False,
             verbose: bool = False) -> dict:
    """COCO APs of `model` on `dataset` (a `CocoDataset`) for `task`.

    Returns `{iou}_{AP,AP50,AP75,APs,APm,APl}` for iou in bbox (+ segm or keypoints; the
    keypoint metrics have no APs) in percent, `per_category` {iou: {name: AP}},
    `per_category_area` {iou: {name: {small, medium, large: AP}}}, `num_detections`,
    and `eval_time_s` (inference + COCOeval), `inference_time_s`. `verbose` prints
    COCOeval's summary tables.
    """
    from pycocotools.cocoeval import COCOeval
    iou_types = IOU_TYPES[check_task(task)]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    t0 = time.perf_counter()
    preds = predict(model, dataset, device=device, batch_size=batch_size, progress=progress)
    t_inf = time.perf_counter() - t0
    results = []
    for image_id, output in preds:
        results += _to_coco_results(output, image_id, dataset.label_to_cat_id, iou_types)
    names = dataset.category_names
    metrics: dict = {"num_detections": len(results)}
    per_category, per_category_area = {}, {}
    for iou in iou_types:
        stats_names = _STAT_NAMES[iou]
        cat_ids = sorted(names) if iou != "keypoints" else \
            sorted(c for c, cat in dataset.coco.cats.items() if cat.get("keypoints"))
        # one field per IoU type, as loadRes expects: with a "bbox" present it would take the
        # detection's area (used for the area ranges) from the box instead of the mask/keypoints
        field = {"segm": "segmentation"}.get(iou, iou)
        fields = ("image_id", "category_id", "score", field)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            # no detections at all: loadRes fails on [], so evaluate an empty result set --
            # AP 0 where there is ground truth, NaN where there is none (e.g. APl), exactly as
            # for a model that does detect something (a hard-coded 0 made APl 0 here, NaN there)
            dt = dataset.coco.loadRes([{k: r[k] for k in fields} for r in results]) if results \
                else _empty_results(dataset.coco)
            E = COCOeval(dataset.coco, dt, iouType=iou)
            E.params.imgIds = list(dataset.ids)
            E.params.catIds = cat_ids
            if iou == "keypoints":
                E.params.kpt_oks_sigmas = dataset.kpt_oks_sigmas
            E.evaluate()
            E.accumulate()
            E.summarize()
        if verbose:
            print(f"COCOeval {iou}:\n" + "\n".join(l for l in buf.getvalue().splitlines()
                                                  if l.lstrip().startswith("Average")))
        for s, v in zip(stats_names, E.stats):
            metrics[f"{iou}_{s}"] = float(v * 100) if v > -1 else float("nan")
        per_category[iou], per_category_area[iou] = _precision_reductions(E, names)
    metrics["per_category"] = per_category
    metrics["per_category_area"] = per_category_area
    metrics["inference_time_s"] = t_inf
    metrics["eval_time_s"] = time.perf_counter() - t0
    return metrics
