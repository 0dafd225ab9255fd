"""Randomized differential test: lthfast.prune against torch.nn.utils.prune.

Each scenario builds a few small random modules (Linear, empty Linear, Conv2d with
groups and channels_last, ConvTranspose2d, Embedding, BatchNorm2d, a 0-d weight;
float16/bfloat16/float32/float64) and applies one random sequence of operations to
two copies: through torch.nn.utils.prune on one, through lthfast.prune (now and then through torch's
functions, to mix hooks) on the other. After every step the two must agree on
parameters, buffers, state_dicts, masks, pruned tensors, hooks, Parameter
identity, forward outputs, gradients and the type of any exception raised.

Values are distinct magnitudes exactly representable in every dtype, so L1
decisions have no ties (tie order is a documented difference). channels_last
weights are compared with torch on a contiguous copy (torch cannot prune them; a
documented difference). A failed step ends the scenario: torch's rollback after a
failure differs by design, so only the exception types are compared, and the
lthfast copy must be exactly as it was before the step.

Regression tests for the mismatches this fuzzing found follow the fuzz test.
"""
from __future__ import annotations

import copy
import io
import pickle
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast.prune as lprune

from _prune_helpers import _kernel_or_reference  # noqa: F401 (autouse fixture)

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# m * 2**e with m in [128, 256): exact in bfloat16 / float16, and all distinct
POOL = torch.tensor([m * 2.0 ** e for e in range(-20, -8) for m in range(128, 256)],
                    dtype=torch.float64)


class Values:
    """Draws distinct magnitudes (random signs) from POOL without replacement."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.left = list(range(len(POOL)))
        rng.shuffle(self.left)

    def take(self, shape, dtype):
        n = int(np.prod(shape)) if len(shape) else 1
        assert n <= len(self.left), "scenario too large for the pool"
        idx, self.left = self.left[:n], self.left[n:]
        signs = torch.tensor([self.rng.choice((-1.0, 1.0)) for _ in range(n)], dtype=torch.float64)
        return (POOL[idx] * signs).reshape(shape).to(dtype)


# ----------------------------------------------------------------- the zoo
class Scale(nn.Module):
    """A 0-d ``weight`` (and a 1-D ``bias``): pruning scalars."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * self.weight + self.bias


def _random_module(rng: random.Random):
    kind = rng.choice(["linear", "linear", "conv", "conv", "convt", "embedding", "bn", "empty",
                       "scale"])
    dtype = rng.choice(DTYPES)
    channels_last = False
    if kind == "linear":
        m = nn.Linear(rng.randint(1, 6), rng.randint(1, 5), bias=rng.random() < 0.7)
        x = ("float", (2, m.in_features))
    elif kind == "empty":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = nn.Linear(0, rng.randint(1, 3))
        x = ("float", (2, 0))
    elif kind == "conv":
        groups = rng.choice([1, 1, 2])
        cin, cout = groups * rng.randint(1, 2), groups * rng.randint(1, 3)
        m = nn.Conv2d(cin, cout, rng.choice([1, 2, 3]), groups=groups, bias=rng.random() < 0.6)
        channels_last = rng.random() < 0.4
        x = ("float", (1, cin, 4, 4))
    elif kind == "convt":
        m = nn.ConvTranspose2d(rng.randint(1, 3), rng.randint(1, 3), 2, bias=rng.random() < 0.6)
        channels_last = rng.random() < 0.3
        x = ("float", (1, m.in_channels, 3, 3))
    elif kind == "embedding":
        m = nn.Embedding(rng.randint(2, 6), rng.randint(1, 4))
        x = ("index", (3,), m.num_embeddings)
    elif kind == "scale":
        m = Scale(rng.randint(1, 3))
        x = ("float", (2, len(m.bias)))
    else:
        m = nn.BatchNorm2d(rng.randint(1, 4))
        x = ("float", (2, m.num_features, 2, 2))
    if dtype in (torch.float16, torch.bfloat16) and kind in ("conv", "convt"):
        dtype = torch.float32  # no half convolution on every CPU build
    return m.to(dtype).eval(), x, channels_last


