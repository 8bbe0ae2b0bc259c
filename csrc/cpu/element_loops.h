// The three streaming passes of a term of single-element groups without
// weights (c_i = |x_i| times a power of two, w_i = lam; elementwise.cpp), in
// float64 lanes: four on
// x86-64 CPUs with AVX2 (picked at run time, cpu_features.h), two elsewhere.
// Free of branches, as the comparisons' outcomes are random on real data.
// The lane order depends only on n and the CPU's vector width, so identical
// runs get identical sums; the loops' arithmetic is contracted into no FMA, so
// each element's result is that of the scalar formulas in threshold.h.
#pragma once

#include <cstdint>
#include <limits>

namespace wgsef::cpu {

// Over x[0, n): the counts of non-zero (NaN included), NaN and infinite
// elements, and the smallest |x_i| among the finite non-zero ones (+inf if
// none).
struct ElementCounts {
  double nonzero = 0.0, nan = 0.0, inf = 0.0;
  double min_abs = std::numeric_limits<double>::infinity();
};
template <typename T>
ElementCounts element_counts(const T* x, int64_t n);

// A pass of the threshold search at eta (PassSearch's seg) over x[0, n),
// lam >= 0, with c_i = |x_i| * scale (scale a power of two, elementwise.cpp):
// seg[0] += the saturated count (c_i eta - lam >= 1), seg[1] += the sum of c_i
// over the linear ones (0 < c_i eta - lam < 1), seg[2] += lam times their count.
template <typename T>
void element_segment(const T* x, int64_t n, double eta, double lam, double scale, double* seg);

// y_i = x_i * u_i / (u_i + lam), u_i the share snapped_share(c_i, eta, lam),
// c_i = |x_i| * scale: the prox factor of a term that searched (finite,
// lam > 0, 0 < k < nonzero). x and y may be the same array.
template <typename T>
void element_shrink(const T* x, T* y, int64_t n, double eta, double lam, double scale);

}  // namespace wgsef::cpu
