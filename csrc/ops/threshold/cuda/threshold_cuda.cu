// CUDA kernels of the global magnitude threshold (global_threshold,
// global_magnitude_masks): a multi-tensor radix select over the order-preserving
// keys of |x| (threshold_common.h), with no host sync. This file is the host
// side: argument checks, the chunk table and device state, the launches.
//   radix_kernels.cuh     the radix select (digits, histogram and select kernels)
//   split_kernels.cuh     the candidate path: after the first pass, one more pass
//                         writes the masks of all but the first pass's bucket and
//                         copies that bucket's entries; the rest works on those
//   mask_kernels.cuh      the keep-mask kernels without the candidate path
//   threshold_device.cuh  device helpers shared with threshold_mask_cuda.cu
//
// Passes over every entry: 32-bit keys with the candidate path 2 (+ the full
// ordered mask pass when more than kRankMax ties straddle the k-th entry),
// without it 3 + 1 (+ 1 for straddling ties); 64-bit keys 6 + 1 (+ 1).
// The candidate path is taken when the first pass's bucket holds at most
// `cap` entries: total / 32 by default (8 B of scratch per candidate, so at
// most 1/16 of fp32 scores' bytes). For tests, LTHFAST_CUDA_CANDIDATES sets the
// cap (0: never) and LTHFAST_CUDA_TIE_RANK_MAX the most ties ranked in one
// block (at most kRankMax).
//
// Masks. A mode word in device memory tells the later kernels what to do (they
// read it and return early; the host never looks):
//   kPruneLE  (n_ties == n_equal, the usual case): keep = eligible && key > t,
//             one pass in memory order;
//   kOrdered  (ties straddle the k-th entry): tie_count_kernel counts entries
//             equal to t per chunk of LOGICAL (row-major) indices,
//             tie_scan_kernel turns the counts into exclusive offsets, and
//             mask_ordered_kernel keeps ties of rank >= n_ties (the first n_ties ties in
//             (tensor order, row-major index) are pruned). Only the one chunk
//             where the boundary falls ranks its ties with a block scan; every
//             other chunk keeps or prunes all its ties;
//   kPruneAll (k larger than the eligible count, which only the device sees
//             when masks are given): nothing is kept, the threshold is NaN and
//             n_ties is -1. The Python wrapper validates k before calling.
// Input masks are bool or of the score's dtype (nonzero = eligible, tested on
// the bits). Launches per call (kernels that find nothing to do return at
// once): 2 x passes + 4 for the masks, + 5 for the candidate path; one H2D copy
// of the chunk table and state. Scratch: 64 KB histogram + 16 B per chunk, +
// 8 B per candidate of the cap.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/cuda/mask_kernels.cuh"
#include "ops/threshold/cuda/radix_kernels.cuh"
#include "ops/threshold/cuda/split_kernels.cuh"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

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


// A non-negative integer from the environment, or `fallback` when unset.
int64_t env_count(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  TORCH_CHECK(*end == '\0' && x >= 0, name, "=", v, ": expected a non-negative integer");
  return static_cast<int64_t>(x);
}

