"""A unit-test suite for the ``torch.nn.utils.prune`` API, in the style of PyTorch's
own pruning tests, run against both ``torch.nn.utils.prune`` and ``lthfast.prune``.

Every test takes the module under test as ``prune`` and uses nothing else, so it
shows that ``lthfast.prune`` passes with only the import changed. The few tests
of torch bugs that lthfast fixes are strict xfails for torch (see
README, "What differs"); if torch fixes one, its xfail turns into a failure
and the docs need updating.
"""
from __future__ import annotations

import copy
import io
import pickle
import warnings
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

import lthfast
import lthfast.prune as lprune


@pytest.fixture(autouse=True)
def _kernel_or_reference(monkeypatch):
    """Use the compiled kernel when built, else the pure-PyTorch reference."""
    if not lthfast._ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


@pytest.fixture(params=[tprune, lprune], ids=["torch", "lthfast"])
def prune(request):
    return request.param


def torch_bug(reason):
    """Parametrize over both modules; strict xfail for torch with ``reason``."""
    return pytest.mark.parametrize("prune", [
        pytest.param(tprune, marks=pytest.mark.xfail(strict=True, reason=f"torch bug: {reason}")),
        lprune], ids=["torch", "lthfast"])


def small_modules():
    torch.manual_seed(0)
    return [nn.Linear(5, 7), nn.Conv3d(2, 2, 2), nn.Conv1d(3, 4, 2)]


def hooks(module):
    return list(module._forward_pre_hooks.values())


class TestAmountValidation:
    def test_validate_pruning_amount_init(self, prune):
        for bad in ["I'm a string", [0.1], None, torch.tensor(0.3)]:
            with pytest.raises(TypeError):
                prune._validate_pruning_amount_init(amount=bad)
            with pytest.raises(TypeError):
                prune.L1Unstructured(amount=bad)
        for bad in [1.1, 20.0, -0.1, -10, float("inf")]:
            with pytest.raises(ValueError):
                prune._validate_pruning_amount_init(amount=bad)
            with pytest.raises(ValueError):
                prune.RandomUnstructured(amount=bad)
        for ok in [0, 0.0, 0.5, 1, 1.0, 42]:
            prune._validate_pruning_amount_init(amount=ok)
            prune.LnStructured(amount=ok, n=2)

    def test_validate_pruning_amount(self, prune):
        with pytest.raises(ValueError):
            prune._validate_pruning_amount(amount=20, tensor_size=19)
        prune._validate_pruning_amount(amount=0.3, tensor_size=0)  # floats always fit
        prune._validate_pruning_amount(amount=19, tensor_size=19)

    def test_compute_nparams_toprune(self, prune):
        assert prune._compute_nparams_toprune(amount=0, tensor_size=15) == 0
        assert prune._compute_nparams_toprune(amount=10, tensor_size=15) == 10
        assert prune._compute_nparams_toprune(amount=0.3, tensor_size=10) == 3
        assert prune._compute_nparams_toprune(amount=0.25, tensor_size=10) == 2  # half to even
        assert prune._compute_nparams_toprune(amount=1.0, tensor_size=10) == 10

    def test_too_many_units_raises_when_pruning(self, prune):
        m = nn.Linear(3, 2)
        with pytest.raises(ValueError):
            prune.random_unstructured(m, "weight", amount=7)
        with pytest.raises(ValueError):
            prune.ln_structured(m, "weight", amount=4, n=2, dim=1)
        assert not prune.is_pruned(m) and "weight" in m._parameters


