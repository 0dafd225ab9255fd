"""Suites whose kernels are not built yet: registered so `lthfast bench` names them
and says why they do not run, instead of measuring something else."""
from lthfast.bench.registry import Suite, register

register(Suite(
    "conv", "masked sparse convolution (lthfast.nn.MaskedConv2d vs dense conv on zeroed weights)",
    planned="the masked sparse convolution kernels (lthfast.nn) are not built yet; this suite "
            "lands with them"))
