// CPU kernels of the fused masked optimizers: masked_sgd_ and masked_adam_.
//
// Every tensor is cut into chunks (memory-order ranges: params, grads, states
// and masks share one layout), and one parallel_for walks all chunks of all
// tensors: one pass that reads weight, grad, state and mask once and writes
// weight and state once. fp32/fp64 chunks are updated in place by loops the
// compiler vectorises; fp16/bf16 chunks go through small fp32 buffers. A
// packed mask (1 bit per entry) is expanded block by block into a small byte
// array that the same loops read.

// Before any include: the update loops select with `keep ? x : 0` after
// divisions; with trapping-math GCC will not turn those selects into vector
// blends. Only floating-point exception flags are affected, never values.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "ops/common/parallel_items.h"
#include "ops/masked_optim/masked_optim_args.h"
#include "ops/masked_optim/update_math.h"

namespace lthfast {
namespace masked_optim {
namespace {

// The element loops are built for AVX2 and for the baseline ISA (SSE2 on
// x86-64), picked at load time (GCC function multiversioning).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LTHFAST_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LTHFAST_SIMD_CLONES
#endif

constexpr int64_t kChunk = 1 << 15;  // elements per parallel work item
constexpr int64_t kBlock = 256;      // fp16/bf16 conversion, Adam sqrt and mask expansion block
static_assert(kChunk % kBlock == 0 && kBlock % 8 == 0, "blocks must start on whole mask bytes");

struct Chunk {
  int64_t slot, begin, end;
};

std::vector<Chunk> make_chunks(const std::vector<Slot>& slots) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t n = slots[i].param.numel();
    for (int64_t b = 0; b < n; b += kChunk) {
      chunks.push_back({static_cast<int64_t>(i), b, std::min(n, b + kChunk)});
    }
  }
  return chunks;
}

// f(chunk, its slot, its length) for every chunk of the slots, on torch's threads.
template <typename F>
void for_each_chunk(const std::vector<Slot>& slots, const F& f) {
  const std::vector<Chunk> chunks = make_chunks(slots);
  parallel_items(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[c];
    f(ch, slots[ch.slot], ch.end - ch.begin);
  });
}

// keep[0, 8 * nbytes) = the bits of packed[0, nbytes) as bytes 0/1, LSB first.
// Per byte, branch-free and table-free: replicate it into the 8 bytes of a
// word, keep bit j in byte j, then turn each nonzero byte into 1.
inline void expand_bits(const uint8_t* __restrict packed, int64_t nbytes, uint8_t* __restrict keep) {
  for (int64_t i = 0; i < nbytes; ++i) {
    uint64_t x = (packed[i] * 0x0101010101010101ULL) & 0x8040201008040201ULL;
    x = ((x + 0x7F7F7F7F7F7F7F7FULL) >> 7) & 0x0101010101010101ULL;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    std::memcpy(keep + 8 * i, &x, 8);  // byte j of x is the j-th in memory
#else
    for (int j = 0; j < 8; ++j) keep[8 * i + j] = static_cast<uint8_t>(x >> (8 * j));
#endif
  }
}

// How the update loops read a mask: none, bytes (a bool mask) or bits (packed).
enum KeepKind : int { kKeepNone = 0, kKeepBytes = 1, kKeepBits = 2 };

// The mask of a slot from entry `begin` on (bytes or bits; begin is a multiple
// of 8 as chunks are multiples of kChunk, so bits start on a whole byte).
inline const uint8_t* keep_ptr(const Slot& s, int64_t begin) {
  if (!s.mask.defined()) return nullptr;
  if (s.packed) return s.mask.data_ptr<uint8_t>() + begin / 8;
  return reinterpret_cast<const uint8_t*>(s.mask.data_ptr<bool>()) + begin;
}

inline int keep_kind(const Slot& s) {
  return !s.mask.defined() ? kKeepNone : (s.packed ? kKeepBits : kKeepBytes);
}

