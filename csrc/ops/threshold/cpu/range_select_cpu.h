// The sampled-range path of the CPU threshold, taken for large inputs when a
// sample brackets the k-th key (almost always): ONE pass over the weights finds
// the exact threshold, where the radix path needs a scatter histogram pass and
// more.
//
//   1. a strided sample of 2^18 eligible keys gives a range [lo, hi] that holds
//      the k-th smallest key with high probability (+-4 sigma of its rank), and
//      about 1% of the keys;
//   2. one pass counts the eligible keys below lo and collects those inside
//      [lo, hi] (blocks of 16 are tested by a vectorised OR first: most hold
//      none); unless below < k <= below + inside (a miss) or the inside keys
//      exceed a bound, the radix path runs instead;
//   3. the k-th key t and its ties are selected among the collected keys.
// For masks (global_magnitude_masks) the pass of step 2 also writes every mask
// byte it can already decide (0 below lo or not eligible, 1 above hi; 0 for now
// inside) and records where each inside key is (its offset in its chunk); only
// those ~1% bytes are written afterwards, from the collected keys alone
// (resolve_collected): one read of the weights in all, no second walk over the
// masks. The result is bit for bit the radix path's. Extra memory: the sample
// and the inside keys with their offsets (bounded).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/threshold/cpu/count_collect_avx2.h"
#include "ops/threshold/cpu/count_collect_vec.h"
#include "ops/threshold/cpu/threshold_isa.h"
#include "ops/threshold/cpu/select_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {

struct Range {
  uint64_t lo = 0, hi = 0;
  int64_t below = 0, inside = 0;
};

constexpr int64_t kSample = int64_t(1) << 18;

// The r-th smallest (0-based) of `keys`, with the number of keys below it and
// equal to it. A histogram of (key - min) >> shift in at most 2^16 bins finds
// the bin that holds it, and only that bin's keys are ordered: three cheap
// passes, where std::nth_element over a few hundred thousand keys costs ~10x
// more (both ran on one thread while the others waited).
template <typename key_t>
struct Kth {
  key_t key;
  int64_t less, equal;
};

template <typename key_t>
Kth<key_t> kth_smallest(const std::vector<key_t>& keys, int64_t r) {
  key_t lo = keys[0], hi = keys[0];
  for (key_t k : keys) {
    lo = std::min(lo, k);
    hi = std::max(hi, k);
  }
  int shift = 0;
  while (static_cast<key_t>(hi - lo) >> shift >= (key_t(1) << 16)) ++shift;
  std::vector<int64_t> hist(static_cast<size_t>((static_cast<key_t>(hi - lo) >> shift) + 1), 0);
  for (key_t k : keys) ++hist[static_cast<size_t>((k - lo) >> shift)];
  int64_t before = 0;
  size_t bin = 0;
  while (before + hist[bin] <= r) before += hist[bin++];
  std::vector<key_t> in_bin;
  in_bin.reserve(static_cast<size_t>(hist[bin]));
  for (key_t k : keys) {
    if (static_cast<size_t>((k - lo) >> shift) == bin) in_bin.push_back(k);
  }
  const int64_t ri = r - before;
  std::nth_element(in_bin.begin(), in_bin.begin() + ri, in_bin.end());
  Kth<key_t> out{in_bin[ri], before, 0};
  for (key_t k : in_bin) {
    out.less += k < out.key;
    out.equal += k == out.key;
  }
  return out;
}

// lo = the a-th smallest sample key (0 when a is below the sample), hi = the
// b-th (the largest possible key when b is above it).
template <typename key_t>
void range_from_sample(const std::vector<key_t>& sample, int64_t a, int64_t b, Range& r) {
  const int64_t m = static_cast<int64_t>(sample.size());
  r.lo = 0;
  r.hi = static_cast<key_t>(~key_t(0) >> 1);
  if (a > 0) r.lo = kth_smallest(sample, a).key;
  if (b < m - 1) r.hi = kth_smallest(sample, b).key;
}

template <typename key_t>
bool sample_range(const Prepared& p, int64_t k, Range& r) {
  int64_t n = 0;
  for (const Entry& e : p.entries) n += e.numel;
  if (n < 8 * kSample) return false;  // small inputs: the radix passes are cheap
  const int64_t stride = n / kSample;
  // Every stride-th entry of the concatenation, the eligible ones, gathered per
  // chunk on all threads (the strided loads miss the cache: they are the cost).
  std::vector<int64_t> base(p.entries.size(), 0);  // offset of each entry in the concatenation
  for (size_t i = 1; i < p.entries.size(); ++i) base[i] = base[i - 1] + p.entries[i - 1].numel;
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<std::vector<key_t>> part(nthreads);
  for (auto& v : part) v.reserve(static_cast<size_t>(2 * kSample / nthreads + 1024));
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    std::vector<key_t>& mine = part[at::get_thread_num()];
    const int64_t g = base[ch.entry] + ch.begin;  // global index of the chunk's start
    const int64_t first = ch.begin + (g % stride == 0 ? 0 : stride - g % stride);
    for_each_key_strided<key_t>(e, first, ch.end, stride, [&](key_t key, uint32_t ok) {
      if (ok) mine.push_back(key);
    });
  });
  std::vector<key_t> sample;
  sample.reserve(kSample + 1);
  for (auto& v : part) sample.insert(sample.end(), v.begin(), v.end());
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

