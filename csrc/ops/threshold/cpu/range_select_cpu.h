// The sampled-range path of the CPU threshold, taken for large inputs when a
// sample brackets the k-th key (almost always): one branch-free counting pass
// replaces the scatter histogram of the radix path's first pass.
//
//   1. a strided sample of 2^18 eligible keys gives a range [lo, hi] that holds
//      the k-th smallest key with high probability (+-4 sigma of its rank);
//   2. one pass counts the eligible keys below lo and inside [lo, hi]; unless
//      below < k <= below + inside (a miss), the radix path runs instead;
//   3. the fused pass writes each mask byte: 0 below lo, 1 above hi, and
//      2 + c inside, c = (key - lo) >> shift < 254 the sub-range; the bytes >= 2
//      (rare, found 8 at a time) are counted per code;
//   4. the code holding the k-th key is found from the counts; only its entries
//      are read again (memchr) to get the exact key t and the ties;
//   5. those bytes are resolved like the radix path's pending bytes, and every
//      other byte >= 2 becomes (code > the chosen one).
// The result is bit for bit the radix path's. Extra memory: the sample and the
// keys of one code (bounded; larger than that falls back to the radix path).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/threshold/cpu/select_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {

struct Range {
  uint64_t lo = 0, hi = 0;
  int64_t below = 0, inside = 0;
};

constexpr int64_t kSample = int64_t(1) << 18;
constexpr int kCodes = 254;  // sub-ranges: mask bytes 2 .. 255

// lo = the a-th smallest sample key (0 when a is below the sample), hi = the
// b-th (the largest possible key when b is above it).
template <typename key_t>
void range_from_sample(std::vector<key_t>& sample, int64_t a, int64_t b, Range& r) {
  const int64_t m = static_cast<int64_t>(sample.size());
  r.lo = 0;
  r.hi = static_cast<key_t>(~key_t(0) >> 1);
  if (a > 0) {
    std::nth_element(sample.begin(), sample.begin() + a, sample.end());
    r.lo = sample[a];
  }
  if (b < m - 1) {
    std::nth_element(sample.begin(), sample.begin() + b, sample.end());
    r.hi = sample[b];
  }
}

template <typename key_t>
bool sample_range(const Prepared& p, int64_t k, Range& r) {
  int64_t n = 0;
  for (const Entry& e : p.entries) n += e.numel;
  if (n < 8 * kSample) return false;  // small inputs: the radix passes are cheap
  const int64_t stride = n / kSample;
  std::vector<key_t> sample;
  sample.reserve(kSample + 1);
  int64_t base = 0;  // every stride-th entry of the concatenation, eligible ones
  for (const Entry& e : p.entries) {
    const int64_t first = base % stride == 0 ? 0 : stride - base % stride;
    for (int64_t j = first; j < e.numel; j += stride) {
      for_each_key<key_t>(e, j, j + 1, [&](int64_t, key_t key, uint32_t ok) {
        if (ok) sample.push_back(key);
      });
    }
    base += e.numel;
  }
  const int64_t m = static_cast<int64_t>(sample.size());
  if (m < 1024) return false;
  // The eligible count is not known yet: each sample stands for `stride` entries.
  const double q = std::min(1.0, static_cast<double>(k) / (static_cast<double>(m) * stride));
  const double rank = q * m;
  const double margin = 4.0 * std::sqrt(std::max(1.0, m * q * (1.0 - q))) + 16.0;
  range_from_sample(sample, static_cast<int64_t>(std::floor(rank - margin)),
                    static_cast<int64_t>(std::ceil(rank + margin)), r);
  return true;
}

// Eligible keys below lo and inside [lo, hi]. Keys fit the signed type (the top
// bit is 0), and signed compares vectorise on plain x86-64.
template <typename key_t>
struct CountBody {
  using skey = std::make_signed_t<key_t>;
  skey lo, hi;
  uint32_t below = 0, inside = 0;  // a chunk has 2^16 entries
  void operator()(int64_t, key_t key, uint32_t ok) {
    const skey sk = static_cast<skey>(key);
    below += ok & uint32_t(sk < lo);
    inside += ok & uint32_t(sk >= lo) & uint32_t(sk <= hi);
  }
};

