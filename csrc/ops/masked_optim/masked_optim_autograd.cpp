// Autograd kernels of masked_sgd_ / masked_adam_: an optimizer step is an
// in-place update that autograd does not record (torch's fused optimizer ops
// are not differentiable either), so these only step below autograd and call
// the device kernel. Without them every call went through torch's boxed
// autograd fallback, which walks every argument of every list: ~40 us of a
// 161-parameter step on the CPU, more than the kernels of a small model.
// Versions are not bumped, as torch's fused=True steps do not bump them.
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "ops/masked_optim/masked_optim_ops.h"

namespace lthfast {
namespace masked_optim {
namespace {

void masked_sgd_autograd(at::TensorList params, at::TensorList grads,
                         at::TensorList momentum_buffers, const OptTensorList& masks, double lr,
                         const OptTensor& lr_tensor, double momentum, double dampening,
                         double weight_decay, bool nesterov, bool maximize, bool is_first_step,
                         const OptTensor& grad_scale, const OptTensor& found_inf) {
  at::AutoDispatchBelowADInplaceOrView below;
  masked_sgd_op().call(params, grads, momentum_buffers, masks, lr, lr_tensor, momentum, dampening,
          weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf);
}

void masked_adam_autograd(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                          at::TensorList state_steps, const OptTensorList& masks, double lr,
                          const OptTensor& lr_tensor, double beta1, double beta2,
                          double weight_decay, double eps, bool amsgrad, bool maximize,
                          bool decoupled_weight_decay, const OptTensor& grad_scale,
                          const OptTensor& found_inf) {
  at::AutoDispatchBelowADInplaceOrView below;
  masked_adam_op().call(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, lr,
          lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale, found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, Autograd, m) {
  m.impl("masked_sgd_", &masked_sgd_autograd);
  m.impl("masked_adam_", &masked_adam_autograd);
}

}  // namespace masked_optim
}  // namespace lthfast
