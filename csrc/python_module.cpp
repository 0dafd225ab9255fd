// The lthfast._C Python module: importing it loads the library, which registers
// every op with the dispatcher (csrc/lthfast.cpp and the kernels). Its Python
// functions report what was built, check and run the masked ops' repeated eager calls
// (the weight cache's stamp, masked_conv2d's / masked_linear's repeat fast path) and, for the masked
// optimizers' eager step, call their ops unboxed (ops/masked_optim/masked_optim_python.cpp).
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/extension.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/frontend/tracer.h>

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
// strides where not row-major, the storage's StorageImpl address, dtype: a view in another
// dtype over the same bytes is another weight); None for tensors that have no version
// counter or no storage (never cached).
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
        reinterpret_cast<intptr_t>(w.storage().unsafeGetStorageImpl()),
        pybind11::handle(reinterpret_cast<PyObject*>(torch::getTHPDtype(w.scalar_type()))));
  } catch (const c10::Error&) {  // a tensor whose data pointer cannot be read
    return pybind11::none();
  }
}

// An exact Python int (not bool) that fits in 64 bits, into `out`; never leaves an error set.
static bool exact_int(PyObject* o, int64_t& out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  out = v;
  return overflow == 0;
}

static bool ints_are(PyObject* o, c10::IntArrayRef v) {
  if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != static_cast<Py_ssize_t>(v.size())) return false;
  int64_t got = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (!exact_int(PyTuple_GET_ITEM(o, i), got) || got != v[i]) return false;
  return true;
}

static bool dtype_is(PyObject* o, at::ScalarType t) {
  return THPDtype_Check(o) && reinterpret_cast<THPDtype*>(o)->scalar_type == t;
}

// Whether (w, m) still have the stamp weight_stamp gave, compared field by field without
// building a new tuple (the check runs on every fast-path call).
static bool stamp_matches(const at::Tensor& w, const at::Tensor& m, PyObject* stamp) {
  if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 8) return false;
  if (w.is_inference() || m.is_inference() || !w.has_storage()) return false;
  auto int_is = [](PyObject* o, int64_t v) {
    int64_t got = 0;
    return exact_int(o, got) && got == v;
  };
  PyObject* strides = PyTuple_GET_ITEM(stamp, 5);
  return int_is(PyTuple_GET_ITEM(stamp, 0), static_cast<long long>(w._version())) &&
         int_is(PyTuple_GET_ITEM(stamp, 1), static_cast<long long>(m._version())) &&
         int_is(PyTuple_GET_ITEM(stamp, 2), reinterpret_cast<intptr_t>(w.data_ptr())) &&
         int_is(PyTuple_GET_ITEM(stamp, 3), reinterpret_cast<intptr_t>(m.data_ptr())) &&
         ints_are(PyTuple_GET_ITEM(stamp, 4), w.sizes()) &&
         (strides == Py_None ? w.is_contiguous() : (!w.is_contiguous() && ints_are(strides, w.strides()))) &&
         int_is(PyTuple_GET_ITEM(stamp, 6),
                reinterpret_cast<intptr_t>(w.storage().unsafeGetStorageImpl())) &&
         dtype_is(PyTuple_GET_ITEM(stamp, 7), w.scalar_type());
}

static bool needs_grad(const at::Tensor& input, const at::Tensor& w,
                       const std::optional<at::Tensor>& bias) {
  return c10::GradMode::is_enabled() &&
         (input.requires_grad() || w.requires_grad() ||
          (bias.has_value() && bias->defined() && bias->requires_grad()));
}

// An int, or a tuple / list of two ints (what nn.Conv2d holds); false for anything else
// (F.conv2d accepts more: those calls take the Python path).
static bool int_pair(PyObject* o, int64_t out[2]) {
  if (exact_int(o, out[0])) {
    out[1] = out[0];
    return true;
  }
  return (PyTuple_CheckExact(o) || PyList_CheckExact(o)) && PySequence_Fast_GET_SIZE(o) == 2 &&
         exact_int(PySequence_Fast_GET_ITEM(o, 0), out[0]) &&
         exact_int(PySequence_Fast_GET_ITEM(o, 1), out[1]);
}

