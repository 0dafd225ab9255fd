// The candidate path of the global magnitude threshold, 32-bit keys (private to
// threshold_cuda.cu; radix_kernels.cuh says when it runs). After the first
// select has picked the bucket P of the top 13 key bits:
//   split_kernel           every entry once, in memory order: keep-mask of the
//                          entries outside P (digit > P kept, < P pruned,
//                          ineligible pruned), and P's entries appended to the
//                          candidate buffer (key, position), staged per block;
//   cand_histogram_kernel  the last two radix passes, over the candidates only;
//   resolve_kernel         the candidates' masks: key > t kept, key < t pruned;
//                          ties pruned when all of them are (kPruneLE), else
//                          their positions copied for the next kernel;
//   tie_rank_kernel        one block: ranks at most rank_max ties by (tensor,
//                          row-major index) and prunes the first n_ties.
// With more ties than rank_max, full_ordered() holds and the logical-order mask
// kernels of mask_kernels.cuh rewrite every mask instead.
// A candidate's position is (chunk << 16) | offset in the chunk: 32 bits, as the
// host takes this path only with at most 2^16 chunks of 2^16 entries.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/cuda/radix_kernels.cuh"
#include "ops/threshold/cuda/threshold_device.cuh"

namespace lthfast {
namespace threshold {
namespace {

constexpr int kChunkBits = 16;  // chunk_size == 1 << kChunkBits on this path
constexpr int kSplitShift = 31 - kDigits32[0];  // the first pass's digit is key >> kSplitShift

struct CandidateBuffers {
  uint32_t* keys;  // [cap]
  uint32_t* pos;   // [cap]: (chunk << kChunkBits) | offset in the chunk
  uint32_t* ties;  // [kRankMax]: positions of the ties (ranked path)
};

// Memory offset in its tensor, and the tensor's group, of a candidate position.
struct Where {
  int64_t group;
  int64_t offset;
};

__device__ __forceinline__ Where locate(const Plan& plan, uint32_t pos) {
  const cuda::ChunkRef ch = plan.chunks[pos >> kChunkBits];
  return Where{ch.group, ch.start + static_cast<int64_t>(pos & ((1u << kChunkBits) - 1u))};
}

// The candidates of a block are staged in shared memory (ranked within each tile
// by a block scan of the warps' ballot counts) and copied out when the stage is
// nearly full and at the end, each copy reserving its slots with one atomicAdd.
// (One atomic per warp and tile on the single global counter, the first
// version, serialised ~1M same-address atomics on 127M weights and ran the pass
// at ~1 TB/s on an H200.)
constexpr int kWarps = kThreads / 32;
constexpr int kStage = 2 * kTile;  // entries; a tile adds at most kTile

struct Stage {
  uint32_t keys[kStage];
  uint32_t pos[kStage];
  unsigned warp_count[kWarps];
  unsigned warp_offset[kWarps];
  unsigned tile_total;
  unsigned long long base;
};

// Copies the n staged candidates to the buffer (block-uniform call).
__device__ __forceinline__ void flush_stage(Stage& st, unsigned n, SelectState* state, const CandidateBuffers& buf,
                                            unsigned long long cap) {
  __syncthreads();  // the staged entries of every thread are written
  if (threadIdx.x == 0) st.base = atomicAdd(&state->n_cand_written, static_cast<unsigned long long>(n));
  __syncthreads();
  const unsigned long long base = st.base;
  for (unsigned j = threadIdx.x; j < n; j += kThreads) {
    if (base + j < cap) {  // always: the select counted exactly these entries
      buf.keys[base + j] = st.keys[j];
      buf.pos[base + j] = st.pos[j];
    }
  }
  // The next writes to the stage (or to st.base) come after two more barriers.
}

template <bool kWriteMasks>
__global__ void __launch_bounds__(kThreads) split_kernel(Plan plan, SelectState* state, CandidateBuffers buf) {
  __shared__ Stage st;
  if (state->mode != kSelecting || state->split == 0) return;  // uniform
  const uint32_t bucket = static_cast<uint32_t>(state->prefix) >> kSplitShift;
  const unsigned long long cap = static_cast<unsigned long long>(state->n_cand);
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  unsigned staged = 0;  // entries in the stage: the same value in every thread
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    bool* out = static_cast<bool*>(g.ptr[2]);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    const uint32_t chunk_pos = static_cast<uint32_t>(c) << kChunkBits;
    dispatch_dtype<uint32_t>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      for (int64_t base = ch.start; base < end; base += kTile) {  // block-uniform
        uint32_t key[kUnroll];
        bool ok[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {  // loads first, then stores
          const int64_t i = base + u * kThreads + threadIdx.x;
          ok[u] = i < end && eligible<DT>(mask, i);
          key[u] = ok[u] ? load_key<uint32_t, DT>(x, i) : 0u;
        }
        unsigned ballot[kUnroll];
        unsigned warp_total = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t i = base + u * kThreads + threadIdx.x;
          const uint32_t digit = key[u] >> kSplitShift;
          if (kWriteMasks && i < end) out[i] = ok[u] && digit > bucket;
          ballot[u] = __ballot_sync(0xFFFFFFFFu, ok[u] && digit == bucket);  // every lane gets here
          warp_total += __popc(ballot[u]);
        }
        // Rank the tile's candidates: warp counts, scanned by warp 0.
        if (lane == 0) st.warp_count[warp] = warp_total;
        __syncthreads();
        if (warp == 0) {
          const unsigned v = lane < kWarps ? st.warp_count[lane] : 0u;
          unsigned incl = v;
#pragma unroll
          for (int d = 1; d < 32; d <<= 1) {
            const unsigned t = __shfl_up_sync(0xFFFFFFFFu, incl, d);
            if (lane >= static_cast<unsigned>(d)) incl += t;
          }
          if (lane < kWarps) st.warp_offset[lane] = incl - v;
          if (lane == 31) st.tile_total = incl;
        }
        __syncthreads();
        unsigned slot = staged + st.warp_offset[warp];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if ((ballot[u] >> lane) & 1u) {
            const unsigned k = slot + __popc(ballot[u] & lanes_below);
            const int64_t i = base + u * kThreads + threadIdx.x;
            st.keys[k] = key[u];
            st.pos[k] = chunk_pos | static_cast<uint32_t>(i - ch.start);
          }
          slot += __popc(ballot[u]);
        }
        staged += st.tile_total;  // uniform
        if (staged > static_cast<unsigned>(kStage - kTile)) {
          flush_stage(st, staged, state, buf, cap);
          staged = 0;
        }
      }
    });
  }
  if (staged > 0) flush_stage(st, staged, state, buf, cap);  // uniform
}

