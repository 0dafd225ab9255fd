// Which instruction set the CPU sparse convolution kernels run with
// (sparse_conv_cpu.cpp compiles them for AVX-512, AVX2 and the baseline, and
// picks the best this CPU has). lthfast info reports it; the tests cap it to run
// every version this CPU can.
#pragma once

#include <string>

namespace lthfast {
namespace masked_conv {

// "avx512", "avx2" or "base".
const char* sparse_cpu_isa();
// Runs the kernels of at most `cap` ("avx512": no cap, "avx2", "base") from now
// on, process-wide; returns sparse_cpu_isa(). Not for use while kernels run.
const char* cap_sparse_cpu_isa(const std::string& cap);

}  // namespace masked_conv
}  // namespace lthfast
