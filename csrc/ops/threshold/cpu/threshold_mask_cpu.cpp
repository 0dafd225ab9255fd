// CPU kernel of threshold_mask: one tensor's keep-mask from a global threshold.
// One parallel pass writes key >= t and counts ties per chunk; only when ties are
// present and some are still to be pruned does a second walk visit them in
// row-major order and prune the first ties_left.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "ops/threshold/cpu/keys_cpu.h"
#include "ops/threshold/cpu/mask_pass_avx2.h"
#include "ops/threshold/cpu/threshold_isa.h"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

using namespace cpu;

template <typename out_t>
inline out_t as_mask(bool keep) {
  return static_cast<out_t>(keep ? 1.0f : 0.0f);
}

// Branch-free body for scan_keys: keep = eligible and key >= t (ties kept for
// now), counting the eligible ties. Signed compares: keys fit, and vectorise.
template <typename key_t, typename out_t>
struct AboveBody {
  using skey = std::make_signed_t<key_t>;
  skey t;
  out_t* out;
  uint32_t ties = 0;  // a chunk has 2^16 entries
  void operator()(int64_t j, key_t key, uint32_t ok) {
    const skey sk = static_cast<skey>(key);
    out[j] = as_mask<out_t>(ok & uint32_t(sk >= t));
    ties += ok & uint32_t(sk == t);
  }
};

// product = out * orig over memory offsets [begin, end) (orig's dtype, the score's
// strides): torch's `mask * orig`, one IEEE multiply per entry.
template <typename out_t, typename scalar_t>
void multiply_range(const out_t* out, const scalar_t* orig, scalar_t* product, int64_t begin,
                    int64_t end) {
  for (int64_t j = begin; j < end; ++j) product[j] = static_cast<scalar_t>(out[j]) * orig[j];
}

// The product written by the mask pass, chunk by chunk (see write_mask).
template <typename scalar_t>
struct Product {
  const scalar_t* orig = nullptr;  // nullptr: no product in this pass
  scalar_t* out = nullptr;
};

// Writes out (dtype out_t) for every entry, ties kept for now; returns the
// eligible ties per chunk. With a product, each chunk without eligible ties also
// gets its product while its mask is in cache (chunks with ties get theirs once
// the ties are decided: their scores are still to be read, and may share memory
// with the product).
template <typename key_t, typename out_t, typename scalar_t>
std::vector<int64_t> write_above(const Entry& e, out_t* out, key_t t, Product<scalar_t> prod) {
  const int64_t nchunks = (e.numel + kChunk - 1) / kChunk;
  std::vector<int64_t> ties(nchunks, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t end = std::min(e.numel, (c + 1) * kChunk);
      AboveBody<key_t, out_t> body{static_cast<std::make_signed_t<key_t>>(t), out};
      ties[c] = scan_keys<key_t>(e, c * kChunk, end, body).ties;
      if (prod.orig != nullptr && ties[c] == 0) multiply_range(out, prod.orig, prod.out, c * kChunk, end);
    }
  });
  return ties;
}

#if defined(LTHFAST_MASK_PASS_AVX2)
// write_above for fp32 scores and masks in AVX2 blocks (mask_pass_avx2.h): the
// eligible ties per block of avx2::kMaskBlock entries; each block without ties
// also gets its product. `stream`: out is 32-byte aligned (streaming stores).
template <typename M>
std::vector<int64_t> write_above_avx2(const Entry& e, M m, float* out, uint32_t t,
                                      Product<float> prod, bool stream) {
  constexpr int64_t kBlock = avx2::kMaskBlock;
  const int64_t nblocks = (e.numel + kBlock - 1) / kBlock;
  const float* x = static_cast<const float*>(e.data);
  std::vector<int64_t> ties(nblocks, 0);
  at::parallel_for(0, nblocks, kChunk / kBlock, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t begin = c * kBlock, end = std::min(e.numel, begin + kBlock);
      ties[c] = avx2::mask_block(x, m, begin, end, t, out, stream);
      if (prod.orig != nullptr && ties[c] == 0) {
        avx2::product_block(x, m, begin, end, t, prod.orig, prod.out);
      }
    }
    if (stream) avx2::store_fence();  // visible before other threads resolve the ties
  });
  return ties;
}

// Streaming stores of a mask that is not read again soon (only the blocks with ties
// are): when the pass also writes the product (lthfast.prune's masks), or the mask
// is larger than a core's L2.
constexpr int64_t kStreamMinNumel = int64_t(1) << 18;
#endif

