// The fp32 blocks of the range pass (range_select_cpu.h) in explicit 4-lane
// vectors (GCC/Clang vector extensions: SSE2 on x86-64, NEON on arm64).
//
// Why: the scalar loop of count_collect_typed is meant to vectorise, but GCC 12
// vectorised only some of its instantiations; the count-only ones (the
// global_threshold op, i.e. lthfast.prune) ran one entry at a time with setcc
// per compare: ~70 ms for keypointrcnn's 59M round-2 keys on 2 threads, where
// reading them takes ~10-16 ms. Here every compare is a vector op.
//
// Same results as the scalar loop, entry for entry: a block of 16 keys gives its
// eligible count below lo, its mask codes (kWrite) and a 16-bit set of the
// eligible keys inside [lo, hi], which are then collected one by one (the scalar
// loop walked all 16 keys of such a block).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "ops/threshold/cpu/keys_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {
namespace vec {

#if defined(__GNUC__)
#define LTHFAST_THRESHOLD_VEC 1
// 4 lanes: one SSE2 / NEON register. CPUs with AVX2 run the 8-lane version in
// count_collect_avx2.h instead (written with intrinsics in a target("avx2") region:
// an earlier target_clones attempt on these 16-byte vector types had GCC spill the
// 32-byte vectors of its baseline clone to the stack, and gained nothing).
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint8_t v4b __attribute__((vector_size(4)));

inline v4i splat(int32_t x) { return v4i{x, x, x, x}; }

inline v4i load4(const void* p) {
  v4i v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Eligibility of keys j + 4g .. j + 4g + 3 as lanes of -1 (eligible) or 0, for
// each reader of keys_cpu.h. `bits16` holds the block's 16 packed bits.
inline v4i ok4(NoMask, int64_t, int, uint32_t) { return splat(-1); }
inline v4i ok4(PackedBits, int64_t, int g, uint32_t bits16) {
  const v4i lane = v4i{1, 2, 4, 8} << (4 * g);
  return (splat(static_cast<int32_t>(bits16)) & lane) != 0;
}
inline v4i ok4(const uint8_t* m, int64_t j, int g, uint32_t) {
  v4b b;
  std::memcpy(&b, m + j + 4 * g, sizeof(b));
  return __builtin_convertvector(b, v4i) != 0;
}
inline v4i ok4(const float* m, int64_t j, int g, uint32_t) {
  // m != 0 on the bits: -0.0 is not eligible, NaN is (as `m[j] != 0.f`)
  return (load4(m + j + 4 * g) & splat(0x7FFFFFFF)) != 0;
}

template <typename M>
inline uint32_t block_bits(M m, int64_t j) {
  if constexpr (std::is_same_v<M, PackedBits>) {
    return uint32_t(m.bits[j >> 3]) | (uint32_t(m.bits[(j >> 3) + 1]) << 8);
  } else {
    return 0;
  }
}

// The eligibility of a block's 16 keys, ok[g] for keys j + 4g ... GCC lowers the
// byte <-> int conversions of the vector extensions to scalar code on SSE2 (the
// bool-mask pass ran slower than the auto-vectorised loop before it), so bool masks
// take one 16-byte compare and unpacks there.
template <typename M>
inline void block_ok(M m, int64_t j, uint32_t bits16, v4i ok[4]) {
#if defined(__SSE2__) && defined(__x86_64__)
  if constexpr (std::is_same_v<M, const uint8_t*>) {
    const __m128i no = _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + j)),
                                      _mm_setzero_si128());  // 0xFF: not eligible
    const __m128i lo = _mm_unpacklo_epi8(no, no), hi = _mm_unpackhi_epi8(no, no);
    ok[0] = ~reinterpret_cast<v4i>(_mm_unpacklo_epi16(lo, lo));
    ok[1] = ~reinterpret_cast<v4i>(_mm_unpackhi_epi16(lo, lo));
    ok[2] = ~reinterpret_cast<v4i>(_mm_unpacklo_epi16(hi, hi));
    ok[3] = ~reinterpret_cast<v4i>(_mm_unpackhi_epi16(hi, hi));
    return;
  }
