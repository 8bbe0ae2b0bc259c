// WGSEF math on per-group squared norms: the threshold search, the prox scale
// factors and the envelope value. Plain C++ with no torch includes, so every
// backend computes the same numbers. Derivations: docs/design.md §1-§3.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "wgsef/host_device.h"

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

// Neumaier's compensated summation: the rounding error of every addition is
// carried along, so the total is accurate to a few ulp for any count.
struct CompensatedSum {
  double sum = 0.0, carry = 0.0;
  void add(double v) {
    const double t = sum + v;
    carry += std::abs(sum) >= std::abs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  double value() const { return sum + carry; }
};

WGSEF_HOST_DEVICE inline double clip01(double t) { return t <= 0.0 ? 0.0 : (t >= 1.0 ? 1.0 : t); }

// t = c*eta - w is exactly 0 at flat roots and shared breakpoints; rounding
// leaves ~1e-17 there, which would keep a pruned group alive (docs/design.md §2.4).
WGSEF_HOST_DEVICE inline double snapped_share(double c, double eta, double w) {
  const double ceta = c * eta;
  // beyond the double range (|x| spread over more than ~1e308): saturated, not
  // snapped, which an infinite tolerance would do
  if (ceta == static_cast<double>(INFINITY)) return 1.0;
  const double t = ceta - w;
  const double tol = 8.0 * 2.220446049250313e-16 * fmax(ceta, w);  // 8 ulp of 1
  return fabs(t) <= tol ? 0.0 : clip01(t);
}

// Two pivots expected to bracket the root of h closely, read off a strided
// sample of the open groups (the Floyd-Rivest idea applied to a root search):
// the sample's breakpoints, sorted, give a scaled estimate of h; the pivots sit
// a few sample ranks either side of its sign change. Returns false when the
// sample has no breakpoint inside the bracket.
inline bool sampled_pivots(const double* c, const double* w, const double* lo, const double* hi,
                           int64_t open, double left, double right, double slope, double offset,
                           double& p1, double& p2, bool& has_p1, bool& has_p2) {
  const int64_t s = std::min<int64_t>(open, 2 * static_cast<int64_t>(std::sqrt(double(open))) + 16);
  struct Event {
    double at, dslope, doffset;
  };
  std::vector<Event> events;
  events.reserve(2 * s);
  double s_slope = 0.0, s_offset = 0.0;  // sampled groups' linear part just right of `left`
  for (int64_t j = 0; j < s; ++j) {
    const int64_t i = j * open / s;
    if (lo[i] > left) {
      if (lo[i] < right) events.push_back({lo[i], c[i], -w[i]});
    } else {
      s_slope += c[i];
      s_offset -= w[i];
    }
    if (hi[i] < right) events.push_back({hi[i], -c[i], w[i] + 1.0});
  }
  if (events.empty()) return false;
  std::sort(events.begin(), events.end(),
            [](const Event& a, const Event& b) { return a.at < b.at; });
  const double scale = double(open) / double(s);
  const int64_t E = static_cast<int64_t>(events.size());
  int64_t cross = E;  // first event where the estimate of h is >= 0
  for (int64_t e = 0; e < E; ++e) {
    s_slope += events[e].dslope;
    s_offset += events[e].doffset;
    const double at = events[e].at;
    if (slope * at + offset + scale * (s_slope * at + s_offset) >= 0.0) {
      cross = e;
      break;
    }
  }
  const int64_t margin = static_cast<int64_t>(std::sqrt(double(E))) + 1;
  has_p1 = cross - margin >= 0;
  has_p2 = cross + margin < E;
  if (has_p1) p1 = events[cross - margin].at;
  if (has_p2) p2 = events[cross + margin].at;
  return has_p1 || has_p2;
}

}  // namespace detail

