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


def _load_coco(path: Path, task: str = "detection"):
    try:
        from pycocotools.coco import COCO
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("pycocotools"):
            raise
        # (with its name: the CLI turns it into one line saying what to install; a broken
        # install, another ImportError, keeps its own message)
        raise ModuleNotFoundError("COCO data needs pycocotools: `pip install pycocotools`",
                                  name="pycocotools") from None
    try:
        doc = json.loads(Path(path).read_bytes())
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:  # e.g. a gzipped file under the .json name
        raise ValueError(f"annotation file {path} is not JSON text (UTF-8): {e}; a compressed "
                         "file must be unpacked first") from None
    _validate_coco(doc, path, task)
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


class _Problems:
    """Collects what is wrong in an annotation file; `raise_if_any` names the first few."""

    SHOWN = 5

    def __init__(self, path):
        self.path, self.items, self.count = path, [], 0

    def add(self, where: str, what: str) -> None:
        self.count += 1
        if len(self.items) < self.SHOWN:
            self.items.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"; and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        raise ValueError(f"annotation file {self.path} is not valid COCO ({self.count} problem"
                         f"{'' if self.count == 1 else 's'}): " + "; ".join(self.items) + more)


def _where(section: str, i: int, entry) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{section}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


def _entries_with_ids(doc, section: str, kind: str, bad: "_Problems", by_id: dict):
    """Yields (where, entry) for the entries of doc[section] that are dicts with an int id,
    recording each in `by_id`; the others, and duplicate ids, go to `bad`."""
    for i, entry in enumerate(doc[section]):
        w = _where(section, i, entry)
        if not isinstance(entry, dict):
            bad.add(w, f"not a dict ({entry!r:.60})")
            continue
        if not _is_int(entry.get("id")):
            bad.add(w, f"'id' must be an int, got {entry.get('id')!r}")
            continue
        if entry["id"] in by_id:
            bad.add(w, f"duplicate {kind} id {entry['id']}")
        by_id[entry["id"]] = entry
        yield w, entry