#endif
  for (int g = 0; g < 4; ++g) ok[g] = ok4(m, j, g, bits16);
}

// codes[0..16) = the 0/1 lanes of keep[0..4), one byte each.
inline void store_codes(uint8_t* codes, const v4i keep[4]) {
#if defined(__SSE2__) && defined(__x86_64__)
  const __m128i a = _mm_packs_epi32(reinterpret_cast<__m128i>(keep[0]), reinterpret_cast<__m128i>(keep[1]));
  const __m128i b = _mm_packs_epi32(reinterpret_cast<__m128i>(keep[2]), reinterpret_cast<__m128i>(keep[3]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm_packus_epi16(a, b));
#else
  for (int g = 0; g < 4; ++g) {
    const v4b c = __builtin_convertvector(keep[g], v4b);
    std::memcpy(codes + 4 * g, &c, sizeof(c));
  }
#endif
}

// The whole blocks of 16 fp32 keys in x[begin, end) (begin a multiple of 8 for
// packed bits), as count_collect_typed's block loop: the eligible keys below lo
// are counted into *below, those inside [lo, hi] stored at out[0..n) (with kWrite
// their offsets from begin at pos) and n returned; with kWrite codes[j] = 1 for
// eligible keys above hi, else 0. *done is where the blocks ended (the caller
// does the tail). kRaw: keys without NaN canonicalisation (raw_key32).
template <bool kWrite, bool kRaw, typename M>
__attribute__((noinline)) int64_t
fp32_blocks(const float* __restrict x, M m, int64_t begin, int64_t end, int32_t lo, int32_t hi,
            uint32_t* __restrict out, uint16_t* __restrict pos, uint8_t* __restrict codes,
            int64_t* below, int64_t* done) {
  const v4i vlo = splat(lo), vhi = splat(hi);
  v4i nbelow = splat(0);  // -1 per eligible key below lo; a chunk fits 32 bits
  int64_t n = 0, j = begin;
  for (; j + 16 <= end; j += 16) {
    const uint32_t bits16 = block_bits(m, j);
    v4i ok_g[4], keep[4];
    block_ok(m, j, bits16, ok_g);
    v4i inside = splat(0);  // lane l: bit 4g + l for key j + 4g + l
    for (int g = 0; g < 4; ++g) {
      v4i key = load4(x + j + 4 * g) & splat(0x7FFFFFFF);
      if constexpr (!kRaw) {
        const v4i nan = key > splat(static_cast<int32_t>(kInfKey32));
        key = (key & ~nan) | (splat(static_cast<int32_t>(kNanKey32)) & nan);
      }
      const v4i ok = ok_g[g];
      const v4i lt = key < vlo;
      nbelow += ok & lt;
      inside |= ok & ~lt & (key <= vhi) & (v4i{1, 2, 4, 8} << (4 * g));
      if constexpr (kWrite) keep[g] = ok & (key > vhi) & splat(1);
    }
    if constexpr (kWrite) store_codes(codes + j, keep);
    // ~1 block in 10 holds inside keys: only those are visited, in order
    for (uint32_t in = static_cast<uint32_t>(inside[0] | inside[1] | inside[2] | inside[3]); in;
         in &= in - 1) {
      const int64_t i = __builtin_ctz(in);
      out[n] = fast_key<uint32_t>(x[j + i]);
      if constexpr (kWrite) pos[n] = static_cast<uint16_t>(j + i - begin);
      ++n;
    }
  }
  int64_t b = 0;
  for (int l = 0; l < 4; ++l) b -= nbelow[l];
  *below += b;
  *done = j;
  return n;
}
#endif  // __GNUC__

}  // namespace vec
}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
