// The fp32 mask pass (threshold_mask / threshold_mask_into) in 8-lane AVX2, for
// CPUs that have it (picked at run time with the range pass, see threshold_isa.h).
//
// Why: lthfast.prune's second round on keypointrcnn spent ~60 ms of its ~130 in
// this pass (59M fp32 entries: read the score, orig and the eligibility bits,
// write the mask and the product over the score). The generic pass writes a
// chunk's mask, then reads it back for the product, and its stores into the old
// mask (which nothing reads first) pay a read for ownership: ~20 bytes per entry
// where 16 must move. Here each block of 2048 entries is read once into the cache
// and its mask written with streaming stores (no read for ownership; the mask is
// read again only in the rare blocks that hold ties), then the product is taken
// from the block's keys, still in L1.
//
// Same results as the generic pass, entry for entry (tests run both).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LTHFAST_MASK_PASS_AVX2 1
#include <immintrin.h>

#include <cstdint>

#include "ops/threshold/cpu/count_collect_avx2.h"
#include "ops/threshold/cpu/keys_cpu.h"
#include "ops/threshold/threshold_common.h"

namespace lthfast {
namespace threshold {
namespace cpu {
namespace avx2 {

#pragma GCC push_options
#pragma GCC target("avx2")

// Entries per block: a block's keys and orig (8 KiB each) stay in L1 between
// its two loops.
constexpr int64_t kMaskBlock = 2048;

// Eligibility of entries j .. j + 7 (j a multiple of 8) as lanes of -1 or 0
// (the range pass's ok8, given the byte of bits that holds them).
inline __m256i eligible8(NoMask m, int64_t j) { return ok8(m, j, 0, 0); }
inline __m256i eligible8(PackedBits m, int64_t j) { return ok8(m, j, 0, m.bits[j >> 3]); }

// key32 of 8 floats: |x|'s bits, every NaN as kNanKey32 (0x7FFFFFFF: OR-ing it in
// is the same as replacing the NaN's bits).
inline __m256i keys8(const float* x) {
  const __m256i abs_bits = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)), abs_bits);
  const __m256i nan = _mm256_cmpgt_epi32(key, _mm256_set1_epi32(static_cast<int32_t>(kInfKey32)));
  return _mm256_or_si256(key, _mm256_and_si256(nan, abs_bits));
}

// keep = eligible and key >= t, as lanes of -1 or 0; tie = eligible and key == t.
template <typename M>
inline __m256i keep8(const float* x, M m, int64_t j, __m256i vt, __m256i* tie) {
  const __m256i key = keys8(x + j);
  const __m256i ok = eligible8(m, j);
  if (tie != nullptr) *tie = _mm256_and_si256(ok, _mm256_cmpeq_epi32(key, vt));
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(vt, key), ok);
}

template <typename M>
inline uint32_t scalar_keep(const float* x, M m, int64_t j, uint32_t t) {
  return eligible_at(m, j) & uint32_t(key32_branchless(x[j]) >= t);
}

// out[j] = keep ? 1 : 0 (ties kept for now) for j in [begin, end), begin a
// multiple of 8; returns the eligible ties. `stream`: out + begin is 32-byte
// aligned, and its full groups are written with streaming stores.
template <typename M>
__attribute__((noinline)) int64_t mask_block(const float* __restrict x, M m, int64_t begin,
                                             int64_t end, uint32_t t, float* __restrict out,
                                             bool stream) {
  const __m256i vt = _mm256_set1_epi32(static_cast<int32_t>(t));
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t ties = 0, j = begin;
  for (; j + 8 <= end; j += 8) {
    __m256i tie;
    const __m256 v = _mm256_and_ps(_mm256_castsi256_ps(keep8(x, m, j, vt, &tie)), one);
    ties += __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(tie))));
    if (stream) {
      _mm256_stream_ps(out + j, v);
    } else {
      _mm256_storeu_ps(out + j, v);
    }
  }
  for (; j < end; ++j) {
    const uint32_t key = key32_branchless(x[j]), ok = eligible_at(m, j);
    out[j] = (ok & uint32_t(key >= t)) ? 1.0f : 0.0f;
    ties += ok & uint32_t(key == t);
  }
  return ties;
}

// product[j] = (keep ? 1 : 0) * orig[j] for a block without eligible ties (its
// mask is final): torch's `mask * orig`, one IEEE multiply per entry. product may
// be x itself (each group is read before it is written).
template <typename M>
__attribute__((noinline)) void product_block(const float* x, M m, int64_t begin, int64_t end,
                                             uint32_t t, const float* __restrict orig,
                                             float* product) {
  const __m256i vt = _mm256_set1_epi32(static_cast<int32_t>(t));
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t j = begin;
  for (; j + 8 <= end; j += 8) {
    const __m256 v = _mm256_and_ps(_mm256_castsi256_ps(keep8(x, m, j, vt, nullptr)), one);
    _mm256_storeu_ps(product + j, _mm256_mul_ps(v, _mm256_loadu_ps(orig + j)));
  }
  for (; j < end; ++j) product[j] = (scalar_keep(x, m, j, t) ? 1.0f : 0.0f) * orig[j];
}

inline void store_fence() { _mm_sfence(); }

#pragma GCC pop_options

}  // namespace avx2
}  // namespace cpu
}  // namespace threshold
}  // namespace lthfast
#endif
