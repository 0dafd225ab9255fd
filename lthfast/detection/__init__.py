"""torchvision detection integration: models by name (+ local weights), prune scopes and
presets, the synthetic `shapes` dataset and the COCO loader, training, COCO evaluation.

    from lthfast import detection as det
    train_ds = det.load_dataset("shapes", "train", task="detection")
    model = det.build_model(det.DEFAULT_MODELS["detection"], task="detection",
                            num_classes=train_ds.num_classes)
    names = det.prunable_names(model, "paper")
    det.train(model, train_ds, iters=100, batch_size=4, lr=0.02, warmup_iters=20)
    det.evaluate(model, det.load_dataset("shapes", "val", task="detection"), task="detection")
"""
from lthfast.detection.data import TASKS, CocoDataset, collate_fn, load_dataset, shapes_root
from lthfast.detection.defaults import DEMO
from lthfast.detection.evaluate import IOU_TYPES, evaluate, metric_names, predict
from lthfast.detection.models import DEFAULT_MODELS, SMALL_MODELS, TASK_FAMILIES, build_model, model_names
from lthfast.detection.scopes import PRESETS, SCOPES, describe, prunable_names, scope_of, valid_scopes
from lthfast.detection.shapes import make_shapes
from lthfast.detection.train import batch_indices, lr_factor, make_scheduler, make_sgd, train
from lthfast.detection.weights import LoadReport, WeightsError, load_backbone_weights, load_detection_weights

__all__ = [
    "TASKS", "CocoDataset", "collate_fn", "load_dataset", "shapes_root", "DEMO",
    "IOU_TYPES", "evaluate", "metric_names", "predict",
    "DEFAULT_MODELS", "SMALL_MODELS", "TASK_FAMILIES", "build_model", "model_names",
    "PRESETS", "SCOPES", "describe", "prunable_names", "scope_of", "valid_scopes",
    "make_shapes", "batch_indices", "lr_factor", "make_scheduler", "make_sgd", "train",
    "LoadReport", "WeightsError", "load_backbone_weights", "load_detection_weights",
]
