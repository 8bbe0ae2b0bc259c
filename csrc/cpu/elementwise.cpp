#include "elementwise.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "element_loops.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

// Chunks of a fixed size, so that sums do not depend on the number of threads.
constexpr int64_t kChunk = int64_t{1} << 15;

// One tensor of a term of single-element groups: c_i = sqrt(d_i) |x_i| and
// w_i = lam d_i of its element i. src and dst may be the same tensor. A span
// that is not counted (a copy another process counts) is only scaled.
struct Span {
  at::Tensor src, dst;
  const double* d;
  bool counted = true;
  double scale = 1.0;  // a power of two on c, where the threshold would overflow (rescale)
  double c(double x, int64_t i) const {
    return (d ? std::sqrt(d[i]) * std::abs(x) : std::abs(x)) * scale;
  }
  double w(double lam, int64_t i) const { return d ? lam * d[i] : lam; }
};

// Whether element_loops.h streams the span: float32 or float64, no weights.
bool has_element_loops(const Span& s) {
  const at::ScalarType t = s.src.scalar_type();
  return s.d == nullptr && (t == at::kFloat || t == at::kDouble);
}

// f(x, n) with the span's source as a typed pointer.
template <typename F>
void with_source(const Span& s, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.src.scalar_type(), "elementwise",
                                  [&] { f(s.src.const_data_ptr<scalar_t>(), s.src.numel()); });
}

// Sums N values over all spans' elements: body(span, x, begin, end, acc) adds
// a chunk's share to acc. Chunks run in parallel; partial sums add in order.
template <int N, typename Body>
std::array<double, N> chunked_sums(const std::vector<Span>& spans, const Body& body) {
  std::array<double, N> total{};
  for (const Span& s : spans) {
    if (!s.counted) continue;
    with_source(s, [&](const auto* x, int64_t n) {
      std::vector<std::array<double, N>> partial(static_cast<size_t>((n + kChunk - 1) / kChunk));
      at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          partial[c].fill(0.0);
          body(s, x, c * kChunk, std::min(n, (c + 1) * kChunk), partial[c]);
        }
      });
      for (const auto& p : partial)
        for (int j = 0; j < N; ++j) total[j] += p[j];
    });
  }
  return total;
}

// A term over the elements of some spans, with its budget and strength
// (lam = 0 for the value and its gradient).
struct Term {
  std::vector<Span> spans;
  int64_t k;
  double lam;
};

// A term's counts, its largest breakpoint max_i (w_i + 1) / c_i, and where this
// process's elements start in the term's order (process by process) of total.
struct Summary {
  TermCounts t;
  double top = 0.0;
  int64_t first = 0, total = 0;
};

// Every term's summary in one pass each; across processes, one reduction for
// all terms: per term its counts and every process's element count and
// largest breakpoint.
std::vector<Summary> summarise(const std::vector<Term>& terms, const ProcessSpread& spread) {
  const int64_t p = spread.count;
  const size_t per_term = static_cast<size_t>(3 + 2 * p);  // counts, sizes, tops
  std::vector<double> all(terms.size() * per_term, 0.0);
  for (size_t term = 0; term < terms.size(); ++term) {
    double* mine = all.data() + term * per_term;
    double top = 0.0;
    int64_t local = 0;
    for (const Span& s : terms[term].spans) {
      if (!s.counted) continue;
      local += s.src.numel();
      with_source(s, [&](const auto* x, int64_t n) {
        std::vector<std::array<double, 4>> partial(static_cast<size_t>((n + kChunk - 1) / kChunk));
        using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
        const double lam = terms[term].lam;
        at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
              if (has_element_loops(s)) {
                const int64_t begin = c * kChunk;
                const ElementCounts e =
                    element_counts(x + begin, std::min(n, begin + kChunk) - begin);
                // max_i (lam + 1) / |x_i| over the finite non-zero elements
                const double most = std::isinf(e.min_abs) ? 0.0 : (lam + 1.0) / e.min_abs;
                partial[c] = {e.nonzero, e.nan, e.inf, most};
                continue;
              }
            }
            double nonzero = 0.0, nan = 0.0, inf = 0.0, most = 0.0;
            for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i) {
              const double v = static_cast<double>(x[i]);
              nonzero += v != 0.0;
              nan += std::isnan(v);
              inf += std::isinf(v);
              if (v != 0.0 && std::isfinite(v))
                most = std::max(most, (s.w(lam, i) + 1.0) / s.c(v, i));
            }
            partial[c] = {nonzero, nan, inf, most};
          }
        });
        for (const auto& q : partial) {
          for (int j = 0; j < 3; ++j) mine[j] += q[j];
          top = std::max(top, q[3]);
        }
      });
    }
    mine[3 + spread.index] = static_cast<double>(local);
    mine[3 + p + spread.index] = top;
  }
  spread.sum(all.data(), static_cast<int64_t>(all.size()));
  std::vector<Summary> summaries(terms.size());
  for (size_t term = 0; term < terms.size(); ++term) {
    const double* sums = all.data() + term * per_term;
    Summary& r = summaries[term];
    r.t.nonzero = static_cast<int64_t>(sums[0]);
    r.t.has_nan = sums[1] > 0.0;
    r.t.has_inf = sums[2] > 0.0;
    for (int64_t q = 0; q < p; ++q) {
      r.first += q < spread.index ? static_cast<int64_t>(sums[3 + q]) : 0;
      r.total += static_cast<int64_t>(sums[3 + q]);
      r.top = std::max(r.top, sums[3 + p + q]);
    }
  }
  return summaries;
}

