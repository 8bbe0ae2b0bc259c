// WGSEF math on per-group squared norms: the threshold search, the prox scale
// factors and the envelope value. Plain C++ with no torch includes, so every
// backend computes the same numbers. Derivations: shared/design/wgsef-math.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace wgsef {

// Element visits and rounds of the threshold search; tests use them to show
// that its cost is linear in the number of groups on any input.
struct SearchStats {
  int64_t work = 0;
  int64_t rounds = 0;
};

namespace detail {

inline void insertion_sort(double* a, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const double v = a[i];
    int64_t j = i;
    for (; j > 0 && a[j - 1] > v; --j) a[j] = a[j - 1];
    a[j] = v;
  }
}

// The k-th smallest (0-based) of a[0..n); reorders a. Median-of-medians pivots
// (Blum, Floyd, Pratt, Rivest, Tarjan) make this O(n) in the worst case; the
// three-way partition keeps long runs of equal values linear too.
inline double select_kth(double* a, int64_t n, int64_t k, SearchStats& stats) {
  while (n > 10) {
    int64_t medians = 0;
    for (int64_t i = 0; i < n; i += 5) {
      const int64_t len = std::min<int64_t>(5, n - i);
      insertion_sort(a + i, len);
      std::swap(a[medians++], a[i + (len - 1) / 2]);
    }
    const double pivot = select_kth(a, medians, (medians - 1) / 2, stats);
    int64_t lt = 0, i = 0, gt = n;
    while (i < gt) {
      if (a[i] < pivot) {
        std::swap(a[lt++], a[i++]);
      } else if (a[i] > pivot) {
        std::swap(a[i], a[--gt]);
      } else {
        ++i;
      }
    }
    stats.work += 2 * n;
    if (k < lt) {
      n = lt;
    } else if (k < gt) {
      return pivot;
    } else {
      a += gt;
      n -= gt;
      k -= gt;
    }
  }
  insertion_sort(a, n);
  stats.work += n;
  return a[k];
}

inline double clip01(double t) { return t <= 0.0 ? 0.0 : (t >= 1.0 ? 1.0 : t); }

// t = c*eta - w is exactly 0 at flat roots and shared breakpoints; rounding
// leaves ~1e-17 there, which would keep a pruned group alive (design §6).
inline double snapped_share(double c, double eta, double w) {
  const double ceta = c * eta;
  const double t = ceta - w;
  const double tol = 8.0 * std::numeric_limits<double>::epsilon() * std::max(ceta, w);
  return std::abs(t) <= tol ? 0.0 : clip01(t);
}

}  // namespace detail

