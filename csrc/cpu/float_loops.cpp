#include "float_loops.h"

#include <algorithm>
#include <cstring>

#include "cpu_features.h"

namespace wgsef::cpu {
namespace {

template <int W>
struct Vectors {
  typedef float f32 __attribute__((vector_size(4 * W)));
  typedef double f64 __attribute__((vector_size(8 * W)));
};

// Four accumulators of W float lanes hide the add latency; every block's sum
// is added to W float64 lanes, which are summed once at the end.
template <int W>
WGSEF_ALWAYS_INLINE double sum_squares_lanes(const float* p, int64_t n) {
  using f32 = typename Vectors<W>::f32;
  using f64 = typename Vectors<W>::f64;
  constexpr int64_t kBlock = 256, kStep = 4 * W;
  f64 total{};
  int64_t i = 0;
  while (i + kStep <= n) {
    const int64_t block_end = std::min(n, i + kBlock);
    f32 acc[4] = {};
    for (; i + kStep <= block_end; i += kStep) {
      for (int a = 0; a < 4; ++a) {
        f32 x;
        std::memcpy(&x, p + i + a * W, sizeof x);
        acc[a] += x * x;
      }
    }
    total += __builtin_convertvector((acc[0] + acc[1]) + (acc[2] + acc[3]), f64);
  }
  double sum = 0.0;
  for (int j = 0; j < W; ++j) sum += total[j];
  for (; i < n; ++i) sum += static_cast<double>(p[i]) * p[i];
  return sum;
}

WGSEF_ALWAYS_INLINE void scale_loop(const float* src, float* dst, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * factor;
}

WGSEF_ALWAYS_INLINE void scale_each_loop(const float* src, float* dst, const float* factors,
                                         int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * factors[i];
}

#ifdef WGSEF_X86_AVX2
__attribute__((target("avx2,fma"))) double sum_squares_avx2(const float* p, int64_t n) {
  return sum_squares_lanes<8>(p, n);
}
__attribute__((target("avx2,fma"))) void scale_avx2(const float* src, float* dst, int64_t n,
                                                    float factor) {
  scale_loop(src, dst, n, factor);
}
__attribute__((target("avx2,fma"))) void scale_each_avx2(const float* src, float* dst,
                                                         const float* factors, int64_t n) {
  scale_each_loop(src, dst, factors, n);
}
#endif

}  // namespace

double sum_squares_f32(const float* p, int64_t n) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return sum_squares_avx2(p, n);
#endif
  return sum_squares_lanes<4>(p, n);
}

void scale_f32(const float* src, float* dst, int64_t n, float factor) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return scale_avx2(src, dst, n, factor);
#endif
  scale_loop(src, dst, n, factor);
}

void scale_each_f32(const float* src, float* dst, const float* factors, int64_t n) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return scale_each_avx2(src, dst, factors, n);
#endif
  scale_each_loop(src, dst, factors, n);
}

}  // namespace wgsef::cpu
