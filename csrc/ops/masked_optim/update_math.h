// Per-element update rules of the fused masked optimizers, shared by the CPU
// and CUDA kernels. T is the compute type (float for fp16/bf16/fp32, double for
// fp64). The order of operations follows torch.optim (foreach/fused) so that
// unpruned entries match torch within rounding.
//
// A pruned entry (keep == false) reads its grad as 0 and writes 0.0 to the
// weight and to every state: selects, not multiplies, so a NaN/Inf there cannot
// leak into the result.
#pragma once

#include <cmath>

#include "ops/masked_optim/masked_optim_args.h"

#if defined(__CUDACC__)
#define LTHFAST_HD __host__ __device__ __forceinline__
#else
#define LTHFAST_HD inline
#endif

namespace lthfast {
namespace masked_optim {

// Momentum handling of one SGD call.
enum MomentumMode : int { kNoMomentum = 0, kFirstStep = 1, kMomentum = 2 };

template <typename T>
LTHFAST_HD T opt_max(T a, T b) {
  // torch.maximum propagates NaN; so do we.
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

template <typename T>
LTHFAST_HD T opt_sqrt(T x) {
  return std::sqrt(x);
}

// One SGD element: p, buf updated in place. g is the raw (scaled) grad.
template <typename T, int kMode, bool kNesterov>
LTHFAST_HD void sgd_element(bool keep, T& p, T g, T& buf, T inv_scale_div,
                            const SgdScalars<T>& s) {
  T d = (g * s.sign) / inv_scale_div;  // inv_scale_div: the grad scale (1 when none)
  d = keep ? d : T(0);
  // as torch, no decay term at all when weight_decay is 0 (0 * inf would make an inf
  // weight NaN, and its momentum with it)
  d = (s.weight_decay != T(0)) ? d + s.weight_decay * p : d;
  if (kMode != kNoMomentum) {
    const T b = (kMode == kFirstStep) ? d : buf * s.momentum + s.one_minus_dampening * d;
    d = kNesterov ? d + s.momentum * b : b;
    buf = keep ? b : T(0);
  }
  const T np = p + s.neg_lr * d;
  p = keep ? np : T(0);
}

// Adam/AdamW in two halves around the square root, so the CPU loops can run
// the halves vectorised and the sqrt apart. adam_moments updates m, v, vmax
// (pruned: 0) and returns the decayed weight pp, the new exp_avg mm and the
// second moment vm whose root adam_param needs. kScaled = false: grad_scale is
// 1 and the division is skipped (x / 1 == x exactly, so the result is the same).
template <typename T, bool kAmsgrad, bool kScaled = true>
LTHFAST_HD void adam_moments(bool keep, T p, T g, T& m, T& v, T& vmax, T grad_scale,
                             const AdamScalars<T>& s, T& pp, T& mm, T& vm) {
  T d = kScaled ? (g * s.sign) / grad_scale : g * s.sign;
  d = keep ? d : T(0);
  pp = p * s.decay;
  d = (s.weight_decay != T(0)) ? d + s.weight_decay * pp : d;  // (as in sgd_element)
  // torch.lerp(m, d, w): m + w * (d - m) for w < 0.5, else d - (d - m) * (1 - w)
  const T diff = d - m;
  mm = (s.beta1_weight < T(0.5)) ? m + s.beta1_weight * diff
                                 : d - diff * (T(1) - s.beta1_weight);
  const T vv = v * s.beta2 + s.one_minus_beta2 * d * d;
  vm = vv;
  if (kAmsgrad) {
    vm = opt_max(vmax, vv);
    vmax = keep ? vm : T(0);
  }
  m = keep ? mm : T(0);
  v = keep ? vv : T(0);
}

// The new weight from adam_moments' pp, mm and sqrt(vm).
template <typename T>
LTHFAST_HD T adam_param(bool keep, T pp, T mm, T root_vm, const AdamScalars<T>& s) {
  const T denom = root_vm / s.bias_correction2_sqrt + s.eps;
  const T np = pp + s.neg_step_size * (mm / denom);
  return keep ? np : T(0);
}

}  // namespace masked_optim
}  // namespace lthfast
