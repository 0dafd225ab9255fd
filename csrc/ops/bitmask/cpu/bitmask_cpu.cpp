// CPU kernels of the bitmask ops: bool masks <-> 1 bit per entry (uint8,
// row-major logical order, least significant bit first, trailing bits 0), and
// popcounts on packed data (kept counts and mask overlap without unpacking).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <array>
#include <cstdint>
#include <cstring>

#include "ops/bitmask/bitmask_check.h"

namespace lthfast {
namespace bitmask {
namespace {

constexpr int64_t kGrain = 1 << 15;  // packed bytes per parallel task

// 8 bool bytes (0/1, little-endian in x) -> one byte, byte i -> bit i. The
// multiplier moves bit 8i to bit 56+i; all partial products land on distinct
// bits, so nothing carries into the top byte.
inline uint8_t pack8(uint64_t x) {
  x &= 0x0101010101010101ULL;
  return static_cast<uint8_t>((x * 0x0102040810204080ULL) >> 56);
}

// byte -> 8 bool bytes, bit i -> byte i (little-endian).
const std::array<uint64_t, 256>& unpack_table() {
  static const std::array<uint64_t, 256> table = [] {
    std::array<uint64_t, 256> t{};
    for (int b = 0; b < 256; ++b) {
      uint64_t v = 0;
      for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
      t[b] = v;
    }
    return t;
  }();
  return table;
}

// Packs the n bool bytes at in.
void pack_bools(const uint8_t* in, int64_t n, uint8_t* o) {
  const int64_t full = n / 8;
  at::parallel_for(0, full, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint64_t x;
      std::memcpy(&x, in + 8 * i, 8);
      o[i] = pack8(x);
    }
  });
  if (full * 8 < n) {  // the last, partial byte: trailing bits stay 0
    uint64_t x = 0;
    std::memcpy(&x, in + 8 * full, n - 8 * full);
    o[full] = pack8(x);
  }
}

// Two packed bytes from 16 float bit patterns (bits_t wide), entry k in bit k:
// bit = in[k] != 0, i.e. any bit but the sign set, so -0.0 is 0 and a NaN is
// kept, as `mask != 0` says. With SSE2, 32- and 16-bit floats take an and, a
// compare and a saturating pack per 4 / 8 entries and one movemask per 16 (a
// scalar loop ran at half the read bandwidth: 39 ms vs ~16 ms on 59M floats,
// 2 threads; one movemask per 8 entries, 28 ms).
template <typename bits_t>
inline uint16_t pack16_floats(const bits_t* in) {
  constexpr bits_t magnitude = static_cast<bits_t>(~(bits_t(1) << (8 * sizeof(bits_t) - 1)));
#if defined(__SSE2__) && defined(__x86_64__)
  if constexpr (sizeof(bits_t) == 4 || sizeof(bits_t) == 2) {
    const __m128i zero = _mm_setzero_si128();
    auto is_zero = [&](int q) {  // all ones in the lanes whose entry is +-0
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in) + q);
      if constexpr (sizeof(bits_t) == 4) {
        return _mm_cmpeq_epi32(_mm_and_si128(x, _mm_set1_epi32(static_cast<int>(magnitude))), zero);
      } else {
        return _mm_cmpeq_epi16(_mm_and_si128(x, _mm_set1_epi16(static_cast<short>(magnitude))), zero);
      }
    };
    __m128i bytes;  // 16 lanes of 0 / -1, entry order
    if constexpr (sizeof(bits_t) == 4) {
      bytes = _mm_packs_epi16(_mm_packs_epi32(is_zero(0), is_zero(1)),
                              _mm_packs_epi32(is_zero(2), is_zero(3)));
    } else {
      bytes = _mm_packs_epi16(is_zero(0), is_zero(1));
    }
    return static_cast<uint16_t>(~_mm_movemask_epi8(bytes));
  }
#endif
  uint16_t v = 0;
  for (int k = 0; k < 16; ++k) v |= static_cast<uint16_t>((in[k] & magnitude) != 0) << k;
  return v;
}

// Packs the n floats at in (as their bit patterns): no bool copy of the mask.
template <typename bits_t>
void pack_floats(const bits_t* in, int64_t n, uint8_t* o) {
  auto store = [&](int64_t i, uint16_t v, int64_t nbytes) {  // little-endian: byte i first
    o[2 * i] = static_cast<uint8_t>(v);
    if (nbytes > 1) o[2 * i + 1] = static_cast<uint8_t>(v >> 8);
  };
  const int64_t full = n / 16;
  at::parallel_for(0, full, kGrain / 2, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store(i, pack16_floats(in + 16 * i), 2);
  });
  const int64_t rest = n - 16 * full;
  if (rest > 0) {  // the last 1-15 entries through a zero-padded copy: trailing bits 0
    bits_t tail[16] = {};
    std::memcpy(tail, in + 16 * full, rest * sizeof(bits_t));
    store(full, pack16_floats(tail), (rest + 7) / 8);
  }
}

at::Tensor pack_bits_cpu(const at::Tensor& mask) {
  check_pack_input(mask, "pack_bits");
  const int64_t n = mask.numel();
  const int64_t nbytes = packed_bytes(n);
  at::Tensor out = at::empty({nbytes}, mask.options().dtype(at::kByte));
  if (n == 0) return out;
  // Row-major logical order whatever the layout: a non-contiguous mask
  // (channels_last, a slice) is walked through a row-major copy.
  const at::Tensor src = mask.contiguous();
  uint8_t* o = out.data_ptr<uint8_t>();
  const void* in = src.data_ptr();
  switch (c10::elementSize(src.scalar_type())) {
    case 1:  // bool: the only 1-byte dtype check_pack_input lets through
      pack_bools(static_cast<const uint8_t*>(in), n, o);
      break;
    case 2:
      pack_floats(static_cast<const uint16_t*>(in), n, o);
      break;
    case 4:
      pack_floats(static_cast<const uint32_t*>(in), n, o);
      break;
    default:
      TORCH_CHECK(src.element_size() == 8, "pack_bits: unexpected dtype ", src.scalar_type());
      pack_floats(static_cast<const uint64_t*>(in), n, o);
  }
  return out;
}

// Unpacks n entries of packed into the contiguous bool buffer dst.
void unpack_to(const at::Tensor& packed, int64_t n, bool* dst) {
  if (n == 0) return;
  const at::Tensor p = packed.contiguous();
  const uint8_t* in = p.data_ptr<uint8_t>();
  uint8_t* o = reinterpret_cast<uint8_t*>(dst);
  const auto& table = unpack_table();
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