// This process's share of a pass at eta (PassSearch's seg): the saturated
// count and the sums of c and w over the linear groups. Free of branches, as
// the comparisons' outcomes are random on real weights; without weights w is
// lam for every group, so its sum is lam times the linear count.
void local_segment(const Term& term, double eta, double* seg) {
  const double lam = term.lam;
  const auto sums = chunked_sums<3>(
      term.spans, [&](const Span& s, const auto* x, int64_t begin, int64_t end, auto& acc) {
        using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          if (has_element_loops(s))
            return element_segment(x + begin, end - begin, eta, lam, s.scale, acc.data());
        }
        double saturated = 0.0, linear = 0.0, sum_c = 0.0, sum_w = 0.0;
        for (int64_t i = begin; i < end; ++i) {
          const double c = s.c(static_cast<double>(x[i]), i), w = s.w(lam, i);
          const double v = c * eta - w;
          const bool sat = v >= 1.0;
          const bool lin = (v > 0.0) & !sat;
          saturated += sat;
          linear += lin;
          sum_c += lin ? c : 0.0;
          sum_w += lin ? w : 0.0;
        }
        acc[0] += saturated;
        acc[1] += sum_c;
        acc[2] += s.d ? sum_w : lam * linear;
      });
  std::copy(sums.begin(), sums.end(), seg);
}

// Where a sample of the groups puts the root of h(eta) = target (in sample
// units, rounded to a count in [1, m)): the linear-time search of threshold.h
// on the sample itself. c and w are copies, as the search reorders them.
double sample_root(std::vector<double> c, std::vector<double> w, double target) {
  const auto m = static_cast<int64_t>(c.size());
  const int64_t count = std::clamp<int64_t>(std::llround(target), 1, m - 1);
  std::vector<double> scratch(static_cast<size_t>(4 * m));
  return solve_threshold(c.data(), w.data(), m, count, scratch.data());
}

constexpr int64_t kSample = 4096;

// A term's sample of kSample groups (positions j * total / kSample of its
// order) as (taken, c, w) slots, filled where this process holds them;
// non-zero elements only.
void fill_sample(const Term& term, const Summary& summary, double* slots) {
  int64_t first = summary.first;
  const int64_t total = summary.total;
  for (const Span& s : term.spans) {
    if (!s.counted) continue;
    with_source(s, [&](const auto* x, int64_t n) {
      for (int64_t j = (first * kSample + total - 1) / total; j * total / kSample < first + n;
           ++j) {
        const int64_t i = j * total / kSample - first;
        const double v = static_cast<double>(x[i]);
        if (v == 0.0) continue;
        slots[3 * j] = 1.0;
        slots[3 * j + 1] = s.c(v, i);
        slots[3 * j + 2] = s.w(term.lam, i);
      }
    });
    first += s.src.numel();
  }
}