// Calls f(offset, count, keep bytes or nullptr) over [0, n) of a chunk whose
// mask is `keep` (of kind `kind`); packed bits are expanded kBlock entries at a
// time into a local byte array. For the reduced-precision paths, which work in
// kBlock blocks anyway.
template <typename F>
inline void for_keep_blocks(const uint8_t* keep, int kind, int64_t n, F&& f) {
  if (kind != kKeepBits) {
    f(int64_t(0), n, keep);
    return;
  }
  alignas(64) uint8_t bytes[kBlock];
  for (int64_t o = 0; o < n; o += kBlock) {
    const int64_t k = std::min(kBlock, n - o);
    expand_bits(keep + o / 8, (k + 7) / 8, bytes);
    f(o, k, static_cast<const uint8_t*>(bytes));
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// ------------------------------------------------------------------ SGD

template <typename T, int kMode, bool kNesterov, int kKeep>
inline void sgd_span(int64_t n, T* __restrict p, const T* __restrict g, T* __restrict buf,
                     const uint8_t* __restrict keep, T scale, const SgdScalars<T>& s) {
  for (int64_t j = 0; j < n; ++j) {
    T pj = p[j];
    T b = (kMode == kMomentum) ? buf[j] : T(0);
    sgd_element<T, kMode, kNesterov>(kKeep != kKeepNone ? keep[j] != 0 : true, pj, g[j], b, scale, s);
    p[j] = pj;
    if (kMode != kNoMomentum) buf[j] = b;
  }
}

// keep: bytes, or packed bits expanded here block by block (in the same
// function as the update loop, so per block costs no call).
template <typename T, int kMode, bool kNesterov, int kKeep>
LTHFAST_SIMD_CLONES void sgd_loop(int64_t n, T* __restrict p, const T* __restrict g, T* __restrict buf,
              const uint8_t* __restrict keep, T scale, const SgdScalars<T>& scalars) {
  const SgdScalars<T> s = scalars;  // a local copy: stores to p cannot alias it
  if constexpr (kKeep != kKeepBits) {
    sgd_span<T, kMode, kNesterov, kKeep>(n, p, g, buf, keep, scale, s);
  } else {
    alignas(64) uint8_t bytes[kBlock];
    for (int64_t o = 0; o < n; o += kBlock) {
      const int64_t k = std::min(kBlock, n - o);
      expand_bits(keep + o / 8, (k + 7) / 8, bytes);
      sgd_span<T, kMode, kNesterov, kKeepBytes>(k, p + o, g + o,
                                                kMode == kNoMomentum ? buf : buf + o, bytes,
                                                scale, s);
    }
  }
}

template <typename T, int kMode, bool kNesterov>
void sgd_range(int64_t n, T* p, const T* g, T* buf, const uint8_t* keep, int kind, T scale,
               const SgdScalars<T>& s) {
  if (kind == kKeepBits) {
    sgd_loop<T, kMode, kNesterov, kKeepBits>(n, p, g, buf, keep, scale, s);
  } else if (kind == kKeepBytes) {
    sgd_loop<T, kMode, kNesterov, kKeepBytes>(n, p, g, buf, keep, scale, s);
  } else {
    sgd_loop<T, kMode, kNesterov, kKeepNone>(n, p, g, buf, keep, scale, s);
  }
}

// A chunk of a reduced-precision tensor: convert to fp32 blocks, update, store.
template <typename scalar_t, int kMode, bool kNesterov>
void sgd_reduced(int64_t n, scalar_t* p, const scalar_t* g, scalar_t* buf, const uint8_t* keep,
                 float scale, const SgdScalars<float>& s) {
  float pb[kBlock], gb[kBlock], bb[kBlock];
  for (int64_t o = 0; o < n; o += kBlock) {
    const int64_t m = std::min(kBlock, n - o);
    for (int64_t j = 0; j < m; ++j) {
      pb[j] = static_cast<float>(p[o + j]);
      gb[j] = static_cast<float>(g[o + j]);
      bb[j] = kMode == kMomentum ? static_cast<float>(buf[o + j]) : 0.f;
    }
    sgd_range<float, kMode, kNesterov>(m, pb, gb, bb, keep ? keep + o : nullptr,
                                       keep ? kKeepBytes : kKeepNone, scale, s);
    for (int64_t j = 0; j < m; ++j) {
      p[o + j] = static_cast<scalar_t>(pb[j]);
      if (kMode != kNoMomentum) buf[o + j] = static_cast<scalar_t>(bb[j]);
    }
  }
}

template <int kMode, bool kNesterov>
void sgd_chunks(const std::vector<Slot>& slots, double lr, double momentum, double dampening,
                double weight_decay, bool maximize, double scale) {
  for_each_chunk(slots, [&](const Chunk& ch, const Slot& sl, int64_t n) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sl.param.scalar_type(),
                                    "masked_sgd_cpu", [&] {
      using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const SgdScalars<opmath_t> s{static_cast<opmath_t>(-lr), static_cast<opmath_t>(momentum),
                                   static_cast<opmath_t>(1.0 - dampening),
                                   static_cast<opmath_t>(weight_decay),
                                   static_cast<opmath_t>(maximize ? -1.0 : 1.0)};
      scalar_t* p = ptr<scalar_t>(sl.param) + ch.begin;
      const scalar_t* g = ptr<scalar_t>(sl.grad) + ch.begin;
      scalar_t* buf = kMode == kNoMomentum ? nullptr : ptr<scalar_t>(sl.state[0]) + ch.begin;
      const uint8_t* keep = keep_ptr(sl, ch.begin);
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        sgd_range<opmath_t, kMode, kNesterov>(n, p, g, buf, keep, keep_kind(sl),
                                              static_cast<opmath_t>(scale), s);
      } else {
        for_keep_blocks(keep, keep_kind(sl), n, [&](int64_t o, int64_t k, const uint8_t* kb) {
          sgd_reduced<scalar_t, kMode, kNesterov>(k, p + o, g + o, buf ? buf + o : nullptr, kb,
                                                  static_cast<float>(scale), s);
        });
      }
    });
  });
}

