// CUDA sparse convolution and sparse linear on weights compressed by sparse_pack
// (compile-checked only: no GPU was available where this was written).
//
// Convolution: one thread per output element; the threads of a block share
// (sample, output channel), so they walk the same kept weights (broadcast loads)
// and read neighbouring input columns (coalesced). Work = kept weights x output.
// Linear: one warp per (row, output feature), a strided dot over the kept
// weights and a warp reduction.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/masked_conv/masked_conv_check.h"

namespace lthfast {
namespace masked_conv {
namespace {

struct ConvGeom {
  int64_t C, H, W, Cout, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, Cg, Coutg;
};

template <typename scalar_t, typename acc_t>
__global__ void sparse_conv2d_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ rowptr,
                                     const int32_t* __restrict__ colidx, const acc_t* __restrict__ vals,
                                     const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                     ConvGeom g) {
  const int64_t plane = g.OH * g.OW;
  const int64_t no = blockIdx.x;  // n * Cout + o
  const int64_t n = no / g.Cout, o = no % g.Cout;
  // Grid-stride over the plane: gridDim.y is capped at 65535.
  for (int64_t p = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; p < plane;
       p += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t oh = p / g.OW, ow = p % g.OW;
    const int64_t ih0 = oh * g.sh - g.ph, iw0 = ow * g.sw - g.pw;
    const int64_t cbase = (o / g.Coutg) * g.Cg;
    const scalar_t* xn = x + n * g.C * g.H * g.W;
    acc_t acc = bias ? static_cast<acc_t>(bias[o]) : acc_t(0);
    const int64_t kk = g.KH * g.KW;
    for (int64_t t = rowptr[o]; t < rowptr[o + 1]; ++t) {
      const int64_t col = colidx[t];
      const int64_t c = cbase + col / kk, k = col % kk;
      const int64_t ih = ih0 + (k / g.KW) * g.dh, iw = iw0 + (k % g.KW) * g.dw;
      if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        acc += vals[t] * static_cast<acc_t>(xn[(c * g.H + ih) * g.W + iw]);
      }
    }
    y[no * plane + p] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sparse_linear_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ rowptr,
                                     const int32_t* __restrict__ colidx, const acc_t* __restrict__ vals,
                                     const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                     int64_t M, int64_t O, int64_t K) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= M * O) return;
  const int64_t m = warp / O, o = warp % O;
  const scalar_t* xm = x + m * K;
  acc_t acc = 0;
  for (int64_t t = rowptr[o] + lane; t < rowptr[o + 1]; t += 32) {
    acc += vals[t] * static_cast<acc_t>(xm[colidx[t]]);
  }
  for (int d = 16; d > 0; d /= 2) acc += __shfl_down_sync(0xffffffffu, acc, d);
  if (lane == 0) y[m * O + o] = static_cast<scalar_t>(acc + (bias ? static_cast<acc_t>(bias[o]) : acc_t(0)));
}

void check_bias_cuda(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& input,
                     int64_t out) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, op, ": bias must have shape [", out,
                    "], got ", bias->sizes());
  TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ",
                   bias->scalar_type(), " does not match input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(bias->device() == input.device(), op, ": bias is on ", bias->device(),
                    " but input is on ", input.device());
}

