// mask_counts_packed on devices without a fused kernel (CUDA): mask_counts, then
// pack_bits of each mask, through the dispatcher. The CPU kernel does both in one
// read of the masks (cpu/mask_counts_cpu.cpp), and takes precedence over this one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

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

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CompositeExplicitAutograd, m) {
  m.impl("mask_counts_packed", &lthfast::threshold::mask_counts_packed_composite);
}
