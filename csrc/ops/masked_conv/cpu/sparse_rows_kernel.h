// The inner loop of the CPU sparse convolution, included once per instruction
// set (see sparse_conv_cpu.cpp), each time in its own namespace under its own
// `#pragma GCC target`. No includes here: the code must take the target of the
// including region.
//
// One call: one output channel, one tile of NV vectors of its (padded) output
// plane, the kept weights t = *cursor, ... whose column (input channel, kh, kw)
// is below `limit` (the end of the current block of input channels):
//   out[j] (+)= sum_t w[t] * src[col_off[col[t]] + j]
// The NV accumulators stay in registers while the weights stream by: per kept
// weight one column index, one offset, one broadcast and NV fused
// multiply-adds with a memory operand. Columns ascend within a row, so the
// block ends at the first column >= limit; the cursor is left there for the
// next block. Unsigned compare: a negative (corrupt) column also stops the
// walk, before it is used as an index, and the caller reports the row.

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));

template <typename V, typename T, int NV>
static void rows_tile(const T* __restrict src, const int32_t* __restrict col,
                      const int32_t* __restrict col_off, const T* __restrict w, int64_t* cursor,
                      int64_t end, uint32_t limit, T* __restrict out, bool add) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  // A fused multiply-add waits ~4 cycles for its accumulator and two issue per
  // cycle: narrow tiles alternate S sets of accumulators so that about 8 are
  // in flight (summed at the end).
  constexpr int S = NV >= 8 ? 1 : NV >= 4 ? 2 : NV >= 2 ? 4 : 8;
  V acc[S][NV];
  for (int v = 0; v < NV; ++v) {
    if (add) {
      __builtin_memcpy(&acc[0][v], out + v * kLanes, sizeof(V));
    } else {
      acc[0][v] = V{};
    }
    for (int s = 1; s < S; ++s) acc[s][v] = V{};
  }
  int64_t t = *cursor;
  bool more = true;
  while (more) {
    for (int s = 0; s < S; ++s, ++t) {
      if (t >= end) {
        more = false;
        break;
      }
      const uint32_t c = static_cast<uint32_t>(col[t]);
      if (c >= limit) {
        more = false;
        break;
      }
      const T* p = src + col_off[c];
      const T wt = w[t];
      for (int v = 0; v < NV; ++v) {
        V x;
        __builtin_memcpy(&x, p + v * kLanes, sizeof(V));
        acc[s][v] += wt * x;
      }
    }
  }
  *cursor = t;
  for (int v = 0; v < NV; ++v) {
    for (int s = 1; s < S; ++s) acc[0][v] += acc[s][v];
    __builtin_memcpy(out + v * kLanes, &acc[0][v], sizeof(V));
  }
}

// dst[q] = src[q * step], q < n: the stride-split copy of the input (fp32).
static void copy_strided_f32(const float* __restrict src, int64_t step, float* __restrict dst,
                             int64_t n) {
  if (step == 1) {
    for (int64_t q = 0; q < n; ++q) dst[q] = src[q];
  } else if (step == 2) {
    for (int64_t q = 0; q < n; ++q) dst[q] = src[2 * q];
  } else {
    for (int64_t q = 0; q < n; ++q) dst[q] = src[q * step];
  }
}

// One whole row of a plane, n a multiple of 16: dst[q] = src[q * step] for q0
// <= q < q1, else 0; step 1 or 2 (stride 2 de-interleaves two vectors). The
// caller guarantees src[0, n * step + 16) is readable. A vector per 16
// outputs instead of an element: rows of resnet's 14x14 planes are 16 wide.
typedef int32_t vi32 __attribute__((vector_size(64)));
[[maybe_unused]] static void copy_row_f32(const float* __restrict src, int64_t step, int64_t q0, int64_t q1,
                         int64_t n, float* __restrict dst) {
  const vi32 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const vi32 even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const vi32 lo = lane - int32_t(q0);
  const int32_t width = int32_t(q1 - q0);
  for (int64_t q = 0; q < n; q += 16) {
    vf x;
    if (step == 1) {
      __builtin_memcpy(&x, src + q, sizeof(vf));
    } else {
      vf a, b;
      __builtin_memcpy(&a, src + 2 * q, sizeof(vf));
      __builtin_memcpy(&b, src + 2 * q + 16, sizeof(vf));
      x = __builtin_shuffle(a, b, even);
    }
    const vi32 rel = lo + int32_t(q);  // q + lane - q0
    const vi32 keep = (rel >= 0) & (rel < width);
    const vf out = keep ? x : vf{};
    __builtin_memcpy(dst + q, &out, sizeof(vf));
  }
}

template <typename T>
using TileFn = void (*)(const T*, const int32_t*, const int32_t*, const T*, int64_t*, int64_t,
                        uint32_t, T*, bool);

// kTilesF32[nv] / kTilesF64[nv]: the kernel for a tile of nv vectors, 1..16.
#define LTHFAST_TILES(V, T) \
  { nullptr, rows_tile<V, T, 1>, rows_tile<V, T, 2>, rows_tile<V, T, 3>, rows_tile<V, T, 4>, \
    rows_tile<V, T, 5>, rows_tile<V, T, 6>, rows_tile<V, T, 7>, rows_tile<V, T, 8>, \
    rows_tile<V, T, 9>, rows_tile<V, T, 10>, rows_tile<V, T, 11>, rows_tile<V, T, 12>, \
    rows_tile<V, T, 13>, rows_tile<V, T, 14>, rows_tile<V, T, 15>, rows_tile<V, T, 16> }
static const TileFn<float> kTilesF32[17] = LTHFAST_TILES(vf, float);
static const TileFn<double> kTilesF64[17] = LTHFAST_TILES(vd, double);
#undef LTHFAST_TILES
