"""Categories that share a name stay apart in per-category results (stop 29)."""
import json
import shutil

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from tests._detection_fixtures import tiny_root  # noqa: F401,E402
from lthfast.detection import load_dataset  # noqa: E402


def test_shared_category_names_get_their_ids(tiny_root, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_root, root)
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    first, second = data["categories"][:2]
    second["name"] = first["name"]
    path.write_text(json.dumps(data))
    ds = load_dataset(f"coco:{root}", "train", task="detection")
    names = ds.category_names
    assert names[first["id"]] == f"{first['name']} (id {first['id']})"
    assert names[second["id"]] == f"{first['name']} (id {second['id']})"
    assert len(set(names.values())) == len(names)
    counts = ds.category_counts()
    assert len(counts) == len(names)  # one count per category, none merged
    assert sum(counts.values()) == sum(1 for a in data["annotations"] if not a.get("iscrowd", 0)
                                       and a["image_id"] in set(ds.ids))


def test_keypoints_keep_the_boxes_of_persons_without_keypoints(tmp_path):
    # stop 30: a person with num_keypoints 0 was dropped from the targets (trained as
    # background); torchvision's reference keeps it, the keypoint loss skips it
    import json

    from PIL import Image

    from lthfast.detection.data import CocoDataset
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (64, 48)).save(root / "val2017" / "a.png")
    cats = [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"], "skeleton": []}]
    anns = [{"id": 1, "image_id": 100, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600.0,
             "iscrowd": 0, "num_keypoints": 2, "keypoints": [12, 12, 2, 20, 20, 1, 0, 0, 0]},
            {"id": 2, "image_id": 100, "category_id": 1, "bbox": [40, 5, 20, 25], "area": 500.0,
             "iscrowd": 0, "num_keypoints": 0, "keypoints": [0] * 9}]
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(
        {"images": [{"id": 100, "file_name": "a.png", "width": 64, "height": 48}],
         "annotations": anns, "categories": cats}))
    ds = CocoDataset(root / "annotations" / "person_keypoints_val2017.json", root / "val2017",
                     task="keypoints")
    _, target = ds[0]
    assert target["boxes"].tolist() == [[10.0, 10.0, 40.0, 30.0], [40.0, 5.0, 60.0, 30.0]]
    assert target["keypoints"].shape == (2, 3, 3) and (target["keypoints"][1] == 0).all()


def _seg_doc(seg):
    return {"images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 64}],
            "annotations": [{"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10],
                             "area": 100.0, "iscrowd": 0, "segmentation": seg}],
            "categories": [{"id": 1, "name": "thing"}]}


@pytest.mark.parametrize("seg,match", [
    ({"size": [80, 64], "counts": [5120]},
     r"annotation.*14.*RLE 'segmentation' has size \[80, 64\] but its image 'a.png' is "
     r"\[height, width\] \[64, 80\]"),
    ({"size": [64, 80], "counts": [5000, 10000]}, r"counts add up to 15000 pixels, not the 64 x 80"),
])
def test_rle_that_does_not_fit_its_image_is_refused_at_load(tmp_path, seg, match):
    # was found only when the image was read: for the val split, at evaluation after a round
    import json

    from lthfast.detection.data import _load_coco
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(_seg_doc(seg)))
    with pytest.raises(ValueError, match=match):
        _load_coco(path, "segmentation")
    path.write_text(json.dumps(_seg_doc({"size": [64, 80], "counts": [5119, 1]})))
    _load_coco(path, "segmentation")  # fits


def test_a_compressed_annotation_file_is_named(tmp_path):
    import gzip
    import json

    from lthfast.detection.data import _load_coco
    path = tmp_path / "instances_train2017.json"
    path.write_bytes(gzip.compress(json.dumps(_seg_doc(None)).encode()))
    with pytest.raises(ValueError, match=r"instances_train2017.json is not JSON text.*unpacked"):
        _load_coco(path, "detection")
