"""Benchmarks behind `lthfast bench`: a registry of suites, each comparing lthfast
with its baselines in the same run (`lthfast.bench.registry.register` adds one).

    from lthfast.bench import BenchConfig, run
    result = run(["threshold"], BenchConfig(device=torch.device("cpu"), quick=True))
"""
from lthfast.bench.registry import BenchConfig, Suite, get, names, register
from lthfast.bench import threshold as _threshold
from lthfast.bench.report import format_threshold

register(Suite("threshold",
               "global magnitude pruning step: torch.nn.utils.prune vs lthfast.prune / "
               "global_magnitude_masks, on resnet50 and R-CNN detection models",
               run=_threshold.run_suite, format=format_threshold))

from lthfast.bench import ticket as _ticket  # noqa: E402

register(Suite("ticket",
               "lthfast.Ticket save/load time and file size vs torch.save of masks; bit "
               "pack/unpack throughput vs numpy and the bandwidth floor",
               run=_ticket.run_suite, format=_ticket.format_ticket))

from lthfast.bench import optim as _optim  # noqa: E402

register(Suite("optim",
               "fused masked optimizer step (MaskedSGD/MaskedAdamW vs torch.optim + masking) "
               "on resnet50 / maskrcnn_resnet50_fpn at 80% sparsity",
               run=_optim.run_suite, format=_optim.format_optim))

from lthfast.bench import conv as _conv  # noqa: E402
from lthfast.bench.conv_report import format_conv  # noqa: E402

register(Suite("conv", "masked sparse convolution: lthfast.ops.masked_conv2d dense/sparse/auto vs "
                       "F.conv2d(x, w * mask), per resnet50 conv shape, and end to end",
               run=_conv.run_suite, format=format_conv))

from lthfast.bench import train_step as _train_step  # noqa: E402

register(Suite("train_step", "full training step (forward + backward + SGD momentum) of resnet18 "
                             "(CPU) / resnet50 (GPU) at 80% sparsity: dense vs lthfast Ticket + "
                             "MaskedSGD vs torch.nn.utils.prune hooks vs ASP-style masking; model bytes",
               run=_train_step.run_suite, format=_train_step.format_train_step))

from lthfast.bench import imp_round as _imp_round  # noqa: E402

register(Suite("imp_round", "one IMP round (prune + rewind + mask + train) of the small default "
                            "detector (CUDA: fasterrcnn_resnet50_fpn) on shapes: lthfast vs "
                            "torch.nn.utils.prune hooks",
               run=_imp_round.run_suite, format=_imp_round.format_imp_round))

from lthfast.bench.runner import run  # noqa: E402

__all__ = ["BenchConfig", "Suite", "get", "names", "register", "run"]
