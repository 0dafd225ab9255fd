// CUDA kernels of the fused masked optimizers: masked_sgd_ and masked_adam_.
//
// One launch per parameter dtype walks every tensor in chunks (the chunked
// multi-tensor launcher of ops/common/multi_tensor.cuh, 64-bit indexed): each
// element's weight, grad, state and mask are read once and weight and state
// written once. Params, grads, states and masks share one memory layout, so a
// chunk is a range of memory offsets. A mask is bool (one byte per element) or
// packed (bit i % 8 of byte i / 8 for memory offset i); the group's mask dtype
// slot says which. All scalars that live on the device
// (lr tensor, grad_scale, found_inf, Adam's step counters) are read by the
// kernels: no host sync. Adam's counters are incremented by a tiny kernel first
// (skipped, like the update, when found_inf is nonzero).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "ops/common/multi_tensor.cuh"
#include "ops/masked_optim/masked_optim_args.h"
#include "ops/masked_optim/update_math.h"

namespace lthfast {
namespace masked_optim {
namespace {

constexpr int64_t kChunk = 1 << 16;
constexpr int kThreads = 512;
constexpr int kIlp = 4;

// A device scalar (float32 or float64), or a host value when ptr is null.
struct DevScalar {
  const void* ptr = nullptr;
  bool is_double = false;
  double host = 0.0;
  __device__ __forceinline__ double get() const {
    if (ptr == nullptr) return host;
    return is_double ? *static_cast<const double*>(ptr) : double(*static_cast<const float*>(ptr));
  }
};

DevScalar dev_scalar(const std::optional<at::Tensor>& t, double fallback) {
  DevScalar s;
  s.host = fallback;
  if (!t.has_value()) return s;
  if (t->device().is_cpu()) {
    s.host = t->item<double>();
    return s;
  }
  s.ptr = t->data_ptr();
  s.is_double = t->scalar_type() == at::kDouble;
  return s;
}

struct CommonArgs {
  DevScalar lr, grad_scale, found_inf;  // found_inf.host = 0 when absent
};

__device__ __forceinline__ bool skip_step(const CommonArgs& a) { return a.found_inf.get() != 0.0; }

// TensorGroup::dtype of a packed mask (uint8, 1 bit per element); a bool mask has kBool.
constexpr int8_t kPackedMask = static_cast<int8_t>(at::ScalarType::Byte);

// Whether element i (memory offset) is kept: no mask, a bool mask or a packed one.
__device__ __forceinline__ bool kept(const uint8_t* mask, bool packed, int64_t i) {
  if (mask == nullptr) return true;
  return packed ? ((mask[i >> 3] >> (i & 7)) & 1) != 0 : mask[i] != 0;
}

void set_mask(const Slot& s, void*& ptr, int8_t& dtype) {
  ptr = s.mask.defined() ? s.mask.data_ptr() : nullptr;
  dtype = s.mask.defined() ? static_cast<int8_t>(s.mask.scalar_type()) : int8_t(-1);
}

// ------------------------------------------------------------------ SGD

struct SgdHost {
  double momentum, dampening, weight_decay;
  bool maximize;
};

template <typename scalar_t, int kMode, bool kNesterov>
__global__ void __launch_bounds__(kThreads) sgd_kernel(const cuda::TensorGroup<4>* groups,
                                                       const cuda::ChunkRef* chunks,
                                                       int64_t n_chunks, CommonArgs a, SgdHost h) {
  using T = at::opmath_type<scalar_t>;
  if (skip_step(a)) return;
  const SgdScalars<T> s{static_cast<T>(-a.lr.get()), static_cast<T>(h.momentum),
                        static_cast<T>(1.0 - h.dampening), static_cast<T>(h.weight_decay),
                        static_cast<T>(h.maximize ? -1.0 : 1.0)};
  const T scale = static_cast<T>(a.grad_scale.get());
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const cuda::TensorGroup<4>& grp = groups[chunks[c].group];
    scalar_t* p = static_cast<scalar_t*>(grp.ptr[0]);
    const scalar_t* g = static_cast<const scalar_t*>(grp.ptr[1]);
    scalar_t* buf = static_cast<scalar_t*>(grp.ptr[2]);
    const uint8_t* keep = static_cast<const uint8_t*>(grp.ptr[3]);
    const bool packed = grp.dtype[3] == kPackedMask;
    const int64_t begin = chunks[c].start;
    const int64_t end = ::min(grp.numel, begin + kChunk);
    for (int64_t base = begin; base < end; base += int64_t(kThreads) * kIlp) {
      T rp[kIlp], rg[kIlp], rb[kIlp];
      bool rk[kIlp];
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        const int64_t i = base + threadIdx.x + int64_t(u) * kThreads;
        const bool in = i < end;
        rp[u] = in ? static_cast<T>(p[i]) : T(0);
        rg[u] = in ? static_cast<T>(g[i]) : T(0);
        rb[u] = (in && kMode == kMomentum) ? static_cast<T>(buf[i]) : T(0);
        rk[u] = in && kept(keep, packed, i);
      }
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        sgd_element<T, kMode, kNesterov>(rk[u], rp[u], rg[u], rb[u], scale, s);
      }
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        const int64_t i = base + threadIdx.x + int64_t(u) * kThreads;
        if (i < end) {
          p[i] = static_cast<scalar_t>(rp[u]);
          if (kMode != kNoMomentum) buf[i] = static_cast<scalar_t>(rb[u]);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ Adam

struct AdamDev {
  double beta1, beta2, weight_decay, eps;
  bool decoupled, maximize;
};

__global__ void increment_steps(float* const* steps, int64_t n, CommonArgs a) {
  if (skip_step(a)) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    *steps[i] += 1.0f;
  }
}

template <typename T>
__device__ AdamScalars<T> adam_scalars(const AdamDev& h, double lr, double step) {
  AdamScalars<T> s;
  s.beta1_weight = static_cast<T>(1.0 - h.beta1);
  s.beta2 = static_cast<T>(h.beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - h.beta2);
  s.eps = static_cast<T>(h.eps);
  s.weight_decay = static_cast<T>(h.decoupled ? 0.0 : h.weight_decay);
  s.decay = static_cast<T>(h.decoupled ? 1.0 - lr * h.weight_decay : 1.0);
  const double bc1 = 1.0 - ::pow(h.beta1, step);
  const double bc2 = 1.0 - ::pow(h.beta2, step);
  s.neg_step_size = static_cast<T>(-(lr / bc1));
  s.bias_correction2_sqrt = static_cast<T>(::sqrt(bc2));
  s.sign = static_cast<T>(h.maximize ? -1.0 : 1.0);
  return s;
}

// ptr: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq, 5 mask, 6 step.
// kScaled = false without a grad scale: the division by 1 is skipped (an IEEE
// division is a multi-instruction sequence here; x / 1 == x, so the result is
// the same; the kernel went from 0.282 to 0.264 ms on resnet50 on an H200).
// 4 elements per thread: 2 (40-50 registers instead of 64) was slower, 0.309 ms.
template <typename scalar_t, bool kAmsgrad, bool kScaled>
__global__ void __launch_bounds__(kThreads) adam_kernel(const cuda::TensorGroup<7>* groups,
                                                        const cuda::ChunkRef* chunks,
                                                        int64_t n_chunks, CommonArgs a, AdamDev h) {
  using T = at::opmath_type<scalar_t>;
  if (skip_step(a)) return;
  const double lr = a.lr.get();
  const T scale = static_cast<T>(a.grad_scale.get());
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const cuda::TensorGroup<7>& grp = groups[chunks[c].group];
    const AdamScalars<T> s =
        adam_scalars<T>(h, lr, double(*static_cast<const float*>(grp.ptr[6])));
    scalar_t* p = static_cast<scalar_t*>(grp.ptr[0]);
    const scalar_t* g = static_cast<const scalar_t*>(grp.ptr[1]);
    scalar_t* m = static_cast<scalar_t*>(grp.ptr[2]);
    scalar_t* v = static_cast<scalar_t*>(grp.ptr[3]);
    scalar_t* x = static_cast<scalar_t*>(grp.ptr[4]);
    const uint8_t* keep = static_cast<const uint8_t*>(grp.ptr[5]);
    const bool packed = grp.dtype[5] == kPackedMask;
    const int64_t begin = chunks[c].start;
    const int64_t end = ::min(grp.numel, begin + kChunk);
    for (int64_t base = begin; base < end; base += int64_t(kThreads) * kIlp) {
      T rp[kIlp], rg[kIlp], rm[kIlp], rv[kIlp], rx[kIlp];
      bool rk[kIlp];
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        const int64_t i = base + threadIdx.x + int64_t(u) * kThreads;
        const bool in = i < end;
        rp[u] = in ? static_cast<T>(p[i]) : T(0);
        rg[u] = in ? static_cast<T>(g[i]) : T(0);
        rm[u] = in ? static_cast<T>(m[i]) : T(0);
        rv[u] = in ? static_cast<T>(v[i]) : T(0);
        rx[u] = (in && kAmsgrad) ? static_cast<T>(x[i]) : T(0);
        rk[u] = in && kept(keep, packed, i);
      }
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        T pp, mm, vm;
        adam_moments<T, kAmsgrad, kScaled>(rk[u], rp[u], rg[u], rm[u], rv[u], rx[u], scale, s, pp, mm, vm);
        rp[u] = adam_param(rk[u], pp, mm, opt_sqrt(vm), s);
      }
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        const int64_t i = base + threadIdx.x + int64_t(u) * kThreads;
        if (i < end) {
          p[i] = static_cast<scalar_t>(rp[u]);
          m[i] = static_cast<scalar_t>(rm[u]);
          v[i] = static_cast<scalar_t>(rv[u]);
          if (kAmsgrad) x[i] = static_cast<scalar_t>(rx[u]);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ host

CommonArgs common_args(double lr, const std::optional<at::Tensor>& lr_tensor,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf) {
  CommonArgs a;
  a.lr = lr_tensor.has_value() ? dev_scalar(lr_tensor, lr) : dev_scalar(std::nullopt, lr);
  a.grad_scale = dev_scalar(grad_scale, 1.0);
  a.found_inf = dev_scalar(found_inf, 0.0);
  return a;
}

// Slot indices by parameter dtype: one launch per dtype.
std::map<at::ScalarType, std::vector<size_t>> by_dtype(const std::vector<Slot>& slots) {
  std::map<at::ScalarType, std::vector<size_t>> out;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].param.numel() > 0) out[slots[i].param.scalar_type()].push_back(i);
  }
  return out;
}

template <int N>
struct Uploaded {
  at::Tensor keep_alive;  // the device buffer the pointers point into
  const cuda::TensorGroup<N>* groups;
  const cuda::ChunkRef* chunks;
  int64_t n_chunks;
};

template <int N, typename Fill>
Uploaded<N> upload_groups(
    const std::vector<Slot>& slots, const std::vector<size_t>& idx, const at::Device& dev, Fill fill) {
  std::vector<cuda::TensorGroup<N>> groups(idx.size());
  std::vector<int64_t> numels(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    std::memset(&groups[k], 0, sizeof(cuda::TensorGroup<N>));
    groups[k].numel = numels[k] = slots[idx[k]].param.numel();
    fill(slots[idx[k]], groups[k]);
  }
  const std::vector<cuda::ChunkRef> chunks = cuda::make_chunks(numels, kChunk);
  cuda::DeviceUpload up;
  const int64_t g_off = up.put(groups.data(), static_cast<int64_t>(groups.size()));
  const int64_t c_off = up.put(chunks.data(), static_cast<int64_t>(chunks.size()));
  at::Tensor buf = up.upload(dev);
  const uint8_t* base = buf.data_ptr<uint8_t>();
  return Uploaded<N>{buf, reinterpret_cast<const cuda::TensorGroup<N>*>(base + g_off),
          reinterpret_cast<const cuda::ChunkRef*>(base + c_off),
          static_cast<int64_t>(chunks.size())};
}

int grid_for(int64_t n_chunks) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return cuda::chunk_grid(n_chunks, kChunk, kThreads, prop->multiProcessorCount,
                          prop->maxThreadsPerMultiProcessor);
}

