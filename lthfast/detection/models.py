"""Detection models by name: torchvision's `fasterrcnn_*`, `maskrcnn_*`, `keypointrcnn_*`,
`retinanet_*`, `fcos_*` (random init, or local weight files), and small resnet18-FPN
detectors (`*_resnet18_fpn`) that train on a 2-core CPU for the built-in demo."""
from __future__ import annotations

import inspect
import warnings

from torch import nn

from lthfast.detection.data import check_task
from lthfast.detection.weights import load_backbone_weights, load_detection_weights, read_state_dict

FAMILIES = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")
#: Which model families can be trained on which task (targets they need).
TASK_FAMILIES = {"detection": ("fasterrcnn", "retinanet", "fcos"),
                 "segmentation": ("maskrcnn",), "keypoints": ("keypointrcnn",)}
SMALL_MODELS = ("fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn", "keypointrcnn_resnet18_fpn")
#: The small default detector of every task.
DEFAULT_MODELS = {"detection": "fasterrcnn_resnet18_fpn", "segmentation": "maskrcnn_resnet18_fpn",
                  "keypoints": "keypointrcnn_resnet18_fpn"}


def family_of(name: str) -> str:
    fam = name.split("_", 1)[0]
    if fam not in FAMILIES:
        raise ValueError(f"{name!r} is not a detection model of a supported family "
                         f"({', '.join(f + '_*' for f in FAMILIES)})")
    return fam


def model_names() -> list[str]:
    """Every name `build_model` accepts."""
    import torchvision
    tv = [n for n in torchvision.models.list_models(module=torchvision.models.detection)
          if n.split("_", 1)[0] in FAMILIES]
    return sorted(set(tv) | set(SMALL_MODELS))


def check_model_name(name, task: str) -> None:
    """ValueError listing the valid names unless `name` is a detection model for `task`
    (checked before anything slow, e.g. generating the data, is done)."""
    check_task(task)
    if not isinstance(name, str) or name not in model_names():
        import difflib
        close = difflib.get_close_matches(str(name), model_names(), n=3)
        raise ValueError(f"unknown detection model {name!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; valid names: {', '.join(model_names())}")
    if family_of(name) not in TASK_FAMILIES[task]:
        ok = [n for n in model_names() if family_of(n) in TASK_FAMILIES[task]]
        raise ValueError(f"model {name!r} does not fit task {task!r}; models for {task}: {', '.join(ok)}")


def _anchor_generator(sizes=(8, 16, 32, 64, 128)):
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))


