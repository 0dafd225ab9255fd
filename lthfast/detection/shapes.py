"""The built-in synthetic COCO-format dataset `shapes`, generated deterministically to disk.

Each image has 1-4 non-overlapping filled shapes on a smooth greyish two-colour gradient.
Each class has its own hue family (jittered hue, random saturation and brightness), so a small
detector learns the task in a few hundred iterations from scratch; shapes still matter for the
masks and keypoints. Classes
have unbalanced frequencies (frequent -> rare) and object sizes are log-uniform, so the
objects spread over COCO's small (< 32^2 px), medium and large (> 96^2 px) area ranges; the
COCO area thresholds are absolute, so at 128 px only the biggest objects are "large", and at
image sizes below ~110 px there are none (APl is then undefined).

Masks are rasterised from the same polygons that are written to the JSON (with pycocotools),
so image pixels, masks, areas and boxes agree exactly. For the keypoint task,
`person_keypoints_{split}.json` holds the triangles only (like COCO's person class), with 4
keypoints each: apex (at a random position along the top), the two base corners, centroid.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

#: (name, frequency); the category id is the 1-based position. Unbalanced on purpose.
CLASSES = (("triangle", 0.40), ("rectangle", 0.30), ("ellipse", 0.20), ("cross", 0.10))
#: Base hue (0-1) of each class's colours.
_HUES = (0.0, 0.33, 0.62, 0.15)
KEYPOINT_CLASS = "triangle"
KEYPOINT_NAMES = ("apex", "base_left", "base_right", "centroid")
KEYPOINT_SKELETON = ((1, 2), (2, 3), (3, 1))
#: OKS sigmas for COCOeval (COCO's range is 0.025-0.107; shape corners are sharp).
KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05, 0.07)
FORMAT_VERSION = 2
_OBJECTS_PER_IMAGE = ((1, 0.30), (2, 0.30), (3, 0.25), (4, 0.15))
_MIN_SIDE = 10


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("pycocotools"):
            raise
        raise ModuleNotFoundError("the shapes dataset and COCO evaluation need pycocotools: "
                                  "`pip install pycocotools`", name="pycocotools") from None
    return mask


def _polygon(kind: str, x0: float, y0: float, w: float, h: float, rng) -> tuple[list, list | None]:
    """Polygon (flat x,y list) of one shape in box (x0, y0, w, h), and its keypoints."""
    x1, y1 = x0 + w, y0 + h
    if kind == "rectangle":
        return [x0, y0, x1, y0, x1, y1, x0, y1], None
    if kind == "triangle":
        ax = x0 + w * rng.uniform(0.2, 0.8)
        pts = [(ax, y0), (x0, y1), (x1, y1)]
        cx, cy = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
        return [c for p in pts for c in p], [*pts, (cx, cy)]
    if kind == "ellipse":
        n = 32
        return [c for i in range(n) for c in (x0 + w / 2 * (1 + math.cos(2 * math.pi * i / n)),
                                              y0 + h / 2 * (1 + math.sin(2 * math.pi * i / n)))], None
    if kind == "cross":
        ax0, ax1 = x0 + w / 3, x0 + 2 * w / 3
        ay0, ay1 = y0 + h / 3, y0 + 2 * h / 3
        pts = [(ax0, y0), (ax1, y0), (ax1, ay0), (x1, ay0), (x1, ay1), (ax1, ay1), (ax1, y1),
               (ax0, y1), (ax0, ay1), (x0, ay1), (x0, ay0), (ax0, ay0)]
        return [c for p in pts for c in p], None
    raise ValueError(f"unknown shape kind {kind!r}")


def _background(rng, size: int) -> np.ndarray:
    c0, c1 = (rng.uniform(30, 220) + rng.uniform(-25, 25, 3) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _object_colour(rng, cls: int) -> np.ndarray:
    import colorsys
    hue = (_HUES[cls] + rng.uniform(-0.05, 0.05)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))) * 255


def _generate_image(rng, size: int, ann_id: int, image_id: int, mask_api):
    probs = np.array([f for _, f in CLASSES])
    n_obj = int(rng.choice([n for n, _ in _OBJECTS_PER_IMAGE], p=[p for _, p in _OBJECTS_PER_IMAGE]))
    img = _background(rng, size)
    max_side = max(_MIN_SIDE + 1, size - 12)
    boxes, anns, kp_anns = [], [], []
    for _ in range(n_obj):
        cls = int(rng.choice(len(CLASSES), p=probs / probs.sum()))
        side = math.exp(rng.uniform(math.log(_MIN_SIDE), math.log(max_side)))
        aspect = rng.uniform(0.75, 1.33)
        w, h = min(side * aspect, size - 2), min(side / aspect, size - 2)
        for _try in range(20):
            x0, y0 = rng.uniform(1, size - 1 - w), rng.uniform(1, size - 1 - h)
            if all(x0 + w + 2 < bx0 or bx1 + 2 < x0 or y0 + h + 2 < by0 or by1 + 2 < y0
                   for bx0, by0, bx1, by1 in boxes):
                break
        else:
            continue  # no room left for this object
        boxes.append((x0, y0, x0 + w, y0 + h))
        poly, kps = _polygon(CLASSES[cls][0], x0, y0, w, h, rng)
        poly = [round(float(v), 2) for v in poly]
        rle = mask_api.merge(mask_api.frPyObjects([poly], size, size))
        m = mask_api.decode(rle).astype(bool)
        if m.sum() == 0:
            continue
        img[m] = _object_colour(rng, cls)
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        ann = {"id": ann_id, "image_id": image_id, "category_id": cls + 1, "segmentation": [poly],
               "area": int(m.sum()), "bbox": bbox, "iscrowd": 0}
        anns.append(ann)
        if kps is not None:
            flat = [v for x, y in kps for v in (round(float(x), 2), round(float(y), 2), 2)]
            kp_anns.append({**ann, "keypoints": flat, "num_keypoints": len(kps)})
        ann_id += 1
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), anns, kp_anns, ann_id


def _categories(keypoints: bool) -> list[dict]:
    if keypoints:
        cid = [n for n, _ in CLASSES].index(KEYPOINT_CLASS) + 1
        return [{"id": cid, "name": KEYPOINT_CLASS, "supercategory": "shape",
                 "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(s) for s in KEYPOINT_SKELETON],
                 "oks_sigmas": list(KEYPOINT_OKS_SIGMAS)}]
    return [{"id": i + 1, "name": n, "supercategory": "shape", "frequency": f}
            for i, (n, f) in enumerate(CLASSES)]


def _write_split(root: Path, split: str, n: int, rng, size: int, mask_api) -> None:
    from PIL import Image
    (root / split).mkdir(parents=True)
    images, anns, kp_anns, ann_id = [], [], [], 1
    for i in range(n):
        image_id = i + 1
        arr, a, k, ann_id = _generate_image(rng, size, ann_id, image_id, mask_api)
        name = f"{image_id:06d}.png"
        Image.fromarray(arr).save(root / split / name, format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        anns += a
        kp_anns += k
    info = {"description": "lthfast synthetic shapes", "version": FORMAT_VERSION}
    for fname, a, kp in ((f"instances_{split}.json", anns, False),
                         (f"person_keypoints_{split}.json", kp_anns, True)):
        doc = {"info": info, "images": images, "annotations": a, "categories": _categories(kp)}
        (root / "annotations" / fname).write_text(json.dumps(doc, separators=(",", ":")))


def shapes_params(n_train: int, n_val: int, image_size: int, seed: int) -> dict:
    for name, v, lo in (("n_train", n_train, 1), ("n_val", n_val, 1), ("image_size", image_size, 32)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"shapes: {name} must be an int >= {lo}, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"shapes: seed must be an int, got {seed!r}")
    return {"format_version": FORMAT_VERSION, "n_train": n_train, "n_val": n_val,
            "image_size": image_size, "seed": seed}


def make_shapes(root, *, n_train: int, n_val: int, image_size: int = 128, seed: int = 0) -> Path:
    """Generate the shapes dataset into `root` (COCO layout: `train/`, `val/`,
    `annotations/instances_{train,val}.json`, `annotations/person_keypoints_{train,val}.json`).

    Deterministic in (n_train, n_val, image_size, seed). Idempotent: an existing `root` made
    with the same parameters is reused; one made with other parameters is an error (nothing is
    overwritten). Written to a temporary folder and renamed, so `root` is never half-written.
    """
    params = shapes_params(n_train, n_val, image_size, seed)
    root = Path(root).expanduser()
    stamp = root / "shapes.json"
    if root.exists():
        if stamp.is_file() and json.loads(stamp.read_text()) == params:
            return root
        raise ValueError(f"{root} exists but is not a shapes dataset made with {params}; "
                         "pass another root (or remove that folder)")
    mask_api = _pycocotools_mask()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "annotations").mkdir(parents=True)
        for split, n, sub in (("train", n_train, 0), ("val", n_val, 1)):
            rng = np.random.default_rng([seed, sub])  # val does not depend on n_train
            _write_split(tmp, split, n, rng, image_size, mask_api)
        (tmp / "shapes.json").write_text(json.dumps(params, sort_keys=True))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: use its copy if it is the same
            if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