// Whether the weak reference `ref` points at `obj` (alive).
static bool refers_to(PyObject* ref, PyObject* obj) {
  if (!PyWeakref_CheckRef(ref)) return false;
#if PY_VERSION_HEX >= 0x030D0000
  PyObject* target = nullptr;  // PyWeakref_GetObject is deprecated from 3.13
  if (PyWeakref_GetRef(ref, &target) < 0) {
    PyErr_Clear();
    return false;
  }
  Py_XDECREF(target);  // only compared, never used: `obj` holds it alive if it is the one
  return target == obj;
#else
  return PyWeakref_GetObject(ref) == obj;
#endif
}

// The masked ops' fast path for a repeated eager inference call: _conv_repeat /
// _linear_repeat do the weight cache lookup, the checks and the op (dense or the sparse
// kernel) in one C call (METH_FASTCALL: no pybind11 dispatch). In Python (a function call,
// a dozen attribute reads, a shape compare, then F.conv2d's argument parsing) the dense
// call cost ~3 us over F.conv2d on pre-masked weights warm (~10 us under autocast) and
// ~28 us after a real convolution had streamed its data through the caches, ~5% of a
// batch-1 resnet50 conv on 2 CPU threads; the sparse one, through torch.ops, ~23 us warm;
// on a GPU, where a small convolution is 30-50 us of host time, the warm cost alone was
// 5-10%.
//
// The cache (lthfast/ops/_weight_cache.py) maps id(weight) to an Entry whose `last` (or,
// when autocast is on for the input's device, `cast`) maps the path to the record of the
// last fully checked call with it (lthfast/ops/_masked_conv.py):
//   (input shape, groups, sparse?, mask weakref, stamp, masked dense weight or, for the
//   sparse kernel, the packed weight (rowptr, colidx, values)), autocast off;
//   under autocast the same, dense only, and (input dtype, bias dtype or None, autocast
//   dtype), the masked weight already in autocast's dtype: the op's autocast kernel then
//   casts input and bias as it does for F.conv2d / F.linear.
// They return the op's output, or None whenever anything differs from that call (no
// record, another mask object, a changed weight or mask, another input shape, dtype or
// groups, another autocast dtype, a gradient needed, a tensor subclass or functorch
// wrapper, a __torch_function__ or Python dispatch mode, torch.jit.trace, arguments in
// types other than int / pair of ints) or the op raises: the Python path then runs, and raises the clear
// error. Warnings of the op reach Python's warnings module, as from F.conv2d.
static PyObject* g_last = nullptr;  // interned "last" / "cast": the Entry slots read here
static PyObject* g_cast = nullptr;

struct Repeat {
  bool sparse = false;
  std::vector<int64_t> kernel;          // the weight's sizes past the first two (conv)
  at::Tensor dense;                     // the masked weight (dense records)
  at::Tensor rowptr, colidx, values;    // the compressed one (sparse records)
  std::optional<at::Tensor> b;
};

