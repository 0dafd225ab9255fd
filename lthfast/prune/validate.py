"""Argument checks shared by the pruning methods and functions.

Every check runs before the module is touched, raises the exception type that
``torch.nn.utils.prune`` raises for the same mistake, and names the offending
argument and its value.

The underscore helpers with torch's names (``_validate_pruning_amount_init``,
``_compute_nparams_toprune``, ...) keep third-party code that imports them from
``torch.nn.utils.prune`` working after the switch to ``lthfast.prune``.
"""
from __future__ import annotations

import math
import numbers

import torch

from lthfast.magnitude import scaled_amount


class PruningShapeError(ValueError, AssertionError):
    """A tensor has the wrong shape (importance scores, a custom mask).

    It is a ``ValueError``; it is also an ``AssertionError`` because that is what
    ``torch.nn.utils.prune`` raises here, so existing ``except`` clauses still match.
    """


class PruningStateError(RuntimeError, AssertionError):
    """The module's pruning state is inconsistent (e.g. two pruning hooks on one tensor).

    Also an ``AssertionError``, as in ``torch.nn.utils.prune``.
    """


class NotPrunedError(AttributeError, AssertionError):
    """A pruning method was used on a module before ``apply`` bound it to a tensor."""


class MissingPruningStateError(PruningStateError, AttributeError):
    """``remove`` found a hook but no ``name_orig`` / ``name_mask``; also an
    ``AttributeError``, which torch raises when it looks them up."""


class ArgumentKindError(TypeError, AttributeError):
    """An argument is not a tensor / module where one is needed. A ``TypeError``;
    also an ``AttributeError``, which torch raises when it uses the object."""


class PairLengthError(TypeError, ValueError):
    """A ``global_unstructured`` entry is not a pair; also a ``ValueError``, which
    torch raises when it unpacks it."""


# --------------------------------------------------------------------- amount
def check_amount(amount) -> None:
    """An int is a count (>= 0); a float is a fraction in [0, 1]. Bools count as ints
    here (as in torch); ``count_to_prune`` refuses True where torch fails on it."""
    if not isinstance(amount, numbers.Real):
        raise TypeError(
            f"amount={amount!r} has type {type(amount).__name__}: pass an int (how many to "
            "prune) or a float in [0, 1] (which fraction to prune)")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} is negative: pass a non-negative int or a float in [0, 1]")
        return
    value = float(amount)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"amount={amount} is not a fraction in [0, 1] (nor a non-negative int)")


def count_to_prune(amount, n_available: int, *, bool_ok: bool = False) -> int:
    """How many of ``n_available`` units ``amount`` prunes: an int as is, a float as
    ``round(amount * n_available)`` (Python's half-to-even rounding, computed in the
    amount's own type as torch does: a numpy float32 rounds its float32 product).

    ``amount=True``: torch hands it to topk / kthvalue as ``k``, which reject a bool,
    so it is a TypeError unless ``bool_ok`` (LnStructured, where torch uses it as 1).
    """
    check_amount(amount)
    if isinstance(amount, numbers.Integral):
        k = int(amount)
        if k > n_available:
            raise ValueError(
                f"amount={amount} is more than the {n_available} units that can still be pruned")
        if amount is True and not bool_ok:
            raise TypeError(f"amount={amount!r} is a bool: pass an int (how many to prune) or a "
                            "float in [0, 1]")
        return k
    k = int(round(scaled_amount(amount, n_available)))
    if k > n_available:  # a float16 / float32 amount's product can round above the count
        raise ValueError(f"amount={amount} gives {k} units to prune, more than the "
                         f"{n_available} that can still be pruned")
    return k


# ----------------------------------------------------------------- structure
def normalize_dim(t: torch.Tensor, dim) -> int:
    """``dim`` as a non-negative index into ``t``'s dims; IndexError when out of range."""
    ndim = t.dim()
    if not isinstance(dim, numbers.Integral):  # a bool is an int to torch too
        raise TypeError(f"dim={dim!r} must be an int")
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"dim={dim} is out of range for a tensor with {ndim} dims (shape {tuple(t.shape)}): "
            f"use -{ndim} <= dim < {ndim}")
    return int(dim) % ndim


def check_structured(t: torch.Tensor) -> None:
    """Channels only make sense for tensors with at least 2 dims."""
    if t.dim() <= 1:
        raise ValueError(
            f"structured pruning needs a tensor with at least 2 dims (channels along `dim`); "
            f"got shape {tuple(t.shape)}. Use an unstructured method for 1-D tensors such as biases")


