// CPU selection helpers shared by the radix and the sampled-range paths:
// per-thread histograms, the chunk loop, and the resolution of the mask bytes
// still undecided (a `code` byte) once the threshold key t is known.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/common/parallel_items.h"
#include "ops/threshold/cpu/keys_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {

constexpr uint8_t kPending = 2;  // mask byte still undecided after a fused pass

// Storage of a Histogram, kept per calling thread between calls: a fresh 0.5 MB
// vector per pass meant page faults and zeroing that cost ~1 ms a call, most of
// the time on small inputs. Nested Histograms take further pool entries; storage
// beyond kKeepBytes (many threads) is freed after use.
struct HistogramStorage {
  std::vector<int64_t> per_thread, total;
  bool busy = false;
};

inline HistogramStorage& acquire_histogram_storage() {
  static thread_local std::vector<std::unique_ptr<HistogramStorage>> pool;
  for (auto& s : pool) {
    if (!s->busy) {
      s->busy = true;
      return *s;
    }
  }
  pool.push_back(std::make_unique<HistogramStorage>());
  pool.back()->busy = true;
  return *pool.back();
}

// Per-thread histograms, summed into one. Counts are int64: a thread may see
// more than 2^32 entries.
struct Histogram {
  static constexpr size_t kKeepBytes = size_t(8) << 20;
  int nthreads;
  HistogramStorage& storage;
  std::vector<int64_t>& per_thread;
  std::vector<int64_t>& total;
  Histogram() : nthreads(std::max(1, at::get_num_threads())), storage(acquire_histogram_storage()),
                per_thread(storage.per_thread), total(storage.total) {
    per_thread.assign(static_cast<size_t>(nthreads) * kBins, 0);
    total.assign(kBins, 0);
  }
  ~Histogram() {
    if ((per_thread.capacity() + total.capacity()) * sizeof(int64_t) > kKeepBytes) {
      std::vector<int64_t>().swap(per_thread);
      std::vector<int64_t>().swap(total);
    }
    storage.busy = false;
  }
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;
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
  parallel_items(static_cast<int64_t>(p.chunks.size()),
                 [&](int64_t c) { f(c, p.chunks[c], p.entries[p.chunks[c].entry]); });
}

// Calls f(j, key) for every mask byte equal to `code` in memory offsets
// [begin, end), found by memchr (one dtype dispatch per call, not per entry).
template <typename key_t, typename F>
void for_each_code(const Entry& e, int64_t begin, int64_t end, uint8_t code, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_pending", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(e.data);
    const uint8_t* out = reinterpret_cast<const uint8_t*>(e.out);
    const uint8_t* q = out + begin;
    const uint8_t* stop = out + end;
    while (q < stop) {
      const void* hit = std::memchr(q, code, static_cast<size_t>(stop - q));
      if (!hit) break;
      const int64_t j = static_cast<const uint8_t*>(hit) - out;
      f(j, key_of<key_t>(x[j]));
      q = out + j + 1;
    }
  });
}

// Every byte equal to `code` becomes 1 (kept) or 0: key > t kept, key < t pruned,
// key == t pruned while ties last (the first n_ties in tensor, row-major order).
template <typename key_t>
void resolve_code(const Prepared& p, const Selection& s, uint8_t code) {
  const key_t t = static_cast<key_t>(s.key);
  if (s.n_ties == s.n_equal) {  // every tie is pruned: order does not matter
    for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
      uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
      for_each_code<key_t>(e, ch.begin, ch.end, code, [&](int64_t j, key_t key) { out[j] = key > t; });
    });
    return;
  }
  // Ties straddle the k-th entry: count them per chunk in logical order, scan,
  // then prune the first n_ties. Chunks of row-major tensors find their bytes by
  // memchr; others walk their logical range.
  auto walk = [&](const Chunk& ch, const Entry& e, const auto& f) {
    if (e.row_major) {
      for_each_code<key_t>(e, ch.begin, ch.end, code, f);
    } else {
      const uint8_t* out = reinterpret_cast<const uint8_t*>(e.out);
      for (int64_t l = ch.begin; l < ch.end; ++l) {
        const int64_t j = offset_of(e, l);
        if (out[j] == code) f(j, key_at<key_t>(e, j));
      }
    }
  };
  const int64_t nchunks = static_cast<int64_t>(p.chunks.size());
  std::vector<int64_t> ties(nchunks + 1, 0);
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    int64_t n = 0;
    walk(ch, e, [&](int64_t, key_t key) { n += key == t; });
    ties[c + 1] = n;
  });
  for (int64_t c = 0; c < nchunks; ++c) ties[c + 1] += ties[c];
  for_chunks(p, [&](int64_t c, const Chunk& ch, const Entry& e) {
    uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
    int64_t seen = ties[c];
    walk(ch, e, [&](int64_t j, key_t key) {
      if (key == t) {
        out[j] = seen++ >= s.n_ties;
      } else {
        out[j] = key > t;
      }
    });
  });
}

}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
