"""Masks bound to live parameters by `Ticket.apply`, found again by `mask_for`.

Bindings hold the *model* weakly (a ticket never keeps a model alive) and, per
parameter, only its name in that model, plus the packed mask on the parameter's
device when that is not the ticket's (re-made if the parameter moves). No bool
mask is kept: 1 byte per weight is 8x what the ticket holds.

Why the model and not each parameter: `torch.utils.swap_tensors` refuses a tensor
that has a weak reference, so weak references to the parameters broke
`model.to(...)` / `load_state_dict` under
`torch.__future__.set_swap_module_params_on_conversion(True)`. A swap keeps the
Parameter object (its contents change), so a binding found by `id(param)` is
confirmed by `model.get_parameter(name) is param`: a parameter replaced in the
model, or a dead one whose id was reused, is not taken for the bound one.
"""
from __future__ import annotations

import weakref

import torch


class _Binding:
    __slots__ = ("name", "packed")

    def __init__(self, name):
        self.name, self.packed = name, None


class Bindings:
    def __init__(self):
        # id(model) -> (weak reference to the model, {id(param): _Binding})
        self._models: dict[int, tuple[weakref.ref, dict[int, _Binding]]] = {}

    def bind(self, model: torch.nn.Module, param: torch.Tensor, name: str) -> None:
        key = id(model)
        entry = self._models.get(key)
        if entry is None or entry[0]() is not model:
            def forget(_ref, key=key, table=self._models):
                e = table.get(key)
                if e is not None and e[0] is _ref:
                    del table[key]

            entry = (weakref.ref(model, forget), {})
            self._models[key] = entry
        entry[1][id(param)] = _Binding(name)

    def lookup(self, param) -> _Binding | None:
        for ref, by_param in self._models.values():
            b = by_param.get(id(param))
            if b is None:
                continue
            model = ref()
            if model is not None and _parameter_or_none(model, b.name) is param:
                return b
        return None

    def held(self) -> list[torch.Tensor]:
        """The tensors the bindings keep alive (packed copies on other devices)."""
        return [b.packed for _, by_param in self._models.values() for b in by_param.values()
                if b.packed is not None]

    def clear(self) -> None:
        self._models.clear()

    def __len__(self) -> int:
        """The bound parameters still in their (live) models."""
        n = 0
        for ref, by_param in self._models.values():
            model = ref()
            if model is not None:
                n += sum(1 for pid, b in by_param.items()
                         if id(_parameter_or_none(model, b.name)) == pid)
        return n


def _parameter_or_none(model, name):
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None
