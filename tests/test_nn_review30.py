"""Stop 30's review of lthfast.nn: torch.fx traces a sparsified model (a masked layer is
one call, as nn.Conv2d / nn.Linear are leaves); densify warns about the masked layers it
cannot swap back."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lthfast.nn import MaskedConv2d, MaskedLinear, densify, sparsify


def _masks(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() in (2, 4)}


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fx_symbolic_trace_of_masked_layers(path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    sp = sparsify(model, _masks(model), path=path)
    gm = torch.fx.symbolic_trace(sp)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(gm(x), sp(x))
    calls = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    assert calls.count("_conv_forward") == 2 and calls.count("_linear_forward") == 1
    # the graph reads the model's own tensors: a later prune is seen
    with torch.no_grad():
        sp[0].mask.zero_()
        assert torch.equal(gm(x), sp(x))
    torch.fx.symbolic_trace(MaskedConv2d(3, 4, 3))
    torch.fx.symbolic_trace(MaskedLinear(3, 4))


def test_create_feature_extractor_on_a_sparsified_resnet():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    sp = sparsify(model, _masks(model))
    fe = create_feature_extractor(sp, {"layer2": "feat"})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = sp.layer2(sp.layer1(sp.maxpool(sp.relu(sp.bn1(sp.conv1(x))))))
        assert torch.allclose(fe(x)["feat"], want)


def test_unbatched_input_still_works():
    conv = MaskedConv2d(3, 4, 3)
    x = torch.randn(3, 5, 5)
    assert torch.allclose(conv(x), conv(x.unsqueeze(0)).squeeze(0))


def test_densify_warns_about_a_parametrized_masked_layer():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3, 2))
    sp = sparsify(model, _masks(model))
    torch.nn.utils.parametrize.register_parametrization(sp[0], "weight", nn.Identity())
    with pytest.warns(UserWarning, match=r"densify: 1 masked layers .*\['0'\]"):
        d = densify(sp)
    assert type(d[2]) is nn.Linear  # the others are swapped back


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_double_backward_matches_torch_without_warnings(op):
    # create_graph=True recorded the backward ops, which have no autograd (torch warned:
    # "an autograd kernel was not registered ... deprecated")
    import warnings

    import torch.nn.functional as F

    from lthfast.ops import masked_conv2d, masked_linear
    torch.manual_seed(0)
    if op == "linear":
        x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        ours = lambda x, w, m, b: masked_linear(x, w, m, b)  # noqa: E731
        ref = lambda x, w, m, b: F.linear(x, w * m, b)  # noqa: E731
    else:
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        ours = lambda x, w, m, b: masked_conv2d(x, w, m, b, 1, 1, 1, 2)  # noqa: E731
        ref = lambda x, w, m, b: F.conv2d(x, w * m, b, 1, 1, 1, 2)  # noqa: E731
    mask = torch.rand(w.shape) > 0.4
    b = torch.randn(w.shape[0], dtype=torch.float64, requires_grad=True)

    def second(f):
        out = f(x, w, mask, b).tanh().square().sum()
        g = torch.autograd.grad(out, (x, w, b), create_graph=True)
        return torch.autograd.grad(sum(t.square().sum() for t in g), (x, w, b))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = second(ours)
    for a, e in zip(got, second(ref)):
        torch.testing.assert_close(a, e)
    assert (got[1][~mask] == 0).all()
    assert torch.autograd.gradgradcheck(lambda x, w, b: ours(x, w, mask, b), (x, w, b))