class TestReparameterization:
    def test_random_pruning_sizes(self, prune):
        for m in small_modules():
            for name in ["weight", "bias"]:
                shape = getattr(m, name).shape
                prune.random_unstructured(m, name=name, amount=0.1)
                assert getattr(m, name).shape == shape
                assert getattr(m, name + "_mask").shape == shape
                assert getattr(m, name + "_orig").shape == shape

    def test_random_pruning_orig(self, prune):
        for m in small_modules():
            for name in ["weight", "bias"]:
                original = getattr(m, name).detach().clone()
                prune.random_unstructured(m, name=name, amount=0.1)
                assert torch.equal(original, getattr(m, name + "_orig"))

    def test_random_pruning_new_weight(self, prune):
        for m in small_modules():
            for name in ["weight", "bias"]:
                prune.random_unstructured(m, name=name, amount=0.1)
                expected = getattr(m, name + "_orig") * getattr(m, name + "_mask").to(
                    getattr(m, name + "_orig").dtype)
                assert torch.equal(getattr(m, name), expected)

    def test_pruning_id_consistency(self, prune):
        m = nn.Linear(5, 2, bias=False)
        weight_id = id(m.weight)
        prune.random_unstructured(m, "weight", amount=0.3)
        assert id(m.weight_orig) == weight_id
        prune.l1_unstructured(m, "weight", amount=0.3)
        assert id(m.weight_orig) == weight_id
        prune.remove(m, "weight")
        assert id(m.weight) == weight_id

    def test_state_dict_keys(self, prune):
        m = nn.Linear(5, 7)
        prune.l1_unstructured(m, "weight", amount=0.2)
        assert list(m.state_dict()) == ["bias", "weight_orig", "weight_mask"]
        prune.identity(m, "bias")
        assert list(m.state_dict()) == ["weight_orig", "bias_orig", "weight_mask", "bias_mask"]
        assert m.weight_mask.dtype == torch.float32

    def test_identity_pruning(self, prune):
        x = torch.ones(1, 5)
        m = nn.Linear(5, 2)
        before = m(x)
        before.sum().backward()
        grad_w, grad_b = m.weight.grad.clone(), m.bias.grad.clone()
        prune.identity(m, name="weight")
        assert torch.equal(m.weight_mask, torch.ones_like(m.weight_mask))
        after = m(x)
        assert torch.equal(before, after)
        after.sum().backward()
        assert torch.equal(m.weight_orig.grad, 2 * grad_w)  # the same Parameter accumulates
        assert torch.equal(m.bias.grad, 2 * grad_b)

    def test_random_pruning_0perc(self, prune):
        m = nn.Linear(5, 2)
        prune.random_unstructured(m, name="weight", amount=0)
        assert torch.equal(m.weight_mask, torch.ones(2, 5))
        assert torch.equal(m.weight, m.weight_orig)

    def test_gradients_only_reach_unpruned_entries(self, prune):
        x = torch.ones(1, 5)
        m = nn.Linear(5, 2)
        mask = torch.zeros_like(m.weight)
        mask[1, 0] = mask[0, 3] = 1
        with mock.patch.object(prune.RandomUnstructured, "compute_mask") as compute_mask:
            compute_mask.return_value = mask
            prune.random_unstructured(m, name="weight", amount=0.9)
        m(x).sum().backward()
        assert torch.equal(m.weight_orig.grad, mask)

    def test_random_pruning_forward(self, prune):
        x = torch.ones(1, 5)
        m = nn.Linear(5, 2)
        mask = torch.zeros_like(m.weight)
        mask[1, 0] = mask[0, 3] = 1
        with mock.patch.object(prune.RandomUnstructured, "compute_mask") as compute_mask:
            compute_mask.return_value = mask
            prune.random_unstructured(m, name="weight", amount=0.9)
        y = m(x)
        assert y[0, 0] == m.weight_orig[0, 3] + m.bias[0]
        assert y[0, 1] == m.weight_orig[1, 0] + m.bias[1]

    def test_forward_uses_updated_orig(self, prune):
        m = nn.Linear(3, 2)
        prune.l1_unstructured(m, "weight", amount=3)
        with torch.no_grad():
            m.weight_orig.mul_(2.0)
        y = m(torch.eye(3))
        assert torch.allclose(y - m.bias, (m.weight_orig * m.weight_mask).t())

    def test_pruning_rollback(self, prune):
        m = nn.Linear(5, 7)
        params = list(m._parameters)
        with mock.patch.object(prune.L1Unstructured, "compute_mask",
                               side_effect=RuntimeError("boom")):
            with pytest.raises(RuntimeError):
                prune.l1_unstructured(m, name="weight", amount=0.9)
        assert "weight" in m._parameters and "weight_orig" not in m._parameters
        assert "weight_mask" not in m._buffers and not hooks(m)
        assert sorted(m._parameters) == sorted(params)


