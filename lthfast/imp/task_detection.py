"""`lthfast imp` for detection, segmentation and keypoints: torchvision R-CNN-style
models on `shapes` or COCO, trained with MaskedSGD, evaluated with COCOeval."""
from __future__ import annotations

import warnings

from lthfast.imp import ddp


EVAL_BATCH = 8


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _es(n: int) -> str:
    return "" if n == 1 else "es"


def build(s, device):
    from lthfast.detection import data as det_data
    from lthfast.detection.evaluate import evaluate as det_evaluate
    from lthfast.detection import models as det_models
    from lthfast.detection import scopes as det_scopes
    from lthfast.detection.train import train as det_train
    from lthfast.optim import MaskedSGD

    s.scope = s.scope or "paper"
    det_models.check_model_name(s.model, s.task)  # before the data are generated / read
    try:  # the name too (whether it selects layers of this model is known once it is built)
        det_scopes.describe(s.scope)
    except ValueError as e:
        raise ValueError(f"--scope {s.scope}: {e}") from None
    # (shapes: generated once, on rank 0 first; coco:PATH: a seeded part with --n-train / --n-val)
    train_set = ddp.on_main_first(det_data.run_split, s, "train")
    val_set = det_data.run_split(s, "val", label_map=train_set.cat_id_to_label)
    global_batch = s.batch_size * ddp.world_size()
    if global_batch > len(train_set) and ddp.is_main():
        warnings.warn(f"--batch-size {s.batch_size} (x {ddp.world_size()} process"
                      f"{_es(ddp.world_size())}) is larger than the {len(train_set)} training "
                      f"images: every batch repeats images, and an iteration costs as much as "
                      f"{global_batch} images", UserWarning, stacklevel=2)
    extra = {"num_keypoints": train_set.num_keypoints} if s.task == "keypoints" else {}
    model = det_models.build_model(s.model, task=s.task, num_classes=train_set.num_classes,
                                   weights=s.weights, backbone_weights=s.backbone_weights,
                                   image_size=s.image_size, verbose=ddp.is_main(),
                                   **extra).to(device)
    names = det_scopes.prunable_names(model, s.scope)

    def train_fn(ctx):
        net = ddp.wrap(ctx.model, find_unused=True)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        opt = MaskedSGD(params, lr=s.lr, momentum=0.9, weight_decay=1e-4, ticket=ctx.ticket)
        ctx.objects["optimizer"] = opt
        stats = det_train(
            net, train_set, iters=s.iters, batch_size=s.batch_size, lr=s.lr,
            warmup_iters=s.warmup, device=device, amp=s.amp, seed=ctx.seed,
            rank=ddp.rank(), world_size=ddp.world_size(),
            lr_steps=tuple(s.lr_steps or ()), optimizer=opt, start_iter=ctx.start_iter,
            on_iter=lambda i, _m: ctx.on_iter(i, ctx.model),
            progress=not s.quiet and ddp.is_main())
        ctx.objects["scheduler"] = stats.get("scheduler")
        return {k: v for k, v in stats.items() if isinstance(v, (int, float))}

    def eval_fn(model, ctx):
        res = ddp.on_main(det_evaluate, model, val_set, task=s.task, device=device,
                          batch_size=EVAL_BATCH)
        return res

    describe = (f"lthfast imp: {s.task}, {s.model} on {s.data} ({len(train_set)} train / "
                f"{len(val_set)} val images), scope {s.scope}: {len(names)} pruned weight tensors, "
                f"{'round 0 with the --ticket masks' if s.ticket else 'a dense round'} and "
                f"{s.rounds} pruned round{_s(s.rounds)} of {s.iters} "
                f"iterations (batch {s.batch_size}, lr {s.lr}), "
                f"rewind {s.rewind}, device {device}\nrun directory: {s.out}")
    return model, names, train_fn, eval_fn, det_scopes.scope_of, describe
