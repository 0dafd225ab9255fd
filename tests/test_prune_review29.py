"""lthfast.prune: a global_unstructured that fails under no_grad rolls back a pruned
tensor it had let go of with the autograd state it had (stop 29's review)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lthfast import _ops


@pytest.fixture(autouse=True)
def _kernels_or_reference(monkeypatch):
    if not _ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")


class _FailingLinear(nn.Linear):
    fail = False

    def register_forward_pre_hook(self, *args, **kwargs):
        if self.fail:
            raise RuntimeError("boom")
        return super().register_forward_pre_hook(*args, **kwargs)


def test_rollback_under_no_grad_keeps_the_pruned_tensors_autograd_state():
    import lthfast.prune as prune
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), _FailingLinear(256, 256))  # 2^16 entries each
    params = [(model[0], "weight"), (model[1], "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.3)
    before = model[0].weight.detach().clone()
    assert model[0].weight.requires_grad and model[0].weight.grad_fn is not None
    model[1].fail = True
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.3)
    w = model[0].weight
    assert w.requires_grad and w.grad_fn is not None
    assert torch.equal(w.detach(), before)
    w.sum().backward()  # reaches weight_orig through the mask
    assert torch.equal(model[0].weight_orig.grad, model[0].weight_mask)


def test_a_tensor_in_place_of_a_pair_is_named_by_its_shape():
    # stop 30: the message held the whole tensor's repr (12,000 characters on resnet18)
    import lthfast.prune as P
    m = torch.nn.Linear(300, 200)
    with pytest.raises(ValueError, match=r"parameters\[0\]=<Parameter of shape \(200, 300\)> "
                                         r"is not a \(module, name\) pair \(pass \[\(module"):
        P.global_unstructured(list(m.parameters()), pruning_method=P.L1Unstructured, amount=0.2)