// Scale the grads are divided by (1 when none); nullopt when found_inf says skip.
std::optional<double> scale_or_skip(const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return std::nullopt;
  return grad_scale.has_value() ? grad_scale->item<double>() : 1.0;
}

void masked_sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    const std::vector<std::optional<at::Tensor>>& masks, double lr,
                    const std::optional<at::Tensor>& lr_tensor, double momentum, double dampening,
                    double weight_decay, bool nesterov, bool maximize, bool is_first_step,
                    const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "lthfast.masked_sgd_";
  std::vector<Slot> slots = make_slots(params, grads, masks, at::kCPU, op);
  const bool with_momentum = momentum != 0.0;
  check_list_size(momentum_buffers.size(), with_momentum ? params.size() : 0,
                  with_momentum ? "momentum_buffers" : "momentum_buffers (momentum is 0)", op);
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!with_momentum) break;
    check_like(momentum_buffers[i], slots[i].param, "momentum_buffers", static_cast<int64_t>(i), op);
    slots[i].state[0] = momentum_buffers[i];
  }
  if (slots.empty()) return;
  check_optional_scalars(lr_tensor, grad_scale, found_inf, slots[0].param.device(), op);
  const std::optional<double> scale = scale_or_skip(grad_scale, found_inf);
  if (!scale.has_value()) return;
  const double lr_value = lr_tensor.has_value() ? lr_tensor->item<double>() : lr;
  if (!with_momentum) {
    sgd_chunks<kNoMomentum, false>(slots, lr_value, momentum, dampening, weight_decay, maximize, *scale);
  } else if (is_first_step) {
    if (nesterov) sgd_chunks<kFirstStep, true>(slots, lr_value, momentum, dampening, weight_decay, maximize, *scale);
    else sgd_chunks<kFirstStep, false>(slots, lr_value, momentum, dampening, weight_decay, maximize, *scale);
  } else {
    if (nesterov) sgd_chunks<kMomentum, true>(slots, lr_value, momentum, dampening, weight_decay, maximize, *scale);
    else sgd_chunks<kMomentum, false>(slots, lr_value, momentum, dampening, weight_decay, maximize, *scale);
  }
}

// ------------------------------------------------------------------ Adam

#if !defined(__NO_MATH_ERRNO__)
// In-place square roots of a block. With math-errno the compiler will not
// vectorise std::sqrt, so x86-64 uses the SSE2 instructions (same IEEE results).
template <typename T>
inline void sqrt_block(T* x, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 4 <= n; j += 4) _mm_storeu_ps(x + j, _mm_sqrt_ps(_mm_loadu_ps(x + j)));
  } else {
    for (; j + 2 <= n; j += 2) _mm_storeu_pd(x + j, _mm_sqrt_pd(_mm_loadu_pd(x + j)));
  }
#endif
  for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}
#endif

