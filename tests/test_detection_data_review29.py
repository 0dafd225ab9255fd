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
