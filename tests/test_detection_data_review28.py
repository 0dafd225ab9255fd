"""Regressions from review (stop 28) of the detection data: a missing image found at
start, the validation split labelled as the training split, 16-bit images, annotation
values that crashed pycocotools or the checks, --n-train / --n-val on coco:PATH."""
import json
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from tests._detection_fixtures import TINY, tiny_root  # noqa: F401,E402
from lthfast.detection import load_dataset  # noqa: E402
from lthfast.detection.data import CocoDataset  # noqa: E402


def _copy(tiny_root, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_root, root)
    return root


def _edit(root, split, fn):
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_a_missing_image_is_named_before_training(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    info = json.loads((root / "annotations" / "instances_val.json").read_text())["images"][1]
    (root / "val" / info["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of its images are not in .*" + info["file_name"]):
        load_dataset(f"coco:{root}", "val", task="detection")


def test_the_validation_split_uses_the_training_labels(tiny_root, tmp_path):
    """Category ids outside 1..1000 are renumbered per split: a val split listing fewer
    categories gave its own labels, and a perfect model lost AP on the others."""
    root = _copy(tiny_root, tmp_path)

    def shift(data, keep=None):
        data["categories"] = [dict(c, id=c["id"] + 1000) for c in data["categories"]
                              if keep is None or c["id"] in keep]
        for a in data["annotations"]:
            a["category_id"] += 1000
        if keep is not None:
            data["annotations"] = [a for a in data["annotations"] if a["category_id"] - 1000 in keep]

    _edit(root, "train", shift)
    val_cats = sorted({a["category_id"] for a in json.loads(
        (root / "annotations" / "instances_val.json").read_text())["annotations"]})
    _edit(root, "val", lambda d: shift(d, keep=set(val_cats)))
    train = load_dataset(f"coco:{root}", "train", task="detection")
    val = load_dataset(f"coco:{root}", "val", task="detection", label_map=train.cat_id_to_label)
    assert val.cat_id_to_label == train.cat_id_to_label
    assert val.num_classes == train.num_classes
    _edit(root, "val", lambda d: d["categories"].append({"id": 5000, "name": "new"}))
    with pytest.raises(ValueError, match=r"categories \[5000\] are not in the training split"):
        load_dataset(f"coco:{root}", "val", task="detection", label_map=train.cat_id_to_label)


def test_16_bit_grey_images_keep_their_values(tiny_root, tmp_path):
    from PIL import Image

    root = _copy(tiny_root, tmp_path)
    info = json.loads((root / "annotations" / "instances_val.json").read_text())["images"][0]
    grey = (np.arange(64 * 64).reshape(64, 64) * 16 % 65536).astype(np.uint16)
    Image.fromarray(grey).save(root / "val" / info["file_name"])  # a 16-bit PNG
    ds = load_dataset(f"coco:{root}", "val", task="detection")
    image = ds._read_image(info)
    assert image.shape == (3, 64, 64)
    with Image.open(root / "val" / info["file_name"]) as again:
        want = np.asarray(again, dtype=np.float32)
    torch.testing.assert_close(image[0], torch.from_numpy(want / 65535), rtol=0, atol=1e-6)


@pytest.mark.parametrize("change, msg", [
    (lambda a: a.update(segmentation=[[0, 0, 10, 0, float("nan"), 10]]), "not a finite number"),
    (lambda a: a.update(segmentation=[[0, 0, 1e9, 0, 10, 10]]), "not a finite number"),
    (lambda a: a.update(segmentation={"counts": 5, "size": [64, 64]}), "'counts' must be a string"),
    (lambda a: a.update(image_id=[1]), "'image_id' \\[1\\] is not the id"),
    (lambda a: a.update(category_id={"a": 1}), "'category_id' \\{'a': 1\\} is not the id"),
])
def test_bad_annotation_values_are_named(tiny_root, tmp_path, change, msg):
    root = _copy(tiny_root, tmp_path)
    _edit(root, "val", lambda d: change(d["annotations"][0]))
    with pytest.raises(ValueError, match=msg):
        load_dataset(f"coco:{root}", "val", task="segmentation")


def test_n_train_and_n_val_take_a_seeded_part_of_coco_data(tiny_root, tmp_path):
    from lthfast.cli import build_parser
    from lthfast.imp.jobs import settings_from_args
    from lthfast.imp import task_detection

    root = _copy(tiny_root, tmp_path)
    s = settings_from_args(build_parser().parse_args(
        ["imp", "--data", f"coco:{root}", "--n-train", "3", "--n-val", "2", "--model",
         "fasterrcnn_resnet18_fpn", "--out", str(tmp_path / "run")]))
    *_, describe = task_detection.build(s, torch.device("cpu"))
    assert "(3 train / 2 val images)" in describe  # (were: all of them, silently)
    ds = load_dataset(f"coco:{root}", "train", task="detection")
    ids = list(ds.ids)
    part = ds.subset(3, 0).ids
    assert len(part) == 3 and set(part) <= set(ids) and part == sorted(part)
    assert load_dataset(f"coco:{root}", "train", task="detection").subset(3, 0).ids == part
    # only the images of the part must be there; the report's category counts need none
    from lthfast.detection.data import run_split
    info = {i["id"]: i for i in json.loads((root / "annotations" / "instances_train.json")
                                            .read_text())["images"]}
    for i in set(ids) - set(part):
        (root / "train" / info[i]["file_name"]).unlink()
    assert run_split(s, "train").ids == part
    for i in part:
        (root / "train" / info[i]["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match="3 of its images"):
        run_split(s, "train")
    assert sum(run_split(s, "train", check_images=False).category_counts().values()) > 0


def test_empty_coco_path_is_an_error():
    with pytest.raises(ValueError, match="has no path"):
        load_dataset("coco:", "train", task="detection")


def test_a_too_small_image_size_names_the_flag(tmp_path, capsys):
    from lthfast.cli import main
    assert main(["imp", "--image-size", "16", "--iters", "1", "--quiet", "--out",
                 str(tmp_path / "run")]) == 2
    assert "--image-size 16: detection models and the shapes data need 32 or more" in \
        capsys.readouterr().err


def test_missing_pycocotools_is_one_line_saying_what_to_install(tmp_path, capsys, monkeypatch):
    """The detection modules re-raised a plain ImportError: the CLI printed a traceback."""
    import sys
    from lthfast.cli import main
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path / "data"))
    assert main(["imp", "--iters", "1", "--n-train", "4", "--n-val", "2", "--quiet",
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "needs pycocotools, which is not installed; install it with: pip install pycocotools" in err
    assert "Traceback" not in err
