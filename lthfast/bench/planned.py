"""Suites whose kernels are not built yet: registered so `lthfast bench` names them
and says why they do not run, instead of measuring something else."""
from lthfast.bench.registry import Suite, register

register(Suite(
    "optim", "fused masked optimizer step (MaskedSGD/MaskedAdam/MaskedAdamW vs torch.optim + masking)",
    planned="the fused masked optimizer kernels (lthfast.optim) are not built yet; this suite "
            "lands with them"))
