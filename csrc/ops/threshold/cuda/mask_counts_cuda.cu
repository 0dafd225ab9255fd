// CUDA mask_counts: the same counts as the CPU kernel, from ATen's reductions
// (on a GPU these passes run at memory speed; no custom kernel is needed).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace lthfast {
namespace threshold {
namespace {

at::Tensor mask_counts_cuda(at::TensorList masks) {
  const char* op = "mask_counts";
  TORCH_CHECK(!masks.empty(), op, ": masks is empty");
  const at::Device dev = masks[0].device();
  std::vector<at::Tensor> rows;
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    TORCH_CHECK(m.defined() && m.device() == dev && dev.is_cuda(), op, ": masks[", i, "] is on ",
                m.device(), ", expected ", dev);
    TORCH_CHECK(m.layout() == at::kStrided, op, ": masks[", i, "] is sparse; pass dense masks");
    const at::ScalarType t = m.scalar_type();
    TORCH_CHECK(t == at::kBool || at::isFloatingType(t), op, ": masks[", i, "] has dtype ", t,
                "; masks must be bool or float16, bfloat16, float32, float64");
    if (t == at::kBool) {
      rows.push_back(at::stack({at::count_nonzero(m), at::zeros({}, m.options().dtype(at::kLong))}));
    } else {
      const at::Tensor ones = at::count_nonzero(m == 1);
      rows.push_back(at::stack({ones, at::count_nonzero(m) - ones}));
    }
  }
  return at::stack(rows);
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("mask_counts", &lthfast::threshold::mask_counts_cuda);
}
