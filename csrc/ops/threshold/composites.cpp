// Threshold ops on devices without a kernel of their own (CUDA), composed of other
// ops through the dispatcher. The CPU kernels take precedence over these.
//   mask_counts_packed: mask_counts, then pack_bits of each mask (the CPU kernel
//     does both in one read of the masks, cpu/mask_counts_cpu.cpp);
//   threshold_mask_into: threshold_mask, then a copy into `out` and the product
//     (the CPU kernel writes both in its mask pass, cpu/threshold_mask_cpu.cpp).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/threshold/threshold_prepare.h"

#include <optional>
#include <tuple>
#include <vector>

namespace lthfast {
namespace threshold {
namespace {

std::tuple<at::Tensor, std::vector<at::Tensor>> mask_counts_packed_composite(at::TensorList masks) {
  static const auto counts_op = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("lthfast::mask_counts", "")
                                    .typed<at::Tensor(at::TensorList)>();
  static const auto pack_op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("lthfast::pack_bits", "")
                                  .typed<at::Tensor(const at::Tensor&)>();
  at::Tensor counts = counts_op.call(masks);  // checks every mask first
  std::vector<at::Tensor> packed;
  packed.reserve(masks.size());
  for (const at::Tensor& m : masks) packed.push_back(pack_op.call(m));
  return {counts, packed};
}

void threshold_mask_into_composite(const at::Tensor& score, const std::optional<at::Tensor>& mask,
                                   const at::Tensor& threshold, at::Tensor& ties_left,
                                   at::Tensor& out, const std::optional<at::Tensor>& orig,
                                   const std::optional<at::Tensor>& product) {
  static const auto mask_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lthfast::threshold_mask", "")
          .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                            at::Tensor&, std::optional<at::ScalarType>)>();
  std::vector<at::Tensor> masks;
  if (mask.has_value()) masks.push_back(*mask);
  check_mask_out(score, masks, out, "threshold_mask_into");
  check_product(score, masks, out, orig, product, "threshold_mask_into");
  out.copy_(mask_op.call(score, mask, threshold, ties_left, out.scalar_type()));
  if (product.has_value()) {
    at::Tensor p = *product;
    at::mul_out(p, out, *orig);
  }
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CompositeExplicitAutograd, m) {
  m.impl("mask_counts_packed", &lthfast::threshold::mask_counts_packed_composite);
  m.impl("threshold_mask_into", &lthfast::threshold::threshold_mask_into_composite);
}
