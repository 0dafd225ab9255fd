// CUDA kernels of the global magnitude threshold: a multi-tensor radix select
// over the order-preserving keys of |x| (threshold_common.h), with no host sync.
//
// Digits and passes. Histograms are privatised per block in shared memory, so a
// digit has at most 11 bits (2048 bins x 4 B = 8 KB of shared memory per block;
// 65536 bins would need 256 KB). Only the low 31 / 63 key bits are ever set:
//   32-bit keys (fp16/bf16/fp32): 3 passes, bits 30..20 | 19..10 | 9..0 (11/10/10)
//   64-bit keys (any fp64):       6 passes, 11/11/11/10/10/10 bits
// Each pass reads every eligible entry once: a chunked multi-tensor kernel
// builds the histogram of the current digit of the entries whose higher bits
// equal the prefix selected so far (shared-memory atomics, warp-aggregated with
// __match_any_sync since magnitudes concentrate in few buckets), merged into a
// global 64-bit histogram; then a single-block kernel scans that histogram,
// picks the bucket of the k-th entry, updates (prefix, rank) in device memory,
// and zeroes the histogram for the next pass. After the last pass the prefix is
// the threshold key t, rank = n_ties (entries equal to t that are pruned) and
// the last bucket's count = n_equal (eligible entries equal to t).
//
// Masks. A mode word in device memory tells the later kernels what to do (they
// read it and return early; the host never looks):
//   kPruneLE  (n_ties == n_equal, the usual case): keep = eligible && key > t,
//             one pass in memory order;
//   kOrdered  (ties straddle the k-th entry): tie_count_kernel counts entries
//             equal to t per chunk of LOGICAL (row-major) indices,
//             tie_scan_kernel turns the counts into exclusive offsets, and
//             mask_kernel keeps ties of rank >= n_ties (the first n_ties ties in
//             (tensor order, row-major index) are pruned). Only the one chunk
//             where the boundary falls ranks its ties with a block scan; every
//             other chunk keeps or prunes all its ties;
//   kPruneAll (k larger than the eligible count, which only the device sees
//             when masks are given): nothing is kept, the threshold is NaN and
//             n_ties is -1. The Python wrapper validates k before calling.
// Input masks are bool or of the score's dtype (nonzero = eligible, tested on
// the bits). Launches per call: 2 x passes, plus 3 for the masks; one H2D copy
// of the chunk table and state. Scratch: 16 KB histogram + 16 B per chunk.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <tuple>
#include <vector>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

using Group = cuda::TensorGroup<3>;  // ptr: score, mask (or null), out (or null)
                                     // dtype: score's, mask's (bool or the score's)

constexpr int kThreads = 512;  // chunk kernels
constexpr int kUnroll = 4;     // elements per thread per tile
constexpr int kTile = kThreads * kUnroll;
constexpr int kMaxDigitBits = 11;
constexpr int kMinDigitBits = 8;
constexpr int kMaxBins = 1 << kMaxDigitBits;
constexpr int kSelectThreads = 256;
constexpr int kBinsPerSelectThread = kMaxBins / kSelectThreads;
constexpr int kScanThreads = 512;
static_assert((1 << kMinDigitBits) % kSelectThreads == 0, "select: bins split evenly over threads");

constexpr int kF16 = static_cast<int>(at::ScalarType::Half);
constexpr int kBF16 = static_cast<int>(at::ScalarType::BFloat16);
constexpr int kF32 = static_cast<int>(at::ScalarType::Float);
constexpr int kF64 = static_cast<int>(at::ScalarType::Double);

enum Mode : int { kSelecting = 0, kPruneLE = 1, kOrdered = 2, kPruneAll = 3 };

struct SelectState {
  unsigned long long prefix;  // key bits selected so far, in place; the key t at the end
  long long remaining;        // 1-based rank of the k-th entry among those with the prefix
  long long n_equal;          // eligible entries equal to t
  long long n_ties;           // of those, how many are pruned
  int mode;
  int reserved;
};

struct Plan {
  const Group* groups;
  const cuda::ChunkRef* chunks;
  int64_t n_chunks;
  int64_t chunk_size;
};

// ------------------------------------------------------------------ keys

template <int DT>
struct DTypeTag {
  static constexpr int value = DT;
};

// Key of element i of a tensor of dtype DT, from its raw bits (exact whatever
// the fast-math / flush-to-zero flags).
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

template <typename KeyT>
__device__ __forceinline__ double key_value(unsigned long long key) {
  const unsigned long long bits =
      sizeof(KeyT) == 8 ? key : static_cast<unsigned long long>(widen_key32(static_cast<uint32_t>(key)));
  return __longlong_as_double(static_cast<long long>(bits));
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// An input mask: none (all eligible), bool, or the score's dtype (nonzero =
// eligible, tested on the bits so NaN counts as nonzero and -0.0 as zero).
struct MaskRef {
  const void* ptr;
  bool is_bool;
};

__device__ __forceinline__ MaskRef mask_of(const Group& g) {
  return MaskRef{g.ptr[1], g.dtype[1] == static_cast<int8_t>(at::ScalarType::Bool)};
}

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

// ------------------------------------------------------------- kernels

// Histogram of key bits [shift, shift + bits) of the eligible entries whose key
// bits above shift + bits equal the selected prefix. Chunks are memory ranges.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    histogram_kernel(Plan plan, const SelectState* state, unsigned long long* hist, int shift, int bits) {
  __shared__ unsigned int sh[kMaxBins];
  if (state->mode != kSelecting) return;  // uniform: k > eligible was found earlier
  const int hi = shift + bits;             // <= 31 (32-bit keys) / 63: no full-width shift
  const KeyT high = static_cast<KeyT>(state->prefix) >> hi;
  const unsigned nbins = 1u << bits;
  for (unsigned b = threadIdx.x; b < nbins; b += kThreads) sh[b] = 0;
  __syncthreads();
  const unsigned lane = threadIdx.x & 31u;
  for (int64_t c = blockIdx.x; c < plan.n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = plan.chunks[c];
    const Group& g = plan.groups[ch.group];
    const void* x = g.ptr[0];
    const MaskRef mask = mask_of(g);
    const int64_t end = min64(ch.start + plan.chunk_size, g.numel);
    dispatch_dtype<KeyT>(g.dtype[0], [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      // The loop bound is block-uniform, so every lane reaches the warp votes.
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
          const bool counted = ok[u] && (key[u] >> hi) == high;
          if (__any_sync(0xFFFFFFFFu, counted)) {
            const unsigned bin = counted ? static_cast<unsigned>(key[u] >> shift) & (nbins - 1u) : 0xFFFFFFFFu;
            const unsigned peers = __match_any_sync(0xFFFFFFFFu, bin);
            if (counted && lane == static_cast<unsigned>(__ffs(peers) - 1)) {
              atomicAdd(&sh[bin], static_cast<unsigned>(__popc(peers)));
            }
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
// decides the mask mode and writes the op's outputs (when given).
template <typename KeyT>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(SelectState* state, unsigned long long* hist, int shift, int bits, bool last,
                  double* out_value, int64_t* out_ties) {
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

// kOrdered only: number of eligible entries equal to t in each chunk of logical
// indices.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    tie_count_kernel(Plan plan, const SelectState* state, long long* tie_counts) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_tmp;
  if (state->mode != kOrdered) return;  // uniform
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

// kOrdered only, one block: exclusive scan of the per-chunk tie counts.
__global__ void __launch_bounds__(kScanThreads)
    tie_scan_kernel(const SelectState* state, const long long* tie_counts, long long* tie_offsets, int64_t n) {
  using Scan = cub::BlockScan<long long, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  if (state->mode != kOrdered) return;  // uniform
  const int64_t per = (n + kScanThreads - 1) / kScanThreads;
  const int64_t begin = min64(n, static_cast<int64_t>(threadIdx.x) * per);
  const int64_t end = min64(n, begin + per);
  long long sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += tie_counts[i];
  long long run = 0;
  Scan(scan_tmp).ExclusiveSum(sum, run);
  for (int64_t i = begin; i < end; ++i) {
    tie_offsets[i] = run;
    run += tie_counts[i];
  }
}

// Writes the keep-masks. Every element of every output is written exactly once.
template <typename KeyT>
__global__ void __launch_bounds__(kThreads)
    mask_kernel(Plan plan, const SelectState* state, const long long* tie_counts, const long long* tie_offsets) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  const int mode = state->mode;  // kPruneLE, kOrdered or kPruneAll here
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
      if (mode != kOrdered) {
        // Order does not matter: the chunk is a range of memory offsets.
        const bool keep_any = mode == kPruneLE;
        for (int64_t base = ch.start; base < end; base += kTile) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int64_t i = base + u * kThreads + threadIdx.x;
            if (i < end) {
              bool keep = false;
              if (keep_any && eligible<DT>(mask, i)) keep = load_key<KeyT, DT>(x, i) > t;
              out[i] = keep;
            }
          }
        }
        return;
      }
      // Ordered ties: the chunk is a range of logical indices.
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
      // ties in logical order, tile by tile; thread j holds kUnroll consecutive
      // indices, so the exclusive scan over threads gives each tie its rank.
      long long seen = first_tie;
      for (int64_t base = ch.start; base < end; base += kTile) {
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
        Scan(scan_tmp).ExclusiveSum(n, rank_in_tile, tile_ties);
        long long r = seen + rank_in_tile;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t l = base + static_cast<int64_t>(threadIdx.x) * kUnroll + u;
          if (l < end) {
            bool keep = false;
            if (ok[u]) {
              if (key[u] > t) {
                keep = true;
              } else if (key[u] == t) {
                keep = r >= n_ties;
                ++r;
              }
            }
            out[off[u]] = keep;
          }
        }
        seen += tile_ties;
        __syncthreads();  // scan_tmp is reused by the next tile
      }
    });
  }
}