// Root eta > 0 of h(eta) = sum_i clip(c_i*eta - w_i, 0, 1) - k, for c_i > 0,
// w_i >= 0 (all finite) and 0 < k < m.
//
// Bracket search on the 2m breakpoints lo_i = w_i/c_i, hi_i = (w_i+1)/c_i. Each
// round evaluates h at pivots inside the bracket (L, R), shrinks the bracket,
// and folds the groups with no breakpoint left inside into h = A*eta + B.
// Pivots come from a small sample (usually leaving a few percent of the
// breakpoints inside after one round); a round that fails to drop a quarter of
// them makes the next round use the exact median (median of medians), which
// halves them. So the work is O(m) in the worst case, with a small constant on
// typical inputs.
//
// c and w are reordered in place; scratch holds 4m doubles.
inline double solve_threshold(double* uc, double* uw, int64_t m, int64_t k, double* scratch,
                              SearchStats* stats_out = nullptr) {
  constexpr int64_t kSampleAbove = 256;  // below this, exact medians are cheap enough
  SearchStats stats;
  double* lo = scratch;
  double* hi = scratch + m;
  double* points = scratch + 2 * m;
  for (int64_t i = 0; i < m; ++i) {
    lo[i] = uw[i] / uc[i];
    hi[i] = (uw[i] + 1.0) / uc[i];
  }
  stats.work += m;
  double left = 0.0, right = std::numeric_limits<double>::infinity();
  double slope = 0.0, offset = -static_cast<double>(k);
  // the same fold kept exactly enough for the final solve: a count and two
  // compensated sums (a plain running sum over 1e5 groups drifts by ~1e-11)
  int64_t saturated = 0;
  detail::CompensatedSum linear_c, linear_w;
  int64_t open = m;        // groups with a breakpoint strictly inside (left, right)
  int64_t inside = 2 * m;  // breakpoints strictly inside (left, right), an upper bound at first
  bool exact = false;
  while (open > 0) {
    ++stats.rounds;
    double p1 = 0.0, p2 = 0.0;
    bool has_p1 = false, has_p2 = false;
    if (exact || open < kSampleAbove ||
        !detail::sampled_pivots(uc, uw, lo, hi, open, left, right, slope, offset, p1, p2, has_p1,
                                has_p2)) {
      int64_t np = 0;
      for (int64_t i = 0; i < open; ++i) {
        if (lo[i] > left && lo[i] < right) points[np++] = lo[i];
        if (hi[i] > left && hi[i] < right) points[np++] = hi[i];
      }
      if (np == 0) break;  // unreachable: every open group owns a breakpoint inside
      p1 = detail::select_kth(points, np, (np - 1) / 2, stats);
      has_p1 = true;
      stats.work += open;
    }
    // evaluate h at both pivots in one pass (p1 <= p2) and move the bracket
    if (!has_p1) p1 = p2;
    if (!has_p2) p2 = p1;
    double h1 = slope * p1 + offset, h2 = slope * p2 + offset;
    for (int64_t i = 0; i < open; ++i) {
      h1 += detail::clip01(uc[i] * p1 - uw[i]);
      h2 += detail::clip01(uc[i] * p2 - uw[i]);
    }
    stats.work += open;
    if (h1 == 0.0 || h2 == 0.0) {
      if (stats_out) *stats_out = stats;
      return h1 == 0.0 ? p1 : p2;
    }
    if (h1 > 0.0) {
      right = p1;
    } else {
      left = p1;
      (h2 > 0.0 ? right : left) = p2;
    }
    int64_t kept = 0, kept_inside = 0;
    for (int64_t i = 0; i < open; ++i) {
      if (hi[i] <= left) {
        offset += 1.0;
        ++saturated;
      } else if (lo[i] >= right) {
        // contributes 0 on the bracket
      } else if (lo[i] <= left && hi[i] >= right) {
        slope += uc[i];
        offset -= uw[i];
        linear_c.add(uc[i]);
        linear_w.add(uw[i]);
      } else {
        kept_inside += (lo[i] > left) + (hi[i] < right);
        uc[kept] = uc[i];
        uw[kept] = uw[i];
        lo[kept] = lo[i];
        hi[kept] = hi[i];
        ++kept;
      }
    }
    stats.work += open;
    exact = 4 * kept_inside > 3 * inside;  // too little progress: guarantee it next round
    inside = kept_inside;
    open = kept;
  }
  double eta;
  if (slope > 0.0) {
    eta =
        std::max(left, (static_cast<double>(k - saturated) + linear_w.value()) / linear_c.value());
    if (eta > right) eta = right;
  } else {
    // h is identically 0 on [left, right]; every eta there gives the same shares
    eta = left > 0.0 ? left : right;
  }
  if (stats_out) *stats_out = stats;
  return eta;
}