// The most candidates the candidate path may copy (0: the path is off). It
// needs 32-bit keys, positions that fit 32 bits (at most 2^16 chunks of 2^16
// entries) and (tensor, index) pairs that fit the tie ranking's 64-bit order.
int64_t candidate_cap(const CudaPrepared& p, int64_t n_chunks) {
  static_assert(kChunk == (int64_t(1) << kChunkBits), "candidate positions assume 2^16-entry chunks");
  if (p.n.wide || n_chunks > (int64_t(1) << (32 - kChunkBits)) || p.work.size() >= (size_t(1) << 24)) return 0;
  const int64_t fallback = std::min(p.total, std::max<int64_t>(16384, p.total / 32));
  return std::min(env_count("LTHFAST_CUDA_CANDIDATES", fallback), std::min<int64_t>(p.total, int64_t(1) << 31));
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
  const int64_t cap = candidate_cap(p, n_chunks);
  const int rank_max = static_cast<int>(std::min<int64_t>(env_count("LTHFAST_CUDA_TIE_RANK_MAX", kRankMax), kRankMax));

  SelectState init{};
  init.prefix = 0;
  init.remaining = k;
  init.mode = kSelecting;
  init.rank_max = rank_max;
  cuda::DeviceUpload up;
  const int64_t state_off = up.put(&init, 1);
  const int64_t hist_off = up.put_zeros(kMaxBins * static_cast<int64_t>(sizeof(unsigned long long)));
  const int64_t groups_off = up.put(groups.data(), static_cast<int64_t>(groups.size()));
  const int64_t chunks_off = up.put(chunks.data(), n_chunks);
  const int64_t ties_handle = write_masks ? up.reserve(2 * n_chunks * static_cast<int64_t>(sizeof(int64_t))) : -1;
  const int64_t cand_handle = cap > 0 ? up.reserve((2 * cap + kRankMax) * static_cast<int64_t>(sizeof(uint32_t))) : -1;
  at::Tensor buf = up.upload(p.device);
  uint8_t* base = buf.data_ptr<uint8_t>();

  SelectState* state = reinterpret_cast<SelectState*>(base + state_off);
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(base + hist_off);
  Plan plan;
  plan.groups = reinterpret_cast<const Group*>(base + groups_off);
  plan.chunks = reinterpret_cast<const cuda::ChunkRef*>(base + chunks_off);
  plan.n_chunks = n_chunks;
  plan.chunk_size = kChunk;
  CandidateBuffers cand{nullptr, nullptr, nullptr};
  if (cap > 0) {
    cand.keys = reinterpret_cast<uint32_t*>(base + up.reserved_offset(cand_handle));
    cand.pos = cand.keys + cap;
    cand.ties = cand.pos + cap;
  }

  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int grid = cuda::chunk_grid(n_chunks, kChunk, kThreads, prop->multiProcessorCount,
                                    prop->maxThreadsPerMultiProcessor);
  // the candidate kernels: a grid-stride loop over at most `cap` entries
  const int cand_grid = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(grid, (cap + kTile - 1) / kTile)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const int n_passes = wide ? kPasses64 : kPasses32;
  int hi = wide ? 63 : 31;
  for (int pass = 0; pass < n_passes; ++pass) {
    const int bits = wide ? kDigits64[pass] : kDigits32[pass];
    const int shift = hi - bits;
    const bool last = pass == n_passes - 1;
    if (wide) {
      histogram_kernel<uint64_t><<<grid, kThreads, 0, stream>>>(plan, state, hist, shift, bits);
    } else {
      histogram_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(plan, state, hist, shift, bits);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (pass > 0 && cap > 0) {
      cand_histogram_kernel<<<cand_grid, kThreads, 0, stream>>>(state, cand, hist, shift, bits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const long long split_cap = pass == 0 ? cap : 0;
    if (wide) {
      select_kernel<uint64_t><<<1, kSelectThreads, 0, stream>>>(state, hist, shift, bits, last, split_cap,
                                                                out_value, out_ties);
    } else {
      select_kernel<uint32_t><<<1, kSelectThreads, 0, stream>>>(state, hist, shift, bits, last, split_cap,
                                                                out_value, out_ties);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (pass == 0 && cap > 0) {
      TORCH_INTERNAL_ASSERT(shift == kSplitShift);
      if (write_masks) {
        split_kernel<true><<<grid, kThreads, 0, stream>>>(plan, state, cand);
      } else {
        split_kernel<false><<<grid, kThreads, 0, stream>>>(plan, state, cand);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    hi = shift;
  }
  if (!write_masks) return;
  if (cap > 0) {
    resolve_kernel<<<cand_grid, kThreads, 0, stream>>>(plan, state, cand);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tie_rank_kernel<<<1, kScanThreads, 0, stream>>>(plan, state, cand);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  int64_t* tie_counts = reinterpret_cast<int64_t*>(base + up.reserved_offset(ties_handle));
  int64_t* tie_offsets = tie_counts + n_chunks;
  if (wide) {
    launch_masks<uint64_t>(plan, state, tie_counts, tie_offsets, grid, stream);
  } else {
    launch_masks<uint32_t>(plan, state, tie_counts, tie_offsets, grid, stream);
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
