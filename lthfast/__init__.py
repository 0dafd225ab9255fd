"""lthfast: find lottery tickets fast.

C++/CUDA kernels for global magnitude pruning behind a thin Python API.
`import lthfast.prune as prune` is a drop-in for `torch.nn.utils.prune`.
"""
from lthfast._version import __version__
from lthfast import _ops
from lthfast._ops import build_info
from lthfast.magnitude import global_magnitude_masks, global_magnitude_threshold
from lthfast.ticket import Ticket
from lthfast import nn, ops  # noqa: E402  (masked layers: lthfast.nn, lthfast.ops)
from lthfast import optim  # MaskedSGD, MaskedAdam, MaskedAdamW

__all__ = ["__version__", "build_info", "global_magnitude_masks", "global_magnitude_threshold",
           "Ticket", "nn", "ops", "optim"]

# The larger parts load on first use (`lthfast.imp.run_imp` after `import lthfast`), as
# torch's own submodules do: imported eagerly, they would pull in torchvision / matplotlib.
_LAZY = ("prune", "imp", "detection", "analysis", "transfer", "bitmask", "info")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"lthfast.{name}")
    raise AttributeError(f"module 'lthfast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