// The record for (weight, path), a new reference; nullptr (no error set) when there is none.
static PyObject* record_of(PyObject* cache, PyObject* weight, PyObject* path, bool autocast) {
  PyObject* key = PyLong_FromVoidPtr(weight);  // id(weight)
  if (key == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* entry = PyDict_GetItemWithError(cache, key);  // borrowed
  Py_DECREF(key);
  if (entry == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* records = PyObject_GetAttr(entry, autocast ? g_cast : g_last);
  if (records == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  // (an unhashable path: no record; the Python path raises the clear error)
  PyObject* rec = PyDict_Check(records) ? PyDict_GetItemWithError(records, path) : nullptr;
  if (rec == nullptr)
    PyErr_Clear();
  else
    Py_INCREF(rec);
  Py_DECREF(records);
  return rec;
}

// Whether (input, weight, mask, bias, groups) repeat the recorded call; fills `out` if so.
// May throw c10::Error (a tensor whose data pointer cannot be read, a device type autocast
// does not know): the callers return None then.
static bool repeats(PyObject* cache, PyObject* input, PyObject* weight, PyObject* mask,
                    PyObject* bias, PyObject* path, int64_t groups, int64_t weight_dim,
                    Repeat& out) {
  if (!THPVariable_CheckExact(input) || !THPVariable_CheckExact(weight) ||
      !THPVariable_CheckExact(mask) || !(bias == Py_None || THPVariable_CheckExact(bias)))
    return false;
  // F.conv2d would call a __torch_function__ mode; a Python dispatch mode (FakeTensorMode,
  // FlopCounterMode...) runs Python inside the op: both take the Python path.
  if (at::impl::torch_function_mode_enabled() || c10::impl::dispatch_mode_enabled()) return false;
  // torch.jit.trace records the op, not a cached weight as a constant
  if (torch::jit::tracer::isTracing()) return false;
  const at::Tensor& x = THPVariable_Unpack(input);
  const bool cast = at::autocast::is_autocast_enabled(x.device().type());
  PyObject* r = record_of(cache, weight, path, cast);
  if (r == nullptr) return false;
  pybind11::object hold = pybind11::reinterpret_steal<pybind11::object>(r);
  if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != (cast ? 9 : 6)) return false;
  // dense (False) records, and sparse (True) ones without autocast: their item 5 is the
  // packed weight (rowptr, colidx, values)
  PyObject* flag = PyTuple_GET_ITEM(r, 2);
  const bool sparse = flag == Py_True && !cast;
  if (flag != Py_False && !sparse) return false;
  PyObject* weights = PyTuple_GET_ITEM(r, 5);
  if (sparse) {
    if (!PyTuple_CheckExact(weights) || PyTuple_GET_SIZE(weights) != 3) return false;
    for (Py_ssize_t i = 0; i < 3; ++i)
      if (!THPVariable_CheckExact(PyTuple_GET_ITEM(weights, i))) return false;
  } else if (!THPVariable_CheckExact(weights)) {
    return false;
  }
  int64_t g_rec = 0;
  if (!exact_int(PyTuple_GET_ITEM(r, 1), g_rec) || g_rec != groups) return false;
  if (!refers_to(PyTuple_GET_ITEM(r, 3), mask)) return false;
  const at::Tensor& w = THPVariable_Unpack(weight);
  // conv2d's and linear's records share the entry: a 4-D weight is conv2d's, a 2-D one linear's
  if (w.dim() != weight_dim) return false;
  const at::Tensor& m = THPVariable_Unpack(mask);
  std::optional<at::Tensor> b;
  if (bias != Py_None) b = THPVariable_Unpack(bias);
  for (const at::Tensor* t : {&x, &w, &m})
    if (t->key_set().has_any(c10::functorch_transforms_ks)) return false;
  if (b && b->key_set().has_any(c10::functorch_transforms_ks)) return false;
  // (a float mask may want a gradient too: the Python path gives it one)
  if (needs_grad(x, w, b) || (c10::GradMode::is_enabled() && m.requires_grad())) return false;
  if (!stamp_matches(w, m, PyTuple_GET_ITEM(r, 4))) return false;
  if (!ints_are(PyTuple_GET_ITEM(r, 0), x.sizes())) return false;  // (a torch.Size is a tuple)
  // The op checks the bias's dtype (conv2d) or not at all (linear broadcasts it and
  // casts it down): the checked call had a 1-D bias of the weight's length and dtype.
  if (b && (b->dim() != 1 || b->size(0) != w.size(0) || (!cast && b->scalar_type() != w.scalar_type())))
    return false;
  if (cast) {
    if (!dtype_is(PyTuple_GET_ITEM(r, 6), x.scalar_type()) ||
        !(b ? dtype_is(PyTuple_GET_ITEM(r, 7), b->scalar_type()) : PyTuple_GET_ITEM(r, 7) == Py_None) ||
        !dtype_is(PyTuple_GET_ITEM(r, 8), at::autocast::get_autocast_dtype(x.device().type())))
      return false;
  }
  // the sparse kernels take the weight's dtype only (the dense ops reject others themselves)
  if (sparse && x.scalar_type() != w.scalar_type()) return false;
  out.sparse = sparse;  // references of our own below (read now: the GIL is released next)
  out.kernel = w.sizes().slice(2).vec();
  if (sparse) {
    out.rowptr = THPVariable_Unpack(PyTuple_GET_ITEM(weights, 0));
    out.colidx = THPVariable_Unpack(PyTuple_GET_ITEM(weights, 1));
    out.values = THPVariable_Unpack(PyTuple_GET_ITEM(weights, 2));
  } else {
    out.dense = THPVariable_Unpack(weights);
  }
  out.b = std::move(b);
  return true;
}

// op(input, the repeat's masked weight and bias) with the GIL released, as torch's own
// bindings release it, when args = (cache, input, weight, mask, bias, ...) repeat the
// recorded call; None otherwise or when the op raises (out of memory is raised as it is,
// not retried by the Python path).
template <typename Op>
static PyObject* run_if_repeat(PyObject* const* args, PyObject* path, int64_t groups,
                               int64_t weight_dim, Op op) {
  try {
    Repeat a;
    if (!repeats(args[0], args[1], args[2], args[3], args[4], path, groups, weight_dim, a))
      Py_RETURN_NONE;
    const at::Tensor x = THPVariable_Unpack(args[1]);  // ours while the GIL is released
    at::Tensor out;
    {
      pybind11::gil_scoped_release no_gil;
      out = op(x, a);
    }
    return THPVariable_Wrap(std::move(out));
  } catch (const c10::OutOfMemoryError&) {
    throw;
  } catch (const c10::Error&) {
    Py_RETURN_NONE;
  }
}

// _conv_repeat(cache, input, weight, mask, bias, stride, padding, dilation, groups, path)
static PyObject* conv_repeat(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10 || !PyDict_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "_conv_repeat(cache, input, weight, mask, bias, stride, "
                                     "padding, dilation, groups, path)");
    return nullptr;
  }
  int64_t g = 0, s[2], p[2], d[2];
  if (!exact_int(args[8], g) || !int_pair(args[5], s) || !int_pair(args[6], p) ||
      !int_pair(args[7], d))
    Py_RETURN_NONE;
  return run_if_repeat(args, args[9], g, 4, [&](const at::Tensor& x, const Repeat& a) {
    if (a.sparse) {
      static const auto op =
          c10::Dispatcher::singleton().findSchemaOrThrow("lthfast::sparse_conv2d", "").typed<
              at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                         at::IntArrayRef, at::IntArrayRef, int64_t)>();
      at::Tensor out = op.call(x, a.rowptr, a.colidx, a.values, a.b, a.kernel, s, p, d, g);
      // conv2d's output follows a channels_last input's format; so does this (as _like_input_format)
      if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
        out = out.contiguous(at::MemoryFormat::ChannelsLast);
      return out;
    }
    return at::conv2d(x, a.dense, a.b, s, p, d, g);
  });
  END_HANDLE_TH_ERRORS
}

