"""Mask bookkeeping shared by MaskedSGD / MaskedAdam / MaskedAdamW.

The optimizers hold every mask packed: 1-D uint8, 1 bit per entry (True = kept)
in the parameter's MEMORY order, on the parameter's device, so the fused
kernels walk weight, grad, state and mask in one order at 1/8 byte per weight.
For a contiguous parameter that is exactly the Ticket's packed layout, and the
ticket's tensor is used as is (shared, no copy); a channels_last parameter gets
its own packed copy in memory order. Masks come from a Ticket
(`ticket.packed_for(param)` / `ticket.mask_for(param)` after `ticket.apply(model)`)
or from a dict {param: bool mask}. Everything is validated before anything changes.
"""
from __future__ import annotations

from operator import eq
from typing import Any, Iterable

import torch

from lthfast import bitmask
from lthfast.optim import _plan as _plans

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_is_contiguous = torch.Tensor.is_contiguous
_stride = torch.Tensor.stride


def check_params(name: str, groups: Iterable[dict], start: int = 0) -> None:
    """Dense real floating-point parameters only (the kernels' contract); `start`:
    the index of the first one, for the messages."""
    index = start
    for group in groups:
        for p in group["params"]:
            if not isinstance(p, torch.Tensor):
                index += 1  # torch.optim.Optimizer refuses it with its own TypeError
                continue
            if p.layout != torch.strided:
                raise TypeError(f"{name}: parameter {index} (shape {tuple(p.shape)}) is sparse "
                                f"(layout {p.layout}); masked optimizers need dense parameters")
            if p.dtype not in _FLOAT_DTYPES:
                kind = "complex" if p.is_complex() else "integer/bool" if not p.is_floating_point() else "unsupported"
                raise TypeError(f"{name}: parameter {index} (shape {tuple(p.shape)}) has {kind} dtype "
                                f"{p.dtype}; supported: float16, bfloat16, float32, float64")
            if not _is_dense(p):
                raise ValueError(f"{name}: parameter {index} (shape {tuple(p.shape)}, strides "
                                 f"{p.stride()}) is not dense in memory; make it contiguous")
            index += 1


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (its elements fill one block of memory), so
    empty_like keeps its strides and the kernels can walk memory order (an empty
    tensor is, whatever its strides: nn.Linear(0, 3).weight has strides (1, 1))."""
    if t.numel() == 0:
        return True
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _param_index(groups: list[dict]) -> dict[int, int]:
    out, i = {}, 0
    for g in groups:
        for p in g["params"]:
            out[id(p)] = i
            i += 1
    return out


def memory_order(t: torch.Tensor) -> list[int]:
    """The dims of a dense tensor from outermost to innermost in memory: t.permute(order)
    is contiguous (up to size-1 dims), so its row-major order is t's memory order."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def pack_memory_order(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bool `mask` (like's shape, any strides/device) packed in like's memory order,
    on like's device."""
    mask = mask.to(like.device)
    if like.is_contiguous():
        return bitmask.pack_bits(mask)
    return bitmask.pack_bits(mask.permute(memory_order(like)))


