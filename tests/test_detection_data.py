import json
import os
from collections import Counter

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from tests._detection_fixtures import TINY, medium_root, tiny_root  # noqa: F401
from lthfast.detection import load_dataset, make_shapes, shapes_root
from lthfast.detection.data import CocoDataset
from lthfast.detection.shapes import CLASSES, KEYPOINT_NAMES


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shapes_deterministic_and_idempotent(tmp_path, tiny_root):
    other = make_shapes(tmp_path / "again", **TINY)
    assert _files(other) == _files(tiny_root)
    stamp = (other / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert make_shapes(other, **TINY) == other  # reused, not rewritten
    assert (other / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="exists but is not a shapes dataset"):
        make_shapes(other, **{**TINY, "seed": 4})
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_shapes_seed_changes_data(tmp_path, tiny_root):
    other = make_shapes(tmp_path / "s4", **{**TINY, "seed": 4})
    assert _files(other) != _files(tiny_root)


@pytest.mark.parametrize("bad", [dict(n_train=0), dict(image_size=8), dict(n_val="3")])
def test_shapes_bad_params(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_shapes(tmp_path / "x", **{**TINY, **bad})


def test_shapes_is_valid_coco(medium_root):
    from pycocotools.coco import COCO
    coco = COCO(str(medium_root / "annotations" / "instances_train.json"))
    assert len(coco.imgs) == 150
    anns = coco.dataset["annotations"]
    for a in anns[:50]:
        m = coco.annToMask(a)
        assert m.sum() == a["area"]
        ys, xs = m.nonzero()
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == a["bbox"]
    sizes = Counter("s" if a["area"] < 32 ** 2 else "m" if a["area"] < 96 ** 2 else "l" for a in anns)
    assert sizes["s"] > 0 and sizes["m"] > 0 and sizes["l"] > 0, sizes
    freq = Counter(a["category_id"] for a in anns)
    counts = [freq[i + 1] for i in range(len(CLASSES))]
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[-1], counts
    kp = COCO(str(medium_root / "annotations" / "person_keypoints_train.json"))
    assert [c["keypoints"] for c in kp.cats.values()] == [list(KEYPOINT_NAMES)]
    assert len(kp.anns) == freq[1] and all(a["num_keypoints"] == 4 for a in kp.anns.values())


@pytest.mark.parametrize("task", ["detection", "segmentation", "keypoints"])
def test_loader_targets(tiny_root, task):
    ds = load_dataset(f"coco:{tiny_root}", "train", task=task)
    assert ds.num_classes == (2 if task == "keypoints" else len(CLASSES) + 1)
    n_objects = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0 <= image.min() and image.max() <= 1
        n = len(t["boxes"])
        n_objects += n
        assert t["boxes"].shape == (n, 4) and t["labels"].shape == (n,) and t["labels"].dtype == torch.int64
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
        if task == "segmentation":
            assert t["masks"].shape == (n, 64, 64) and t["masks"].dtype == torch.uint8
            for box, m in zip(t["boxes"], t["masks"]):
                ys, xs = m.nonzero(as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if task == "keypoints":
            assert t["keypoints"].shape == (n, 4, 3) and (t["labels"] == 1).all()
            kp, b = t["keypoints"], t["boxes"][:, None]
            assert ((kp[..., 0] >= b[..., 0] - 1) & (kp[..., 0] <= b[..., 2] + 1)).all()
            assert ((kp[..., 1] >= b[..., 1] - 1) & (kp[..., 1] <= b[..., 3] + 1)).all()
            assert (kp[..., 2] == 2).all()
    assert n_objects > 0


def test_load_shapes_spec_uses_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path))
    ds = load_dataset("shapes", "val", task="detection", **TINY)
    root = shapes_root(**TINY)
    assert root.parent == tmp_path and (root / "shapes.json").is_file()
    assert len(ds) == TINY["n_val"]  # val keeps images without objects too
    assert sum(ds.category_counts().values()) == len(ds.coco.anns)


def test_load_dataset_errors(tmp_path, tiny_root):
    with pytest.raises(ValueError, match="valid tasks"):
        load_dataset("shapes", "train", task="classify")
    with pytest.raises(ValueError, match="valid splits"):
        load_dataset("shapes", "test", task="detection")
    with pytest.raises(ValueError, match="unknown data spec"):
        load_dataset("imagenet", "train", task="detection")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"coco:{tmp_path / 'nope'}", "train", task="detection")
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        load_dataset(f"coco:{tmp_path}", "train", task="detection")
    with pytest.raises(TypeError, match="unknown shapes option"):
        load_dataset("shapes", "train", task="detection", n_images=3)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{broken")
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_dataset(f"coco:{tmp_path}", "val", task="detection")
    (tmp_path / "val2017").mkdir()
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dataset(f"coco:{tmp_path}", "val", task="detection")
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not COCO format"):
        load_dataset(f"coco:{tmp_path}", "val", task="detection")


def test_undecodable_image_names_the_file(tmp_path, tiny_root):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    ds = CocoDataset(root / "annotations" / "instances_val.json", root / "val", task="detection")
    bad = root / "val" / ds.coco.imgs[ds.ids[0]]["file_name"]
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match=os.path.basename(bad)):
        ds[0]