class Case:
    """The torch copy and the lthfast copy of one random set of modules."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.values = Values(rng)
        built = [_random_module(rng) for _ in range(rng.randint(1, 3))]
        self.inputs = [x for _, x, _ in built]
        self.channels_last = [cl for _, _, cl in built]
        for m, _, _ in built:
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(self.values.take(p.shape, p.dtype))
        tmods = [m for m, _, _ in built]
        lmods = copy.deepcopy(tmods)
        for m, cl in zip(lmods, self.channels_last):
            if cl:
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        self.t, self.l = nn.ModuleList(tmods), nn.ModuleList(lmods)
        # the Parameter object each side must keep as name_orig / give back on remove
        self.objects = {side: self._objects(side) for side in ("t", "l")}
        self.loose = {}  # results of method.prune() on loose tensors, by side

    def _objects(self, side):
        out = {}
        for i, m in enumerate(getattr(self, side)):
            for name in ("weight", "bias"):
                if name + "_orig" in m._parameters:
                    out[i, name] = m._parameters[name + "_orig"]
                elif m._parameters.get(name) is not None:
                    out[i, name] = m._parameters[name]
        return out

    def targets(self):
        return list(self.objects["t"])

    def pick_lib(self, i=None):
        """torch's functions now and then on the lthfast copy (mixed hooks), but not on
        channels_last weights, which torch cannot prune."""
        mods = range(len(self.l)) if i is None else [i]
        if any(self.channels_last[j] for j in mods) or self.rng.random() > 0.25:
            return lprune
        return tprune

    def forward(self, side):
        outs = []
        gen = torch.Generator().manual_seed(123)
        for m, spec in zip(getattr(self, side), self.inputs):
            p = next(iter(m.parameters()))
            if spec[0] == "index":
                x = torch.randint(0, spec[2], spec[1], generator=gen)
            else:
                x = torch.randn(spec[1], generator=gen, dtype=torch.float64).to(p.dtype)
            outs.append(m(x))
        return outs


# ------------------------------------------------------------ comparisons
def _same(a, b, close=False):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if close:
        torch.testing.assert_close(a, b, equal_nan=True)
    else:
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
        assert torch.equal(a.isnan(), b.isnan())


def _hook_layout(m):
    out = []
    for h in m._forward_pre_hooks.values():
        assert isinstance(h, tprune.BasePruningMethod)
        inner = [type(x).__name__ for x in h] if isinstance(h, tprune.PruningContainer) else []
        out.append((type(h).__name__, h._tensor_name, inner))
    return out


def compare(case: Case, where: str):
    for i, (mt, ml) in enumerate(zip(case.t, case.l)):
        ctx = f"{where}: module {i} {type(mt).__name__}"
        assert list(mt._parameters) == list(ml._parameters), ctx
        assert list(mt._buffers) == list(ml._buffers), ctx
        st, sl = mt.state_dict(), ml.state_dict()
        assert list(st) == list(sl), ctx
        for k in st:
            _same(st[k], sl[k])
        assert _hook_layout(mt) == _hook_layout(ml), ctx
        for name in ("weight", "bias"):
            if hasattr(mt, name) and getattr(mt, name) is not None:
                _same(getattr(mt, name), getattr(ml, name))
    for key, obj in case.objects["t"].items():
        i, name = key
        held_t = case.t[i]._parameters.get(name + "_orig", case.t[i]._parameters.get(name))
        held_l = case.l[i]._parameters.get(name + "_orig", case.l[i]._parameters.get(name))
        assert (held_t is obj) == (held_l is case.objects["l"][key]), f"{where}: {key} object"


def compare_forward(case: Case, where: str):
    out_t, out_l = case.forward("t"), case.forward("l")
    for j, (a, b) in enumerate(zip(out_t, out_l)):
        _same(a.detach(), b.detach(), close=case.channels_last[j])
        if a.requires_grad:
            a.float().sum().backward()
            b.float().sum().backward()
    for mt, ml in zip(case.t, case.l):
        for (n, pt), (_, pl) in zip(mt.named_parameters(), ml.named_parameters()):
            assert (pt.grad is None) == (pl.grad is None), f"{where}: grad of {n}"
            if pt.grad is not None:
                _same(pt.grad, pl.grad, close=True)
            pt.grad = pl.grad = None


def _layout_snapshot(side_mods):
    """Names and object ids of everything a failed prune must leave as it was."""
    def ids(d):
        return [(k, id(v)) for k, v in d.items()]
    return [(ids(m._parameters), ids(m._buffers), ids(m._forward_pre_hooks),
             [[id(x) for x in h] for h in m._forward_pre_hooks.values()
              if isinstance(h, tprune.PruningContainer)]) for m in side_mods]


# ---------------------------------------------------------- random steps
def _amount(rng, n_units):
    r = rng.random()
    if r < 0.08:
        return rng.choice([0, 0.0, 1.0, False, True])
    if r < 0.11:
        return n_units + 1  # too many: ValueError
    if r < 0.45:
        return rng.randint(0, n_units)
    if r < 0.6 and n_units:
        return (2 * rng.randint(0, n_units) + 1) / (2 * n_units * 2)  # often lands on .5
    if r < 0.65:
        return np.float32(rng.random())
    return round(rng.random(), 3)


def _n_remaining(m, name):
    mask = getattr(m, name + "_mask", None)
    t = getattr(m, name)
    return t.numel() if mask is None else int((mask == 1).sum())


def _scores(case, shape, dtype):
    if case.rng.random() < 0.2:
        dtype = torch.float64
    return case.values.take(shape, dtype)


def _ln_order(rng):
    return rng.choice([1, 2, 2, 3, float("inf"), -float("inf"), "fro", "nuc", 0.5])


class _TopMagnitude:
    """A user method overriding compute_mask: prunes the largest |t| (never the kernel)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount):
        self.amount = amount

    def compute_mask(self, t, default_mask):
        k = round(self.amount * t.nelement()) if isinstance(self.amount, float) else self.amount
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if k:
            mask.view(-1)[torch.topk(t.abs().reshape(-1), k=k).indices] = 0
        return mask