def _validate_coco(doc, path, task: str) -> None:
    """Checks everything the loader, pycocotools' index / annToMask and COCOeval read, so a
    malformed file fails here with the file and the bad entry named, not with a KeyError /
    IndexError from pycocotools (possibly only at evaluation, after a round of training).
    A missing `iscrowd` is set to 0 (what the loader assumes)."""
    if not isinstance(doc, dict):
        raise ValueError(f"annotation file {path} is not COCO format (a {type(doc).__name__}, "
                         "not a dict with 'images', 'annotations' and 'categories')")
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise ValueError(f"annotation file {path} is not COCO format (missing {missing})")
    for k in ("images", "annotations", "categories"):
        if not isinstance(doc[k], list):
            raise ValueError(f"annotation file {path}: {k!r} must be a list, got a "
                             f"{type(doc[k]).__name__}")
    if not doc["images"]:
        raise ValueError(f"annotation file {path} has no images")
    if not doc["categories"]:
        raise ValueError(f"annotation file {path} has no categories")
    bad = _Problems(path)
    images = {}
    for w, im in _entries_with_ids(doc, "images", "image", bad, images):
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            bad.add(w, f"'file_name' must be a non-empty string, got {im.get('file_name')!r}")
        for k in ("width", "height"):
            if k in im and not (_is_int(im[k]) and im[k] > 0):
                bad.add(w, f"{k!r} must be a positive int, got {im[k]!r}")
            elif k not in im and task == "segmentation":
                bad.add(w, f"no {k!r} (segmentation masks are drawn at the image size)")
    cats, kpt_len = {}, None
    for w, c in _entries_with_ids(doc, "categories", "category", bad, cats):
        if not isinstance(c.get("name"), str):
            bad.add(w, f"'name' must be a string, got {c.get('name')!r}")
        if "keypoints" in c and not (isinstance(c["keypoints"], list)
                                     and all(isinstance(n, str) for n in c["keypoints"])):
            bad.add(w, f"'keypoints' must be a list of keypoint names, got {c['keypoints']!r:.80}")
        elif c.get("keypoints") and kpt_len is None:
            kpt_len = 3 * len(c["keypoints"])  # the loader's K: the first keypoint category's
    bad.raise_if_any()
    ann_ids = set()
    for i, a in enumerate(doc["annotations"]):
        w = _where("annotations", i, a)
        if not isinstance(a, dict):
            bad.add(w, f"not a dict ({a!r:.60})")
            continue
        if "id" not in a:
            bad.add(w, "no 'id' (pycocotools indexes annotations by id)")
        elif not _is_int(a["id"]):
            bad.add(w, f"'id' must be an int, got {a['id']!r}")
        elif a["id"] in ann_ids:
            bad.add(w, f"duplicate annotation id {a['id']!r}")
        else:
            ann_ids.add(a["id"])
        if not _is_int(a.get("image_id")) or a.get("image_id") not in images:  # (int first: a
            # list or dict id is unhashable)
            bad.add(w, f"'image_id' {a.get('image_id')!r} is not the id of an entry of 'images'")
        if not _is_int(a.get("category_id")) or a.get("category_id") not in cats:
            bad.add(w, f"'category_id' {a.get('category_id')!r} is not the id of an entry of "
                       f"'categories' (ids: {sorted(cats)[:10]}{' ...' if len(cats) > 10 else ''})")
        box = a.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_num, box)):
            bad.add(w, f"'bbox' must be 4 finite numbers [x, y, width, height], got {box!r:.80}")
        elif box[2] < 0 or box[3] < 0:
            bad.add(w, f"'bbox' {box!r} has a negative {'width' if box[2] < 0 else 'height'} "
                       "(COCO boxes are [x, y, width, height])")
        if not _is_num(a.get("area")) or a["area"] < 0:
            bad.add(w, f"'area' must be a number >= 0, got {a.get('area')!r} (COCOeval sorts "
                       "objects into small / medium / large by it)")
        if "iscrowd" not in a:
            a["iscrowd"] = 0
        elif a["iscrowd"] not in (0, 1):
            bad.add(w, f"'iscrowd' must be 0 or 1, got {a['iscrowd']!r}")
        if task == "segmentation":
            why = _segmentation_problem(a.get("segmentation", None), images.get(a.get("image_id"))
                                        if _is_int(a.get("image_id")) else None)
            if why:
                bad.add(w, why)
        if task == "keypoints":
            if kpt_len is None:
                break  # CocoDataset says: no category with keypoints
            kp = a.get("keypoints")
            if not isinstance(kp, list) or len(kp) != kpt_len:
                n = len(kp) if isinstance(kp, list) else None
                bad.add(w, f"'keypoints' must be a list of {kpt_len} numbers ({kpt_len // 3} keypoints "
                           f"x (x, y, visibility)), got " + ("none" if kp is None else
                                                             f"{n} values" if n is not None else repr(kp)))
            elif not _is_int(a.get("num_keypoints")) or a["num_keypoints"] < 0:
                bad.add(w, f"'num_keypoints' must be an int >= 0, got {a.get('num_keypoints')!r}")
    bad.raise_if_any()


def _segmentation_problem(seg, image: dict | None = None) -> str | None:
    """Why pycocotools' annToMask cannot draw `seg` (None when it can) on `image` (its
    entry in 'images', whose width and height the segmentation task requires)."""
    if seg is None:
        return "no 'segmentation' (the segmentation task trains on masks)"
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not isinstance(size, list) or len(size) != 2 \
                or not all(_is_int(x) and x > 0 for x in size):
            return f"RLE 'segmentation' needs 'counts' and 'size' [height, width], got {seg!r:.80}"
        counts = seg["counts"]
        if not (isinstance(counts, str) or (isinstance(counts, list)
                                            and all(_is_int(c) and c >= 0 for c in counts))):
            return (f"RLE 'segmentation' 'counts' must be a string (compressed) or a list of "
                    f"non-negative ints, got {counts!r:.60}")
        # against the JSON's image size now, not at evaluation after a round of training
        # (the image's own pixels are checked against the JSON when it is read)
        hw = [image.get("height"), image.get("width")] if isinstance(image, dict) else None
        if hw and all(_is_int(x) for x in hw) and list(size) != hw:
            return (f"RLE 'segmentation' has size {size} but its image "
                    f"{image.get('file_name')!r} is [height, width] {hw}")
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            return (f"RLE 'segmentation' counts add up to {sum(counts)} pixels, not the "
                    f"{size[0]} x {size[1]} = {size[0] * size[1]} of its size")
        return None
    if not isinstance(seg, list) or not seg:
        return f"'segmentation' must be polygons (a non-empty list of [x1, y1, x2, y2, ...]) " \
               f"or an RLE dict, got {seg!r:.60}"
    for p in seg:
        if not isinstance(p, list) or len(p) < 6 or len(p) % 2:
            return (f"'segmentation' polygon {p!r:.60} must be a flat list of an even number "
                    ">= 6 of coordinates (3 or more x, y points)")
        # (NaN, inf or huge coordinates crash pycocotools' drawing: segfault or out of memory)
        if not all(_is_num(c) and abs(c) <= 1e6 for c in p):
            return f"'segmentation' polygon {p!r:.60} has a coordinate that is not a finite number (within ±1e6)"
    return None


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