def _resnet18_fpn_backbone(pretrained: bool, trainable_layers: int | None, fpn_channels: int):
    """resnet18 + FPN (P2-P5 + max-pool P6). BatchNorm from scratch; frozen BN and 3
    trainable stages when starting from pre-trained weights (as torchvision does)."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for n, p in body.named_parameters():
        if not any(n.startswith(t) for t in train):
            p.requires_grad_(False)
    return BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                           [64, 128, 256, 512], fpn_channels)


def _small_model(name: str, num_classes: int, image_size: int, pretrained: bool, *,
                 trainable_layers=None, fpn_channels: int = 64, representation_size: int = 256,
                 num_keypoints: int = 4, **kw):
    from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    backbone = _resnet18_fpn_backbone(pretrained, trainable_layers, fpn_channels)
    c = fpn_channels
    # Fewer proposals / sampled RoIs than the COCO defaults: 128 px images have few objects.
    opts = dict(min_size=image_size, max_size=image_size, rpn_anchor_generator=_anchor_generator(),
                rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
                box_batch_size_per_image=128,
                box_head=TwoMLPHead(c * 7 * 7, representation_size))
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    opts["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
    opts.update(kw)
    if name.startswith("fasterrcnn"):
        return FasterRCNN(backbone, **opts)
    if name.startswith("maskrcnn"):
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
        return MaskRCNN(backbone, mask_head=MaskRCNNHeads(c, [c] * 4, 1),
                        mask_predictor=MaskRCNNPredictor(c, c, num_classes), **opts)
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
    return KeypointRCNN(backbone, keypoint_head=KeypointRCNNHeads(c, [c] * 4),
                        keypoint_predictor=KeypointRCNNPredictor(c, num_keypoints), **opts)


def build_model(name: str, *, task: str, num_classes: int, weights=None, backbone_weights=None,
                image_size: int | None = None, verbose: bool = True, **kw) -> nn.Module:
    """Detection model `name` for `task` with `num_classes` (including background).

    Random init, then `weights`: a local torchvision detection checkpoint (a state_dict, or a
    dict with a "model"/"state_dict" entry) -- layers whose shape differs (heads for another
    number of classes) keep their fresh init; or `backbone_weights`: a local ImageNet
    classifier state_dict (e.g. torchvision resnet50) mapped onto `backbone.body.*`
    (torchvision's name `weights_backbone` is taken too). What was
    loaded, re-initialised and left unmapped is printed (`verbose`) and kept in
    `model.lthfast_weights_report`. A torchvision weights name ("DEFAULT", "COCO_V1") is
    downloaded when the machine has network, else one error says to pass a local file.
    `image_size` sets the transform's min/max size (the small models default to 128).
    `kw` go to the torchvision builder / model class (e.g. `num_keypoints`, `fpn_channels`,
    `box_detections_per_img`). `trainable_layers` (torchvision's `trainable_backbone_layers`,
    either name) is how many backbone stages train when starting from pre-trained weights
    (default 3, with frozen BatchNorm except in the `*_v2` models); without `weights` /
    `backbone_weights` it has no effect, as in torchvision: every layer trains and a
    UserWarning names the value (a value out of range is an error either way).
    """
    check_model_name(name, task)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + classes), got {num_classes!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 32):
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if "weights_backbone" in kw:  # torchvision's name for it (dropped silently before)
        alias = kw.pop("weights_backbone")
        if backbone_weights is not None and alias is not None and alias is not backbone_weights:
            raise ValueError("backbone_weights and weights_backbone (torchvision's name for the "
                             "same argument) are both given; pass one")
        backbone_weights = alias if backbone_weights is None else backbone_weights
    pretrained = weights is not None or backbone_weights is not None
    # read (or download) the weights before building: a bad file fails fast
    files = {}
    if weights is not None:
        files["weights"] = read_state_dict(weights, name=name, backbone=False)
    if backbone_weights is not None:
        files["backbone_weights"] = read_state_dict(backbone_weights, name=name, backbone=True)
    torch_kw = dict(kw)
    trainable = _trainable_layers_arg(torch_kw)
    if name in SMALL_MODELS:
        model = _small_model(name, num_classes, image_size or 128, pretrained,
                             trainable_layers=trainable if pretrained else None, **torch_kw)
    else:
        import torchvision
        builder = torchvision.models.get_model_builder(name)
        if image_size is not None:
            torch_kw.setdefault("min_size", image_size)
            torch_kw.setdefault("max_size", image_size)
        if "weights_backbone" in inspect.signature(builder).parameters:
            torch_kw["weights_backbone"] = None
        model = builder(weights=None, num_classes=num_classes, **torch_kw)
        if pretrained:  # as torchvision does for pre-trained backbones: frozen BN, 3 stages train
            if not name.endswith("_v2"):  # the v2 builders keep trainable BatchNorm2d (body and FPN)
                _freeze_batchnorm(model.backbone)
            _freeze_resnet_stages(model.backbone.body, 3 if trainable is None else trainable)
    if trainable is not None and not pretrained:
        # torchvision (_validate_trainable_layers): no effect without pre-trained weights,
        # every layer trains; it warns. An out-of-range value is still an error here.
        top = _max_trainable_layers(model.backbone.body)
        if trainable > top:
            raise ValueError(f"trainable_layers must be in 0..{top} for {name}, got {trainable}")
        warnings.warn(f"trainable_layers={trainable} has no effect on {name} without pre-trained "
                      f"weights (weights= or backbone_weights=): all {top} backbone stages train "
                      "from the random init, as torchvision does with trainable_backbone_layers "
                      "and no weights", UserWarning, stacklevel=2)
    report = {}
    if "weights" in files:
        sd, src = files["weights"]
        report["weights"] = load_detection_weights(model, sd, name=name, source=src)
    if "backbone_weights" in files:
        sd, src = files["backbone_weights"]
        report["backbone_weights"] = load_backbone_weights(model, sd, name=name, source=src)
    model.lthfast_weights_report = report
    if verbose:
        for rep in report.values():
            print(rep.summary())
    return model


def _trainable_layers_arg(kw: dict) -> int | None:
    """Pops `trainable_layers` (or torchvision's name `trainable_backbone_layers`) from `kw`."""
    a = kw.pop("trainable_layers", None)
    b = kw.pop("trainable_backbone_layers", None)
    if a is not None and b is not None and a != b:
        raise ValueError(f"trainable_layers={a!r} and trainable_backbone_layers={b!r} disagree; "
                         "pass one of them")
    value = a if a is not None else b
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"trainable_layers must be an int >= 0, got {value!r}")
    return value


def _max_trainable_layers(body: nn.Module) -> int:
    """The largest trainable_layers of a detection body: 5 for ResNet, the number of
    stages for MobileNet (torchvision's counts)."""
    children = list(body.children())
    if "layer4" in dict(body.named_children()):
        return 5
    return 2 + sum(1 for b in children if getattr(b, "_is_cn", False))


def _freeze_resnet_stages(body: nn.Module, trainable_layers: int) -> None:
    if not isinstance(trainable_layers, int) or trainable_layers < 0:
        raise ValueError(f"trainable_layers must be an int >= 0, got {trainable_layers!r}")
    names = [n for n, _ in body.named_children()]
    if "layer4" not in names:  # MobileNet body (features.0 ... features.16)
        _freeze_mobilenet_stages(body, trainable_layers)
        return
    if trainable_layers > 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for n, p in body.named_parameters():
        if not any(n.startswith(t) for t in train):
            p.requires_grad_(False)


def _freeze_mobilenet_stages(body: nn.Module, trainable_layers: int) -> None:
    """torchvision's rule for MobileNet detection bodies: stages start at block 0, every
    strided (`_is_cn`) block and the last block; the last `trainable_layers` stages train.
    (Without it a pre-trained MobileNet body trained all its layers, unlike torchvision.)"""
    blocks = list(body.children())
    stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    if trainable_layers > len(stages):
        raise ValueError(f"trainable_layers must be in 0..{len(stages)} for this MobileNet body, "
                         f"got {trainable_layers}")
    freeze_before = len(blocks) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
    for b in blocks[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under `module` by FrozenBatchNorm2d (same statistics)."""
    from torchvision.ops import FrozenBatchNorm2d
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for k in ("weight", "bias"):
                getattr(frozen, k).copy_(getattr(child, k).detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def build_model_for(name: str, dataset, **kw) -> nn.Module:
    """`build_model` with task, num_classes (and num_keypoints) taken from a `CocoDataset`."""
    kw.setdefault("task", dataset.task)
    kw.setdefault("num_classes", dataset.num_classes)
    if dataset.task == "keypoints":
        kw.setdefault("num_keypoints", dataset.num_keypoints)
    return build_model(name, **kw)
