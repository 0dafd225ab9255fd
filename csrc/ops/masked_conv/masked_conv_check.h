// Argument checks shared by the masked convolution / linear kernels (CPU and
// CUDA): every message names the argument and its value. The Python API
// (lthfast/ops/_masked_conv.py) checks the same things first; these keep direct
// torch.ops.lthfast.* callers from reaching a kernel with bad input.
#pragma once

#include <ATen/ATen.h>

namespace lthfast {
namespace masked_conv {

inline bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_mask(const char* op, const at::Tensor& weight, const at::Tensor& mask) {
  TORCH_CHECK_VALUE(mask.sizes() == weight.sizes(), op, ": mask shape ", mask.sizes(),
                    " does not match weight shape ", weight.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == weight.scalar_type(),
                   op, ": mask dtype must be bool or the weight's dtype (", weight.scalar_type(),
                   "), got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.device() == weight.device(), op, ": mask is on ", mask.device(),
                    " but weight is on ", weight.device());
}

inline void check_input_weight(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(is_float(weight.scalar_type()), op,
                   ": weight must be float16/bfloat16/float32/float64, got ", weight.scalar_type());
  TORCH_CHECK_TYPE(input.scalar_type() == weight.scalar_type(), op, ": input dtype ",
                   input.scalar_type(), " does not match weight dtype ", weight.scalar_type());
  TORCH_CHECK_VALUE(input.device() == weight.device(), op, ": input is on ", input.device(),
                    " but weight is on ", weight.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                      ": bias must have shape [", weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), op, ": bias dtype ",
                     bias->scalar_type(), " does not match weight dtype ", weight.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == weight.device(), op, ": bias is on ", bias->device(),
                      " but weight is on ", weight.device());
  }
}

inline void check_conv_geometry(const char* op, const at::Tensor& input, int64_t cout, int64_t cin_g,
                                at::IntArrayRef ks, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got a ", input.dim(),
                    "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 &&
                    ks.size() == 2, op, ": stride, padding, dilation must have 2 values");
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, op, ": stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be non-negative, got ",
                    padding);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, op, ": dilation must be positive, got ",
                    dilation);
  TORCH_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(input.size(1) == cin_g * groups, op, ": input has ", input.size(1),
                    " channels but weight expects in_channels/groups = ", cin_g, " with groups = ",
                    groups, " (", cin_g * groups, " channels)");
  TORCH_CHECK_VALUE(cout % groups == 0, op, ": out_channels ", cout,
                    " is not divisible by groups = ", groups);
  for (int i = 0; i < 2; ++i) {
    const int64_t span = dilation[i] * (ks[i] - 1) + 1;
    TORCH_CHECK_VALUE(input.size(2 + i) + 2 * padding[i] >= span, op, ": input size ",
                      input.sizes(), " with padding ", padding, " is smaller than the dilated kernel ",
                      ks, " (dilation ", dilation, ")");
  }
}

// rowptr (any device) must ascend from 0 to nnz = colidx.numel(), so that no
// row can index outside colidx / values. Checked once per call on a host copy
// (out_channels + 1 entries).
inline void check_rowptr(const char* op, const at::Tensor& rowptr, int64_t nnz) {
  const at::Tensor host = rowptr.to(at::kCPU).contiguous();
  const int64_t* r = host.const_data_ptr<int64_t>();
  const int64_t rows = host.numel() - 1;
  bool ok = r[0] == 0 && r[rows] == nnz;
  for (int64_t i = 0; ok && i < rows; ++i) ok = r[i] <= r[i + 1];
  TORCH_CHECK_VALUE(ok, op, ": rowptr must ascend from 0 to colidx.numel() = ", nnz);
}

// The bias the kernels index as bias[o]: contiguous (a strided or expanded view
// would be read with the wrong stride / past its storage); undefined when absent.
inline at::Tensor contiguous_bias(const std::optional<at::Tensor>& bias) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  return bias->contiguous();
}

inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// weight with pruned entries zeroed: where() for bool masks (exact zeros even
// for non-finite weights), a product for float masks.
inline at::Tensor apply_mask(const at::Tensor& weight, const at::Tensor& mask) {
  if (mask.scalar_type() == at::kBool) return weight.masked_fill(mask.logical_not(), 0);
  return weight * mask;
}

// Checks of the compressed weights (rowptr, colidx, values) of sparse_pack.
inline void check_packed(const char* op, const at::Tensor& input, const at::Tensor& rowptr,
                         const at::Tensor& colidx, const at::Tensor& values) {
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && rowptr.dim() == 1 && rowptr.size(0) >= 1,
                   op, ": rowptr must be a 1-D int64 tensor with out_features + 1 entries");
  TORCH_CHECK_TYPE(colidx.scalar_type() == at::kInt && colidx.dim() == 1, op,
                   ": colidx must be a 1-D int32 tensor, got ", colidx.scalar_type());
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(values.scalar_type() == acc && values.dim() == 1, op,
                   ": values must be a 1-D ", acc, " tensor for ", input.scalar_type(),
                   " input, got ", values.scalar_type());
  TORCH_CHECK_VALUE(values.size(0) == colidx.size(0), op, ": values has ", values.size(0),
                    " entries but colidx has ", colidx.size(0));
  for (const auto* t : {&rowptr, &colidx, &values}) {
    TORCH_CHECK_VALUE(t->device() == input.device(), op, ": packed weights are on ", t->device(),
                      " but input is on ", input.device());
  }
  TORCH_CHECK_TYPE(is_float(input.scalar_type()), op,
                   ": input must be float16/bfloat16/float32/float64, got ", input.scalar_type());
}

}  // namespace masked_conv
}  // namespace lthfast
