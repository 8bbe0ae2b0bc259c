#include "elementwise.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

// Chunks of a fixed size, so that sums do not depend on the number of threads.
constexpr int64_t kChunk = int64_t{1} << 15;

// Sums N values over [0, n): body(begin, end, acc) adds a chunk's share to acc.
template <int N, typename Body>
std::array<double, N> chunked_sums(int64_t n, const Body& body) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::array<double, N>> partial(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      partial[c].fill(0.0);
      body(c * kChunk, std::min(n, (c + 1) * kChunk), partial[c]);
    }
  });
  std::array<double, N> total{};
  for (const auto& p : partial)
    for (int j = 0; j < N; ++j) total[j] += p[j];
  return total;
}

// c_i = sqrt(d_i) |x_i| and w_i = lam d_i of element i.
struct Element {
  const double* d;
  double lam;
  double c(double x, int64_t i) const { return d ? std::sqrt(d[i]) * std::abs(x) : std::abs(x); }
  double w(int64_t i) const { return d ? lam * d[i] : lam; }
};

// The term's counts and its largest breakpoint max_i (w_i + 1) / c_i.
template <typename T>
std::pair<TermCounts, double> summarise(const T* x, int64_t n, const Element& e) {
  std::vector<std::array<double, 4>> partial(static_cast<size_t>((n + kChunk - 1) / kChunk));
  at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double nonzero = 0.0, nan = 0.0, inf = 0.0, top = 0.0;
      for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i) {
        const double v = static_cast<double>(x[i]);
        nonzero += v != 0.0;
        nan += std::isnan(v);
        inf += std::isinf(v);
        if (v != 0.0 && std::isfinite(v)) top = std::max(top, (e.w(i) + 1.0) / e.c(v, i));
      }
      partial[c] = {nonzero, nan, inf, top};
    }
  });
  TermCounts t;
  double top = 0.0;
  for (const auto& p : partial) {
    t.nonzero += static_cast<int64_t>(p[0]);
    t.has_nan = t.has_nan || p[1] > 0.0;
    t.has_inf = t.has_inf || p[2] > 0.0;
    top = std::max(top, p[3]);
  }
  return {t, top};
}

// Where a strided sample of the groups puts the root of h(eta) = target (in
// sample units): bisection of bit patterns on the sample's own h.
double sample_root(const std::vector<double>& c, const std::vector<double>& w, double target,
                   double top) {
  double lo = 0.0, hi = top;
  for (int step = 0; step < 80; ++step) {
    const double mid = detail::midpoint_by_bits(lo, hi);
    if (!(mid > lo && mid < hi)) break;
    double h = -target;
    for (size_t j = 0; j < c.size(); ++j) h += detail::clip01(c[j] * mid - w[j]);
    (h < 0.0 ? lo : hi) = mid;
  }
  return hi;
}

// The root of h by passes over x (w_i = 0 for the value and its gradient).
// A sample of 4096 groups gives two points meant to bracket the root closely
// (the sample count's spread, four standard deviations either side); one pass
// each checks them, and the Newton steps start from that bracket. A point that
// fails its check still narrows the full bracket [0, top].
template <typename T>
double threshold(const T* x, int64_t n, const Element& e, const TermCounts& t, int64_t k,
                 double top) {
  const auto segment = [&](double at, double (&seg)[3]) {
    const auto sums = chunked_sums<3>(n, [&](int64_t begin, int64_t end, auto& acc) {
      for (int64_t i = begin; i < end; ++i) {
        const double c = e.c(static_cast<double>(x[i]), i), w = e.w(i);
        const double s = c * at - w;
        if (s >= 1.0) {
          acc[0] += 1.0;
        } else if (s > 0.0) {
          acc[1] += c;
          acc[2] += w;
        }
      }
    });
    seg[0] = sums[0], seg[1] = sums[1], seg[2] = sums[2];
  };
  Bracket b = full_bracket(t.nonzero, k, top);
  constexpr int64_t kSample = 4096;
  if (n > 4 * kSample) {
    std::vector<double> c, w;
    for (int64_t j = 0; j < kSample; ++j) {
      const int64_t i = j * n / kSample;
      const double v = static_cast<double>(x[i]);
      if (v == 0.0) continue;
      c.push_back(e.c(v, i));
      w.push_back(e.w(i));
    }
    const double share = static_cast<double>(k) / static_cast<double>(t.nonzero);
    const double expected = share * static_cast<double>(c.size());
    const double spread = 4.0 * std::sqrt(expected * (1.0 - share)) + 2.0;
    for (const double target : {expected - spread, expected + spread}) {
      if (target <= 0.0 || target >= static_cast<double>(c.size())) continue;
      const double p = sample_root(c, w, target, top);
      if (!(p > b.lo && p < b.hi)) continue;
      double seg[3];
      segment(p, seg);
      const double h = seg[0] - static_cast<double>(k) + (seg[1] * p - seg[2]);
      if (h == 0.0) return p;
      if (h < 0.0) {
        b.lo = p, b.h_lo = h;
      } else {
        b.hi = p, b.h_hi = h;
      }
    }
  }
  return solve_threshold_by_passes(segment, k, b);
}