// The two points, meant to bracket the root closely, that a term's sample
// gives (the sample count's spread, four standard deviations either side of
// the expected count); NaN where a target falls outside the sample.
std::array<double, 2> sample_points(const Term& term, const Summary& summary, const double* slots) {
  std::vector<double> c, w;
  for (int64_t j = 0; j < kSample; ++j) {
    if (slots[3 * j] == 0.0 || !(slots[3 * j + 1] > 0.0)) continue;  // the search needs c > 0
    c.push_back(slots[3 * j + 1]);
    w.push_back(slots[3 * j + 2]);
  }
  const double share = static_cast<double>(term.k) / static_cast<double>(summary.t.nonzero);
  const double expected = share * static_cast<double>(c.size());
  const double spread = 4.0 * std::sqrt(expected * (1.0 - share)) + 2.0;
  std::array<double, 2> points{};
  for (int side = 0; side < 2; ++side) {
    const double target = expected + (side == 0 ? -spread : spread);
    const bool inside = c.size() >= 2 && target > 0.0 && target < static_cast<double>(c.size());
    points[side] = inside ? sample_root(c, w, target) : std::nan("");
  }
  return points;
}

// The roots of h for the terms that search (eta[t] is left as is for the
// others), by passes over their spans. Terms with many elements first check
// the two points their samples give; then Newton steps from the bracket
// (PassSearch). Every round of passes, over all terms still searching, costs
// one reduction across processes, so the number of all_reduces does not grow
// with the number of terms. A point that fails its check still narrows the
// full bracket [0, top].
void thresholds(const std::vector<Term>& terms, const std::vector<Summary>& summaries,
                const std::vector<bool>& searching, const ProcessSpread& spread,
                std::vector<double>& eta) {
  std::vector<size_t> open;  // the terms whose root is not known yet
  std::vector<Bracket> brackets(terms.size());
  for (size_t t = 0; t < terms.size(); ++t) {
    if (!searching[t]) continue;
    brackets[t] = full_bracket(summaries[t].t.nonzero, terms[t].k, summaries[t].top);
    open.push_back(t);
  }
  std::vector<size_t> sampled;
  for (const size_t t : open)
    if (summaries[t].total > 4 * kSample) sampled.push_back(t);
  if (!sampled.empty()) {
    std::vector<double> slots(sampled.size() * 3 * kSample, 0.0);
    for (size_t j = 0; j < sampled.size(); ++j)
      fill_sample(terms[sampled[j]], summaries[sampled[j]], slots.data() + j * 3 * kSample);
    spread.sum(slots.data(), static_cast<int64_t>(slots.size()));
    // both points of every sampled term in one round; a point applies only if
    // it is still inside the bracket after its term's first point
    std::vector<std::array<double, 2>> points(sampled.size());
    std::vector<double> segs(sampled.size() * 6, 0.0);
    for (size_t j = 0; j < sampled.size(); ++j) {
      const size_t t = sampled[j];
      points[j] = sample_points(terms[t], summaries[t], slots.data() + j * 3 * kSample);
      for (int side = 0; side < 2; ++side)
        if (points[j][side] > brackets[t].lo && points[j][side] < brackets[t].hi)
          local_segment(terms[t], points[j][side], segs.data() + 6 * j + 3 * side);
    }
    spread.sum(segs.data(), static_cast<int64_t>(segs.size()));
    std::vector<bool> solved(terms.size(), false);
    for (size_t j = 0; j < sampled.size(); ++j) {
      const size_t t = sampled[j];
      Bracket& b = brackets[t];
      for (int side = 0; side < 2 && !solved[t]; ++side) {
        const double at = points[j][side];
        if (!(at > b.lo && at < b.hi)) continue;
        const double* seg = segs.data() + 6 * j + 3 * side;
        const double h = seg[0] - static_cast<double>(terms[t].k) + (seg[1] * at - seg[2]);
        if (h == 0.0) {
          eta[t] = at;
          solved[t] = true;
        } else if (h < 0.0) {
          b.lo = at, b.h_lo = h;
        } else {
          b.hi = at, b.h_hi = h;
        }
      }
    }
    open.erase(std::remove_if(open.begin(), open.end(), [&](size_t t) { return solved[t]; }),
               open.end());
  }
  std::vector<PassSearch> searches;
  for (const size_t t : open) searches.emplace_back(terms[t].k, brackets[t]);
  std::vector<size_t> pending;  // indices into open (and searches) with a pass this round
  std::vector<double> segs;
  while (true) {
    pending.clear();
    segs.clear();
    for (size_t j = 0; j < open.size(); ++j) {
      double at = 0.0;
      if (!searches[j].next(at)) continue;
      pending.push_back(j);
      segs.resize(segs.size() + 3);
      local_segment(terms[open[j]], at, segs.data() + segs.size() - 3);
    }
    if (pending.empty()) break;
    spread.sum(segs.data(), static_cast<int64_t>(segs.size()));
    for (size_t i = 0; i < pending.size(); ++i) searches[pending[i]].take(segs.data() + 3 * i);
  }
  for (size_t j = 0; j < open.size(); ++j) eta[open[j]] = searches[j].result();
}

