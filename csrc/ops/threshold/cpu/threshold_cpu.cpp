// CPU kernels of the global magnitude threshold: a multi-threaded radix select
// over the order-preserving keys of |x| (see threshold_common.h).
//
// Passes over the data (32-bit keys; 64-bit keys add two histogram passes):
//   1. histogram of key bits 31..16 of every eligible entry -> bucket of the k-th;
//   2. histogram of bits 15..0 of the entries in that bucket -> exact key t and
//      n_ties, the number of entries equal to t that are pruned;
//   3. the keep-masks: key > t (and eligible). Only when ties straddle the k-th
//      entry (n_ties < count of t) does a tie-count pass in logical order run
//      first, so the first n_ties ties in (tensor, row-major index) are pruned.
// Extra memory: per-thread histograms (kBins counters) and per-chunk counts —
// never a copy of the weights (a non-dense view is the one exception: it is made
// contiguous, since strided gathers would be slower than the copy).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

template <typename key_t>
inline key_t make_key(float x);
template <>
inline uint32_t make_key<uint32_t>(float x) { return key32(x); }
template <>
inline uint64_t make_key<uint64_t>(float x) { return key64(x); }
template <typename key_t>
inline key_t make_key_d(double x) { return static_cast<key_t>(key64(x)); }

// Calls f(offset, key) for every eligible entry of e at memory offsets [begin, end).
template <typename key_t, typename F>
void for_each_key(const Entry& e, int64_t begin, int64_t end, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_threshold_cpu", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    const bool* m = e.mask;
    for (int64_t j = begin; j < end; ++j) {
      if (m && !m[j]) continue;
      key_t key;
      if constexpr (std::is_same_v<scalar_t, double>) {
        key = make_key_d<key_t>(x[j]);
      } else {
        key = make_key<key_t>(static_cast<float>(x[j]));
      }
      f(j, key);
    }
  });
}

// Same, visiting logical (row-major) indices [begin, end) in order; f gets the
// memory offset of each.
template <typename key_t, typename F>
void for_each_key_logical(const Entry& e, int64_t begin, int64_t end, const F& f) {
  if (e.row_major) {
    for_each_key<key_t>(e, begin, end, f);
    return;
  }
  const int64_t nd = static_cast<int64_t>(e.sizes.size());
  std::vector<int64_t> idx(nd);
  int64_t rem = begin;
  for (int64_t d = nd - 1; d >= 0; --d) {
    idx[d] = rem % e.sizes[d];
    rem /= e.sizes[d];
  }
  for (int64_t l = begin; l < end; ++l) {
    int64_t off = 0;
    for (int64_t d = 0; d < nd; ++d) off += idx[d] * e.strides[d];
    for_each_key<key_t>(e, off, off + 1, f);
    for (int64_t d = nd - 1; d >= 0; --d) {  // advance the row-major counter
      if (++idx[d] < e.sizes[d]) break;
      idx[d] = 0;
    }
  }
}

struct Selection {
  uint64_t key = 0;     // threshold key t
  int64_t n_ties = 0;   // entries equal to t that are pruned
  int64_t n_equal = 0;  // eligible entries equal to t
};

template <typename key_t>
Selection radix_select(const Prepared& p, int64_t k) {
  constexpr int kKeyBits = sizeof(key_t) * 8;
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<int64_t> hist(static_cast<size_t>(nthreads) * kBins);
  std::vector<int64_t> total(kBins);
  key_t prefix = 0;
  int64_t rank = k;  // 1-based rank of the k-th smallest within the current bucket
  int64_t bucket_count = 0;
  for (int shift = kKeyBits - kDigitBits; shift >= 0; shift -= kDigitBits) {
    const bool first = shift == kKeyBits - kDigitBits;
    const int prefix_shift = shift + kDigitBits;
    std::fill(hist.begin(), hist.end(), 0);
    at::parallel_for(0, static_cast<int64_t>(p.chunks.size()), 1, [&](int64_t cb, int64_t ce) {
      int64_t* h = hist.data() + static_cast<size_t>(at::get_thread_num()) * kBins;
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = p.chunks[c];
        for_each_key<key_t>(p.entries[ch.entry], ch.begin, ch.end, [&](int64_t, key_t key) {
          if (first || static_cast<key_t>(key >> prefix_shift) == prefix) {
            ++h[(key >> shift) & (kBins - 1)];
          }
        });
      }
    });
    std::fill(total.begin(), total.end(), 0);
    for (int t = 0; t < nthreads; ++t) {
      const int64_t* h = hist.data() + static_cast<size_t>(t) * kBins;
      for (int b = 0; b < kBins; ++b) total[b] += h[b];
    }
    if (first) {
      int64_t eligible = 0;
      for (int b = 0; b < kBins; ++b) eligible += total[b];
      TORCH_CHECK(k <= eligible, "global_threshold: k=", k,
                  " is larger than the number of unpruned entries (", eligible, ")");
    }
    int64_t before = 0;
    int b = 0;
    for (; b < kBins; ++b) {
      if (before + total[b] >= rank) break;
      before += total[b];
    }
    TORCH_INTERNAL_ASSERT(b < kBins, "radix select lost the k-th entry");
    rank -= before;
    bucket_count = total[b];
    prefix = static_cast<key_t>((static_cast<uint64_t>(prefix) << kDigitBits) | static_cast<uint64_t>(b));
  }
  return Selection{static_cast<uint64_t>(prefix), rank, bucket_count};
}

