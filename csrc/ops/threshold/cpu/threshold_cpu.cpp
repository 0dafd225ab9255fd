// CPU kernels of the global magnitude threshold: a multi-threaded select over
// the order-preserving keys of |x| (threshold_common.h). Two paths, same result
// bit for bit:
//   - sampled range (range_select_cpu.h): large inputs, when a sample brackets
//     the k-th key: one pass finds the threshold, one more writes the masks —
//     two reads of the weights, both branch-free;
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

// Every mask byte from the threshold key t, in one branch-free pass: 1 above t,
// 0 below it (and where not eligible); ties get `tie`: 0 when every tie is
// pruned, else kPending, decided afterwards in (tensor, row-major) order.
template <typename key_t>
struct WriteBody {
  using skey = std::make_signed_t<key_t>;
  skey t;
  uint32_t tie;
  uint8_t* out;
  void operator()(int64_t j, key_t key, uint32_t ok) {
    const skey sk = static_cast<skey>(key);
    out[j] = static_cast<uint8_t>((0u - ok) & (uint32_t(sk > t) | (uint32_t(sk == t) * tie)));
  }
};

template <typename key_t>
void write_from_threshold(const Prepared& p, const Selection& s, uint8_t tie) {
  using skey = std::make_signed_t<key_t>;
  for_chunks(p, [&](int64_t, const Chunk& ch, const Entry& e) {
    scan_keys<key_t>(e, ch.begin, ch.end,
                     WriteBody<key_t>{static_cast<skey>(static_cast<key_t>(s.key)), tie,
                                      reinterpret_cast<uint8_t*>(e.out)});
  });
}

template <typename key_t>
void write_masks(const Prepared& p, int64_t k) {
  if (k == 0) {
    p.copy_eligible_to_out();
    return;
  }
  Selection s;
  if (range_threshold<key_t>(p, k, s)) {
    const bool ordered = s.n_ties < s.n_equal;  // some ties are kept: order decides which
    write_from_threshold<key_t>(p, s, ordered ? kPending : 0);
    if (ordered) resolve_code<key_t>(p, s, kPending);
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
