// Shared by the CPU and CUDA threshold kernels: the order-preserving keys.
//
// Entries are ranked by |x|, with every NaN equal and above +Inf. The key of an
// entry is the bit pattern of |x| as an unsigned integer, which orders like the
// magnitude for non-negative IEEE floats. fp16/bf16/fp32 all convert exactly to
// fp32, so they share 32-bit keys; when any fp64 tensor takes part every entry
// uses a 64-bit key (bits of |double(x)|). Only the low 31 / 63 bits are used.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LTHFAST_HD __host__ __device__ __forceinline__
#else
#define LTHFAST_HD inline
#endif

namespace lthfast {
namespace threshold {

constexpr uint32_t kNanKey32 = 0x7FFFFFFFu;
constexpr uint64_t kNanKey64 = 0x7FFFFFFFFFFFFFFFull;

LTHFAST_HD uint32_t key32(float x) {
  uint32_t b;
#if defined(__CUDA_ARCH__)
  b = __float_as_uint(x);
#else
  std::memcpy(&b, &x, sizeof(b));
#endif
  b &= 0x7FFFFFFFu;
  return b > 0x7F800000u ? kNanKey32 : b;
}

LTHFAST_HD uint64_t key64(double x) {
  uint64_t b;
#if defined(__CUDA_ARCH__)
  b = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&b, &x, sizeof(b));
#endif
  b &= 0x7FFFFFFFFFFFFFFFull;
  return b > 0x7FF0000000000000ull ? kNanKey64 : b;
}

// The magnitude a key stands for (NaN for the NaN key).
inline double key_to_double(uint64_t key, bool wide) {
  if (wide) {
    double d;
    std::memcpy(&d, &key, sizeof(d));
    return d;
  }
  uint32_t k = static_cast<uint32_t>(key);
  float f;
  std::memcpy(&f, &k, sizeof(f));
  return static_cast<double>(f);
}

// Radix digits: 16 bits per pass, most significant first.
constexpr int kDigitBits = 16;
constexpr int kBins = 1 << kDigitBits;

}  // namespace threshold
}  // namespace lthfast
