"""Follow-ups of the last review: trainable_layers without pre-trained weights (warns and
trains every layer, as torchvision does), malformed COCO annotation files (one clear error
naming the file and the entry, not a pycocotools KeyError / IndexError), and one default
run directory for every DDP rank (rank 0 decides)."""
from __future__ import annotations

import copy
import json
import os
import socket
import warnings

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from lthfast import detection as det  # noqa: E402
from lthfast.cli import main  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------- 1. trainable_layers

@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"])
@pytest.mark.parametrize("key", ["trainable_layers", "trainable_backbone_layers"])
def test_trainable_layers_without_weights_warns_and_trains_everything(name, key):
    # Regression: without weights the value was silently ignored (torchvision models) or
    # froze randomly initialised stages (the small models); torchvision warns, trains all.
    with pytest.warns(UserWarning, match=r"trainable_layers=2 has no effect .*pre-trained"):
        m = det.build_model(name, task="detection", num_classes=3, image_size=64, verbose=False,
                            **{key: 2})
    assert all(p.requires_grad for p in m.backbone.body.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the value is left out
        det.build_model(name, task="detection", num_classes=3, image_size=64, verbose=False)


def test_trainable_layers_with_backbone_weights_still_freezes(tmp_path):
    from torchvision.models import resnet18
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = det.build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3,
                            image_size=64, backbone_weights=str(path), trainable_layers=1,
                            verbose=False)
    trains = {n.split(".")[0] for n, p in m.backbone.body.named_parameters() if p.requires_grad}
    assert trains == {"layer4"}


@pytest.mark.parametrize("kw, message", [
    (dict(trainable_layers=9), r"0\.\.6 for fasterrcnn_mobilenet"),
    (dict(trainable_layers=-1), r"int >= 0, got -1"),
    (dict(trainable_layers=True), r"int >= 0, got True"),
    (dict(trainable_layers=2, trainable_backbone_layers=3), "disagree"),
])
def test_bad_trainable_layers_are_errors_even_without_weights(kw, message):
    with pytest.raises(ValueError, match=message):
        det.build_model("fasterrcnn_mobilenet_v3_large_320_fpn", task="detection", num_classes=3,
                        image_size=64, verbose=False, **kw)


def test_imp_help_says_what_pretrained_weights_freeze(capsys):
    assert main(["imp", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the last 3 train" in out and "every layer trains from random init" in out
    assert "trainable_layers=K" in out


# ---------------------------------------------------------------- 2. malformed COCO files

def _valid_doc():
    kp = [2, 2, 2, 10, 10, 2]
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                   {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
                   {"id": 3, "file_name": "c.png", "width": 32, "height": 32}],  # no annotation
        "categories": [{"id": 1, "name": "thing", "keypoints": ["p", "q"], "skeleton": []}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400,
             "iscrowd": 0, "segmentation": [[1, 1, 21, 1, 21, 21, 1, 21]], "keypoints": kp,
             "num_keypoints": 2},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [4, 4, 10, 12], "area": 120,
             "iscrowd": 0, "segmentation": [[4, 4, 14, 4, 14, 16, 4, 16]], "keypoints": kp,
             "num_keypoints": 2}]}


def _write_root(tmp_path, doc):
    from PIL import Image
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(exist_ok=True)
    (root / "train2017").mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        for split in ("val2017", "train2017"):
            Image.new("RGB", (32, 32), (10, 20, 30)).save(root / split / name)
    for split in ("val2017", "train2017"):
        for prefix in ("instances", "person_keypoints"):
            (root / "annotations" / f"{prefix}_{split}.json").write_text(json.dumps(doc))
    return root


def _ann(doc, **kw):
    doc["annotations"][0].update(kw)
    return doc


def _drop(doc, section, i, key):
    del doc[section][i][key]
    return doc