template <typename key_t>
std::vector<int64_t> count_range(const Prepared& p, Range& r) {
  using skey = std::make_signed_t<key_t>;
  std::vector<int64_t> below(p.chunks.size()), inside(p.chunks.size());
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    CountBody<key_t> body{static_cast<skey>(r.lo), static_cast<skey>(r.hi)};
    body = scan_keys<key_t>(e, ch.begin, ch.end, body);
    below[c] = body.below;
    inside[c] = body.inside;
  });
  r.below = r.inside = 0;
  for (size_t c = 0; c < below.size(); ++c) {
    r.below += below[c];
    r.inside += inside[c];
  }
  return inside;  // per chunk
}

// Step 3: writes the mask bytes and counts the bytes of each code.
template <typename key_t>
struct ClassifyBody {
  using skey = std::make_signed_t<key_t>;
  skey lo, hi;
  key_t ulo;
  int shift;
  uint8_t* out;
  void operator()(int64_t j, key_t key, uint32_t ok) {
    const skey sk = static_cast<skey>(key);
    const uint32_t in = uint32_t(sk >= lo) & uint32_t(sk <= hi);
    const uint32_t code = uint32_t(sk > hi) | (in * (2u + uint32_t((key - ulo) >> shift)));
    out[j] = static_cast<uint8_t>(code & (0u - ok));
  }
};

template <typename key_t>
std::vector<int64_t> classify_range(const Prepared& p, const Range& r, int shift) {
  using skey = std::make_signed_t<key_t>;
  const skey lo = static_cast<skey>(r.lo), hi = static_cast<skey>(r.hi);
  const key_t ulo = static_cast<key_t>(r.lo);
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<int64_t> counts(static_cast<size_t>(nthreads) * 256, 0);
  constexpr int64_t kBlock = 4096;
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    int64_t* cnt = counts.data() + static_cast<size_t>(at::get_thread_num()) * 256;
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    for (int64_t b = ch.begin; b < ch.end; b += kBlock) {
      const int64_t end = std::min(ch.end, b + kBlock);
      scan_keys<key_t>(e, b, end, ClassifyBody<key_t>{lo, hi, ulo, shift, out});
      int64_t j = b;
      for (; j + 8 <= end; j += 8) {  // bytes >= 2 are rare: test 8 at a time
        uint64_t w;
        std::memcpy(&w, out + j, 8);
        if (w & 0xFEFEFEFEFEFEFEFEull) {
          for (int i = 0; i < 8; ++i) ++cnt[out[j + i]];
        }
      }
      for (; j < end; ++j) ++cnt[out[j]];
    }
  });
  std::vector<int64_t> total(256, 0);
  for (int t = 0; t < nthreads; ++t) {
    for (int c = 2; c < 256; ++c) total[c] += counts[static_cast<size_t>(t) * 256 + c];
  }
  return total;
}

// The rank-th smallest (1-based) of `keys` as a Selection: the key, how many
// entries equal to it are pruned, and how many there are.
template <typename key_t>
Selection select_among(std::vector<key_t>& keys, int64_t rank) {
  std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end());
  const key_t t = keys[rank - 1];
  int64_t less = 0, equal = 0;
  for (key_t key : keys) {
    less += key < t;
    equal += key == t;
  }
  Selection s;
  s.key = static_cast<uint64_t>(t);
  s.n_ties = rank - less;
  s.n_equal = equal;
  return s;
}

// Steps 1-4: the threshold key and ties, and the code byte whose entries must be
// resolved against it; false when the sample missed (nothing usable written).
template <typename key_t>
bool range_select(const Prepared& p, int64_t k, Selection& s, uint8_t& code) {
  Range r;
  if (!sample_range<key_t>(p, k, r)) return false;
  count_range<key_t>(p, r);
  if (!(r.below < k && k <= r.below + r.inside)) return false;
  int shift = 0;
  while (((r.hi - r.lo) >> shift) >= static_cast<uint64_t>(kCodes)) ++shift;
  const std::vector<int64_t> counts = classify_range<key_t>(p, r, shift);
  int64_t rank = k - r.below;
  int c = 2;
  for (; c < 256; ++c) {
    if (counts[c] >= rank) break;
    rank -= counts[c];
  }
  TORCH_INTERNAL_ASSERT(c < 256, "range select lost the k-th entry");
  code = static_cast<uint8_t>(c);
  // The keys of this code only: bounded, or the radix path takes over.
  int64_t n = 0;
  for (const Entry& e : p.entries) n += e.numel;
  if (counts[c] > std::max<int64_t>(int64_t(1) << 20, n / 64)) return false;
  std::vector<std::vector<key_t>> parts(p.chunks.size());
  for_chunks(p, [&](int64_t ci, const Chunk& ch, const Entry& e) {
    for_each_code<key_t>(e, ch.begin, ch.end, code, [&](int64_t, key_t key) { parts[ci].push_back(key); });
  });
  std::vector<key_t> keys;
  keys.reserve(counts[c]);
  for (auto& part : parts) keys.insert(keys.end(), part.begin(), part.end());
  s = select_among(keys, rank);
  return true;
}

