// CUDA kernels of the bitmask ops; same packed layout and results as
// cpu/bitmask_cpu.cpp (row-major logical order, LSB first, trailing bits 0).
//   pack:    one thread per entry; a warp ballot turns 32 bools into 4 bytes.
//   unpack:  one thread per packed byte writes its 8 bools (one 8-byte store
//            when the output is aligned).
//   counts:  popcount per thread, block reduce, one 64-bit atomic per block.
// Non-contiguous masks go through a row-major copy (stream-ordered). 64-bit
// indexing throughout, grid-stride loops, launches checked, current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>

#include "ops/bitmask/bitmask_check.h"

namespace lthfast {
namespace bitmask {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t work) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t max_blocks = static_cast<int64_t>(prop->multiProcessorCount) *
                             (prop->maxThreadsPerMultiProcessor / kThreads) * 4;
  const int64_t need = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(need, max_blocks)));
}

// Every thread of a warp runs the same number of iterations (the loop bound is
// rounded up to whole warps), so the full-warp ballot is always legal.
__global__ void pack_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out,
                            int64_t n, int64_t nbytes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t bound = (n + 31) / 32 * 32;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bound;
       i += stride) {
    const bool bit = i < n && in[i] != 0;
    const uint32_t word = __ballot_sync(0xffffffffu, bit);  // lane l -> bit l
    if ((threadIdx.x & 31) == 0) {
      const int64_t byte = i / 8;  // multiple of 4: out (from at::empty) is 4-byte aligned here
      if (byte + 4 <= nbytes) {
        *reinterpret_cast<uint32_t*>(out + byte) = word;
      } else {
        for (int64_t b = byte; b < nbytes; ++b) out[b] = static_cast<uint8_t>(word >> (8 * (b - byte)));
      }
    }
  }
}

// Bits 0..7 of b to the low bit of bytes 0..7. Each nibble is spread by one
// multiply (bit i to bit 8i; no two partial products share a bit).
__device__ __forceinline__ uint64_t spread_bits(uint32_t b) {
  const uint64_t lo = ((b & 0xfu) * 0x00204081ull) & 0x01010101ull;
  const uint64_t hi = (((b >> 4) & 0xfu) * 0x00204081ull) & 0x01010101ull;
  return lo | (hi << 32);
}

__global__ void unpack_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out,
                              int64_t n, int64_t nbytes, bool aligned) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nbytes;
       i += stride) {
    const uint64_t v = spread_bits(in[i]);
    const int64_t first = 8 * i;
    if (aligned && first + 8 <= n) {
      *reinterpret_cast<uint64_t*>(out + first) = v;
    } else {
      const int64_t end = first + 8 < n ? first + 8 : n;
      for (int64_t j = first; j < end; ++j) out[j] = static_cast<uint8_t>((v >> (8 * (j - first))) & 1u);
    }
  }
}

// op 0: popcount(a & b); op 1: popcount(a | b), or popcount(a) when b is null.
template <int op>
__global__ void popcount_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b,
                                int64_t nbytes, unsigned long long* __restrict__ result) {
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  unsigned long long count = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nbytes;
       i += stride) {
    const uint32_t x = a[i];
    const uint32_t y = b != nullptr ? b[i] : 0u;
    count += __popc(op == 0 ? (x & y) : (x | y));
  }
  const unsigned long long total = Reduce(tmp).Sum(count);
  if (threadIdx.x == 0 && total != 0) atomicAdd(result, total);
}

at::Tensor pack_bits_cuda(const at::Tensor& mask_in) {
  check_pack_input(mask_in, "pack_bits");
  // a float mask (torch.nn.utils.prune's format) is packed through a bool copy
  const at::Tensor mask = mask_in.scalar_type() == at::kBool ? mask_in : mask_in.ne(0);
  c10::cuda::CUDAGuard guard(mask.device());
  const int64_t n = mask.numel();
  const int64_t nbytes = packed_bytes(n);
  at::Tensor out = at::empty({nbytes}, mask.options().dtype(at::kByte));
  if (n == 0) return out;
  const at::Tensor src = mask.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  pack_kernel<<<grid_for(n), kThreads, 0, stream>>>(
      reinterpret_cast<const uint8_t*>(src.data_ptr<bool>()), out.data_ptr<uint8_t>(), n, nbytes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void unpack_to(const at::Tensor& packed, int64_t n, bool* dst) {
  if (n == 0) return;
  const at::Tensor p = packed.contiguous();
  const int64_t nbytes = p.numel();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool aligned = reinterpret_cast<uintptr_t>(dst) % 8 == 0;
  unpack_kernel<<<grid_for(nbytes), kThreads, 0, stream>>>(
      p.data_ptr<uint8_t>(), reinterpret_cast<uint8_t*>(dst), n, nbytes, aligned);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed, at::IntArrayRef shape) {
  const int64_t n = check_unpack(packed, shape, "unpack_bits");
  c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kBool));
  unpack_to(packed, n, out.data_ptr<bool>());
  return out;
}

void unpack_bits_into_cuda(const at::Tensor& packed, at::Tensor& out) {
  check_mask(out, "unpack_bits_into");
  const int64_t n = check_unpack(packed, out.sizes(), "unpack_bits_into");
  TORCH_CHECK(out.device() == packed.device(), "unpack_bits_into: out is on ", out.device(),
              " but packed is on ", packed.device());
  c10::cuda::CUDAGuard guard(packed.device());
  if (out.is_contiguous()) {
    unpack_to(packed, n, out.data_ptr<bool>());
  } else {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    unpack_to(packed, n, tmp.data_ptr<bool>());
    out.copy_(tmp);
  }
}

// Launches popcount_kernel<op> into result[slot] (zeroed here).
template <int op>
void popcount_into(const at::Tensor& a, const at::Tensor* b, at::Tensor& result, int64_t slot) {
  const int64_t nbytes = a.numel();
  if (nbytes == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto* r = reinterpret_cast<unsigned long long*>(result.data_ptr<int64_t>() + slot);
  popcount_kernel<op><<<grid_for(nbytes), kThreads, 0, stream>>>(
      a.data_ptr<uint8_t>(), b != nullptr ? b->data_ptr<uint8_t>() : nullptr, nbytes, r);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor count_bits_cuda(const at::Tensor& packed) {
  check_packed(packed, "count_bits");
  c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor p = packed.contiguous();
  at::Tensor out = at::zeros({}, packed.options().dtype(at::kLong));
  popcount_into<1>(p, nullptr, out, 0);
  return out;
}

at::Tensor overlap_bits_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "overlap_bits");
  c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor out = at::zeros({2}, a.options().dtype(at::kLong));
  popcount_into<0>(ac, &bc, out, 0);
  popcount_into<1>(ac, &bc, out, 1);
  return out;
}

}  // namespace
}  // namespace bitmask
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("pack_bits", &lthfast::bitmask::pack_bits_cuda);
  m.impl("unpack_bits", &lthfast::bitmask::unpack_bits_cuda);
  m.impl("unpack_bits_into", &lthfast::bitmask::unpack_bits_into_cuda);
  m.impl("count_bits", &lthfast::bitmask::count_bits_cuda);
  m.impl("overlap_bits", &lthfast::bitmask::overlap_bits_cuda);
}
