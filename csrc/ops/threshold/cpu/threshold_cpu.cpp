// CPU kernels of the global magnitude threshold: a multi-threaded radix select
// over the order-preserving keys of |x| (see threshold_common.h).
//
// Keys have 31 bits (fp16/bf16/fp32) or 63 bits (any fp64): digits of 16 bits
// from the top, the last one takes what is left (31 = 16 + 15; 63 = 16*3 + 15).
//
// global_magnitude_masks, 32-bit keys: two passes over the weights.
//   1. histogram of the first digit of every eligible key -> bucket P holding
//      the k-th smallest;
//   2. (fused) write every mask byte: 0 below P, 1 above P, 2 "pending" in P,
//      while histogramming the last digit of the pending entries -> exact key t
//      and n_ties, the number of entries equal to t to prune;
//   3. fix-up of the pending bytes only (found by memchr over the masks, so the
//      weights are read again only where pending): key > t kept, key < t pruned,
//      key == t pruned while ties last; when ties straddle the k-th entry they
//      are pruned in (tensor, row-major index) order, counted per chunk first.
// 64-bit keys add two histogram passes before the fused one. The threshold op
// alone runs histogram passes only.
// Extra memory: per-thread histograms and per-chunk counts, never a copy of the
// weights (a non-dense view is the one exception: it is made contiguous).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"
#include "ops/threshold/cpu/keys_cpu.h"

namespace lthfast {
namespace threshold {
namespace {

using namespace cpu;

constexpr uint8_t kPending = 2;  // mask byte still undecided after the fused pass

// Per-thread histograms, summed into one. Counts are int64: a thread may see
// more than 2^32 entries.
struct Histogram {
  int nthreads;
  std::vector<int64_t> per_thread;
  std::vector<int64_t> total;
  Histogram() : nthreads(std::max(1, at::get_num_threads())),
                per_thread(static_cast<size_t>(nthreads) * kBins), total(kBins) {}
  void clear() { std::fill(per_thread.begin(), per_thread.end(), 0); }
  int64_t* mine() { return per_thread.data() + static_cast<size_t>(at::get_thread_num()) * kBins; }
  void reduce() {
    std::fill(total.begin(), total.end(), 0);
    for (int t = 0; t < nthreads; ++t) {
      const int64_t* h = per_thread.data() + static_cast<size_t>(t) * kBins;
      for (int b = 0; b < kBins; ++b) total[b] += h[b];
    }
  }
  // The bucket holding the rank-th smallest (1-based); rank becomes its rank
  // inside the bucket.
  int select(int64_t& rank, int64_t& bucket_count) const {
    int64_t before = 0;
    for (int b = 0; b < kBins; ++b) {
      if (before + total[b] >= rank) {
        rank -= before;
        bucket_count = total[b];
        return b;
      }
      before += total[b];
    }
    TORCH_INTERNAL_ASSERT(false, "radix select lost the k-th entry");
    return -1;
  }
};

struct Selection {
  uint64_t key = 0;     // threshold key t
  int64_t n_ties = 0;   // entries equal to t that are pruned
  int64_t n_equal = 0;  // eligible entries equal to t
};

template <typename F>
void for_chunks(const Prepared& p, const F& f) {
  at::parallel_for(0, static_cast<int64_t>(p.chunks.size()), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) f(c, p.chunks[c], p.entries[p.chunks[c].entry]);
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
    const int above = D::shift(i) + D::width(i);
    h.clear();
    for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
      int64_t* hist = h.mine();
      if (i == 0) {
        for_each_key<key_t>(e, ch.begin, ch.end,
                            [&](int64_t, key_t key, uint32_t ok) { hist[D::digit(key, 0)] += ok; });
      } else {
        for_each_key<key_t>(e, ch.begin, ch.end, [&](int64_t, key_t key, uint32_t ok) {
          hist[D::digit(key, i)] += ok & uint32_t((key >> above) == prefix);
        });
      }
    });
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
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    int64_t* hist = h.mine();
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    for_each_key<key_t>(e, ch.begin, ch.end, [&](int64_t j, key_t key, uint32_t ok) {
      const key_t hi = key >> low;
      const uint8_t v = hi > prefix ? 1 : (hi == prefix ? kPending : 0);
      out[j] = static_cast<uint8_t>(v * ok);
      if (v == kPending && ok) ++hist[D::digit(key, last)];
    });
  });
  h.reduce();
  const int b = h.select(rank, count);
  Selection s;
  s.key = (static_cast<uint64_t>(prefix) << low) | static_cast<uint64_t>(b);
  s.n_ties = rank;
  s.n_equal = count;
  return s;
}