// The threshold op alone (no masks to write): after the counting pass, one
// pass collects the keys inside [lo, hi] (bounded, else the radix path) and
// the exact key is selected among them.
// Branch-free compaction: every key is stored at out[n], n advances only for
// the ones inside; out has room for the chunk's inside count plus one slot.
// Locals and __restrict: the store cannot alias the counter.
template <typename key_t, typename scalar_t, typename M>
__attribute__((noinline)) int64_t collect_typed(const scalar_t* __restrict x, const M* __restrict m,
                                                int64_t begin, int64_t end, key_t lo, key_t hi,
                                                key_t* __restrict out) {
  using skey = std::make_signed_t<key_t>;
  const skey slo = static_cast<skey>(lo), shi = static_cast<skey>(hi);
  int64_t n = 0;
  for (int64_t j = begin; j < end; ++j) {
    const key_t key = fast_key<key_t>(x[j]);
    const skey sk = static_cast<skey>(key);
    const int64_t ok = m == nullptr ? 1 : int64_t(m[j] != static_cast<M>(0));
    out[n] = key;
    n += ok & int64_t(sk >= slo) & int64_t(sk <= shi);
  }
  return n;
}

template <typename key_t>
int64_t collect_keys(const Entry& e, int64_t begin, int64_t end, key_t lo, key_t hi, key_t* out) {
  int64_t n = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_collect_keys", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    if (e.mask && e.mask_is_bool) {
      n = collect_typed(x, static_cast<const uint8_t*>(e.mask), begin, end, lo, hi, out);
    } else if (e.mask) {
      n = collect_typed(x, static_cast<const scalar_t*>(e.mask), begin, end, lo, hi, out);
    } else {
      n = collect_typed(x, static_cast<const uint8_t*>(nullptr), begin, end, lo, hi, out);
    }
  });
  return n;
}

template <typename key_t>
bool range_threshold(const Prepared& p, int64_t k, Selection& s) {
  Range r;
  if (!sample_range<key_t>(p, k, r)) return false;
  const std::vector<int64_t> inside = count_range<key_t>(p, r);
  if (!(r.below < k && k <= r.below + r.inside)) return false;
  int64_t n = 0;
  for (const Entry& e : p.entries) n += e.numel;
  if (r.inside > std::max<int64_t>(int64_t(1) << 20, n / 32)) return false;
  std::vector<int64_t> offset(p.chunks.size() + 1, 0);  // chunk c writes from offset[c] + c
  for (size_t c = 0; c < p.chunks.size(); ++c) offset[c + 1] = offset[c] + inside[c];
  std::vector<key_t> slots(r.inside + p.chunks.size());
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    collect_keys<key_t>(e, ch.begin, ch.end, static_cast<key_t>(r.lo), static_cast<key_t>(r.hi),
                        slots.data() + offset[c] + c);
  });
  std::vector<key_t> keys;
  keys.reserve(r.inside);
  for (size_t c = 0; c < p.chunks.size(); ++c) {
    keys.insert(keys.end(), slots.begin() + offset[c] + c, slots.begin() + offset[c + 1] + c);
  }
  const int64_t rank = k - r.below;
  s = select_among(keys, rank);
  return true;
}

// Step 5, after resolve_code(p, s, code): every other byte >= 2 is an entry
// inside [lo, hi] whose sub-range is decided by its code alone.
inline void finish_codes(const Prepared& p, uint8_t code) {
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    auto fix = [&](int64_t j) {
      const uint8_t v = out[j];
      out[j] = v < 2 ? v : static_cast<uint8_t>(v > code);
    };
    int64_t j = ch.begin;
    for (; j + 8 <= ch.end; j += 8) {  // most 8-byte words hold only 0 and 1
      uint64_t w;
      std::memcpy(&w, out + j, 8);
      if (w & 0xFEFEFEFEFEFEFEFEull) {
        for (int i = 0; i < 8; ++i) fix(j + i);
      }
    }
    for (; j < ch.end; ++j) fix(j);
  });
}

}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
