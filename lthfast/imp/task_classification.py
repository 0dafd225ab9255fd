"""`lthfast imp --task classification`: a torchvision classifier on shapes or an image folder."""
from __future__ import annotations

from torch import nn

from lthfast.imp import ddp
from lthfast.imp.classification import (build_classifier, evaluate_classifier,
                                        load_classification_data, train_classifier)

SCOPES = ("all", "features")  # features: every Conv/Linear but the last Linear (the classifier)


def prunable(model: nn.Module, scope: str) -> list[str]:
    layers = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    if scope == "features":
        last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        layers = [n for n in layers if n not in last_linear]
    elif scope != "all":
        raise ValueError(f"unknown classification scope {scope!r}; valid: {', '.join(SCOPES)}")
    return [f"{n}.weight" for n in layers]


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def build(s, device):
    from lthfast.optim import MaskedSGD
    s.scope = s.scope or "all"
    train_set, val_set, classes = load_classification_data(
        s.data, n_train=s.n_train, n_val=s.n_val, image_size=s.image_size, seed=s.seed)
    model = build_classifier(s.model, len(classes), weights=s.weights).to(device)
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
                                progress=not s.quiet and ddp.is_main())

    def eval_fn(model, ctx):
        return ddp.on_main(evaluate_classifier, model, val_set, device=device)

    describe = (f"lthfast imp: classification, {s.model} ({len(classes)} classes) on {s.data}, "
                f"{len(names)} pruned weight tensors ({s.scope}), {s.rounds} pruned "
                f"round{_s(s.rounds)} of {s.iters} iterations, rewind {s.rewind}, device "
                f"{device}\nrun directory: {s.out}")
    return model, names, train_fn, eval_fn, None, describe