// The fp32 key without NaN canonicalisation. Every NaN's raw key is above the
// +Inf key, so against a range [lo, hi] with hi <= the +Inf key it compares as
// the canonical key does (and no key inside such a range is a NaN): the hot
// loop then spends one AND per key instead of four ops.

inline uint32_t raw_key32(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b & 0x7FFFFFFFu;
}

template <bool kRaw, typename key_t, typename scalar_t>
inline key_t hot_key(scalar_t x) {
  if constexpr (kRaw) {
    return raw_key32(x);
  } else {
    return fast_key<key_t>(x);
  }
}

// Step 2 over one chunk: the eligible keys below lo are counted and those inside
// [lo, hi] stored at out[0..n) (out has room for the chunk plus one slot: the
// compaction stores every key of a block that holds one at out[n], and n
// advances only for the ones inside). With kWrite, codes[j] (the mask byte of
// memory offset j) gets 1 above hi, else 0 (inside too, decided later), and
// pos[i] the offset of out[i] from `begin` (a chunk has 2^16 entries). kRaw:
// fp32 keys without NaN canonicalisation (a finite range, see raw_key32). Keys
// fit the signed type (top bit 0), and signed compares vectorise on plain
// x86-64. Locals and __restrict: the stores cannot alias the counters.
template <bool kWrite, bool kRaw, typename key_t, typename scalar_t, typename M>
__attribute__((noinline)) int64_t count_collect_typed(const scalar_t* __restrict x, M m,
                                                      int64_t begin, int64_t end, key_t lo, key_t hi,
                                                      key_t* __restrict out,
                                                      uint16_t* __restrict pos, int64_t* below_out,
                                                      uint8_t* __restrict codes) {
  using skey = std::make_signed_t<key_t>;
  const skey slo = static_cast<skey>(lo), shi = static_cast<skey>(hi);
  auto eligible = [&](int64_t j) -> uint32_t { return eligible_at(m, j); };
  auto inside = [&](int64_t j) -> uint32_t {
    const skey sk = static_cast<skey>(fast_key<key_t>(x[j]));
    return eligible(j) & uint32_t(sk >= slo) & uint32_t(sk <= shi);
  };
  // 1 = kept (eligible and above the range), branch-free
  auto code = [&](skey sk, uint32_t ok) -> uint8_t {
    return static_cast<uint8_t>(ok & uint32_t(sk > shi));
  };
  constexpr int64_t kBlock = 16;
  uint32_t below = 0;  // a chunk has 2^16 entries
  int64_t n = 0;
  int64_t j = begin;
  // packed bits: a block's 16 bits are spread to 16 bytes through a table (blocks
  // start at whole bytes: chunks start at multiples of kChunk), so the loop reads
  // bytes as for a bool mask; a per-lane shift does not vectorise on plain x86-64
  // (the pass ran ~1.7x slower with it)
  constexpr bool kBits = std::is_same_v<M, PackedBits>;
  if constexpr (kBits) TORCH_INTERNAL_ASSERT((begin & 7) == 0, "chunk start ", begin);
  const uint64_t* spread = kBits ? bitmask::bit_spread_table().data() : nullptr;
  alignas(16) uint8_t okb[kBlock];
#if defined(LTHFAST_THRESHOLD_VEC)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<key_t, uint32_t>) {
    // fp32: explicit vectors (count_collect_vec.h); the tail below
    int64_t below64 = 0;
#if defined(LTHFAST_THRESHOLD_AVX2)
    if (range_uses_avx2()) {
      n = avx2::fp32_blocks<kWrite, kRaw>(x, m, begin, end, slo, shi, out, pos, codes, &below64, &j);
    } else {
      n = vec::fp32_blocks<kWrite, kRaw>(x, m, begin, end, slo, shi, out, pos, codes, &below64, &j);
    }
#else
    n = vec::fp32_blocks<kWrite, kRaw>(x, m, begin, end, slo, shi, out, pos, codes, &below64, &j);
#endif
    below = static_cast<uint32_t>(below64);
  }
