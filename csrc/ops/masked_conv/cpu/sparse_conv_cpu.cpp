// CPU sparse convolution and sparse linear on weights compressed by sparse_pack.
//
// Convolution: the input is copied once into phase-split padded planes: for
// stride (sh, sw) each channel becomes (up to) sh*sw planes P[ph][pw][r][q] =
// padded_input[r*sh + ph][q*sw + pw], of row pitch Wq >= OW + ((KW-1)*dw)/sw
// (only the phases some tap reads are built). A kept weight at (c, kh, kw)
// then reads ONE contiguous range of its plane:
//   out[oh*Wq + ow] += w * P_c[(kh*dh)%sh][(kw*dw)%sw][(oh + (kh*dh)/sh)*Wq + ow + (kw*dw)/sw]
// for the whole output plane at once (columns ow >= OW are computed and
// dropped). So the work is (kept weights) x (output plane), vectorised along
// it, with no index arithmetic in the inner loop. The plane is held in
// registers (up to 16 64-byte vectors with AVX-512, 6 with AVX2; wider planes:
// equal tiles), the input channels are cut in blocks whose rows fit L1, and
// threads split (sample, chunk of output channels), one large chunk per thread
// so that every output channel of it reads a block while it is in L1. Floor
// and measurements: docs/masked-conv.md.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ops/masked_conv/cpu/sparse_isa.h"
#include "ops/masked_conv/masked_conv_check.h"

namespace lthfast {
namespace masked_conv {
namespace cpu_rows {

// Vector widths and register budgets (sparse_rows_kernel.h), the budgets in
// 64-byte units: AVX-512 has 32 zmm registers (16 accumulators), AVX2 16 ymm (6
// units of two ymm), SSE2 16 xmm (3 units of four xmm).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LTHFAST_MULTIVERSION 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define LTHFAST_ROWS_VBYTES 64
#define LTHFAST_ROWS_ACC 16
#define LTHFAST_ROWS_INFLIGHT 8
namespace avx512 {
#include "ops/masked_conv/cpu/sparse_rows_kernel.h"
}
#undef LTHFAST_ROWS_VBYTES
#undef LTHFAST_ROWS_ACC
#undef LTHFAST_ROWS_INFLIGHT
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define LTHFAST_ROWS_VBYTES 32
#define LTHFAST_ROWS_ACC 6
#define LTHFAST_ROWS_INFLIGHT 4
namespace avx2 {
#include "ops/masked_conv/cpu/sparse_rows_kernel.h"
}
#undef LTHFAST_ROWS_VBYTES
#undef LTHFAST_ROWS_ACC
#undef LTHFAST_ROWS_INFLIGHT
#pragma GCC pop_options
#endif
#define LTHFAST_ROWS_VBYTES 16
#define LTHFAST_ROWS_ACC 3
#define LTHFAST_ROWS_INFLIGHT 2
namespace base {
#include "ops/masked_conv/cpu/sparse_rows_kernel.h"
}
#undef LTHFAST_ROWS_VBYTES
#undef LTHFAST_ROWS_ACC
#undef LTHFAST_ROWS_INFLIGHT

// The kernels of the best instruction set this CPU has (capped by
// cap_sparse_cpu_isa, for tests): tile tables indexed by a tile's width in
// 64-byte units, the strided and the whole-row copies of the input.
template <typename T>
using TileFn = base::TileFn<T>;
using CopyFn = void (*)(const float*, int64_t, float*, int64_t);
using RowFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, float*);
enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"base", "avx2", "avx512"};
inline Isa supported() {
#ifdef LTHFAST_MULTIVERSION
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kBase;
}
inline std::atomic<int>& isa_cap() {
  static std::atomic<int> cap{kAvx512};
  return cap;
}
inline Isa isa() { return static_cast<Isa>(std::min<int>(supported(), isa_cap().load())); }

// The vector row copy needs 512-bit vectors to be worth it; nullptr elsewhere.
inline RowFn copy_row_f32() {
#ifdef LTHFAST_MULTIVERSION
  if (isa() == kAvx512) return avx512::copy_row_f32;
#endif
  return nullptr;
}
#ifdef LTHFAST_MULTIVERSION
#define LTHFAST_BY_ISA(name) \
  (isa() == kAvx512 ? avx512::name : isa() == kAvx2 ? avx2::name : base::name)
#else
#define LTHFAST_BY_ISA(name) (base::name)
#endif
inline CopyFn copy_f32() { return LTHFAST_BY_ISA(copy_strided_f32); }
// The widest tile, in 64-byte units.
inline int64_t max_tile_vectors() { return LTHFAST_BY_ISA(kMaxTileVectors); }
template <typename T>
struct Pick;
template <>
struct Pick<float> {
  static const TileFn<float>* get() { return LTHFAST_BY_ISA(kTilesF32); }
};
template <>
struct Pick<double> {
  static const TileFn<double>* get() { return LTHFAST_BY_ISA(kTilesF64); }
};
#undef LTHFAST_BY_ISA

}  // namespace cpu_rows