TopT = type("TopT", (_TopMagnitude, tprune.BasePruningMethod), {})
TopL = type("TopL", (_TopMagnitude, lprune.BasePruningMethod), {})


class SubclassedL1(lprune.L1Unstructured):
    """lthfast's L1 with compute_mask overridden by delegation: must not take the kernel."""

    def compute_mask(self, t, default_mask):
        return tprune.L1Unstructured.compute_mask(self, t, default_mask)


def step(case: Case):
    """Pick one random operation; returns (name, fn(prune, mods, side)) applied to each side."""
    rng = case.rng
    key = rng.choice(case.targets())
    i, name = key
    mt = case.t[i]
    t = getattr(mt, name)
    ndim = t.dim()
    pruned = hasattr(mt, name + "_mask")
    kind = rng.choice(["l1", "l1", "l1s", "random", "ln", "rs", "custom", "identity", "global",
                       "global", "remove", "forward", "reload", "copy", "method"])
    if kind in ("ln", "rs") and ndim <= 1 and (pruned or rng.random() < 0.7):
        kind = "l1"  # structured re-prune of a 1-D tensor: documented difference
    seed = rng.randrange(2**31)
    lib = case.pick_lib(i)

    def seeded(fn):
        def run(prune, mods, side):
            torch.manual_seed(seed)
            fn(lib if side == "l" else tprune, mods, side)
        run.lib = lib
        return run

    if kind in ("l1", "l1s"):
        amount = _amount(rng, _n_remaining(mt, name))
        scores = _scores(case, t.shape, t.dtype) if kind == "l1s" else None
        return f"l1_unstructured({key}, {amount!r}, scores={scores is not None})", seeded(
            lambda p, mods, s: p.l1_unstructured(mods[i], name, amount, importance_scores=scores))
    if kind == "random":
        amount = _amount(rng, _n_remaining(mt, name))
        return f"random_unstructured({key}, {amount!r})", seeded(
            lambda p, mods, s: p.random_unstructured(mods[i], name, amount))
    if kind in ("ln", "rs"):
        dim = rng.randrange(-ndim, ndim) if ndim else 0
        if rng.random() < 0.05:
            dim = ndim  # out of range: IndexError
        amount = _amount(rng, t.shape[dim] if -ndim <= dim < ndim else 1)
        if kind == "rs":
            return f"random_structured({key}, {amount!r}, dim={dim})", seeded(
                lambda p, mods, s: p.random_structured(mods[i], name, amount, dim))
        n = _ln_order(rng)
        scores = _scores(case, t.shape, t.dtype) if rng.random() < 0.3 else None
        return f"ln_structured({key}, {amount!r}, n={n}, dim={dim})", seeded(
            lambda p, mods, s: p.ln_structured(mods[i], name, amount, n, dim,
                                               importance_scores=scores))
    if kind == "custom":
        mask = (torch.rand(t.shape, generator=torch.Generator().manual_seed(seed)) > 0.4)
        mask = mask.to(rng.choice([torch.bool, torch.float32, t.dtype]))
        if rng.random() < 0.1 and mask.is_floating_point():
            mask = mask * 0.5 + (mask == 0) * 1.0  # entries of 0.5 and 1: no longer "unpruned"
        return f"custom_from_mask({key})", seeded(
            lambda p, mods, s: p.custom_from_mask(mods[i], name, mask))
    if kind == "identity":
        return f"identity({key})", seeded(lambda p, mods, s: p.identity(mods[i], name))
    if kind == "global":
        keys = rng.sample(case.targets(), rng.randint(1, len(case.targets())))
        n = sum(_n_remaining(case.t[j], nm) for j, nm in keys)
        amount = _amount(rng, n)
        method = rng.choice(["L1", "L1", "L1", "Random", "Identity", "Top", "SubL1", "TorchL1"])
        scores = {k: _scores(case, getattr(case.t[k[0]], k[1]).shape,
                             getattr(case.t[k[0]], k[1]).dtype)
                  for k in keys if rng.random() < 0.3}
        glib = case.pick_lib() if all(not case.channels_last[j] for j, _ in keys) else lprune

        def run_global(p, mods, side):
            torch.manual_seed(seed)
            p = glib if side == "l" else tprune
            pairs = [(mods[j], nm) for j, nm in keys]
            imp = {(mods[j], nm): v for (j, nm), v in scores.items()} or None
            kw = {} if method == "Identity" else {"amount": amount}
            cls = {"L1": p.L1Unstructured, "Random": p.RandomUnstructured,
                   "Identity": p.Identity, "Top": TopL if side == "l" else TopT,
                   "SubL1": SubclassedL1 if side == "l" else tprune.L1Unstructured,
                   "TorchL1": tprune.L1Unstructured}[method]
            p.global_unstructured(pairs, pruning_method=cls, importance_scores=imp, **kw)
        run_global.lib = glib
        label = f"global_unstructured({keys}, {method}, {amount!r}, scores={list(scores)})"
        return label, run_global
    if kind == "remove":
        pruned_keys = [k for k in case.targets() if hasattr(case.t[k[0]], k[1] + "_mask")]
        if pruned_keys and rng.random() < 0.9:
            key = rng.choice(pruned_keys)
            i, name = key
        rlib = case.pick_lib(i) if rng.random() < 0.5 else tprune  # either library's remove

        def remove(p, mods, s):
            (rlib if s == "l" else tprune).remove(mods[i], name)
        remove.key, remove.lib = key, rlib
        return f"remove({key}) via {rlib.__name__}", remove
    if kind == "method":  # a method's prune() on a loose tensor, with a partial default mask
        which = rng.choice(["L1Unstructured", "RandomUnstructured", "LnStructured",
                            "RandomStructured", "Identity"])
        x = case.values.take(t.shape, t.dtype)
        default = (torch.rand(t.shape, generator=torch.Generator().manual_seed(seed)) > 0.3)
        default = default.to(t.dtype)
        amount = _amount(rng, t.numel())
        dim = rng.randrange(-ndim, ndim) if ndim else 0
        args = {"L1Unstructured": (amount,), "RandomUnstructured": (amount,), "Identity": (),
                "LnStructured": (amount, _ln_order(rng), dim), "RandomStructured": (amount, dim)}

        def loose(p, mods, side):
            torch.manual_seed(seed)
            out = getattr(tprune if side == "t" else lprune, which)(*args[which]).prune(x, default)
            case.loose[side] = out
        return f"{which}{args[which]}.prune(tensor {tuple(t.shape)})", loose
    if kind == "forward":
        return "forward", None
    if kind == "reload":
        def reload(p, mods, s):  # load a changed state_dict: `name` is stale until forward
            sd = {k: (v * -0.5 if not k.endswith("_mask") and v.is_floating_point()
                      and "running" not in k else v) for k, v in mods.state_dict().items()}
            mods.load_state_dict(sd)
        return "load_state_dict(-0.5 * weights)", reload
    return "copy", "copy"