template <typename key_t>
void write_masks(const Prepared& p, const Selection& s) {
  const key_t t = static_cast<key_t>(s.key);
  const int64_t nchunks = static_cast<int64_t>(p.chunks.size());
  if (s.n_ties == s.n_equal) {  // no straddling tie: prune key <= t, any order
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = p.chunks[c];
        const Entry& e = p.entries[ch.entry];
        std::fill(e.out + ch.begin, e.out + ch.end, false);
        for_each_key<key_t>(e, ch.begin, ch.end, [&](int64_t j, key_t key) { e.out[j] = key > t; });
      }
    });
    return;
  }
  // Ties straddle the k-th entry: count ties per chunk in logical order, scan,
  // then prune the first n_ties of them.
  std::vector<int64_t> ties(nchunks + 1, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = p.chunks[c];
      int64_t n = 0;
      for_each_key_logical<key_t>(p.entries[ch.entry], ch.begin, ch.end,
                                  [&](int64_t, key_t key) { n += key == t; });
      ties[c + 1] = n;
    }
  });
  for (int64_t c = 0; c < nchunks; ++c) ties[c + 1] += ties[c];
  // A chunk's logical range is scattered in memory for permuted layouts, so clear
  // all outputs first and then set only the kept entries.
  for (const at::Tensor& o : p.outs) o.zero_();
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = p.chunks[c];
      const Entry& e = p.entries[ch.entry];
      int64_t seen = ties[c];
      for_each_key_logical<key_t>(e, ch.begin, ch.end, [&](int64_t j, key_t key) {
        if (key > t) {
          e.out[j] = true;
        } else if (key == t) {
          e.out[j] = seen >= s.n_ties;
          ++seen;
        }  // key < t: pruned, stays false
      });
    }
  });
}

template <typename key_t>
Selection select_and_maybe_write(const Prepared& p, int64_t k, bool write) {
  Selection s;
  if (k > 0) s = radix_select<key_t>(p, k);
  if (write) {
    if (k == 0) {
      p.copy_eligible_to_out();
    } else {
      write_masks<key_t>(p, s);
    }
  }
  return s;
}

Selection run(const Prepared& p, int64_t k, bool write) {
  return p.wide ? select_and_maybe_write<uint64_t>(p, k, write)
                : select_and_maybe_write<uint32_t>(p, k, write);
}

std::tuple<at::Tensor, at::Tensor> global_threshold_cpu(at::TensorList scores, at::TensorList masks,
                                                        int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/false, "global_threshold");
  Selection s = run(p, k, false);
  const double value = k == 0 ? 0.0 : key_to_double(s.key, p.wide);
  return {at::scalar_tensor(value, at::dtype(at::kDouble)),
          at::scalar_tensor(k == 0 ? 0 : s.n_ties, at::dtype(at::kLong))};
}

std::vector<at::Tensor> global_magnitude_masks_cpu(at::TensorList scores, at::TensorList masks,
                                                   int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/true, "global_magnitude_masks");
  run(p, k, true);
  return p.finish();
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("global_threshold", &lthfast::threshold::global_threshold_cpu);
  m.impl("global_magnitude_masks", &lthfast::threshold::global_magnitude_masks_cpu);
}
