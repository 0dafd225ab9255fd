// Argument checks and layout normalisation shared by the threshold kernels, and
// the CPU work list (entries split into chunks).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <vector>

namespace lthfast {
namespace threshold {

// Checks the arguments of both threshold ops (names the offending tensor and
// value) and returns the scores and masks in a layout the kernels can walk in
// memory order: non-dense scores are made contiguous; masks get the strides of
// their score. Empty `masks` means every entry is eligible.
//
// A mask may also be packed bits (uint8, 1-D, pack_bits' layout: row-major, 1 =
// eligible): lthfast.prune's second round passes the old masks' bits that way,
// 1/32 of a float mask's bytes. The CPU kernels read them as they are beside a
// row-major score; anywhere else (CUDA, a permuted score) they are unpacked into
// a bool mask of the score's strides first.
struct Normalized {
  std::vector<at::Tensor> scores;   // non-overlapping and dense
  std::vector<at::Tensor> masks;    // empty, or bool / the score's dtype (nonzero =
                                    // eligible), with the strides of scores[i], or
                                    // packed bits (uint8) beside a contiguous CPU score
  std::vector<at::Tensor> originals;
  bool wide = false;                // any float64 score: 64-bit keys
};

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Number of bytes pack_bits writes for n entries.
inline int64_t packed_nbytes(int64_t n) { return (n + 7) / 8; }

// packed's bits as a bool tensor with the strides of `like` (the bitmask op, any device).
inline at::Tensor unpack_like(const at::Tensor& packed, const at::Tensor& like) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lthfast::unpack_bits_into", "")
                             .typed<void(const at::Tensor&, at::Tensor&)>();
  at::Tensor out = at::empty_like(like, like.options().dtype(at::kBool));
  op.call(packed, out);
  return out;
}

inline Normalized normalize_inputs(at::TensorList scores, at::TensorList masks, int64_t k,
                                   const char* op) {
  TORCH_CHECK(!scores.empty(), op, ": scores is empty; pass at least one tensor");
  TORCH_CHECK(masks.empty() || masks.size() == scores.size(), op, ": masks has ", masks.size(),
              " tensors but scores has ", scores.size(), " (pass none or one per score)");
  TORCH_CHECK(k >= 0, op, ": k=", k, " must be >= 0");
  Normalized n;
  const at::Device dev = scores[0].device();
  for (size_t i = 0; i < scores.size(); ++i) {
    const at::Tensor& s = scores[i];
    TORCH_CHECK(s.layout() == at::kStrided, op, ": scores[", i, "] has layout ", s.layout(),
                "; only dense tensors are supported");
    TORCH_CHECK(is_float_dtype(s.scalar_type()), op, ": scores[", i, "] has dtype ",
                s.scalar_type(), "; expected float16, bfloat16, float32 or float64");
    TORCH_CHECK(s.device() == dev, op, ": scores[", i, "] is on ", s.device(),
                " but scores[0] is on ", dev);
    n.wide = n.wide || s.scalar_type() == at::kDouble;
    at::Tensor d = s.is_non_overlapping_and_dense() ? s : s.contiguous();
    if (!masks.empty()) {
      const at::Tensor& m = masks[i];
      TORCH_CHECK(m.device() == dev, op, ": masks[", i, "] is on ", m.device(),
                  " but scores[", i, "] is on ", dev);
      if (m.scalar_type() == at::kByte) {  // packed bits
        TORCH_CHECK(m.dim() == 1 && m.numel() == packed_nbytes(s.numel()), op, ": masks[", i,
                    "] is uint8, i.e. packed bits, and must be 1-D with ",
                    packed_nbytes(s.numel()), " bytes for scores[", i, "] of shape ", s.sizes(),
                    "; got shape ", m.sizes());
        const bool as_is = dev.is_cpu() && d.is_contiguous();
        n.masks.push_back(as_is ? m.contiguous() : unpack_like(m, d));
        n.scores.push_back(d);
        n.originals.push_back(s);
        continue;
      }
      TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == s.scalar_type(), op,
                  ": masks[", i, "] has dtype ", m.scalar_type(), "; expected bool (True = kept), ",
                  s.scalar_type(), " like scores[", i, "] (nonzero = kept), or uint8 packed bits");
      TORCH_CHECK(m.sizes() == s.sizes(), op, ": masks[", i, "] has shape ", m.sizes(),
                  " but scores[", i, "] has shape ", s.sizes());
      at::Tensor mm = m;
      if (m.strides() != d.strides()) {
        mm = at::empty_like(d, d.options().dtype(m.scalar_type()));
        mm.copy_(m);
      }
      n.masks.push_back(mm);
    }
    n.scores.push_back(d);
    n.originals.push_back(s);
  }
  return n;
}