template <typename T>
void prox_impl(const T* x, T* y, int64_t n, const double* d, int64_t k, double lam) {
  using acc_t = at::opmath_type<T>;
  const Element e{d, lam};
  const auto [t, top] = summarise(x, n, e);
  const double eta = prox_searches(t, k, lam) ? threshold(x, n, e, t, k, top) : 0.0;
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double f = prox_factor(t, k, lam, e.c(static_cast<double>(x[i]), i), eta, e.w(i));
      y[i] = static_cast<T>(static_cast<acc_t>(x[i]) * static_cast<acc_t>(f));
    }
  });
}

// eta of the value's shares, +inf where no search is needed.
template <typename T>
double envelope_threshold(const T* x, int64_t n, const Element& e, const TermCounts& t, int64_t k,
                          double top) {
  return envelope_searches(t, k) ? threshold(x, n, e, t, k, top)
                                 : std::numeric_limits<double>::infinity();
}

template <typename T>
double value_impl(const T* x, int64_t n, const double* d, int64_t k) {
  const Element e{d, 0.0};
  const auto [t, top] = summarise(x, n, e);
  const double eta = envelope_threshold(x, n, e, t, k, top);
  if (!t.finite()) return envelope_value_from(t, k, 0.0);
  const auto total = chunked_sums<1>(n, [&](int64_t begin, int64_t end, auto& acc) {
    for (int64_t i = begin; i < end; ++i) {
      const double c = e.c(static_cast<double>(x[i]), i);
      const double u = envelope_share(c, eta);
      if (u > 0.0) acc[0] += c * c / u;
    }
  });
  return envelope_value_from(t, k, 0.5 * total[0]);
}

template <typename T>
void grad_impl(const T* x, T* g, int64_t n, const double* d, int64_t k, double upstream) {
  using acc_t = at::opmath_type<T>;
  const Element e{d, 0.0};
  const auto [t, top] = summarise(x, n, e);
  const double eta = envelope_threshold(x, n, e, t, k, top);
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double c = e.c(static_cast<double>(x[i]), i);
      const double s = upstream * grad_scale(t, k, c, d ? d[i] : 1.0, eta);
      g[i] = static_cast<T>(static_cast<acc_t>(x[i]) * static_cast<acc_t>(s));
    }
  });
}

}  // namespace

void prox_elementwise(const at::Tensor& src, const at::Tensor& dst, const double* d, int64_t k,
                      double lam) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, src.scalar_type(), "prox_elementwise", [&] {
        prox_impl(src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), src.numel(), d,
                  k, lam);
      });
}

double value_elementwise(const at::Tensor& x, const double* d, int64_t k) {
  double v = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "value_elementwise",
      [&] { v = value_impl(x.const_data_ptr<scalar_t>(), x.numel(), d, k); });
  return v;
}

void grad_elementwise(const at::Tensor& x, const at::Tensor& out, const double* d, int64_t k,
                      double upstream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "grad_elementwise", [&] {
        grad_impl(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), x.numel(), d, k,
                  upstream);
      });
}

}  // namespace wgsef::cpu