class TestRemove:
    def test_remove_pruning(self, prune):
        for m in small_modules():
            for name in ["weight", "bias"]:
                prune.random_unstructured(m, name, amount=0.5)
                masked = (getattr(m, name + "_orig") * getattr(m, name + "_mask")).detach()
                orig = getattr(m, name + "_orig")
                prune.remove(m, name)
                assert name in dict(m.named_parameters()) and getattr(m, name) is orig
                assert name + "_orig" not in dict(m.named_parameters())
                assert name + "_mask" not in dict(m.named_buffers())
                assert torch.equal(getattr(m, name), masked)
            assert not hooks(m)

    def test_remove_pruning_forward(self, prune):
        x = torch.ones(1, 5)
        m = nn.Linear(5, 2)
        mask = torch.ones_like(m.weight)
        mask[1, 0] = mask[0, 3] = 0
        with mock.patch.object(prune.RandomUnstructured, "compute_mask") as compute_mask:
            compute_mask.return_value = mask
            prune.random_unstructured(m, name="weight", amount=0.9)
        before = m(x)
        prune.remove(m, "weight")
        assert torch.equal(before, m(x))

    def test_remove_pruning_exception(self, prune):
        m = nn.Linear(5, 7)
        with pytest.raises(ValueError):
            prune.remove(m, "weight")
        prune.identity(m, "weight")
        prune.remove(m, "weight")
        with pytest.raises(ValueError):
            prune.remove(m, "weight")

    def test_remove_after_multiple_calls(self, prune):
        m = nn.Conv2d(2, 3, 2)
        prune.l1_unstructured(m, "weight", 0.2)
        prune.ln_structured(m, "weight", 1, 2, 0)
        final = (m.weight_orig * m.weight_mask).detach()
        prune.remove(m, "weight")
        assert torch.equal(m.weight, final) and not prune.is_pruned(m)

    def test_is_pruned(self, prune):
        model = nn.Sequential(nn.Linear(5, 7), nn.Sequential(nn.ReLU(), nn.Linear(7, 2)))
        assert not prune.is_pruned(model)
        prune.l1_unstructured(model[1][1], "bias", 1)
        assert prune.is_pruned(model) and prune.is_pruned(model[1]) and not prune.is_pruned(model[0])
        prune.remove(model[1][1], "bias")
        assert not prune.is_pruned(model)


class TestSerialization:
    def test_random_pruning_pickle(self, prune):
        for m in small_modules():
            prune.random_unstructured(m, "weight", amount=0.1)
            prune.l1_unstructured(m, "bias", amount=1)
            loaded = pickle.loads(pickle.dumps(m))
            assert isinstance(loaded, type(m))
            assert [type(h) for h in hooks(loaded)] == [type(h) for h in hooks(m)]
            assert torch.equal(loaded.weight_mask, m.weight_mask)

    def test_pruning_serialization_model(self, prune):
        model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
        prune.l1_unstructured(model[0], "weight", amount=0.9)
        x = torch.randn(3, 10)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(loaded(x), model(x))
        assert "weight_orig" in loaded[0]._parameters and "weight_mask" in loaded[0]._buffers
        assert prune.is_pruned(loaded)

    def test_pruning_serialization_state_dict(self, prune):
        model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
        prune.l1_unstructured(model[0], "weight", amount=0.9)
        prune.remove(model[0], "weight")
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        fresh = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
        fresh.load_state_dict(torch.load(buf))
        assert int((fresh[0].weight == 0).sum()) == 90
        x = torch.randn(2, 10)
        assert torch.equal(fresh(x), model(x))

    def test_load_state_dict_into_pruned_module(self, prune):
        src, dst = nn.Linear(4, 4), nn.Linear(4, 4)
        prune.l1_unstructured(src, "weight", 5)
        prune.identity(dst, "weight")
        dst.load_state_dict(src.state_dict())
        dst(torch.randn(1, 4))
        assert torch.equal(dst.weight, src.weight)


