"""`Ticket`: the masks of one lottery ticket, keyed by parameter name, held
bit-packed (1 bit per weight) with their shapes; bool masks are unpacked on demand."""
from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from lthfast import _ops, bitmask
from lthfast._version import __version__
from lthfast.magnitude import amount_to_count, global_magnitude_masks
from lthfast.ticket import _file, _interop, _report
from lthfast.ticket._binding import Bindings
from lthfast.ticket._select import (check_parameter, named_parameters, refuse_masked_layers,
                                    select_parameters)


class Ticket:
    """Keep-masks (True = kept) of a model's parameters, by parameter name.

    Build one with :meth:`from_model` (magnitude pruning), :meth:`dense`,
    :meth:`prune` (the next IMP round), :meth:`load` or :meth:`from_pruned`;
    ``Ticket({name: bool_mask})`` wraps masks you already have.
    """

    def __init__(self, masks: dict, *, round: int = 0, meta: dict | None = None,
                 layerwise: bool = False):
        if not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
        packed, shapes, kept = {}, {}, {}
        for name, m in masks.items():
            if not isinstance(name, str):
                raise TypeError(f"mask names must be parameter names (str), got {name!r}")
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.layout != torch.strided:
                raise TypeError(f"masks[{name!r}] must be a dense torch.bool tensor (True = kept)")
            packed[name] = bitmask.pack_bits(m)
            shapes[name] = tuple(m.shape)
            kept[name] = bitmask.count_bits(packed[name])
        self._init(list(masks), shapes, packed, kept, round, meta, layerwise)

    def _init(self, names, shapes, packed, kept, round_, meta, layerwise):
        if isinstance(round_, bool) or not isinstance(round_, numbers.Integral) or round_ < 0:
            raise ValueError(f"round={round_!r} must be a non-negative int")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        self._names = list(names)
        self._shapes = dict(shapes)
        self._packed = dict(packed)
        self._kept = dict(kept)
        self.round = int(round_)
        self.meta = dict(meta) if meta else {}
        self.layerwise = _flag("layerwise", layerwise)
        self._bindings = Bindings()

    @classmethod
    def _make(cls, names, shapes, packed, kept, round_, meta, layerwise) -> "Ticket":
        t = cls.__new__(cls)
        t._init(names, shapes, packed, kept, round_, meta, layerwise)
        return t

    # ------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, amount, *, scope=None, exclude=None,
                   layerwise: bool = False, meta: dict | None = None) -> "Ticket":
        """Magnitude pruning of ``model`` (unchanged): prunes ``amount`` (a float
        fraction or an int count) of the selected weights, globally (one threshold)
        or, with ``layerwise=True``, of each tensor. Round 1."""
        layerwise = _flag("layerwise", layerwise)
        named = select_parameters(model, scope, exclude)
        refuse_masked_layers(model, named)
        masks = _magnitude_masks(named, amount, None, layerwise)
        return cls._of(named, masks, 1, meta, layerwise)

    @classmethod
    def dense(cls, model: nn.Module, scope=None, exclude=None, *, meta: dict | None = None) -> "Ticket":
        """Every selected weight kept (round 0): where IMP starts."""
        named = select_parameters(model, scope, exclude)
        refuse_masked_layers(model, named)
        masks = [torch.ones(p.shape, dtype=torch.bool, device=p.device) for _, p in named]
        return cls._of(named, masks, 0, meta, False)

    @classmethod
    def _of(cls, named, masks, round_, meta, layerwise) -> "Ticket":
        names = [n for n, _ in named]
        packed = {n: bitmask.pack_bits(m) for n, m in zip(names, masks)}
        kept = {n: bitmask.count_bits(packed[n]) for n in names}
        shapes = {n: tuple(p.shape) for n, p in named}
        return cls._make(names, shapes, packed, kept, round_, meta, layerwise)

    def prune(self, model: nn.Module, amount, *, layerwise: bool | None = None) -> "Ticket":
        """A new ticket (round + 1) that also prunes ``amount`` of the weights this
        one keeps, by the magnitude of ``model``'s weights; this ticket is unchanged."""
        layerwise = self.layerwise if layerwise is None else _flag("layerwise", layerwise)
        self.check(model)
        named = [(n, model.get_parameter(n)) for n in self._names]
        masks = None if layerwise else _global_masks_from_bits(
            named, amount, [self._packed[n] for n in self._names], self.kept())
        if masks is None:
            masks = _magnitude_masks(named, amount, [self._mask_on(n, p.device) for n, p in named],
                                     layerwise)
        return type(self)._of(named, masks, self.round + 1, copy.deepcopy(self.meta), layerwise)

    def __getstate__(self):
        # bindings hold weak references to live parameters: not part of a copy
        state = dict(self.__dict__)
        state.pop("_bindings", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._bindings = Bindings()

    # ---------------------------------------------------------------- queries
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self):
        return iter(list(self._names))

    def __contains__(self, name) -> bool:
        return name in self._shapes

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    @property
    def device(self) -> torch.device:
        return next(iter(self._packed.values())).device if self._packed else torch.device("cpu")

    def _key(self, name) -> str:
        if name not in self._shapes:
            raise KeyError(f"{name!r} is not in this ticket; its names: {self._names[:8]}"
                           f"{' ...' if len(self._names) > 8 else ''}")
        return name

    def __getitem__(self, name: str) -> torch.Tensor:
        """The bool keep-mask of ``name`` (unpacked now, on the ticket's device)."""
        name = self._key(name)
        return bitmask.unpack_bits(self._packed[name], self._shapes[name])

    def packed(self, name: str) -> torch.Tensor:
        """The packed mask of ``name`` (uint8, 1 bit per entry, row-major, LSB first)."""
        return self._packed[self._key(name)]

    def _mask_on(self, name, device) -> torch.Tensor:
        return bitmask.unpack_bits(self._packed_on(name, device), self._shapes[name])

    def _packed_on(self, name, device) -> torch.Tensor:
        return self._packed[name].to(device)

    def numel(self, name: str | None = None) -> int:
        if name is not None:
            return math.prod(self._shapes[self._key(name)])
        return sum(math.prod(s) for s in self._shapes.values())

    def kept(self, name: str | None = None) -> int:
        """Number of kept weights (of ``name``, or of all)."""
        if name is not None:
            return self._kept[self._key(name)]
        return sum(self._kept.values())

    def kept_by_name(self) -> dict[str, int]:
        return {n: self._kept[n] for n in self._names}

    def sparsity(self, name: str | None = None) -> float:
        """Fraction of weights pruned (of ``name``, or overall)."""
        n = self.numel(name)
        return 1.0 - self.kept(name) / n if n else 0.0

    def collapsed(self) -> list[str]:
        """Names of the non-empty tensors with no kept weight (layer collapse)."""
        return [n for n in self._names if self._kept[n] == 0 and self.numel(n) > 0]

    def sparsity_by_name(self) -> dict[str, float]:
        return {n: self.sparsity(n) for n in self._names}

    def iou(self, other: "Ticket") -> dict:
        """Overlap of the kept weights, |a ∩ b| / |a ∪ b| (1.0 where both keep
        nothing): ``{"overall": float, "by_name": {name: float}}``."""
        if not isinstance(other, Ticket):
            raise TypeError(f"other is a {type(other).__name__}, not a Ticket")
        if set(self._names) != set(other._names):
            a, b = set(self._names), set(other._names)
            raise ValueError(f"tickets cover different parameters (only in self: {sorted(a - b)}, "
                             f"only in other: {sorted(b - a)})")
        bad = [n for n in self._names if self._shapes[n] != other._shapes[n]]
        if bad:
            raise ValueError(f"tickets disagree on the shapes of {bad}")
        by_name, inter_all, union_all = {}, 0, 0
        for n in self._names:
            inter, union = bitmask.overlap_bits(self._packed[n], other._packed[n])
            by_name[n] = inter / union if union else 1.0
            inter_all += inter
            union_all += union
        return {"overall": inter_all / union_all if union_all else 1.0, "by_name": by_name}

    def to(self, device) -> "Ticket":
        """This ticket with its packed masks on ``device`` (self when already there);
        ValueError naming ``device`` when it is no device this machine has."""
        device = _device_arg(device)
        if all(p.device == device for p in self._packed.values()):
            return self
        packed = {n: p.to(device) for n, p in self._packed.items()}
        return type(self)._make(self._names, self._shapes, packed, self._kept, self.round,
                                copy.deepcopy(self.meta), self.layerwise)

    def __eq__(self, other) -> bool:
        """Same names (in order), shapes and mask bits; round and meta are not compared."""
        if not isinstance(other, Ticket):
            return NotImplemented
        if self._names != other._names or self._shapes != other._shapes or self._kept != other._kept:
            return False
        return all(torch.equal(self._packed[n].cpu(), other._packed[n].cpu()) for n in self._names)

    __hash__ = None

    def __repr__(self) -> str:
        return (f"Ticket(round={self.round}, tensors={len(self)}, weights={self.numel()}, "
                f"kept={self.kept()}, sparsity={100 * self.sparsity():.2f}%, device={self.device})")

    # ------------------------------------------------------- model interaction
    def check(self, model: nn.Module, *, strict: bool = False) -> None:
        """ValueError listing every name of this ticket the model lacks and every
        shape that differs (strict: also the model's Conv/Linear weights the
        ticket does not cover)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is a {type(model).__name__}, not a torch.nn.Module")
        params = named_parameters(model)  # tied parameters under each of their names
        missing, mismatched, hooked, unsupported, tied = [], [], [], [], []
        name_of: dict[int, str] = {}
        for n in self._names:
            p = params.get(n)
            if p is None:
                (hooked if n + "_orig" in params else missing).append(n)
            elif id(p) in name_of:  # two masks for one tensor: which one would hold?
                tied.append(f"{name_of[id(p)]} and {n}")
            elif tuple(p.shape) != self._shapes[n]:
                mismatched.append(f"{n}: ticket {self._shapes[n]}, model {tuple(p.shape)}")
            else:
                try:
                    check_parameter(n, p)
                except (TypeError, ValueError) as e:
                    unsupported.append(str(e))
            if p is not None:
                name_of.setdefault(id(p), n)
        extra = []
        if strict:
            try:
                extra = [n for n, p in select_parameters(model) if id(p) not in name_of]
            except (ValueError, TypeError):  # no / unsupported default-scope weights
                extra = []
        problems = []
        if missing:
            problems.append(f"missing from the model: {missing}{_prefix_hint(missing, params)}")
        if tied:
            problems.append(f"names of one tied parameter (keep one of them): {tied}")
        if hooked:
            problems.append(f"pruned with torch.nn.utils.prune hooks in the model (make them "
                            "permanent with torch.nn.utils.prune.remove first; "
                            f"Ticket.from_pruned reads their masks): {hooked}")
        if mismatched:
            problems.append(f"shape mismatch: {mismatched}")
        if unsupported:
            problems.append(f"unsupported parameters: {unsupported}")
        if extra:
            problems.append(f"model weights the ticket does not cover: {extra}")
        if problems:
            raise ValueError("ticket does not match the model (" + type(model).__name__ + "): "
                             + "; ".join(problems))

    def apply(self, model: nn.Module, *, strict: bool = False) -> nn.Module:
        """Zeroes the pruned weights of ``model`` in place (no hooks, no
        ``weight_orig``) and binds each mask to its parameter for :meth:`mask_for`.
        Checks first: a ticket that does not match changes nothing. Returns model."""
        self.check(model, strict=strict)
        named = [(n, model.get_parameter(n)) for n in self._names]
        # the bits on each parameter's device, all made before any write; the pruned
        # entries are zeroed from them directly (no bool mask: one pass per weight)
        bits = [self._packed_on(n, p.device) for n, p in named]
        with torch.no_grad():
            for (n, p), b in zip(named, bits):
                bitmask.zero_pruned_(p, b)
                self._bindings.bind(model, p, n)
        return model

    def mask_for(self, param: torch.Tensor) -> torch.Tensor | None:
        """The keep-mask (bool, param's shape and device) of a parameter bound by
        :meth:`apply`, or None. Unpacked on every call (not cached: the ticket holds
        its masks at 1 bit per weight); keep the result if you need it repeatedly."""
        if not isinstance(param, torch.Tensor):  # a name: that is ticket[name]
            raise TypeError(f"mask_for takes a parameter (a tensor bound by apply), got "
                            f"{type(param).__name__} {param!r:.60}; a mask by name is ticket[name]")
        packed = self.packed_for(param)
        return None if packed is None else bitmask.unpack_bits(packed, tuple(param.shape))

    def packed_for(self, param: torch.Tensor) -> torch.Tensor | None:
        """The packed mask of a bound parameter on its device (1 bit per entry, row-major),
        or None: the ticket's own tensor when it is on that device (no copy), else a
        copy kept with the binding (re-made if the parameter moves). ValueError when the
        parameter's shape changed since it was bound (its bits would land elsewhere)."""
        b = self._bindings.lookup(param)
        if b is None:
            return None
        if tuple(param.shape) != self._shapes[b.name]:
            raise ValueError(f"parameter {b.name!r} now has shape {tuple(param.shape)} but the "
                             f"ticket's mask has {self._shapes[b.name]}")
        own = self._packed[b.name]
        if own.device == param.device:
            b.packed = None
            return own
        if b.packed is None or b.packed.device != param.device:
            b.packed = own.to(param.device)
        return b.packed

    def name_of(self, param: torch.Tensor) -> str | None:
        """The parameter name a bound parameter has in this ticket, or None."""
        b = self._bindings.lookup(param)
        return None if b is None else b.name

    # ----------------------------------------------------------------- files
    def save(self, path) -> None:
        """Writes a safetensors file (masks bit-packed, metadata) atomically."""
        _file.write(path, self._names, self._shapes, self._packed, self._kept, self.round,
                    self.meta, __version__, self.layerwise)

    @classmethod
    def load(cls, path, *, device="cpu") -> "Ticket":
        """Reads a ticket file (nothing is unpickled); ValueError naming the file
        and the problem when it is not a valid, self-consistent ticket; ValueError naming
        ``device`` when it is no device this machine has (checked before the file is read)."""
        device = _device_arg(device)
        names, shapes, packed, kept, round_, meta, layerwise = _file.read(path)
        t = cls._make(names, shapes, packed, kept, round_, meta, layerwise)
        return t.to(device)

    # --------------------------------------------------------------- interop
    @classmethod
    def from_pruned(cls, module: nn.Module, *, round: int = 1, meta: dict | None = None) -> "Ticket":
        """The masks (``<name>_mask`` buffers) of a module pruned with
        torch.nn.utils.prune or lthfast.prune, under the original parameter names."""
        masks = _interop.masks_of_pruned(module)  # float masks pack as they are (!= 0)
        packed = {n: bitmask.pack_bits(m) for n, m in masks.items()}
        kept = {n: bitmask.count_bits(p) for n, p in packed.items()}
        return cls._make(list(masks), {n: tuple(m.shape) for n, m in masks.items()}, packed,
                         kept, round, meta, False)

    def to_pruned(self, model: nn.Module) -> nn.Module:
        """Installs the masks as ``torch.nn.utils.prune.custom_from_mask`` hooks."""
        self.check(model)
        return _interop.install(model, {n: self._mask_on(n, model.get_parameter(n).device)
                                        for n in self._names})

    # ---------------------------------------------------------------- report
    def report(self, model: nn.Module | None = None) -> list[dict]:
        """One row per tensor: name, shape, params, kept, sparsity, zero_slices
        (fully pruned conv kernels / linear rows) and slice_kind; with ``model``
        also module type and whether the model's pruned weights are all zero."""
        if model is not None:
            self.check(model)
        return _report.rows(self, model)

    def format_report(self, model: nn.Module | None = None) -> str:
        return _report.format_rows(self.report(model), self)


def _device_arg(device, arg: str = "device") -> torch.device:
    """torch.device of the ``device=`` argument, or an error naming the argument and its
    value (instead of torch's driver error) when this machine cannot hold tensors there."""
    try:
        dev = torch.device(device)
    except TypeError:
        raise TypeError(f"{arg}={device!r} must be a torch.device or a device string such as "
                        f"'cpu' or 'cuda', not {type(device).__name__}") from None
    except RuntimeError as e:
        raise ValueError(f"{arg}={device!r} is not a device ({e}); use e.g. {arg}='cpu' or "
                         f"{arg}='cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{arg}={device!r}: no CUDA GPU is visible (torch.cuda.is_available() "
                             f"is False); use {arg}='cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{arg}={device!r}: there is no CUDA device {dev.index}; this machine "
                             f"has {n} (cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
        from lthfast import _ops
        if _ops.available() and not _ops.build_info().get("cuda"):
            raise ValueError(f"{arg}={device!r}: lthfast was built without CUDA kernels (see "
                             f"`lthfast info`); rebuild it with a CUDA toolkit and a CUDA build "
                             f"of torch, or use {arg}='cpu'")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        is_available = getattr(backend, "is_available", None)
        if callable(is_available) and not is_available():
            raise ValueError(f"{arg}={device!r}: no {dev.type} device is available on this "
                             f"machine; use {arg}='cpu'")
    return dev


def _prefix_hint(missing: list[str], params: dict) -> str:
    """DataParallel / DistributedDataParallel name every parameter "module.<name>": say so
    when that prefix is all that differs."""
    p = "module."
    if all(n.startswith(p) and n[len(p):] in params for n in missing):
        return (" (the ticket was made on a DataParallel/DistributedDataParallel-wrapped model: "
                "apply it to the wrapped model, whose parameters are the same tensors)")
    if all(p + n in params for n in missing):
        return (" (the model is wrapped in DataParallel/DistributedDataParallel: pass "
                "model.module, whose parameters are the same tensors)")
    return ""


def _global_masks_from_bits(named, amount, packed, n_kept):
    """What ``_magnitude_masks(named, amount, <the ticket's masks, unpacked>, False)``
    gives, with the ticket's bits as the eligibility: no bool mask per tensor (on
    keypointrcnn 59 MB less, and no unpacking) and no count (the ticket knows it).
    None where this does not apply (weights on several devices, the reference
    ops) or the op refuses the input: the caller's path then raises its documented
    error, in its order."""
    tensors = [p.detach() for _, p in named]
    dev = tensors[0].device
    if not _ops.available() or _ops.use_reference() or any(t.device != dev for t in tensors):
        return None
    try:
        k = amount_to_count(amount, n_kept)
        with torch.no_grad():
            return list(torch.ops.lthfast.global_magnitude_masks(
                tensors, [p.to(dev) for p in packed], k))
    except (RuntimeError, TypeError, ValueError):
        return None


def _flag(name: str, value) -> bool:
    """A bool argument: True / False (or 1 / 0); anything else (a string such as "false"
    is truthy) is a TypeError naming it."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def _magnitude_masks(named, amount, masks, layerwise):
    """Keep-masks of magnitude pruning of the ``(name, param)`` list (on each param's device)."""
    tensors = [p.detach() for _, p in named]
    if layerwise:
        for i, (name, t) in enumerate(named):  # every amount checked before any mask is made
            n = t.numel() if masks is None else int(torch.count_nonzero(masks[i]))
            amount_to_count(amount, n, name=f"amount (for {name!r}, layer-wise)")
        return [global_magnitude_masks([t], amount, masks=None if masks is None else [masks[i]])[0]
                for i, t in enumerate(tensors)]
    if len({t.device for t in tensors}) == 1:
        return global_magnitude_masks(tensors, amount, masks=masks)
    # weights on several devices: one global threshold over copies on the first device
    dev = tensors[0].device
    out = global_magnitude_masks([t.to(dev) for t in tensors], amount,
                                 masks=None if masks is None else [m.to(dev) for m in masks])
    return [m.to(t.device) for m, t in zip(out, tensors)]