const char* sparse_cpu_isa() { return cpu_rows::kIsaNames[cpu_rows::isa()]; }

const char* cap_sparse_cpu_isa(const std::string& cap) {
  for (int i = 0; i < 3; ++i) {
    if (cap == cpu_rows::kIsaNames[i]) {
      cpu_rows::isa_cap().store(i);
      return sparse_cpu_isa();
    }
  }
  TORCH_CHECK_VALUE(false, "cap_sparse_cpu_isa: cap must be \"base\", \"avx2\" or \"avx512\", got \"",
                    cap, "\"");
  return nullptr;
}

namespace {

// Channel blocking: a block of input channels is as large as fits kL1Bytes of
// input rows for one tile, but at least large enough that an output channel
// has about kMinTaps kept weights in it (a block with fewer spends more time
// loading and storing the accumulators than multiplying; L2 serves those).
constexpr int64_t kL1Bytes = 32 * 1024;
constexpr int64_t kMinTaps = 24;

// Scratch buffers reused across calls by the calling thread: a fresh
// allocation of this size is a fresh mmap, and its page faults cost as much as
// the whole convolution at batch 1. Buffers above kKeepBytes are not kept.
constexpr size_t kKeepBytes = size_t(64) << 20;
struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(64)); }
};
using AlignedBuf = std::unique_ptr<void, AlignedFree>;
template <typename T>
T* workspace(int which, int64_t n) {
  struct Buf {
    AlignedBuf data;
    size_t bytes = 0;
  };
  static thread_local Buf bufs[2];
  static thread_local AlignedBuf big[2];
  Buf& b = bufs[which];
  const size_t bytes = std::max<size_t>(size_t(n), 1) * sizeof(T);
  if (bytes > b.bytes) {
    b.data.reset(::operator new(bytes, std::align_val_t(64)));  // 64-byte aligned planes
    b.bytes = bytes;
  }
  T* ptr = static_cast<T*>(b.data.get());
  if (b.bytes > kKeepBytes) {  // too large to keep: freed on the next call
    big[which] = std::move(b.data);
    b.bytes = 0;
  }
  return ptr;
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& input,
                int64_t out) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, op, ": bias must have shape [", out,
                    "], got ", bias->sizes());
  TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ",
                   bias->scalar_type(), " does not match input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(bias->device() == input.device(), op, ": bias is on ", bias->device(),
                    " but input is on ", input.device());
}