class TestMethods:
    def test_prune(self, prune):
        method = prune.L1Unstructured(amount=2)
        t = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])
        default = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 1]])
        assert torch.equal(method.prune(t, default), torch.tensor([[0.0, 0, 3, 0], [5, 6, 0, 8]]))

    def test_prune_importance_scores(self, prune):
        method = prune.L1Unstructured(amount=2)
        t = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])
        scores = torch.tensor([[1.0, 2, 3, 4], [1.5, 1.6, 1.7, 1.8]])
        default = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 1]])
        pruned = method.prune(t, default, importance_scores=scores)
        assert torch.equal(pruned, torch.tensor([[0.0, 2, 3, 0], [0, 6, 0, 8]]))

    def test_prune_importance_scores_mimic_default(self, prune):
        t = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])
        default = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 1]])
        for method in [prune.L1Unstructured(amount=2), prune.LnStructured(1, n=1, dim=1)]:
            assert torch.equal(method.prune(t, default),
                               method.prune(t, default, importance_scores=t))
        with pytest.raises(AssertionError):
            prune.L1Unstructured(amount=1).prune(t, importance_scores=torch.ones(3))

    def test_l1_unstructured_pruning(self, prune):
        m = nn.Linear(3, 2)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[0.8, -0.4, 0.7], [0.05, -0.1, 0.2]]))
        prune.l1_unstructured(m, "weight", amount=2)
        assert torch.equal(m.weight_mask, torch.tensor([[1.0, 1, 1], [0, 0, 1]]))
        prune.l1_unstructured(m, "weight", amount=1)  # among the 4 that are left
        assert torch.equal(m.weight_mask, torch.tensor([[1.0, 1, 1], [0, 0, 0]]))

    def test_l1_unstructured_pruning_with_importance_scores(self, prune):
        m = nn.Linear(3, 2)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[0.8, -0.4, 0.7], [0.05, -0.1, 0.2]]))
        scores = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
        prune.l1_unstructured(m, "weight", amount=2, importance_scores=scores)
        assert torch.equal(m.weight_mask, torch.tensor([[0.0, 0, 1], [1, 1, 1]]))
        prune.l1_unstructured(m, "weight", amount=1, importance_scores=scores)
        assert torch.equal(m.weight_mask, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))

    def test_unstructured_pruning_same_magnitude(self, prune):
        # prune a count, not everything at or below a threshold
        torch.manual_seed(1)
        method = prune.L1Unstructured(amount=0.2)
        t = 2 * torch.randint(low=-1, high=2, size=(10, 7)).float()
        mask = method.compute_mask(t, default_mask=torch.ones_like(t))
        assert int((mask == 0).sum()) == round(0.2 * t.nelement())

    def test_random_structured_pruning_amount(self, prune):
        torch.manual_seed(0)
        method = prune.RandomStructured(amount=0.6, dim=2)
        t = torch.randn(5, 4, 2)
        mask = method.compute_mask(t, default_mask=torch.ones_like(t))
        pruned_channels = (mask.sum(dim=[0, 1]) == 0).sum()
        assert int(pruned_channels) == round(0.6 * 2)

    def test_ln_structured_pruning(self, prune):
        m = nn.Conv2d(3, 2, (1, 2), bias=False)
        t = torch.tensor([[[[1.0, 2]], [[3, 4]], [[5, 6]]],
                          [[[0.1, 0.2]], [[0.3, 0.4]], [[0.5, 0.6]]]])  # (2, 3, 1, 2)
        with torch.no_grad():
            m.weight.copy_(t)
        expected0 = torch.ones_like(t)
        expected0[1] = 0
        prune.ln_structured(m, "weight", amount=1, n=2, dim=0)
        assert torch.equal(m.weight_mask, expected0)
        expected_last = expected0.clone()
        expected_last[..., 0] = 0
        prune.ln_structured(m, "weight", amount=1, n=1, dim=-1)
        assert torch.equal(m.weight_mask, expected_last)

    def test_ln_structured_pruning_importance_scores(self, prune):
        m = nn.Linear(3, 4)
        scores = torch.tensor([[4.0], [1.0], [3.0], [2.0]]).expand(4, 3)
        prune.ln_structured(m, "weight", amount=2, n=float("inf"), dim=0, importance_scores=scores)
        assert m.weight_mask[:, 0].tolist() == [1, 0, 1, 0]

    def test_structured_needs_two_dims(self, prune):
        with pytest.raises(ValueError):
            prune.ln_structured(nn.Linear(3, 3), "bias", amount=1, n=2, dim=0)
        with pytest.raises(ValueError):
            prune.RandomStructured(amount=1, dim=0).compute_mask(torch.ones(3), torch.ones(3))
        with pytest.raises(IndexError):
            prune.random_structured(nn.Linear(3, 3), "weight", amount=1, dim=2)

    def test_custom_from_mask_pruning(self, prune):
        mask = torch.tensor([[0.0, 1, 1, 0], [0, 0, 1, 1]])
        method = prune.CustomFromMask(mask)
        default = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]])
        t = torch.rand_like(mask)
        assert torch.equal(method.compute_mask(t, default), torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 1]]))
        m = nn.Linear(5, 3)
        prune.custom_from_mask(m, name="bias", mask=torch.tensor([0, 1, 0]))
        assert m.bias_mask.tolist() == [0.0, 1.0, 0.0] and m.bias_mask.dtype == torch.float32

    def test_rnn_pruning(self, prune):
        lstm = nn.LSTM(8, 8)
        prune.l1_unstructured(lstm, "weight_ih_l0", 0.5)
        assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lstm(torch.randn(2, 1, 8))
        prune.remove(lstm, "weight_ih_l0")
        assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 4
        assert "weight_ih_l0" in lstm._parameters and lstm._parameters["weight_ih_l0"] is not None
        assert "weight_ih_l0_orig" not in lstm._parameters
        assert "weight_ih_l0" in dict(lstm.named_parameters())