// Blocks of kBlock (keep: bytes, or packed bits expanded at the start of each
// block). Built with -fno-math-errno (setup.py), sqrt vectorises and each block
// is one fused loop; otherwise three: moments (vectorised), square roots,
// weights (vectorised). Same IEEE operations, same results, either way.
template <typename T, bool kAmsgrad, int kKeep, bool kScaled>
LTHFAST_SIMD_CLONES void adam_loop(int64_t n, T* __restrict p, const T* __restrict g, T* __restrict m,
               T* __restrict v, T* __restrict vmax, const uint8_t* __restrict keep, T scale,
               const AdamScalars<T>& scalars) {
  const AdamScalars<T> s = scalars;  // a local copy: stores to p cannot alias it
  alignas(64) uint8_t bytes[kKeep == kKeepBits ? kBlock : 1];
#if !defined(__NO_MATH_ERRNO__)
  T pp[kBlock], mm[kBlock], root[kBlock];
#endif
  for (int64_t o = 0; o < n; o += kBlock) {
    const int64_t k = std::min(kBlock, n - o);
    const uint8_t* __restrict kb = kKeep == kKeepBytes ? keep + o : bytes;
    if constexpr (kKeep == kKeepBits) expand_bits(keep + o / 8, (k + 7) / 8, bytes);
#if defined(__NO_MATH_ERRNO__)
    for (int64_t j = 0; j < k; ++j) {
      const bool kj = kKeep != kKeepNone ? kb[j] != 0 : true;
      T mj = m[o + j], vj = v[o + j];
      T xj = kAmsgrad ? vmax[o + j] : T(0);
      T pp, mm, vm;
      adam_moments<T, kAmsgrad, kScaled>(kj, p[o + j], g[o + j], mj, vj, xj, scale, s, pp, mm, vm);
      m[o + j] = mj;
      v[o + j] = vj;
      if (kAmsgrad) vmax[o + j] = xj;
      p[o + j] = adam_param<T>(kj, pp, mm, std::sqrt(vm), s);
    }
#else
    for (int64_t j = 0; j < k; ++j) {
      T mj = m[o + j], vj = v[o + j];
      T xj = kAmsgrad ? vmax[o + j] : T(0);
      adam_moments<T, kAmsgrad, kScaled>(kKeep != kKeepNone ? kb[j] != 0 : true, p[o + j],
                                         g[o + j], mj, vj, xj, scale, s, pp[j], mm[j], root[j]);
      m[o + j] = mj;
      v[o + j] = vj;
      if (kAmsgrad) vmax[o + j] = xj;
    }
    sqrt_block(root, k);
    for (int64_t j = 0; j < k; ++j) {
      p[o + j] = adam_param<T>(kKeep != kKeepNone ? kb[j] != 0 : true, pp[j], mm[j], root[j], s);
    }
#endif
  }
}

template <typename T, bool kAmsgrad, bool kScaled>
void adam_range_scaled(int64_t n, T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* keep,
                       int kind, T scale, const AdamScalars<T>& s) {
  if (kind == kKeepBits) {
    adam_loop<T, kAmsgrad, kKeepBits, kScaled>(n, p, g, m, v, vmax, keep, scale, s);
  } else if (kind == kKeepBytes) {
    adam_loop<T, kAmsgrad, kKeepBytes, kScaled>(n, p, g, m, v, vmax, keep, scale, s);
  } else {
    adam_loop<T, kAmsgrad, kKeepNone, kScaled>(n, p, g, m, v, vmax, keep, scale, s);
  }
}

template <typename T, bool kAmsgrad>
void adam_range(int64_t n, T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* keep, int kind,
                T scale, const AdamScalars<T>& s) {
  if (scale != T(1)) {
    adam_range_scaled<T, kAmsgrad, true>(n, p, g, m, v, vmax, keep, kind, scale, s);
  } else {
    adam_range_scaled<T, kAmsgrad, false>(n, p, g, m, v, vmax, keep, kind, scale, s);
  }
}