def _refill_zeros(case, key):
    """After remove, the pruned zeros are plain weights: give them fresh distinct values
    (the same on both sides) so later L1 decisions stay tie-free."""
    i, name = key
    pt, pl = getattr(case.t[i], name), getattr(case.l[i], name)
    zero = pt.detach() == 0
    if zero.any():
        fresh = case.values.take((int(zero.sum()),), pt.dtype)
        with torch.no_grad():
            pt[zero] = fresh
            pl[zero] = fresh


def _copy_lthfast_side(case: Case):
    """deepcopy (or pickle, or torch.save) the lthfast copy; pickle the torch copy
    (torch cannot deep-copy a pruned module: a documented difference)."""
    how = case.rng.choice(["deepcopy", "pickle", "save"])
    only_lthfast_hooks = all(isinstance(h, lprune.BasePruningMethod)
                             for m in case.l for h in m._forward_pre_hooks.values())
    if how == "deepcopy" and only_lthfast_hooks:
        case.l = copy.deepcopy(case.l)
        for j, m in enumerate(case.l):  # `name` is a plain tensor in the copy until forward
            for h in m._forward_pre_hooks.values():
                assert not getattr(m, h._tensor_name).requires_grad
    elif how == "save":
        buf = io.BytesIO()
        torch.save(case.l, buf)
        buf.seek(0)
        case.l = torch.load(buf, weights_only=False)
    else:
        case.l = pickle.loads(pickle.dumps(case.l))
    case.t = pickle.loads(pickle.dumps(case.t))
    case.objects = {side: case._objects(side) for side in ("t", "l")}
    return how


