"""lthfast.nn: MaskedConv2d / MaskedLinear, sparsify / densify on torchvision models."""
import copy

import pytest
import torch
from torch import nn

import lthfast
from lthfast.nn import MaskedConv2d, MaskedLinear, densify, sparsify
from _masked_conv_cases import masked_copy, random_masks

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def test_modules_drop_in():
    conv = MaskedConv2d(4, 6, 3, padding=1, bias=True)
    lin = MaskedLinear(6, 3)
    ref_conv, ref_lin = nn.Conv2d(4, 6, 3, padding=1), nn.Linear(6, 3)
    assert set(conv.state_dict()) == set(ref_conv.state_dict()) | {"mask"}
    assert set(lin.state_dict()) == set(ref_lin.state_dict()) | {"mask"}
    conv.load_state_dict({**ref_conv.state_dict(), "mask": torch.rand(6, 4, 3, 3) > 0.5})
    x = torch.randn(2, 4, 5, 5)
    for path in ("dense", "sparse", "auto"):
        conv.path = path
        torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(
            x, ref_conv.weight * conv.mask, ref_conv.bias, padding=1))
    assert "sparsity=" in repr(conv) and "sparsity=0.0000" in repr(lin)
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)


def test_padding_modes_and_same():
    for kw in (dict(padding="same"), dict(padding=1, padding_mode="reflect"),
               dict(padding=(2, 1), padding_mode="circular"), dict(padding="valid")):
        torch.manual_seed(0)
        ref = nn.Conv2d(3, 5, (3, 4) if kw.get("padding") == "same" else 3, **kw)
        mc = sparsify(copy.deepcopy(nn.Sequential(ref)), {"0.weight": torch.rand(ref.weight.shape) > 0.3})[0]
        x = torch.randn(1, 3, 8, 9)
        with torch.no_grad():
            ref.weight.mul_(mc.mask)
        for path in ("dense", "sparse"):
            mc.path = path
            torch.testing.assert_close(mc(x), ref(x), rtol=1e-5, atol=1e-5)


def test_sparsify_resnet_and_densify_back():
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    masks = random_masks(model, 0.9)
    dense = masked_copy(model, masks)
    params_before = {n: p for n, p in model.named_parameters()}
    sp = sparsify(model, masks)
    assert all(p is params_before[n] for n, p in sp.named_parameters())  # shared, not copied
    assert isinstance(sp.conv1, MaskedConv2d) and isinstance(sp.fc, MaskedLinear)
    assert sum(isinstance(m, MaskedConv2d) for m in sp.modules()) == 20
    assert set(sp.state_dict()) == set(dense.state_dict()) | {f"{n[:-7]}.mask" for n in masks}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = dense(x)
        for path in ("auto", "sparse"):
            for m in sp.modules():
                if hasattr(m, "path"):
                    m.path = path
            torch.testing.assert_close(sp(x), want, rtol=1e-4, atol=1e-4)
    back = densify(sp)
    assert not any(isinstance(m, (MaskedConv2d, MaskedLinear)) for m in back.modules())
    assert type(back.conv1) is nn.Conv2d and "mask" not in back.conv1.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(back(x), want, rtol=1e-4, atol=1e-4)


class _Ticket:
    """What lthfast.Ticket exposes to sparsify: names() and [name]."""

    def __init__(self, masks):
        self._m = masks

    def names(self):
        return list(self._m)

    def __getitem__(self, name):
        return self._m[name]


def test_sparsify_errors_leave_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    good = {"0.weight": torch.rand(4, 3, 3, 3) > 0.5, "2.weight": torch.rand(2, 4) > 0.5}
    for bad, exc, word in (({**good, "9.weight": good["0.weight"]}, ValueError, "9.weight"),
                           ({**good, "2.weight": good["2.weight"].t()}, ValueError, "2.weight"),
                           ({**good, "2.weight": good["2.weight"].int()}, TypeError, "2.weight")):
        with pytest.raises(exc, match=word):
            sparsify(model, bad)
        assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    with pytest.raises(TypeError, match="ticket_or_masks"):
        sparsify(model, [good["0.weight"]])
    with pytest.raises(ValueError, match="path"):
        sparsify(model, good, path="fastest")
    sparsify(model, _Ticket(good))
    assert isinstance(model[0], MaskedConv2d) and isinstance(model[2], MaskedLinear)


