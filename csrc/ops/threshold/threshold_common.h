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

// Bit-level forms of the keys, for kernels that load raw bits (no float
// arithmetic, so immune to flush-to-zero / fast-math flags):
//   key32_from_bits(bits of a float)  == key32(that float)
//   key64_from_bits(bits of a double) == key64(that double)
//   widen_key32(key32(x))             == key64(double(x))   for every float x
LTHFAST_HD uint32_t key32_from_bits(uint32_t b) {
  b &= 0x7FFFFFFFu;
  return b > 0x7F800000u ? kNanKey32 : b;
}

LTHFAST_HD uint64_t key64_from_bits(uint64_t b) {
  b &= 0x7FFFFFFFFFFFFFFFull;
  return b > 0x7FF0000000000000ull ? kNanKey64 : b;
}

LTHFAST_HD uint64_t widen_key32(uint32_t k) {
  if (k == kNanKey32) return kNanKey64;
  if (k >= 0x7F800000u) return 0x7FF0000000000000ull;  // +Inf
  uint32_t e = k >> 23;
  uint32_t m = k & 0x7FFFFFu;
  if (e == 0) {
    if (m == 0) return 0;
    // Subnormal float m * 2^-149: normalise so the leading 1 sits at bit 23.
#if defined(__CUDA_ARCH__)
    const int s = __clz(static_cast<int>(m)) - 8;
#else
    const int s = __builtin_clz(m) - 8;
#endif
    m = (m << s) & 0x7FFFFFu;
    return (static_cast<uint64_t>(897 - s) << 52) | (static_cast<uint64_t>(m) << 29);
  }
  return (static_cast<uint64_t>(e + 896u) << 52) | (static_cast<uint64_t>(m) << 29);
}

// Radix digits: 16 bits per pass, most significant first.
constexpr int kDigitBits = 16;
constexpr int kBins = 1 << kDigitBits;

}  // namespace threshold
}  // namespace lthfast
