// The dense path of masked_conv2d / masked_linear, their backward ops, and
// sparse_pack. They only call ATen (oneDNN / cuDNN / BLAS underneath), so one
// implementation is registered for CPU and CUDA alike.
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <tuple>

#include "ops/masked_conv/masked_conv_check.h"

namespace lthfast {
namespace masked_conv {
namespace {

void check_conv(const char* op, const at::Tensor& input, const at::Tensor& weight,
                const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                int64_t groups) {
  TORCH_CHECK_VALUE(weight.dim() == 4, op, ": weight must be 4-D (out, in/groups, kh, kw), got ",
                    weight.sizes());
  check_mask(op, weight, mask);
  check_input_weight(op, input, weight, bias);
  check_conv_geometry(op, input, weight.size(0), weight.size(1), {weight.size(2), weight.size(3)},
                      stride, padding, dilation, groups);
}

at::Tensor masked_conv2d(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_conv("masked_conv2d", input, weight, mask, bias, stride, padding, dilation, groups);
  return at::convolution(input, apply_mask(weight, mask), bias, stride, padding, dilation,
                         /*transposed=*/false, /*output_padding=*/{0, 0}, groups);
}

// Unrequested gradients come back as empty tensors (shape [0]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  check_conv("_masked_conv2d_backward", input, weight, mask, std::nullopt, stride, padding,
             dilation, groups);
  std::vector<int64_t> bias_sizes{weight.size(0)};
  auto grads = at::convolution_backward(
      grad_output, input, apply_mask(weight, mask),
      output_mask[2] ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt, stride, padding,
      dilation, false, {0, 0}, groups, output_mask);
  auto empty = at::empty({0}, weight.options());
  at::Tensor gi = output_mask[0] ? std::get<0>(grads) : empty;
  // Pruned positions get exactly zero gradient.
  at::Tensor gw = output_mask[1] ? apply_mask(std::get<1>(grads), mask) : empty.clone();
  at::Tensor gb = output_mask[2] ? std::get<2>(grads) : empty.clone();
  return {gi, gw, gb};
}

void check_linear(const char* op, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D (out, in), got ", weight.sizes());
  check_mask(op, weight, mask);
  check_input_weight(op, input, weight, bias);
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(-1) == weight.size(1), op, ": input shape ",
                    input.sizes(), " does not end in in_features = ", weight.size(1));
}

at::Tensor masked_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                         const std::optional<at::Tensor>& bias) {
  check_linear("masked_linear", input, weight, mask, bias);
  return at::linear(input, apply_mask(weight, mask), bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, std::array<bool, 3> output_mask) {
  check_linear("_masked_linear_backward", input, weight, mask, std::nullopt);
  auto empty = at::empty({0}, weight.options());
  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  // Rows of the flattened input, not reshape(-1, ...): in_f or out_f may be 0.
  const int64_t rows = c10::multiply_integers(input.sizes().slice(0, input.dim() - 1));
  auto g2 = grad_output.reshape({rows, out_f});
  at::Tensor gi = output_mask[0] ? at::matmul(grad_output, apply_mask(weight, mask)) : empty;
  at::Tensor gw = output_mask[1]
                      ? apply_mask(at::mm(g2.t(), input.reshape({rows, in_f})), mask)
                      : empty.clone();
  at::Tensor gb = output_mask[2] ? g2.sum(0) : empty.clone();
  return {gi, gw, gb};
}

// CSR of the kept weights, rows = output channels, columns = flattened
// (in_channel, kh, kw) (or in_features): rowptr int64 [out + 1], colidx int32
// [nnz], values [nnz] in the compute dtype (float64 for float64 weights, else
// float32). Row-major order, so columns ascend within a row.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_pack(const at::Tensor& weight,
                                                           const at::Tensor& mask) {
  TORCH_CHECK_VALUE(weight.dim() >= 2, "sparse_pack: weight must be at least 2-D, got ",
                    weight.sizes());
  check_mask("sparse_pack", weight, mask);
  TORCH_CHECK_TYPE(is_float(weight.scalar_type()),
                   "sparse_pack: weight must be float16/bfloat16/float32/float64, got ",
                   weight.scalar_type());
  const int64_t rows = weight.size(0);
  const int64_t cols = rows == 0 ? 0 : weight.numel() / rows;
  TORCH_CHECK_VALUE(cols < (int64_t(1) << 31), "sparse_pack: ", cols,
                    " weights per output channel do not fit int32 column indices");
  auto keep = (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).reshape({rows, cols});
  auto counts = keep.sum(1);  // int64
  auto rowptr = at::zeros({rows + 1}, weight.options().dtype(at::kLong));
  if (rows > 0) rowptr.narrow(0, 1, rows).copy_(counts.cumsum(0));
  auto nz = keep.nonzero();  // [nnz, 2], row-major
  auto colidx = nz.select(1, 1).to(at::kInt);
  const auto acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // A float mask scales what it keeps (y = conv(x, weight * mask), as the dense
  // path computes it): values are weight * mask, not the bare weight.
  const at::Tensor kept = mask.scalar_type() == at::kBool ? weight : weight * mask;
  auto values = kept.reshape({rows, cols}).masked_select(keep).to(acc);
  return {rowptr, colidx.contiguous(), values.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d);
  m.impl("_masked_conv2d_backward", &masked_conv2d_backward);
  m.impl("masked_linear", &masked_linear);
  m.impl("_masked_linear_backward", &masked_linear_backward);
  m.impl("sparse_pack", &sparse_pack);
}

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d);
  m.impl("_masked_conv2d_backward", &masked_conv2d_backward);
  m.impl("masked_linear", &masked_linear);
  m.impl("_masked_linear_backward", &masked_linear_backward);
  m.impl("sparse_pack", &sparse_pack);
}

}  // namespace masked_conv
}  // namespace lthfast
