// Every lthfast op schema lives here, in one place. Kernels register their
// implementations per device in csrc/ops/<family>/{cpu,cuda}/.
#include <torch/library.h>

TORCH_LIBRARY(lthfast, m) {
  // Global magnitude threshold over many tensors (the IMP pruning step).
  // scores: float tensors (fp16/bf16/fp32/fp64), ranked by |score|; NaN above +Inf.
  // masks: empty (all entries eligible) or one tensor per score, same shape, bool
  //        or the score's dtype: only entries where it is nonzero are eligible;
  //        or uint8 packed bits (pack_bits' layout, 1-D, ceil(numel / 8) bytes).
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
  // The mask's dtype is `dtype` when given (bool or the score's dtype: torch's
  // float masks come out directly), else mask's (bool or the score's dtype),
  // bool without a mask or with packed bits.
  m.def("threshold_mask(Tensor score, Tensor? mask, Tensor threshold, Tensor(a!) ties_left, "
        "ScalarType? dtype=None) -> Tensor");
  // threshold_mask written into `out` (the score's shape, dtype bool or the score's,
  // any strides, memory of its own): lthfast.prune rewrites a mask nothing else holds.
  // With orig and product: also product = out * orig (torch's pruned tensor, orig's
  // dtype) in the same pass; product may be laid exactly over the score (it replaces
  // the old pruned tensor, which is the score in lthfast.prune's second round).
  m.def("threshold_mask_into(Tensor score, Tensor? mask, Tensor threshold, Tensor(a!) ties_left, "
        "Tensor(b!) out, Tensor? orig=None, Tensor(c!)? product=None) -> ()");
  // Per mask (bool or float, any shape): int64 [len(masks), 2] = (entries equal
  // to 1, entries neither 0 nor 1 -- NaN included), on the masks' device.
  // lthfast.prune counts torch-format masks with it before pruning again.
  m.def("mask_counts(Tensor[] masks) -> Tensor");
  // mask_counts, and each mask's bits as pack_bits writes them (nonzero = kept), from
  // one read of the masks: what lthfast.prune's second round needs of the old masks.
  m.def("mask_counts_packed(Tensor[] masks) -> (Tensor, Tensor[])");

  // ---- bitmask: masks as 1 bit per entry (lthfast.Ticket, ticket files) ----
  // Packed layout: uint8 [ceil(numel / 8)], entries in row-major LOGICAL order
  // (whatever the memory layout), entry i in bit (i % 8) of byte i / 8 (least
  // significant bit first), trailing bits 0.
  // mask: bool tensor of any shape and strides, or a float one (float32/64/16,
  // bfloat16: torch.nn.utils.prune's format) whose nonzero entries are kept.
  m.def("pack_bits(Tensor mask) -> Tensor");
  // A contiguous bool tensor of `shape` from packed (which must hold exactly
  // ceil(prod(shape) / 8) bytes).
  m.def("unpack_bits(Tensor packed, int[] shape) -> Tensor");
  // The same, written into an existing bool tensor of any strides (on packed's device).
  m.def("unpack_bits_into(Tensor packed, Tensor(a!) out) -> ()");
  // Number of set bits (kept entries) of packed: 0-dim int64. Relies on the
  // trailing bits being 0, as pack_bits writes them.
  m.def("count_bits(Tensor packed) -> Tensor");
  // Overlap of two packed masks of the same length: int64 [2] = (|a & b|, |a | b|).
  m.def("overlap_bits(Tensor a, Tensor b) -> Tensor");
  // Zeroes the entries of self (float, any strides) whose bit in packed is 0
  // (Ticket.apply: a model's pruned weights straight from the ticket's bits).
  m.def("zero_pruned_(Tensor(a!) self, Tensor packed) -> ()");
  // ---- Fused masked optimizers (lthfast.optim): one multi-tensor pass per step.
  // params, grads, states and masks are lists with one entry per parameter; each
  // state has the parameter's shape, dtype and strides; a grad with other
  // strides is copied into the param's layout. A mask (True / bit 1 = kept) is
  // None, a bool tensor with the parameter's shape and strides, or packed: 1-D
  // contiguous uint8 of ceil(numel / 8) bytes, entry i of the parameter's MEMORY
  // order in bit (i % 8) of byte i / 8 (LSB first; for a contiguous parameter
  // this is lthfast.bitmask.pack_bits' layout, so a Ticket's packed mask is used
  // as is).
  // Pruned entries (mask False) read their grad as 0 and write 0.0 to the weight
  // and every state; params whose mask is None update exactly like torch.optim.
  // lr_tensor (1 element), when given, replaces lr. grad_scale: grads are divided
  // by it; found_inf != 0: the whole call is skipped (Adam step counters too).
  // SGD: momentum_buffers is empty when momentum == 0; is_first_step: the
  // buffers are new (torch's buf = d_p.clone()).
  m.def("masked_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
        "Tensor?[] masks, float lr, Tensor? lr_tensor, float momentum, float dampening, "
        "float weight_decay, bool nesterov, bool maximize, bool is_first_step, "
        "Tensor? grad_scale, Tensor? found_inf) -> ()");
  // Adam / AdamW (decoupled_weight_decay). max_exp_avg_sqs is empty unless
  // amsgrad. state_steps: 1-element float tensors, incremented by the call (CPU
  // params: CPU steps; CUDA params: steps on the same device).
  m.def("masked_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
        "Tensor?[] masks, float lr, Tensor? lr_tensor, float beta1, float beta2, "
        "float weight_decay, float eps, bool amsgrad, bool maximize, "
        "bool decoupled_weight_decay, Tensor? grad_scale, Tensor? found_inf) -> ()");
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
