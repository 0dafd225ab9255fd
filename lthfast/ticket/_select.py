"""Which parameters a Ticket covers: scope (default: the weight of every Conv2d,
ConvTranspose2d and Linear), exclude patterns, and the checks every covered
parameter must pass (dense, real floating point)."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

#: Module types whose `weight` the default scope covers.
DEFAULT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _module_of(model: nn.Module, name: str) -> nn.Module:
    prefix = name.rpartition(".")[0]
    return model.get_submodule(prefix) if prefix else model


def _as_patterns(exclude, what="exclude") -> list[str]:
    if exclude is None:
        return []
    if isinstance(exclude, str):
        return [exclude]
    try:
        patterns = list(exclude)
    except TypeError:
        kinds = ("parameter names or a callable (name, param, module) -> bool" if what == "scope"
                 else "parameter names or glob patterns")
        raise TypeError(f"{what} must be {kinds}, got {exclude!r}") from None
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{what} must hold parameter names or glob patterns (str), got {p!r}")
    return patterns


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every name of every parameter, tied ones under each of their names (weight tying:
    a decoder Linear's weight that is the embedding's weight is "decoder.weight" too)."""
    return dict(model.named_parameters(remove_duplicate=False))


def select_parameters(model: nn.Module, scope=None, exclude=None) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter)]`` in ``model.named_parameters()`` order, one name per tensor.

    scope: None (the ``weight`` of every Conv2d/ConvTranspose2d/Linear), an
    iterable of parameter names, or a callable ``(name, param, module) -> bool``.
    exclude: names or fnmatch glob patterns to leave out. A tied parameter is seen under
    every name it has; it is selected once (the first selected name), and excluded if
    any of its names is.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    patterns = _as_patterns(exclude)
    params = named_parameters(model)
    if scope is None:
        chosen = [n for n in params
                  if n.rpartition(".")[2] == "weight" and isinstance(_module_of(model, n), DEFAULT_TYPES)]
        # a weight under a torch.nn.utils.prune hook is `weight_orig`: the default scope would
        # skip it without a word
        hooked = [n[:-len("_orig")] for n in params
                  if n.rpartition(".")[2] == "weight_orig" and isinstance(_module_of(model, n), DEFAULT_TYPES)]
        if hooked:
            raise ValueError(f"weights pruned with torch.nn.utils.prune hooks in the model: {hooked} "
                             "(read their masks with Ticket.from_pruned, or prune.remove them first)")
    elif callable(scope):
        chosen = [n for n, p in params.items() if scope(n, p, _module_of(model, n))]
    else:
        wanted = _as_patterns(scope, "scope")
        missing = [n for n in wanted if n not in params]
        if missing:
            raise ValueError(f"scope names parameters the model does not have: {missing}")
        wanted_set = set(wanted)
        chosen = [n for n in params if n in wanted_set]
    excluded = {id(p) for n, p in params.items() if any(fnmatch.fnmatchcase(n, q) for q in patterns)}
    unmatched = [q for q in patterns if not any(fnmatch.fnmatchcase(n, q) for n in params)]
    if unmatched:  # as scope= names that do not exist are refused: a typo said, not ignored
        hint = [f"{q}.*" for q in unmatched if any(n.startswith(q + ".") for n in params)]
        raise ValueError(f"exclude patterns match no parameter of the model: {unmatched}"
                         + (f" (a module's parameters: {hint})" if hint else "")
                         + "; patterns are fnmatch globs over parameter names, e.g. 'fc.*'")
    out, seen = [], set()
    for n in chosen:
        p = params[n]
        if id(p) not in excluded and id(p) not in seen:  # a tied tensor is pruned once
            seen.add(id(p))
            out.append((n, p))
    if not out:
        raise ValueError("no parameter is selected (check scope= and exclude=): a ticket needs at "
                         "least one parameter")
    for n, p in out:
        check_parameter(n, p)
    return out


def check_parameter(name: str, p: torch.Tensor) -> None:
    if p.layout != torch.strided:
        raise ValueError(f"parameter {name!r} has layout {p.layout}; a ticket covers dense tensors only")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"parameter {name!r} has dtype {p.dtype}; magnitude pruning needs a real "
                        "float16/bfloat16/float32/float64 parameter (exclude it or change scope=)")


def refuse_masked_layers(model: nn.Module, named) -> None:
    """ValueError when a selected weight belongs to an lthfast.nn masked layer whose mask
    prunes something: its pruned weights are not zero (sparsify keeps them) and a ticket
    made from the model would not know the mask (from_model would keep pruned entries,
    dense all of them)."""
    from lthfast.nn import MaskedConv2d, MaskedLinear
    masked = []
    for n, _ in named:
        module = _module_of(model, n)
        mask = getattr(module, "mask", None) if isinstance(module, (MaskedConv2d, MaskedLinear)) else None
        if n.rpartition(".")[2] == "weight" and isinstance(mask, torch.Tensor) and not bool(mask.all()):
            masked.append(n)
    if masked:
        more = f" and {len(masked) - 5} more" if len(masked) > 5 else ""
        raise ValueError(
            f"weights of lthfast.nn masked layers (sparsify) in the model: {masked[:5]}{more}; "
            "their mask buffers prune entries that are not zero, which a ticket made from the "
            "model would keep. "
            "Prune the ticket the model was sparsified with (ticket.prune(model, amount)), or "
            "lthfast.nn.densify(model) first")
