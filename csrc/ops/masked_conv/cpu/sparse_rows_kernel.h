// The inner loop of the CPU sparse convolution, included once per instruction
// set (see sparse_conv_cpu.cpp), each time in its own namespace under its own
// `#pragma GCC target`. No includes here: the code must take the target of the
// including region.
//
// out[j] = sum_t w[t] * src[off[t] + j] for j in [0, len), len a multiple of 16
// floats / 8 doubles: one output channel of one sample, as rows of the
// phase-split padded input (see the .cpp). The accumulators stay in registers
// while all kept weights of the channel stream by; each weight costs one
// vector load and one multiply-add per 64 bytes of output.

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));

template <typename V, typename T, int NV>
static inline void rows_tile(const T* __restrict src, const int64_t* __restrict off,
                             const T* __restrict w, int64_t ntaps, int64_t j0, T* __restrict out) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V{} ;
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
static void sparse_rows(const T* src, const int64_t* off, const T* w, int64_t ntaps, int64_t len,
                        T* out) {
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  int64_t j0 = 0;
  for (; j0 + 4 * kLanes <= len; j0 += 4 * kLanes) rows_tile<V, T, 4>(src, off, w, ntaps, j0, out);
  for (; j0 < len; j0 += kLanes) rows_tile<V, T, 1>(src, off, w, ntaps, j0, out);
}

static void sparse_rows_f32(const float* src, const int64_t* off, const float* w, int64_t ntaps,
                            int64_t len, float* out) {
  sparse_rows<vf, float>(src, off, w, ntaps, len, out);
}

static void sparse_rows_f64(const double* src, const int64_t* off, const double* w, int64_t ntaps,
                            int64_t len, double* out) {
  sparse_rows<vd, double>(src, off, w, ntaps, len, out);
}