template <typename scalar_t, typename acc_t>
void conv_impl(const at::Tensor& input, const at::Tensor& rowptr_t, const at::Tensor& colidx_t,
               const at::Tensor& values_t, const std::optional<at::Tensor>& bias,
               at::IntArrayRef ks, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef dilation, int64_t groups, at::Tensor& out) {
  const char* op = "sparse_conv2d";
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Cout = out.size(1), OH = out.size(2), OW = out.size(3);
  const int64_t KH = ks[0], KW = ks[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  const int64_t Cg = C / groups, Coutg = Cout / groups, KK = KH * KW;
  constexpr int64_t lanes = 64 / int64_t(sizeof(acc_t));
  // Only the phases some kernel tap reads are built (one of four for a 1x1
  // stride-2 conv): the used phase rows hs and columns ws, ascending (at most KH
  // and KW of them, whatever the stride); phase (fh, fw) is number
  // slot(fh, fw) = index of fh in hs * |ws| + index of fw in ws.
  std::vector<int64_t> hs, ws;
  for (int64_t i = 0; i < KH; ++i) hs.push_back((i * dh) % sh);
  for (int64_t j = 0; j < KW; ++j) ws.push_back((j * dw) % sw);
  for (std::vector<int64_t>* v : {&hs, &ws}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  const auto slot = [&](int64_t fh, int64_t fw) {
    return int64_t(std::lower_bound(hs.begin(), hs.end(), fh) - hs.begin()) * int64_t(ws.size()) +
           int64_t(std::lower_bound(ws.begin(), ws.end(), fw) - ws.begin());
  };
  const int64_t nphases = int64_t(hs.size() * ws.size());
  const int64_t Hq = OH + (dh * (KH - 1)) / sh;
  // Row pitch: the OW columns plus the halo, rounded up to whole vectors when
  // that adds no vector to the output plane (e.g. 14x14 outputs of a 3x3:
  // 16). Then every plane starts 64-byte aligned and the taps with no column
  // shift (kw*dw/sw == 0) read whole cache lines: a load split over two lines
  // costs two of the two 512-bit load slots per cycle.
  const int64_t Wq0 = OW + (dw * (KW - 1)) / sw;
  const int64_t Wq_aligned = (Wq0 + lanes - 1) / lanes * lanes;
  const bool no_extra_vector =
      (OH * Wq_aligned + lanes - 1) / lanes <= (OH * Wq0 + lanes - 1) / lanes;
  const int64_t Wq = no_extra_vector ? Wq_aligned : Wq0;
  const int64_t plane = Hq * Wq, per_channel = nphases * plane, per_sample = C * per_channel;
  TORCH_CHECK_VALUE(Cg * per_channel < (int64_t(1) << 31), op, ": input of shape ", input.sizes(),
                    " is too large for the sparse path (use path=\"dense\")");
  const int64_t L = OH * Wq, nvec = (L + lanes - 1) / lanes, Lr = nvec * lanes;
  // Reads run past a plane by at most (Lr - L) + (KW-1)*dw/sw; zeros there.
  const int64_t tail = Lr - L + Wq + lanes;
  acc_t* P = workspace<acc_t>(0, N * per_sample + tail);
  for (int64_t i = N * per_sample; i < N * per_sample + tail; ++i) P[i] = acc_t(0);

  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const int64_t xs0 = input.stride(0), xs1 = input.stride(1), xs2 = input.stride(2), xs3 = input.stride(3);
  // Per used phase: its (fh, fw) and the columns q with 0 <= q*sw + fw - pw < W,
  // [q0, q1) (zeros left and right of them).
  struct Phase {
    int64_t fh, fw, q0, q1;
  };
  std::vector<Phase> phases;  // in slot order
  for (const int64_t fh : hs) {
    for (const int64_t fw : ws) {
      const int64_t lo = pw - fw, hi = W + pw - fw;  // q*sw >= lo, q*sw < hi
      const int64_t q0 = std::min(Wq, lo <= 0 ? int64_t(0) : (lo + sw - 1) / sw);
      const int64_t q1 = std::min(Wq, std::max(q0, hi <= 0 ? int64_t(0) : (hi + sw - 1) / sw));
      phases.push_back({fh, fw, q0, q1});
    }
  }
  const auto copy_f32 = cpu_rows::copy_f32();
  const auto copy_row = cpu_rows::copy_row_f32();
  // The row copy reads whole vectors around a row: only where they stay inside
  // the input's memory.
  const bool row_vec = copy_row != nullptr && Wq % 16 == 0 && xs3 == 1 && (sw == 1 || sw == 2);
  const scalar_t* x_lo = x;
  const scalar_t* x_hi = x + ((N - 1) * xs0 + (C - 1) * xs1 + (H - 1) * xs2 + (W - 1) * xs3 + 1);
  at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const scalar_t* src = x + n * xs0 + c * xs1;
      for (int64_t s = 0; s < nphases; ++s) {
        const Phase& f = phases[s];
        acc_t* dst = P + nc * per_channel + s * plane;
        const scalar_t* s0 = src + (f.fw - pw) * xs3;
        const int64_t step = sw * xs3;
        for (int64_t r = 0, ih = f.fh - ph; r < Hq; ++r, ih += sh) {
          acc_t* drow = dst + r * Wq;
          if (ih < 0 || ih >= H) {
            for (int64_t q = 0; q < Wq; ++q) drow[q] = acc_t(0);
            continue;
          }
          const scalar_t* srow = s0 + ih * xs2;
          if constexpr (std::is_same_v<scalar_t, float>) {
            // whole rows of whole vectors, source in bounds: one vector op per 16
            if (row_vec && srow >= x_lo && srow + Wq * step + 16 <= x_hi) {
              copy_row(srow, step, f.q0, f.q1, Wq, drow);
              continue;
            }
          }
          for (int64_t q = 0; q < f.q0; ++q) drow[q] = acc_t(0);
          if constexpr (std::is_same_v<scalar_t, float>) {
            copy_f32(srow + f.q0 * step, step, drow + f.q0, f.q1 - f.q0);
          } else if (step == 1) {
            for (int64_t q = f.q0; q < f.q1; ++q) drow[q] = static_cast<acc_t>(srow[q]);
          } else {
            for (int64_t q = f.q0; q < f.q1; ++q) drow[q] = static_cast<acc_t>(srow[q * step]);
          }
          for (int64_t q = f.q1; q < Wq; ++q) drow[q] = acc_t(0);
        }
      }
    }
  });

  // Offset in a group's planes of every column (in-channel of the group, kh, kw).
  const int64_t ncols = Cg * KK;
  std::vector<int32_t> col_off(ncols);
  for (int64_t cl = 0, col = 0; cl < Cg; ++cl)
    for (int64_t i = 0; i < KH; ++i)
      for (int64_t j = 0; j < KW; ++j, ++col) {
        const int64_t kh = i * dh, kw = j * dw;
        col_off[col] = static_cast<int32_t>(cl * per_channel + slot(kh % sh, kw % sw) * plane +
                                            (kh / sh) * Wq + kw / sw);
      }

  // Tiles: the padded plane cut in equal tiles of at most as many vectors as
  // this CPU holds accumulators in registers (16 with AVX-512, 6 with AVX2).
  const int64_t max_nv = cpu_rows::max_tile_vectors();
  const int64_t ntiles = (nvec + max_nv - 1) / max_nv;
  const int64_t NV = (nvec + ntiles - 1) / ntiles;
  // Channel blocks (see l1_bytes / min_taps).
  const int64_t halo = ((dh * (KH - 1)) / sh) * Wq + (dw * (KW - 1)) / sw;
  const int64_t bytes_per_channel = nphases * (NV * lanes + halo) * int64_t(sizeof(acc_t));
  const int64_t nnz = colidx_t.numel();
  const double density = Cout * ncols > 0 ? double(nnz) / double(Cout * ncols) : 1.0;
  const double taps_per_channel = std::max(density, 1e-9) * KK;
  const int64_t cb_taps =
      static_cast<int64_t>(std::min<double>(double(Cg), double(kMinTaps) / taps_per_channel)) + 1;
  const int64_t cb_l1 = kL1Bytes / bytes_per_channel;
  const int64_t CB = std::max<int64_t>(1, std::min<int64_t>(Cg, std::max(cb_l1, cb_taps)));
  // At least one block, even with no input channels (Cg == 0): the first block
  // is what initialises the accumulators (then to 0).
  const int64_t nblocks = std::max<int64_t>(1, (Cg + CB - 1) / CB);

  const int64_t* rowptr = rowptr_t.const_data_ptr<int64_t>();
  const int32_t* colidx = colidx_t.const_data_ptr<int32_t>();
  const acc_t* vals = values_t.const_data_ptr<acc_t>();
  const int32_t* coff = col_off.data();
  const auto tiles = cpu_rows::Pick<acc_t>::get();
  acc_t* acc = workspace<acc_t>(1, N * Cout * Lr);
  scalar_t* y = out.data_ptr<scalar_t>();
  const at::Tensor bias_c = contiguous_bias(bias);
  const scalar_t* bptr = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
  // Threads split (sample, chunk of output channels); a chunk stays within a
  // group. Chunks are as large as the thread count allows: every output channel
  // of a chunk reads the channel block while it is in L1, so the larger the
  // chunk, the more often each input row is used per load from L2 (with 16
  // output channels at 90% sparsity a 3x3 block was used ~1.6 times).
  const int64_t per_group_items = std::max<int64_t>(1, N * groups);
  const int64_t want_chunks = (at::get_num_threads() + per_group_items - 1) / per_group_items;
  const int64_t ochunk = std::max<int64_t>(1, (Coutg + want_chunks - 1) / want_chunks);
  const int64_t chunks_per_group = (Coutg + ochunk - 1) / ochunk;
  const int64_t chunks_per_sample = groups * chunks_per_group;
  std::atomic<int64_t> bad_row{-1};
  at::parallel_for(0, N * chunks_per_sample, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> cur_buf(ochunk);
    int64_t* cur = cur_buf.data();
    for (int64_t i = b; i < e; ++i) {
      const int64_t n = i / chunks_per_sample, g = (i % chunks_per_sample) / chunks_per_group;
      const int64_t o0 = g * Coutg + (i % chunks_per_group) * ochunk;
      const int64_t o1 = std::min(g * Coutg + Coutg, o0 + ochunk);
      const acc_t* src = P + n * per_sample + g * Cg * per_channel;
      for (int64_t tile = 0; tile < ntiles; ++tile) {
        const int64_t j0 = tile * NV * lanes, nv = std::min(NV, nvec - tile * NV);
        const auto fn = tiles[nv];
        for (int64_t o = o0; o < o1; ++o) cur[o - o0] = rowptr[o];
        for (int64_t blk = 0; blk < nblocks; ++blk) {
          const uint32_t limit = static_cast<uint32_t>(std::min(ncols, (blk + 1) * CB * KK));
          for (int64_t o = o0; o < o1; ++o) {
            int64_t* c = cur + (o - o0);
            const int64_t end = rowptr[o + 1];
            // Nothing of this row in this block: the accumulators stay as they are.
            if (blk > 0 && (*c >= end || static_cast<uint32_t>(colidx[*c]) >= limit)) continue;
            fn(src + j0, colidx, coff, vals, c, end, limit, acc + (n * Cout + o) * Lr + j0, blk > 0);
          }
        }
        for (int64_t o = o0; o < o1; ++o)
          if (cur[o - o0] != rowptr[o + 1]) bad_row.store(o);
      }
      for (int64_t o = o0; o < o1; ++o) {
        const acc_t* a = acc + (n * Cout + o) * Lr;
        const acc_t bo = bptr ? static_cast<acc_t>(bptr[o]) : acc_t(0);
        scalar_t* yo = y + (n * Cout + o) * OH * OW;
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow)
            yo[oh * OW + ow] = static_cast<scalar_t>(a[oh * Wq + ow] + bo);
      }
    }
  });
  TORCH_CHECK_VALUE(bad_row.load() < 0, op, ": colidx of row ", bad_row.load(),
                    " has column indices outside [0, ", ncols,
                    "): the packed weight does not fit this convolution");
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& rowptr,
                             const at::Tensor& colidx, const at::Tensor& values,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  const char* op = "sparse_conv2d";
  check_packed(op, input, rowptr, colidx, values);
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0, op,
                    ": kernel_size must be 2 positive values, got ", kernel_size);
  TORCH_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  const int64_t cout = rowptr.size(0) - 1;
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got a ", input.dim(),
                    "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(1) % groups == 0, op, ": input channels ", input.size(1),
                    " are not divisible by groups = ", groups);
  check_conv_geometry(op, input, cout, input.size(1) / groups, kernel_size, stride, padding,
                      dilation, groups);
  check_bias(op, bias, input, cout);
  const int64_t OH = conv_out_size(input.size(2), kernel_size[0], stride[0], padding[0], dilation[0]);
  const int64_t OW = conv_out_size(input.size(3), kernel_size[1], stride[1], padding[1], dilation[1]);
  auto out = at::empty({input.size(0), cout, OH, OW}, input.options());
  if (out.numel() == 0) return out;
  auto rp = rowptr.contiguous(), ci = colidx.contiguous(), va = values.contiguous();
  check_rowptr(op, rp, ci.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sparse_conv2d", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    conv_impl<scalar_t, acc_t>(input, rp, ci, va, bias, kernel_size, stride, padding, dilation,
                               groups, out);
  });
  return out;
}

