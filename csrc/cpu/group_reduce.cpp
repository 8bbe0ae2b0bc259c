#include "group_reduce.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "float_loops.h"
#include "group_runs.h"

namespace wgsef::cpu {
namespace {

// Runs shorter than kShortRun stay inline: a call costs more than it saves there.
constexpr int64_t kMinDispatchedRun = kShortRun;

template <typename T>
inline double run_sum_squares(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n >= kMinDispatchedRun) return sum_squares_f32(p, n);
  }
  return sum_squares(p, n);
}

template <typename T, typename acc_t>
inline void scale_run(const T* src, T* dst, int64_t n, acc_t factor) {
  if constexpr (std::is_same_v<T, float>) {
    if (n >= kMinDispatchedRun) return scale_f32(src, dst, n, factor);
  }
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(static_cast<acc_t>(src[c]) * factor);
}

template <typename T, typename acc_t>
inline void scale_each_run(const T* src, T* dst, const acc_t* factors, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n >= kMinDispatchedRun) return scale_each_f32(src, dst, factors, n);
  }
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(static_cast<acc_t>(src[j]) * factors[j]);
}

template <typename T>
void strided_scale(const T* src, T* dst, int64_t A, int64_t G, int64_t C,
                   const at::opmath_type<T>* f) {
  const int64_t rows = A * G;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)),
                   [&](int64_t r0, int64_t r1) {
                     if (C == 1) {
                       // consecutive elements belong to consecutive groups: vectorise over g
                       for (int64_t r = r0; r < r1;) {
                         const int64_t g = r % G, len = std::min(r1 - r, G - g);
                         scale_each_run(src + r, dst + r, f + g, len);
                         r += len;
                       }
                       return;
                     }
                     for (int64_t r = r0; r < r1; ++r)
                       scale_run(src + r * C, dst + r * C, C, f[r % G]);
                   });
}

template <typename T>
void id_scale(const T* src, T* dst, const int64_t* ids, int64_t n, const at::opmath_type<T>* f) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * f[ids[i]]);
  });
}

}  // namespace

namespace {

template <typename RunSq, typename RowSq>
void visit_groups(const GroupLayout& g, int64_t numel, double* out, const RunSq& run_sq,
                  const RowSq& row_sq) {
  if (g.group_ids.defined()) {
    id_group_sums(g.group_ids.const_data_ptr<int64_t>(), numel, g.num_groups, out, run_sq);
  } else {
    strided_group_sums(g.outer, g.num_groups, g.inner, out, run_sq, row_sq);
  }
}

// float64 squared norms that a scale may bring into range: one overflowed, or
// all of them are subnormal or zero (the elements of x may still be non-zero).
// A few tiny groups beside normal ones keep their sums: one scale for the
// whole tensor could not lift them without overflowing the others.
bool needs_rescale(const double* sq, int64_t m) {
  bool all_tiny = m > 0;
  for (int64_t i = 0; i < m; ++i) {
    if (std::isinf(sq[i])) return true;
    all_tiny = all_tiny && sq[i] < std::numeric_limits<double>::min();
  }
  return all_tiny;
}

// The squared norms of a float64 x scaled so that max|x| lies in [0.5, 1).
void rescaled_sq_norms(const at::Tensor& x, const GroupLayout& g, SquaredNorms& r) {
  const double* px = x.const_data_ptr<double>();
  double largest = 0.0;
  for (int64_t i = 0; i < x.numel(); ++i) largest = std::max(largest, std::abs(px[i]));
  if (!std::isfinite(largest) || largest == 0.0) return;  // Inf or NaN in x: the sums say so
  std::frexp(largest, &r.exponent);
  const int e = -r.exponent;  // 2^e itself may not be a double (e > 1023): ldexp each element
  std::fill(r.sq.data(), r.sq.data() + r.sq.size(), 0.0);
  const auto run_sq = [px, e](int64_t begin, int64_t len) {
    double sum = 0.0;
    for (int64_t j = 0; j < len; ++j) {
      const double v = std::ldexp(px[begin + j], e);
      sum += v * v;
    }
    return sum;
  };
  const auto row_sq = [px, e](int64_t begin, int64_t len, double* acc) {
    for (int64_t j = 0; j < len; ++j) {
      const double v = std::ldexp(px[begin + j], e);
      acc[j] += v * v;
    }
  };
  visit_groups(g, x.numel(), r.sq.data(), run_sq, row_sq);
}

}  // namespace

SquaredNorms group_sq_norms(const at::Tensor& x, const GroupLayout& g) {
  SquaredNorms r{PooledBuffer<double>(g.num_groups), 0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_sq_norms", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const auto run_sq = [px](int64_t begin, int64_t len) {
      return run_sum_squares(px + begin, len);
    };
    const auto row_sq = [px](int64_t begin, int64_t len, double* acc) {
      for (int64_t j = 0; j < len; ++j) {
        const double v = static_cast<double>(px[begin + j]);
        acc[j] += v * v;
      }
    };
    visit_groups(g, x.numel(), r.sq.data(), run_sq, row_sq);
  });
  if (x.scalar_type() == at::kDouble && needs_rescale(r.sq.data(), r.sq.size()))
    rescaled_sq_norms(x, g, r);
  return r;
}

std::vector<double> joint_sq_norms(const std::vector<GroupedTensor>& tensors) {
  std::vector<SquaredNorms> norms;
  int exponent = std::numeric_limits<int>::min();
  for (const GroupedTensor& t : tensors) {
    norms.push_back(group_sq_norms(t.data, t.layout));
    const SquaredNorms& n = norms.back();
    // a tensor without a non-zero norm has no scale to impose
    if (std::any_of(n.sq.data(), n.sq.data() + n.sq.size(), [](double v) { return v != 0.0; }))
      exponent = std::max(exponent, n.exponent);
  }
  if (exponent == std::numeric_limits<int>::min()) exponent = 0;
  std::vector<double> sq;
  for (const SquaredNorms& n : norms) {
    const int shift = 2 * (n.exponent - exponent);  // 2^shift may not be a double: ldexp each
    for (int64_t i = 0; i < n.sq.size(); ++i) sq.push_back(std::ldexp(n.sq.data()[i], shift));
  }
  return sq;
}

void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupLayout& g,
                  const double* factors) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scale_groups", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    PooledBuffer<acc_t> converted(g.num_groups);
    acc_t* f = converted.data();
    std::copy(factors, factors + g.num_groups, f);
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    if (g.group_ids.defined()) {
      id_scale(s, d, g.group_ids.const_data_ptr<int64_t>(), src.numel(), f);
    } else {
      strided_scale(s, d, g.outer, g.num_groups, g.inner, f);
    }
  });
}

}  // namespace wgsef::cpu
