// Device helpers shared by the threshold CUDA kernels (threshold_cuda.cu and
// threshold_mask_cuda.cu): keys loaded from raw bits, input-mask eligibility,
// keep-mask stores, and the block-level scans that rank ties in row-major
// logical order. Header-only (inline / templates), so each .cu gets its copy.
#pragma once

#include <ATen/ATen.h>
#include <cuda_fp16.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/threshold_common.h"

namespace lthfast {
namespace threshold {

constexpr int kThreads = 512;  // chunk kernels
constexpr int kUnroll = 4;     // elements per thread per tile
constexpr int kTile = kThreads * kUnroll;
constexpr int kScanThreads = 512;

constexpr int kF16 = static_cast<int>(at::ScalarType::Half);
constexpr int kBF16 = static_cast<int>(at::ScalarType::BFloat16);
constexpr int kF32 = static_cast<int>(at::ScalarType::Float);
constexpr int kF64 = static_cast<int>(at::ScalarType::Double);

template <int DT>
struct DTypeTag {
  static constexpr int value = DT;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Key of element i of a tensor of dtype DT, from its raw bits (exact whatever
// the fast-math / flush-to-zero flags). 64-bit keys of fp16/bf16/fp32 equal
// key64(double(x)), so they compare exactly with the key of any double.
template <typename KeyT, int DT>
__device__ __forceinline__ KeyT load_key(const void* x, int64_t i) {
  if constexpr (DT == kF64) {
    static_assert(sizeof(KeyT) == 8, "float64 scores use 64-bit keys");
    return key64_from_bits(static_cast<const unsigned long long*>(x)[i]);
  } else {
    uint32_t k;
    if constexpr (DT == kF32) {
      k = key32_from_bits(static_cast<const uint32_t*>(x)[i]);
    } else if constexpr (DT == kBF16) {
      k = key32_from_bits(static_cast<uint32_t>(static_cast<const unsigned short*>(x)[i]) << 16);
    } else {
      static_assert(DT == kF16, "unexpected dtype");
      // fp16 -> fp32 is exact (every half is a normal float).
      k = key32_from_bits(__float_as_uint(__half2float(__ushort_as_half(static_cast<const unsigned short*>(x)[i]))));
    }
    if constexpr (sizeof(KeyT) == 8) {
      return widen_key32(k);
    } else {
      return k;
    }
  }
}

// Calls f(DTypeTag<dt>{}) for the runtime dtype (uniform per chunk, so no
// divergence). fp64 only exists with 64-bit keys.
template <typename KeyT, typename F>
__device__ __forceinline__ void dispatch_dtype(int dt, F&& f) {
  if (dt == kF32) {
    f(DTypeTag<kF32>{});
  } else if (dt == kF16) {
    f(DTypeTag<kF16>{});
  } else if (dt == kBF16) {
    f(DTypeTag<kBF16>{});
  } else {
    if constexpr (sizeof(KeyT) == 8) {
      if (dt == kF64) f(DTypeTag<kF64>{});
    }
  }
}

// An input mask: none (all eligible), bool, or the score's dtype (nonzero =
// eligible, tested on the bits so NaN counts as nonzero and -0.0 as zero).
struct MaskRef {
  const void* ptr;
  bool is_bool;
};

template <int DT>
__device__ __forceinline__ bool eligible(const MaskRef& m, int64_t i) {
  if (m.ptr == nullptr) return true;
  if (m.is_bool) return static_cast<const uint8_t*>(m.ptr)[i] != 0;
  if constexpr (DT == kF64) {
    return (static_cast<const unsigned long long*>(m.ptr)[i] << 1) != 0ull;
  } else if constexpr (DT == kF32) {
    return (static_cast<const uint32_t*>(m.ptr)[i] << 1) != 0u;
  } else {
    return (static_cast<const unsigned short*>(m.ptr)[i] & 0x7FFFu) != 0u;
  }
}

// Writes a keep-mask entry: bool, or 1.0 / 0.0 in dtype DT (raw bits).
template <int DT, bool kBoolOut>
__device__ __forceinline__ void store_keep(void* out, int64_t i, bool keep) {
  if constexpr (kBoolOut) {
    static_cast<bool*>(out)[i] = keep;
  } else if constexpr (DT == kF64) {
    static_cast<unsigned long long*>(out)[i] = keep ? 0x3FF0000000000000ull : 0ull;
  } else if constexpr (DT == kF32) {
    static_cast<uint32_t*>(out)[i] = keep ? 0x3F800000u : 0u;
  } else if constexpr (DT == kBF16) {
    static_cast<unsigned short*>(out)[i] = static_cast<unsigned short>(keep ? 0x3F80u : 0u);
  } else {
    static_assert(DT == kF16, "unexpected dtype");
    static_cast<unsigned short*>(out)[i] = static_cast<unsigned short>(keep ? 0x3C00u : 0u);
  }
}

using CountScan = cub::BlockScan<int64_t, kScanThreads>;  // per-chunk tie counts, one block
using TileScan = cub::BlockScan<int, kThreads>;           // ties within a tile

// One block of kScanThreads: offsets[i] = counts[0] + ... + counts[i-1] for
// i < n; returns the total of all n counts in every thread. Each thread scans a
// contiguous run of the counts.
__device__ __forceinline__ int64_t block_exclusive_scan(const int64_t* counts, int64_t* offsets, int64_t n,
                                                        CountScan::TempStorage& tmp) {
  const int64_t per = (n + kScanThreads - 1) / kScanThreads;
  const int64_t begin = min64(n, static_cast<int64_t>(threadIdx.x) * per);
  const int64_t end = min64(n, begin + per);
  int64_t sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += counts[i];
  int64_t run = 0, total = 0;
  CountScan(tmp).ExclusiveSum(sum, run, total);
  for (int64_t i = begin; i < end; ++i) {
    offsets[i] = run;
    run += counts[i];
  }
  return total;
}

// Walks logical (row-major) indices [begin, end) of one tensor with the whole
// block (block-uniform arguments), tile by tile in order, and ranks the eligible
// ties (key == t): the first tie gets rank first_rank. Calls
//   f(offset, ok, key, rank)
// for every index (ok: eligible; key: 0 when not eligible; rank: the tie's
// global rank, or -1 when it is no tie). Thread j holds kUnroll consecutive
// indices of a tile, so the exclusive scan over threads gives each tie its rank.
// Stops early, at a tile boundary, once first_rank + ties seen >= stop_rank
// (pass INT64_MAX to visit every index). Returns the ties seen. Uses tmp (and
// syncs the block) once per tile.
template <typename KeyT, int DT, typename F>
__device__ __forceinline__ int64_t walk_ranked_ties(const cuda::DenseLayout& layout, const void* x,
                                                    const MaskRef& mask, KeyT t, int64_t begin, int64_t end,
                                                    int64_t first_rank, int64_t stop_rank,
                                                    TileScan::TempStorage& tmp, F&& f) {
  int64_t seen = first_rank;
  for (int64_t base = begin; base < end && seen < stop_rank; base += kTile) {
    KeyT key[kUnroll];
    int64_t off[kUnroll];
    bool ok[kUnroll];
    int n = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = base + static_cast<int64_t>(threadIdx.x) * kUnroll + u;
      ok[u] = false;
      off[u] = 0;
      key[u] = 0;
      if (l < end) {
        off[u] = cuda::logical_to_offset(layout, l);
        ok[u] = eligible<DT>(mask, off[u]);
        if (ok[u]) key[u] = load_key<KeyT, DT>(x, off[u]);
        n += (ok[u] && key[u] == t) ? 1 : 0;
      }
    }
    int rank_in_tile = 0, tile_ties = 0;
    TileScan(tmp).ExclusiveSum(n, rank_in_tile, tile_ties);
    int64_t r = seen + rank_in_tile;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = base + static_cast<int64_t>(threadIdx.x) * kUnroll + u;
      if (l < end) {
        const bool tie = ok[u] && key[u] == t;
        f(off[u], ok[u], key[u], tie ? r : int64_t(-1));
        if (tie) ++r;
      }
    }
    seen += tile_ties;
    __syncthreads();  // tmp is reused by the next tile
  }
  return seen - first_rank;
}

}  // namespace threshold
}  // namespace lthfast