// From this many rows on, sparse_linear runs as the 1x1 convolution of a 1 x M
// plane with K channels: the conv kernel vectorises along the rows and keeps each
// tile of rows in registers while the kept weights stream by, instead of
// gathering x[m, k] one row at a time. (fc6 of a detection box head, 1024 x 12544
// at 95%, 1000 rows, AVX2 host: 607 -> 158 ms; dense 375 ms.)
constexpr int64_t kRowsThroughConv = 16;

// out[m, o] = sum over kept (o, k) of w * x[m, k]; threads split the outputs.
at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& rowptr,
                             const at::Tensor& colidx, const at::Tensor& values,
                             const std::optional<at::Tensor>& bias) {
  const char* op = "sparse_linear";
  check_packed(op, input, rowptr, colidx, values);
  TORCH_CHECK_VALUE(input.dim() >= 1, op, ": input must have at least 1 dimension");
  const int64_t O = rowptr.size(0) - 1, K = input.size(-1);
  check_bias(op, bias, input, O);
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = O;
  auto out = at::empty(out_sizes, input.options());
  if (out.numel() == 0) return out;
  check_rowptr(op, rowptr, colidx.numel());
  if (colidx.numel() > 0) {
    TORCH_CHECK_VALUE(colidx.max().item<int32_t>() < K && colidx.min().item<int32_t>() >= 0,
                      op, ": rowptr/colidx do not describe a weight with ", K, " input features");
  }
  auto rp = rowptr.contiguous(), ci = colidx.contiguous(), va = values.contiguous();
  const at::Tensor bias_c = contiguous_bias(bias);
  const int64_t M = out.numel() / O;  // not reshape(-1, K): K may be 0
  if (M >= kRowsThroughConv && K > 0 && K * (M + 64) < (int64_t(1) << 31)) {
    // x as (1, K, 1, M): channel k's plane is column k of x (row stride K)
    const at::Tensor xv = input.reshape({M, K}).t().unsqueeze(0).unsqueeze(2);
    at::Tensor y = at::empty({1, O, 1, M}, input.options());
    const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sparse_linear", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      conv_impl<scalar_t, acc_t>(xv, rp, ci, va, bias, one, one, zero, one, 1, y);
    });
    out.view({M, O}).copy_(y.view({O, M}).t());
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sparse_linear", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    at::Tensor x = input.reshape({M, K}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* xp = x.const_data_ptr<acc_t>();
    const int64_t* r = rp.const_data_ptr<int64_t>();
    const int32_t* c = ci.const_data_ptr<int32_t>();
    const acc_t* v = va.const_data_ptr<acc_t>();
    const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, O * M, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t o = i % O, m = i / O;
        const acc_t* xm = xp + m * K;
        acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t t = r[o];
        const int64_t end = r[o + 1];
        for (; t + 4 <= end; t += 4) {
          s0 += v[t] * xm[c[t]];
          s1 += v[t + 1] * xm[c[t + 1]];
          s2 += v[t + 2] * xm[c[t + 2]];
          s3 += v[t + 3] * xm[c[t + 3]];
        }
        for (; t < end; ++t) s0 += v[t] * xm[c[t]];
        y[m * O + o] = static_cast<scalar_t>((s0 + s1) + (s2 + s3) + (bp ? acc_t(bp[o]) : acc_t(0)));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cpu);
  m.impl("sparse_linear", &sparse_linear_cpu);
}

}  // namespace masked_conv
}  // namespace lthfast
