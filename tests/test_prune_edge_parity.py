"""Edge cases where lthfast.prune must behave as torch.nn.utils.prune: a float amount
whose count rounds above the number of units, a None parameter in global_unstructured,
the memory format of a structured mask pruned again."""
import numpy as np
import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import lthfast.prune as lp


@pytest.mark.parametrize("method,args,shape", [("random_unstructured", (), (2051,)),
                                               ("l1_unstructured", (), (2051,)),
                                               ("random_structured", (1,), (2, 2051)),
                                               ("ln_structured", (1, 1), (2, 2051))])
def test_float16_amount_that_rounds_above_the_count(method, args, shape):
    amount = np.float16(1.0)  # float16(1.0) * 2051 == 2052 in float16 arithmetic
    assert round(amount * 2051) == 2052
    for prune in (tp, lp):
        m = nn.Module()
        m.w = nn.Parameter(torch.ones(shape))
        with pytest.raises(ValueError):
            getattr(prune, method)(m, "w", amount, *args)
        assert set(dict(m.named_parameters())) == {"w"} and not m._forward_pre_hooks


@pytest.mark.parametrize("method", ["L1Unstructured", "RandomUnstructured"])
def test_global_unstructured_over_a_none_parameter_is_an_attribute_error(method):
    for prune in (tp, lp):
        m = nn.Conv2d(3, 4, 3, bias=False)
        with pytest.raises(AttributeError):
            prune.global_unstructured([(m, "weight"), (m, "bias")], getattr(prune, method),
                                      amount=0.5)
        assert not prune.is_pruned(m)


@pytest.mark.parametrize("method,args", [("ln_structured", (0.3, 2, 0)),
                                         ("random_structured", (0.3, 0))])
def test_structured_mask_pruned_again_is_contiguous_as_in_torch(method, args):
    got = {}
    for prune in (tp, lp):
        torch.manual_seed(0)
        m = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
        getattr(prune, method)(m, "weight", *args)
        getattr(prune, method)(m, "weight", *args)
        got[prune] = (m.weight_mask.stride(), m.weight.stride(), m.weight_mask.clone())
    assert got[tp][:2] == got[lp][:2]
    assert torch.equal(got[tp][2], got[lp][2])


def test_unstructured_mask_keeps_a_channels_last_weights_format():
    """(documented: torch cannot prune a channels_last weight unstructured at all)"""
    m = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    lp.l1_unstructured(m, "weight", 0.3)
    lp.l1_unstructured(m, "weight", 0.3)
    assert m.weight_mask.is_contiguous(memory_format=torch.channels_last)