def _unique_names(cats: list[dict]) -> dict[int, str]:
    """{category id: name}; a name that several categories share gets its id appended
    ("person (id 3)"), so per-category results keyed by name keep them apart."""
    seen: dict[str, int] = {}
    for c in cats:
        seen[str(c["name"])] = seen.get(str(c["name"]), 0) + 1
    return {c["id"]: str(c["name"]) if seen[str(c["name"])] == 1 else f"{c['name']} (id {c['id']})"
            for c in cats}


class CocoDataset(torch.utils.data.Dataset):
    """COCO-format detection dataset (see the module docstring for the item format).

    Category ids become labels unchanged when they are all in 1..1000 (COCO's own ids, so
    torchvision COCO checkpoints match: `num_classes` = 91 for COCO), else 1..C in id order.
    The annotation file is checked first: a malformed one (a missing 'images' /
    'annotations' / 'categories', no images, a bbox that is not 4 numbers or has a negative
    size, an image_id or category_id that names no entry, no 'area', for segmentation a
    missing or unusable 'segmentation', for keypoints keypoints of the wrong length) raises
    one ValueError naming the file and the bad entries. `drop_empty` (the default of
    `load_dataset` for the train split, as torchvision's reference scripts do) drops images
    with no non-crowd box over 1 px wide and high (for keypoints: with a labelled keypoint);
    the val split keeps them (their detections count as false positives in COCO AP).
    An image that fails to decode stops loading with an error naming the file.
    """

    def __init__(self, ann_file, image_dir, *, task: str, transforms=None, drop_empty: bool = False,
                 label_map: dict | None = None, check_images: bool = True):
        self.task = check_task(task)
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.coco = _load_coco(self.ann_file, self.task)
        self.transforms = transforms
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{self.ann_file} has no categories")
        ids = [c["id"] for c in cats]
        raw = all(isinstance(i, int) and 1 <= i <= 1000 for i in ids)
        self.cat_id_to_label = {c: (c if raw else i + 1) for i, c in enumerate(ids)}
        if label_map is not None:  # the training split's labels (a model learnt them)
            other = [i for i in ids if i not in label_map]
            if other:
                raise ValueError(f"{self.ann_file}: categories {other[:5]} are not in the training "
                                 "split's 'categories': the splits must list the same categories")
            self.cat_id_to_label = dict(label_map)
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.num_classes = max(self.label_to_cat_id) + 1  # + background
        self.category_names = _unique_names(cats)
        self.num_keypoints, self.kpt_oks_sigmas, self.keypoint_names = 0, None, []
        if task == "keypoints":
            kcats = [c for c in cats if c.get("keypoints")]
            if not kcats:
                raise ValueError(f"{self.ann_file} has no category with keypoints")
            self.keypoint_names = list(kcats[0]["keypoints"])
            self.num_keypoints = len(self.keypoint_names)
            sig = kcats[0].get("oks_sigmas")
            if sig is not None and (not isinstance(sig, list) or len(sig) != self.num_keypoints
                                    or not all(_is_num(x) and x > 0 for x in sig)):
                raise ValueError(f"annotation file {self.ann_file}: category {kcats[0]['id']} "
                                 f"({kcats[0]['name']!r}): 'oks_sigmas' must be {self.num_keypoints} "
                                 f"positive numbers (one per keypoint), got {sig!r:.80}")
            if sig is None:
                sig = [s / 10 for s in _COCO_SIGMAS] if self.num_keypoints == 17 else \
                    [_DEFAULT_SIGMA] * self.num_keypoints
            self.kpt_oks_sigmas = np.asarray(sig, dtype=np.float64)
        self.ids = sorted(self.coco.imgs)
        if drop_empty:
            self.ids = [i for i in self.ids if self._usable(self.coco.imgToAnns.get(i, []))]
            if not self.ids:
                raise ValueError(f"{self.ann_file}: none of its {len(self.coco.imgs)} images has a "
                                 f"usable annotation for task {task} (a non-crowd box over 1 px "
                                 "wide and high" + (" with a labelled keypoint" if task == "keypoints"
                                                     else "") + "), so there is nothing to train on")
        if check_images:
            self.check_image_files()

    def check_image_files(self) -> None:
        """FileNotFoundError naming the images of this split (after `subset`: of the part
        kept) that are not in the image folder: a missing image would otherwise be found
        only when read, after a whole round of training."""
        missing = [self.coco.imgs[i].get("file_name") for i in self.ids
                   if not (self.image_dir / str(self.coco.imgs[i].get("file_name", ""))).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.ann_file}: {len(missing)} of its images are not in "
                                    f"{self.image_dir}, e.g. {missing[:3]}")

    def subset(self, n: int, seed: int) -> "CocoDataset":
        """Keeps `n` of the images (the first of a seeded permutation, in id order): a quick
        run on part of a large dataset. In place; returns self."""
        if n < len(self.ids):
            g = torch.Generator().manual_seed(seed)
            keep = torch.randperm(len(self.ids), generator=g)[:n].tolist()
            self.ids = sorted(self.ids[i] for i in keep)
        return self

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
                if im.mode.startswith("I"):  # 16-bit grey (I;16, or I as some Pillow versions
                    # open it): convert("RGB") would clip every value above 255 to white
                    grey = np.asarray(im, dtype=np.float32) / 65535.0
                    return torch.from_numpy(np.clip(grey, 0, 1)).expand(3, *grey.shape).clone()
                if im.mode == "F":
                    raise ValueError("a floating-point image (mode F): save it as 8 or 16 bits")
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
        if self.task == "segmentation":  # masks (and COCOeval's crowd regions) at the image size
            for a in self.coco.imgToAnns.get(image_id, []):
                seg = a["segmentation"]
                if isinstance(seg, dict) and list(seg["size"]) != [h, w]:
                    raise ValueError(f"{self.ann_file.name}: annotation id {a['id']} (image id "
                                     f"{image_id}) has an RLE 'segmentation' of size {seg['size']} "
                                     f"but its image {info['file_name']} is [height, width] {[h, w]}")
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
            # a person with no labelled keypoint keeps its box (torchvision's reference
            # does): the keypoint loss skips invisible keypoints, and dropping the box
            # trained the detector to call ~40% of COCO's persons background
            target["keypoints"] = torch.tensor(kp, dtype=torch.float32).reshape(-1, k, 3)
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
                 drop_empty: bool | None = None, label_map: dict | None = None,
                 check_images: bool = True, **shapes_kw) -> CocoDataset:
    """Dataset `spec` ("shapes" or "coco:PATH") split "train" or "val" for `task`.

    "shapes" generates (once) into a cache folder, see `shapes_root`; `shapes_kw` are
    `make_shapes` parameters (n_train, n_val, image_size, seed; defaults from
    `lthfast.detection.defaults.DEMO`). "coco:PATH" reads PATH/annotations/instances_train2017.json
    + PATH/train2017/ (person_keypoints_* for keypoints), or the shapes layout.
    `label_map`: the training split's `cat_id_to_label`, for the validation split (the
    labels a model learnt must mean the same categories there). `check_images=False`: no
    check that every image file is there (annotations only, or checked after a `subset`).
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
        if not spec[5:].strip():
            raise ValueError(f"data spec {spec!r} has no path: give coco:PATH, the folder that "
                             "holds annotations/")
        root = Path(spec[5:]).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"COCO folder {root} {what} (from data spec {spec!r}; give the "
                                    "folder that holds annotations/)")
    else:
        raise ValueError(f"unknown data spec {spec!r}; valid: 'shapes' or 'coco:PATH'")
    ann, img = _find_split(root, split, task)
    if drop_empty is None:
        drop_empty = split == "train"
    return CocoDataset(ann, img, task=task, transforms=transforms, drop_empty=drop_empty,
                       label_map=label_map, check_images=check_images)


def run_split(s, split: str, *, label_map: dict | None = None, check_images: bool = True):
    """The `split` of `lthfast imp` settings `s` (attributes or a dict: task, data, n_train,
    n_val, image_size, seed) as the run uses it: shapes generated with those sizes, or
    coco:PATH cut to --n-train / --n-val (a seeded part; val's seed is seed + 10000)."""
    get = s.get if isinstance(s, dict) else (lambda k, d=None: getattr(s, k, d))
    data, seed = get("data", "shapes"), get("seed", 0) or 0
    if data == "shapes":
        kw = {k: get(k) for k in ("n_train", "n_val", "image_size", "seed") if get(k) is not None}
        return load_dataset(data, split, task=get("task"), label_map=label_map,
                            check_images=check_images, **kw)
    ds = load_dataset(data, split, task=get("task"), label_map=label_map, check_images=False)
    n = get("n_train" if split == "train" else "n_val")
    if n:
        ds.subset(n, seed if split == "train" else seed + 10_000)
    if check_images:
        ds.check_image_files()
    return ds
