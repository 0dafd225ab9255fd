// Chunked multi-tensor launching, shared by the CUDA kernels that walk many
// tensors in one launch (global threshold, fused masked optimizers).
//
// The host describes each tensor group (one tensor from each of N lists, same
// shape and memory layout: e.g. score/mask/out, or param/grad/exp_avg/mask) in a
// TensorGroup, cuts every group into chunks of `chunk_size` elements, and copies
// the descriptors, the chunk table and any small device state to the GPU in ONE
// asynchronous copy from pinned memory (DeviceUpload). A kernel then loops over
// chunks grid-stride (`for (c = blockIdx.x; c < n_chunks; c += gridDim.x)`), one
// block per chunk at a time. Everything is 64-bit indexed: a tensor may have more
// than 2^31 elements.
//
// A chunk is a range [start, start + chunk_size) of element indices. Kernels that
// only need every element once read it as a range of MEMORY offsets (valid for
// any non-overlapping and dense tensor: its elements fill [0, numel) of memory);
// kernels that need row-major LOGICAL order read it as a range of logical
// indices and map each to its memory offset with DenseLayout.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace lthfast {
namespace cuda {

constexpr int kMaxDims = 8;

// Memory layout of a non-overlapping, dense tensor, as a map from row-major
// logical index to memory offset. Size-1 dims are dropped and adjacent dims that
// are contiguous in memory relative to each other are merged, so a row-major
// tensor has ndim == 0 (offset == index) and channels_last NCHW has 3 dims.
struct DenseLayout {
  int32_t ndim;
  int32_t reserved;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims];
};

template <int N>
struct TensorGroup {
  void* ptr[N];        // nullptr for an absent tensor (e.g. no mask)
  int64_t numel;
  int8_t dtype[N];     // static_cast<int8_t>(at::ScalarType)
  DenseLayout layout;  // shared by all N tensors
};

struct ChunkRef {
  int64_t start;   // first element index of the chunk
  int64_t group;   // index into the TensorGroup table
};

// ---------------------------------------------------------------- host side

// Fills `out` from a non-overlapping and dense tensor; false when it needs more
// than kMaxDims dims after collapsing (make it contiguous first).
inline bool make_dense_layout(const at::Tensor& t, DenseLayout* out) {
  std::memset(out, 0, sizeof(DenseLayout));
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride), outermost first
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t size = t.size(d);
    if (size == 1) continue;
    const int64_t stride = t.stride(d);
    if (!dims.empty() && dims.back().second == size * stride) {
      dims.back() = {dims.back().first * size, stride};
    } else {
      dims.emplace_back(size, stride);
    }
  }
  if (dims.empty() || (dims.size() == 1 && dims[0].second == 1)) {
    out->ndim = 0;  // row-major
    return true;
  }
  if (dims.size() > static_cast<size_t>(kMaxDims)) return false;
  out->ndim = static_cast<int32_t>(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) {
    out->sizes[d] = dims[d].first;
    out->strides[d] = dims[d].second;
  }
  return true;
}

// The chunk table of groups with the given element counts (empty groups get no
// chunk).
inline std::vector<ChunkRef> make_chunks(const std::vector<int64_t>& numels, int64_t chunk_size) {
  TORCH_INTERNAL_ASSERT(chunk_size > 0);
  std::vector<ChunkRef> chunks;
  for (size_t g = 0; g < numels.size(); ++g) {
    for (int64_t s = 0; s < numels[g]; s += chunk_size) {
      chunks.push_back(ChunkRef{s, static_cast<int64_t>(g)});
    }
  }
  return chunks;
}