def run_scenario(seed: int, n_steps: int = 8):
    case = Case(seed)
    compare(case, "start")
    log = []
    for s in range(n_steps):
        name, fn = step(case)
        log.append(name if getattr(fn, "lib", lprune) is lprune else name + " [torch fn]")
        where = f"seed {seed} step {s}: " + " -> ".join(log)
        if fn is None:
            compare_forward(case, where)
            continue
        if fn == "copy":
            log[-1] = _copy_lthfast_side(case)
            compare(case, where)
            compare_forward(case, where)
            continue
        before = _layout_snapshot(case.l)
        errors = []
        for side in ("t", "l"):
            try:
                fn(None, getattr(case, side), side)
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - compared below
                errors.append(e)
        et, el = errors
        if et is not None or el is not None:
            assert et is not None and el is not None, f"{where}: torch={et!r} lthfast={el!r}"
            assert isinstance(el, type(et)), f"{where}: torch={et!r} lthfast={el!r}"
            if getattr(fn, "lib", lprune) is lprune:  # torch's rollback differs by design
                assert before == _layout_snapshot(case.l), f"{where}: lthfast changed the module"
            return log, type(et).__name__
        if name.startswith("remove"):
            _refill_zeros(case, fn.key)
        if case.loose:
            _same(case.loose.pop("t"), case.loose.pop("l"))
        compare(case, where)
        if case.rng.random() < 0.5:
            compare_forward(case, where)
    return log, None


def test_fuzz_against_torch(one_thread):
    outcomes = {}
    for seed in range(100):
        _, err = run_scenario(seed)
        outcomes[err] = outcomes.get(err, 0) + 1
    # the runs must exercise both the happy paths and the error paths
    assert outcomes.get(None, 0) > 40 and sum(v for k, v in outcomes.items() if k) > 15, outcomes


# --------------------------------------------- regressions found by fuzzing
def _both(fn, module=lambda: nn.Linear(4, 3)):
    """Run ``fn(prune, module)`` with each library from the same seeds; returns the
    (module, exception) of each."""
    out = []
    for prune in (tprune, lprune):
        torch.manual_seed(0)
        m = module()
        torch.manual_seed(1)
        try:
            fn(prune, m)
            out.append((m, None))
        except Exception as e:  # noqa: BLE001 - compared by the caller
            out.append((m, e))
    return out


def _same_error(fn, expected, module=lambda: nn.Linear(4, 3)):
    (_, et), (_, el) = _both(fn, module)
    assert isinstance(et, expected) and isinstance(el, expected), (et, el)
    assert isinstance(el, type(et)), (et, el)


