// CPU helpers shared by the threshold kernels: key digits and walks over the
// keys of an entry in memory or logical order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <type_traits>

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

// Calls f(j, key, eligible) for memory offsets [begin, end) of e (eligible is
// 0 or 1, so callers can stay branch-free).
template <typename key_t, typename F>
void for_each_key(const Entry& e, int64_t begin, int64_t end, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_threshold_cpu", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    if (e.mask && e.mask_is_bool) {
      const uint8_t* m = static_cast<const uint8_t*>(e.mask);
      for (int64_t j = begin; j < end; ++j) f(j, key_of<key_t>(x[j]), uint32_t(m[j] != 0));
    } else if (e.mask) {  // a float mask of the score's dtype: nonzero = eligible
      const scalar_t* m = static_cast<const scalar_t*>(e.mask);
      for (int64_t j = begin; j < end; ++j) {
        f(j, key_of<key_t>(x[j]), uint32_t(m[j] != static_cast<scalar_t>(0)));
      }
    } else {
      for (int64_t j = begin; j < end; ++j) f(j, key_of<key_t>(x[j]), uint32_t(1));
    }
  });
}

// Calls f(key, eligible) for memory offsets first, first + step, ... below end
// of e: one dtype dispatch per call (the sampled-range path samples every
// step-th key).
template <typename key_t, typename F>
void for_each_key_strided(const Entry& e, int64_t first, int64_t end, int64_t step, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_sample_keys", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    for (int64_t j = first; j < end; j += step) {
      uint32_t ok = 1;
      if (e.mask && e.mask_is_bool) {
        ok = static_cast<const uint8_t*>(e.mask)[j] != 0;
      } else if (e.mask) {
        ok = static_cast<const scalar_t*>(e.mask)[j] != static_cast<scalar_t>(0);
      }
      f(key_of<key_t>(x[j]), ok);
    }
  });
}

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

template <typename key_t, typename scalar_t, typename M, typename Body>
__attribute__((noinline)) Body scan_typed(const scalar_t* __restrict x, const M* __restrict m,
                                          int64_t begin, int64_t end, Body body) {
  if (m == nullptr) {
    for (int64_t j = begin; j < end; ++j) body(j, fast_key<key_t>(x[j]), uint32_t(1));
  } else {
    for (int64_t j = begin; j < end; ++j) {
      body(j, fast_key<key_t>(x[j]), uint32_t(m[j] != static_cast<M>(0)));
    }
  }
  return body;
}

template <typename key_t, typename Body>
Body scan_keys(const Entry& e, int64_t begin, int64_t end, Body body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_scan_keys", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    if (e.mask && e.mask_is_bool) {
      body = scan_typed<key_t>(x, static_cast<const uint8_t*>(e.mask), begin, end, body);
    } else if (e.mask) {
      body = scan_typed<key_t>(x, static_cast<const scalar_t*>(e.mask), begin, end, body);
    } else {
      body = scan_typed<key_t>(x, static_cast<const uint8_t*>(nullptr), begin, end, body);
    }
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
