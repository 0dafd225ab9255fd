// The radix select of the global magnitude threshold (private to threshold_cuda.cu):
// the select state, the chunked histogram kernel, the one-block select kernel
// and the digit widths.
//
// Digits and passes. Histograms are privatised per block in shared memory, so a
// digit has at most 13 bits (8192 bins x 4 B = 32 KB of shared memory per block).
// Only the low 31 / 63 key bits are ever set:
//   32-bit keys (fp16/bf16/fp32): 3 passes, bits 30..18 | 17..9 | 8..0 (13/9/9)
//   64-bit keys (any fp64):       6 passes, 11/11/11/10/10/10 bits
// A pass builds the histogram of the current digit of the eligible entries whose
// higher bits equal the prefix selected so far (plain shared-memory atomics),
// merged into a global 64-bit histogram (aggregating a warp's atomics per bucket
// with __match_any_sync made the passes 1.6-2.4x slower on an H200: the
// conflicts cost less; stop 15, tools/gpu_kernel_times.py); then a single-block
// kernel scans that histogram, picks the bucket of the k-th entry, updates
// (prefix, rank) in device memory, and zeroes the histogram for the next pass.
// After the last pass the prefix is the threshold key t, rank = n_ties (entries
// equal to t that are pruned) and the last bucket's count = n_equal (eligible
// entries equal to t).
//
// The candidate path (32-bit keys; split_kernels.cuh). The first pass reads
// every entry; when its selected bucket holds at most `cap` entries, the first
// select sets `split`: one more pass over every entry writes the keep-mask of
// each entry outside that bucket and copies the bucket's entries (the
// candidates: key and position) to a buffer, and the last two passes and the
// masks of the candidates work on that buffer alone. Otherwise (`split` 0) every
// pass reads every entry and the mask kernels of mask_kernels.cuh write the
// masks. Each kernel reads `split` and `mode` in device memory and returns at
// once when the work is not its own, so the host never syncs.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/cuda/threshold_device.cuh"
#include "ops/threshold/threshold_common.h"

namespace lthfast {
namespace threshold {
namespace {

using Group = cuda::TensorGroup<3>;  // ptr: score, mask (or null), out (or null)
                                     // dtype: score's, mask's (bool or the score's)

constexpr int kMaxDigitBits = 13;
constexpr int kMinDigitBits = 9;
constexpr int kMaxBins = 1 << kMaxDigitBits;
constexpr int kSelectThreads = 512;
constexpr int kBinsPerSelectThread = kMaxBins / kSelectThreads;
static_assert((1 << kMinDigitBits) % kSelectThreads == 0, "select: bins split evenly over threads");

// Digit widths, most significant first (sum: 31 / 63, the key bits ever set).
constexpr int kPasses32 = 3;
constexpr int kDigits32[kPasses32] = {13, 9, 9};
constexpr int kPasses64 = 6;
constexpr int kDigits64[kPasses64] = {11, 11, 11, 10, 10, 10};
static_assert(kDigits32[0] + kDigits32[1] + kDigits32[2] == 31, "32-bit digits");
static_assert(kDigits64[0] + kDigits64[1] + kDigits64[2] + kDigits64[3] + kDigits64[4] + kDigits64[5] == 63,
              "64-bit digits");
// The largest tie count the candidate path ranks in one block (shared memory:
// 8 B per tie); more ties fall back to the full ordered mask pass.
constexpr int kRankMax = 2048;

// What the kernels after the select do (threshold_cuda.cu explains the modes).
enum Mode : int { kSelecting = 0, kPruneLE = 1, kOrdered = 2, kPruneAll = 3 };

struct SelectState {
  unsigned long long prefix;  // key bits selected so far, in place; the key t at the end
  long long remaining;        // 1-based rank of the k-th entry among those with the prefix
  long long n_equal;          // eligible entries equal to t
  long long n_ties;           // of those, how many are pruned
  long long n_cand;           // split: entries in the first pass's bucket (the candidates)
  unsigned long long n_cand_written;  // split: candidates copied so far (atomic counter)
  unsigned long long n_tie_written;   // split: tie positions copied so far (atomic counter)
  int mode;
  int split;                  // 1: the candidate path (set by the first select)
  int rank_max;               // split: rank at most this many ties in one block (<= kRankMax)
  int reserved;
};

// The mask pass over every entry in logical order (tie_count_kernel, tie_scan_kernel,
// mask_ordered_kernel) runs when ties straddle the k-th entry and the candidate
// path cannot rank them.
__device__ __forceinline__ bool full_ordered(const SelectState* s) {
  return s->mode == kOrdered && (s->split == 0 || s->n_equal > s->rank_max);
}

struct Plan {
  const Group* groups;
  const cuda::ChunkRef* chunks;
  int64_t n_chunks;
  int64_t chunk_size;
};

// The magnitude a selected key stands for (the op's threshold output).
template <typename KeyT>
__device__ __forceinline__ double key_value(unsigned long long key) {
  const unsigned long long bits =
      sizeof(KeyT) == 8 ? key : static_cast<unsigned long long>(widen_key32(static_cast<uint32_t>(key)));
  return __longlong_as_double(static_cast<long long>(bits));
}

// The input mask of a group (ptr[1], null when none).
__device__ __forceinline__ MaskRef mask_of(const Group& g) {
  return MaskRef{g.ptr[1], g.dtype[1] == static_cast<int8_t>(at::ScalarType::Bool)};
}

// Histogram of key bits [shift, shift + bits) of the eligible entries whose key
// bits above shift + bits equal the selected prefix. Chunks are memory ranges.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    histogram_kernel(Plan plan, const SelectState* state, unsigned long long* hist, int shift, int bits) {
  __shared__ unsigned int sh[kMaxBins];
  // uniform: k > eligible was found earlier, or the candidates are histogrammed instead
  if (state->mode != kSelecting || state->split != 0) return;
  const int hi = shift + bits;             // <= 31 (32-bit keys) / 63: no full-width shift
  const KeyT high = static_cast<KeyT>(state->prefix) >> hi;
  const unsigned nbins = 1u << bits;
  for (unsigned b = threadIdx.x; b < nbins; b += kThreads) sh[b] = 0;
  __syncthreads();
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    dispatch_dtype<KeyT>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      for (int64_t base = ch.start; base < end; base += kTile) {
        KeyT key[kUnroll];
        bool ok[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t i = base + u * kThreads + threadIdx.x;
          ok[u] = i < end && eligible<DT>(mask, i);
          key[u] = ok[u] ? load_key<KeyT, DT>(x, i) : KeyT(0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (ok[u] && (key[u] >> hi) == high) {
            atomicAdd(&sh[static_cast<unsigned>(key[u] >> shift) & (nbins - 1u)], 1u);
          }
        }
      }
    });
  }
  __syncthreads();
  // A block walks at most 2^31 elements (chunk_grid), so 32-bit counts hold.
  for (unsigned b = threadIdx.x; b < nbins; b += kThreads) {
    const unsigned v = sh[b];
    if (v != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(v));
  }
}

