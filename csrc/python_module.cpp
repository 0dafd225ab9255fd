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

#include "ops/masked_conv/cpu/sparse_isa.h"
#include "ops/threshold/cpu/threshold_isa.h"

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
  d["cpu_sparse_isa"] = lthfast::masked_conv::sparse_cpu_isa();
  d["cpu_threshold_isa"] = lthfast::threshold::threshold_cpu_isa();
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

// Who holds a tensor, for lthfast.prune's in-place rewrite of a mask or pruned tensor
// that nothing else can see: (references to its TensorImpl, weak references to it,
// references to its storage, whether the storage is an ordinary resizable allocation
// of the device's default allocator -- not shared memory, a file mapping or memory
// borrowed from numpy or another library). Python compares the counts with those of
// a tensor held once (the binding itself holds a reference too).
static pybind11::tuple tensor_holders(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return pybind11::make_tuple(-1, -1, -1, false);
  const c10::Storage& st = t.storage();
  const bool own = st.resizable() && st.allocator() != nullptr &&
                   st.allocator() == c10::GetAllocator(t.device().type());
  return pybind11::make_tuple(t.use_count(), t.weak_use_count(), st.use_count(), own);
}

// The masked ops' weight-cache stamp (lthfast/ops/_weight_cache.py) and its check on their
// fast path, one call each. In Python the check was a dozen C calls (versions, data
// pointers, shape, strides, storage, grad mode), each cold after a real convolution has
// streamed its data through the caches: 2-5 us apiece, ~40 us on a 1 ms batch-1 conv,
// measured. (weight version, mask version, weight data pointer, mask data pointer, shape,
// strides where not row-major, the storage's StorageImpl address); None for tensors
// that have no version counter or no storage (never cached).
static pybind11::object weight_stamp(const at::Tensor& w, const at::Tensor& m) {
  try {
    if (w.is_inference() || m.is_inference() || !w.has_storage()) return pybind11::none();
    pybind11::tuple shape(w.dim());
    for (int64_t i = 0; i < w.dim(); ++i) shape[i] = pybind11::int_(w.size(i));
    pybind11::object strides = pybind11::none();
    if (!w.is_contiguous()) {
      pybind11::tuple st(w.dim());
      for (int64_t i = 0; i < w.dim(); ++i) st[i] = pybind11::int_(w.stride(i));
      strides = std::move(st);
    }
    return pybind11::make_tuple(
        w._version(), m._version(), reinterpret_cast<intptr_t>(w.data_ptr()),
        reinterpret_cast<intptr_t>(m.data_ptr()), std::move(shape), std::move(strides),
        reinterpret_cast<intptr_t>(w.storage().unsafeGetStorageImpl()));
  } catch (const c10::Error&) {  // a tensor whose data pointer cannot be read
    return pybind11::none();
  }
}

// Whether an eager call may reuse the entry stamped `stamp`: no gradient is needed and
// weight and mask still have that stamp.
static bool stamp_current(const at::Tensor& input, const at::Tensor& w, const at::Tensor& m,
                          const std::optional<at::Tensor>& bias, pybind11::handle stamp) {
  if (c10::GradMode::is_enabled() &&
      (input.requires_grad() || w.requires_grad() ||
       (bias.has_value() && bias->defined() && bias->requires_grad()))) {
    return false;
  }
  pybind11::object now = weight_stamp(w, m);
  return !now.is_none() && now.equal(stamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lthfast compiled kernels (ops are registered under torch.ops.lthfast)";
  m.def("build_info", &build_info, "What this build of lthfast._C contains.");
  m.def("_tensor_holders", &tensor_holders,
        "(TensorImpl refs, weak refs, storage refs, ordinary allocation) of a tensor.");
  m.def(
      "_sparse_cpu_isa",
      [](std::optional<std::string> cap) {
        return std::string(cap ? lthfast::masked_conv::cap_sparse_cpu_isa(*cap)
                               : lthfast::masked_conv::sparse_cpu_isa());
      },
      pybind11::arg("cap") = pybind11::none(),
      "The instruction set of the CPU sparse conv kernels (\"avx512\", \"avx2\", \"base\"); "
      "cap: use at most that one from now on (tests).");
  m.def(
      "_threshold_cpu_isa",
      [](std::optional<std::string> cap) {
        return std::string(cap ? lthfast::threshold::cap_threshold_cpu_isa(*cap)
                               : lthfast::threshold::threshold_cpu_isa());
      },
      pybind11::arg("cap") = pybind11::none(),
      "The instruction set of the CPU threshold's range and fp32 mask passes (\"avx2\", \"base\"); "
      "cap: use at most that one from now on (tests).");
  m.def("_weight_stamp", &weight_stamp,
        "The masked ops' cache stamp of (weight, mask); None: never cached.");
  m.def("_stamp_current", &stamp_current,
        "Whether (input, weight, mask, bias) may reuse the cache entry stamped `stamp`.");
  lthfast::masked_optim::bind_python(m);
}