namespace detail {

// The bits of a double: for positive doubles they order like the values, and
// their difference counts the doubles in between.
WGSEF_HOST_DEVICE inline uint64_t bits_of(double v) {
#ifdef __CUDA_ARCH__
  return static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}

// The double halfway between lo and hi (0 <= lo < hi) in bit patterns: this
// halves the exponent range too, so a bracket [0, 1e30] closes in ~64 steps
// rather than ~1000.
WGSEF_HOST_DEVICE inline double midpoint_by_bits(double lo, double hi) {
  const uint64_t a = bits_of(lo), b = bits_of(hi), mid = a + (b - a) / 2;
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(mid));
#else
  double r;
  std::memcpy(&r, &mid, sizeof r);
  return r;
#endif
}

}  // namespace detail

// The same root as solve_threshold, with no per-group memory: each step is one
// pass segment(eta, seg) over the groups, which sets seg[0] to the number of
// saturated groups (c_i*eta - w_i >= 1) and seg[1], seg[2] to the sums of c_i
// and of w_i over the linear ones (0 < c_i*eta - w_i < 1); then
// h(eta) = seg[0] - k + seg[1]*eta - seg[2]. Safeguarded Newton steps on a
// bracket: h is piecewise linear and nondecreasing, so a Newton step from the
// root's segment lands on the root, and the search stops when a segment's root
// lies on that segment; a step that halves neither the residual |h| nor the
// number of doubles in the bracket is followed by a bisection of the bracket's
// bit patterns. So at most a few hundred passes
// on any input, and usually a few once the bracket is tight. Requires finite c, w and 0 < k <
// nonzero; the bracket holds the root, h(lo) < 0 < h(hi). The CUDA search kernel runs it once per
// block from [0, top], top the largest breakpoint max_i (w_i + 1) / c_i, where h(0) = -k and h(top)
// = nonzero - k; the CPU runs its state machine (PassSearch, below) on terms whose groups are
// single elements, several in lockstep, from brackets found on samples (elementwise.cpp).
struct Bracket {
  double lo, hi, h_lo, h_hi;
};

WGSEF_HOST_DEVICE inline Bracket full_bracket(int64_t nonzero, int64_t k, double top) {
  return {0.0, top, -static_cast<double>(k), static_cast<double>(nonzero - k)};
}

// solve_threshold_by_passes as a state machine: next(at) names the point whose
// pass comes next, take(seg) takes that pass's sums, and result() holds the
// root once next returns false. Several searches can so share their passes'
// reductions (elementwise.cpp runs many terms in lockstep, one all_reduce per
// round of passes).
class PassSearch {
 public:
  WGSEF_HOST_DEVICE PassSearch(int64_t k, Bracket b)
      : kk_(static_cast<double>(k)), lo_(b.lo), hi_(b.hi), h_lo_(b.h_lo), h_hi_(b.h_hi) {
    candidate_ = falsi();
  }

  WGSEF_HOST_DEVICE bool next(double& at) {
    if (phase_ != kSearch) return false;
    if (!done_ && step_ < 256) {
      if (!(candidate_ > lo_ && candidate_ < hi_)) {
        candidate_ = detail::midpoint_by_bits(lo_, hi_);
        newton_ = false;
      }
      if (candidate_ > lo_ && candidate_ < hi_) {  // else lo and hi are adjacent doubles
        at = candidate_;
        return true;
      }
    }
    if (done_) {
      result_ = candidate_;
      phase_ = kDone;
      return false;
    }
    // the bracket closed or the steps ran out: the regula falsi point, then its
    // segment's root when that stays inside the bracket
    result_ = falsi();
    phase_ = kRefine;
    at = result_;
    return true;
  }

