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