// Histogram of key bits [shift, shift + bits) of the candidates whose higher key
// bits equal the prefix (the candidates are eligible by construction).
__global__ void __launch_bounds__(kThreads)
    cand_histogram_kernel(const SelectState* state, CandidateBuffers buf, unsigned long long* hist, int shift,
                          int bits) {
  __shared__ unsigned int sh[kMaxBins];
  if (state->mode != kSelecting || state->split == 0) return;  // uniform
  const int hi = shift + bits;  // <= 18
  const uint32_t high = static_cast<uint32_t>(state->prefix) >> hi;
  const unsigned nbins = 1u << bits;
  const int64_t n = state->n_cand;
  for (unsigned b = threadIdx.x; b < nbins; b += kThreads) sh[b] = 0;
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < n; j += stride) {
    const uint32_t key = buf.keys[j];
    if ((key >> hi) == high) atomicAdd(&sh[(key >> shift) & (nbins - 1u)], 1u);
  }
  __syncthreads();
  // n <= 2^31 (the host's cap), so 32-bit counts hold.
  for (unsigned b = threadIdx.x; b < nbins; b += kThreads) {
    const unsigned v = sh[b];
    if (v != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(v));
  }
}

__global__ void __launch_bounds__(kThreads) resolve_kernel(Plan plan, SelectState* state, CandidateBuffers buf) {
  if (state->split == 0) return;  // uniform
  const int mode = state->mode;   // kPruneLE or kOrdered: the first select saw k <= eligible
  if (mode == kOrdered && state->n_equal > state->rank_max) return;  // full_ordered(): rewritten anyway
  const uint32_t t = static_cast<uint32_t>(state->prefix);
  const int64_t n = state->n_cand;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < n; j += stride) {
    const uint32_t key = buf.keys[j];
    const uint32_t pos = buf.pos[j];
    if (key == t && mode == kOrdered) {
      const unsigned long long slot = atomicAdd(&state->n_tie_written, 1ull);
      if (slot < static_cast<unsigned long long>(state->rank_max)) buf.ties[slot] = pos;  // always
      continue;
    }
    const Where w = locate(plan, pos);
    static_cast<bool*>(plan.groups[w.group].ptr[2])[w.offset] = key > t;
  }
}

// One block: the n_equal (<= rank_max) ties, ranked by (tensor, row-major logical
// index); the first n_ties are pruned, the others kept.
__global__ void __launch_bounds__(kScanThreads) tie_rank_kernel(Plan plan, const SelectState* state,
                                                                CandidateBuffers buf) {
  __shared__ unsigned long long order[kRankMax];
  if (state->split == 0 || state->mode != kOrdered || state->n_equal > state->rank_max) return;  // uniform
  const int n = static_cast<int>(state->n_equal);
  const long long n_ties = state->n_ties;
  for (int j = threadIdx.x; j < n; j += kScanThreads) {
    const Where w = locate(plan, buf.ties[j]);
    const cuda::DenseLayout layout = plan.groups[w.group].layout;
    // group < 2^24 and logical index < 2^40 (the host checks both)
    order[j] = (static_cast<unsigned long long>(w.group) << 40) |
               static_cast<unsigned long long>(cuda::offset_to_logical(layout, w.offset));
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += kScanThreads) {
    const unsigned long long mine = order[j];
    int rank = 0;
    for (int m = 0; m < n; ++m) rank += order[m] < mine ? 1 : 0;
    const Where w = locate(plan, buf.ties[j]);
    static_cast<bool*>(plan.groups[w.group].ptr[2])[w.offset] = rank >= n_ties;
  }
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast
