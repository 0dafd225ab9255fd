// CUDA kernel of threshold_mask: one tensor's keep-mask from a global threshold,
// with the threshold and the tie budget read on the device (no host sync: the
// caller runs it once per tensor, in order, on one stream, and ties_left carries
// over between calls). Mirrors cpu/threshold_mask_cpu.cpp bit for bit:
//   kept = eligible && key > t, and eligible ties (key == t) are kept except the
//   first ties_left of them in ROW-MAJOR LOGICAL order (whatever the memory
//   layout), which are pruned; then ties_left -= min(ties_left, ties here).
// Keys are compared in 64-bit key space (key64 of the double value; fp16 / bf16 /
// fp32 keys are widened exactly), so every dtype compares exactly with t.
//
// Three launches on the current stream, over chunks of kMaskChunk LOGICAL indices:
//   keep_above_kernel   writes eligible && key >= t (ties kept for now) and
//                       counts the eligible ties of each chunk (block reduce);
//   tie_offsets_kernel  one block: exclusive scan of the counts, reads
//                       ties_left (left = max(ties_left, 0), kept in scratch for
//                       the next kernel) and decrements ties_left;
//   prune_ties_kernel   only chunks whose first tie has global rank < left do
//                       work (the others return at once): a chunk whose ties
//                       all rank below left prunes them all; the one chunk where
//                       the boundary falls ranks its ties with a block scan.
// Unlike the CPU kernel (which reads ties_left on the host and raises), a
// negative ties_left cannot be reported without a sync: it prunes no tie and is
// left unchanged. Scratch: 16 B per chunk + 8 B. Permuted layouts with more than
// kMaxDims non-mergeable dims are walked as a row-major copy.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <optional>
#include <vector>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/cuda/threshold_device.cuh"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

constexpr int64_t kMaskChunk = 4 * kTile;  // 8192 logical indices per chunk

struct MaskArgs {
  const void* x;                              // dense score
  MaskRef mask;                               // input mask with the score's strides (or none)
  void* out;                                  // keep-mask: bool, or the score's dtype
  const unsigned long long* threshold_bits;   // the 0-dim float64 threshold, as bits
  int64_t numel;
  int64_t n_chunks;
  cuda::DenseLayout layout;                   // logical index -> memory offset
};

__device__ __forceinline__ uint64_t threshold_key(const MaskArgs& a) { return key64_from_bits(*a.threshold_bits); }

// Pass 1: out = eligible && key >= t for every entry; tie_counts[c] = eligible
// ties in chunk c.
template <int DT, bool kBoolOut>
__global__ void __launch_bounds__(kThreads) keep_above_kernel(MaskArgs a, int64_t* tie_counts) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_tmp;
  const uint64_t t = threshold_key(a);
  const cuda::DenseLayout layout = a.layout;
  for (int64_t c = blockIdx.x; c < a.n_chunks; c += gridDim.x) {
    const int64_t begin = c * kMaskChunk;
    const int64_t end = min64(begin + kMaskChunk, a.numel);
    int n = 0;
    for (int64_t base = begin; base < end; base += kTile) {
      int64_t off[kUnroll];
      uint64_t key[kUnroll];
      bool ok[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {  // loads first, then stores
        const int64_t l = base + u * kThreads + static_cast<int64_t>(threadIdx.x);
        off[u] = l < end ? cuda::logical_to_offset(layout, l) : int64_t(-1);
        ok[u] = off[u] >= 0 && eligible<DT>(a.mask, off[u]);
        key[u] = ok[u] ? load_key<uint64_t, DT>(a.x, off[u]) : uint64_t(0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (off[u] >= 0) {
          store_keep<DT, kBoolOut>(a.out, off[u], ok[u] && key[u] >= t);
          n += (ok[u] && key[u] == t) ? 1 : 0;
        }
      }
    }
    const int total = Reduce(reduce_tmp).Sum(n);  // valid in thread 0
    if (threadIdx.x == 0) tie_counts[c] = total;
    __syncthreads();  // reduce_tmp is reused by the next chunk
  }
}

// One block: tie_offsets = exclusive scan of tie_counts; *left = max(ties_left,
// 0) before this call; ties_left -= min(*left, ties in this tensor).
__global__ void __launch_bounds__(kScanThreads)
    tie_offsets_kernel(const int64_t* tie_counts, int64_t* tie_offsets, int64_t n_chunks, int64_t* ties_left,
                       int64_t* left) {
  __shared__ CountScan::TempStorage scan_tmp;
  const int64_t budget = *ties_left;  // every thread reads it before thread 0 writes it (barriers below)
  if (budget <= 0) {                  // uniform: no tie is pruned, ties_left stays as it is
    if (threadIdx.x == 0) *left = 0;
    return;
  }
  const int64_t total = block_exclusive_scan(tie_counts, tie_offsets, n_chunks, scan_tmp);
  __syncthreads();
  if (threadIdx.x == 0) {
    *left = budget;
    *ties_left = budget - (total < budget ? total : budget);
  }
}

// Pass 2: prunes the eligible ties of global rank < *left (rank: row-major
// order within this tensor).
template <int DT, bool kBoolOut>
__global__ void __launch_bounds__(kThreads)
    prune_ties_kernel(MaskArgs a, const int64_t* tie_counts, const int64_t* tie_offsets, const int64_t* left_ptr) {
  __shared__ TileScan::TempStorage scan_tmp;
  const int64_t left = *left_ptr;
  if (left <= 0) return;  // uniform
  const uint64_t t = threshold_key(a);
  const cuda::DenseLayout layout = a.layout;
  for (int64_t c = blockIdx.x; c < a.n_chunks; c += gridDim.x) {
    const int64_t first = tie_offsets[c];  // global rank of the chunk's first tie
    const int64_t count = tie_counts[c];
    if (count == 0 || first >= left) continue;  // uniform: every tie here is kept
    const int64_t begin = c * kMaskChunk;
    const int64_t end = min64(begin + kMaskChunk, a.numel);
    if (first + count <= left) {  // uniform: every tie here is pruned
      for (int64_t l = begin + threadIdx.x; l < end; l += kThreads) {
        const int64_t o = cuda::logical_to_offset(layout, l);
        if (eligible<DT>(a.mask, o) && load_key<uint64_t, DT>(a.x, o) == t) store_keep<DT, kBoolOut>(a.out, o, false);
      }
      continue;
    }
    // The one chunk where the boundary falls: rank its ties in logical order.
    walk_ranked_ties<uint64_t, DT>(layout, a.x, a.mask, t, begin, end, first, left, scan_tmp,
                                   [&](int64_t o, bool, uint64_t, int64_t rank) {
                                     if (rank >= 0 && rank < left) store_keep<DT, kBoolOut>(a.out, o, false);
                                   });
  }
}

template <int DT, bool kBoolOut>
void launch(const MaskArgs& a, int64_t* scratch, int64_t* ties_left, int grid, cudaStream_t stream) {
  int64_t* tie_counts = scratch;
  int64_t* tie_offsets = scratch + a.n_chunks;
  int64_t* left = scratch + 2 * a.n_chunks;
  keep_above_kernel<DT, kBoolOut><<<grid, kThreads, 0, stream>>>(a, tie_counts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  tie_offsets_kernel<<<1, kScanThreads, 0, stream>>>(tie_counts, tie_offsets, a.n_chunks, ties_left, left);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  prune_ties_kernel<DT, kBoolOut><<<grid, kThreads, 0, stream>>>(a, tie_counts, tie_offsets, left);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kBoolOut>
void launch_for(at::ScalarType dtype, const MaskArgs& a, int64_t* scratch, int64_t* ties_left, int grid,
                cudaStream_t stream) {
  switch (dtype) {
    case at::kFloat: return launch<kF32, kBoolOut>(a, scratch, ties_left, grid, stream);
    case at::kHalf: return launch<kF16, kBoolOut>(a, scratch, ties_left, grid, stream);
    case at::kBFloat16: return launch<kBF16, kBoolOut>(a, scratch, ties_left, grid, stream);
    case at::kDouble: return launch<kF64, kBoolOut>(a, scratch, ties_left, grid, stream);
    default: TORCH_CHECK(false, "threshold_mask: unexpected score dtype ", dtype);
  }
}

at::Tensor threshold_mask_cuda(const at::Tensor& score, const std::optional<at::Tensor>& mask,
                               const at::Tensor& threshold, at::Tensor& ties_left,
                               std::optional<at::ScalarType> dtype) {
  const char* op = "threshold_mask";
  std::vector<at::Tensor> masks;
  if (mask.has_value()) masks.push_back(*mask);
  Normalized n = normalize_threshold_mask_args(score, masks, threshold, ties_left);
  TORCH_CHECK(score.device().is_cuda(), op, ": score is on ", score.device(), ", expected a CUDA device");
  c10::cuda::CUDAGuard guard(score.device());

  const at::Tensor& d = n.scores[0];
  const at::ScalarType out_type = output_dtype(d, n, dtype, op);
  at::Tensor out = at::empty_like(d, d.options().dtype(out_type));
  if (d.numel() == 0) return restore_layout(n, {out})[0];

  // The kernels walk `s` (and `m`, `o`: same strides) in logical order.
  at::Tensor s = d;
  at::Tensor m = masks.empty() ? at::Tensor() : n.masks[0];
  at::Tensor o = out;
  MaskArgs a;
  if (!cuda::make_dense_layout(s, &a.layout)) {
    // More than kMaxDims non-mergeable dims: walk a row-major copy instead.
    s = s.contiguous();
    if (m.defined()) m = m.contiguous();
    o = at::empty_like(s, s.options().dtype(out_type));
    const bool ok = cuda::make_dense_layout(s, &a.layout);
    TORCH_INTERNAL_ASSERT(ok && a.layout.ndim == 0, op, ": layout of the row-major copy");
  }
  a.x = s.data_ptr();
  a.mask = MaskRef{m.defined() ? m.data_ptr() : nullptr, !m.defined() || m.scalar_type() == at::kBool};
  a.out = o.data_ptr();
  a.threshold_bits = reinterpret_cast<const unsigned long long*>(threshold.data_ptr<double>());
  a.numel = s.numel();
  a.n_chunks = (a.numel + kMaskChunk - 1) / kMaskChunk;

  // tie counts, tie offsets, left (the budget of this call)
  at::Tensor scratch = at::empty({2 * a.n_chunks + 1}, s.options().dtype(at::kLong));
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int grid = cuda::chunk_grid(a.n_chunks, kMaskChunk, kThreads, prop->multiProcessorCount,
                                    prop->maxThreadsPerMultiProcessor);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  int64_t* scratch_ptr = scratch.data_ptr<int64_t>();
  int64_t* ties_ptr = ties_left.data_ptr<int64_t>();
  if (out_type == at::kBool) {
    launch_for<true>(s.scalar_type(), a, scratch_ptr, ties_ptr, grid, stream);
  } else {
    launch_for<false>(s.scalar_type(), a, scratch_ptr, ties_ptr, grid, stream);
  }
  if (!o.is_same(out)) out.copy_(o);  // back from the row-major copy (stream-ordered)
  return restore_layout(n, {out})[0];
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("threshold_mask", &lthfast::threshold::threshold_mask_cuda);
}