// Calls f(j) for every pending mask byte in memory offsets [begin, end).
template <typename F>
void for_each_pending(const Entry& e, int64_t begin, int64_t end, const F& f) {
  const uint8_t* out = reinterpret_cast<const uint8_t*>(e.out);
  const uint8_t* q = out + begin;
  const uint8_t* stop = out + end;
  while (q < stop) {
    const void* hit = std::memchr(q, kPending, static_cast<size_t>(stop - q));
    if (!hit) break;
    const uint8_t* h = static_cast<const uint8_t*>(hit);
    f(static_cast<int64_t>(h - out));
    q = h + 1;
  }
}

template <typename key_t>
void resolve_pending(const Prepared& p, const Selection& s) {
  const key_t t = static_cast<key_t>(s.key);
  if (s.n_ties == s.n_equal) {  // every tie is pruned: order does not matter
    for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
      uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
      for_each_pending(e, ch.begin, ch.end, [&](int64_t j) { out[j] = key_at<key_t>(e, j) > t; });
    });
    return;
  }
  // Ties straddle the k-th entry: count them per chunk in logical order, scan,
  // then prune the first n_ties. Chunks of row-major tensors find their pending
  // bytes by memchr; others walk their logical range.
  auto walk = [&](const Chunk& ch, const Entry& e, const auto& f) {
    if (e.row_major) {
      for_each_pending(e, ch.begin, ch.end, f);
    } else {
      const uint8_t* out = reinterpret_cast<const uint8_t*>(e.out);
      for (int64_t l = ch.begin; l < ch.end; ++l) {
        const int64_t j = offset_of(e, l);
        if (out[j] == kPending) f(j);
      }
    }
  };
  const int64_t nchunks = static_cast<int64_t>(p.chunks.size());
  std::vector<int64_t> ties(nchunks + 1, 0);
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    int64_t n = 0;
    walk(ch, e, [&](int64_t j) { n += key_at<key_t>(e, j) == t; });
    ties[c + 1] = n;
  });
  for (int64_t c = 0; c < nchunks; ++c) ties[c + 1] += ties[c];
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    int64_t seen = ties[c];
    walk(ch, e, [&](int64_t j) {
      const key_t key = key_at<key_t>(e, j);
      if (key == t) {
        out[j] = seen++ >= s.n_ties;
      } else {
        out[j] = key > t;
      }
    });
  });
}

template <typename key_t>
void write_masks(const Prepared& p, int64_t k) {
  if (k == 0) {
    p.copy_eligible_to_out();
    return;
  }
  const Selection s = classify_and_select<key_t>(p, k);
  resolve_pending<key_t>(p, s);
}

std::tuple<at::Tensor, at::Tensor> global_threshold_cpu(at::TensorList scores, at::TensorList masks,
                                                        int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/false, "global_threshold");
  Selection s;
  if (k > 0) s = p.wide ? select_threshold<uint64_t>(p, k) : select_threshold<uint32_t>(p, k);
  const double value = k == 0 ? 0.0 : key_to_double(s.key, p.wide);
  return {at::scalar_tensor(value, at::dtype(at::kDouble)),
          at::scalar_tensor(s.n_ties, at::dtype(at::kLong))};
}

std::vector<at::Tensor> global_magnitude_masks_cpu(at::TensorList scores, at::TensorList masks,
                                                   int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/true, "global_magnitude_masks");
  if (p.wide) {
    write_masks<uint64_t>(p, k);
  } else {
    write_masks<uint32_t>(p, k);
  }
  return p.finish();
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("global_threshold", &lthfast::threshold::global_threshold_cpu);
  m.impl("global_magnitude_masks", &lthfast::threshold::global_magnitude_masks_cpu);
}