// _linear_repeat(cache, input, weight, mask, bias, path)
static PyObject* linear_repeat(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6 || !PyDict_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "_linear_repeat(cache, input, weight, mask, bias, path)");
    return nullptr;
  }
  return run_if_repeat(args, args[5], 1, 2, [](const at::Tensor& x, const Repeat& a) {
    if (a.sparse) {
      static const auto op =
          c10::Dispatcher::singleton().findSchemaOrThrow("lthfast::sparse_linear", "").typed<
              at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&)>();
      return op.call(x, a.rowptr, a.colidx, a.values, a.b);
    }
    return at::linear(x, a.dense, a.b);
  });
  END_HANDLE_TH_ERRORS
}

static PyMethodDef repeat_methods[] = {
    {"_conv_repeat", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(conv_repeat)),
     METH_FASTCALL,
     "masked_conv2d's fast path for a repeated eager inference call: its output, or None."},
    {"_linear_repeat",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(linear_repeat)), METH_FASTCALL,
     "masked_linear's fast path for a repeated eager inference call: its output, or None."},
};

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
  g_last = PyUnicode_InternFromString("last");
  g_cast = PyUnicode_InternFromString("cast");
  if (g_last == nullptr || g_cast == nullptr) throw pybind11::error_already_set();
  for (PyMethodDef& def : repeat_methods) {
    PyObject* f = PyCFunction_NewEx(&def, nullptr, m.attr("__name__").ptr());
    if (f == nullptr) throw pybind11::error_already_set();
    m.add_object(def.ml_name, pybind11::reinterpret_steal<pybind11::object>(f));
  }
  lthfast::masked_optim::bind_python(m);
}