class TestContainerAndGlobal:
    def test_multiple_pruning_calls(self, prune):
        m = nn.Conv3d(2, 2, 2)
        prune.l1_unstructured(m, name="weight", amount=0.1)
        first_mask = m.weight_mask.clone()
        [hook] = hooks(m)
        assert isinstance(hook, prune.L1Unstructured)
        prune.ln_structured(m, name="weight", amount=1, n=2, dim=0)
        [hook] = hooks(m)
        assert isinstance(hook, prune.PruningContainer) and len(hook) == 2
        assert [type(h) for h in hook] == [prune.L1Unstructured, prune.LnStructured]
        assert torch.equal(m.weight_mask * first_mask, m.weight_mask)
        assert int((m.weight_mask.sum(dim=[1, 2, 3, 4]) == 0).sum()) == 1
        prune.random_unstructured(m, "weight", 0.5)
        assert len(hooks(m)[0]) == 3

    def test_pruning_container(self, prune):
        container = prune.PruningContainer()
        container._tensor_name = "test"
        assert len(container) == 0
        p = prune.L1Unstructured(amount=2)
        p._tensor_name = "test"
        container.add_pruning_method(p)
        q = prune.L1Unstructured(amount=2)
        q._tensor_name = "another_test"
        with pytest.raises(ValueError):
            container.add_pruning_method(q)
        with pytest.raises(TypeError):
            container.add_pruning_method(10)
        with pytest.raises(TypeError):
            container.add_pruning_method("ugh")
        assert len(container) == 1 and container[0] is p and list(container) == [p]

    def test_pruning_container_compute_mask(self, prune):
        t = torch.ones(2, 4)
        default = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 1]])
        seen = {}

        def stub(kind, partial, dim=None):
            class Stub(prune.BasePruningMethod):
                PRUNING_TYPE = kind

                def compute_mask(self, t, default_mask):
                    seen[kind] = (tuple(t.shape), default_mask.clone())
                    return partial
            s = Stub()
            if dim is not None:
                s.dim = dim
            s._tensor_name = "test"
            return s

        def combined(method):
            c = prune.PruningContainer()
            c._tensor_name = "test"
            c.add_pruning_method(method)
            return c.compute_mask(t, default_mask=default.clone())

        out = combined(stub("unstructured", torch.tensor([0.0, 1, 1, 0, 0])))
        assert seen["unstructured"][0] == (5,) and torch.equal(seen["unstructured"][1], torch.ones(5))
        assert torch.equal(out, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))
        out = combined(stub("structured", torch.tensor([[1.0, 0, 1], [1, 0, 0]]), dim=-1))
        assert seen["structured"][0] == (2, 3)
        assert torch.equal(out, torch.tensor([[1.0, 0, 0, 1], [1, 0, 0, 0]]))
        out = combined(stub("global", torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]])))
        assert seen["global"][0] == (2, 4) and torch.equal(seen["global"][1], default)
        assert torch.equal(out, torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]]))
        with pytest.raises(AttributeError):  # structured methods need a dim
            combined(stub("structured", torch.ones(2, 3)))
        with pytest.raises(ValueError):
            combined(stub("sideways", torch.ones(2, 4)))

    def test_global_pruning(self, prune):
        m1, m2 = nn.Linear(4, 2), nn.Linear(2, 1)
        with torch.no_grad():
            m1.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [-4.5, -3.5, -2.5, -1.5]]))
            m2.weight.copy_(torch.tensor([[0.5, -0.25]]))
        prune.global_unstructured([(m1, "weight"), (m2, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=4)
        assert torch.equal(m1.weight_mask, torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 0]]))
        assert torch.equal(m2.weight_mask, torch.tensor([[0.0, 0]]))
        assert "bias_mask" not in dict(m1.named_buffers())
        prune.global_unstructured([(m1, "weight"), (m2, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=0.5)  # 3 of 6 left
        assert torch.equal(m1.weight_mask, torch.tensor([[0.0, 0, 0, 1], [1, 1, 0, 0]]))
        assert [type(h) for h in hooks(m1)[0]] == [prune.CustomFromMask, prune.CustomFromMask]

    def test_global_pruning_importance_scores(self, prune):
        m1, m2 = nn.Linear(4, 2), nn.Linear(2, 1)
        with torch.no_grad():
            m1.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [-4.5, -3.5, -2.5, -1.5]]))
            m2.weight.copy_(torch.tensor([[0.5, -0.25]]))
        scores = {(m1, "weight"): torch.tensor([[4.0, 3, 2, 1], [1.5, 2.5, 3.5, 4.5]]),
                  (m2, "weight"): torch.tensor([[10.0, 20.0]])}
        prune.global_unstructured([(m1, "weight"), (m2, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=4,
                                  importance_scores=scores)
        assert torch.equal(m1.weight_mask, torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))
        assert torch.equal(m2.weight_mask, torch.ones(1, 2))

    def test_global_pruning_random(self, prune):
        torch.manual_seed(0)
        m1, m2 = nn.Linear(4, 3), nn.Linear(3, 2)
        prune.global_unstructured([(m1, "weight"), (m2, "bias")],
                                  pruning_method=prune.RandomUnstructured, amount=5)
        assert int((m1.weight_mask == 0).sum() + (m2.bias_mask == 0).sum()) == 5

    def test_global_pruning_needs_unstructured(self, prune):
        m = nn.Linear(4, 2)
        with pytest.raises(TypeError):
            prune.global_unstructured([(m, "weight")], pruning_method=prune.RandomStructured,
                                      amount=1, dim=0)
        with pytest.raises(TypeError):
            prune.global_unstructured(42, pruning_method=prune.L1Unstructured, amount=1)
        with pytest.raises(TypeError):
            prune.global_unstructured([(m, "weight")], pruning_method=prune.L1Unstructured,
                                      importance_scores=[torch.ones(2, 4)], amount=1)
        assert not prune.is_pruned(m)


class TestTorchBugsFixedByLthfast:
    @torch_bug("deepcopy of a pruned module fails on the non-leaf pruned tensor")
    def test_deepcopy_pruned_module(self, prune):
        m = nn.Linear(4, 3)
        prune.l1_unstructured(m, "weight", 0.5)
        clone = copy.deepcopy(m)
        x = torch.randn(2, 4)
        assert torch.equal(clone(x), m(x)) and clone.weight_orig is not m.weight_orig

    @torch_bug("unstructured pruning uses .view(-1), which fails on channels_last weights")
    def test_channels_last_weight(self, prune):
        m = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        prune.l1_unstructured(m, "weight", 0.5)
        assert int((m.weight_mask == 0).sum()) == 54

    @torch_bug("PruningContainer(a, b) does not set the tensor name before adding methods")
    def test_pruning_container_with_several_methods(self, prune):
        a, b = prune.L1Unstructured(0.1), prune.RandomUnstructured(0.1)
        a._tensor_name = b._tensor_name = "weight"
        assert list(prune.PruningContainer(a, b)) == [a, b]

    @torch_bug("a failed re-prune removes the pruning hook")
    def test_failed_reprune_keeps_the_hook(self, prune):
        m = nn.Linear(4, 3)
        prune.l1_unstructured(m, "weight", 2)
        with pytest.raises(ValueError):
            prune.l1_unstructured(m, "weight", 100)
        assert prune.is_pruned(m)

    @torch_bug("structured pruning of an already pruned 1-D tensor prunes every entry")
    def test_structured_reprune_of_1d_tensor_raises(self, prune):
        m = nn.Linear(3, 3)
        prune.identity(m, "bias")
        with pytest.raises(ValueError):
            prune.ln_structured(m, "bias", amount=1, n=2, dim=0)

    @torch_bug("global_unstructured reads its parameters twice, so a generator fails")
    def test_global_pruning_generator_of_pairs(self, prune):
        m = nn.Linear(4, 2)
        prune.global_unstructured(((m, n) for n in ["weight", "bias"]), prune.L1Unstructured,
                                  amount=3)
        assert int((m.weight_mask == 0).sum() + (m.bias_mask == 0).sum()) == 3
