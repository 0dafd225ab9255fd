// The fp32 blocks of the range pass (count_collect_vec.h) in 8-lane AVX2
// vectors, for CPUs that have AVX2 (picked at run time, see range_isa()).
//
// Why: global_threshold with the 4-lane pass took 28-32 ms for keypointrcnn's 59M
// round-2 keys on 2 threads (42-57 ms on one), where reading them takes ~13 ms (17-20
// ms): it was bound by instructions as much as by memory. Per block of 16 keys this
// version spends about half the instructions: two 8-lane groups, the keys inside
// the range taken as movemask bits (no per-lane bit constants and horizontal OR),
// the mask codes from movemask bits through the bit-spread table. Measured (AMD
// EPYC, interleaved in one process): 29.8 -> 25.5 ms on 2 threads, 42 -> 37 ms on
// one; the loads now stall on memory. A software prefetch 256 or 1024 keys ahead
// gained nothing.
//
// Same results as fp32_blocks, entry for entry (tests run both: cap it with
// lthfast._C._threshold_cpu_isa("base")).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LTHFAST_THRESHOLD_AVX2 1
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "ops/bitmask/cpu/pack_cpu.h"
#include "ops/threshold/cpu/count_collect_vec.h"
#include "ops/threshold/cpu/keys_cpu.h"

namespace lthfast {
namespace threshold {
namespace cpu {
namespace avx2 {

#pragma GCC push_options
#pragma GCC target("avx2")

// Eligibility of keys j + 8h .. j + 8h + 7 as lanes of -1 (eligible) or 0.
inline __m256i ok8(NoMask, int64_t, int, uint32_t) { return _mm256_set1_epi32(-1); }
inline __m256i ok8(PackedBits, int64_t, int h, uint32_t bits16) {
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_set1_epi32(static_cast<int32_t>((bits16 >> (8 * h)) & 0xFFu));
  return _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane);
}
inline __m256i ok8(const uint8_t* m, int64_t j, int h, uint32_t) {
  // bool bytes: 0 -> 0, anything else -> -1
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + j + 8 * h));
  const __m256i w = _mm256_cvtepu8_epi32(b);
  return _mm256_xor_si256(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
}
inline __m256i ok8(const float* m, int64_t j, int h, uint32_t) {
  // m != 0 on the bits: -0.0 is not eligible, NaN is (as `m[j] != 0.f`)
  const __m256i v = _mm256_and_si256(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + j + 8 * h)),
      _mm256_set1_epi32(0x7FFFFFFF));
  return _mm256_xor_si256(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
}

inline uint32_t movemask8(__m256i v) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}

// As vec::fp32_blocks (same arguments, same results).
template <bool kWrite, bool kRaw, typename M>
__attribute__((noinline)) int64_t
fp32_blocks(const float* __restrict x, M m, int64_t begin, int64_t end, int32_t lo, int32_t hi,
            uint32_t* __restrict out, uint16_t* __restrict pos, uint8_t* __restrict codes,
            int64_t* below, int64_t* done) {
  const __m256i vlo = _mm256_set1_epi32(lo), vhi = _mm256_set1_epi32(hi);
  const __m256i abs_bits = _mm256_set1_epi32(0x7FFFFFFF);
  const uint64_t* spread = kWrite ? bitmask::bit_spread_table().data() : nullptr;
  __m256i nbelow = _mm256_setzero_si256();  // -1 per eligible key below lo; a chunk fits 32 bits
  int64_t n = 0, j = begin;
  for (; j + 16 <= end; j += 16) {
    const uint32_t bits16 = vec::block_bits(m, j);
    uint32_t inside = 0, keep = 0;  // bit i: key j + i
    for (int h = 0; h < 2; ++h) {
      __m256i key = _mm256_and_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j + 8 * h)), abs_bits);
      if constexpr (!kRaw) {
        const __m256i nan = _mm256_cmpgt_epi32(key, _mm256_set1_epi32(static_cast<int32_t>(kInfKey32)));
        key = _mm256_blendv_epi8(key, _mm256_set1_epi32(static_cast<int32_t>(kNanKey32)), nan);
      }
      const __m256i ok = ok8(m, j, h, bits16);
      const __m256i lt = _mm256_cmpgt_epi32(vlo, key);
      const __m256i gt = _mm256_cmpgt_epi32(key, vhi);
      nbelow = _mm256_add_epi32(nbelow, _mm256_and_si256(ok, lt));
      inside |= movemask8(_mm256_andnot_si256(_mm256_or_si256(lt, gt), ok)) << (8 * h);
      if constexpr (kWrite) keep |= movemask8(_mm256_and_si256(ok, gt)) << (8 * h);
    }
    if constexpr (kWrite) {  // 16 bits -> 16 bytes of 0 / 1
      std::memcpy(codes + j, &spread[keep & 0xFFu], 8);
      std::memcpy(codes + j + 8, &spread[keep >> 8], 8);
    }
    // ~1 block in 10 holds inside keys: only those are visited, in order
    for (; inside; inside &= inside - 1) {
      const int64_t i = __builtin_ctz(inside);
      out[n] = fast_key<uint32_t>(x[j + i]);
      if constexpr (kWrite) pos[n] = static_cast<uint16_t>(j + i - begin);
      ++n;
    }
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), nbelow);
  int64_t b = 0;
  for (int l = 0; l < 8; ++l) b -= lanes[l];
  *below += b;
  *done = j;
  return n;
}

#pragma GCC pop_options

}  // namespace avx2
}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
#endif
