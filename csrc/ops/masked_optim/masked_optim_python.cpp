// Unboxed Python entries to the dispatcher ops lthfast::masked_sgd_ and
// lthfast::masked_adam_, for the masked optimizers' eager step only.
//
// A torch.ops call from Python is boxed: every tensor of every list becomes an
// IValue and back, ~0.2 us per tensor. For a 161-parameter SGD step that was
// ~130 of its ~210 us of host time (the kernels of a small model take less), and
// on a GPU the step was host-bound. These entries unpack the lists directly and
// call the same op through the dispatcher (typed, unboxed), so devices, modes
// and fake tensors dispatch exactly as through torch.ops. They take only plain
// tensors (Tensor, Parameter): for any other object they return False without
// doing anything and the caller uses torch.ops, which handles __torch_function__
// subclasses and raises its usual errors.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <exception>
#include <stdexcept>
#include <vector>

#include "ops/masked_optim/masked_optim_ops.h"

namespace lthfast {
namespace masked_optim {
namespace {

namespace py = pybind11;

// Appends the tensors of `list` to `out`; false when an item is not a plain tensor.
bool unpack(py::handle list, std::vector<at::Tensor>& out) {
  const auto seq = py::reinterpret_borrow<py::list>(list);
  out.reserve(seq.size());
  for (py::handle item : seq) {
    if (!THPVariable_CheckExact(item.ptr())) return false;
    out.push_back(THPVariable_Unpack(item.ptr()));
  }
  return true;
}

// Masks: None or a plain tensor per entry.
bool unpack_optional(py::handle list, OptTensorList& out) {
  const auto seq = py::reinterpret_borrow<py::list>(list);
  out.reserve(seq.size());
  for (py::handle item : seq) {
    if (item.is_none()) {
      out.emplace_back(std::nullopt);
    } else if (THPVariable_CheckExact(item.ptr())) {
      out.emplace_back(THPVariable_Unpack(item.ptr()));
    } else {
      return false;
    }
  }
  return true;
}

bool unpack_scalar(py::handle obj, OptTensor& out) {
  if (obj.is_none()) return true;
  if (!THPVariable_CheckExact(obj.ptr())) return false;
  out = THPVariable_Unpack(obj.ptr());
  return true;
}

// Runs f() without the GIL; an error comes back as the Python exception torch.ops
// would raise (torch's own translation, once the GIL is held again: ValueError,
// NotImplementedError, torch.OutOfMemoryError, ..., no C++ backtrace).
template <typename F>
void call_released(const F& f) {
  std::exception_ptr error;
  {
    py::gil_scoped_release release;
    try {
      f();
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (error) {
    torch::translate_exception_to_python(error);
    throw py::error_already_set();
  }
}

bool masked_sgd_py(py::list params, py::list grads, py::list bufs, py::list masks, double lr,
                   py::object lr_tensor, double momentum, double dampening, double weight_decay,
                   bool nesterov, bool maximize, bool is_first_step, py::object grad_scale,
                   py::object found_inf) {
  std::vector<at::Tensor> p, g, b;
  OptTensorList m;
  OptTensor lr_t, gs, fi;
  if (!unpack(params, p) || !unpack(grads, g) || !unpack(bufs, b) || !unpack_optional(masks, m) ||
      !unpack_scalar(lr_tensor, lr_t) || !unpack_scalar(grad_scale, gs) ||
      !unpack_scalar(found_inf, fi)) {
    return false;
  }
  call_released([&] {
    masked_sgd_op().call(p, g, b, m, lr, lr_t, momentum, dampening, weight_decay, nesterov, maximize,
            is_first_step, gs, fi);
  });
  return true;
}

bool masked_adam_py(py::list params, py::list grads, py::list exp_avgs, py::list exp_avg_sqs,
                    py::list max_exp_avg_sqs, py::list state_steps, py::list masks, double lr,
                    py::object lr_tensor, double beta1, double beta2, double weight_decay,
                    double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
                    py::object grad_scale, py::object found_inf) {
  std::vector<at::Tensor> p, g, ea, eas, mx, st;
  OptTensorList m;
  OptTensor lr_t, gs, fi;
  if (!unpack(params, p) || !unpack(grads, g) || !unpack(exp_avgs, ea) ||
      !unpack(exp_avg_sqs, eas) || !unpack(max_exp_avg_sqs, mx) || !unpack(state_steps, st) ||
      !unpack_optional(masks, m) || !unpack_scalar(lr_tensor, lr_t) ||
      !unpack_scalar(grad_scale, gs) || !unpack_scalar(found_inf, fi)) {
    return false;
  }
  call_released([&] {
    masked_adam_op().call(p, g, ea, eas, mx, st, m, lr, lr_t, beta1, beta2, weight_decay, eps, amsgrad,
            maximize, decoupled_weight_decay, gs, fi);
  });
  return true;
}

}  // namespace

void bind_python(py::module_& m) {
  m.def("_masked_sgd_", &masked_sgd_py,
        "torch.ops.lthfast.masked_sgd_ (same arguments, lists as Python lists) called "
        "unboxed; False, doing nothing, when an argument is not a plain Tensor/Parameter");
  m.def("_masked_adam_", &masked_adam_py,
        "torch.ops.lthfast.masked_adam_ (same arguments, lists as Python lists) called "
        "unboxed; False, doing nothing, when an argument is not a plain Tensor/Parameter");
}

}  // namespace masked_optim
}  // namespace lthfast