#endif
  for (; j + kBlock <= end; j += kBlock) {
    uint32_t any = 0;
    if constexpr (kBits) {
      std::memcpy(okb, &spread[m.bits[j >> 3]], 8);
      std::memcpy(okb + 8, &spread[m.bits[(j >> 3) + 1]], 8);
    }
    for (int64_t i = 0; i < kBlock; ++i) {
      const skey sk = static_cast<skey>(hot_key<kRaw, key_t>(x[j + i]));
      uint32_t ok;
      if constexpr (kBits) {
        ok = okb[i];
      } else {
        ok = eligible(j + i);
      }
      below += ok & uint32_t(sk < slo);
      const uint32_t in = ok & uint32_t(sk >= slo) & uint32_t(sk <= shi);
      any |= in;
      if constexpr (kWrite) codes[j + i] = code(sk, ok);
    }
    if (!any) continue;
    for (int64_t i = 0; i < kBlock; ++i) {
      out[n] = fast_key<key_t>(x[j + i]);
      if constexpr (kWrite) pos[n] = static_cast<uint16_t>(j + i - begin);
      n += inside(j + i);
    }
  }
  for (; j < end; ++j) {
    const skey sk = static_cast<skey>(fast_key<key_t>(x[j]));
    const uint32_t ok = eligible(j);
    const uint32_t in = ok & uint32_t(sk >= slo) & uint32_t(sk <= shi);
    below += ok & uint32_t(sk < slo);
    if constexpr (kWrite) codes[j] = code(sk, ok);
    out[n] = fast_key<key_t>(x[j]);
    if constexpr (kWrite) pos[n] = static_cast<uint16_t>(j - begin);
    n += in;
  }
  *below_out = below;
  return n;
}

template <bool kWrite, typename key_t>
int64_t count_collect(const Entry& e, int64_t begin, int64_t end, key_t lo, key_t hi, key_t* out,
                      uint16_t* pos, int64_t* below) {
  static_assert(kChunk <= (int64_t(1) << 16), "offsets in a chunk are stored as uint16");
  int64_t n = 0;
  uint8_t* codes = kWrite ? reinterpret_cast<uint8_t*>(e.out) : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_count_collect", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    auto run = [&](auto raw) {
      constexpr bool kRaw = decltype(raw)::value;
      with_mask_reader<scalar_t>(e, [&](auto m) {
        n = count_collect_typed<kWrite, kRaw>(x, m, begin, end, lo, hi, out, pos, below, codes);
      });
    };
    if constexpr (std::is_same_v<key_t, uint32_t> && std::is_same_v<scalar_t, float>) {
      if (hi <= kInfKey32) {
        run(std::true_type{});
        return;
      }
    }
    run(std::false_type{});
  });
  return n;
}

// The rank-th smallest (1-based) of `keys` as a Selection: the key, how many
// entries equal to it are pruned, and how many there are.
template <typename key_t>
Selection select_among(const std::vector<key_t>& keys, int64_t rank) {
  const Kth<key_t> t = kth_smallest(keys, rank - 1);
  Selection s;
  s.key = static_cast<uint64_t>(t.key);
  s.n_ties = rank - t.less;
  s.n_equal = t.equal;
  return s;
}

// The keys inside the sampled range, per thread in the order its chunks ran,
// with (kWrite) their offsets in their chunk; slices[c] is chunk c's part.
template <typename key_t>
struct Collected {
  struct Slice {
    int thread = 0;
    int64_t first = 0, count = 0;
  };
  std::vector<std::vector<key_t>> keys;
  std::vector<std::vector<uint16_t>> pos;
  std::vector<Slice> slices;
};

