#include "float_loops.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu_features.h"

namespace wgsef::cpu {
namespace {

// Below this total, squares lost to float underflow may matter.
constexpr double kTinySum = 0x1p-80;

WGSEF_ALWAYS_INLINE double sum_squares_f64(const float* p, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p[i]) * p[i];
  return s;
}

// Four accumulators of W float lanes hide the add latency; every block's sum
// is added to W float64 lanes, which are summed once at the end. If a float
// sum overflowed (the total is not finite), or the total is below 2^-80 while
// some element is non-zero (an OR of the elements' bits tells), squares may
// have been lost, and the run is summed again in float64, where the squares of
// finite floats neither overflow nor underflow. Above 2^-80 the squares lost
// to float underflow (each below 2^-126) change the total by under 2^-40 of it.
template <int W>
WGSEF_ALWAYS_INLINE double sum_squares_lanes(const float* p, int64_t n) {
  using f32 = typename Vectors<W>::f32;
  using f64 = typename Vectors<W>::f64;
  using i32 = typename Vectors<W>::i32;
  constexpr int64_t kBlock = 256, kStep = 4 * W;
  f64 total{};
  i32 bits{};
  int64_t i = 0;
  while (i + kStep <= n) {
    const int64_t block_end = std::min(n, i + kBlock);
    f32 acc[4] = {};
    for (; i + kStep <= block_end; i += kStep) {
      for (int a = 0; a < 4; ++a) {
        f32 x;
        std::memcpy(&x, p + i + a * W, sizeof x);
        acc[a] += x * x;
        bits |= (i32)x;  // the bits, not the values
      }
    }
    total += __builtin_convertvector((acc[0] + acc[1]) + (acc[2] + acc[3]), f64);
  }
  double sum = 0.0;
  for (int j = 0; j < W; ++j) sum += total[j];
  for (; i < n; ++i) sum += static_cast<double>(p[i]) * p[i];
  if (sum < kTinySum) {
    int32_t any = 0;
    for (int j = 0; j < W; ++j) any |= bits[j] & 0x7fffffff;  // -0.0 is zero
    if (any != 0) return sum_squares_f64(p, n);
  } else if (!(sum <= std::numeric_limits<double>::max())) {  // inf, or NaN in p
    return sum_squares_f64(p, n);
  }
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
