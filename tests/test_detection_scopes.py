import pytest

pytest.importorskip("torchvision")

from torch import nn  # noqa: E402

from lthfast.detection import PRESETS, SCOPES, build_model, prunable_names, scope_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_MODELS = [
    ("fasterrcnn_resnet18_fpn", "detection"),
    ("maskrcnn_resnet18_fpn", "segmentation"),
    ("keypointrcnn_resnet18_fpn", "keypoints"),
    ("retinanet_resnet50_fpn", "detection"),
    ("fcos_resnet50_fpn", "detection"),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "detection"),
]
PREDICTORS = ("rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight",
              "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
              "roi_heads.mask_predictor.mask_fcn_logits.weight",
              "roi_heads.keypoint_predictor.kps_score_lowres.weight",
              "head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight",
              "head.regression_head.bbox_ctrness.weight")

_cache = {}


def _model(name, task):
    if name not in _cache:
        _cache[name] = build_model(name, task=task, num_classes=3, verbose=False)
    return _cache[name]


@pytest.mark.parametrize("name,task", FAMILY_MODELS)
def test_scopes_and_presets(name, task):
    model = _model(name, task)
    params = dict(model.named_parameters())
    layers = [f"{n}.weight" for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    all_names = prunable_names(model, "all")
    assert all_names == layers and set(all_names) <= set(params)
    order = {n: i for i, n in enumerate(all_names)}

    body = prunable_names(model, "backbone")
    assert body and all(n.startswith("backbone.body.") for n in body)
    assert [n for n in all_names if n.startswith("backbone.body.")] == body

    paper = prunable_names(model, "paper")
    assert sorted(paper, key=order.get) == paper
    assert body[0] not in paper  # first conv
    assert not any(".downsample." in n for n in paper)
    assert not set(PREDICTORS) & set(paper)
    present_predictors = set(PREDICTORS) & set(all_names)
    assert present_predictors
    excluded = set(all_names) - set(paper)
    assert excluded == {body[0]} | present_predictors | {n for n in all_names if ".downsample." in n}

    fpn = prunable_names(model, "fpn")
    assert prunable_names(model, "fpn+backbone") == [n for n in all_names if n in set(fpn) | set(body)]
    if task != "detection" or name.startswith("fasterrcnn"):
        for scope in ("rpn", "roi_heads", "box_head"):
            assert prunable_names(model, scope)
        with pytest.raises(ValueError, match="scopes it has"):
            prunable_names(model, "head")
    else:
        assert prunable_names(model, "head")
        with pytest.raises(ValueError, match="scopes it has: .*head"):
            prunable_names(model, "rpn")
    if task == "segmentation":
        assert "roi_heads.mask_predictor.conv5_mask.weight" in paper
        assert all(".mask_" in n for n in prunable_names(model, "mask_head"))
    if task == "keypoints":
        assert len(prunable_names(model, "keypoint_head")) == 5
    for n in all_names:
        assert scope_of(n) in {"backbone", "fpn", "rpn", "roi_heads", "head"}


def test_unknown_scope_lists_valid_ones():
    model = _model("fasterrcnn_resnet18_fpn", "detection")
    with pytest.raises(ValueError, match="valid scopes and presets: .*backbone.*paper"):
        prunable_names(model, "neck")
    with pytest.raises(TypeError):
        prunable_names(model, None)


def test_scope_of():
    assert scope_of("backbone.body.layer1.0.conv1.weight") == "backbone"
    assert scope_of("backbone.fpn.inner_blocks.0.0.weight") == "fpn"
    assert scope_of("rpn.head.conv.0.0.weight") == "rpn"
    assert scope_of("roi_heads.box_head.fc6.weight") == "roi_heads"
    assert scope_of("head.classification_head.conv.0.0.weight") == "head"
    assert scope_of("fc.weight") == "other"
    assert set(PRESETS) == {"paper", "backbone", "all"} and "all" in SCOPES


def test_describe():
    from lthfast.detection import describe
    assert "first conv" in describe("paper")
    assert describe("fpn+rpn") == "layers under backbone.fpn., rpn."
    with pytest.raises(ValueError, match="unknown prune scope"):
        describe("neck")