def _same_masks(fn, module=lambda: nn.Linear(4, 3), names=("weight",)):
    (mt, et), (ml, el) = _both(fn, module)
    assert et is None and el is None, (et, el)
    for name in names:
        _same(getattr(mt, name + "_mask"), getattr(ml, name + "_mask"))


def test_ln_structured_amount_zero_still_computes_the_norms():
    # torch computes the norms (and their topk) before it looks at amount == 0
    _same_error(lambda p, m: p.ln_structured(m, "weight", 0, n="bad", dim=0), TypeError)
    _same_error(lambda p, m: p.ln_structured(m, "weight", 0.0, n="nuc", dim=0), RuntimeError,
                module=lambda: nn.Linear(4, 3).bfloat16())  # matrix_norm rejects bfloat16
    _same_error(lambda p, m: p.ln_structured(m, "weight", 0, n="nuc", dim=0), RuntimeError)
    _same_masks(lambda p, m: p.ln_structured(m, "weight", 0, n=2, dim=0))


def test_numpy_float32_amount_rounds_in_float32_like_torch():
    # np.float32(0.1) * 5 is 0.5 in float32 (rounds to 0), 0.50000000745 in float64 (to 1)
    amount = np.float32(0.1)
    module = lambda: nn.Linear(5, 2)  # noqa: E731
    for fn in (lambda p, m: p.l1_unstructured(m, "weight", amount),
               lambda p, m: p.random_unstructured(m, "weight", amount),
               lambda p, m: p.random_structured(m, "weight", amount, dim=1),
               lambda p, m: p.ln_structured(m, "weight", amount, n=1, dim=1),
               lambda p, m: p.global_unstructured([(m, "weight")], p.L1Unstructured,
                                                  amount=amount)):
        _same_masks(fn, module)
    (mt, _), (ml, _) = _both(lambda p, m: p.l1_unstructured(m, "weight", amount), module)
    assert int((ml.weight_mask == 0).sum()) == int((mt.weight_mask == 0).sum()) == 1


def test_bool_amount_like_torch():
    # torch passes True on as topk's / kthvalue's k (TypeError); LnStructured uses it as 1
    for fn in (lambda p, m: p.l1_unstructured(m, "weight", True),
               lambda p, m: p.random_unstructured(m, "weight", True),
               lambda p, m: p.random_structured(m, "weight", True, dim=0),
               lambda p, m: p.global_unstructured([(m, "weight")], p.L1Unstructured, amount=True),
               lambda p, m: (p.l1_unstructured(m, "weight", 2),
                             p.l1_unstructured(m, "weight", True))):
        _same_error(fn, TypeError)
    _same_masks(lambda p, m: p.ln_structured(m, "weight", True, n=1, dim=0))
    _same_masks(lambda p, m: (p.l1_unstructured(m, "weight", False),
                              p.random_structured(m, "weight", False, dim=0)))
    _same_error(lambda p, m: p.l1_unstructured(m, "weight", True), ValueError,
                module=lambda: nn.Linear(0, 3))  # too many units is checked first


def test_bool_dim_like_torch():
    _same_masks(lambda p, m: p.ln_structured(m, "weight", 1, n=2, dim=True))
    _same_masks(lambda p, m: p.random_structured(m, "weight", 2, dim=True))
    _same_masks(lambda p, m: (p.ln_structured(m, "weight", 1, n=2, dim=False),
                              p.ln_structured(m, "weight", 1, n=1, dim=True)))


def test_non_tensor_arguments_are_also_attribute_errors():
    # torch fails with AttributeError ('list' object has no attribute 'shape');
    # lthfast raises a TypeError at once that is also an AttributeError
    for fn in (lambda p, m: p.l1_unstructured(m, "weight", 2, importance_scores=[1.0]),
               lambda p, m: p.ln_structured(m, "weight", 1, 2, 0, importance_scores=[1.0]),
               lambda p, m: p.global_unstructured([(m, "weight")], p.L1Unstructured, amount=2,
                                                  importance_scores={(m, "weight"): [1.0]}),
               lambda p, m: p.custom_from_mask(m, "weight", [1.0])):
        _same_error(fn, AttributeError)
        (_, el), = _both(fn)[1:]
        assert isinstance(el, TypeError)