// ------------------------------------------------------------------ host

struct CudaPrepared {
  Normalized n;
  std::vector<at::Tensor> work;   // the dense scores the kernels read
  std::vector<at::Tensor> masks;  // empty, or bool / work[i]'s dtype, strides of work[i]
  std::vector<at::Tensor> outs;   // keep-masks with the strides of work[i]
  int64_t total = 0;
  at::Device device = at::kCPU;
};

CudaPrepared prepare_cuda(at::TensorList scores, at::TensorList masks, int64_t k, bool make_out, const char* op) {
  CudaPrepared p;
  p.n = normalize_inputs(scores, masks, k, op);
  p.device = p.n.scores[0].device();
  TORCH_CHECK(p.device.is_cuda(), op, ": scores[0] is on ", p.device, ", expected a CUDA device");
  for (size_t i = 0; i < p.n.scores.size(); ++i) {
    at::Tensor s = p.n.scores[i];
    at::Tensor m = p.n.masks.empty() ? at::Tensor() : p.n.masks[i];
    cuda::DenseLayout layout;
    if (make_out && !cuda::make_dense_layout(s, &layout)) {
      // More than kMaxDims non-mergeable dims: walk a row-major copy instead.
      s = s.contiguous();
      if (m.defined()) m = m.contiguous();
    }
    p.total += s.numel();
    p.work.push_back(s);
    if (m.defined()) p.masks.push_back(m);
    if (make_out) p.outs.push_back(empty_mask_like(s));
  }
  TORCH_CHECK(k <= p.total, op, ": k=", k, " is larger than the number of unpruned entries (", p.total, ")");
  return p;
}

