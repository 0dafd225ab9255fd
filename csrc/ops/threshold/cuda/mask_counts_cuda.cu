// CUDA kernel of mask_counts: the same counts as the CPU kernel, for all masks in
// ONE launch. The masks are cut into chunks of kCountChunk entries (a table
// uploaded with the mask descriptors in one copy); a block counts a chunk, packs
// (ones, zeros) into one 64-bit sum for a single block reduction, and adds the
// chunk's ones and others to its mask's row with 64-bit atomics. ATen's
// reductions took 4-7 launches per mask: with a few hundred masks, round 2 of
// global pruning was bound by launch overhead on the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <vector>

#include "ops/common/multi_tensor.cuh"
#include "ops/threshold/mask_counts_common.h"

namespace lthfast {
namespace threshold {
namespace {

constexpr int kCountThreads = 256;

struct CountGroup {
  const void* data;  // memory offsets [0, numel): a non-overlapping and dense tensor
  int64_t numel;
  MaskBits bits;
};

// Adds this thread's entries of [begin, end) to `ones` and `zeros`.
template <typename bits_t>
__device__ __forceinline__ void count_range(const bits_t* __restrict__ x, int64_t begin, int64_t end,
                                            const MaskBits& b, uint32_t& ones, uint32_t& zeros) {
  const bits_t one = static_cast<bits_t>(b.one), magnitude = static_cast<bits_t>(b.magnitude);
  for (int64_t i = begin + threadIdx.x; i < end; i += kCountThreads) {
    const bits_t v = x[i];
    ones += v == one;
    zeros += (v & magnitude) == 0;
  }
}

// A bool mask: any nonzero byte is kept (as the threshold kernels and the CPU kernel
// read it), so no entry is "neither 0 nor 1".
__device__ __forceinline__ void count_bool_range(const uint8_t* __restrict__ x, int64_t begin,
                                                 int64_t end, uint32_t& ones, uint32_t& zeros) {
  for (int64_t i = begin + threadIdx.x; i < end; i += kCountThreads) {
    const bool kept = x[i] != 0;
    ones += kept;
    zeros += !kept;
  }
}

__global__ void __launch_bounds__(kCountThreads)
    mask_counts_kernel(const CountGroup* __restrict__ groups, const cuda::ChunkRef* __restrict__ chunks,
                       int64_t n_chunks, unsigned long long* __restrict__ out) {
  using Reduce = cub::BlockReduce<unsigned long long, kCountThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const cuda::ChunkRef ch = chunks[c];
    const CountGroup g = groups[ch.group];
    const int64_t end = ch.start + kCountChunk < g.numel ? ch.start + kCountChunk : g.numel;
    uint32_t ones = 0, zeros = 0;
    switch (g.bits.bytes) {  // uniform across the block
      case 1: count_bool_range(static_cast<const uint8_t*>(g.data), ch.start, end, ones, zeros); break;
      case 2: count_range(static_cast<const uint16_t*>(g.data), ch.start, end, g.bits, ones, zeros); break;
      case 4: count_range(static_cast<const uint32_t*>(g.data), ch.start, end, g.bits, ones, zeros); break;
      default: count_range(static_cast<const uint64_t*>(g.data), ch.start, end, g.bits, ones, zeros); break;
    }
    // a chunk's counts are below 2^32: the two halves of the sum never carry into each other
    const unsigned long long both =
        Reduce(tmp).Sum((static_cast<unsigned long long>(ones) << 32) | zeros);  // valid in thread 0
    if (threadIdx.x == 0) {
      const unsigned long long o = both >> 32, z = both & 0xFFFFFFFFull;
      const unsigned long long others = static_cast<unsigned long long>(end - ch.start) - o - z;
      if (o != 0) atomicAdd(out + 2 * ch.group, o);
      if (others != 0) atomicAdd(out + 2 * ch.group + 1, others);
    }
    __syncthreads();  // tmp is reused by the next chunk
  }
}

at::Tensor mask_counts_cuda(at::TensorList masks) {
  const char* op = "mask_counts";
  TORCH_CHECK(!masks.empty(), op, ": masks is empty");
  TORCH_CHECK(masks[0].defined(), op, ": masks[0] is undefined");
  const at::Device dev = masks[0].device();
  TORCH_CHECK(dev.is_cuda(), op, ": masks[0] is on ", dev, ", expected a CUDA device");
  std::vector<at::Tensor> keep;  // dense versions of the masks (a copy only for strided views)
  std::vector<CountGroup> groups;
  std::vector<int64_t> numels;
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    check_count_mask(m, i, dev, op);
    keep.push_back(m.is_non_overlapping_and_dense() ? m : m.contiguous());
    const at::Tensor& d = keep.back();
    groups.push_back(CountGroup{d.data_ptr(), d.numel(), mask_bits(d.scalar_type())});
    numels.push_back(d.numel());
  }
  c10::cuda::CUDAGuard guard(dev);
  at::Tensor out = at::zeros({static_cast<int64_t>(masks.size()), 2},
                             at::TensorOptions().dtype(at::kLong).device(dev));
  const std::vector<cuda::ChunkRef> chunks = cuda::make_chunks(numels, kCountChunk);
  if (chunks.empty()) return out;
  cuda::DeviceUpload up;
  const int64_t groups_at = up.put(groups.data(), static_cast<int64_t>(groups.size()));
  const int64_t chunks_at = up.put(chunks.data(), static_cast<int64_t>(chunks.size()));
  const at::Tensor table = up.upload(dev);
  const uint8_t* base = table.data_ptr<uint8_t>();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const int grid = cuda::chunk_grid(n_chunks, kCountChunk, kCountThreads, prop->multiProcessorCount,
                                    prop->maxThreadsPerMultiProcessor);
  mask_counts_kernel<<<grid, kCountThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const CountGroup*>(base + groups_at),
      reinterpret_cast<const cuda::ChunkRef*>(base + chunks_at), n_chunks,
      reinterpret_cast<unsigned long long*>(out.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("mask_counts", &lthfast::threshold::mask_counts_cuda);
}
