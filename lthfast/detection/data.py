"""Detection data: the built-in `shapes` dataset and the real COCO layout, read by one loader.

`load_dataset(spec, split, task=...)` returns a `CocoDataset`: items are
`(image, target)` with `image` a float CxHxW tensor in [0, 1] and `target` in torchvision's
detection format (`boxes` xyxy float, `labels` int64, `masks` uint8 NxHxW for segmentation,
`keypoints` float NxKx3 for keypoints, plus `image_id`). `dataset.coco` is the pycocotools
COCO object used for evaluation. Batch with `collate_fn`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from lthfast.detection.shapes import make_shapes, shapes_params

TASKS = ("detection", "segmentation", "keypoints")
SPLITS = ("train", "val")
#: COCO's person keypoint sigmas (pycocotools' default), used when a 17-keypoint category has none.
_COCO_SIGMAS = (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89)
_DEFAULT_SIGMA = 0.05


def collate_fn(batch):
    """Batch of (image, target) pairs -> (list of images, list of targets)."""
    return tuple(list(x) for x in zip(*batch))


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return task


def _load_coco(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("COCO data needs pycocotools: `pip install pycocotools`") from None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if not isinstance(doc, dict) or missing:
        raise ValueError(f"annotation file {path} is not COCO format (missing {missing or 'a dict'})")
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _find_split(root: Path, split: str, task: str) -> tuple[Path, Path]:
    """Annotation file and image folder of `split` in a COCO (`instances_train2017.json`,
    `train2017/`) or shapes (`instances_train.json`, `train/`) layout."""
    prefix = "person_keypoints" if task == "keypoints" else "instances"
    tried = []
    for suffix in ("2017", ""):
        ann = root / "annotations" / f"{prefix}_{split}{suffix}.json"
        img = root / f"{split}{suffix}"
        tried.append(str(ann))
        if ann.is_file():
            if not img.is_dir():
                raise FileNotFoundError(f"{ann} exists but the image folder {img} does not")
            return ann, img
    raise FileNotFoundError(f"no COCO annotations for split {split!r} (task {task}) under {root}: "
                            f"looked for {' and '.join(tried)}")


class CocoDataset(torch.utils.data.Dataset):
    """COCO-format detection dataset (see the module docstring for the item format).

    Category ids become labels unchanged when they are all in 1..1000 (COCO's own ids, so
    torchvision COCO checkpoints match: `num_classes` = 91 for COCO), else 1..C in id order.
    `drop_empty` (the default for the train split) drops images without usable annotations.
    An image that fails to decode stops loading with an error naming the file.
    """

    def __init__(self, ann_file, image_dir, *, task: str, transforms=None, drop_empty: bool = False):
        self.task = check_task(task)
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.coco = _load_coco(self.ann_file)
        self.transforms = transforms
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{self.ann_file} has no categories")
        ids = [c["id"] for c in cats]
        raw = all(isinstance(i, int) and 1 <= i <= 1000 for i in ids)
        self.cat_id_to_label = {c: (c if raw else i + 1) for i, c in enumerate(ids)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.num_classes = max(self.label_to_cat_id) + 1  # + background
        self.category_names = {c["id"]: c["name"] for c in cats}
        self.num_keypoints, self.kpt_oks_sigmas, self.keypoint_names = 0, None, []
        if task == "keypoints":
            kcats = [c for c in cats if c.get("keypoints")]
            if not kcats:
                raise ValueError(f"{self.ann_file} has no category with keypoints")
            self.keypoint_names = list(kcats[0]["keypoints"])
            self.num_keypoints = len(self.keypoint_names)
            sig = kcats[0].get("oks_sigmas")
            if sig is None:
                sig = [s / 10 for s in _COCO_SIGMAS] if self.num_keypoints == 17 else \
                    [_DEFAULT_SIGMA] * self.num_keypoints
            self.kpt_oks_sigmas = np.asarray(sig, dtype=np.float64)
        self.ids = sorted(self.coco.imgs)
        if drop_empty:
            self.ids = [i for i in self.ids if self._usable(self.coco.imgToAnns.get(i, []))]
            if not self.ids:
                raise ValueError(f"{self.ann_file}: no image has usable annotations for task {task}")

    def _usable(self, anns) -> bool:
        ok = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1]
        if self.task == "keypoints":
            ok = [a for a in ok if a.get("num_keypoints", 0) > 0]
        return bool(ok)

    def __len__(self) -> int:
        return len(self.ids)

    def category_counts(self) -> dict[str, int]:
        """Number of (non-crowd) annotations per category name in this split's images."""
        counts = {n: 0 for n in self.category_names.values()}
        for i in self.ids:
            for a in self.coco.imgToAnns.get(i, []):
                if not a.get("iscrowd", 0):
                    counts[self.category_names[a["category_id"]]] += 1
        return counts

    def _read_image(self, info) -> torch.Tensor:
        from PIL import Image
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise OSError(f"cannot read image {path} (image id {info['id']}): {e}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = self._read_image(info)
        h, w = image.shape[-2:]
        # boxes, masks (annToMask) and keypoints are in the JSON's pixel frame: an image of
        # another size would silently train on misplaced targets (masks of the wrong size)
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"image {self.image_dir / info['file_name']} (id {image_id}) is {w}x{h} "
                             f"pixels but {self.ann_file.name} says {info.get('width')}x{info.get('height')}")
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {"boxes": boxes, "image_id": image_id,
                  "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns],
                                         dtype=torch.int64)}
        if self.task == "segmentation":
            ms = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(ms)) if ms else \
                torch.zeros((0, h, w), dtype=torch.uint8)
        if self.task == "keypoints":
            k = self.num_keypoints
            kp = [a.get("keypoints") or [0.0] * (3 * k) for a in anns]
            target["keypoints"] = torch.tensor(kp, dtype=torch.float32).reshape(-1, k, 3)
            keep &= torch.tensor([a.get("num_keypoints", 0) > 0 for a in anns], dtype=torch.bool)
        for key in ("boxes", "labels", "masks", "keypoints"):
            if key in target:
                target[key] = target[key][keep]
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def shapes_root(root_cache=None, **shapes_kw) -> Path:
    """Cache folder of the shapes dataset with these parameters: `root_cache`, else
    $LTHFAST_DATA_DIR, else ~/.cache/lthfast; one subfolder per parameter set."""
    params = shapes_params(**shapes_kw)
    base = root_cache or os.environ.get("LTHFAST_DATA_DIR") or Path.home() / ".cache" / "lthfast"
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    name = f"shapes-{params['image_size']}px-{params['n_train']}-{params['n_val']}-s{params['seed']}-{digest}"
    return Path(base).expanduser() / name


