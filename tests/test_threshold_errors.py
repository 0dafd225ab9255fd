"""Bad input to the threshold API: a clear error naming the tensor and value."""
import pytest
import torch

import lthfast

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")

W = [torch.randn(4, 3), torch.randn(5)]


@pytest.mark.parametrize("amount, exc, text", [
    (-1, ValueError, "amount=-1"),
    (-0.1, ValueError, "amount=-0.1"),
    (1.5, ValueError, "amount=1.5"),
    (18, ValueError, "amount=18"),
    (True, TypeError, "amount=True"),
    (float("nan"), ValueError, "amount=nan"),
    ("0.5", TypeError, "amount='0.5'"),
    (None, TypeError, "amount=None"),
])
def test_bad_amount(amount, exc, text):
    with pytest.raises(exc, match=text.replace(".", r"\.").replace("(", r"\(")):
        lthfast.global_magnitude_masks(W, amount)


def test_empty_list():
    with pytest.raises(ValueError, match="empty"):
        lthfast.global_magnitude_masks([], 0.5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_tensor(dtype):
    bad = torch.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype"):
        lthfast.global_magnitude_masks([W[0], bad], 0.5)


def test_different_devices():
    with pytest.raises(ValueError, match=r"tensors\[1\] is on meta"):
        lthfast.global_magnitude_masks([W[0], torch.empty(3, device="meta")], 0.5)


def test_bad_masks():
    with pytest.raises(ValueError, match=r"masks\[1\] has shape"):
        lthfast.global_magnitude_masks(W, 0.5, masks=[torch.ones(4, 3, dtype=torch.bool),
                                                      torch.ones(6, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"masks\[0\] has dtype torch.float64"):
        lthfast.global_magnitude_masks(W, 0.5, masks=[torch.ones(4, 3, dtype=torch.float64),
                                                      torch.ones(5, dtype=torch.bool)])
    with pytest.raises(ValueError, match="masks has 1 entries"):
        lthfast.global_magnitude_masks(W, 0.5, masks=[torch.ones(4, 3, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"masks\[0\] is on meta"):
        lthfast.global_magnitude_masks(W, 0.5, masks=[torch.ones(4, 3, dtype=torch.bool, device="meta"),
                                                      torch.ones(5, dtype=torch.bool)])


def test_bad_importance():
    with pytest.raises(ValueError, match=r"importance\[1\] has shape"):
        lthfast.global_magnitude_masks(W, 0.5, importance=[torch.ones(4, 3), torch.ones(2)])


def test_amount_counts_only_remaining():
    masks = [torch.zeros(4, 3, dtype=torch.bool), torch.ones(5, dtype=torch.bool)]
    with pytest.raises(ValueError, match=r"amount=6 .*\(5\)"):
        lthfast.global_magnitude_masks(W, 6, masks=masks)


def test_bad_k_for_threshold():
    with pytest.raises(ValueError, match="k=18"):
        lthfast.global_magnitude_threshold(W, 18)
    with pytest.raises(ValueError, match="k=-1"):
        lthfast.global_magnitude_threshold(W, -1)


def test_op_level_checks_name_the_tensor():
    """The dispatcher op itself checks too (for users calling torch.ops directly)."""
    with pytest.raises(RuntimeError, match=r"scores\[1\] has dtype Long"):
        torch.ops.lthfast.global_magnitude_masks([W[0], torch.zeros(3, dtype=torch.long)], [], 1)
    with pytest.raises(RuntimeError, match=r"k=100 is larger than the number of unpruned entries \(17\)"):
        torch.ops.lthfast.global_magnitude_masks(W, [], 100)
    with pytest.raises(RuntimeError):  # the dispatcher refuses an op with no tensor
        torch.ops.lthfast.global_threshold([], [], 0)


def test_generators_are_read_once_and_errors_still_name_the_tensor():
    """Valid calls leave the checks to the ops; a failing call runs them on the
    lists it read, so generators give the same errors as lists."""
    ws = [torch.randn(4, 3), torch.randn(5)]
    bad = (m for m in [torch.ones(4, 3, dtype=torch.bool), torch.ones(6, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \(6,\) but tensors\[1\] has shape \(5,\)"):
        lthfast.global_magnitude_masks((w for w in ws), 0.5, masks=bad)
    with pytest.raises(ValueError, match=r"masks\[1\] has shape"):
        lthfast.global_magnitude_threshold(ws, 1, masks=iter([torch.ones(4, 3), torch.ones(6)]))
    got = lthfast.global_magnitude_masks((w for w in ws), 0.5,
                                         masks=(torch.ones_like(w, dtype=torch.bool) for w in ws))
    assert [tuple(m.shape) for m in got] == [(4, 3), (5,)]
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype torch.int64"):
        lthfast.global_magnitude_masks([ws[0], torch.ones(3, dtype=torch.int64)], 2.0)  # not amount's


def test_named_parameters_or_a_state_dict_get_a_hint():
    """tensors[0] was read (.device) before it was checked: an AttributeError."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"tensors\[0\] is a tuple.*named_parameters\(\)\? pass model\.parameters\(\)"):
        lthfast.global_magnitude_masks(net.named_parameters(), 0.2)
    with pytest.raises(TypeError, match=r"tensors is a dict \(a state_dict\?\)"):
        lthfast.global_magnitude_threshold(net.state_dict(), 1)
    with pytest.raises(TypeError, match=r"tensors\[0\] is a NoneType"):
        lthfast.global_magnitude_masks([None, torch.ones(2)], 1)
    with pytest.raises(TypeError, match=r"importance\[0\] is a str"):
        lthfast.global_magnitude_masks([torch.ones(2)], 1, importance=["x"])