def test_sparsified_detector_gives_same_detections():
    pytest.importorskip("torchvision")
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    model = FasterRCNN(backbone, num_classes=3, min_size=96, max_size=96,
                       rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50).eval()
    masks = random_masks(model, 0.85, seed=1)
    dense = masked_copy(model, masks)
    sp = sparsify(model, masks, path="sparse")
    n_masked = sum(isinstance(m, (MaskedConv2d, MaskedLinear)) for m in sp.modules())
    assert n_masked == len(masks)
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        want, got = dense(images)[0], sp(images)[0]
    assert len(want["boxes"]) > 0
    assert torch.equal(want["labels"], got["labels"])
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cls_name", ["ShiftedWindowAttention", "ShiftedWindowAttentionV2"])
def test_sparsify_leaves_layers_whose_parent_reads_their_weight(cls_name):
    """torchvision's Swin attention passes self.qkv.weight / self.proj.weight to a
    functional and never calls those Linears: a MaskedLinear there would never run.
    sparsify leaves them, with a warning, and swaps the rest."""
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    attn = getattr(swin, cls_name)(16, [4, 4], [2, 2], num_heads=2)
    model = nn.Sequential(attn, nn.Linear(16, 5)).eval()
    ticket = lthfast.Ticket.from_model(model, 0.7)
    dense = copy.deepcopy(model)
    ticket.apply(dense)
    with pytest.warns(UserWarning, match=r"parent module reads their weight.*'0\.qkv\.weight'"):
        sp = sparsify(copy.deepcopy(dense), ticket)
    assert type(sp[0].qkv) is nn.Linear and type(sp[0].proj) is nn.Linear
    assert isinstance(sp[1], MaskedLinear)
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), dense(x))


def test_swap_conversion_after_functional_masked_ops():
    """The weight cache holds no weak reference to the weight (swap_tensors would refuse
    it): a plain model that calls lthfast.ops.masked_conv2d / masked_linear on its own
    parameters converts under the swap flag with no forget_cached, and the next call
    uses the converted weight."""
    from lthfast.ops import masked_conv2d, masked_linear
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(4, 4))
        cmask, lmask = torch.rand(3, 2, 3, 3) > 0.5, torch.rand(4, 4) > 0.5
        x, y = torch.randn(1, 2, 6, 6), torch.randn(2, 4)
        conv, lin = model[0], model[1]
        for path in ("dense", "sparse"):
            with torch.no_grad():
                masked_conv2d(x, conv.weight, cmask, conv.bias, path=path)
                masked_linear(y, lin.weight, lmask, lin.bias, path=path)
        w = conv.weight
        model.double()  # raised "Cannot swap t1 because it has weakref associated with it"
        assert conv.weight is w and w.dtype == torch.float64
        with torch.no_grad():
            w.mul_(2)
            for path in ("dense", "sparse"):
                got = masked_conv2d(x.double(), w, cmask, conv.bias, path=path)
                torch.testing.assert_close(got, torch.nn.functional.conv2d(
                    x.double(), w * cmask, conv.bias))
                got = masked_linear(y.double(), lin.weight, lmask, lin.bias, path=path)
                torch.testing.assert_close(got, y.double() @ (lin.weight * lmask).T + lin.bias)
        model.load_state_dict(model.state_dict())
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def test_weight_cache_tells_views_of_one_storage_apart():
    """Temporary views come back with the id of the previous (dead) one: a transposed view
    of the same memory, with the same shape and data pointer, gets its own masked weight."""
    from lthfast.ops import masked_linear
    torch.manual_seed(1)
    base, mask, x = torch.randn(5, 5), torch.rand(5, 5) > 0.4, torch.randn(3, 5)
    with torch.no_grad():
        for _ in range(3):
            for w in (lambda: base.view(5, 5), lambda: base.t(), lambda: base[:, :]):
                got = masked_linear(x, w(), mask, path="dense")
                torch.testing.assert_close(got, x @ (w() * mask).T, rtol=0, atol=1e-6)


def test_swap_module_params_on_conversion_after_a_forward():
    """torch's opt-in swap_tensors conversion refuses a tensor with weak references: the
    masked layers drop their weight's cache entry (which holds one) before .to() /
    load_state_dict."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model = sparsify(nn.Sequential(nn.Linear(4, 4), nn.Conv2d(1, 2, 3)),
                         {"0.weight": torch.rand(4, 4) > 0.5, "1.weight": torch.rand(2, 1, 3, 3) > 0.5})
        model.eval()
        with torch.no_grad():
            model[0](torch.randn(2, 4))
            model[1](torch.randn(1, 1, 5, 5))
        w = model[0].weight
        model.double()
        assert model[0].weight is w and w.dtype == torch.float64
        with torch.no_grad():
            model[0](torch.randn(2, 4, dtype=torch.float64))
        model.load_state_dict(model.state_dict())
        with torch.no_grad():
            out = model[0](torch.ones(1, 4, dtype=torch.float64))
        torch.testing.assert_close(out, torch.ones(1, 4, dtype=torch.float64) @ (w * model[0].mask).T
                                   + model[0].bias)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