  WGSEF_HOST_DEVICE void take(const double* seg) {
    if (phase_ == kRefine) {
      if (seg[1] > 0.0) {
        const double refined = (kk_ - seg[0] + seg[2]) / seg[1];
        if (refined >= lo_ && refined <= hi_) result_ = refined;
      }
      phase_ = kDone;
      return;
    }
    constexpr double kEps = 2.220446049250313e-16;
    ++step_;
    // the root of a segment's line that lies on that segment is the root of h
    done_ = newton_ && seg[0] == last_[0] && seg[1] == last_[1] && seg[2] == last_[2];
    const double h = seg[0] - kk_ + (seg[1] * candidate_ - seg[2]);
    const uint64_t width = detail::bits_of(hi_) - detail::bits_of(lo_);
    done_ = done_ || h == 0.0;  // an exact hit, or a flat stretch of h at 0
    if (done_) return;
    if (h < 0.0) {
      lo_ = candidate_;
      h_lo_ = h;
    } else {
      hi_ = candidate_;
      h_hi_ = h;
    }
    last_[0] = seg[0], last_[1] = seg[1], last_[2] = seg[2];
    newton_ = false;
    // progress: the residual, or the number of doubles in the bracket, at least
    // halved (Newton steps often close in from one side, leaving the bracket's
    // other end where it was; halving the bracket by value is no progress on a
    // bracket that spans many binades)
    const bool progress =
        fabs(h) <= 0.5 * last_residual_ || detail::bits_of(hi_) - detail::bits_of(lo_) <= width / 2;
    last_residual_ = fabs(h);
    if (!progress) {
      candidate_ = static_cast<double>(NAN);  // bisect next
    } else if (seg[1] > 0.0) {
      // the segment line's root, (k - sat + lin_w) / lin_c, has no cancellation
      const double next = (kk_ - seg[0] + seg[2]) / seg[1];
      done_ = fabs(next - candidate_) <= 4.0 * kEps * candidate_;
      candidate_ = next;
      newton_ = true;
    } else {
      candidate_ = falsi();
    }
  }

  WGSEF_HOST_DEVICE double result() const { return result_; }

 private:
  enum Phase { kSearch, kRefine, kDone };
  WGSEF_HOST_DEVICE double falsi() const { return lo_ + (hi_ - lo_) * (-h_lo_ / (h_hi_ - h_lo_)); }

  double kk_, lo_, hi_, h_lo_, h_hi_;
  double candidate_ = 0.0, result_ = 0.0;
  double last_[3] = {-1.0, -1.0, -1.0};
  double last_residual_ = static_cast<double>(INFINITY);
  bool newton_ = false;  // candidate_ is the root of the last point's segment line
  bool done_ = false;
  int step_ = 0;
  Phase phase_ = kSearch;
};

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <typename Segment>
WGSEF_HOST_DEVICE double solve_threshold_by_passes(const Segment& segment, int64_t k,
                                                   Bracket bracket) {
  PassSearch search(k, bracket);
  double at = 0.0, seg[3];
  while (search.next(at)) {
    segment(at, seg);
    search.take(seg);
  }
  return search.result();
}

// Scratch memory for the search: 6 doubles per open group plus `extra`; keep
// one alive across calls to avoid fresh page faults on every call.
struct Workspace {
  std::vector<double> data;
  double* reserve(int64_t m, int64_t extra = 0) {
    const size_t need = static_cast<size_t>(6 * m + extra);
    if (data.size() < need) data.resize(need);
    return data.data();
  }
};