// Packs host data into one buffer and copies it to the device in a single
// asynchronous H2D copy (pinned staging, current stream; the caching host
// allocator keeps the staging block alive until the copy has run). `reserve`
// adds device-only scratch after the copied part (uninitialised). Offsets are
// 16-byte aligned.
class DeviceUpload {
 public:
  template <typename T>
  int64_t put(const T* src, int64_t count) {
    const int64_t off = align(static_cast<int64_t>(host_.size()));
    const int64_t bytes = count * static_cast<int64_t>(sizeof(T));
    host_.resize(static_cast<size_t>(off + bytes));
    if (bytes > 0) std::memcpy(host_.data() + off, src, static_cast<size_t>(bytes));
    return off;
  }
  int64_t put_zeros(int64_t bytes) {
    const int64_t off = align(static_cast<int64_t>(host_.size()));
    host_.resize(static_cast<size_t>(off + bytes), 0);
    return off;
  }
  // Device-only bytes; the returned offset is valid once upload() has run.
  int64_t reserve(int64_t bytes) {
    reserved_.push_back({bytes, 0});
    return static_cast<int64_t>(reserved_.size()) - 1;  // a handle for reserved_offset()
  }
  int64_t reserved_offset(int64_t handle) const { return reserved_[static_cast<size_t>(handle)].second; }

  // Returns the device buffer (keep it alive until the kernels are enqueued; the
  // caching allocator orders its reuse on the current stream).
  at::Tensor upload(const at::Device& device) {
    const int64_t copied = align(static_cast<int64_t>(host_.size()));
    int64_t total = copied;
    for (auto& r : reserved_) {
      r.second = total;
      total = align(total + r.first);
    }
    at::Tensor dev = at::empty({std::max<int64_t>(total, 1)},
                               at::TensorOptions().dtype(at::kByte).device(device));
    if (!host_.empty()) {
      at::Tensor pinned = at::empty({static_cast<int64_t>(host_.size())},
                                    at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      std::memcpy(pinned.data_ptr(), host_.data(), host_.size());
      dev.narrow(0, 0, static_cast<int64_t>(host_.size())).copy_(pinned, /*non_blocking=*/true);
    }
    return dev;
  }

 private:
  static int64_t align(int64_t x) { return (x + 15) & ~int64_t(15); }
  std::vector<uint8_t> host_;
  std::vector<std::pair<int64_t, int64_t>> reserved_;  // (bytes, offset)
};

// Grid for a chunk loop: enough blocks to fill the GPU, at most one per chunk,
// and enough that no block walks more than 2^31 elements (kernels may count per
// block in 32 bits).
inline int chunk_grid(int64_t n_chunks, int64_t chunk_size, int block_threads, int sm_count,
                      int max_threads_per_sm) {
  const int64_t per_sm = std::max(1, max_threads_per_sm / block_threads);
  int64_t grid = std::max<int64_t>(1, static_cast<int64_t>(sm_count) * per_sm);
  const int64_t max_chunks_per_block = std::max<int64_t>(1, (int64_t(1) << 31) / chunk_size);
  grid = std::max(grid, (n_chunks + max_chunks_per_block - 1) / max_chunks_per_block);
  grid = std::min(grid, std::max<int64_t>(n_chunks, 1));
  TORCH_CHECK(grid <= 0x7FFFFFFF, "lthfast: too many chunks (", n_chunks, ") for one launch");
  return static_cast<int>(grid);
}

// -------------------------------------------------------------- device side

#if defined(__CUDACC__)
// Memory offset of row-major logical index `idx` (layout held in registers by
// the caller: pass a local copy).
__device__ __forceinline__ int64_t logical_to_offset(const DenseLayout& l, int64_t idx) {
  if (l.ndim == 0) return idx;
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < l.ndim) {
      const int64_t q = idx / l.sizes[d];
      off += (idx - q * l.sizes[d]) * l.strides[d];
      idx = q;
    }
  }
  return off;
}

// The inverse: row-major logical index of memory offset `off`. In a dense,
// non-overlapping layout every dim's stride is the product of the sizes of the
// dims below it in memory, so its coordinate is (off / stride) % size.
__device__ __forceinline__ int64_t offset_to_logical(const DenseLayout& l, int64_t off) {
  if (l.ndim == 0) return off;
  int64_t idx = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d < l.ndim) idx = idx * l.sizes[d] + (off / l.strides[d]) % l.sizes[d];
  }
  return idx;
}
#endif

}  // namespace cuda
}  // namespace lthfast