def check_same_shape(scores, like: torch.Tensor, what: str, where: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise ArgumentKindError(f"{what} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != like.shape:
        raise PruningShapeError(
            f"{what} has shape {tuple(scores.shape)} but {where} has shape {tuple(like.shape)}; "
            "they must match")


# ------------------------------------------------------------------ modules
def _describe(module) -> str:
    return type(module).__name__


def lookup_tensor(module, name):
    """``getattr(module, name)`` with an AttributeError that lists what exists."""
    if not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a str (the parameter's name in the module)")
    try:
        return get_attribute(module, name)
    except AttributeError:
        params = [n for n, p in module._parameters.items() if p is not None]
        raise AttributeError(
            f"{_describe(module)} has no parameter {name!r} to prune; its parameters are "
            f"{params}") from None


_MODULE_GETATTR = torch.nn.Module.__getattr__
_MODULE_GETATTRIBUTE = torch.nn.Module.__getattribute__


def has_attribute(module, name: str) -> bool:
    """``hasattr(module, name)``, without raising and catching nn.Module's
    AttributeError for a missing name (a third of a small layer's pruning time).
    Exact: modules that change attribute lookup, and names the class defines
    (descriptors, ...), go through ``hasattr`` itself."""
    cls = type(module)
    if (cls.__getattr__ is not _MODULE_GETATTR or cls.__getattribute__ is not _MODULE_GETATTRIBUTE
            or hasattr(cls, name)):
        return hasattr(module, name)
    d = module.__dict__
    if name in d:
        return True
    # nn.Module.__getattr__: _parameters, _buffers, _modules
    for key in ("_parameters", "_buffers", "_modules"):
        if key in d and name in d[key]:
            return True
    return False


def get_attribute(module, name: str):
    """``getattr(module, name)``, without the Python-level nn.Module.__getattr__ call
    for a parameter, buffer or submodule (about a microsecond each). Exact, as
    ``has_attribute``: anything else goes through ``getattr`` itself."""
    cls = type(module)
    if (cls.__getattr__ is _MODULE_GETATTR and cls.__getattribute__ is _MODULE_GETATTRIBUTE
            and not hasattr(cls, name)):
        d = module.__dict__
        if name in d:
            return d[name]
        for key in ("_parameters", "_buffers", "_modules"):
            if key in d:
                sub = d[key]
                if name in sub:
                    return sub[name]
    return getattr(module, name)


def require_parameter(module, name: str, value) -> torch.nn.Parameter:
    """A first prune moves ``module.<name>`` to ``<name>_orig``: it must be a live Parameter."""
    if name in module._buffers:
        raise TypeError(
            f"{_describe(module)}.{name} is a buffer, not a Parameter: only parameters can be pruned")
    if value is None:
        # an AttributeError too: global_unstructured's caller may catch torch's, which
        # fails there on None.device
        raise ArgumentKindError(f"{_describe(module)}.{name} is None: there is no tensor to prune")
    if not isinstance(value, torch.nn.Parameter) or module._parameters.get(name) is not value:
        raise TypeError(
            f"{_describe(module)}.{name} is a {type(value).__name__}, not a registered Parameter: "
            "only parameters can be pruned")
    if type(value) is not torch.nn.Parameter and isinstance(
            value, torch.nn.parameter.UninitializedParameter):
        raise ValueError(
            f"{_describe(module)}.{name} is an uninitialized (lazy) parameter: run one forward "
            "pass to materialize it before pruning")
    for suffix in ("_orig", "_mask"):
        taken = name + suffix
        if taken in module._parameters or taken in module._buffers or has_attribute(module, taken):
            raise KeyError(
                f"cannot prune {_describe(module)}.{name}: the module already has an attribute "
                f"{taken!r}, which pruning would overwrite")
    return value


# ----------------------------------------- torch.nn.utils.prune private names
def _validate_pruning_amount_init(amount) -> None:
    check_amount(amount)


def _compute_nparams_toprune(amount, tensor_size):
    if isinstance(amount, numbers.Integral):
        return amount
    return round(amount * tensor_size)


def _validate_pruning_amount(amount, tensor_size) -> None:
    if isinstance(amount, numbers.Integral) and amount > tensor_size:
        raise ValueError(f"amount={amount} is more than the {tensor_size} units that can be pruned")


def _validate_structured_pruning(t) -> None:
    check_structured(t)


def _validate_pruning_dim(t, dim) -> None:
    # torch's helper checks only the upper bound (t.shape[dim] catches the rest)
    if dim >= t.dim():
        raise IndexError(f"dim={dim} is out of range for a tensor with {t.dim()} dims")
