"""Review of `lthfast imp --task classification`: image folders (labels, modes, errors),
normalisation, --weights, models that need care (ViT, GoogLeNet, small inputs), top-5,
flags that classification would ignore, and ticket-transfer messages."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from lthfast.imp.classification import (ShapesClassification, build_classifier,  # noqa: E402
                                        evaluate_classifier, load_classification_data,
                                        train_classifier)
from lthfast.imp.task_classification import prunable  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's classifiers expect
IMAGENET_STD = (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(path, mode="RGB", size=(20, 16), fmt=None, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 255, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(a, "RGB").convert(mode).save(path, format=fmt)


def _tree(root, spec):
    for split, classes in spec.items():
        for c, n in classes.items():
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for j in range(n):
                _save(os.path.join(root, split, c, f"{j}.png"), seed=j)
    return f"folder:{root}"


def _load(spec, **kw):
    return load_classification_data(spec, **{"n_train": None, "n_val": None, "image_size": 16,
                                             "seed": 0, **kw})


# --- image folders -----------------------------------------------------------------------

def test_val_labels_use_the_train_class_indices(tmp_path):
    # val lacks class b: ImageFolder(val) alone numbers c as 1, the model's output 1 is b
    spec = _tree(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1, "c": 1, "b": 0}})
    train, val, classes = _load(spec)
    assert classes == ["a", "b", "c"]
    assert sorted(y for _, y in (val[i] for i in range(len(val)))) == [0, 2]


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    spec = _tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "z": 1}})
    with pytest.raises(ValueError, match=r"--data folder:.*'z'"):
        _load(spec)


def test_empty_train_class_error_names_data_and_folder(tmp_path):
    spec = _tree(tmp_path, {"train": {"a": 1, "e": 0}, "val": {"a": 1}})
    with pytest.raises(ValueError, match=r"--data folder:.*the classes e.*remove the empty"):
        _load(spec)


def test_corrupt_image_error_names_file(tmp_path):
    spec = _tree(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    bad = tmp_path / "train" / "a" / "bad.png"
    bad.write_bytes(b"not a png")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image: skipped")
    train, _, _ = _load(spec)
    assert len(train) == 2
    with pytest.raises(OSError) as e:
        [train[i] for i in range(len(train))]
    msg = str(e.value)
    assert "--data folder:" in msg and str(bad) in msg and "BufferedReader" not in msg


def test_modes_and_sizes_all_give_normalised_rgb(tmp_path):
    from torchvision import transforms as T
    root = tmp_path
    files = []
    for j, (mode, size, ext) in enumerate([("RGB", (40, 30), "png"), ("L", (20, 50), "png"),
                                           ("RGBA", (33, 33), "png"), ("P", (64, 48), "png"),
                                           ("RGB", (50, 50), "jpg")]):
        p = root / "train" / "a" / "sub" / f"{j}.{ext}"  # nested folders count for class a
        _save(str(p), mode, size, seed=j)
        files.append(p)
    _save(str(root / "val" / "a" / "0.png"))
    train, val, classes = _load(f"folder:{root}", image_size=16)
    assert classes == ["a"] and len(train) == 5
    ref = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
    for i in range(len(train)):
        x, y = train[i]
        path = train.samples[i][0]
        want = ref(Image.open(path).convert("RGB"))
        want = (want - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        assert x.shape == (3, 16, 16) and y == 0
        torch.testing.assert_close(x, want)


def test_shapes_are_normalised_like_folders():
    train, val, _ = _load("shapes", n_train=2, n_val=2)
    raw = ShapesClassification(2, size=16, seed=0)[1][0]
    want = (raw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(train[1][0], want)


def test_n_train_and_n_val_take_a_seeded_subset_of_a_folder(tmp_path):
    spec = _tree(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    train, val, _ = _load(spec, n_train=4, n_val=3)
    assert (len(train), len(val)) == (4, 3)
    again, _, _ = _load(spec, n_train=4, n_val=3)
    assert train.indices == again.indices


def test_image_size_below_8_names_the_flag():
    with pytest.raises(ValueError, match="--image-size 4"):
        _load("shapes", n_train=2, n_val=2, image_size=4)


# --- models and --weights ------------------------------------------------------------------

def test_weights_of_another_architecture_are_refused(tmp_path):
    from lthfast.detection.weights import WeightsError
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), path)
    # every resnet18 key is in a resnet34 state_dict with the same shape: it used to load
    with pytest.raises(WeightsError, match=r"--weights .*does not fit --model resnet18.*layer1\.2"):
        build_classifier("resnet18", 4, weights=str(path))


def test_weights_with_another_class_count_keep_a_fresh_head(tmp_path, capsys):
    src = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save({"model": src.state_dict()}, path)
    model = build_classifier("resnet18", 3, weights=str(path), image_size=32)
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight)
    torch.testing.assert_close(model.bn1.running_var, src.bn1.running_var)
    assert model.fc.weight.shape == (3, 512)
    assert "3 classes" in capsys.readouterr().out


def test_missing_weights_file_names_the_flag(tmp_path):
    from lthfast.detection.weights import WeightsError
    with pytest.raises(WeightsError, match="--weights .*nope.pth"):
        build_classifier("resnet18", 3, weights=str(tmp_path / "nope.pth"))


def test_vit_is_built_for_the_image_size():
    model = build_classifier("vit_b_32", 4, image_size=32)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="--image-size 40: vit_b_32 needs a multiple"):
        build_classifier("vit_b_32", 4, image_size=40)


def test_too_small_images_fail_at_build_naming_the_flag():
    with pytest.raises(ValueError, match="--model alexnet does not run on --image-size 32"):
        build_classifier("alexnet", 4, image_size=32)


def test_googlenet_trains_on_logits():
    torch.manual_seed(0)
    model = build_classifier("googlenet", 4, image_size=32)
    data = ShapesClassification(4, size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train_classifier(model, data, opt, iters=1, batch_size=2, lr=0.01)
    assert out["iters"] == 1 and out["final_loss"] == out["final_loss"] == out["mean_loss"]


def test_batch_size_one_with_batchnorm_names_the_flag():
    model = torchvision.models.resnet18(num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="--batch-size 1"):
        train_classifier(model, ShapesClassification(2, size=16), opt, iters=1, batch_size=1, lr=0.01)


def test_amp_needs_cuda():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="--amp needs a CUDA device"):
        train_classifier(model, ShapesClassification(2, size=8), opt, iters=1, batch_size=2,
                         lr=0.01, amp=True)


# --- metrics ----------------------------------------------------------------------------

class _Fixed(nn.Module):
    """Logits that rank class (label + 3) % n first and the label itself 2nd; a BatchNorm
    to check eval mode."""

    def __init__(self, n):
        super().__init__()
        self.n, self.bn = n, nn.BatchNorm1d(1)

    def forward(self, x):
        assert not self.training, "evaluation must run in eval mode"
        label = x[:, 0, 0, 0].long()
        logits = torch.zeros(len(x), self.n) + self.bn(torch.zeros(len(x), 1))
        logits[torch.arange(len(x)), label] = 1.0
        logits[torch.arange(len(x)), (label + 3) % self.n] = 2.0
        return logits


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return 2 * self.n

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i % self.n)), i % self.n


@pytest.mark.parametrize("n", [4, 5, 6])
def test_top5_only_with_more_than_5_classes(n):
    model = _Fixed(n).train()
    res = evaluate_classifier(model, _Labelled(n), batch_size=3)
    assert res["top1"] == 0.0
    if n > 5:
        assert res["top5"] == 100.0
    else:
        assert "top5" not in res  # 100% by definition: not a measurement
    assert model.training  # the caller's mode is restored


# --- pruned set -------------------------------------------------------------------------

def test_attention_projections_are_pruned_and_features_skips_the_head():
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1,
                                               num_heads=2, hidden_dim=8, mlp_dim=8,
                                               num_classes=3)
    names = prunable(vit, "all")
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in names
    assert "heads.head.weight" in names and "heads.head.weight" not in prunable(vit, "features")
    sq = torchvision.models.squeezenet1_1(num_classes=3)  # its classifier is a Conv2d
    assert "classifier.1.weight" in prunable(sq, "all")
    assert "classifier.1.weight" not in prunable(sq, "features")


# --- flags classification would ignore (whole CLI, stops before training) --------------------

@pytest.mark.parametrize("extra, message", [
    (["--backbone-weights", "{w}", "--rewind", "pretrained"], "--backbone-weights"),
    (["--lr-steps", "1"], "--lr-steps 1"),
    (["--scope", "backbone"], "--scope backbone"),
])
def test_detection_only_flags_are_refused(tmp_path, capsys, extra, message):
    from lthfast.cli import main
    w = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), w)
    argv = ["imp", "--task", "classification", "--iters", "2", "--rounds", "1", "--n-train", "4",
            "--n-val", "2", "--image-size", "16", "--quiet", "--threads", "1", "--device", "cpu",
            "--out", str(tmp_path / "run")] + [a.format(w=w) for a in extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- ticket transfer --------------------------------------------------------------------

def test_transfer_shape_mismatch_error_is_short():
    from lthfast.ticket import Ticket
    from lthfast.transfer import transfer_ticket

    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.body = nn.Sequential(*[nn.Conv2d(4, 5, 1, bias=False) for _ in range(30)])

    ticket = Ticket({f"features.{i}.weight": torch.ones(4, 4, 1, 1, dtype=torch.bool)
                     for i in range(30)})
    model = Det()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatch in 30 layers") as e:
        transfer_ticket(ticket, model)
    assert "and 26 more" in str(e.value) and len(str(e.value)) < 1000
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_imp_table_shows_top5_when_the_run_has_it():
    import io
    from lthfast.cli.imp import _print_table
    rows = [{"round": 0, "sparsity": 0.0, "top1": 40.0, "top5": 90.0},
            {"round": 1, "sparsity": 0.2, "top1": 41.0, "top5": 91.0}]
    buf = io.StringIO()
    _print_table(rows, "classification", file=buf)
    assert "top5" in buf.getvalue() and "91.0" in buf.getvalue()
    buf = io.StringIO()
    _print_table([{k: v for k, v in r.items() if k != "top5"} for r in rows], "classification", file=buf)
    assert "top5" not in buf.getvalue()


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    # stop 30: convert("RGB") clipped every value above 255: a ramp came out nearly white
    import numpy as np
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (16, 1))
    for split in ("train", "val"):
        os.makedirs(tmp_path / split / "a")
        Image.fromarray(ramp).save(tmp_path / split / "a" / "0.png")  # mode I;16
    train, _, _ = _load(f"folder:{tmp_path}", image_size=16)
    x, _ = train[0]
    grey = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
    # (the centre crop keeps the middle half of the ramp: 0.26 .. 0.74)
    assert 0.45 < float(grey.mean()) < 0.55 and float(grey.min()) < 0.3 and float(grey.max()) < 0.8


def test_folder_data_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _tree(tmp_path / "data", {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    _, _, classes = _load("folder:~/data")
    assert classes == ["a", "b"]