def unpack_memory_order(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bool mask (like's shape and strides) that `packed` holds in like's memory order."""
    if like.is_contiguous():
        return bitmask.unpack_bits(packed, like.shape)
    order = memory_order(like)
    flat = bitmask.unpack_bits(packed, [like.shape[d] for d in order])
    inverse = sorted(range(like.dim()), key=lambda d: order[d])
    return flat.permute(inverse)


def prepare_mask(name: str, index: int, param: torch.Tensor, mask: Any) -> torch.Tensor | None:
    """The bool `mask` checked and packed as the kernels read it (memory order, param's device)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: the mask of parameter {index} must be a bool tensor "
                        f"(True = kept), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: the mask of parameter {index} has dtype {mask.dtype}; masks "
                        "must be bool tensors (True = kept)")
    if mask.is_sparse or mask.layout != torch.strided:
        raise TypeError(f"{name}: the mask of parameter {index} is sparse; pass a dense bool tensor")
    if mask.shape != param.shape:
        raise ValueError(f"{name}: the mask of parameter {index} has shape {tuple(mask.shape)} "
                         f"but the parameter has shape {tuple(param.shape)}")
    if mask.device.type == "meta" and param.device.type != "meta":
        raise ValueError(f"{name}: the mask of parameter {index} is on the meta device (no "
                         f"values); pass a mask with values (the parameter is on {param.device})")
    return pack_memory_order(mask, param)


def _ticket_mask(name: str, index: int, param: torch.Tensor, ticket) -> torch.Tensor | None:
    """The packed mask of `param` from `ticket`: for a contiguous parameter the ticket's own
    packed tensor (no copy) when it offers one, else its bool mask packed in memory order."""
    packed_for = getattr(ticket, "packed_for", None)
    if callable(packed_for) and param.is_contiguous():
        packed = packed_for(param)
        if packed is None:
            return None
        need = bitmask.packed_nbytes(param.numel())
        if (not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8
                or packed.dim() != 1 or packed.numel() != need or not packed.is_contiguous()):
            raise ValueError(f"{name}: the ticket's packed mask of parameter {index} is not 1-D "
                             f"contiguous uint8 of {need} bytes (got "
                             f"{getattr(packed, 'dtype', type(packed).__name__)} of shape "
                             f"{tuple(getattr(packed, 'shape', ()))})")
        return packed if packed.device == param.device else packed.to(param.device)
    return prepare_mask(name, index, param, ticket.mask_for(param))


def resolve_masks(name: str, groups: list[dict], *, ticket=None, masks=None,
                  only: list | None = None) -> dict:
    """{param: packed mask} for every parameter (of `only`, if given) that has one, all
    validated first."""
    if ticket is not None and masks is not None:
        raise ValueError(f"{name}: pass ticket= or masks=, not both")
    index = _param_index(groups)
    params = [p for g in groups for p in g["params"]] if only is None else list(only)
    out: dict = {}
    if ticket is not None:
        if not callable(getattr(ticket, "mask_for", None)):
            raise TypeError(f"{name}: ticket must be an lthfast.Ticket (with mask_for(param)), "
                            f"got {type(ticket).__name__}")
        for p in params:
            m = _ticket_mask(name, index[id(p)], p, ticket)
            if m is not None:
                out[p] = m
        if params and not out and only is None:
            raise ValueError(f"{name}: the ticket has no mask for any of these parameters; call "
                             "ticket.apply(model) first (it binds the masks to the model's "
                             "parameters), or pass the parameters of the model it was applied to")
    elif masks is not None:
        if not isinstance(masks, dict):
            raise TypeError(f"{name}: masks must be a dict {{param: bool mask}}, got "
                            f"{type(masks).__name__}")
        for p, m in masks.items():
            if not isinstance(p, torch.Tensor) or id(p) not in index:
                raise ValueError(f"{name}: masks has a key that is not a parameter of this "
                                 "optimizer (keys must be the parameter tensors themselves)")
            pm = prepare_mask(name, index[id(p)], p, m)
            if pm is not None:
                out[p] = pm
    return out


@torch.no_grad()
def zero_pruned(param: torch.Tensor, packed: torch.Tensor, state: dict) -> None:
    """Pruned entries of the weight and of its per-entry optimizer state to 0.0
    (`packed`: the packed mask in param's memory order). Straight from the bits
    (bitmask.zero_pruned_ on a view whose row-major order is param's memory order);
    a state tensor with other strides or on another device through a bool mask."""
    order = None if param.is_contiguous() else memory_order(param)
    pruned = None
    # per-entry state only: Adam's 'step' counter has a 0-dim parameter's shape too
    for t in [param] + [v for k, v in state.items() if k != "step" and isinstance(v, torch.Tensor)
                        and v.shape == param.shape and v.is_floating_point()]:
        if t.stride() == param.stride() and t.device == packed.device:
            bitmask.zero_pruned_(t if order is None else t.permute(order), packed)
        else:
            if pruned is None:
                pruned = ~unpack_memory_order(packed.to(param.device), param)
            t.masked_fill_(pruned.to(t.device), 0.0)


class MaskedOptimizerMixin:
    """set_ticket / set_masks / mask_of for a torch.optim.Optimizer subclass."""

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf
    _plan = None  # the cached step lists (see _plan.py); never pickled

    # subclasses: _plan_key(group), _plan_states(group, params, state), _plan_run(group, call, grads)

    def _planned_step(self) -> bool:
        """Runs this step from the cached plan (built now if none fits); False: nothing was
        done and the checked path must run the step (first step of a parameter, a grad that
        the kernel or the pre-check rejects, under torch.compile)."""
        if torch.compiler.is_compiling():
            return False
        key_of = self._plan_key
        plan = self._plan
        bound = plan.bind(self, key_of) if plan is not None else None
        if bound is None:
            plan = self._plan = _plans.make(self, key_of, self._plan_states)
            if plan is None:
                return False
            bound = plan.bind(self, key_of)
            if bound is None:  # pragma: no cover - make() describes the optimizer as it is
                self._plan = None
                return False
        for k in range(plan.precheck_from, len(bound)):
            _, call, grads = bound[k]
            if not _plans.grads_ok(call, grads):
                self._plan = None
                return False
        run = self._plan_run
        for k, (group, call, grads) in enumerate(bound):
            try:
                run(group, call, grads)
            except Exception:
                if k < plan.precheck_from:  # the op rejected its input and wrote nothing
                    self._plan = None
                    return False
                raise
        return True

    def _init_masks(self, ticket, masks) -> None:
        name = type(self).__name__
        check_params(name, self.param_groups)
        self._ticket = None
        self._masks: dict = {}
        self._install(resolve_masks(name, self.param_groups, ticket=ticket, masks=masks), ticket)

    def _install(self, new_masks: dict, ticket) -> None:
        self._plan = None
        for p, m in new_masks.items():
            zero_pruned(p, m, self.state.get(p, {}))
        self._masks = new_masks
        self._ticket = ticket
        self._watch_layouts()

    # A packed mask is in its parameter's memory order as it was when the mask was
    # packed. The same Parameter can later get other strides (model.to(memory_format=
    # torch.channels_last) after the optimizer was built sets p.data): its mask is then
    # repacked before the step, or the kernel would keep and prune the wrong entries.
    def _watch_layouts(self) -> None:
        """Remembers the layout each mask was packed for: row-major (is_contiguous) or
        the parameter's strides."""
        rowmajor, other, strides = [], [], []
        for p in self._masks:
            if p.is_contiguous():
                rowmajor.append(p)
            else:
                other.append(p)
                strides.append(p.stride())
        self._layouts = (rowmajor, other, strides)

    def _follow_layouts(self) -> None:
        """Before a step: repacks the masks of parameters whose layout changed (a C-level
        check per masked parameter, ~0.1 us each)."""
        rowmajor, other, strides = self._layouts
        if all(map(_is_contiguous, rowmajor)) and (
                not other or all(map(eq, map(_stride, other), strides))):
            return
        if torch.compiler.is_compiling():
            raise RuntimeError(f"{type(self).__name__}: a masked parameter's memory layout "
                               "changed after the optimizer was built; step once outside "
                               "torch.compile to repack its mask")
        self._plan = None
        packed_for = dict(zip(map(id, rowmajor), [None] * len(rowmajor)))
        packed_for.update(zip(map(id, other), strides))
        for p, packed in list(self._masks.items()):
            was = packed_for[id(p)]
            if (p.is_contiguous() if was is None else p.stride() == was):
                continue
            like = (torch.empty(p.shape, device="meta") if was is None  # (strides only)
                    else torch.empty_strided(p.shape, was, device="meta"))
            keep = unpack_memory_order(packed.to(p.device), like)
            self._masks[p] = pack_memory_order(keep, p)
            st = self.state.get(p)
            if st:
                align_entry_state(p, st)
        self._watch_layouts()

    def set_ticket(self, ticket) -> None:
        """Switches to `ticket`'s masks (e.g. the next IMP round) without rebuilding the
        optimizer: the newly pruned entries of the weights and of their optimizer state
        become 0.0 now. `None` turns masking off."""
        self._install(resolve_masks(type(self).__name__, self.param_groups, ticket=ticket), ticket)

    def set_masks(self, masks: dict | None) -> None:
        """Like set_ticket, from a dict {param: bool mask (True = kept)}; None = no masks.
        The masks are stored packed (1 bit per weight); the dict's tensors are not kept."""
        self._install(resolve_masks(type(self).__name__, self.param_groups, masks=masks), None)

    def _mask_on_device(self, param: torch.Tensor) -> torch.Tensor | None:
        """`param`'s packed mask on param's device. A model moved after the optimizer was
        built (`model.cuda()`; torch.optim allows that before the first step) takes its
        masks along here, once: the checked step path and mask_of come through this."""
        packed = self._masks.get(param)
        if packed is not None and packed.device != param.device:
            packed = self._masks[param] = packed.to(param.device)
            self._plan = None
        return packed

    def mask_of(self, param: torch.Tensor) -> torch.Tensor | None:
        """The bool keep-mask this optimizer applies to `param` (param's shape, strides
        and device), unpacked now from the packed mask it holds; None: unmasked."""
        self._follow_layouts()
        packed = self._mask_on_device(param)
        return None if packed is None else unpack_memory_order(packed, param)

    def packed_mask_of(self, param: torch.Tensor) -> torch.Tensor | None:
        """The packed mask this optimizer holds for `param` (uint8, 1 bit per entry in
        param's memory order, on param's device; for a contiguous parameter of an applied
        Ticket, the ticket's own packed tensor), or None."""
        self._follow_layouts()
        return self._mask_on_device(param)

    @property
    def ticket(self):
        return self._ticket

    def add_param_group(self, param_group: dict) -> None:
        if not hasattr(self, "_masks"):
            return super().add_param_group(param_group)  # type: ignore[misc]  # __init__
        name = type(self).__name__
        if isinstance(param_group, dict) and "params" in param_group:
            # checked before torch appends the group: a bad group must change nothing
            params = param_group["params"]
            if not isinstance(params, (torch.Tensor, set)):
                param_group = {**param_group, "params": list(params)}  # a generator runs once
            if not isinstance(params, set):
                # named_parameters() gives (name, param) pairs: torch keeps the param
                # (and records the names), so check the param
                tensors = [params] if isinstance(params, torch.Tensor) else [
                    p[1] if isinstance(p, tuple) and len(p) > 1 else p
                    for p in param_group["params"]]
                check_params(name, [{"params": tensors}],
                             start=sum(len(g["params"]) for g in self.param_groups))
        self._plan = None
        super().add_param_group(param_group)  # type: ignore[misc]
        if self._ticket is None:
            return
        try:
            new = resolve_masks(name, self.param_groups, ticket=self._ticket,
                                only=self.param_groups[-1]["params"])
        except Exception:
            self.param_groups.pop()  # the ticket's mask was unusable: group not added
            raise
        for p, m in new.items():
            zero_pruned(p, m, {})
        self._masks.update(new)
        self._watch_layouts()

    def __getstate__(self) -> dict:
        # torch.optim.Optimizer pickles defaults/state/param_groups only; without the masks
        # a deepcopy or torch.save'd optimizer would fail (or stop masking) on its next step
        state = super().__getstate__()  # type: ignore[misc]
        state["_masks"] = self._masks  # keyed by the same Parameters as `state`: copied together
        state["_ticket"] = self._ticket
        state["_layouts"] = self._layouts
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._plan = None
        self.__dict__.setdefault("_masks", {})  # pickled before masks were pickled
        self.__dict__.setdefault("_ticket", None)
        if "_layouts" not in self.__dict__:  # pickled before layouts were: as they are now
            self._watch_layouts()

    def _align_state(self, keys: tuple[str, ...]) -> None:
        """After load_state_dict: per-entry state in the parameter's layout, Adam's
        step where the kernels read it (see _step_tensor)."""
        self._follow_layouts()
        self._plan = None
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                align_entry_state(p, st, keys)
                if "step" in st:
                    st["step"] = _step_tensor(p, st["step"])
                m = self._masks.get(p)
                if m is not None:
                    zero_pruned(p, m, st)


def align_entry_state(p: torch.Tensor, st: dict, keys=None) -> None:
    """Per-entry state of `p` (the tensors of `keys`, or all of p's shape) copied into p's
    strides where they differ (a loaded state_dict, a parameter whose layout changed):
    the kernels walk a parameter and its state in one memory order."""
    for k in (keys if keys is not None else list(st)):
        v = st.get(k)
        if (isinstance(v, torch.Tensor) and k != "step" and v.shape == p.shape
                and v.stride() != p.stride() and v.numel() > 1):
            st[k] = torch.empty_like(p).copy_(v)


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _step_tensor(p: torch.Tensor, value) -> torch.Tensor:
    """Adam's step counter: a CPU tensor for CPU params (like torch.optim), a float32
    tensor on the parameter's device for GPU params (like torch's fused Adam)."""
    if p.device.type == "cpu":
        t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else _scalar_dtype()
        return t.to(device="cpu", dtype=dtype)
    if isinstance(value, torch.Tensor):
        return value.to(device=p.device, dtype=torch.float32)
    return torch.tensor(float(value), dtype=torch.float32, device=p.device)


def new_step_tensor(p: torch.Tensor) -> torch.Tensor:
    if p.device.type == "cpu":
        return torch.tensor(0.0, dtype=_scalar_dtype())
    return torch.zeros((), dtype=torch.float32, device=p.device)
