// Every lthfast op schema lives here, in one place. Kernels register their
// implementations per device in csrc/ops/<family>/{cpu,cuda}/.
#include <torch/library.h>

TORCH_LIBRARY(lthfast, m) {
  // Global magnitude threshold over many tensors (the IMP pruning step).
  // scores: float tensors (fp16/bf16/fp32/fp64), ranked by |score|; NaN above +Inf.
  // masks: empty (all entries eligible) or one bool tensor per score, same shape:
  //        only entries where the mask is True are eligible and counted.
  // k: how many eligible entries to prune, 0 <= k <= number eligible.
  // Returns (threshold, n_ties): 0-dim float64 |score| of the k-th smallest
  // eligible entry (0.0 when k == 0) and 0-dim int64 number of entries equal to
  // it that are pruned (the first ones in tensor order, then row-major index).
  m.def("global_threshold(Tensor[] scores, Tensor[] masks, int k) -> (Tensor, Tensor)");
  // Same selection, returned as keep-masks (True = kept): one bool tensor per
  // score, same shape and strides as the score when it is dense.
  m.def("global_magnitude_masks(Tensor[] scores, Tensor[] masks, int k) -> Tensor[]");
}