// threshold_mask's arguments (CPU and CUDA): the score and optional mask as
// normalize_inputs checks them, and the 0-dim threshold / ties_left tensors.
inline Normalized normalize_threshold_mask_args(const at::Tensor& score, at::TensorList masks,
                                                const at::Tensor& threshold,
                                                const at::Tensor& ties_left) {
  const char* op = "threshold_mask";
  Normalized n = normalize_inputs({score}, masks, 0, op);
  TORCH_CHECK(threshold.dim() == 0 && threshold.scalar_type() == at::kDouble &&
                  threshold.device() == score.device(),
              op, ": threshold must be a 0-dim float64 tensor on ", score.device(),
              " (from global_threshold), got ", threshold.scalar_type(), " of shape ",
              threshold.sizes(), " on ", threshold.device());
  TORCH_CHECK(ties_left.dim() == 0 && ties_left.scalar_type() == at::kLong &&
                  ties_left.device() == score.device(),
              op, ": ties_left must be a 0-dim int64 tensor on ", score.device(), ", got ",
              ties_left.scalar_type(), " of shape ", ties_left.sizes(), " on ", ties_left.device());
  return n;
}

// threshold_mask_into's `out`: the score's shape and device, dtype bool or the
// score's, and memory of its own (the kernels read the score and mask again after
// writing out, e.g. for ties).
inline void check_mask_out(const at::Tensor& score, at::TensorList masks, const at::Tensor& out,
                           const char* op) {
  TORCH_CHECK(out.layout() == at::kStrided, op, ": out has layout ", out.layout(),
              "; only dense tensors are supported");
  TORCH_CHECK(out.device() == score.device(), op, ": out is on ", out.device(),
              " but score is on ", score.device());
  TORCH_CHECK(out.sizes() == score.sizes(), op, ": out has shape ", out.sizes(),
              " but score has shape ", score.sizes());
  TORCH_CHECK(out.scalar_type() == at::kBool || out.scalar_type() == score.scalar_type(), op,
              ": out has dtype ", out.scalar_type(), "; expected bool or the score's dtype (",
              score.scalar_type(), ")");
  TORCH_CHECK(out.numel() == 0 || at::has_internal_overlap(out) != at::MemOverlap::Yes, op,
              ": out has entries that share memory (e.g. an expanded tensor); pass a tensor of "
              "its own");
  TORCH_CHECK(out.numel() == 0 || !out.is_alias_of(score), op,
              ": out shares memory with score; pass a tensor of its own");
  for (const at::Tensor& m : masks) {
    TORCH_CHECK(out.numel() == 0 || !out.is_alias_of(m), op,
                ": out shares memory with mask; pass a tensor of its own");
  }
}

// threshold_mask_into's optional product (= out * orig): both or neither given; orig
// a float tensor of the score's shape on its device; product orig's dtype and shape,
// memory of its own apart from the score's (each chunk's product is written after
// its scores are read).
inline void check_product(const at::Tensor& score, at::TensorList masks, const at::Tensor& out,
                          const std::optional<at::Tensor>& orig,
                          const std::optional<at::Tensor>& product, const char* op) {
  TORCH_CHECK(orig.has_value() == product.has_value(), op,
              ": pass orig and product together (product = out * orig), or neither");
  if (!orig.has_value()) return;
  const at::Tensor& o = *orig;
  const at::Tensor& p = *product;
  TORCH_CHECK(o.layout() == at::kStrided && p.layout() == at::kStrided, op,
              ": orig and product must be dense tensors");
  TORCH_CHECK(is_float_dtype(o.scalar_type()), op, ": orig has dtype ", o.scalar_type(),
              "; expected float16, bfloat16, float32 or float64");
  TORCH_CHECK(o.sizes() == score.sizes() && o.device() == score.device(), op,
              ": orig has shape ", o.sizes(), " on ", o.device(), " but score has shape ",
              score.sizes(), " on ", score.device());
  TORCH_CHECK(p.sizes() == score.sizes() && p.device() == score.device() &&
                  p.scalar_type() == o.scalar_type(),
              op, ": product must be ", o.scalar_type(), " of shape ", score.sizes(), " on ",
              score.device(), " like orig, got ", p.scalar_type(), " of shape ", p.sizes(), " on ",
              p.device());
  if (p.numel() == 0) return;
  TORCH_CHECK(at::has_internal_overlap(p) != at::MemOverlap::Yes, op,
              ": product has entries that share memory (e.g. an expanded tensor); pass a tensor "
              "of its own");
  TORCH_CHECK(!p.is_alias_of(out) && !p.is_alias_of(o), op,
              ": product shares memory with out or orig; pass a tensor of its own");
  for (const at::Tensor& m : masks) {
    TORCH_CHECK(!p.is_alias_of(m), op, ": product shares memory with mask; pass a tensor of its own");
  }
  if (p.is_alias_of(score)) {  // it replaces the score: the very same entries only
    TORCH_CHECK(p.data_ptr() == score.data_ptr() && p.strides() == score.strides() &&
                    score.is_non_overlapping_and_dense(),
                op, ": product shares memory with score without being laid over it exactly");
  }
}

