// Argument checks and scalar set-up shared by the CPU and CUDA kernels of the
// fused masked optimizers (masked_sgd_, masked_adam_). Everything is checked
// before anything is written, so a rejected call leaves every tensor unchanged.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace lthfast {
namespace masked_optim {

inline bool is_float_param_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// One parameter and everything the step reads or writes for it. `grad` may be
// a copy in the parameter's memory layout (see prepare_grad).
struct Slot {
  at::Tensor param, grad, mask;          // mask undefined: no mask
  bool packed = false;                   // mask is packed uint8 (1 bit per entry), not bool
  at::Tensor state[3];                   // SGD: buf; Adam: exp_avg, exp_avg_sq, max_exp_avg_sq
  at::Tensor step;                       // Adam only
};

// The parameter's device, checked to be `expect` (kCPU or kCUDA).
inline void check_param(const at::Tensor& p, int64_t i, const at::Device& dev, at::DeviceType expect,
                        const char* op) {
  TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i, "] is sparse (layout ", p.layout(),
              "); masked optimizers need dense parameters");
  TORCH_CHECK(is_float_param_dtype(p.scalar_type()), op, ": params[", i, "] has dtype ",
              p.scalar_type(), "; supported: float16, bfloat16, float32, float64");
  TORCH_CHECK(p.device().type() == expect && p.device() == dev, op, ": params[", i, "] is on ",
              p.device(), " but params[0] is on ", dev);
  TORCH_CHECK(p.is_non_overlapping_and_dense(), op, ": params[", i, "] (shape ", p.sizes(),
              ", strides ", p.strides(), ") is not dense; make it contiguous");
}

// A tensor that must match params[i] exactly: shape, dtype (param's unless
// `dtype` given), device and strides (kernels walk memory order).
inline void check_like(const at::Tensor& t, const at::Tensor& p, const char* what, int64_t i,
                       const char* op, std::optional<at::ScalarType> dtype = std::nullopt) {
  TORCH_CHECK(t.defined(), op, ": ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", what, "[", i, "] is sparse");
  TORCH_CHECK(t.sizes() == p.sizes(), op, ": ", what, "[", i, "] has shape ", t.sizes(),
              " but params[", i, "] has shape ", p.sizes());
  const at::ScalarType want = dtype.value_or(p.scalar_type());
  TORCH_CHECK(t.scalar_type() == want, op, ": ", what, "[", i, "] has dtype ", t.scalar_type(),
              ", expected ", want);
  TORCH_CHECK(t.device() == p.device(), op, ": ", what, "[", i, "] is on ", t.device(),
              " but params[", i, "] is on ", p.device());
  TORCH_CHECK(t.strides() == p.strides() || t.numel() <= 1, op, ": ", what, "[", i,
              "] has strides ", t.strides(), " but params[", i, "] has strides ", p.strides(),
              "; create it with torch.empty_like(param, ...)");
}

// A 1-element scalar tensor (lr, grad_scale, found_inf, step) on an allowed device.
inline void check_scalar(const at::Tensor& t, const char* what, const at::Device& dev,
                         bool cpu_ok, const char* op) {
  TORCH_CHECK(t.numel() == 1, op, ": ", what, " must have one element, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", what,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == dev || (cpu_ok && t.device().is_cpu()), op, ": ", what, " is on ",
              t.device(), " but the parameters are on ", dev);
}

inline void check_list_size(size_t got, size_t n, const char* what, const char* op) {
  TORCH_CHECK(got == n, op, ": ", what, " has ", got, " tensors but params has ", n);
}

// The grad in the parameter's memory layout (a copy only when the layouts differ).
inline at::Tensor prepare_grad(const at::Tensor& g, const at::Tensor& p, int64_t i, const char* op) {
  TORCH_CHECK(g.defined(), op, ": grads[", i, "] is undefined");
  TORCH_CHECK(g.layout() == at::kStrided, op, ": grads[", i, "] is sparse; masked optimizers "
              "need dense gradients");
  TORCH_CHECK(g.sizes() == p.sizes(), op, ": grads[", i, "] has shape ", g.sizes(),
              " but params[", i, "] has shape ", p.sizes());
  TORCH_CHECK(g.scalar_type() == p.scalar_type(), op, ": grads[", i, "] has dtype ",
              g.scalar_type(), " but params[", i, "] has dtype ", p.scalar_type());
  TORCH_CHECK(g.device() == p.device(), op, ": grads[", i, "] is on ", g.device(),
              " but params[", i, "] is on ", p.device());
  if (g.strides() == p.strides() || p.numel() <= 1) return g;
  return at::empty_like(p).copy_(g);
}

// Bytes of a packed mask of n entries.
inline int64_t packed_bytes(int64_t n) { return (n + 7) / 8; }

