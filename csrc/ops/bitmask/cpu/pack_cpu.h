// The CPU packing of mask entries into bits (entry k of a group in bit k, least
// significant first), shared by pack_bits and mask_counts_packed, and the table
// that spreads bits back to bytes (unpack_bits, the threshold kernels' packed
// eligibility masks).
#pragma once
#include <array>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace lthfast {
namespace bitmask {

// 8 bool bytes (little-endian in x) -> one byte, byte i -> bit i. A byte is True
// when nonzero (a bool tensor may view bytes other than 0/1, and the other mask
// kernels read any nonzero byte as True): the shifts OR each byte's 8 bits into
// its bit 0 (bit 0 of a byte only ever takes bits of the same byte). The
// multiplier then moves bit 8i to bit 56+i; all partial products land on
// distinct bits, so nothing carries into the top byte.
inline uint8_t pack8(uint64_t x) {
  x |= x >> 4;
  x |= x >> 2;
  x |= x >> 1;
  x &= 0x0101010101010101ULL;
  return static_cast<uint8_t>((x * 0x0102040810204080ULL) >> 56);
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

// Byte b -> 8 bytes holding its bits: bit i -> byte i (0 or 1, little-endian).
inline const std::array<uint64_t, 256>& bit_spread_table() {
  static const std::array<uint64_t, 256> table = [] {
    std::array<uint64_t, 256> t{};
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 8; ++i) t[b] |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
    }
    return t;
  }();
  return table;
}

// Packs entries [begin, end) of the n-entry mask at data (elem_bytes per entry:
// 1 = bool, else a float's bit pattern) into out + begin / 8. begin is a multiple
// of 16; end is too, or n (the last byte's trailing bits are then 0).
inline void pack_range(const void* data, int elem_bytes, int64_t begin, int64_t end, uint8_t* out) {
  auto run = [&](auto tag) {
    using bits_t = decltype(tag);
    const bits_t* in = static_cast<const bits_t*>(data);
    int64_t j = begin;
    for (; j + 16 <= end; j += 16) {
      const uint16_t v = pack16_floats(in + j);
      out[j / 8] = static_cast<uint8_t>(v);
      out[j / 8 + 1] = static_cast<uint8_t>(v >> 8);
    }
    if (j < end) {  // 1-15 entries through a zero-padded copy
      bits_t tail[16] = {};
      std::memcpy(tail, in + j, (end - j) * sizeof(bits_t));
      const uint16_t v = pack16_floats(tail);
      out[j / 8] = static_cast<uint8_t>(v);
      if (end - j > 8) out[j / 8 + 1] = static_cast<uint8_t>(v >> 8);
    }
  };
  if (elem_bytes == 1) {
    const uint8_t* in = static_cast<const uint8_t*>(data);
    int64_t j = begin;
    for (; j + 8 <= end; j += 8) {
      uint64_t x;
      std::memcpy(&x, in + j, 8);
      out[j / 8] = pack8(x);
    }
    if (j < end) {
      uint64_t x = 0;
      std::memcpy(&x, in + j, end - j);
      out[j / 8] = pack8(x);
    }
  } else if (elem_bytes == 2) {
    run(uint16_t{});
  } else if (elem_bytes == 4) {
    run(uint32_t{});
  } else {
    run(uint64_t{});
  }
}

}  // namespace bitmask
}  // namespace lthfast
