"""Iterative magnitude pruning (IMP): train -> prune -> rewind -> train again.

`run_imp(model, names, train_fn=..., eval_fn=..., config=IMPConfig(...), out=RUN_DIR)`
works with any model and training loop; `lthfast imp` drives it for torchvision
detection, segmentation, keypoint and classification models.
"""
from lthfast.imp.config import IMPConfig, Rewind
from lthfast.imp.engine import IMP, IMPResult, RoundContext, run_imp, snapshot, ticket_digest
from lthfast.imp.rundir import RunDir

__all__ = ["IMP", "IMPConfig", "IMPResult", "Rewind", "RoundContext", "RunDir", "run_imp",
           "snapshot", "ticket_digest"]
