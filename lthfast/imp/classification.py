"""Classification for `lthfast imp --task classification`: data, training, top-1.

Data: `shapes` (built-in, generated in memory from a seed: one coloured square,
disc, triangle or cross per image, the class is the shape) or `folder:PATH`
(torchvision ImageFolder layout, PATH/train/CLASS/*.png and PATH/val/CLASS/*.png).

Both are normalised with the ImageNet mean / std, as torchvision's classifiers (and their
pre-trained weights) expect, the same way for training and evaluation. The class indices
are the train split's (sorted class folder names, as ImageFolder numbers them); the val
split is labelled with the same indices, may lack classes, and may not have others.
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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> ImageNet-normalised, as torchvision's classifiers expect."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype).view(3, 1, 1)
    return (img - mean) / std


class Normalized(torch.utils.data.Dataset):
    """`dataset`'s (image, label) pairs with the image ImageNet-normalised."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, label = self.dataset[i]
        return normalize(img), label


def _subset(dataset, n: int | None, seed: int):
    """The first `n` of a seeded permutation (an image folder is sorted by class)."""
    if n is None or n >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.Subset(dataset, torch.randperm(len(dataset), generator=g)[:n].tolist())


def _image_folder(spec: str, root: str, split: str, transform, class_to_idx: dict | None):
    """torchvision ImageFolder of root/split; with `class_to_idx` (the train split's), the
    split is labelled with those indices instead of numbering its own folders."""
    import torchvision
    from PIL import Image
    IMG_EXTENSIONS = torchvision.datasets.folder.IMG_EXTENSIONS
    path = os.path.join(root, split)

    def loader(file):
        try:
            with open(file, "rb") as f:
                im = Image.open(f)
                if im.mode.startswith("I"):  # 16-bit grey: convert("RGB") clips above 255
                    # (to white), so scale it to 8 bits as the detection loader reads it
                    import numpy as np
                    grey = np.asarray(im, dtype=np.float32) / 257.0
                    im = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8), "L")
                return im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - a corrupt file: name it, keep OSError for the CLI
            raise OSError(f"--data {spec}: cannot read image {file} ({type(e).__name__}: "
                          f"{str(e).split(' <_io')[0]})") from None

    class Folder(torchvision.datasets.ImageFolder):
        def find_classes(self, directory):
            classes, own = super().find_classes(directory)
            if class_to_idx is None:
                return classes, own
            extra = [c for c in classes if c not in class_to_idx]
            if extra:
                raise ValueError(f"--data {spec}: {path} has classes the train split lacks: "
                                 f"{extra[:6]} (train classes: {sorted(class_to_idx)[:6]}"
                                 f"{' ...' if len(class_to_idx) > 6 else ''}); the model "
                                 "has one output per train class")
            return classes, {c: class_to_idx[c] for c in classes}

    if not os.path.isdir(path):
        raise ValueError(f"--data {spec}: {path} is not a directory; an image folder needs "
                         "PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg")
    try:
        ds = Folder(path, transform=transform, loader=loader, allow_empty=class_to_idx is not None)
    except FileNotFoundError as e:
        if "class folder" in str(e):  # no subfolder at all
            raise ValueError(f"--data {spec}: {path} has no class folders; an image folder "
                             "needs PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg") from None
        # a train class folder without images (ImageFolder's error, located and explained)
        raise ValueError(f"--data {spec}: {e} (class folders of {path}); every train class "
                         "needs at least one image: remove the empty folder or add images") from None
    if len(ds) == 0:
        raise ValueError(f"--data {spec}: {path} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return ds


def load_classification_data(spec: str, *, n_train: int | None, n_val: int | None,
                             image_size: int | None, seed: int):
    """(train, val, class names) for `shapes` or `folder:PATH`; ImageNet-normalised.

    For an image folder, `image_size` (default 224) is the side of the centre crop after
    resizing the short side to it, and `n_train` / `n_val` (default: all) take that many
    images of a seeded shuffle of each split."""
    if image_size is not None and image_size < 8:
        raise ValueError(f"--image-size {image_size}: use at least 8 pixels")
    if spec == "shapes":
        return (Normalized(ShapesClassification(n_train, size=image_size, seed=seed)),
                Normalized(ShapesClassification(n_val, size=image_size, seed=seed + 10_000)),
                list(SHAPE_CLASSES))
    if spec.startswith("folder:"):
        from torchvision import transforms as T
        root = os.path.expanduser(spec[len("folder:"):])  # (the shell leaves ~ after "folder:")
        for split in ("train", "val"):  # both before reading either (a missing val: say so first)
            if not os.path.isdir(os.path.join(root, split)):
                raise ValueError(f"--data {spec}: {os.path.join(root, split)} is not a directory; "
                                 "an image folder needs PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg")
        side = image_size or 224
        tf = T.Compose([T.Resize(side), T.CenterCrop(side), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        tr = _image_folder(spec, root, "train", tf, None)
        va = _image_folder(spec, root, "val", tf, tr.class_to_idx)
        return _subset(tr, n_train, seed), _subset(va, n_val, seed + 10_000), list(tr.classes)
    raise ValueError(f"--data {spec!r}: unknown classification data; use 'shapes' or 'folder:PATH'")


def _head_keys(model: nn.Module) -> set:
    """state_dict keys of the classifier head (the last Linear, else the last Conv2d)."""
    from lthfast.imp.task_classification import head_module
    name = head_module(model)
    return {f"{name}.{k}" for k, _ in model.get_submodule(name).named_parameters()} if name else set()


def build_classifier(name: str, num_classes: int, *, weights: str | None = None,
                     image_size: int | None = None) -> nn.Module:
    """A torchvision classifier with random init (or a local state_dict file).

    `image_size`: the side of the input images; ViT / MaxViT are built for it (they
    hard-code 224 otherwise), and every model is checked to run on it. GoogLeNet and
    Inception v3 are built without their auxiliary classifiers (training returns logits).
    `weights` must be a state_dict of this architecture: every tensor is taken except the
    classifier head where its shape differs (another number of classes: the head keeps its
    fresh init); anything else that does not fit raises WeightsError listing it."""
    import torchvision
    valid = torchvision.models.list_models(module=torchvision.models)  # classifiers only
    if name not in valid:
        raise ValueError(f"--model {name!r}: not a torchvision classification model; valid "
                         f"names: {', '.join(valid)}")
    kwargs = {}
    if image_size is not None and name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        if image_size % patch:
            raise ValueError(f"--image-size {image_size}: {name} needs a multiple of its patch "
                             f"size {patch} (e.g. {max(patch, image_size // patch * patch)})")
        kwargs["image_size"] = image_size
    if image_size is not None and name.startswith("maxvit"):
        kwargs["input_size"] = (image_size, image_size)
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise ValueError(f"--model {name} cannot be built for --image-size {image_size} "
                         f"({type(e).__name__}: {e})") from None
    if weights:
        _load_classifier_weights(model, name, weights, num_classes)
    if image_size is not None:
        _check_runs(model, name, image_size)
    return model


def _load_classifier_weights(model: nn.Module, name: str, weights: str, num_classes: int) -> None:
    from lthfast.detection.weights import WeightsError, read_state_dict
    if not os.path.exists(weights):  # a name would mean a download: not for classifiers
        raise WeightsError(f"--weights {weights}: no such file (classification takes a local "
                           "state_dict file; weight names are not downloaded)")
    state, _ = read_state_dict(weights, name=name, backbone=False)  # clear errors
    if name in ("googlenet", "inception_v3"):  # built without the auxiliary classifiers
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise WeightsError(f"--weights {weights}: no tensor fits {name} (keys start with "
                           f"{sorted({k.split('.')[0] for k in state})[:6]}); is it a "
                           f"state_dict of {name}?")
    head = _head_keys(model)
    other_shape = sorted(k for k in state if k in own and k not in fit)
    bad_shape = [f"{k}: file {tuple(state[k].shape)}, {name} {tuple(own[k].shape)}"
                 for k in other_shape if k not in head]
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if bad_shape or missing or unexpected:
        parts = []
        for what, keys in (("other shape", bad_shape), ("missing in the file", missing),
                           (f"not in {name}", unexpected)):
            if keys:
                more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
                parts.append(f"{len(keys)} {what} ({'; '.join(keys[:4])}{more})")
        raise WeightsError(f"--weights {weights} does not fit --model {name}: "
                           f"{', '.join(parts)}; is it a state_dict of {name}? (only the "
                           "classifier head may differ, for another number of classes)")
    model.load_state_dict(fit, strict=False)  # the model changes only once every check passed
    if other_shape:
        print(f"note: the classifier head of {weights} ({', '.join(other_shape)}: "
              f"{tuple(state[other_shape[0]].shape)}) is for another number of classes; "
              f"{name} keeps a fresh head for {num_classes} classes")


def _check_runs(model: nn.Module, name: str, image_size: int) -> None:
    """One image through the model in eval mode (no state changes): a model that cannot
    take `image_size` fails here, with the flag to change, not mid-training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise ValueError(f"--model {name} does not run on --image-size {image_size} images "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use a larger "
                         "--image-size (e.g. 224, the size of torchvision's pre-trained weights)") from None
    finally:
        model.train(was_training)


def lr_at(it: int, *, iters: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0 at `iters`."""
    if it < warmup:
        return lr * (it + 1) / warmup
    t = (it - warmup) / max(1, iters - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_classifier(model: nn.Module, dataset, optimizer, *, iters: int, batch_size: int,
                     lr: float, warmup: int = 0, device="cpu", seed: int = 0, start_iter: int = 0,
                     on_iter=None, progress: bool = False, amp: bool = False) -> dict:
    """Trains iterations [start_iter, iters); `on_iter(i, model)` after the i-th (from 1).

    The data order depends only on (seed, iteration), so training resumed at
    start_iter sees the same batches as an uninterrupted run. `amp`: float16 autocast
    with a gradient scaler (CUDA only)."""
    if amp and torch.device(device).type != "cuda":
        raise ValueError(f"--amp needs a CUDA device (got device={device}); AMP is GPU-only")
    from lthfast.detection.train import backward_and_step
    scaler = torch.amp.GradScaler("cuda") if amp else None
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=iters - start_iter, desc="train", leave=False, unit="it", disable=None)
    t0, loss_sum, n, last = time.perf_counter(), 0.0, 0, float("nan")
    for it in range(start_iter, iters):
        g = torch.Generator().manual_seed(seed * 7919 + it)
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        xs, ys = zip(*(dataset[i] for i in idx))
        x = torch.stack(xs).to(device)
        y = torch.as_tensor(ys, device=device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, iters=iters, lr=lr, warmup=warmup)
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                out = model(x)
                out = getattr(out, "logits", out)  # GoogLeNet / Inception outputs
                loss = F.cross_entropy(out.float(), y)
        except ValueError as e:
            if "more than 1 value per channel" in str(e):
                raise ValueError(f"--batch-size {batch_size}: a BatchNorm layer sees one value "
                                 f"per channel in training ({e}); use --batch-size 2 or more "
                                 "(or a larger --image-size)") from None
            raise
        backward_and_step(loss, optimizer, scaler)
        last = float(loss.detach())
        loss_sum, n = loss_sum + last, n + 1
        if on_iter is not None:
            on_iter(it + 1, model)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    # detection.train's keys: one set of train_* columns for every task
    return {"final_loss": last, "mean_loss": loss_sum / n if n else float("nan"), "iters": n,
            "time_s": dt, "s_per_iter": dt / n if n else float("nan")}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, *, device="cpu", batch_size: int = 64) -> dict:
    """Accuracy in percent over `dataset`, the model in eval mode (BatchNorm running
    statistics, no dropout; its train/eval mode is restored afterwards): `top1`, and `top5`
    when the model has more than 5 classes (with 5 or fewer, top-5 is 100% by definition)."""
    was_training = model.training
    model.eval()
    correct = correct5 = total = 0
    n_classes = None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        for x, y in loader:
            logits = model(x.to(device)).float().cpu()
            n_classes = logits.shape[1]
            correct += int((logits.argmax(1) == y).sum())
            if n_classes > 5:
                top5 = logits.topk(5, dim=1).indices
                correct5 += int((top5 == y[:, None]).any(1).sum())
            total += len(y)
    finally:
        model.train(was_training)
    out = {"top1": 100.0 * correct / max(1, total)}
    if n_classes is not None and n_classes > 5:
        out["top5"] = 100.0 * correct5 / max(1, total)
    return out
