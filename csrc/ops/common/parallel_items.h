// parallel_items: the CPU kernels' work loop over many equal items (chunks).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace lthfast {

// Runs f(i) for every i in [0, n) on torch's threads, handing the items out one
// at a time from an atomic counter instead of in equal static shares: on a
// machine shared with other jobs, a thread that gets less CPU takes fewer items
// rather than holding the others at the barrier. f may keep per-thread state
// by at::get_thread_num(); items run in no particular order.
template <typename F>
void parallel_items(int64_t n, const F& f) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(std::max(1, at::get_num_threads()), n);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      f(i);
    }
  });
}

}  // namespace lthfast