// eta of the value's shares, +inf where no search is needed.
double envelope_threshold(const Term& term, const Summary& summary) {
  std::vector<double> eta{std::numeric_limits<double>::infinity()};
  thresholds({term}, {summary}, {envelope_searches(summary.t, term.k)}, {}, eta);
  return eta[0];
}

// dst_i = src_i * per_element(span, src_i as double, i), for every span.
template <typename F>
void scale_spans(const std::vector<Span>& spans, const F& per_element) {
  for (const Span& s : spans) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, s.src.scalar_type(), "elementwise", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* x = s.src.const_data_ptr<scalar_t>();
          scalar_t* y = s.dst.mutable_data_ptr<scalar_t>();
          at::parallel_for(0, s.src.numel(), kChunk, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              const double f = per_element(s, static_cast<double>(x[i]), i);
              y[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * static_cast<acc_t>(f));
            }
          });
        });
  }
}

// Terms whose largest breakpoint max_i (w_i + 1) / c_i overflows (float64
// magnitudes near the subnormal range) search with c scaled by the power of two
// that brings that bound to 2^1000: the shares c_i eta - w_i are the same, and
// the root is in range. One pass and one reduction more, for those terms only.
void rescale_overflowing(std::vector<Term>& terms, std::vector<Summary>& summaries,
                         const std::vector<bool>& searching, const ProcessSpread& spread) {
  std::vector<size_t> over;
  for (size_t t = 0; t < terms.size(); ++t)
    if (searching[t] && !(summaries[t].top <= std::numeric_limits<double>::max()))
      over.push_back(t);
  if (over.empty()) return;
  // per term and process: an exponent bound, log2((w_i + 1) / c_i) < bound - 1
  constexpr double kNone = -1e9;
  const int64_t p = spread.count;
  std::vector<double> bounds(over.size() * p, 0.0);
  for (size_t j = 0; j < over.size(); ++j) {
    double bound = kNone;
    for (const Span& s : terms[over[j]].spans) {
      if (!s.counted) continue;
      with_source(s, [&](const auto* x, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          const double v = static_cast<double>(x[i]);
          if (v == 0.0 || !std::isfinite(v)) continue;
          const double c = s.c(v, i), w = s.w(terms[over[j]].lam, i);
          if (!(c > 0.0)) continue;  // sqrt(d) |x| below the double range: no breakpoint
          bound = std::max(bound, double(std::ilogb(w + 1.0)) - double(std::ilogb(c)) + 2.0);
        }
      });
    }
    bounds[j * p + spread.index] = bound;
  }
  spread.sum(bounds.data(), static_cast<int64_t>(bounds.size()));
  for (size_t j = 0; j < over.size(); ++j) {
    const double bound = *std::max_element(bounds.begin() + j * p, bounds.begin() + (j + 1) * p);
    // a finite scale: beyond 2^1023 (lam * d above ~1e288 on subnormal x) the
    // bound stays out of range and the root may be +inf, as without rescaling
    const int shift = static_cast<int>(std::clamp(bound - 1000.0, 0.0, 1023.0));
    for (Span& s : terms[over[j]].spans) s.scale = std::ldexp(1.0, shift);
    summaries[over[j]].top = std::ldexp(1.0, static_cast<int>(std::max(bound, -2000.0)) - shift);
  }
}

