// CPU kernels of the global magnitude threshold: a multi-threaded select over
// the order-preserving keys of |x| (threshold_common.h). Two paths, same result
// bit for bit:
//   - sampled range (range_select_cpu.h): large inputs, when a sample brackets
//     the k-th key: one branch-free pass finds the threshold and writes every mask
//     byte outside the sampled range; the ~1% inside are written from the keys
//     and offsets that pass collected;
//   - radix (radix_select_cpu.h): histogram passes over 16-bit digits (31-bit
//     keys: 16 + 15; 63-bit keys for fp64: 16 x 3 + 15), the last fused with
//     writing the masks. Small inputs and sample misses.
// Either way the entries left undecided after the fused pass are resolved by
// reading only them again; ties straddling the k-th entry are pruned in (tensor,
// row-major index) order. Extra memory: per-thread histograms, per-chunk counts,
// the sample — never a copy of the weights (a non-dense view is the exception:
// it is made contiguous).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "ops/threshold/cpu/radix_select_cpu.h"
#include "ops/threshold/cpu/range_select_cpu.h"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

using namespace cpu;

template <typename key_t>
void write_masks(const Prepared& p, int64_t k) {
  if (k == 0) {
    p.copy_eligible_to_out();
    return;
  }
  Selection s;
  Collected<key_t> inside;
  if (range_threshold<key_t, /*kWrite=*/true>(p, k, s, &inside)) {
    // the pass decided every byte but those inside the sampled range
    if (!resolve_collected<key_t>(p, s, inside)) {
      mark_pending<key_t>(p, inside, kPending);
      resolve_code<key_t>(p, s, kPending);
    }
  } else {
    s = classify_and_select<key_t>(p, k);
    resolve_code<key_t>(p, s, kPending);
  }
}

template <typename key_t>
Selection threshold_of(const Prepared& p, int64_t k) {
  Selection s;
  if (!range_threshold<key_t>(p, k, s)) s = select_threshold<key_t>(p, k);
  return s;
}

std::tuple<at::Tensor, at::Tensor> global_threshold_cpu(at::TensorList scores, at::TensorList masks,
                                                        int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/false, "global_threshold");
  Selection s;
  if (k > 0) s = p.wide ? threshold_of<uint64_t>(p, k) : threshold_of<uint32_t>(p, k);
  const double value = k == 0 ? 0.0 : key_to_double(s.key, p.wide);
  return {at::scalar_tensor(value, at::dtype(at::kDouble)),
          at::scalar_tensor(s.n_ties, at::dtype(at::kLong))};
}

std::vector<at::Tensor> global_magnitude_masks_cpu(at::TensorList scores, at::TensorList masks,
                                                   int64_t k) {
  Prepared p = prepare(scores, masks, k, /*make_out=*/true, "global_magnitude_masks");
  if (p.wide) {
    write_masks<uint64_t>(p, k);
  } else {
    write_masks<uint32_t>(p, k);
  }
  return p.finish();
}

}  // namespace
}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("global_threshold", &lthfast::threshold::global_threshold_cpu);
  m.impl("global_magnitude_masks", &lthfast::threshold::global_magnitude_masks_cpu);
}
