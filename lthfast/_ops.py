"""Loading of the compiled kernels (lthfast._C) and the fake kernels of every op.

`import lthfast` never fails because the extension is missing: calling a kernel
then raises one error that says how to build it, unless LTHFAST_REFERENCE=1 asks
for the pure-PyTorch reference instead.
"""
from __future__ import annotations

import os

import torch

try:
    from lthfast import _C  # noqa: F401  (registers torch.ops.lthfast.*)
    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR = e

BUILD_HINT = (
    "lthfast's compiled kernels (lthfast._C) are not available: {err}. Build them with "
    "`pip install --no-build-isolation -e .` in the lthfast checkout (or `make setup`), "
    "or set LTHFAST_REFERENCE=1 to run the slow pure-PyTorch reference instead."
)


def available() -> bool:
    return _C is not None


def use_reference() -> bool:
    return _C is None and os.environ.get("LTHFAST_REFERENCE", "") not in ("", "0")


def require() -> None:
    if _C is None:
        raise RuntimeError(BUILD_HINT.format(err=_IMPORT_ERROR))


def build_info() -> dict:
    """What was compiled: CPU/CUDA kernels, CUDA version and archs, torch it was built on."""
    if _C is None:
        return {"compiled": False, "error": str(_IMPORT_ERROR)}
    info = dict(_C.build_info())
    info["compiled"] = True
    return info


if _C is not None:

    _SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def _check_threshold_args(op, scores, masks, k):
        """What the kernels check (threshold_prepare.h), for the fake kernels: meta
        tensors (or one among real ones) must be refused as the kernels refuse them."""
        torch._check(len(scores) > 0, lambda: f"{op}: scores is empty; pass at least one tensor")
        torch._check(not masks or len(masks) == len(scores),
                     lambda: f"{op}: masks has {len(masks)} tensors but scores has {len(scores)}")
        torch._check(k >= 0, lambda: f"{op}: k={k} must be >= 0")
        dev = scores[0].device
        for i, sc in enumerate(scores):
            torch._check(sc.layout == torch.strided and sc.dtype in _SCORE_DTYPES and sc.device == dev,
                         lambda: f"{op}: scores[{i}] must be a dense float tensor on {dev}, got "
                                 f"{sc.dtype} ({sc.layout}) on {sc.device}")
            if masks and masks[i].dtype == torch.uint8:  # packed bits
                m, nbytes = masks[i], (sc.numel() + 7) // 8
                torch._check(m.dim() == 1 and m.numel() == nbytes and m.device == dev,
                             lambda: f"{op}: masks[{i}] is uint8, i.e. packed bits, and must be "
                                     f"1-D with {nbytes} bytes on {dev}, got shape "
                                     f"{tuple(m.shape)} on {m.device}")
            elif masks:
                m = masks[i]
                torch._check(m.dtype in (torch.bool, sc.dtype) and m.shape == sc.shape and m.device == dev,
                             lambda: f"{op}: masks[{i}] must be bool or {sc.dtype} of shape "
                                     f"{tuple(sc.shape)} on {dev}, got {m.dtype} of shape "
                                     f"{tuple(m.shape)} on {m.device}")

    @torch.library.register_fake("lthfast::global_threshold")
    def _global_threshold_fake(scores, masks, k):
        _check_threshold_args("global_threshold", scores, masks, k)
        dev = scores[0].device
        return (torch.empty((), dtype=torch.float64, device=dev),
                torch.empty((), dtype=torch.int64, device=dev))

    @torch.library.register_fake("lthfast::global_magnitude_masks")
    def _global_magnitude_masks_fake(scores, masks, k):
        _check_threshold_args("global_magnitude_masks", scores, masks, k)
        return [torch.empty_like(s, dtype=torch.bool) for s in scores]

    @torch.library.register_fake("lthfast::threshold_mask")
    def _threshold_mask_fake(score, mask, threshold, ties_left, dtype=None):
        if mask is not None:
            _check_threshold_args("threshold_mask", [score], [mask], 0)
        if dtype is None:  # a packed (uint8) mask gives bool
            dtype = torch.bool if mask is None or mask.dtype == torch.uint8 else mask.dtype
        return torch.empty_like(score, dtype=dtype)

    @torch.library.register_fake("lthfast::threshold_mask_into")
    def _threshold_mask_into_fake(score, mask, threshold, ties_left, out, orig=None, product=None):
        if mask is not None:
            _check_threshold_args("threshold_mask_into", [score], [mask], 0)
        torch._check((orig is None) == (product is None),
                     lambda: "threshold_mask_into: pass orig and product together, or neither")
        if orig is not None:
            torch._check(orig.shape == score.shape and product.shape == score.shape
                         and product.dtype == orig.dtype and orig.dtype in _SCORE_DTYPES,
                         lambda: f"threshold_mask_into: orig and product must be float tensors "
                                 f"of shape {tuple(score.shape)} of one dtype")
        torch._check(out.shape == score.shape and out.device == score.device
                     and out.dtype in (torch.bool, score.dtype),
                     lambda: f"threshold_mask_into: out must be bool or {score.dtype} of shape "
                             f"{tuple(score.shape)} on {score.device}, got {out.dtype} of shape "
                             f"{tuple(out.shape)} on {out.device}")

    @torch.library.register_fake("lthfast::mask_counts")
    def _mask_counts_fake(masks):
        dev = masks[0].device if masks else torch.device("cpu")
        return torch.empty((len(masks), 2), dtype=torch.int64, device=dev)

    @torch.library.register_fake("lthfast::mask_counts_packed")
    def _mask_counts_packed_fake(masks):
        dev = masks[0].device if masks else torch.device("cpu")
        return (torch.empty((len(masks), 2), dtype=torch.int64, device=dev),
                [m.new_empty(((m.numel() + 7) // 8,), dtype=torch.uint8) for m in masks])