// root[i] = sqrt(d_i * sq_norms[i]) for every group, in a loop of its own so
// that the square roots vectorise.
inline void weighted_roots(const double* sq_norms, const double* d, int64_t m, double* root) {
  if (d) {
    for (int64_t i = 0; i < m; ++i) root[i] = std::sqrt(d[i] * sq_norms[i]);
  } else {
    for (int64_t i = 0; i < m; ++i) root[i] = std::sqrt(sq_norms[i]);
  }
}

// ---- Per-group rules of every backend (docs/design.md §1.3, §1.4, §2.3).
// A term's groups are summarised by TermCounts; each group's output follows
// from the summary, the group's root c_i = sqrt(d_i ||x_i||^2) and eta.

struct TermCounts {
  int64_t nonzero = 0;  // groups with ||x_i|| > 0
  bool has_nan = false, has_inf = false;
  WGSEF_HOST_DEVICE bool finite() const { return !has_nan && !has_inf; }
};

inline TermCounts count_groups(const double* sq_norms, int64_t m) {
  TermCounts t;
  for (int64_t i = 0; i < m; ++i) {
    t.nonzero += sq_norms[i] > 0.0;
    t.has_nan = t.has_nan || std::isnan(sq_norms[i]);
    t.has_inf = t.has_inf || std::isinf(sq_norms[i]);
  }
  return t;
}

// The prox of a term needs the threshold search only here; elsewhere its
// special cases decide every factor.
WGSEF_HOST_DEVICE inline bool prox_searches(const TermCounts& t, int64_t k, double lam) {
  return t.finite() && lam > 0.0 && k > 0 && t.nonzero > k;
}

// The prox factor of a non-zero group at the root eta: u / (u + w), with its
// share u = clip(c*eta - w, 0, 1) snapped to 0 within rounding.
WGSEF_HOST_DEVICE inline double shrink_factor(double c, double eta, double w) {
  const double u = detail::snapped_share(c, eta, w);
  return u / (u + w);
}

// f_i with prox_{lam*WGSEF}(v)_{G_i} = f_i * v_{G_i}; w = lam * d_i. NaN or
// Inf in the term makes every factor NaN (the threshold is undefined).
WGSEF_HOST_DEVICE inline double prox_factor(const TermCounts& t, int64_t k, double lam, double c,
                                            double eta, double w) {
  if (!t.finite()) return static_cast<double>(NAN);
  if (lam == 0.0) return 1.0;
  if (k == 0) return 0.0;
  if (t.nonzero <= k) return 1.0 / (1.0 + w);  // no search: the weighted ridge shrink
  return c > 0.0 ? shrink_factor(c, eta, w) : 0.0;
}

// The value and its gradient need eta only here; elsewhere eta = +inf (every
// non-zero group has share 1) or the result is not finite.
WGSEF_HOST_DEVICE inline bool envelope_searches(const TermCounts& t, int64_t k) {
  return t.finite() && k > 0 && t.nonzero > k;
}

// The optimal share u_i = min(1, c_i*eta) of the variational form (0 for zero groups).
WGSEF_HOST_DEVICE inline double envelope_share(double c, double eta) {
  return c > 0.0 ? fmin(1.0, c * eta) : 0.0;
}

// WGSEF from half_sum = 1/2 sum_{u_i > 0} c_i^2 / u_i.
WGSEF_HOST_DEVICE inline double envelope_value_from(const TermCounts& t, int64_t k,
                                                    double half_sum) {
  if (t.has_nan) return static_cast<double>(NAN);
  if (t.has_inf || (k == 0 && t.nonzero > 0)) return static_cast<double>(INFINITY);
  return half_sum;
}

// s_i of a subgradient of WGSEF: grad_{G_i} = s_i * x_{G_i}, s_i = d_i / u_i (0
// for zero groups); NaN where WGSEF is not finite.
WGSEF_HOST_DEVICE inline double grad_scale(const TermCounts& t, int64_t k, double c, double d,
                                           double eta) {
  if (!t.finite() || (k == 0 && t.nonzero > 0)) return static_cast<double>(NAN);
  const double u = envelope_share(c, eta);
  return u > 0.0 ? d / u : 0.0;
}