// threshold_mask's output dtype: `dtype` when given (bool or the score's dtype,
// the two the kernels write), else the mask's dtype, bool without a mask.
inline at::ScalarType output_dtype(const at::Tensor& score, const Normalized& n,
                                   std::optional<at::ScalarType> dtype, const char* op) {
  if (dtype.has_value()) {
    TORCH_CHECK(*dtype == at::kBool || *dtype == score.scalar_type(), op, ": dtype=", *dtype,
                " must be bool or the score's dtype (", score.scalar_type(), ")");
    return *dtype;
  }
  if (n.masks.empty() || n.masks[0].scalar_type() == at::kByte) return at::kBool;  // bits: bool
  return n.masks[0].scalar_type();
}

// Output keep-mask for a score: same strides as a dense score.
inline at::Tensor empty_mask_like(const at::Tensor& dense_score) {
  return at::empty_like(dense_score, dense_score.options().dtype(at::kBool));
}

// Moves masks computed on the normalised (dense) scores into each original's
// layout where that differs (non-dense inputs).
inline std::vector<at::Tensor> restore_layout(const Normalized& n, std::vector<at::Tensor> outs) {
  for (size_t i = 0; i < outs.size(); ++i) {
    const at::Tensor& orig = n.originals[i];
    if (!orig.is_non_overlapping_and_dense()) {
      at::Tensor o = at::empty_like(orig, orig.options().dtype(outs[i].scalar_type()));
      o.copy_(outs[i]);
      outs[i] = o;
    }
  }
  return outs;
}

// ---- CPU work list -------------------------------------------------------

struct Entry {
  const void* data;
  const void* mask;  // nullptr: all eligible
  bool mask_is_bool; // else the mask has the score's dtype, nonzero = eligible,
  bool mask_is_bits = false;  // or packed bits (then the score is row-major)
  bool* out;         // nullptr when no masks are written
  at::ScalarType dtype;
  int64_t numel;
  bool row_major;    // memory order == logical order
  std::vector<int64_t> sizes, strides;
};

struct Chunk {
  int64_t entry, begin, end;  // [begin, end) of entry: memory offsets, or logical
};                            // indices in the ordered-tie pass (same count)

constexpr int64_t kChunk = int64_t(1) << 16;

struct Prepared {
  Normalized n;
  std::vector<Entry> entries;
  std::vector<Chunk> chunks;
  std::vector<at::Tensor> outs;
  bool wide = false;

  // k == 0: the result is the eligibility itself.
  void copy_eligible_to_out() const {
    for (size_t i = 0; i < outs.size(); ++i) {
      if (n.masks.empty()) {
        outs[i].fill_(true);
      } else if (n.masks[i].scalar_type() == at::kByte) {
        outs[i].copy_(unpack_like(n.masks[i], outs[i]));
      } else {
        outs[i].copy_(n.masks[i]);
      }
    }
  }

  std::vector<at::Tensor> finish() { return restore_layout(n, outs); }
};

inline Prepared prepare(at::TensorList scores, at::TensorList masks, int64_t k, bool make_out,
                        const char* op) {
  Prepared p;
  p.n = normalize_inputs(scores, masks, k, op);
  p.wide = p.n.wide;
  for (size_t i = 0; i < p.n.scores.size(); ++i) {
    const at::Tensor& s = p.n.scores[i];
    TORCH_CHECK(s.device().is_cpu(), op, ": scores[", i, "] is on ", s.device(),
                ", expected cpu");
    Entry e;
    e.data = s.data_ptr();
    e.mask = p.n.masks.empty() ? nullptr : p.n.masks[i].data_ptr();
    e.mask_is_bool = p.n.masks.empty() || p.n.masks[i].scalar_type() == at::kBool;
    e.mask_is_bits = !p.n.masks.empty() && p.n.masks[i].scalar_type() == at::kByte;
    e.out = nullptr;
    if (make_out) {
      p.outs.push_back(empty_mask_like(s));
      e.out = p.outs.back().data_ptr<bool>();
    }
    e.dtype = s.scalar_type();
    e.numel = s.numel();
    e.row_major = s.is_contiguous();
    e.sizes = s.sizes().vec();
    e.strides = s.strides().vec();
    p.entries.push_back(std::move(e));
    for (int64_t b = 0; b < s.numel(); b += kChunk) {
      p.chunks.push_back(Chunk{static_cast<int64_t>(i), b, std::min(b + kChunk, s.numel())});
    }
  }
  return p;
}

}  // namespace threshold
}  // namespace lthfast