// Root eta > 0 of h(eta) = sum_i clip(c_i*eta - w_i, 0, 1) - k, for c_i > 0,
// w_i >= 0 (all finite) and 0 < k < m.
//
// Bracket search on the 2m breakpoints lo_i = w_i/c_i, hi_i = (w_i+1)/c_i: each
// round evaluates h at the exact median of the breakpoints inside the bracket
// (L, R), halves the bracket's breakpoint set, and folds the groups with no
// breakpoint left inside into h = A*eta + B. Work is O(m) in the worst case.
inline double solve_threshold(const double* c, const double* w, int64_t m, int64_t k,
                              SearchStats* stats_out = nullptr) {
  SearchStats stats;
  std::vector<double> uc(c, c + m), uw(w, w + m), lo(m), hi(m), points(2 * m);
  for (int64_t i = 0; i < m; ++i) {
    lo[i] = uw[i] / uc[i];
    hi[i] = (uw[i] + 1.0) / uc[i];
  }
  double left = 0.0, right = std::numeric_limits<double>::infinity();
  double slope = 0.0, offset = -static_cast<double>(k);
  int64_t open = m;  // groups with a breakpoint strictly inside (left, right)
  while (open > 0) {
    ++stats.rounds;
    int64_t np = 0;
    for (int64_t i = 0; i < open; ++i) {
      if (lo[i] > left && lo[i] < right) points[np++] = lo[i];
      if (hi[i] > left && hi[i] < right) points[np++] = hi[i];
    }
    if (np == 0) break;  // unreachable: every open group owns a breakpoint inside
    const double p = detail::select_kth(points.data(), np, (np - 1) / 2, stats);
    double hp = slope * p + offset;
    for (int64_t i = 0; i < open; ++i) hp += detail::clip01(uc[i] * p - uw[i]);
    if (hp == 0.0) {
      stats.work += 3 * open;
      if (stats_out) *stats_out = stats;
      return p;
    }
    (hp > 0.0 ? right : left) = p;
    int64_t kept = 0;
    for (int64_t i = 0; i < open; ++i) {
      if (hi[i] <= left) {
        offset += 1.0;
      } else if (lo[i] >= right) {
        // contributes 0 on the bracket
      } else if (lo[i] <= left && hi[i] >= right) {
        slope += uc[i];
        offset -= uw[i];
      } else {
        uc[kept] = uc[i];
        uw[kept] = uw[i];
        lo[kept] = lo[i];
        hi[kept] = hi[i];
        ++kept;
      }
    }
    stats.work += 3 * open;
    open = kept;
  }
  double eta;
  if (slope > 0.0) {
    eta = std::max(left, -offset / slope);
    if (eta > right) eta = right;
  } else {
    // h is identically 0 on [left, right]; every eta there gives the same shares
    eta = left > 0.0 ? left : right;
  }
  if (stats_out) *stats_out = stats;
  return eta;
}

// What the prox did, for callers that report or test it.
struct ProxResult {
  int64_t nonzero_groups = 0;  // groups of the output that are not all zero
  double eta = 0.0;            // the root, 0 when no search was needed
};

// Per-group factors f_i with prox_{lam*WGSEF}(v)_{G_i} = f_i * v_{G_i}.
//   sq_norms[i] = ||v_{G_i}||^2, d = group weights (nullptr: all 1), lam >= 0, k >= 0.
// Non-finite norms (NaN or Inf in v) give NaN factors for every group.
inline ProxResult prox_factors(const double* sq_norms, const double* d, int64_t m, int64_t k,
                               double lam, double* factors, SearchStats* stats = nullptr) {
  ProxResult result;
  int64_t nonzero = 0;
  bool finite = true;
  for (int64_t i = 0; i < m; ++i) {
    finite = finite && std::isfinite(sq_norms[i]);
    nonzero += sq_norms[i] > 0.0;
  }
  if (!finite) {
    std::fill(factors, factors + m, std::numeric_limits<double>::quiet_NaN());
    result.nonzero_groups = m;
    return result;
  }
  if (lam == 0.0) {
    std::fill(factors, factors + m, 1.0);
    result.nonzero_groups = nonzero;
    return result;
  }
  if (k == 0) {
    std::fill(factors, factors + m, 0.0);
    return result;
  }
  if (nonzero <= k) {
    for (int64_t i = 0; i < m; ++i) factors[i] = 1.0 / (1.0 + lam * (d ? d[i] : 1.0));
    result.nonzero_groups = nonzero;
    return result;
  }
  std::vector<double> c(nonzero), w(nonzero);
  for (int64_t i = 0, j = 0; i < m; ++i) {
    if (sq_norms[i] > 0.0) {
      const double di = d ? d[i] : 1.0;
      c[j] = std::sqrt(di * sq_norms[i]);
      w[j] = lam * di;
      ++j;
    }
  }
  const double eta = solve_threshold(c.data(), w.data(), nonzero, k, stats);
  result.eta = eta;
  for (int64_t i = 0, j = 0; i < m; ++i) {
    if (sq_norms[i] > 0.0) {
      const double u = detail::snapped_share(c[j], eta, w[j]);
      factors[i] = u / (u + w[j]);
      result.nonzero_groups += u > 0.0;
      ++j;
    } else {
      factors[i] = 0.0;
    }
  }
  return result;
}