// Prunes the first `left` eligible ties in row-major order; returns how many.
// ties[c]: the eligible ties among entries [c * block, (c + 1) * block).
template <typename key_t, typename out_t>
int64_t resolve_ties(const Entry& e, out_t* out, key_t t, int64_t left,
                     const std::vector<int64_t>& ties, int64_t block = kChunk) {
  int64_t total = 0;
  for (int64_t n : ties) total += n;
  if (total == 0) return 0;
  auto decide = [&](int64_t j, int64_t rank) {
    if (rank < left) out[j] = as_mask<out_t>(false);
  };
  if (e.row_major) {  // chunks are row-major ranges: offsets by scan, then parallel
    std::vector<int64_t> before(ties.size(), 0);
    for (size_t c = 1; c < ties.size(); ++c) before[c] = before[c - 1] + ties[c - 1];
    at::parallel_for(0, static_cast<int64_t>(ties.size()), 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        if (ties[c] == 0 || before[c] >= left) continue;  // nothing to prune here
        int64_t rank = before[c];
        const int64_t end = std::min(e.numel, (c + 1) * block);
        for_each_key<key_t>(e, c * block, end, [&](int64_t j, key_t key, uint32_t ok) {
          if (ok && key == t) decide(j, rank++);
        });
      }
    });
  } else {  // permuted layout: one walk in logical order
    int64_t rank = 0;
    for (int64_t l = 0; l < e.numel && rank < left; ++l) {
      const int64_t j = offset_of(e, l);
      for_each_key<key_t>(e, j, j + 1, [&](int64_t, key_t key, uint32_t ok) {
        if (ok && key == t) decide(j, rank++);
      });
    }
  }
  return std::min(total, left);
}

// Writes n.scores[0]'s keep-mask into `out` (dense, the score's strides, dtype bool
// or the score's) and decrements ties_left by the ties pruned. With `product`
// (defined): also product = out * orig (torch's `mask * orig`; orig and product
// have the score's shape and orig's dtype; product may share memory with the
// score, which it replaces in lthfast.prune's second round). Fused into the mask
// pass chunk by chunk where orig and product have the score's dtype (float32 or
// float64) and strides and the score is row-major; elsewhere one multiply after it.
void write_mask(const Normalized& n, const at::Tensor& threshold, at::Tensor& ties_left,
                at::Tensor& out, const char* op, const at::Tensor& orig = {},
                at::Tensor product = {}) {
  const int64_t left = ties_left.item<int64_t>();
  TORCH_CHECK(left >= 0, op, ": ties_left=", left, " must be >= 0");
  // 64-bit keys compare every dtype exactly (each converts to double exactly);
  // 32-bit keys do too when the score is not fp64 and the threshold is a float
  // (always, unless fp64 tensors took part in the global threshold).
  const double tv = threshold.item<double>();
  const at::Tensor& d = n.scores[0];
  const bool narrow = d.scalar_type() != at::kDouble &&
                      (std::isnan(tv) || static_cast<double>(static_cast<float>(tv)) == tv);
  Entry e;
  e.data = d.data_ptr();
  e.mask = n.masks.empty() ? nullptr : n.masks[0].data_ptr();
  e.mask_is_bool = n.masks.empty() || n.masks[0].scalar_type() == at::kBool;
  e.mask_is_bits = !n.masks.empty() && n.masks[0].scalar_type() == at::kByte;
  e.out = nullptr;
  e.dtype = d.scalar_type();
  e.numel = d.numel();
  e.row_major = d.is_contiguous();
  e.sizes = d.sizes().vec();
  e.strides = d.strides().vec();
  if (e.numel == 0) return;
  const bool fused = product.defined() && e.row_major &&
                     (e.dtype == at::kFloat || e.dtype == at::kDouble) &&
                     orig.scalar_type() == e.dtype && orig.strides() == d.strides() &&
                     product.strides() == d.strides();
  int64_t pruned_ties = 0;
  const bool as_bool = out.scalar_type() == at::kBool;
  // the product of the chunks (blocks) that had ties, once they are decided
  auto multiply_tied = [&](auto* o, auto prod, const std::vector<int64_t>& ties, int64_t block) {
    for (size_t c = 0; c < ties.size(); ++c) {
      if (ties[c] != 0) {
        const int64_t begin = static_cast<int64_t>(c) * block;
        multiply_range(o, prod.orig, prod.out, begin, std::min(e.numel, begin + block));
      }
    }
  };
#if defined(LTHFAST_MASK_PASS_AVX2)
  if (narrow && !as_bool && e.dtype == at::kFloat && e.row_major &&
      (e.mask == nullptr || e.mask_is_bits) && (fused || !product.defined()) &&
      cpu::range_uses_avx2()) {
    float* o = out.data_ptr<float>();
    const uint32_t t = key32(static_cast<float>(tv));
    Product<float> prod;
    if (fused) {
      prod.orig = orig.data_ptr<float>();
      prod.out = product.data_ptr<float>();
    }
    const bool stream = reinterpret_cast<uintptr_t>(o) % 32 == 0 && (fused || e.numel >= kStreamMinNumel);
    const std::vector<int64_t> ties =
        e.mask == nullptr
            ? write_above_avx2(e, NoMask{}, o, t, prod, stream)
            : write_above_avx2(e, PackedBits{static_cast<const uint8_t*>(e.mask)}, o, t, prod, stream);
    pruned_ties = resolve_ties(e, o, t, left, ties, avx2::kMaskBlock);
    if (fused) multiply_tied(o, prod, ties, avx2::kMaskBlock);
    ties_left.sub_(pruned_ties);
    return;
  }
#endif
  auto run = [&](auto t) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.dtype, "lthfast_threshold_mask", [&] {
      Product<scalar_t> prod;
      if (fused) {
        prod.orig = orig.data_ptr<scalar_t>();
        prod.out = product.data_ptr<scalar_t>();
      }
      auto pass = [&](auto* o) {
        const std::vector<int64_t> ties = write_above(e, o, t, prod);
        pruned_ties = resolve_ties(e, o, t, left, ties);
        if (fused) multiply_tied(o, prod, ties, kChunk);
      };
      if (as_bool) {
        pass(out.data_ptr<bool>());
      } else {
        pass(out.data_ptr<scalar_t>());
      }
    });
  };
  if (narrow) {
    run(key32(static_cast<float>(tv)));
  } else {
    run(key64(tv));
  }
  ties_left.sub_(pruned_ties);
  if (product.defined() && !fused) at::mul_out(product, out, orig);
}

