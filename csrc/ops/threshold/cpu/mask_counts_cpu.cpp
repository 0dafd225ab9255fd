// CPU kernel of mask_counts: for every mask, how many entries are exactly 1 and
// how many are neither 0 nor 1. lthfast.prune needs both before re-pruning a
// model pruned in torch's format (float masks): the ones are the unpruned count,
// and any other value sends it to torch's slow path. One multi-threaded pass over
// the masks' bytes, no allocation (torch: three count_nonzero passes and a
// temporary `mask == 1`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/bitmask/cpu/pack_cpu.h"
#include "ops/common/parallel_items.h"
#include "ops/threshold/mask_counts_common.h"

namespace lthfast {
namespace threshold {
namespace {

template <typename bits_t>
void count_bits_range(const bits_t* __restrict x, int64_t n, const MaskBits& b, int64_t& ones,
                      int64_t& others) {
  const bits_t one = static_cast<bits_t>(b.one), magnitude = static_cast<bits_t>(b.magnitude);
  uint32_t o = 0, z = 0;  // n <= kCountChunk
  for (int64_t j = 0; j < n; ++j) {
    const bits_t v = x[j];
    o += uint32_t(v == one);
    z += uint32_t((v & magnitude) == 0);
  }
  ones += o;
  others += n - o - z;
}

// Nonzero bytes of x[0, n): a bool mask's kept count. With SSE2, 16 bytes per step
// as min(byte, 1) summed by psadbw; the plain loop widened every byte to 32 bits and
// ran at ~12 GB/s, a third of what reading the bytes takes on the build machine.
int64_t count_nonzero_bytes(const uint8_t* __restrict x, int64_t n) {
  int64_t j = 0, total = 0;
#if defined(__SSE2__) && defined(__x86_64__)
  const __m128i one = _mm_set1_epi8(1), zero = _mm_setzero_si128();
  __m128i acc0 = zero, acc1 = zero;
  for (; j + 32 <= n; j += 32) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j + 16));
    acc0 = _mm_add_epi64(acc0, _mm_sad_epu8(_mm_min_epu8(a, one), zero));
    acc1 = _mm_add_epi64(acc1, _mm_sad_epu8(_mm_min_epu8(b, one), zero));
  }
  const __m128i acc = _mm_add_epi64(acc0, acc1);
  total = _mm_cvtsi128_si64(acc) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
  uint32_t o = 0;
  for (; j < n; ++j) o += uint32_t(x[j] != 0);
  return total + o;
}

// fp32 masks, counted and (bits != nullptr) packed in one SSE2 loop: per 4 entries
// a compare with +1.0 and one with +-0 (lanes count down), and per 16 the bits
// from pack16_floats while the entries are in L1. The separate count loop did not
// vectorise (GCC 12) and the pack read the masks again afterwards: 23 ms for
// keypointrcnn's 59M entries on 2 threads, where reading them takes ~10-16 ms.
// Returns false (nothing done) where SSE2 is not there.
bool count_pack_fp32(const uint32_t* __restrict x, int64_t begin, int64_t end, int64_t& ones,
                     int64_t& others, uint8_t* __restrict bits) {
#if defined(__SSE2__) && defined(__x86_64__)
  const __m128i one = _mm_set1_epi32(0x3F800000), mag = _mm_set1_epi32(0x7FFFFFFF);
  const __m128i zero = _mm_setzero_si128();
  __m128i n_one = zero, n_zero = zero;  // per lane, counting down; a chunk fits 32 bits
  int64_t j = begin;
  for (; j + 16 <= end; j += 16) {
    for (int q = 0; q < 4; ++q) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j) + q);
      n_zero = _mm_add_epi32(n_zero, _mm_cmpeq_epi32(_mm_and_si128(v, mag), zero));
      n_one = _mm_add_epi32(n_one, _mm_cmpeq_epi32(v, one));
    }
    if (bits) {
      const uint16_t b = bitmask::pack16_floats(x + j);
      bits[j / 8] = static_cast<uint8_t>(b);
      bits[j / 8 + 1] = static_cast<uint8_t>(b >> 8);
    }
  }
  alignas(16) int32_t lanes[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(lanes), n_one);
  _mm_store_si128(reinterpret_cast<__m128i*>(lanes + 4), n_zero);
  int64_t o = -(int64_t(lanes[0]) + lanes[1] + lanes[2] + lanes[3]);
  int64_t zs = -(int64_t(lanes[4]) + lanes[5] + lanes[6] + lanes[7]);
  for (int64_t t = j; t < end; ++t) {
    o += x[t] == 0x3F800000u;
    zs += (x[t] & 0x7FFFFFFFu) == 0;
  }
  if (bits && j < end) bitmask::pack_range(x, 4, j, end, bits);
  ones += o;
  others += (end - begin) - o - zs;
  return true;