// ---- The CPU entry points: the rules above over arrays of squared norms.

// Per-group prox factors. sq_norms[i] = ||v_{G_i}||^2, d = group weights
// (nullptr: all 1), lam >= 0, k >= 0.
inline void prox_factors(const double* sq_norms, const double* d, int64_t m, int64_t k, double lam,
                         double* factors, Workspace& ws, SearchStats* stats = nullptr) {
  const TermCounts t = count_groups(sq_norms, m);
  if (!prox_searches(t, k, lam)) {
    for (int64_t i = 0; i < m; ++i)
      factors[i] = prox_factor(t, k, lam, 0.0, 0.0, lam * (d ? d[i] : 1.0));
    return;
  }
  const int64_t nonzero = t.nonzero;
  double* c = ws.reserve(nonzero, m);
  double* w = c + nonzero;
  double* root = c + 6 * nonzero;
  weighted_roots(sq_norms, d, m, root);
  for (int64_t i = 0, j = 0; i < m; ++i) {
    if (sq_norms[i] > 0.0) {
      c[j] = root[i];
      w[j] = lam * (d ? d[i] : 1.0);
      ++j;
    }
  }
  const double eta = solve_threshold(c, w, nonzero, k, w + nonzero, stats);
  for (int64_t i = 0; i < m; ++i)
    factors[i] = prox_factor(t, k, lam, root[i], eta, lam * (d ? d[i] : 1.0));
}

// eta of the variational form WGSEF(x) = 1/2 min_{u in D_k} sum_i c_i^2 / u_i:
// the optimal shares are u_i = min(1, c_i*eta) with sum_i u_i = k, and eta is
// +inf when the term needs no search (envelope_searches).
inline double envelope_eta(const double* sq_norms, const double* d, int64_t m, int64_t k,
                           const TermCounts& t, Workspace& ws, SearchStats* stats = nullptr) {
  if (!envelope_searches(t, k)) return std::numeric_limits<double>::infinity();
  double* z = ws.reserve(t.nonzero);
  double* w = z + t.nonzero;
  for (int64_t i = 0, j = 0; i < m; ++i) {
    if (sq_norms[i] > 0.0) {
      z[j] = std::sqrt((d ? d[i] : 1.0) * sq_norms[i]);
      w[j++] = 0.0;
    }
  }
  // with w = 0 the prox root equation becomes the value's: sum_i min(z_i*eta, 1) = k
  return solve_threshold(z, w, t.nonzero, k, w + t.nonzero, stats);
}

// WGSEF_{k,d}(x) from the squared group norms ||x_i||^2.
inline double envelope_value(const double* sq_norms, const double* d, int64_t m, int64_t k,
                             Workspace& ws) {
  const TermCounts t = count_groups(sq_norms, m);
  const double eta = envelope_eta(sq_norms, d, m, k, t, ws);
  double total = 0.0;
  if (t.finite()) {
    for (int64_t i = 0; i < m; ++i) {
      const double c = std::sqrt((d ? d[i] : 1.0) * sq_norms[i]);
      const double u = envelope_share(c, eta);
      if (u > 0.0) total += c * c / u;
    }
  }
  return envelope_value_from(t, k, 0.5 * total);
}

// Per-group scales of a subgradient of WGSEF at x (grad_scale).
inline void envelope_grad_scales(const double* sq_norms, const double* d, int64_t m, int64_t k,
                                 double* scales, Workspace& ws) {
  const TermCounts t = count_groups(sq_norms, m);
  const double eta = envelope_eta(sq_norms, d, m, k, t, ws);
  for (int64_t i = 0; i < m; ++i) {
    const double di = d ? d[i] : 1.0;
    scales[i] = grad_scale(t, k, std::sqrt(di * sq_norms[i]), di, eta);
  }
}

}  // namespace wgsef
