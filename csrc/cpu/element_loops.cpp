#include "element_loops.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu_features.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

// W elements of x as float64 lanes.
template <int W, typename T>
WGSEF_ALWAYS_INLINE typename Vectors<W>::f64 load(const T* x) {
  if constexpr (std::is_same_v<T, double>) {
    typename Vectors<W>::f64 v;
    std::memcpy(&v, x, sizeof v);
    return v;
  } else {
    typename Vectors<W>::f32 v;
    std::memcpy(&v, x, sizeof v);
    return __builtin_convertvector(v, typename Vectors<W>::f64);
  }
}

template <int W>
WGSEF_ALWAYS_INLINE typename Vectors<W>::f64 abs_lanes(typename Vectors<W>::f64 v) {
  using i64 = typename Vectors<W>::i64;
  return (typename Vectors<W>::f64)((i64)v & INT64_MAX);
}

// 1.0 where the mask is set, 0.0 elsewhere
template <int W>
WGSEF_ALWAYS_INLINE typename Vectors<W>::f64 ones_where(typename Vectors<W>::i64 mask) {
  using f64 = typename Vectors<W>::f64;
  return (f64)(mask & (typename Vectors<W>::i64)(f64{} + 1.0));
}

template <int W>
WGSEF_ALWAYS_INLINE double lane_sum(typename Vectors<W>::f64 v) {
  double s = 0.0;
  for (int j = 0; j < W; ++j) s += v[j];
  return s;
}

template <int W, typename T>
WGSEF_ALWAYS_INLINE ElementCounts counts_lanes(const T* x, int64_t n) {
  using f64 = typename Vectors<W>::f64;
  const f64 zero{}, inf = zero + std::numeric_limits<double>::infinity();
  f64 nonzero{}, nan{}, infinite{}, least = inf;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const f64 v = load<W>(x + i), a = abs_lanes<W>(v);
    nonzero += ones_where<W>(v != zero);
    nan += ones_where<W>(v != v);
    infinite += ones_where<W>(a == inf);
    least = (a != zero) & (a < least) ? a : least;  // NaN fails a < least
  }
  ElementCounts r;
  r.nonzero = lane_sum<W>(nonzero), r.nan = lane_sum<W>(nan), r.inf = lane_sum<W>(infinite);
  for (int j = 0; j < W; ++j) r.min_abs = std::min(r.min_abs, least[j]);
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]), a = std::abs(v);
    r.nonzero += v != 0.0;
    r.nan += std::isnan(v);
    r.inf += std::isinf(v);
    if (a != 0.0 && a < r.min_abs) r.min_abs = a;
  }
  return r;
}

template <int W, typename T>
WGSEF_ALWAYS_INLINE void segment_lanes(const T* x, int64_t n, double eta, double lam, double scale,
                                       double* seg) {
  using f64 = typename Vectors<W>::f64;
  using i64 = typename Vectors<W>::i64;
  const f64 zero{}, one = zero + 1.0, at = zero + eta, w = zero + lam, times = zero + scale;
  f64 saturated{}, linear{}, sum_c{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const f64 c = abs_lanes<W>(load<W>(x + i)) * times;
    const f64 v = c * at - w;
    const i64 sat = v >= one;
    const i64 lin = (v > zero) & ~sat;
    saturated += ones_where<W>(sat);
    linear += ones_where<W>(lin);
    sum_c += (f64)(lin & (i64)c);
  }
  double s = lane_sum<W>(saturated), l = lane_sum<W>(linear), sc = lane_sum<W>(sum_c);
  for (; i < n; ++i) {
    const double c = std::abs(static_cast<double>(x[i])) * scale, v = c * eta - lam;
    const bool sat = v >= 1.0, lin = (v > 0.0) & !sat;
    s += sat;
    l += lin;
    sc += lin ? c : 0.0;
  }
  seg[0] += s;
  seg[1] += sc;
  seg[2] += lam * l;
}

template <int W, typename T>
WGSEF_ALWAYS_INLINE void shrink_lanes(const T* x, T* y, int64_t n, double eta, double lam,
                                      double scale) {
  using f64 = typename Vectors<W>::f64;
  const f64 zero{}, one = zero + 1.0, at = zero + eta, w = zero + lam, times = zero + scale;
  const f64 eps8 = zero + 8.0 * 2.220446049250313e-16;  // snapped_share's tolerance, per unit
  const f64 inf = zero + std::numeric_limits<double>::infinity();
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const f64 v = load<W>(x + i);
    const f64 ceta = (abs_lanes<W>(v) * times) * at;
    const f64 t = ceta - w;
    const f64 tol = eps8 * (ceta > w ? ceta : w);
    f64 u = t <= zero ? zero : (t >= one ? one : t);
    u = (abs_lanes<W>(t) <= tol) & (ceta != inf) ? zero : u;    // as snapped_share
    const f64 f = abs_lanes<W>(v) > zero ? u / (u + w) : zero;  // as prox_factor: 0 * inf is NaN
    if constexpr (std::is_same_v<T, double>) {
      const f64 out = v * f;
      std::memcpy(y + i, &out, sizeof out);
    } else {
      typename Vectors<W>::f32 xf, ff = __builtin_convertvector(f, typename Vectors<W>::f32);
      std::memcpy(&xf, x + i, sizeof xf);
      const auto out = xf * ff;
      std::memcpy(y + i, &out, sizeof out);
    }
  }
  for (; i < n; ++i) {
    const double f = shrink_factor(std::abs(static_cast<double>(x[i])) * scale, eta, lam);
    y[i] = x[i] * static_cast<T>(f);
  }
}

#ifdef WGSEF_X86_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) ElementCounts counts_avx2(const T* x, int64_t n) {
  return counts_lanes<4>(x, n);
}
template <typename T>
__attribute__((target("avx2,fma"))) void segment_avx2(const T* x, int64_t n, double eta, double lam,
                                                      double scale, double* seg) {
  segment_lanes<4>(x, n, eta, lam, scale, seg);
}
template <typename T>
__attribute__((target("avx2,fma"))) void shrink_avx2(const T* x, T* y, int64_t n, double eta,
                                                     double lam, double scale) {
  shrink_lanes<4>(x, y, n, eta, lam, scale);
}
#endif

}  // namespace

template <typename T>
ElementCounts element_counts(const T* x, int64_t n) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return counts_avx2(x, n);
#endif
  return counts_lanes<2>(x, n);
}

template <typename T>
void element_segment(const T* x, int64_t n, double eta, double lam, double scale, double* seg) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return segment_avx2(x, n, eta, lam, scale, seg);
#endif
  segment_lanes<2>(x, n, eta, lam, scale, seg);
}

template <typename T>
void element_shrink(const T* x, T* y, int64_t n, double eta, double lam, double scale) {
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return shrink_avx2(x, y, n, eta, lam, scale);
#endif
  shrink_lanes<2>(x, y, n, eta, lam, scale);
}

template ElementCounts element_counts<float>(const float*, int64_t);
template ElementCounts element_counts<double>(const double*, int64_t);
template void element_segment<float>(const float*, int64_t, double, double, double, double*);
template void element_segment<double>(const double*, int64_t, double, double, double, double*);
template void element_shrink<float>(const float*, float*, int64_t, double, double, double);
template void element_shrink<double>(const double*, double*, int64_t, double, double, double);

}  // namespace wgsef::cpu