#else
  (void)x, (void)begin, (void)end, (void)ones, (void)others, (void)bits;
  return false;
#endif
}

struct Item {
  const void* data;
  int64_t numel;
  MaskBits bits;
};

void count_item(const Item& it, int64_t begin, int64_t end, int64_t& ones, int64_t& others) {
  const int64_t n = end - begin;
  switch (it.bits.bytes) {
    case 1: {  // bool: 0 or 1
      ones += count_nonzero_bytes(static_cast<const uint8_t*>(it.data) + begin, n);
      break;
    }
    case 2:
      count_bits_range(static_cast<const uint16_t*>(it.data) + begin, n, it.bits, ones, others);
      break;
    case 4:
      count_bits_range(static_cast<const uint32_t*>(it.data) + begin, n, it.bits, ones, others);
      break;
    default:
      count_bits_range(static_cast<const uint64_t*>(it.data) + begin, n, it.bits, ones, others);
      break;
  }
}

static_assert(kCountChunk % 16 == 0, "pack_range starts at whole 16-entry groups");

// mask_counts, and with `packed` each mask's bits too (from the same chunk, while it
// is in cache: one read of the masks).
at::Tensor counts_cpu(at::TensorList masks, const char* op, std::vector<at::Tensor>* packed) {
  std::vector<at::Tensor> keep;  // dense versions of the masks (a copy only for strided views)
  std::vector<Item> items;
  std::vector<uint8_t*> bits;  // where each mask's bits go in the pass; nullptr: packed after it
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    check_count_mask(m, i, at::Device(at::kCPU), op);
    keep.push_back(m.is_non_overlapping_and_dense() ? m : m.contiguous());
    const at::Tensor& d = keep.back();
    items.push_back(Item{d.data_ptr(), d.numel(), mask_bits(d.scalar_type())});
    if (packed) {
      packed->push_back(at::empty({(d.numel() + 7) / 8}, at::dtype(at::kByte)));
      // packing walks row-major order: in the pass only when memory order is that
      bits.push_back(d.is_contiguous() ? packed->back().data_ptr<uint8_t>() : nullptr);
    }
  }
  struct Chunk {
    int64_t item, begin, end;
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < items.size(); ++i) {
    for (int64_t b = 0; b < items[i].numel; b += kCountChunk) {
      chunks.push_back({static_cast<int64_t>(i), b, std::min(items[i].numel, b + kCountChunk)});
    }
  }
  std::vector<int64_t> ones(chunks.size(), 0), others(chunks.size(), 0);
  parallel_items(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[c];
    const Item& it = items[ch.item];
    if (it.bits.bytes == 4 &&
        count_pack_fp32(static_cast<const uint32_t*>(it.data), ch.begin, ch.end, ones[c], others[c],
                        packed ? bits[ch.item] : nullptr)) {
      return;  // (a permuted mask's bits: nullptr, packed after the pass in row-major order)
    }
    count_item(it, ch.begin, ch.end, ones[c], others[c]);
    if (packed && bits[ch.item]) {
      bitmask::pack_range(it.data, it.bits.bytes, ch.begin, ch.end, bits[ch.item]);
    }
  });
  // A channels_last (or otherwise permuted) mask: packed through a row-major copy,
  // one mask at a time, so the copies never add up to more than the largest mask.
  for (size_t i = 0; packed && i < items.size(); ++i) {
    if (bits[i] != nullptr) continue;
    const at::Tensor rm = keep[i].contiguous();
    keep[i] = at::Tensor();
    const int64_t n = rm.numel();
    uint8_t* out = (*packed)[i].data_ptr<uint8_t>();
    at::parallel_for(0, (n + 15) / 16, kCountChunk / 16, [&](int64_t b, int64_t e) {
      bitmask::pack_range(rm.data_ptr(), static_cast<int>(rm.element_size()), 16 * b,
                          std::min(n, 16 * e), out);
    });
  }
  at::Tensor out = at::zeros({static_cast<int64_t>(masks.size()), 2}, at::dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (size_t c = 0; c < chunks.size(); ++c) {
    o[2 * chunks[c].item] += ones[c];
    o[2 * chunks[c].item + 1] += others[c];
  }
  return out;
}

at::Tensor mask_counts_cpu(at::TensorList masks) {
  return counts_cpu(masks, "mask_counts", nullptr);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mask_counts_packed_cpu(at::TensorList masks) {
  std::vector<at::Tensor> packed;
  at::Tensor counts = counts_cpu(masks, "mask_counts_packed", &packed);
  return {counts, packed};
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("mask_counts", &lthfast::threshold::mask_counts_cpu);
  m.impl("mask_counts_packed", &lthfast::threshold::mask_counts_packed_cpu);
}
