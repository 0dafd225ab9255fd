// Every lthfast op schema lives here, in one place. Kernels register their
// implementations per device in csrc/ops/<family>/{cpu,cuda}/.
#include <torch/library.h>

TORCH_LIBRARY(lthfast, m) {
  // Global magnitude threshold over many tensors (the IMP pruning step).
  // scores: float tensors (fp16/bf16/fp32/fp64), ranked by |score|; NaN above +Inf.
  // masks: empty (all entries eligible) or one tensor per score, same shape, bool
  //        or the score's dtype: only entries where it is nonzero are eligible.
  // k: how many eligible entries to prune, 0 <= k <= number eligible.
  // Returns (threshold, n_ties): 0-dim float64 |score| of the k-th smallest
  // eligible entry (0.0 when k == 0) and 0-dim int64 number of entries equal to
  // it that are pruned (the first ones in tensor order, then row-major index).
  m.def("global_threshold(Tensor[] scores, Tensor[] masks, int k) -> (Tensor, Tensor)");
  // Same selection, returned as keep-masks (True = kept): one bool tensor per
  // score, same shape and strides as the score when it is dense.
  m.def("global_magnitude_masks(Tensor[] scores, Tensor[] masks, int k) -> Tensor[]");
  // One tensor's keep-mask from a global threshold, for callers that build masks
  // one tensor at a time (lthfast.prune: no list of masks alive at once).
  // Kept: eligible entries with |score| > threshold, and those equal to it once
  // ties_left ties are pruned (row-major order); ties_left is decremented by the
  // ties pruned here, so calls in tensor order reproduce global_magnitude_masks.
  // The mask's dtype is mask's (bool or the score's dtype), bool without mask.
  m.def("threshold_mask(Tensor score, Tensor? mask, Tensor threshold, Tensor(a!) ties_left) -> Tensor");

  // ---- masked convolution / linear (csrc/ops/masked_conv, lthfast.ops) ----
  // y = conv2d(input, weight * mask) (mask: bool or the weight's dtype, shape of
  // weight), on the library convolution. Differentiable through the backward op,
  // whose grad_weight is exactly 0 where the mask is 0; unrequested gradients
  // (output_mask False) come back as empty tensors.
  m.def("masked_conv2d(Tensor input, Tensor weight, Tensor mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("_masked_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor mask, int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("masked_linear(Tensor input, Tensor weight, Tensor mask, Tensor? bias) -> Tensor");
  m.def("_masked_linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor mask, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Kept weights as CSR over the flattened trailing dims: (rowptr int64 [out+1],
  // colidx int32 [nnz], values [nnz] float64 for float64 weights, else float32).
  m.def("sparse_pack(Tensor weight, Tensor mask) -> (Tensor, Tensor, Tensor)");
  // Direct sparse convolution / linear on sparse_pack's output (inference: not
  // differentiable). Output: contiguous, the input's dtype.
  m.def("sparse_conv2d(Tensor input, Tensor rowptr, Tensor colidx, Tensor values, Tensor? bias, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("sparse_linear(Tensor input, Tensor rowptr, Tensor colidx, Tensor values, Tensor? bias) -> Tensor");
}