// One block: finds the bucket that holds the `remaining`-th entry, appends it to
// the prefix, and zeroes the histogram for the next pass. The last pass also
// decides the mask mode and writes the op's outputs (when given). The first pass
// (split_cap > 0) takes the candidate path when the bucket holds at most
// split_cap entries.
template <typename KeyT>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(SelectState* state, unsigned long long* hist, int shift, int bits, bool last,
                  long long split_cap, double* out_value, int64_t* out_ties) {
  using Scan = cub::BlockScan<unsigned long long, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  if (state->mode != kSelecting) return;  // uniform
  const unsigned long long prefix = state->prefix;
  const unsigned long long rank = static_cast<unsigned long long>(state->remaining);  // >= 1
  const int per = (1 << bits) / kSelectThreads;
  const int first_bin = static_cast<int>(threadIdx.x) * per;
  unsigned long long count[kBinsPerSelectThread];
  unsigned long long sum = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerSelectThread; ++j) {
    count[j] = 0;
    if (j < per) {
      count[j] = hist[first_bin + j];
      hist[first_bin + j] = 0;
      sum += count[j];
    }
  }
  unsigned long long before = 0, total = 0;
  Scan(scan_tmp).ExclusiveSum(sum, before, total);
  __syncthreads();  // every thread has read `state` before one writes it
  if (total < rank) {
    // Fewer candidates than the rank: only in the first pass, when k exceeds
    // the number of eligible entries (masks given; the host could not check).
    if (threadIdx.x == 0) {
      state->mode = kPruneAll;
      if (out_value != nullptr) {
        *out_value = __longlong_as_double(0x7FF8000000000000LL);
        *out_ties = -1;
      }
    }
    return;
  }
  // Exactly one thread has before < rank <= before + sum.
  if (before < rank && rank <= before + sum) {
    int sel = 0;
    unsigned long long sel_count = 0;
    bool found = false;
#pragma unroll
    for (int j = 0; j < kBinsPerSelectThread; ++j) {
      if (!found && j < per) {
        if (before + count[j] >= rank) {
          found = true;
          sel = j;
          sel_count = count[j];
        } else {
          before += count[j];
        }
      }
    }
    const unsigned long long key = prefix | (static_cast<unsigned long long>(first_bin + sel) << shift);
    const long long r = static_cast<long long>(rank - before);  // in [1, sel_count]
    state->prefix = key;
    state->remaining = r;
    if (!last && split_cap > 0 && sel_count <= static_cast<unsigned long long>(split_cap)) {
      state->split = 1;
      state->n_cand = static_cast<long long>(sel_count);
    }
    if (last) {
      state->n_equal = static_cast<long long>(sel_count);
      state->n_ties = r;
      state->mode = static_cast<unsigned long long>(r) == sel_count ? kPruneLE : kOrdered;
      if (out_value != nullptr) {
        *out_value = key_value<KeyT>(key);
        *out_ties = r;
      }
    }
  }
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast
