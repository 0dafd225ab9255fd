// CPU kernels of the global magnitude threshold: a multi-threaded select over
// the order-preserving keys of |x| (threshold_common.h). Two paths, same result
// bit for bit:
//   - sampled range (range_select_cpu.h): large inputs, when a sample brackets
//     the k-th key: one branch-free pass finds the threshold and writes every mask
//     byte outside the sampled range; the ~1% inside are written from the keys
//     and offsets that pass collected;
//   - radix (radix_select_cpu.h): histogram passes over 16-bit digits (31-bit
//     keys: 16 + 15; 63-bit keys for fp64: 16 x 3 + 15), the last fused with
//     writing the masks. Mid-size inputs and sample misses;
//   - small inputs (<= 2^15 entries): the eligible keys gathered and nth_element.
// Either way the entries left undecided after the fused pass are resolved by
// reading only them again; ties straddling the k-th entry are pruned in (tensor,
// row-major index) order. Extra memory: per-thread histograms, per-chunk counts,
// the sample — never a copy of the weights (a non-dense view is the exception:
// it is made contiguous).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/threshold/cpu/radix_select_cpu.h"
#include "ops/threshold/cpu/range_select_cpu.h"
#include "ops/threshold/cpu/threshold_isa.h"
#include "ops/threshold/threshold_common.h"
#include "ops/threshold/threshold_prepare.h"

namespace lthfast {
namespace threshold {
namespace {

using namespace cpu;

// Small inputs (a layer of l1_unstructured, layerwise pruning): the eligible keys
// gathered and nth_element, no histogram passes (their fixed cost was ~1 ms).
constexpr int64_t kSmallInput = int64_t(1) << 15;

template <typename key_t>
bool small_select(const Prepared& p, int64_t k, Selection& s) {
  int64_t n = 0;
  for (const Entry& e : p.entries) n += e.numel;
  if (n > kSmallInput) return false;
  std::vector<key_t> keys;
  keys.reserve(static_cast<size_t>(n));
  for (const Entry& e : p.entries) {
    for_each_key<key_t>(e, 0, e.numel, [&](int64_t, key_t key, uint32_t ok) {
      if (ok) keys.push_back(key);
    });
  }
  const int64_t eligible = static_cast<int64_t>(keys.size());
  TORCH_CHECK(k <= eligible, "lthfast: k=", k,
              " is larger than the number of unpruned entries (", eligible, ")");
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
  const key_t t = keys[static_cast<size_t>(k - 1)];
  int64_t less = 0, equal = 0;
  for (key_t x : keys) {
    less += x < t;
    equal += x == t;
  }
  s.key = static_cast<uint64_t>(t);
  s.n_ties = k - less;
  s.n_equal = equal;
  return true;
}

template <typename key_t>
void write_masks(const Prepared& p, int64_t k) {
  if (k == 0) {
    p.copy_eligible_to_out();
    return;
  }
  Selection s;
  if (small_select<key_t>(p, k, s)) {
    if (s.n_ties == s.n_equal) {  // every tie pruned: keep = eligible and key > t
      const key_t t = static_cast<key_t>(s.key);
      for (const Entry& e : p.entries) {
        uint8_t* out = reinterpret_cast<uint8_t*>(e.out);
        for_each_key<key_t>(e, 0, e.numel, [&](int64_t j, key_t key, uint32_t ok) {
          out[j] = static_cast<uint8_t>(ok & uint32_t(key > t));
        });
      }
    } else {  // ties straddle the k-th entry: every eligible byte 1, then decided in order
      p.copy_eligible_to_out();
      resolve_code<key_t>(p, s, 1);
    }
    return;
  }
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
  if (small_select<key_t>(p, k, s)) return s;
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

const char* threshold_cpu_isa() { return cpu::range_uses_avx2() ? "avx2" : "base"; }

const char* cap_threshold_cpu_isa(const std::string& cap) {
  TORCH_CHECK_VALUE(cap == "avx2" || cap == "base",
                    "cap_threshold_cpu_isa: cap must be \"base\" or \"avx2\", got \"", cap, "\"");
  cpu::range_isa_cap().store(cap == "avx2" ? 1 : 0);
  return threshold_cpu_isa();
}

}  // namespace threshold
}  // namespace lthfast

TORCH_LIBRARY_IMPL(lthfast, CPU, m) {
  m.impl("global_threshold", &lthfast::threshold::global_threshold_cpu);
  m.impl("global_magnitude_masks", &lthfast::threshold::global_magnitude_masks_cpu);
}
