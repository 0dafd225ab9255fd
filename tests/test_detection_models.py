import urllib.error

import pytest
import torch

pytest.importorskip("torchvision")

from lthfast.detection import DEFAULT_MODELS, WeightsError, build_model, model_names  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("task,name", sorted(DEFAULT_MODELS.items()))
def test_small_default_models_forward(task, name):
    nc = 2 if task == "keypoints" else 5
    model = build_model(name, task=task, num_classes=nc, image_size=64, verbose=False)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) >= {"boxes", "scores", "labels"}
    assert model.transform.min_size == (64,) and model.transform.max_size == 64


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown detection model 'fasterrcnn_resnet18'.*did you mean"):
        build_model("fasterrcnn_resnet18", task="detection", num_classes=3)
    with pytest.raises(ValueError, match="does not fit task 'segmentation'.*maskrcnn_resnet18_fpn"):
        build_model("fasterrcnn_resnet18_fpn", task="segmentation", num_classes=3)
    with pytest.raises(ValueError, match="valid tasks"):
        build_model("fasterrcnn_resnet18_fpn", task="classification", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=1)
    assert "retinanet_resnet50_fpn" in model_names() and "fasterrcnn_resnet18_fpn" in model_names()


def test_detection_weights_file_reinitialises_mismatched_heads(tmp_path, capsys):
    src = build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=5, verbose=False)
    path = tmp_path / "det.pth"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)  # torchvision references layout
    dst = build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, weights=str(path))
    rep = dst.lthfast_weights_report["weights"]
    assert sorted(rep.reinitialised) == ["roi_heads.box_predictor.bbox_pred.bias",
                                         "roi_heads.box_predictor.bbox_pred.weight",
                                         "roi_heads.box_predictor.cls_score.bias",
                                         "roi_heads.box_predictor.cls_score.weight"]
    assert "re-initialised" in capsys.readouterr().out
    s, d = src.state_dict(), dst.state_dict()
    for k in d:
        if k in rep.reinitialised:
            assert not _same(s[k], d[k])
        else:
            assert _same(s[k], d[k]), k
    assert dst.backbone.body.bn1.__class__.__name__ == "FrozenBatchNorm2d"


def test_backbone_weights_map_classifier_onto_body(tmp_path):
    import torchvision
    clf = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        clf.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(clf.state_dict(), path)
    model = build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3,
                        backbone_weights=path, verbose=False)
    rep = model.lthfast_weights_report["backbone_weights"]
    assert sorted(rep.unmapped) == ["fc.bias", "fc.weight"] and not rep.reinitialised and not rep.missing
    body = model.backbone.body.state_dict()
    for k, v in clf.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert _same(body[k], v), k
    # pre-trained backbone: frozen BN, only the 3 last stages train (torchvision's default)
    assert not model.backbone.body.conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_backbone_weights_of_another_architecture(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="no key of .* maps onto backbone.body"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, backbone_weights=path)


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3,
                    weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, weights=bad)
    with pytest.raises(WeightsError, match="neither an existing file nor a torchvision weights name"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3, weights="DEFAULT")


def test_download_without_network_says_what_to_pass(monkeypatch, tmp_path):
    import torchvision.models._api as tv_api

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights either
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="--weights PATH.*--backbone-weights PATH"):
        build_model("fasterrcnn_resnet50_fpn", task="detection", num_classes=91, weights="DEFAULT")
    with pytest.raises(WeightsError, match="cannot download .*ResNet18"):
        build_model("fasterrcnn_resnet18_fpn", task="detection", num_classes=3,
                    backbone_weights="DEFAULT")