// Masks computed on work[i] back in each original's layout where it differs.
std::vector<at::Tensor> restore_outputs(const CudaPrepared& p) {
  std::vector<at::Tensor> res;
  res.reserve(p.outs.size());
  for (size_t i = 0; i < p.outs.size(); ++i) {
    const at::Tensor& orig = p.n.originals[i];
    if (p.work[i].is_same(orig)) {
      res.push_back(p.outs[i]);
    } else {
      at::Tensor o = at::empty_like(orig, orig.options().dtype(at::kBool));
      o.copy_(p.outs[i]);
      res.push_back(o);
    }
  }
  return res;
}

template <typename KeyT>
void launch_radix_select(const Plan& plan, SelectState* state, unsigned long long* hist, double* out_value,
                         int64_t* out_ties, int grid, cudaStream_t stream) {
  constexpr int kKeyBits = static_cast<int>(sizeof(KeyT)) * 8 - 1;  // 31 / 63 bits ever set
  constexpr int kPasses = (kKeyBits + kMaxDigitBits - 1) / kMaxDigitBits;
  constexpr int kBaseBits = kKeyBits / kPasses;
  constexpr int kExtra = kKeyBits % kPasses;
  static_assert(kBaseBits >= kMinDigitBits && kBaseBits + (kExtra ? 1 : 0) <= kMaxDigitBits, "digit widths");
  int hi = kKeyBits;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int bits = kBaseBits + (pass < kExtra ? 1 : 0);
    const int shift = hi - bits;
    histogram_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state, hist, shift, bits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    select_kernel<KeyT><<<1, kSelectThreads, 0, stream>>>(state, hist, shift, bits, pass == kPasses - 1,
                                                          out_value, out_ties);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    hi = shift;
  }
}

