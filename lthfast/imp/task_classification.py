"""`lthfast imp --task classification`: a torchvision classifier on shapes or an image folder."""
from __future__ import annotations

from torch import nn

from lthfast.imp import ddp
from lthfast.imp.classification import (build_classifier, evaluate_classifier,
                                        load_classification_data, train_classifier)

SCOPES = ("all", "features")  # features: every weight but the classifier head's


def head_module(model: nn.Module) -> str | None:
    """Name of the classifier head: the last Linear, else (SqueezeNet) the last Conv2d."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [n for n, m in model.named_modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    return None


def prunable(model: nn.Module, scope: str) -> list[str]:
    """Weights of every Conv / Linear and the attention input projections
    (nn.MultiheadAttention's in_proj_weight, ViT's largest matrices); `features`
    leaves out the classifier head."""
    if scope not in SCOPES:
        raise ValueError(f"--scope {scope}: unknown classification scope; valid: {', '.join(SCOPES)}")
    skip = head_module(model) if scope == "features" else None
    names = []
    for n, m in model.named_modules():
        if n == skip:
            continue
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            names.append(f"{n}.weight")
        elif isinstance(m, nn.MultiheadAttention):
            names += [f"{n}.{p}" for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                           "v_proj_weight") if getattr(m, p, None) is not None]
    return names


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def build(s, device):
    from lthfast.optim import MaskedSGD
    s.scope = s.scope or "all"
    # flags of the detection tasks that classification would otherwise ignore silently
    if s.backbone_weights:
        raise ValueError(f"--backbone-weights {s.backbone_weights}: for detection tasks (a "
                         "classifier mapped onto a detector's backbone); with --task "
                         "classification pass the classifier state_dict as --weights")
    if s.lr_steps:
        raise ValueError(f"--lr-steps {','.join(map(str, s.lr_steps))}: classification uses "
                         "warm-up then cosine decay (--warmup, --lr); leave out --lr-steps")
    scope = s.scope.split("+")
    if len(scope) != 1 or scope[0] not in SCOPES:
        raise ValueError(f"--scope {s.scope}: unknown classification scope; valid: "
                         f"{', '.join(SCOPES)} (all but the classifier head)")
    train_set, val_set, classes = load_classification_data(
        s.data, n_train=s.n_train, n_val=s.n_val, image_size=s.image_size, seed=s.seed)
    side = s.image_size or 224  # an image folder's default crop (load_classification_data)
    model = build_classifier(s.model, len(classes), weights=s.weights, image_size=side).to(device)
    names = prunable(model, s.scope)

    def train_fn(ctx):
        net = ddp.wrap(ctx.model)
        opt = MaskedSGD(ctx.model.parameters(), lr=s.lr, momentum=0.9, weight_decay=5e-4,
                        ticket=ctx.ticket)
        ctx.objects["optimizer"] = opt
        return train_classifier(net, train_set, opt, iters=s.iters, batch_size=s.batch_size,
                                lr=s.lr, warmup=s.warmup, device=device,
                                seed=ctx.seed + 7 * ddp.rank(), start_iter=ctx.start_iter,
                                on_iter=lambda i, _m: ctx.on_iter(i, ctx.model),
                                progress=not s.quiet and ddp.is_main(), amp=s.amp)

    def eval_fn(model, ctx):
        return ddp.on_main(evaluate_classifier, model, val_set, device=device)

    describe = (f"lthfast imp: classification, {s.model} ({len(classes)} classes) on {s.data}, "
                f"{len(names)} pruned weight tensors ({s.scope}), {s.rounds} pruned "
                f"round{_s(s.rounds)} of {s.iters} iterations, rewind {s.rewind}, device "
                f"{device}\nrun directory: {s.out}")
    return model, names, train_fn, eval_fn, None, describe
