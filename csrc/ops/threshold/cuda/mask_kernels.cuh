// The keep-mask kernels of global_magnitude_masks when the candidate path
// (split_kernels.cuh) did not write the masks (private to threshold_cuda.cu),
// run after the radix select. They read the mode the select left in device
// memory and return early when it is not theirs (threshold_cuda.cu explains
// the modes): tie_count_kernel, tie_scan_kernel and mask_ordered_kernel only run
// when full_ordered(), mask_plain_kernel for the other modes without the
// candidate path; between them every element of every output is written exactly
// once.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <limits>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/cuda/radix_kernels.cuh"
#include "ops/threshold/cuda/threshold_device.cuh"

namespace lthfast {
namespace threshold {
namespace {

// full_ordered() only: number of eligible entries equal to t in each chunk of
// logical indices.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    tie_count_kernel(Plan plan, const SelectState* state, int64_t* tie_counts) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_tmp;
  if (!full_ordered(state)) return;  // uniform
  const KeyT t = static_cast<KeyT>(state->prefix);
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    const cuda::DenseLayout layout = g.layout;
    int n = 0;
    dispatch_dtype<KeyT>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      for (int64_t l = ch.start + threadIdx.x; l < end; l += kThreads) {
        const int64_t o = cuda::logical_to_offset(layout, l);
        if (eligible<DT>(mask, o) && load_key<KeyT, DT>(x, o) == t) ++n;
      }
    });
    const int total = Reduce(reduce_tmp).Sum(n);  // valid in thread 0
    if (threadIdx.x == 0) tie_counts[c] = total;
    __syncthreads();  // reduce_tmp is reused by the next chunk
  }
}

// full_ordered() only, one block: exclusive scan of the per-chunk tie counts.
__global__ void __launch_bounds__(kScanThreads)
    tie_scan_kernel(const SelectState* state, const int64_t* tie_counts, int64_t* tie_offsets, int64_t n) {
  __shared__ CountScan::TempStorage scan_tmp;
  if (!full_ordered(state)) return;  // uniform
  block_exclusive_scan(tie_counts, tie_offsets, n, scan_tmp);
}

// Writes the keep-masks when the mode is kPruneLE or kPruneAll (no tie ranking)
// and the candidate path is off, in memory order; returns at once otherwise.
// Kept apart from the ordered kernel below so that it needs few registers: the
// whole GPU's threads fit at once. Loads before stores (`out` might alias the
// scores for all the compiler knows); no faster on an H200 (231 us on keypointrcnn
// round 2, stop 17, vs 233 us without it in stop 15's run): the one-byte stores
// bound this pass at ~1.3 TB/s.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    mask_plain_kernel(Plan plan, const SelectState* state) {
  const int mode = state->mode;
  if (mode == kOrdered || state->split != 0) return;  // uniform
  const bool keep_any = mode == kPruneLE;
  const KeyT t = static_cast<KeyT>(state->prefix);
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    bool* out = static_cast<bool*>(g.ptr[2]);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    dispatch_dtype<KeyT>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      for (int64_t base = ch.start; base < end; base += kTile) {
        bool keep[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t i = base + u * kThreads + threadIdx.x;
          keep[u] = keep_any && i < end && eligible<DT>(mask, i) && load_key<KeyT, DT>(x, i) > t;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t i = base + u * kThreads + threadIdx.x;
          if (i < end) out[i] = keep[u];
        }
      }
    });
  }
}

// Writes the keep-masks when full_ordered() (ties straddle the k-th entry and the
// candidate path cannot rank them); returns at once otherwise. Every element of
// every output is written exactly once (over what the candidate path wrote).
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    mask_ordered_kernel(Plan plan, const SelectState* state, const int64_t* tie_counts,
                        const int64_t* tie_offsets) {
  __shared__ TileScan::TempStorage scan_tmp;
  if (!full_ordered(state)) return;  // uniform
  const KeyT t = static_cast<KeyT>(state->prefix);
  const long long n_ties = state->n_ties;
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    bool* out = static_cast<bool*>(g.ptr[2]);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    dispatch_dtype<KeyT>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      // The chunk is a range of logical indices.
      const cuda::DenseLayout layout = g.layout;
      const long long first_tie = tie_offsets[c];  // global rank of the chunk's first tie
      const long long n_chunk_ties = tie_counts[c];
      if (first_tie >= n_ties || first_tie + n_chunk_ties <= n_ties) {
        const bool keep_ties = first_tie >= n_ties;  // all of this chunk's ties are kept / pruned
        for (int64_t l = ch.start + threadIdx.x; l < end; l += kThreads) {
          const int64_t o = cuda::logical_to_offset(layout, l);
          bool keep = false;
          if (eligible<DT>(mask, o)) {
            const KeyT key = load_key<KeyT, DT>(x, o);
            keep = key > t || (keep_ties && key == t);
          }
          out[o] = keep;
        }
        return;
      }
      // The one chunk where the boundary falls (a block-uniform branch): rank its
      // ties in logical order and keep those of rank >= n_ties.
      walk_ranked_ties<KeyT, DT>(layout, x, mask, t, ch.start, end, first_tie,
                                 std::numeric_limits<int64_t>::max(), scan_tmp,
                                 [&](int64_t o, bool ok, KeyT key, int64_t rank) {
                                   out[o] = ok && (key > t || (rank >= 0 && rank >= n_ties));
                                 });
    });
  }
}

// The four mask kernels; at most two of them find work (see above).
template <typename KeyT>
void launch_masks(const Plan& plan, SelectState* state, int64_t* tie_counts, int64_t* tie_offsets, int grid,
                  cudaStream_t stream) {
  tie_count_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state, tie_counts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  tie_scan_kernel<<<1, kScanThreads, 0, stream>>>(state, tie_counts, tie_offsets, plan.n_chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mask_plain_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mask_ordered_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state, tie_counts, tie_offsets);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast
