// The radix path of the CPU threshold: histogram passes over 16-bit digits of
// the keys, the last one fused with writing the mask bytes (see threshold_cpu.cpp).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/threshold/cpu/select_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {

constexpr int kSub = 4;  // sub-histograms in pass 1, so runs of equal bins do not serialise

// Histogram of digit i of the eligible keys whose higher digits equal `prefix`.
// Pass 1 (i == 0) counts every entry: branch-free, into kSub interleaved uint32
// sub-histograms per thread, flushed to the thread's int64 histogram. Later passes
// count only the few entries in the selected bucket: a well-predicted branch.
template <typename key_t>
void count_digit(const Prepared& p, Histogram& h, int i, key_t prefix) {
  using D = Digits<key_t>;
  const int above = D::shift(i) + D::width(i);
  h.clear();
  at::parallel_for(0, static_cast<int64_t>(p.chunks.size()), 1, [&](int64_t cb, int64_t ce) {
    int64_t* hist = h.mine();
    if (i > 0) {
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = p.chunks[c];
        for_each_key<key_t>(p.entries[ch.entry], ch.begin, ch.end, [&](int64_t, key_t key, uint32_t ok) {
          if (ok && static_cast<key_t>(key >> above) == prefix) ++hist[D::digit(key, i)];
        });
      }
      return;
    }
    // kept per worker thread between calls (1 MB: a fresh one per call meant page faults)
    static thread_local std::vector<uint32_t> local;
    local.assign(static_cast<size_t>(kSub) * kBins, 0u);
    int64_t unflushed = 0;
    auto flush = [&] {
      for (int s = 0; s < kSub; ++s) {
        const uint32_t* l = local.data() + static_cast<size_t>(s) * kBins;
        for (int b = 0; b < kBins; ++b) hist[b] += l[b];
      }
      std::fill(local.begin(), local.end(), 0u);
      unflushed = 0;
    };
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = p.chunks[c];
      for_each_key<key_t>(p.entries[ch.entry], ch.begin, ch.end, [&](int64_t j, key_t key, uint32_t ok) {
        local[(static_cast<size_t>(j & (kSub - 1)) << kDigitBits) + D::digit(key, 0)] += ok;
      });
      unflushed += ch.end - ch.begin;
      if (unflushed >= (int64_t(1) << 30)) flush();  // uint32 bins never overflow
    }
    flush();
  });
}

// Histogram passes for digits [0, upto): returns the prefix of selected digits,
// the rank left inside it, and (after the first pass) checks k.
template <typename key_t>
key_t histogram_passes(const Prepared& p, Histogram& h, int upto, int64_t k, int64_t& rank,
                       int64_t& count) {
  using D = Digits<key_t>;
  key_t prefix = 0;
  rank = k;
  for (int i = 0; i < upto; ++i) {
    count_digit<key_t>(p, h, i, prefix);
    h.reduce();
    if (i == 0) {
      int64_t eligible = 0;
      for (int b = 0; b < kBins; ++b) eligible += h.total[b];
      TORCH_CHECK(k <= eligible, "lthfast: k=", k,
                  " is larger than the number of unpruned entries (", eligible, ")");
    }
    const int b = h.select(rank, count);
    prefix = static_cast<key_t>((prefix << D::width(i)) | static_cast<key_t>(b));
  }
  return prefix;
}

template <typename key_t>
Selection select_threshold(const Prepared& p, int64_t k) {
  Histogram h;
  Selection s;
  s.key = histogram_passes<key_t>(p, h, Digits<key_t>::kCount, k, s.n_ties, s.n_equal);
  return s;
}

// The fused last pass: every mask byte decided or marked pending, and the last
// digit of the pending entries histogrammed.
template <typename key_t>
Selection classify_and_select(const Prepared& p, int64_t k) {
  using D = Digits<key_t>;
  constexpr int last = D::kCount - 1;
  constexpr int low = D::width(last);
  static_assert(last >= 1, "the first pass checks k");
  Histogram h;
  int64_t rank = 0, count = 0;
  const key_t prefix = histogram_passes<key_t>(p, h, last, k, rank, count);
  h.clear();
  // Per block: a branch-free (vectorisable) classification into the mask bytes,
  // then the few pending bytes, found by memchr, feed the histogram.
  constexpr int64_t kBlock = 4096;
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    int64_t* hist = h.mine();
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    for (int64_t b = ch.begin; b < ch.end; b += kBlock) {
      const int64_t end = std::min(ch.end, b + kBlock);
      for_each_key<key_t>(e, b, end, [&](int64_t j, key_t key, uint32_t ok) {
        const key_t hi = key >> low;
        out[j] = static_cast<uint8_t>(((hi > prefix) | ((hi == prefix) << 1)) & (0u - ok));
      });
      for_each_code<key_t>(e, b, end, kPending, [&](int64_t, key_t key) { ++hist[D::digit(key, last)]; });
    }
  });
  h.reduce();
  const int b = h.select(rank, count);
  Selection s;
  s.key = (static_cast<uint64_t>(prefix) << low) | static_cast<uint64_t>(b);
  s.n_ties = rank;
  s.n_equal = count;
  return s;
}

}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
