// The inner loop of the CPU sparse convolution, included once per instruction
// set (see sparse_conv_cpu.cpp), each time in its own namespace under its own
// `#pragma GCC target`. No includes here: the code must take the target of the
// including region.
//
// out[j] (+)= sum_t w[t] * src[off[t] + j] for j in [j0, j0 + width), width a
// multiple of 64 bytes: one output channel, one tile of its (padded) output
// plane, the kept weights of one block of input channels. The accumulators stay
// in registers while the weights stream by: one vector load and one fused
// multiply-add per weight and 64 bytes of output.

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));

template <typename V, typename T, int NV>
static inline void rows_tile(const T* __restrict src, const int64_t* __restrict off,
                             const T* __restrict w, int64_t ntaps, int64_t j0, T* __restrict out,
                             bool add) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  V acc[NV];
  for (int v = 0; v < NV; ++v) {
    if (add) {
      __builtin_memcpy(&acc[v], out + j0 + v * kLanes, sizeof(V));
    } else {
      acc[v] = V{};
    }
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    const T* p = src + off[t] + j0;
    const T wt = w[t];
    for (int v = 0; v < NV; ++v) {
      V x;
      __builtin_memcpy(&x, p + v * kLanes, sizeof(V));
      acc[v] += wt * x;
    }
  }
  for (int v = 0; v < NV; ++v) __builtin_memcpy(out + j0 + v * kLanes, &acc[v], sizeof(V));
}

template <typename V, typename T>
static void sparse_rows(const T* src, const int64_t* off, const T* w, int64_t ntaps, int64_t j0,
                        int64_t width, T* out, bool add) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  const int64_t end = j0 + width;
  for (; j0 + 4 * kLanes <= end; j0 += 4 * kLanes) rows_tile<V, T, 4>(src, off, w, ntaps, j0, out, add);
  for (; j0 < end; j0 += kLanes) rows_tile<V, T, 1>(src, off, w, ntaps, j0, out, add);
}

static void sparse_rows_f32(const float* src, const int64_t* off, const float* w, int64_t ntaps,
                            int64_t j0, int64_t width, float* out, bool add) {
  sparse_rows<vf, float>(src, off, w, ntaps, j0, width, out, add);
}

static void sparse_rows_f64(const double* src, const int64_t* off, const double* w, int64_t ntaps,
                            int64_t j0, int64_t width, double* out, bool add) {
  sparse_rows<vd, double>(src, off, w, ntaps, j0, width, out, add);
}
