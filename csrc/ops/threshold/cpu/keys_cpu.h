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
