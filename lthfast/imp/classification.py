"""Classification for `lthfast imp --task classification`: data, training, top-1.

Data: `shapes` (built-in, generated in memory from a seed: one coloured square,
disc, triangle or cross per image, the class is the shape) or `folder:PATH`
(torchvision ImageFolder layout, PATH/train/CLASS/*.png and PATH/val/CLASS/*.png).
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

SHAPE_CLASSES = ("square", "disc", "triangle", "cross")


def _shape_mask(kind: int, size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    dx, dy = xs - cx, ys - cy
    if kind == 0:
        return (dx.abs() <= r) & (dy.abs() <= r)
    if kind == 1:
        return dx * dx + dy * dy <= r * r
    if kind == 2:  # upward triangle: inside the three half-planes
        return (dy <= r) & (dy >= -r + 2 * dx.abs())
    return ((dx.abs() <= r / 3) & (dy.abs() <= r)) | ((dy.abs() <= r / 3) & (dx.abs() <= r))


class ShapesClassification(torch.utils.data.Dataset):
    """`n` images of `size`×`size` pixels, one shape each, label = shape class.

    Deterministic: image i depends only on (seed, i). Noise and random colours
    keep the task from being solved by one pixel."""

    classes = SHAPE_CLASSES

    def __init__(self, n: int, *, size: int = 32, seed: int = 0):
        if n <= 0 or size < 8:
            raise ValueError(f"ShapesClassification needs n > 0 and size >= 8 (got n={n}, size={size})")
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        u = torch.rand(8, generator=g)
        label = int(u[0] * len(SHAPE_CLASSES)) % len(SHAPE_CLASSES)
        s = self.size
        r = s * (0.15 + 0.2 * float(u[1]))
        cx = r + float(u[2]) * (s - 2 * r)
        cy = r + float(u[3]) * (s - 2 * r)
        mask = _shape_mask(label, s, cx, cy, r)
        colour = 0.3 + 0.7 * u[4:7]
        img = 0.25 * torch.rand(3, s, s, generator=g)
        img[:, mask] = colour[:, None]
        return img, label


def load_classification_data(spec: str, *, n_train: int | None, n_val: int | None,
                             image_size: int | None, seed: int):
    """(train, val, class names) for `shapes` or `folder:PATH`."""
    if spec == "shapes":
        return (ShapesClassification(n_train, size=image_size, seed=seed),
                ShapesClassification(n_val, size=image_size, seed=seed + 10_000),
                list(SHAPE_CLASSES))
    if spec.startswith("folder:"):
        import torchvision
        from torchvision import transforms as T
        root = spec[len("folder:"):]
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise ValueError(f"--data {spec}: {os.path.join(root, split)} is not a directory; "
                                 "an image folder needs PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg")
        side = image_size or 224
        tf = T.Compose([T.Resize(side), T.CenterCrop(side), T.ToTensor()])
        tr = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=tf)
        va = torchvision.datasets.ImageFolder(os.path.join(root, "val"), transform=tf)
        return tr, va, list(tr.classes)
    raise ValueError(f"unknown classification data {spec!r}: use 'shapes' or 'folder:PATH'")


def build_classifier(name: str, num_classes: int, *, weights: str | None = None) -> nn.Module:
    """A torchvision classifier with random init (or a local state_dict file)."""
    import torchvision
    valid = torchvision.models.list_models(module=torchvision.models)  # classifiers only
    if name not in valid:
        raise ValueError(f"unknown classification model {name!r}; valid names: {', '.join(valid)}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if weights:
        from lthfast.detection.weights import WeightsError, read_state_dict
        if not os.path.exists(weights):  # a name would mean a download: not for classifiers
            raise WeightsError(f"weights file {weights} does not exist")
        state, _ = read_state_dict(weights, name=name, backbone=False)  # clear errors
        own = model.state_dict()
        fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fit:
            raise WeightsError(f"--weights {weights}: no tensor fits {name} (keys start with "
                               f"{sorted({k.split('.')[0] for k in state})[:6]}); is it a "
                               f"state_dict of {name}?")
        model.load_state_dict(fit, strict=False)
        skipped = sorted(set(own) - set(fit))
        if skipped:
            print(f"note: {len(skipped)} tensors not taken from {weights} (missing or other "
                  f"shape, e.g. the classifier for {num_classes} classes): {skipped[:3]}")
    return model


def lr_at(it: int, *, iters: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0 at `iters`."""
    if it < warmup:
        return lr * (it + 1) / warmup
    t = (it - warmup) / max(1, iters - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_classifier(model: nn.Module, dataset, optimizer, *, iters: int, batch_size: int,
                     lr: float, warmup: int = 0, device="cpu", seed: int = 0, start_iter: int = 0,
                     on_iter=None, progress: bool = False) -> dict:
    """Trains iterations [start_iter, iters); `on_iter(i, model)` after the i-th (from 1).

    The data order depends only on (seed, iteration), so training resumed at
    start_iter sees the same batches as an uninterrupted run."""
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=iters - start_iter, desc="train", leave=False, unit="it", disable=None)
    t0, loss_sum, n = time.perf_counter(), 0.0, 0
    for it in range(start_iter, iters):
        g = torch.Generator().manual_seed(seed * 7919 + it)
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        xs, ys = zip(*(dataset[i] for i in idx))
        x = torch.stack(xs).to(device)
        y = torch.as_tensor(ys, device=device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, iters=iters, lr=lr, warmup=warmup)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum, n = loss_sum + float(loss.detach()), n + 1
        if on_iter is not None:
            on_iter(it + 1, model)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    if bar is not None:
        bar.close()
    return {"loss": loss_sum / max(1, n), "iters": n, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, *, device="cpu", batch_size: int = 64) -> dict:
    model.eval()
    correct = total = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return {"top1": 100.0 * correct / max(1, total)}