// Steps 1-3: the threshold key and ties of the k-th smallest eligible key; false
// when the sample missed or too many keys fell inside (then nothing was decided,
// and with kWrite some mask bytes may hold codes: the caller rewrites them all).
// With kWrite every mask byte is 0 or 1 afterwards, and `c` says which ones are
// still undecided (resolve_collected).
template <typename key_t, bool kWrite = false>
bool range_threshold(const Prepared& p, int64_t k, Selection& s, Collected<key_t>* c = nullptr) {
  Range r;
  if (!sample_range<key_t>(p, k, r)) return false;
  int64_t total = 0;
  for (const Entry& e : p.entries) total += e.numel;
  const size_t bound = static_cast<size_t>(std::max<int64_t>(int64_t(1) << 20, total / 32));
  const int nthreads = std::max(1, at::get_num_threads());
  Collected<key_t> local;
  Collected<key_t>& col = c ? *c : local;
  col.keys.assign(nthreads, {});
  col.pos.assign(kWrite ? nthreads : 0, {});
  col.slices.assign(p.chunks.size(), {});
  std::vector<int64_t> below(p.chunks.size(), 0);
  std::atomic<size_t> inside_so_far{0};
  std::atomic<bool> overflow{false};
  // per thread: room for one chunk's inside keys (+1 slot, see count_collect_typed)
  std::vector<std::vector<key_t>> scratch(nthreads);
  std::vector<std::vector<uint16_t>> scratch_pos(nthreads);
  for_chunks(p, [&](int64_t ci, const Chunk& ch, const Entry& e) {
    if (overflow.load(std::memory_order_relaxed)) return;
    const int t = at::get_thread_num();
    std::vector<key_t>& mine = col.keys[t];
    if (scratch[t].empty()) {
      scratch[t].resize(static_cast<size_t>(kChunk) + 1);
      if (kWrite) scratch_pos[t].resize(static_cast<size_t>(kChunk) + 1);
    }
    const int64_t n = count_collect<kWrite, key_t>(e, ch.begin, ch.end, static_cast<key_t>(r.lo),
                                                   static_cast<key_t>(r.hi), scratch[t].data(),
                                                   scratch_pos[t].data(), &below[ci]);
    col.slices[ci] = {t, static_cast<int64_t>(mine.size()), n};
    mine.insert(mine.end(), scratch[t].begin(), scratch[t].begin() + n);
    if constexpr (kWrite) {
      col.pos[t].insert(col.pos[t].end(), scratch_pos[t].begin(), scratch_pos[t].begin() + n);
    }
    if (inside_so_far.fetch_add(n, std::memory_order_relaxed) + n > bound) {
      overflow.store(true, std::memory_order_relaxed);
    }
  });
  if (overflow.load()) return false;
  r.below = 0;
  for (int64_t b : below) r.below += b;
  size_t inside = 0;
  for (const auto& f : col.keys) inside += f.size();
  r.inside = static_cast<int64_t>(inside);
  if (!(r.below < k && k <= r.below + r.inside) || inside > bound) return false;
  std::vector<key_t> keys;
  keys.reserve(inside);
  for (auto& f : col.keys) {
    keys.insert(keys.end(), f.begin(), f.end());
    if (!kWrite) std::vector<key_t>().swap(f);
  }
  s = select_among(keys, k - r.below);
  return true;
}

// Sets every mask byte that range_threshold<kWrite> left undecided to `code`
// (for resolve_code, which finds them by value).
template <typename key_t>
void mark_pending(const Prepared& p, const Collected<key_t>& col, uint8_t code) {
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    const auto& sl = col.slices[c];
    const uint16_t* pos = col.pos[sl.thread].data() + sl.first;
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out) + ch.begin;
    for (int64_t i = 0; i < sl.count; ++i) out[pos[i]] = code;
  });
}

// Writes the pending mask bytes that range_threshold<kWrite> left, from the
// collected keys and offsets alone: key > t kept, key < t pruned, key == t
// pruned while ties last (the first n_ties in (tensor, row-major) order: chunk
// order, and offset order inside a chunk, which is row-major order when the
// tensor is). False (nothing written) when ties straddle the threshold in a
// tensor whose memory order is not row-major: resolve_code walks those.
template <typename key_t>
bool resolve_collected(const Prepared& p, const Selection& s, const Collected<key_t>& col) {
  const key_t t = static_cast<key_t>(s.key);
  const bool ordered_ties = s.n_ties != s.n_equal;
  if (ordered_ties) {
    for (const Entry& e : p.entries) {
      if (!e.row_major) return false;
    }
  }
  const int64_t nchunks = static_cast<int64_t>(p.chunks.size());
  std::vector<int64_t> ties_before;  // eligible ties in earlier chunks
  if (ordered_ties) {
    ties_before.assign(nchunks + 1, 0);
    for (int64_t c = 0; c < nchunks; ++c) {
      const auto& sl = col.slices[c];
      const key_t* keys = col.keys[sl.thread].data() + sl.first;
      int64_t n = 0;
      for (int64_t i = 0; i < sl.count; ++i) n += keys[i] == t;
      ties_before[c + 1] = ties_before[c] + n;
    }
  }
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    const auto& sl = col.slices[c];
    const key_t* keys = col.keys[sl.thread].data() + sl.first;
    const uint16_t* pos = col.pos[sl.thread].data() + sl.first;
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out) + ch.begin;
    if (!ordered_ties) {
      for (int64_t i = 0; i < sl.count; ++i) out[pos[i]] = keys[i] > t;
      return;
    }
    int64_t seen = ties_before[c];
    for (int64_t i = 0; i < sl.count; ++i) {
      if (keys[i] == t) {
        out[pos[i]] = seen++ >= s.n_ties;
      } else {
        out[pos[i]] = keys[i] > t;
      }
    }
  });
  return true;
}

}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
