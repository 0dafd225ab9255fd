// CPU kernels of the bitmask ops: bool (or float) masks <-> 1 bit per entry (uint8,
// row-major logical order, least significant bit first, trailing bits 0), and
// popcounts on packed data (kept counts and mask overlap without unpacking).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "ops/bitmask/bitmask_check.h"
#include "ops/bitmask/cpu/pack_cpu.h"

namespace lthfast {
namespace bitmask {
namespace {

constexpr int64_t kGrain = 1 << 15;  // packed bytes per parallel task

at::Tensor pack_bits_cpu(const at::Tensor& mask) {
  check_pack_input(mask, "pack_bits");
  const int64_t n = mask.numel();
  const int64_t nbytes = packed_bytes(n);
  at::Tensor out = at::empty({nbytes}, mask.options().dtype(at::kByte));
  if (n == 0) return out;
  // Row-major logical order whatever the layout: a non-contiguous mask
  // (channels_last, a slice) is walked through a row-major copy.
  const at::Tensor src = mask.contiguous();
  const void* in = src.data_ptr();
  const int elem = static_cast<int>(src.element_size());
  uint8_t* o = out.data_ptr<uint8_t>();
  const int64_t groups = (n + 15) / 16;  // tasks split at whole 16-entry groups
  at::parallel_for(0, groups, kGrain / 2, [&](int64_t b, int64_t e) {
    pack_range(in, elem, 16 * b, std::min(n, 16 * e), o);
  });
  return out;
}

// Unpacks n entries of packed into the contiguous bool buffer dst.
void unpack_to(const at::Tensor& packed, int64_t n, bool* dst) {
  if (n == 0) return;
  const at::Tensor p = packed.contiguous();
  const uint8_t* in = p.data_ptr<uint8_t>();
  uint8_t* o = reinterpret_cast<uint8_t*>(dst);
  const auto& table = bit_spread_table();
  const int64_t full = n / 8;
  at::parallel_for(0, full, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(o + 8 * i, &table[in[i]], 8);
  });
  if (full * 8 < n) std::memcpy(o + 8 * full, &table[in[full]], n - 8 * full);
}

at::Tensor unpack_bits_cpu(const at::Tensor& packed, at::IntArrayRef shape) {
  const int64_t n = check_unpack(packed, shape, "unpack_bits");
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kBool));
  unpack_to(packed, n, out.data_ptr<bool>());
  return out;
}

void unpack_bits_into_cpu(const at::Tensor& packed, at::Tensor& out) {
  check_mask(out, "unpack_bits_into");
  const int64_t n = check_unpack(packed, out.sizes(), "unpack_bits_into");
  TORCH_CHECK(out.device() == packed.device(), "unpack_bits_into: out is on ", out.device(),
              " but packed is on ", packed.device());
  if (out.is_contiguous()) {
    unpack_to(packed, n, out.data_ptr<bool>());
  } else {  // channels_last or a view: unpack row-major, then scatter into out's layout
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    unpack_to(packed, n, tmp.data_ptr<bool>());
    out.copy_(tmp);
  }
}

// Popcount of a[i] & b[i] (op 0), a[i] | b[i] (op 1) or a[i] (b == nullptr) over
// all bytes, 8 bytes at a time.
template <int op>
int64_t popcount(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  auto word = [&](int64_t i, int64_t len) {
    uint64_t x = 0, y = 0;
    std::memcpy(&x, a + i, len);
    if (b != nullptr) std::memcpy(&y, b + i, len);
    return static_cast<int64_t>(__builtin_popcountll(op == 0 ? (x & y) : (x | y)));
  };
  const int64_t words = nbytes / 8;
  int64_t total = at::parallel_reduce(
      int64_t(0), words, kGrain / 8, int64_t(0),
      [&](int64_t wb, int64_t we, int64_t acc) {
        for (int64_t w = wb; w < we; ++w) acc += word(8 * w, 8);
        return acc;
      },
      [](int64_t x, int64_t y) { return x + y; });
  if (words * 8 < nbytes) total += word(8 * words, nbytes - 8 * words);
  return total;
}

at::Tensor count_bits_cpu(const at::Tensor& packed) {
  check_packed(packed, "count_bits");
  const at::Tensor p = packed.contiguous();
  const int64_t c = popcount<1>(p.data_ptr<uint8_t>(), nullptr, p.numel());
  return at::scalar_tensor(c, packed.options().dtype(at::kLong));
}

at::Tensor overlap_bits_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "overlap_bits");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const uint8_t* pa = ac.data_ptr<uint8_t>();
  const uint8_t* pb = bc.data_ptr<uint8_t>();
  at::Tensor out = at::empty({2}, a.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  o[0] = popcount<0>(pa, pb, ac.numel());
  o[1] = popcount<1>(pa, pb, ac.numel());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("unpack_bits_into", &unpack_bits_into_cpu);
  m.impl("count_bits", &count_bits_cpu);
  m.impl("overlap_bits", &overlap_bits_cpu);
}

}  // namespace bitmask
}  // namespace lthfast
