"""lthfast.ops: functional masked layers (masked convolution / linear) on the
compiled kernels, with a dense and a sparse path chosen by a measured rule
(path="auto") or by timing both on the first call (path="tuned")."""
from lthfast.ops import _masked_conv_kernels  # noqa: F401  (fake kernels, autograd)
from lthfast.ops._conv_dispatch import SPARSE_RULES
from lthfast.ops._masked_conv import PATHS, masked_conv2d, masked_linear
from lthfast.ops._tune import TunedPath, clear_tuned, tuned_paths
from lthfast.ops._weight_cache import forget as forget_cached

__all__ = ["PATHS", "SPARSE_RULES", "TunedPath", "clear_tuned", "forget_cached", "masked_conv2d",
           "masked_linear", "tuned_paths"]
