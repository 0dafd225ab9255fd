// The masked optimizer ops as typed dispatcher handles (schemas: csrc/lthfast.cpp),
// for the code that calls them from C++: their Autograd kernels
// (masked_optim_autograd.cpp) and the unboxed Python entries (masked_optim_python.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <vector>

namespace lthfast {
namespace masked_optim {

using OptTensor = std::optional<at::Tensor>;
using OptTensorList = std::vector<std::optional<at::Tensor>>;

// params, grads, momentum_buffers, masks, lr, lr_tensor, momentum, dampening,
// weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf
using MaskedSgdFn = void(at::TensorList, at::TensorList, at::TensorList, const OptTensorList&, double,
                         const OptTensor&, double, double, double, bool, bool, bool, const OptTensor&,
                         const OptTensor&);
// params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, lr,
// lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, maximize,
// decoupled_weight_decay, grad_scale, found_inf
using MaskedAdamFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                          at::TensorList, const OptTensorList&, double, const OptTensor&, double, double,
                          double, double, bool, bool, bool, const OptTensor&, const OptTensor&);

inline const c10::TypedOperatorHandle<MaskedSgdFn>& masked_sgd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lthfast::masked_sgd_", "").typed<MaskedSgdFn>();
  return op;
}

inline const c10::TypedOperatorHandle<MaskedAdamFn>& masked_adam_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lthfast::masked_adam_", "").typed<MaskedAdamFn>();
  return op;
}

}  // namespace masked_optim
}  // namespace lthfast
