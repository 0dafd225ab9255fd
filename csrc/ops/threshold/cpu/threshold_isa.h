// Which instruction set the CPU threshold's range pass and fp32 mask pass run
// with: "avx2" where the CPU has it (count_collect_avx2.h, mask_pass_avx2.h), else
// "base" (the 4-lane SSE2 / NEON blocks of count_collect_vec.h, the generic mask
// pass, or scalar code). lthfast info reports it; the
// tests cap it to run both versions on an AVX2 CPU. (An AVX2 version of
// mask_counts' fp32 count-and-pack loop was measured too: no faster, that loop
// runs at the speed of reading the masks.)
#pragma once

#include <atomic>
#include <string>

namespace lthfast {
namespace threshold {

// "avx2" or "base".
const char* threshold_cpu_isa();
// Runs the range pass with at most `cap` ("avx2": no cap, "base") from now on,
// process-wide; returns threshold_cpu_isa(). Not for use while kernels run.
const char* cap_threshold_cpu_isa(const std::string& cap);

namespace cpu {
inline std::atomic<int>& range_isa_cap() {
  static std::atomic<int> cap{1};
  return cap;
}
// Whether the range pass and the fp32 mask pass take their AVX2 blocks now.
inline bool range_uses_avx2() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2");
  return has && range_isa_cap().load(std::memory_order_relaxed) >= 1;
#else
  return false;
#endif
}
}  // namespace cpu

}  // namespace threshold
}  // namespace lthfast
