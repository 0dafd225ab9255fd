// CPU kernel of mask_counts: for every mask, how many entries are exactly 1 and
// how many are neither 0 nor 1. lthfast.prune needs both before re-pruning a
// model pruned in torch's format (float masks): the ones are the unpruned count,
// and any other value sends it to torch's slow path. One multi-threaded pass over
// the masks' bytes, no allocation (torch: three count_nonzero passes and a
// temporary `mask == 1`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/common/parallel_items.h"

namespace lthfast {
namespace threshold {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;

// Bit patterns: `one` is +1.0; an entry is 0 when its bits without the sign are 0.
template <typename bits_t>
struct Pattern {
  bits_t one, magnitude;
};

template <typename bits_t>
void count_bits_range(const bits_t* __restrict x, int64_t n, Pattern<bits_t> p, int64_t& ones,
                      int64_t& others) {
  uint32_t o = 0, z = 0;  // n <= 2^16
  for (int64_t j = 0; j < n; ++j) {
    const bits_t v = x[j];
    o += uint32_t(v == p.one);
    z += uint32_t((v & p.magnitude) == 0);
  }
  ones += o;
  others += n - o - z;
}

struct Item {
  const void* data;
  int64_t numel;
  int elem;  // bytes per entry: 1 (bool), 2, 4, 8
  bool is_bf16;
};

void count_item(const Item& it, int64_t begin, int64_t end, int64_t& ones, int64_t& others) {
  const int64_t n = end - begin;
  switch (it.elem) {
    case 1: {  // bool: 0 or 1
      const uint8_t* x = static_cast<const uint8_t*>(it.data) + begin;
      uint32_t o = 0;
      for (int64_t j = 0; j < n; ++j) o += uint32_t(x[j] != 0);
      ones += o;
      break;
    }
    case 2:
      count_bits_range(static_cast<const uint16_t*>(it.data) + begin, n,
                       it.is_bf16 ? Pattern<uint16_t>{0x3F80, 0x7FFF} : Pattern<uint16_t>{0x3C00, 0x7FFF},
                       ones, others);
      break;
    case 4:
      count_bits_range(static_cast<const uint32_t*>(it.data) + begin, n,
                       Pattern<uint32_t>{0x3F800000u, 0x7FFFFFFFu}, ones, others);
      break;
    default:
      count_bits_range(static_cast<const uint64_t*>(it.data) + begin, n,
                       Pattern<uint64_t>{0x3FF0000000000000ull, 0x7FFFFFFFFFFFFFFFull}, ones, others);
      break;
  }
}

at::Tensor mask_counts_cpu(at::TensorList masks) {
  const char* op = "mask_counts";
  std::vector<at::Tensor> keep;  // dense versions of the masks (a copy only for strided views)
  std::vector<Item> items;
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    TORCH_CHECK(m.defined(), op, ": masks[", i, "] is undefined");
    TORCH_CHECK(m.device().is_cpu(), op, ": masks[", i, "] is on ", m.device(), ", expected cpu");
    TORCH_CHECK(m.layout() == at::kStrided, op, ": masks[", i, "] is sparse; pass dense masks");
    const at::ScalarType t = m.scalar_type();
    TORCH_CHECK(t == at::kBool || t == at::kHalf || t == at::kBFloat16 || t == at::kFloat ||
                    t == at::kDouble,
                op, ": masks[", i, "] has dtype ", t, "; masks must be bool or float16, bfloat16, "
                "float32, float64");
    keep.push_back(m.is_non_overlapping_and_dense() ? m : m.contiguous());
    const at::Tensor& d = keep.back();
    items.push_back(Item{d.data_ptr(), d.numel(), static_cast<int>(d.element_size()),
                         t == at::kBFloat16});
  }
  struct Chunk {
    int64_t item, begin, end;
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < items.size(); ++i) {
    for (int64_t b = 0; b < items[i].numel; b += kChunk) {
      chunks.push_back({static_cast<int64_t>(i), b, std::min(items[i].numel, b + kChunk)});
    }
  }
  std::vector<int64_t> ones(chunks.size(), 0), others(chunks.size(), 0);
  parallel_items(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    count_item(items[chunks[c].item], chunks[c].begin, chunks[c].end, ones[c], others[c]);
  });
  at::Tensor out = at::zeros({static_cast<int64_t>(masks.size()), 2}, at::dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (size_t c = 0; c < chunks.size(); ++c) {
    o[2 * chunks[c].item] += ones[c];
    o[2 * chunks[c].item + 1] += others[c];
  }
  return out;
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("mask_counts", &lthfast::threshold::mask_counts_cpu);
}