BAD = {
    "not a dict": (lambda d: [d], "detection", r"not COCO format \(a list"),
    "no images key": (lambda d: {k: v for k, v in d.items() if k != "images"}, "detection",
                      r"missing \['images'\]"),
    "no categories key": (lambda d: {k: v for k, v in d.items() if k != "categories"}, "detection",
                          r"missing \['categories'\]"),
    "annotations not a list": (lambda d: {**d, "annotations": {}}, "detection",
                               r"'annotations' must be a list"),
    "zero images": (lambda d: {**d, "images": [], "annotations": []}, "detection", "has no images"),
    "bbox missing": (lambda d: _drop(d, "annotations", 0, "bbox"), "detection",
                     r"annotations\[0\] \(id 1\): 'bbox' must be 4 finite numbers"),
    "bbox of 3": (lambda d: _ann(d, bbox=[1, 2, 3]), "detection", r"annotations\[0\].*'bbox'"),
    "bbox NaN": (lambda d: _ann(d, bbox=[1, 2, float("nan"), 3]), "detection", r"'bbox' must be"),
    "negative width": (lambda d: _ann(d, bbox=[1, 1, -5, 4]), "detection",
                       r"annotations\[0\] \(id 1\): 'bbox' \[1, 1, -5, 4\] has a negative width"),
    "unknown image": (lambda d: _ann(d, image_id=99), "detection",
                      r"annotations\[0\] \(id 1\): 'image_id' 99 is not the id of an entry of 'images'"),
    "unknown category": (lambda d: _ann(d, category_id=7), "detection",
                         r"'category_id' 7 is not the id of an entry of 'categories' \(ids: \[1\]\)"),
    "no area": (lambda d: _drop(d, "annotations", 1, "area"), "detection",
                r"annotations\[1\] \(id 2\): 'area' must be a number"),
    "no annotation id": (lambda d: _drop(d, "annotations", 1, "id"), "detection",
                         r"annotations\[1\]: no 'id'"),
    "duplicate annotation id": (lambda d: _ann(d, id=2), "detection", "duplicate annotation id 2"),
    "bad iscrowd": (lambda d: _ann(d, iscrowd="yes"), "detection", "'iscrowd' must be 0 or 1"),
    "image without file_name": (lambda d: _drop(d, "images", 1, "file_name"), "detection",
                                r"images\[1\] \(id 2\): 'file_name'"),
    "image with string id": (lambda d: {**d, "images": d["images"] + [{"id": "x", "file_name": "a.png"}]},
                             "detection", r"images\[3\] \(id 'x'\): 'id' must be an int"),
    "category without name": (lambda d: _drop(d, "categories", 0, "name"), "detection",
                              r"categories\[0\] \(id 1\): 'name' must be a string"),
    "keypoints too short": (lambda d: _ann(d, keypoints=[1, 2, 2]), "keypoints",
                            r"annotations\[0\] \(id 1\): 'keypoints' must be a list of 6 numbers "
                            r"\(2 keypoints x \(x, y, visibility\)\), got 3 values"),
    "keypoints missing": (lambda d: _drop(d, "annotations", 1, "keypoints"), "keypoints",
                          r"annotations\[1\] \(id 2\): 'keypoints' must be .* got none"),
    "num_keypoints missing": (lambda d: _drop(d, "annotations", 1, "num_keypoints"), "keypoints",
                              r"'num_keypoints' must be an int"),
    "oks_sigmas wrong length": (lambda d: (d["categories"][0].update(oks_sigmas=[0.1]), d)[1],
                                "keypoints", r"'oks_sigmas' must be 2 positive numbers"),
    "segmentation missing": (lambda d: _drop(d, "annotations", 0, "segmentation"), "segmentation",
                             r"annotations\[0\] \(id 1\): no 'segmentation'"),
    "segmentation empty": (lambda d: _ann(d, segmentation=[]), "segmentation",
                           r"'segmentation' must be polygons"),
    "polygon of 2 points": (lambda d: _ann(d, segmentation=[[1, 1, 5, 5]]), "segmentation",
                            r"polygon \[1, 1, 5, 5\] must be a flat list of an even number >= 6"),
    "RLE without size": (lambda d: _ann(d, segmentation={"counts": "abc"}), "segmentation",
                         r"RLE 'segmentation' needs 'counts' and 'size'"),
    "image without height": (lambda d: _drop(d, "images", 0, "height"), "segmentation",
                             r"images\[0\] \(id 1\): no 'height'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_annotation_file_names_file_and_entry(tmp_path, case):
    # Regression: these gave KeyError / IndexError / TypeError / AssertionError tracebacks
    # from pycocotools (some only at evaluation, after a round of training).
    change, task, message = BAD[case]
    root = _write_root(tmp_path, change(copy.deepcopy(_valid_doc())))
    with pytest.raises(ValueError) as info:
        det.load_dataset(f"coco:{root}", "val", task=task)
    text = str(info.value)
    assert os.path.join("annotations", "") in text and "_val2017.json" in text, text
    assert __import__("re").search(message, text), text


def test_many_bad_annotations_are_counted_not_all_listed(tmp_path):
    doc = _valid_doc()
    doc["annotations"] = [dict(doc["annotations"][0], id=i, image_id=50 + i) for i in range(1, 21)]
    root = _write_root(tmp_path, doc)
    with pytest.raises(ValueError, match=r"\(20 problems\).*; and 15 more$"):
        det.load_dataset(f"coco:{root}", "val", task="detection")


def test_valid_file_loads_and_images_without_annotations_follow_the_split(tmp_path):
    # torchvision's reference scripts drop images without usable boxes for training; the
    # val split keeps them (their detections are false positives in COCO AP).
    root = _write_root(tmp_path, _valid_doc())
    for task in ("detection", "segmentation", "keypoints"):
        assert det.load_dataset(f"coco:{root}", "val", task=task).ids == [1, 2, 3]
        train = det.load_dataset(f"coco:{root}", "train", task=task)
        assert train.ids == [1, 2]
        image, target = train[0]
        assert image.shape == (3, 32, 32) and len(target["boxes"]) == 1
    doc = _valid_doc()
    doc["annotations"] = []
    root = _write_root(tmp_path / "empty", doc)
    assert len(det.load_dataset(f"coco:{root}", "val", task="detection")) == 3
    with pytest.raises(ValueError, match=r"none of its 3 images has a usable annotation.*nothing to train on"):
        det.load_dataset(f"coco:{root}", "train", task="detection")


def test_missing_iscrowd_means_not_crowd_for_loader_and_cocoeval(tmp_path):
    # The loader treated a missing iscrowd as 0; COCOeval raised KeyError('iscrowd').
    doc = _valid_doc()
    for a in doc["annotations"]:
        del a["iscrowd"]
    root = _write_root(tmp_path, doc)
    ds = det.load_dataset(f"coco:{root}", "val", task="detection")
    assert all(a["iscrowd"] == 0 for a in ds.coco.anns.values())

    class Truth(torch.nn.Module):  # predicts the ground truth
        def forward(self, images):
            i0, self.i = getattr(self, "i", 0), getattr(self, "i", 0) + len(images)
            outs = []
            for k in range(i0, i0 + len(images)):
                t = ds[k][1]
                outs.append({"boxes": t["boxes"], "labels": t["labels"],
                             "scores": torch.ones(len(t["boxes"]))})
            return outs
    res = det.evaluate(Truth(), ds, task="detection", device="cpu", batch_size=2)
    assert res["bbox_AP"] == pytest.approx(100.0)


def test_imp_cli_bad_annotation_file_is_one_line_error(tmp_path, capsys):
    root = _write_root(tmp_path, _ann(_valid_doc(), bbox=[1, 1, -5, 4]))
    code = main(["imp", "--data", f"coco:{root}", "--device", "cpu", "--quiet", "--iters", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "negative width" in err and "instances_train2017.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 3. DDP default --out

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_settings(rank, world, port, cwd, results):
    """One torchrun-like process: env:// rendezvous, a clock that differs per rank."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    os.chdir(cwd)
    import time

    import torch.distributed as dist

    from lthfast.cli import build_parser
    from lthfast.imp import jobs
    real = time.strftime
    # each rank's clock says another second (ranks started across a second boundary)
    time.strftime = lambda fmt, *a: real(fmt, time.localtime(1_700_000_000 + 7 * rank))
    try:
        args = build_parser().parse_args(["imp", "--device", "cpu", "--task", "classification"])
        s = jobs.settings_from_args(args)
        results.put((rank, s.out, dist.is_initialized()))
    finally:
        time.strftime = real
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ddp_ranks_agree_on_the_default_run_directory(tmp_path):
    # Regression: every rank stamped its own runs/imp-...-TIMESTAMP, so ranks whose clocks
    # read different seconds disagreed on the run directory. Rank 0 now decides.
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_settings, args=(r, 2, port, str(tmp_path), results))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = dict((r, out) for r, out, _ in (results.get(timeout=10) for _ in procs))
    assert got[0] == got[1], got
    assert got[0].startswith(os.path.join("runs", "imp-classification-resnet18-"))


# ---------------------------------------------------------------- review of `lthfast imp`

@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--device", "cuda:x"], "--device 'cuda:x': use cpu, cuda or cuda:N"),
])
def test_imp_bad_values_are_named_before_anything_runs(tmp_path, argv, message, capsys):
    # Regression: --lr inf trained (AP 0) and exited 0; cuda:x reached torch.device.
    out = tmp_path / "run"
    assert main(["imp", "--task", "classification", "--device", "cpu", "--quiet",
                 "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_coco_spec_naming_a_file_says_so(tmp_path):
    f = tmp_path / "instances_val2017.json"
    f.write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        det.load_dataset(f"coco:{f}", "val", task="detection")


def test_two_gloo_processes_without_out_write_one_run_directory(tmp_path):
    # End to end, as tests/test_imp_ddp.py runs DDP: `--nproc 2` and no --out; rank 0 names
    # the folder (the process group is joined before the settings pick it).
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "lthfast", "imp", "--nproc", "2", "--task", "classification",
           "--model", "resnet18", "--image-size", "16", "--n-train", "16", "--n-val", "8",
           "--iters", "2", "--batch-size", "4", "--warmup", "1", "--device", "cpu", "--quiet",
           "--threads", "1", "--rounds", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].startswith("imp-classification-resnet18-"), runs
    cfg = json.loads((tmp_path / "runs" / runs[0] / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["settings"]["out"] == os.path.join("runs", runs[0])
    assert proc.stdout.count("run directory:") == 1


def test_batch_larger_than_the_training_set_warns(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    pytest.importorskip("pycocotools")
    from lthfast.cli import main
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path / "data"))
    argv = ["imp", "--iters", "1", "--rounds", "1", "--n-train", "2", "--n-val", "2",
            "--image-size", "64", "--batch-size", "3", "--rewind", "init", "--quiet",
            "--threads", "1", "--out", str(tmp_path / "run")]
    with pytest.warns(UserWarning, match=r"--batch-size 3 .* larger than the 2 training images"):
        assert main(argv) == 0
