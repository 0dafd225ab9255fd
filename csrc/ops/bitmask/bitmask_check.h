// Argument checks shared by the CPU and CUDA kernels of the bitmask ops, so both
// devices reject the same input with the same message.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace lthfast {
namespace bitmask {

// Bytes needed for n bits.
inline int64_t packed_bytes(int64_t n) { return (n + 7) / 8; }

inline void check_mask(const at::Tensor& mask, const char* op) {
  TORCH_CHECK(mask.layout() == at::kStrided, op, ": mask has layout ", mask.layout(),
              "; only dense (strided) tensors are supported");
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask has dtype ", mask.scalar_type(),
              "; it must be torch.bool");
}

// pack_bits' input: a bool mask, or a float one (torch.nn.utils.prune's format),
// whose nonzero entries are the kept ones.
inline void check_pack_input(const at::Tensor& mask, const char* op) {
  TORCH_CHECK(mask.layout() == at::kStrided, op, ": mask has layout ", mask.layout(),
              "; only dense (strided) tensors are supported");
  const at::ScalarType t = mask.scalar_type();
  TORCH_CHECK(t == at::kBool || t == at::kFloat || t == at::kDouble || t == at::kHalf ||
                  t == at::kBFloat16,
              op, ": mask has dtype ", t,
              "; it must be torch.bool, or float32/float64/float16/bfloat16 (nonzero = kept)");
}

inline void check_packed(const at::Tensor& packed, const char* op, const char* what = "packed") {
  TORCH_CHECK(packed.layout() == at::kStrided, op, ": ", what, " has layout ", packed.layout(),
              "; only dense (strided) tensors are supported");
  TORCH_CHECK(packed.scalar_type() == at::kByte, op, ": ", what, " has dtype ",
              packed.scalar_type(), "; it must be torch.uint8 (from pack_bits)");
  TORCH_CHECK(packed.dim() == 1, op, ": ", what, " must be 1-D, got shape ", packed.sizes());
}

// numel of `shape` (checked: no negative sizes), and that packed holds it exactly.
inline int64_t check_unpack(const at::Tensor& packed, at::IntArrayRef shape, const char* op) {
  check_packed(packed, op);
  int64_t n = 1;
  for (int64_t s : shape) {
    TORCH_CHECK(s >= 0, op, ": shape ", shape, " has a negative size");
    n *= s;
  }
  TORCH_CHECK(packed.numel() == packed_bytes(n), op, ": packed has ", packed.numel(),
              " bytes but shape ", shape, " (", n, " entries) needs ", packed_bytes(n));
  return n;
}

inline void check_pair(const at::Tensor& a, const at::Tensor& b, const char* op) {
  check_packed(a, op, "a");
  check_packed(b, op, "b");
  TORCH_CHECK(a.numel() == b.numel(), op, ": a has ", a.numel(), " bytes but b has ",
              b.numel(), "; both must pack the same number of entries");
  TORCH_CHECK(a.device() == b.device(), op, ": a is on ", a.device(), " but b is on ",
              b.device());
}

}  // namespace bitmask
}  // namespace lthfast