at::Tensor sparse_conv2d_cuda(const at::Tensor& input, const at::Tensor& rowptr,
                              const at::Tensor& colidx, const at::Tensor& values,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  const char* op = "sparse_conv2d";
  check_packed(op, input, rowptr, colidx, values);
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0, op,
                    ": kernel_size must be 2 positive values, got ", kernel_size);
  TORCH_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got a ", input.dim(),
                    "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(1) % groups == 0, op, ": input channels ", input.size(1),
                    " are not divisible by groups = ", groups);
  const int64_t cout = rowptr.size(0) - 1;
  check_conv_geometry(op, input, cout, input.size(1) / groups, kernel_size, stride, padding,
                      dilation, groups);
  check_bias_cuda(op, bias, input, cout);
  c10::cuda::CUDAGuard guard(input.device());
  ConvGeom g{input.size(1), input.size(2), input.size(3), cout,
             conv_out_size(input.size(2), kernel_size[0], stride[0], padding[0], dilation[0]),
             conv_out_size(input.size(3), kernel_size[1], stride[1], padding[1], dilation[1]),
             kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
             dilation[0], dilation[1], input.size(1) / groups, cout / groups};
  auto out = at::empty({input.size(0), cout, g.OH, g.OW}, input.options());
  if (out.numel() == 0) return out;
  const int64_t cols = g.Cg * g.KH * g.KW;
  check_rowptr(op, rowptr, colidx.numel());  // a corrupt pack must not read out of bounds
  if (colidx.numel() > 0) {
    TORCH_CHECK_VALUE(colidx.max().item<int32_t>() < cols && colidx.min().item<int32_t>() >= 0,
                      op, ": rowptr/colidx do not describe a weight of ", cols, " columns");
  }
  auto x = input.contiguous();
  auto rp = rowptr.contiguous(), ci = colidx.contiguous(), va = values.contiguous();
  const int threads = 128;
  const int64_t plane = g.OH * g.OW;
  const int64_t rows = input.size(0) * cout;
  const int64_t tiles = std::min<int64_t>((plane + threads - 1) / threads, 65535);  // grid-stride
  TORCH_CHECK_VALUE(rows < (int64_t(1) << 31), op, ": output of ", out.sizes(),
                    " exceeds the CUDA grid limits");
  dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(tiles));
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor bias_c = contiguous_bias(bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sparse_conv2d_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    sparse_conv2d_kernel<scalar_t, acc_t><<<grid, threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), rp.const_data_ptr<int64_t>(), ci.const_data_ptr<int32_t>(),
        va.const_data_ptr<acc_t>(), bp, out.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& input, const at::Tensor& rowptr,
                              const at::Tensor& colidx, const at::Tensor& values,
                              const std::optional<at::Tensor>& bias) {
  const char* op = "sparse_linear";
  check_packed(op, input, rowptr, colidx, values);
  TORCH_CHECK_VALUE(input.dim() >= 1, op, ": input must have at least 1 dimension");
  const int64_t O = rowptr.size(0) - 1, K = input.size(-1);
  check_bias_cuda(op, bias, input, O);
  c10::cuda::CUDAGuard guard(input.device());
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = O;
  auto out = at::empty(out_sizes, input.options());
  if (out.numel() == 0) return out;
  check_rowptr(op, rowptr, colidx.numel());
  if (colidx.numel() > 0) {
    TORCH_CHECK_VALUE(colidx.max().item<int32_t>() < K && colidx.min().item<int32_t>() >= 0,
                      op, ": rowptr/colidx do not describe a weight with ", K, " input features");
  }
  const int64_t M = out.numel() / O;  // not reshape(-1, K): K may be 0
  auto x = input.reshape({M, K}).contiguous();
  auto rp = rowptr.contiguous(), ci = colidx.contiguous(), va = values.contiguous();
  const int threads = 256;
  const int64_t blocks = (M * O * 32 + threads - 1) / threads;
  TORCH_CHECK_VALUE(blocks <= 0x7FFFFFFF, op, ": output of ", out.sizes(),
                    " exceeds the CUDA grid limits");
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor bias_c = contiguous_bias(bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sparse_linear_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    sparse_linear_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), rp.const_data_ptr<int64_t>(), ci.const_data_ptr<int32_t>(),
        va.const_data_ptr<acc_t>(), bp, out.data_ptr<scalar_t>(), M, O, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CUDA, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cuda);
  m.impl("sparse_linear", &sparse_linear_cuda);
}

}  // namespace masked_conv
}  // namespace lthfast
