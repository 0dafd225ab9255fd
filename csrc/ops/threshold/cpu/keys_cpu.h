// CPU helpers shared by the threshold kernels: key digits and walks over the
// keys of an entry in memory or logical order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "ops/bitmask/cpu/pack_cpu.h"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace cpu {

template <typename key_t>
struct Digits {
  static constexpr int kKeyBits = sizeof(key_t) * 8 - 1;  // the sign bit is always 0
  static constexpr int kCount = (kKeyBits + kDigitBits - 1) / kDigitBits;
  static constexpr int shift(int i) { return std::max(0, kKeyBits - kDigitBits * (i + 1)); }
  static constexpr int width(int i) { return std::min(kDigitBits, kKeyBits - kDigitBits * i); }
  static key_t digit(key_t key, int i) {
    return (key >> shift(i)) & ((key_t(1) << width(i)) - 1);
  }
};

template <typename key_t, typename scalar_t>
inline key_t key_of(scalar_t x) {
  if constexpr (std::is_same_v<key_t, uint64_t>) {
    return key64(static_cast<double>(x));
  } else {
    return key32(static_cast<float>(x));
  }
}

// Eligibility readers: eligible_at(m, j) is 0 or 1 for memory offset j, so the
// loops stay branch-free. A mask pointer (bool bytes, or the score's dtype:
// nonzero = eligible), packed bits (bit j; the score is row-major), or no mask.
struct NoMask {};
struct PackedBits {
  const uint8_t* bits;
};
inline uint32_t eligible_at(NoMask, int64_t) { return 1u; }
inline uint32_t eligible_at(PackedBits m, int64_t j) { return (m.bits[j >> 3] >> (j & 7)) & 1u; }
template <typename M>
inline uint32_t eligible_at(const M* m, int64_t j) {
  return uint32_t(m[j] != static_cast<M>(0));
}

// Calls f(reader) with e's eligibility reader; scalar_t is the score's dtype.
template <typename scalar_t, typename F>
void with_mask_reader(const Entry& e, const F& f) {
  if (e.mask == nullptr) {
    f(NoMask{});
  } else if (e.mask_is_bits) {
    f(PackedBits{static_cast<const uint8_t*>(e.mask)});
  } else if (e.mask_is_bool) {
    f(static_cast<const uint8_t*>(e.mask));
  } else {
    f(static_cast<const scalar_t*>(e.mask));
  }
}

// Calls f(j, key, eligible) for memory offsets [begin, end) of e (eligible is
// 0 or 1, so callers can stay branch-free).
template <typename key_t, typename F>
void for_each_key(const Entry& e, int64_t begin, int64_t end, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_threshold_cpu", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    with_mask_reader<scalar_t>(e, [&](auto m) {
      for (int64_t j = begin; j < end; ++j) f(j, key_of<key_t>(x[j]), eligible_at(m, j));
    });
  });
}

// Calls f(key, eligible) for memory offsets first, first + step, ... below end
// of e: one dtype dispatch per call (the sampled-range path samples every
// step-th key).
template <typename key_t, typename F>
void for_each_key_strided(const Entry& e, int64_t first, int64_t end, int64_t step, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_sample_keys", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    with_mask_reader<scalar_t>(e, [&](auto m) {
      // each load misses the cache: prefetching a few steps ahead overlaps them
      constexpr int64_t kAhead = 8;
      for (int64_t j = first; j < end; j += step) {
        if (j + kAhead * step < end) __builtin_prefetch(x + j + kAhead * step);
        f(key_of<key_t>(x[j]), eligible_at(m, j));
      }
    });
  });
}

constexpr uint32_t kInfKey32 = 0x7F800000u;  // key32(+Inf); every NaN's raw key is above it

// scan_keys: like for_each_key, for hot branch-free loops. The body is a small
// struct taken and returned by value: its accumulators stay in registers and
// the loop vectorises (a lambda capturing outer locals by reference does not).
// The fp32 key, written for the vectoriser: integer ops only, no branch.
inline uint32_t key32_branchless(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  b &= 0x7FFFFFFFu;
  const uint32_t nan = uint32_t(-int32_t(static_cast<int32_t>(b) > 0x7F800000));
  return (b & ~nan) | (kNanKey32 & nan);
}

template <typename key_t, typename scalar_t>
inline key_t fast_key(scalar_t x) {
  if constexpr (std::is_same_v<key_t, uint32_t> && std::is_same_v<scalar_t, float>) {
    return key32_branchless(x);
  } else {
    return key_of<key_t>(x);
  }
}

// M: an eligibility reader (see eligible_at). Packed bits are spread into a
// block of bytes first, so the loop over the block vectorises as it does for a
// bool mask (bit extraction per entry inside it ran ~3x slower).
template <typename key_t, typename scalar_t, typename M, typename Body>
__attribute__((noinline)) Body scan_typed(const scalar_t* __restrict x, M m, int64_t begin,
                                          int64_t end, Body body) {
  int64_t j = begin;
  if constexpr (std::is_same_v<M, PackedBits>) {
    constexpr int64_t kBlock = 256;
    const uint64_t* spread = bitmask::bit_spread_table().data();
    alignas(64) uint8_t ok[kBlock];
    for (; j < end && (j & 7) != 0; ++j) body(j, fast_key<key_t>(x[j]), eligible_at(m, j));
    for (; j + kBlock <= end; j += kBlock) {
      for (int64_t b = 0; b < kBlock / 8; ++b) {
        std::memcpy(ok + 8 * b, &spread[m.bits[(j >> 3) + b]], 8);
      }
      for (int64_t i = 0; i < kBlock; ++i) body(j + i, fast_key<key_t>(x[j + i]), uint32_t(ok[i]));
    }
  }
  for (; j < end; ++j) body(j, fast_key<key_t>(x[j]), eligible_at(m, j));
  return body;
}

template <typename key_t, typename Body>
Body scan_keys(const Entry& e, int64_t begin, int64_t end, Body body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_scan_keys", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    with_mask_reader<scalar_t>(e, [&](auto m) { body = scan_typed<key_t>(x, m, begin, end, body); });
  });
  return body;
}

template <typename key_t>
key_t key_at(const Entry& e, int64_t j) {
  key_t key = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_key_at", [&] {
    key = key_of<key_t>(static_cast<const scalar_t*>(e.data)[j]);
  });
  return key;
}

// Memory offset of logical (row-major) index l.
inline int64_t offset_of(const Entry& e, int64_t l) {
  if (e.row_major) return l;
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(e.sizes.size()) - 1; d >= 0; --d) {
    off += (l % e.sizes[d]) * e.strides[d];
    l /= e.sizes[d];
  }
  return off;
}


}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