// A packed mask: 1-D contiguous uint8 of ceil(numel / 8) bytes on the param's
// device, entry i of the param's MEMORY order in bit (i % 8) of byte i / 8.
inline void check_packed_mask(const at::Tensor& m, const at::Tensor& p, int64_t i, const char* op) {
  TORCH_CHECK(m.layout() == at::kStrided && m.dim() == 1, op, ": masks[", i,
              "] is uint8 (a packed mask) of shape ", m.sizes(), "; a packed mask is 1-D with "
              "ceil(numel / 8) bytes (from lthfast.bitmask.pack_bits)");
  const int64_t need = packed_bytes(p.numel());
  TORCH_CHECK(m.numel() == need, op, ": masks[", i, "] (packed uint8) has ", m.numel(),
              " bytes but params[", i, "] has ", p.numel(), " entries and needs ceil(",
              p.numel(), " / 8) = ", need, " bytes");
  TORCH_CHECK(m.device() == p.device(), op, ": masks[", i, "] is on ", m.device(),
              " but params[", i, "] is on ", p.device());
  TORCH_CHECK(m.is_contiguous(), op, ": masks[", i, "] (packed uint8) has stride ", m.strides(),
              "; it must be contiguous");
}

// Each mask is None, bool (param's shape and strides) or packed uint8.
inline void check_masks(const std::vector<std::optional<at::Tensor>>& masks,
                        std::vector<Slot>& slots, const char* op) {
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!masks[i].has_value() || !masks[i]->defined()) continue;
    const at::Tensor& m = *masks[i];
    const auto ii = static_cast<int64_t>(i);
    if (m.scalar_type() == at::kByte) {
      check_packed_mask(m, slots[i].param, ii, op);
      slots[i].packed = true;
    } else {
      TORCH_CHECK(m.scalar_type() == at::kBool, op, ": masks[", i, "] has dtype ",
                  m.scalar_type(), "; a mask is bool (True = kept, the param's shape and strides) "
                  "or packed uint8 (ceil(numel / 8) bytes, 1 bit per entry)");
      check_like(m, slots[i].param, "masks", ii, op, at::kBool);
    }
    slots[i].mask = m;
  }
}

inline void check_optional_scalars(const std::optional<at::Tensor>& lr_tensor,
                                   const std::optional<at::Tensor>& grad_scale,
                                   const std::optional<at::Tensor>& found_inf,
                                   const at::Device& dev, const char* op) {
  if (lr_tensor.has_value()) check_scalar(*lr_tensor, "lr_tensor", dev, /*cpu_ok=*/true, op);
  if (grad_scale.has_value()) check_scalar(*grad_scale, "grad_scale", dev, false, op);
  if (found_inf.has_value()) check_scalar(*found_inf, "found_inf", dev, false, op);
}

// Parameters, grads and masks of masked_sgd_ / masked_adam_, checked; states
// are checked by the callers (they differ per optimizer).
inline std::vector<Slot> make_slots(at::TensorList params, at::TensorList grads,
                                    const std::vector<std::optional<at::Tensor>>& masks,
                                    at::DeviceType expect, const char* op) {
  const size_t n = params.size();
  check_list_size(grads.size(), n, "grads", op);
  check_list_size(masks.size(), n, "masks", op);
  std::vector<Slot> slots(n);
  if (n == 0) return slots;
  const at::Device dev = params[0].device();
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], static_cast<int64_t>(i), dev, expect, op);
    slots[i].param = params[i];
  }
  check_masks(masks, slots, op);
  for (size_t i = 0; i < n; ++i) {
    slots[i].grad = prepare_grad(grads[i], params[i], static_cast<int64_t>(i), op);
  }
  return slots;
}

// SGD scalars in the compute type.
template <typename T>
struct SgdScalars {
  T neg_lr, momentum, one_minus_dampening, weight_decay, sign;  // sign: -1 when maximizing
};

// Adam scalars of one tensor (they depend on its step) in the compute type.
template <typename T>
struct AdamScalars {
  T beta1_weight;      // lerp weight 1 - beta1
  T beta2, one_minus_beta2, eps;
  T weight_decay;      // L2 (Adam); 0 when decoupled
  T decay;             // 1 - lr * weight_decay (AdamW); 1 otherwise
  T neg_step_size;     // -lr / (1 - beta1^step)
  T bias_correction2_sqrt;
  T sign;
};

// Host-side Adam scalars, computed in double from the (already incremented)
// step exactly as torch.optim.Adam does in Python.
struct AdamHost {
  double lr, beta1, beta2, weight_decay, eps;
  bool decoupled, maximize;
  template <typename T>
  AdamScalars<T> at_step(double step) const {
    AdamScalars<T> s;
    s.beta1_weight = static_cast<T>(1.0 - beta1);
    s.beta2 = static_cast<T>(beta2);
    s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
    s.eps = static_cast<T>(eps);
    s.weight_decay = static_cast<T>(decoupled ? 0.0 : weight_decay);
    s.decay = static_cast<T>(decoupled ? 1.0 - lr * weight_decay : 1.0);
    const double bc1 = 1.0 - std::pow(beta1, step);
    const double bc2 = 1.0 - std::pow(beta2, step);
    s.neg_step_size = static_cast<T>(-(lr / bc1));
    s.bias_correction2_sqrt = static_cast<T>(std::pow(bc2, 0.5));
    s.sign = static_cast<T>(maximize ? -1.0 : 1.0);
    return s;
  }
};

}  // namespace masked_optim
}  // namespace lthfast
