"""Masks bound to live parameters by `Ticket.apply`, found again by `mask_for`.

Bindings hold parameters weakly (a ticket never keeps a model alive) and keep
only the name, plus the packed mask on the parameter's device when that is not
the ticket's (re-made if the parameter moves). No bool mask is kept: 1 byte
per weight is 8x what the ticket holds.
"""
from __future__ import annotations

import weakref

import torch


class _Binding:
    __slots__ = ("ref", "name", "packed")

    def __init__(self, ref, name):
        self.ref, self.name, self.packed = ref, name, None


class Bindings:
    def __init__(self):
        self._by_id: dict[int, _Binding] = {}

    def bind(self, param: torch.Tensor, name: str) -> None:
        key = id(param)
        table = self._by_id

        def forget(_ref, key=key, table=table):
            b = table.get(key)
            if b is not None and b.ref is _ref:
                del table[key]

        table[key] = _Binding(weakref.ref(param, forget), name)

    def lookup(self, param) -> _Binding | None:
        b = self._by_id.get(id(param))
        if b is None or b.ref() is not param:
            return None
        return b

    def held(self) -> list[torch.Tensor]:
        """The tensors the bindings keep alive (packed copies on other devices)."""
        return [b.packed for b in self._by_id.values() if b.packed is not None]

    def clear(self) -> None:
        self._by_id.clear()

    def __len__(self) -> int:
        return sum(1 for b in self._by_id.values() if b.ref() is not None)
