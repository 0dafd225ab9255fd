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
//
// The includer defines its instruction set's vector width in bytes,
// LTHFAST_ROWS_VBYTES, and its register budget in 64-byte units (a tile is
// counted in those whatever the width): LTHFAST_ROWS_ACC (accumulators that fit
// in registers with room left for the loads and the broadcast) and
// LTHFAST_ROWS_INFLIGHT (how many keep the fused multiply-adds busy: latency x
// issue rate). The arithmetic is on vectors of the native width: GCC lowers a
// 64-byte vector type on AVX2 through the stack (the weight broadcast became 16
// scalar stores; the kernel ran 10-15x slower than on AVX-512), and a tile wider
// than the registers spills its accumulators on every weight.

typedef float vf __attribute__((vector_size(64)));
typedef float nvf __attribute__((vector_size(LTHFAST_ROWS_VBYTES)));
typedef double nvd __attribute__((vector_size(LTHFAST_ROWS_VBYTES)));

// Widest tile, in 64-byte units (the caller cuts the plane in tiles of at most this).
static constexpr int kMaxTileVectors = LTHFAST_ROWS_ACC;

// Sets of accumulators a tile of nv units alternates between: about
// LTHFAST_ROWS_INFLIGHT units in flight, within the register budget.
static constexpr int interleave(int nv) {
  int p = 1;
  while (p * 2 <= nv) p *= 2;  // largest power of two <= nv
  int s = LTHFAST_ROWS_INFLIGHT / p;
  while (s > 1 && s * nv > LTHFAST_ROWS_ACC) --s;
  return s < 1 ? 1 : s;
}

// V: a native vector; NV: the tile's width in 64-byte units.
template <typename V, typename T, int NV>
static void rows_tile(const T* __restrict src, const int32_t* __restrict col,
                      const int32_t* __restrict col_off, const T* __restrict w, int64_t* cursor,
                      int64_t end, uint32_t limit, T* __restrict out, bool add) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  constexpr int NR = NV * int(64 / sizeof(V));  // native vectors per tile
  // A fused multiply-add waits ~4 cycles for its accumulator and two issue per
  // cycle: narrow tiles alternate S sets of accumulators so that enough are in
  // flight (summed at the end). AVX-512: 8 vectors, S = 8, 4, 4, 2, 2, 2, 2, 1...
  constexpr int S = interleave(NV);
  V acc[S][NR];
  for (int v = 0; v < NR; ++v) {
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
      for (int v = 0; v < NR; ++v) {
        V x;
        __builtin_memcpy(&x, p + v * kLanes, sizeof(V));
        acc[s][v] += wt * x;
      }
    }
  }
  *cursor = t;
  for (int v = 0; v < NR; ++v) {
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

// kTilesF32[nv] / kTilesF64[nv]: the kernel for a tile of nv 64-byte units,
// 1..kMaxTileVectors (nullptr above).
template <typename V, typename T, int NV>
static constexpr TileFn<T> tile() {
  if constexpr (NV <= kMaxTileVectors) {
    return rows_tile<V, T, NV>;
  } else {
    return nullptr;
  }
}
#define LTHFAST_TILES(V, T) \
  { nullptr, tile<V, T, 1>(), tile<V, T, 2>(), tile<V, T, 3>(), tile<V, T, 4>(), \
    tile<V, T, 5>(), tile<V, T, 6>(), tile<V, T, 7>(), tile<V, T, 8>(), \
    tile<V, T, 9>(), tile<V, T, 10>(), tile<V, T, 11>(), tile<V, T, 12>(), \
    tile<V, T, 13>(), tile<V, T, 14>(), tile<V, T, 15>(), tile<V, T, 16>() }
static const TileFn<float> kTilesF32[17] = LTHFAST_TILES(nvf, float);
static const TileFn<double> kTilesF64[17] = LTHFAST_TILES(nvd, double);
#undef LTHFAST_TILES