def load_dataset(spec: str, split: str, *, task: str, root_cache=None, transforms=None,
                 drop_empty: bool | None = None, **shapes_kw) -> CocoDataset:
    """Dataset `spec` ("shapes" or "coco:PATH") split "train" or "val" for `task`.

    "shapes" generates (once) into a cache folder, see `shapes_root`; `shapes_kw` are
    `make_shapes` parameters (n_train, n_val, image_size, seed; defaults from
    `lthfast.detection.defaults.DEMO`). "coco:PATH" reads PATH/annotations/instances_train2017.json
    + PATH/train2017/ (person_keypoints_* for keypoints), or the shapes layout.
    """
    check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string ('shapes' or 'coco:PATH'), got {spec!r}")
    if spec == "shapes":
        from lthfast.detection.defaults import DEMO
        kw = {k: DEMO[k] for k in ("n_train", "n_val", "image_size", "seed")}
        unknown = set(shapes_kw) - set(kw)
        if unknown:
            raise TypeError(f"unknown shapes option(s) {sorted(unknown)}; valid: {sorted(kw)}")
        kw.update(shapes_kw)
        root = make_shapes(shapes_root(root_cache, **kw), **kw)
    elif spec.startswith("coco:"):
        if shapes_kw:
            raise TypeError(f"options {sorted(shapes_kw)} only apply to the shapes dataset")
        root = Path(spec[5:]).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"COCO folder {root} does not exist (from data spec {spec!r})")
    else:
        raise ValueError(f"unknown data spec {spec!r}; valid: 'shapes' or 'coco:PATH'")
    ann, img = _find_split(root, split, task)
    if drop_empty is None:
        drop_empty = split == "train"
    return CocoDataset(ann, img, task=task, transforms=transforms, drop_empty=drop_empty)
