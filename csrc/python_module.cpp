// The lthfast._C Python module: importing it loads the library, which registers
// every op with the dispatcher (csrc/lthfast.cpp and the kernels). Its Python
// functions report what was built and, for the masked optimizers' eager step,
// call their ops unboxed (ops/masked_optim/masked_optim_python.cpp).
#include <torch/extension.h>

#ifndef LTHFAST_VERSION
#define LTHFAST_VERSION "unknown"
#endif
#ifndef LTHFAST_TORCH_VERSION
#define LTHFAST_TORCH_VERSION "unknown"
#endif
#ifndef LTHFAST_CUDA_ARCHS
#define LTHFAST_CUDA_ARCHS ""
#endif

#ifdef LTHFAST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lthfast {
namespace masked_optim {
void bind_python(pybind11::module_& m);
}  // namespace masked_optim
}  // namespace lthfast

static pybind11::dict build_info() {
  pybind11::dict d;
  d["version"] = LTHFAST_VERSION;
  d["torch_version"] = LTHFAST_TORCH_VERSION;
  d["cpu"] = true;
  // Built with -fopenmp (every C++ source has the same flags): at::parallel_for
  // in the CPU kernels runs on torch's OpenMP threads, not on the caller alone.
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#ifdef LTHFAST_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                      std::to_string((CUDART_VERSION % 1000) / 10);
  d["cuda_archs"] = LTHFAST_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_version"] = pybind11::none();
  d["cuda_archs"] = "";
#endif
  return d;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lthfast compiled kernels (ops are registered under torch.ops.lthfast)";
  m.def("build_info", &build_info, "What this build of lthfast._C contains.");
  lthfast::masked_optim::bind_python(m);
}