template <typename KeyT>
void launch_masks(const Plan& plan, SelectState* state, long long* tie_counts, long long* tie_offsets, int grid,
                  cudaStream_t stream) {
  tie_count_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state, tie_counts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  tie_scan_kernel<<<1, kScanThreads, 0, stream>>>(state, tie_counts, tie_offsets, plan.n_chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mask_kernel<KeyT><<<grid, kThreads, 0, stream>>>(plan, state, tie_counts, tie_offsets);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Radix select of the k-th (1 <= k <= total) smallest eligible key; writes the
// op outputs (when given) and the keep-masks (when p.outs is not empty).
void run(const CudaPrepared& p, int64_t k, double* out_value, int64_t* out_ties) {
  const bool wide = p.n.wide;
  const bool write_masks = !p.outs.empty();
  std::vector<Group> groups(p.work.size());
  std::vector<int64_t> numels(p.work.size());
  for (size_t i = 0; i < p.work.size(); ++i) {
    const at::Tensor& s = p.work[i];
    Group& g = groups[i];
    std::memset(&g, 0, sizeof(Group));
    g.ptr[0] = s.data_ptr();
    g.ptr[1] = p.masks.empty() ? nullptr : p.masks[i].data_ptr();
    g.ptr[2] = write_masks ? p.outs[i].data_ptr() : nullptr;
    g.numel = s.numel();
    g.dtype[0] = static_cast<int8_t>(s.scalar_type());
    // normalize_inputs allows bool masks or masks of the score's dtype.
    g.dtype[1] = static_cast<int8_t>(p.masks.empty() ? at::kBool : p.masks[i].scalar_type());
    if (write_masks) {
      const bool ok = cuda::make_dense_layout(s, &g.layout);
      TORCH_INTERNAL_ASSERT(ok, "dense layout of scores[", i, "]");
    }
    numels[i] = g.numel;
  }
  const std::vector<cuda::ChunkRef> chunks = cuda::make_chunks(numels, kChunk);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  TORCH_INTERNAL_ASSERT(n_chunks > 0);

  SelectState init{};
  init.prefix = 0;
  init.remaining = k;
  init.mode = kSelecting;
  cuda::DeviceUpload up;
  const int64_t state_off = up.put(&init, 1);
  const int64_t hist_off = up.put_zeros(kMaxBins * static_cast<int64_t>(sizeof(unsigned long long)));
  const int64_t groups_off = up.put(groups.data(), static_cast<int64_t>(groups.size()));
  const int64_t chunks_off = up.put(chunks.data(), n_chunks);
  const int64_t ties_handle = write_masks ? up.reserve(2 * n_chunks * static_cast<int64_t>(sizeof(long long))) : -1;
  at::Tensor buf = up.upload(p.device);
  uint8_t* base = buf.data_ptr<uint8_t>();

  SelectState* state = reinterpret_cast<SelectState*>(base + state_off);
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(base + hist_off);
  Plan plan;
  plan.groups = reinterpret_cast<const Group*>(base + groups_off);
  plan.chunks = reinterpret_cast<const cuda::ChunkRef*>(base + chunks_off);
  plan.n_chunks = n_chunks;
  plan.chunk_size = kChunk;

  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int grid = cuda::chunk_grid(n_chunks, kChunk, kThreads, prop->multiProcessorCount,
                                    prop->maxThreadsPerMultiProcessor);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (wide) {
    launch_radix_select<uint64_t>(plan, state, hist, out_value, out_ties, grid, stream);
  } else {
    launch_radix_select<uint32_t>(plan, state, hist, out_value, out_ties, grid, stream);
  }
  if (write_masks) {
    long long* tie_counts = reinterpret_cast<long long*>(base + up.reserved_offset(ties_handle));
    long long* tie_offsets = tie_counts + n_chunks;
    if (wide) {
      launch_masks<uint64_t>(plan, state, tie_counts, tie_offsets, grid, stream);
    } else {
      launch_masks<uint32_t>(plan, state, tie_counts, tie_offsets, grid, stream);
    }
  }
  // `buf` and any temporaries are freed here; the caching allocator reuses them
  // only in stream order, after the kernels above.
}

std::tuple<at::Tensor, at::Tensor> global_threshold_cuda(at::TensorList scores, at::TensorList masks,
                                                         int64_t k) {
  CudaPrepared p = prepare_cuda(scores, masks, k, /*make_out=*/false, "global_threshold");
  c10::cuda::CUDAGuard guard(p.device);
  const at::TensorOptions opts = at::TensorOptions().device(p.device);
  if (k == 0) {
    return {at::zeros({}, opts.dtype(at::kDouble)), at::zeros({}, opts.dtype(at::kLong))};
  }
  at::Tensor value = at::empty({}, opts.dtype(at::kDouble));
  at::Tensor ties = at::empty({}, opts.dtype(at::kLong));
  run(p, k, value.data_ptr<double>(), ties.data_ptr<int64_t>());
  return {value, ties};
}

std::vector<at::Tensor> global_magnitude_masks_cuda(at::TensorList scores, at::TensorList masks, int64_t k) {
  CudaPrepared p = prepare_cuda(scores, masks, k, /*make_out=*/true, "global_magnitude_masks");
  c10::cuda::CUDAGuard guard(p.device);
  if (k == 0) {  // the result is the eligibility itself
    for (size_t i = 0; i < p.outs.size(); ++i) {
      if (p.masks.empty()) {
        p.outs[i].fill_(true);
      } else {
        p.outs[i].copy_(p.masks[i]);
      }
    }
  } else if (k == p.total) {  // every entry pruned (k <= eligible <= total)
    for (at::Tensor& o : p.outs) o.zero_();
  } else {
    run(p, k, nullptr, nullptr);
  }
  return restore_outputs(p);
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("global_threshold", &lthfast::threshold::global_threshold_cuda);
  m.impl("global_magnitude_masks", &lthfast::threshold::global_magnitude_masks_cuda);
}