void masked_sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     const std::vector<std::optional<at::Tensor>>& masks, double lr,
                     const std::optional<at::Tensor>& lr_tensor, double momentum,
                     double dampening, double weight_decay, bool nesterov, bool maximize,
                     bool is_first_step, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "lthfast.masked_sgd_";
  std::vector<Slot> slots = make_slots(params, grads, masks, at::kCUDA, op);
  const bool with_momentum = momentum != 0.0;
  check_list_size(momentum_buffers.size(), with_momentum ? params.size() : 0,
                  with_momentum ? "momentum_buffers" : "momentum_buffers (momentum is 0)", op);
  for (size_t i = 0; with_momentum && i < slots.size(); ++i) {
    check_like(momentum_buffers[i], slots[i].param, "momentum_buffers", static_cast<int64_t>(i), op);
    slots[i].state[0] = momentum_buffers[i];
  }
  if (slots.empty()) return;
  const at::Device dev = slots[0].param.device();
  check_optional_scalars(lr_tensor, grad_scale, found_inf, dev, op);
  c10::cuda::CUDAGuard guard(dev);
  const CommonArgs a = common_args(lr, lr_tensor, grad_scale, found_inf);
  const SgdHost h{momentum, dampening, weight_decay, maximize};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (const auto& kv : by_dtype(slots)) {
    const at::ScalarType dtype = kv.first;
    const std::vector<size_t>& idx = kv.second;
    const Uploaded<4> u = upload_groups<4>(
        slots, idx, dev, [](const Slot& s, cuda::TensorGroup<4>& g) {
          g.ptr[0] = s.param.data_ptr();
          g.ptr[1] = s.grad.data_ptr();
          g.ptr[2] = s.state[0].defined() ? s.state[0].data_ptr() : nullptr;
          set_mask(s, g.ptr[3], g.dtype[3]);
        });
    const auto* groups = u.groups;
    const auto* chunks = u.chunks;
    const int64_t n_chunks = u.n_chunks;
    const int grid = grid_for(n_chunks);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_sgd_cuda", [&] {
      if (!with_momentum) {
        sgd_kernel<scalar_t, kNoMomentum, false><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
      } else if (is_first_step) {
        if (nesterov) sgd_kernel<scalar_t, kFirstStep, true><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
        else sgd_kernel<scalar_t, kFirstStep, false><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
      } else {
        if (nesterov) sgd_kernel<scalar_t, kMomentum, true><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
        else sgd_kernel<scalar_t, kMomentum, false><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

void masked_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                      at::TensorList state_steps,
                      const std::vector<std::optional<at::Tensor>>& masks, double lr,
                      const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                      double weight_decay, double eps, bool amsgrad, bool maximize,
                      bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "lthfast.masked_adam_";
  std::vector<Slot> slots = make_slots(params, grads, masks, at::kCUDA, op);
  const size_t n = slots.size();
  check_list_size(exp_avgs.size(), n, "exp_avgs", op);
  check_list_size(exp_avg_sqs.size(), n, "exp_avg_sqs", op);
  check_list_size(max_exp_avg_sqs.size(), amsgrad ? n : 0,
                  amsgrad ? "max_exp_avg_sqs" : "max_exp_avg_sqs (amsgrad is False)", op);
  check_list_size(state_steps.size(), n, "state_steps", op);
  for (size_t i = 0; i < n; ++i) {
    const auto ii = static_cast<int64_t>(i);
    check_like(exp_avgs[i], slots[i].param, "exp_avgs", ii, op);
    check_like(exp_avg_sqs[i], slots[i].param, "exp_avg_sqs", ii, op);
    if (amsgrad) check_like(max_exp_avg_sqs[i], slots[i].param, "max_exp_avg_sqs", ii, op);
    const at::Tensor& st = state_steps[i];
    TORCH_CHECK(st.numel() == 1 && st.scalar_type() == at::kFloat && st.device() == slots[i].param.device(),
                op, ": state_steps[", i, "] must be a 1-element float32 tensor on ",
                slots[i].param.device(), " (got ", st.scalar_type(), " on ", st.device(), ")");
    slots[i].state[0] = exp_avgs[i];
    slots[i].state[1] = exp_avg_sqs[i];
    if (amsgrad) slots[i].state[2] = max_exp_avg_sqs[i];
    slots[i].step = st;
  }
  if (slots.empty()) return;
  const at::Device dev = slots[0].param.device();
  check_optional_scalars(lr_tensor, grad_scale, found_inf, dev, op);
  c10::cuda::CUDAGuard guard(dev);
  const CommonArgs a = common_args(lr, lr_tensor, grad_scale, found_inf);
  const AdamDev h{beta1, beta2, weight_decay, eps, decoupled_weight_decay, maximize};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  {  // step counters first (all of them, empty params too, as torch.optim does)
    std::vector<float*> steps(n);
    for (size_t i = 0; i < n; ++i) steps[i] = slots[i].step.data_ptr<float>();
    cuda::DeviceUpload up;
    const int64_t off = up.put(steps.data(), static_cast<int64_t>(n));
    at::Tensor buf = up.upload(dev);
    const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 1024));
    increment_steps<<<blocks, 256, 0, stream>>>(
        reinterpret_cast<float* const*>(buf.data_ptr<uint8_t>() + off), static_cast<int64_t>(n), a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (const auto& kv : by_dtype(slots)) {
    const at::ScalarType dtype = kv.first;
    const std::vector<size_t>& idx = kv.second;
    const Uploaded<7> u = upload_groups<7>(
        slots, idx, dev, [](const Slot& s, cuda::TensorGroup<7>& g) {
          g.ptr[0] = s.param.data_ptr();
          g.ptr[1] = s.grad.data_ptr();
          g.ptr[2] = s.state[0].data_ptr();
          g.ptr[3] = s.state[1].data_ptr();
          g.ptr[4] = s.state[2].defined() ? s.state[2].data_ptr() : nullptr;
          set_mask(s, g.ptr[5], g.dtype[5]);
          g.ptr[6] = s.step.data_ptr();
        });
    const auto* groups = u.groups;
    const auto* chunks = u.chunks;
    const int64_t n_chunks = u.n_chunks;
    const int grid = grid_for(n_chunks);
    const bool scaled = a.grad_scale.ptr != nullptr || a.grad_scale.host != 1.0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_adam_cuda", [&] {
      if (amsgrad) {
        if (scaled) adam_kernel<scalar_t, true, true><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
        else adam_kernel<scalar_t, true, false><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
      } else {
        if (scaled) adam_kernel<scalar_t, false, true><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
        else adam_kernel<scalar_t, false, false><<<grid, kThreads, 0, stream>>>(groups, chunks, n_chunks, a, h);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("masked_sgd_", &masked_sgd_cuda);
  m.impl("masked_adam_", &masked_adam_cuda);
}

}  // namespace masked_optim
}  // namespace lthfast