// Optimal shares u_i of the variational form WGSEF(x) = 1/2 min_{u in D_k}
// sum_i d_i ||x_i||^2 / u_i: u_i = min(1, z_i*eta), z_i = sqrt(d_i)*||x_i||,
// with sum_i u_i = k (or u_i = 1 for all non-zero groups when at most k are).
// Zero groups get u_i = 0. Requires finite norms and k >= 1.
inline void envelope_shares(const double* sq_norms, const double* d, int64_t m, int64_t k,
                            double* shares, SearchStats* stats = nullptr) {
  int64_t nonzero = 0;
  for (int64_t i = 0; i < m; ++i) nonzero += sq_norms[i] > 0.0;
  if (nonzero <= k) {
    for (int64_t i = 0; i < m; ++i) shares[i] = sq_norms[i] > 0.0 ? 1.0 : 0.0;
    return;
  }
  std::vector<double> z(nonzero), w(nonzero, 0.0);
  for (int64_t i = 0, j = 0; i < m; ++i)
    if (sq_norms[i] > 0.0) z[j++] = std::sqrt((d ? d[i] : 1.0) * sq_norms[i]);
  // with w = 0 the prox root equation becomes the value's: sum_i min(z_i*eta, 1) = k
  const double eta = solve_threshold(z.data(), w.data(), nonzero, k, stats);
  for (int64_t i = 0, j = 0; i < m; ++i)
    shares[i] = sq_norms[i] > 0.0 ? std::min(1.0, z[j++] * eta) : 0.0;
}

enum class Finiteness { kFinite, kInf, kNaN };

inline Finiteness classify_norms(const double* sq_norms, int64_t m) {
  Finiteness f = Finiteness::kFinite;
  for (int64_t i = 0; i < m; ++i) {
    if (std::isnan(sq_norms[i])) return Finiteness::kNaN;
    if (std::isinf(sq_norms[i])) f = Finiteness::kInf;
  }
  return f;
}

// WGSEF_{k,d}(x) from the squared group norms ||x_i||^2.
inline double envelope_value(const double* sq_norms, const double* d, int64_t m, int64_t k) {
  const Finiteness fin = classify_norms(sq_norms, m);
  if (fin == Finiteness::kNaN) return std::numeric_limits<double>::quiet_NaN();
  if (fin == Finiteness::kInf) return std::numeric_limits<double>::infinity();
  bool any = false;
  for (int64_t i = 0; i < m; ++i) any = any || sq_norms[i] > 0.0;
  if (!any) return 0.0;
  if (k == 0) return std::numeric_limits<double>::infinity();
  std::vector<double> u(m);
  envelope_shares(sq_norms, d, m, k, u.data());
  double total = 0.0;
  for (int64_t i = 0; i < m; ++i)
    if (u[i] > 0.0) total += (d ? d[i] : 1.0) * sq_norms[i] / u[i];
  return 0.5 * total;
}

// Per-group scales s_i of a subgradient of WGSEF at x: grad_{G_i} = s_i * x_{G_i},
// s_i = d_i / u_i (0 for zero groups). Non-finite norms, or k = 0 with x != 0,
// give NaN scales: WGSEF is not finite there.
inline void envelope_grad_scales(const double* sq_norms, const double* d, int64_t m, int64_t k,
                                 double* scales) {
  bool any = false;
  for (int64_t i = 0; i < m; ++i) any = any || sq_norms[i] > 0.0;
  if (classify_norms(sq_norms, m) != Finiteness::kFinite || (k == 0 && any)) {
    std::fill(scales, scales + m, std::numeric_limits<double>::quiet_NaN());
    return;
  }
  if (!any) {
    std::fill(scales, scales + m, 0.0);
    return;
  }
  envelope_shares(sq_norms, d, m, k, scales);
  for (int64_t i = 0; i < m; ++i) scales[i] = scales[i] > 0.0 ? (d ? d[i] : 1.0) / scales[i] : 0.0;
}

}  // namespace wgsef
