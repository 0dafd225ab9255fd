"""torch.library.opcheck for every threshold op (schema, fake kernel, dispatch)."""
import pytest
import torch

import lthfast

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def _cases(device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(33, generator=g, dtype=torch.float64)
    c = torch.randn(6, 7, generator=g).to(torch.bfloat16).t()
    ts = [x.to(device) for x in (a, b, c)]
    ms = [(torch.rand(x.shape, generator=g) > 0.4).to(device) for x in (a, b, c)]
    return [(ts, [], 0), (ts, [], 50), (ts, ms, 20), ([ts[1]], [], 33)]


@pytest.mark.parametrize("op", ["global_threshold", "global_magnitude_masks"])
def test_opcheck_cpu(op):
    for args in _cases("cpu"):
        torch.library.opcheck(getattr(torch.ops.lthfast, op), args)


def test_opcheck_threshold_mask_cpu():
    for scores, masks, k in _cases("cpu"):
        t, ties = torch.ops.lthfast.global_threshold(scores, masks, k)
        for i, s in enumerate(scores):
            m = masks[i] if masks else None
            torch.library.opcheck(torch.ops.lthfast.threshold_mask, (s, m, t, ties.clone()))
            if m is not None:
                torch.library.opcheck(torch.ops.lthfast.threshold_mask, (s, m.to(s.dtype), t, ties.clone()))
