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

// One tensor of a term of single-element groups: c_i = sqrt(d_i) |x_i| and
// w_i = lam d_i of its element i. src and dst may be the same tensor. A span
// that is not counted (a copy another process counts) is only scaled.
struct Span {
  at::Tensor src, dst;
  const double* d;
  bool counted = true;
  double c(double x, int64_t i) const { return d ? std::sqrt(d[i]) * std::abs(x) : std::abs(x); }
  double w(double lam, int64_t i) const { return d ? lam * d[i] : lam; }
};

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

// A term's counts, its largest breakpoint max_i (w_i + 1) / c_i, and where this
// process's elements start in the term's order (process by process) of total.
struct Summary {
  TermCounts t;
  double top = 0.0;
  int64_t first = 0, total = 0;
};

// The summary in one pass; across processes, one reduction of the counts and
// of every process's element count and largest breakpoint.
Summary summarise(const std::vector<Span>& spans, double lam, const ProcessSpread& spread) {
  std::array<double, 3> counts{};
  double top = 0.0;
  for (const Span& s : spans) {
    if (!s.counted) continue;
    with_source(s, [&](const auto* x, int64_t n) {
      std::vector<std::array<double, 4>> partial(static_cast<size_t>((n + kChunk - 1) / kChunk));
      at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
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
      for (const auto& p : partial) {
        for (int j = 0; j < 3; ++j) counts[j] += p[j];
        top = std::max(top, p[3]);
      }
    });
  }
  int64_t local = 0;
  for (const Span& s : spans) local += s.counted ? s.src.numel() : 0;
  const int64_t p = spread.count;
  std::vector<double> all(static_cast<size_t>(3 + 2 * p), 0.0);  // counts, sizes, tops
  std::copy(counts.begin(), counts.end(), all.begin());
  all[3 + spread.index] = static_cast<double>(local);
  all[3 + p + spread.index] = top;
  spread.sum(all.data(), static_cast<int64_t>(all.size()));
  Summary r;
  r.t.nonzero = static_cast<int64_t>(all[0]);
  r.t.has_nan = all[1] > 0.0;
  r.t.has_inf = all[2] > 0.0;
  for (int64_t q = 0; q < p; ++q) {
    r.first += q < spread.index ? static_cast<int64_t>(all[3 + q]) : 0;
    r.total += static_cast<int64_t>(all[3 + q]);
    r.top = std::max(r.top, all[3 + p + q]);
  }
  return r;
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

// The root of h by passes over the spans (lam = 0 for the value and its
// gradient). A sample of 4096 groups gives two points meant to bracket the
// root closely (the sample count's spread, four standard deviations either
// side); one pass each checks them, and the Newton steps start from that
// bracket. A point that fails its check still narrows the full bracket [0, top].
double threshold(const std::vector<Span>& spans, double lam, const Summary& summary, int64_t k,
                 const ProcessSpread& spread) {
  const TermCounts& t = summary.t;
  const auto segment = [&](double at, double (&seg)[3]) {
    const auto sums = chunked_sums<3>(
        spans, [&](const Span& s, const auto* x, int64_t begin, int64_t end, auto& acc) {
          for (int64_t i = begin; i < end; ++i) {
            const double c = s.c(static_cast<double>(x[i]), i), w = s.w(lam, i);
            const double v = c * at - w;
            if (v >= 1.0) {
              acc[0] += 1.0;
            } else if (v > 0.0) {
              acc[1] += c;
              acc[2] += w;
            }
          }
        });
    seg[0] = sums[0], seg[1] = sums[1], seg[2] = sums[2];
    spread.sum(seg, 3);
  };
  const double top = summary.top;
  Bracket b = full_bracket(t.nonzero, k, top);
  constexpr int64_t kSample = 4096;
  // the term's elements in order: process by process, each one's counted spans
  int64_t first = summary.first;
  const int64_t total = summary.total;
  if (total > 4 * kSample) {
    // sample j (positions j * total / kSample) as (taken, c, w), filled by the
    // process that holds it; non-zero elements only
    std::vector<double> slots(3 * kSample, 0.0);
    for (const Span& s : spans) {
      if (!s.counted) continue;
      with_source(s, [&](const auto* x, int64_t n) {
        for (int64_t j = (first * kSample + total - 1) / total; j * total / kSample < first + n;
             ++j) {
          const int64_t i = j * total / kSample - first;
          const double v = static_cast<double>(x[i]);
          if (v == 0.0) continue;
          slots[3 * j] = 1.0;
          slots[3 * j + 1] = s.c(v, i);
          slots[3 * j + 2] = s.w(lam, i);
        }
      });
      first += s.src.numel();
    }
    spread.sum(slots.data(), 3 * kSample);
    std::vector<double> c, w;
    for (int64_t j = 0; j < kSample; ++j) {
      if (slots[3 * j] == 0.0) continue;
      c.push_back(slots[3 * j + 1]);
      w.push_back(slots[3 * j + 2]);
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

// eta of the value's shares, +inf where no search is needed.
double envelope_threshold(const std::vector<Span>& spans, const Summary& summary, int64_t k) {
  return envelope_searches(summary.t, k) ? threshold(spans, 0.0, summary, k, {})
                                         : std::numeric_limits<double>::infinity();
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

void prox_spans(const std::vector<Span>& spans, int64_t k, double lam,
                const ProcessSpread& spread = {}) {
  const Summary summary = summarise(spans, lam, spread);
  const TermCounts& t = summary.t;
  const double eta = prox_searches(t, k, lam) ? threshold(spans, lam, summary, k, spread) : 0.0;
  scale_spans(spans, [&, t = t](const Span& s, double v, int64_t i) {
    return prox_factor(t, k, lam, s.c(v, i), eta, s.w(lam, i));
  });
}

}  // namespace

void prox_elementwise(const at::Tensor& src, const at::Tensor& dst, const double* d, int64_t k,
                      double lam) {
  prox_spans({Span{src, dst, d}}, k, lam);
}

void prox_elementwise(const std::vector<GroupedTensor>& tensors, int64_t k, double lam,
                      const ProcessSpread& spread, const std::vector<bool>& counted) {
  std::vector<Span> spans;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GroupedTensor& t = tensors[i];
    spans.push_back({t.data, t.data, t.layout.weight_data(), counted.empty() || counted[i]});
  }
  prox_spans(spans, k, lam, spread);
}

double value_elementwise(const at::Tensor& x, const double* d, int64_t k) {
  const std::vector<Span> spans{Span{x, x, d}};
  const Summary summary = summarise(spans, 0.0, {});
  const TermCounts& t = summary.t;
  const double eta = envelope_threshold(spans, summary, k);
  if (!t.finite()) return envelope_value_from(t, k, 0.0);
  const auto total = chunked_sums<1>(
      spans, [&](const Span& s, const auto* p, int64_t begin, int64_t end, auto& acc) {
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
  const std::vector<Span> spans{Span{x, out, d}};
  const Summary summary = summarise(spans, 0.0, {});
  const TermCounts& t = summary.t;
  const double eta = envelope_threshold(spans, summary, k);
  scale_spans(spans, [&, t = t](const Span& s, double v, int64_t i) {
    return upstream * grad_scale(t, k, s.c(v, i), s.d ? s.d[i] : 1.0, eta);
  });
}

}  // namespace wgsef::cpu
