// What the CPU and CUDA kernels of mask_counts share: the argument checks and the
// bit patterns that classify a mask entry without float compares. A float entry is
// 1 when its bits equal `one` (+1.0); it is 0 when its bits without the sign are 0
// (+0.0, -0.0); anything else (NaN included) is neither. A bool entry is 1 when its
// byte is nonzero (any nonzero byte is True, as the threshold kernels read masks).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace lthfast {
namespace threshold {

// Entries per chunk of work; a chunk's counts fit in 32 bits.
constexpr int64_t kCountChunk = int64_t(1) << 16;

struct MaskBits {
  uint64_t one;
  uint64_t magnitude;  // the bits that are not the sign
  int32_t bytes;       // bytes per entry: 1 (bool), 2, 4, 8
};

inline MaskBits mask_bits(at::ScalarType t) {
  switch (t) {
    case at::kBool: return {1u, 0xFFu, 1};
    case at::kHalf: return {0x3C00u, 0x7FFFu, 2};
    case at::kBFloat16: return {0x3F80u, 0x7FFFu, 2};
    case at::kFloat: return {0x3F800000u, 0x7FFFFFFFu, 4};
    default: return {0x3FF0000000000000ull, 0x7FFFFFFFFFFFFFFFull, 8};  // kDouble
  }
}

// masks[i] must be a defined, dense (strided) bool or float tensor on `device`.
inline void check_count_mask(const at::Tensor& m, size_t i, const at::Device& device,
                             const char* op) {
  TORCH_CHECK(m.defined(), op, ": masks[", i, "] is undefined");
  TORCH_CHECK(m.device() == device, op, ": masks[", i, "] is on ", m.device(), ", expected ",
              device);
  TORCH_CHECK(m.layout() == at::kStrided, op, ": masks[", i, "] is sparse; pass dense masks");
  const at::ScalarType t = m.scalar_type();
  TORCH_CHECK(t == at::kBool || t == at::kHalf || t == at::kBFloat16 || t == at::kFloat ||
                  t == at::kDouble,
              op, ": masks[", i, "] has dtype ", t, "; masks must be bool or float16, bfloat16, "
              "float32, float64");
}

}  // namespace threshold
}  // namespace lthfast