def test_remove_without_orig_or_mask_is_an_attribute_error():
    for missing in ("_parameters", "_buffers"):
        def fn(p, m, missing=missing):
            p.l1_unstructured(m, "weight", 2)
            del getattr(m, missing)["weight_orig" if missing == "_parameters" else "weight_mask"]
            p.remove(m, "weight")
        _same_error(fn, AttributeError)
        assert isinstance(_both(fn)[1][1], lprune.PruningStateError)


def test_global_malformed_pairs_raise_torchs_classes():
    _same_error(lambda p, m: p.global_unstructured([(m, "weight", 1)], p.L1Unstructured, amount=1),
                ValueError)
    _same_error(lambda p, m: p.global_unstructured([(m,)], p.L1Unstructured, amount=1), ValueError)
    _same_error(lambda p, m: p.global_unstructured([3], p.L1Unstructured, amount=1), TypeError)
    _same_error(lambda p, m: p.global_unstructured([(3, "weight")], p.L1Unstructured, amount=1),
                AttributeError)
    # a list pair works in both; nothing is pruned when a later pair is bad
    _same_masks(lambda p, m: p.global_unstructured([[m, "weight"]], p.L1Unstructured, amount=3))
    (_, _), (ml, el) = _both(lambda p, m: p.global_unstructured(
        [(m, "weight"), (m, "bias", 0)], p.L1Unstructured, amount=1))
    assert isinstance(el, ValueError) and not lprune.is_pruned(ml)


class _NoType:
    def __init__(self, amount):
        self.amount = amount

    def compute_mask(self, t, default_mask):
        return default_mask


class _Duck(_NoType):
    PRUNING_TYPE = "unstructured"


def test_global_method_checks_like_torch():
    no_type = {tprune: type("NoTypeT", (_NoType, tprune.BasePruningMethod), {}),
               lprune: type("NoTypeL", (_NoType, lprune.BasePruningMethod), {})}
    _same_error(lambda p, m: p.global_unstructured([(m, "weight")], no_type[p], amount=1),
                AttributeError)
    # not a BasePruningMethod: torch's PruningContainer refuses it
    _same_error(lambda p, m: p.global_unstructured([(m, "weight")], _Duck, amount=1), TypeError)
    (_, _), (ml, _) = _both(lambda p, m: p.global_unstructured([(m, "weight")], _Duck, amount=1))
    assert not lprune.is_pruned(ml)


def test_private_helpers_like_torch():
    t = torch.randn(3, 4)
    for prune in (tprune, lprune):
        prune._validate_pruning_dim(t, -5)  # torch checks only the upper bound
        prune._validate_pruning_dim(t, 1.0)
        with pytest.raises(IndexError):
            prune._validate_pruning_dim(t, 2)
        with pytest.raises(ValueError):
            prune._compute_norm(t, 2, 2)
        with pytest.raises(IndexError):
            prune._compute_norm(t, 2, -3)
    for dim in (-2, -1, 0, 1):
        _same(tprune._compute_norm(t, 2, dim), lprune._compute_norm(t, 2, dim))


def test_nan_and_inf_weights_match_torch():
    # design.md: NaN ranks above every number (pruned last), +/-Inf next, as in torch.topk
    def module():
        m = nn.Linear(4, 3)
        with torch.no_grad():
            m.weight.copy_(torch.randperm(12).view(3, 4).float() + 1)
            m.weight[0, 1], m.weight[2, 2] = float("nan"), -float("inf")
            m.bias[1] = float("inf")
        return m
    for amount in (0, 3, 10, 11, 12, 0.5, 1.0):
        _same_masks(lambda p, m: p.l1_unstructured(m, "weight", amount), module)
        _same_masks(lambda p, m: (p.l1_unstructured(m, "weight", 2),
                                  p.l1_unstructured(m, "weight", min(amount, 10))), module)
    for amount in (0, 9, 13, 14, 15, 0.9, 1.0):
        _same_masks(lambda p, m: p.global_unstructured([(m, "weight"), (m, "bias")],
                                                       p.L1Unstructured, amount=amount),
                    module, names=("weight", "bias"))
    for amount in (1, 2):
        _same_masks(lambda p, m: p.ln_structured(m, "weight", amount, n=2, dim=0), module)