at::Tensor threshold_mask_cpu(const at::Tensor& score, const std::optional<at::Tensor>& mask,
                              const at::Tensor& threshold, at::Tensor& ties_left,
                              std::optional<at::ScalarType> dtype) {
  const char* op = "threshold_mask";
  std::vector<at::Tensor> masks;
  if (mask.has_value()) masks.push_back(*mask);
  Normalized n = normalize_threshold_mask_args(score, masks, threshold, ties_left);
  const at::Tensor& d = n.scores[0];
  at::Tensor out = at::empty_like(d, d.options().dtype(output_dtype(d, n, dtype, op)));
  write_mask(n, threshold, ties_left, out, op);
  return restore_layout(n, {out})[0];
}

// threshold_mask written into an existing tensor (lthfast.prune rewrites a torch-format
// mask that nothing else holds in place: no fresh pages to fault in, no second mask),
// and optionally `product = out * orig` (the pruned tensor) in the same pass.
void threshold_mask_into_cpu(const at::Tensor& score, const std::optional<at::Tensor>& mask,
                             const at::Tensor& threshold, at::Tensor& ties_left, at::Tensor& out,
                             const std::optional<at::Tensor>& orig,
                             const std::optional<at::Tensor>& product) {
  const char* op = "threshold_mask_into";
  std::vector<at::Tensor> masks;
  if (mask.has_value()) masks.push_back(*mask);
  check_mask_out(score, masks, out, op);
  check_product(score, masks, out, orig, product, op);
  Normalized n = normalize_threshold_mask_args(score, masks, threshold, ties_left);
  const at::Tensor& d = n.scores[0];
  const at::Tensor o = orig.has_value() ? *orig : at::Tensor();
  at::Tensor p = product.has_value() ? *product : at::Tensor();
  if (out.strides() == d.strides()) {
    write_mask(n, threshold, ties_left, out, op, o, p);
  } else {  // another layout than the (dense) score's: through a temporary
    at::Tensor tmp = at::empty_like(d, d.options().dtype(out.scalar_type()));
    write_mask(n, threshold, ties_left, tmp, op);
    out.copy_(tmp);
    if (p.defined()) at::mul_out(p, out, o);
  }
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("threshold_mask", &lthfast::threshold::threshold_mask_cpu);
  m.impl("threshold_mask_into", &lthfast::threshold::threshold_mask_into_cpu);
}
