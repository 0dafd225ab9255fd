// zero_pruned_(self, packed): zeroes the entries of `self` whose bit in `packed` is 0
// (pack_bits' layout: row-major logical order, least significant bit first), the
// kept entries untouched bit for bit. Ticket.apply uses it to zero a model's pruned
// weights straight from the ticket's bits: no bool mask, one pass over the weights
// (torch's masked_fill_ with a bool mask ran at ~3x the memory traffic on 30M fp32
// weights, 2 threads, an AVX2 host).
//   CPU: each packed byte selects 8 all-ones / all-zeros words of the element's
//     width from a table, ANDed into the 8 entries (a NaN, inf or -0.0 that is
//     pruned becomes +0.0, as masked_fill_(~mask, 0) writes); a byte of all ones
//     is skipped. Non-contiguous tensors go through the composite below.
//   Other devices (CUDA): unpack_bits, then masked_fill_ of the pruned entries.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "ops/bitmask/bitmask_check.h"

namespace lthfast {
namespace bitmask {
namespace {

constexpr int64_t kGrainBytes = 1 << 14;  // packed bytes per parallel task

void check_zero_pruned(const at::Tensor& self, const at::Tensor& packed) {
  const char* op = "zero_pruned_";
  TORCH_CHECK(self.layout() == at::kStrided, op, ": self has layout ", self.layout(),
              "; only dense (strided) tensors are supported");
  const at::ScalarType t = self.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   op, ": self has dtype ", t, "; it must be float32/float64/float16/bfloat16");
  check_unpack(packed, self.sizes(), op);
  TORCH_CHECK_VALUE(self.device() == packed.device(), op, ": self is on ", self.device(),
                    " but packed is on ", packed.device());
  // an expanded tensor: zeroing one pruned entry would zero the kept ones sharing its memory
  TORCH_CHECK(self.numel() == 0 || at::has_internal_overlap(self) != at::MemOverlap::Yes, op,
              ": self has entries that share memory (e.g. an expanded tensor); pass a tensor "
              "of its own");
}

void zero_pruned_composite(at::Tensor& self, const at::Tensor& packed) {
  static const auto unpack_op = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("lthfast::unpack_bits", "")
                                    .typed<at::Tensor(const at::Tensor&, at::IntArrayRef)>();
  check_zero_pruned(self, packed);
  self.masked_fill_(unpack_op.call(packed, self.sizes()).logical_not_(), 0);
}

// keep_words<W>()[b][j]: all ones when bit j of b is set, else 0.
template <typename W>
const std::array<std::array<W, 8>, 256>& keep_words() {
  static const auto table = [] {
    std::array<std::array<W, 8>, 256> t{};
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) t[b][j] = ((b >> j) & 1) ? static_cast<W>(~W(0)) : W(0);
    return t;
  }();
  return table;
}

template <typename W>
void zero_words(W* w, const uint8_t* bits, int64_t n) {
  const auto& table = keep_words<W>();
  const int64_t full = n / 8;
  at::parallel_for(0, full, kGrainBytes, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t b = bits[i];
      if (b == 0xFF) continue;  // all kept: no write
      W* p = w + 8 * i;
      for (int j = 0; j < 8; ++j) p[j] &= table[b][j];
    }
  });
  for (int64_t k = 8 * full; k < n; ++k) w[k] &= table[bits[full]][k - 8 * full];
}

void zero_pruned_cpu(at::Tensor& self, const at::Tensor& packed) {
  if (!self.is_contiguous()) {  // channels_last or a view: bits are in row-major order
    zero_pruned_composite(self, packed);
    return;
  }
  check_zero_pruned(self, packed);
  const int64_t n = self.numel();
  if (n == 0) return;
  const at::Tensor p = packed.contiguous();
  const uint8_t* bits = p.data_ptr<uint8_t>();
  void* data = self.data_ptr();
  switch (self.element_size()) {
    case 2: zero_words(static_cast<uint16_t*>(data), bits, n); break;
    case 4: zero_words(static_cast<uint32_t*>(data), bits, n); break;
    default: zero_words(static_cast<uint64_t*>(data), bits, n); break;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CPU, m) { m.impl("zero_pruned_", &zero_pruned_cpu); }

TORCH_LIBRARY_IMPL(lthfast, CompositeExplicitAutograd, m) {
  m.impl("zero_pruned_", &zero_pruned_composite);
}

}  // namespace bitmask
}  // namespace lthfast