// The prox of every term, in place; across processes, the terms' searches
// share their reductions.
void prox_terms(std::vector<Term> terms, const ProcessSpread& spread = {}) {
  std::vector<Summary> summaries = summarise(terms, spread);
  std::vector<bool> searching(terms.size());
  for (size_t t = 0; t < terms.size(); ++t)
    searching[t] = prox_searches(summaries[t].t, terms[t].k, terms[t].lam);
  rescale_overflowing(terms, summaries, searching, spread);
  std::vector<double> eta(terms.size(), 0.0);
  thresholds(terms, summaries, searching, spread, eta);
  for (size_t t = 0; t < terms.size(); ++t) {
    const TermCounts counts = summaries[t].t;
    const int64_t k = terms[t].k;
    const double lam = terms[t].lam, root = eta[t];
    for (const Span& s : terms[t].spans) {
      if (searching[t] && has_element_loops(s)) {
        AT_DISPATCH_FLOATING_TYPES(s.src.scalar_type(), "element_shrink", [&] {
          const scalar_t* x = s.src.const_data_ptr<scalar_t>();
          scalar_t* y = s.dst.mutable_data_ptr<scalar_t>();
          at::parallel_for(0, s.src.numel(), kChunk, [&](int64_t begin, int64_t end) {
            element_shrink(x + begin, y + begin, end - begin, root, lam, s.scale);
          });
        });
        continue;
      }
      scale_spans({s}, [&](const Span& span, double v, int64_t i) {
        return prox_factor(counts, k, lam, span.c(v, i), root, span.w(lam, i));
      });
    }
  }
}

}  // namespace

void prox_elementwise(const at::Tensor& src, const at::Tensor& dst, const double* d, int64_t k,
                      double lam) {
  prox_terms({Term{{Span{src, dst, d}}, k, lam}});
}

void prox_elementwise_terms(const std::vector<GroupedTensor>& tensors,
                            const std::vector<std::vector<size_t>>& members, at::IntArrayRef k,
                            const std::vector<double>& lams, const ProcessSpread& spread,
                            const std::vector<bool>& counted) {
  std::vector<Term> terms;
  for (size_t t = 0; t < members.size(); ++t) {
    Term term{{}, k[t], lams[t]};
    for (const size_t i : members[t]) {
      const GroupedTensor& x = tensors[i];
      term.spans.push_back({x.data, x.data, x.layout.weight_data(), counted.empty() || counted[i]});
    }
    terms.push_back(std::move(term));
  }
  prox_terms(std::move(terms), spread);
}

double value_elementwise(const at::Tensor& x, const double* d, int64_t k) {
  const Term term{{Span{x, x, d}}, k, 0.0};
  const Summary summary = summarise({term}, {})[0];
  const TermCounts& t = summary.t;
  const double eta = envelope_threshold(term, summary);
  if (!t.finite()) return envelope_value_from(t, k, 0.0);
  const auto total = chunked_sums<1>(
      term.spans, [&](const Span& s, const auto* p, int64_t begin, int64_t end, auto& acc) {
        for (int64_t i = begin; i < end; ++i) {
          const double c = s.c(static_cast<double>(p[i]), i);
          const double u = envelope_share(c, eta);
          if (u > 0.0) acc[0] += c * c / u;
        }
      });
  return envelope_value_from(t, k, 0.5 * total[0]);
}

void grad_elementwise(const at::Tensor& x, const at::Tensor& out, const double* d, int64_t k,
                      double upstream) {
  const Term term{{Span{x, out, d}}, k, 0.0};
  const Summary summary = summarise({term}, {})[0];
  const TermCounts& t = summary.t;
  const double eta = envelope_threshold(term, summary);
  scale_spans(term.spans, [&, t = t](const Span& s, double v, int64_t i) {
    return upstream * grad_scale(t, k, s.c(v, i), s.d ? s.d[i] : 1.0, eta);
  });
}

}  // namespace wgsef::cpu