template <typename scalar_t, bool kAmsgrad>
void adam_reduced(int64_t n, scalar_t* p, const scalar_t* g, scalar_t* m, scalar_t* v,
                  scalar_t* vmax, const uint8_t* keep, float scale, const AdamScalars<float>& s) {
  float pb[kBlock], gb[kBlock], mb[kBlock], vb[kBlock], xb[kBlock];
  for (int64_t o = 0; o < n; o += kBlock) {
    const int64_t k = std::min(kBlock, n - o);
    for (int64_t j = 0; j < k; ++j) {
      pb[j] = static_cast<float>(p[o + j]);
      gb[j] = static_cast<float>(g[o + j]);
      mb[j] = static_cast<float>(m[o + j]);
      vb[j] = static_cast<float>(v[o + j]);
      xb[j] = kAmsgrad ? static_cast<float>(vmax[o + j]) : 0.f;
    }
    adam_range<float, kAmsgrad>(k, pb, gb, mb, vb, xb, keep ? keep + o : nullptr,
                                keep ? kKeepBytes : kKeepNone, scale, s);
    for (int64_t j = 0; j < k; ++j) {
      p[o + j] = static_cast<scalar_t>(pb[j]);
      m[o + j] = static_cast<scalar_t>(mb[j]);
      v[o + j] = static_cast<scalar_t>(vb[j]);
      if (kAmsgrad) vmax[o + j] = static_cast<scalar_t>(xb[j]);
    }
  }
}

template <bool kAmsgrad>
void adam_chunks(const std::vector<Slot>& slots, const std::vector<double>& steps,
                 const AdamHost& host, double scale) {
  for_each_chunk(slots, [&](const Chunk& ch, const Slot& sl, int64_t n) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sl.param.scalar_type(),
                                    "masked_adam_cpu", [&] {
      using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const AdamScalars<opmath_t> s = host.at_step<opmath_t>(steps[ch.slot]);
      scalar_t* p = ptr<scalar_t>(sl.param) + ch.begin;
      const scalar_t* g = ptr<scalar_t>(sl.grad) + ch.begin;
      scalar_t* m = ptr<scalar_t>(sl.state[0]) + ch.begin;
      scalar_t* v = ptr<scalar_t>(sl.state[1]) + ch.begin;
      scalar_t* x = kAmsgrad ? ptr<scalar_t>(sl.state[2]) + ch.begin : nullptr;
      const uint8_t* keep = keep_ptr(sl, ch.begin);
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        adam_range<opmath_t, kAmsgrad>(n, p, g, m, v, x, keep, keep_kind(sl),
                                       static_cast<opmath_t>(scale), s);
      } else {
        for_keep_blocks(keep, keep_kind(sl), n, [&](int64_t o, int64_t k, const uint8_t* kb) {
          adam_reduced<scalar_t, kAmsgrad>(k, p + o, g + o, m + o, v + o, x ? x + o : nullptr,
                                           kb, static_cast<float>(scale), s);
        });
      }
    });
  });
}

void masked_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                     at::TensorList state_steps,
                     const std::vector<std::optional<at::Tensor>>& masks, double lr,
                     const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                     double weight_decay, double eps, bool amsgrad, bool maximize,
                     bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "lthfast.masked_adam_";
  std::vector<Slot> slots = make_slots(params, grads, masks, at::kCPU, op);
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
    check_scalar(state_steps[i], "state_steps[i]", at::Device(at::kCPU), true, op);
    slots[i].state[0] = exp_avgs[i];
    slots[i].state[1] = exp_avg_sqs[i];
    if (amsgrad) slots[i].state[2] = max_exp_avg_sqs[i];
    slots[i].step = state_steps[i];
  }
  if (slots.empty()) return;
  check_optional_scalars(lr_tensor, grad_scale, found_inf, slots[0].param.device(), op);
  const std::optional<double> scale = scale_or_skip(grad_scale, found_inf);
  if (!scale.has_value()) return;  // found_inf: the step counters do not move either
  // step += 1 in the step's own dtype, as torch.optim does; through the pointer, not
  // add_() + item() (two dispatcher calls per tensor were most of a small model's step)
  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& st = state_steps[i];
    if (st.scalar_type() == at::kFloat) {
      float* v = static_cast<float*>(st.data_ptr());
      *v = *v + 1.0f;
      steps[i] = *v;
    } else {
      double* v = static_cast<double*>(st.data_ptr());
      *v = *v + 1.0;
      steps[i] = *v;
    }
    st.unsafeGetTensorImpl()->bump_version();  // an in-place write, as add_() would be
  }
  const AdamHost host{lr_tensor.has_value() ? lr_tensor->item<double>() : lr, beta1, beta2,
                      weight_decay, eps, decoupled_weight_decay, maximize};
  if (amsgrad) adam_chunks<true>(slots, steps, host, *scale);
  else adam_chunks<false>(slots, steps, host, *scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("masked_sgd_", &masked_sgd_cpu);
  m.impl("masked_adam_", &masked_adam_cpu);
}

}  // namespace masked_optim
}  // namespace lthfast
