#include "shares_aten.h"

#include <torch/library.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <limits>

namespace wgsef::device {
namespace {

at::Tensor ones_or(const at::Tensor& d, const at::Tensor& like) {
  return d.defined() ? d : at::ones_like(like);
}

at::Tensor scalar(double v, const at::Tensor& like) { return at::scalar_tensor(v, like.options()); }

}  // namespace

at::Tensor solve_shares(const at::Tensor& c, const at::Tensor& w, int64_t k) {
  const int64_t m = c.size(0);
  const at::Tensor inf = scalar(std::numeric_limits<double>::infinity(), c);
  const at::Tensor zero = scalar(0.0, c);
  const at::Tensor nz = c > 0;
  // breakpoints: u_i leaves 0 at w_i/c_i (slope +c_i, offset -w_i) and reaches
  // 1 at (w_i+1)/c_i (slope -c_i, offset w_i+1); zero groups never enter
  const at::Tensor points = at::cat({at::where(nz, w / c, inf), at::where(nz, (w + 1) / c, inf)});
  const at::Tensor dslope = at::cat({at::where(nz, c, zero), at::where(nz, -c, zero)});
  const at::Tensor doffset = at::cat({at::where(nz, -w, zero), at::where(nz, w + 1, zero)});
  const at::Tensor order = at::argsort(points, /*stable=*/true);
  const at::Tensor pos = points.index_select(0, order);
  const at::Tensor slope = at::cumsum(dslope.index_select(0, order), 0);
  const at::Tensor offset = at::cumsum(doffset.index_select(0, order), 0) - static_cast<double>(k);
  // h just right of each breakpoint; +inf past the last real one
  const at::Tensor h = at::where(at::isinf(pos), inf, slope * pos + offset);
  const at::Tensor j = at::searchsorted(h, zero.reshape({1}));  // first h >= 0
  const at::Tensor jc = at::clamp(j, 0, 2 * m - 1);
  const at::Tensor jm1 = at::clamp(j - 1, 0, 2 * m - 1);
  const at::Tensor at_point = h.index_select(0, jc) == 0;
  const at::Tensor on_segment = -offset.index_select(0, jm1) / slope.index_select(0, jm1);
  const at::Tensor estimate = at::where(at_point, pos.index_select(0, jc), on_segment);
  // the prefix sums cancel digits; solve again on the segment found, with sums
  // over only the groups that are linear there: h = sum_lin (c eta - w) + #sat - k
  const at::Tensor lo = w / c, hi = (w + 1) / c;
  const at::Tensor linear = nz & (lo < estimate) & (hi > estimate);
  const at::Tensor saturated = nz & (hi <= estimate);
  const at::Tensor lin_c = at::where(linear, c, zero).sum();
  const at::Tensor lin_w = at::where(linear, w, zero).sum();
  const at::Tensor refined = (static_cast<double>(k) - saturated.sum() + lin_w) / lin_c;
  const at::Tensor eta = at::where(at_point | (lin_c == 0), estimate, refined);
  const at::Tensor ceta = c * eta;
  const at::Tensor t = ceta - w;
  const double eps = std::numeric_limits<double>::epsilon();
  const at::Tensor snapped = at::where(at::abs(t) <= 8 * eps * at::maximum(ceta, w), zero, t);
  return at::where(nz, at::clamp(snapped, 0.0, 1.0), zero);
}

at::Tensor prox_factors(const at::Tensor& sq, const at::Tensor& d, int64_t k, const at::Tensor& lam) {
  if (sq.numel() == 0) return sq.clone();
  const at::Tensor dd = ones_or(d, sq);
  const at::Tensor l = lam.to(sq.options()).reshape({});
  const at::Tensor w = l * dd;
  const at::Tensor c = at::sqrt(dd * sq);
  const at::Tensor ridge = 1.0 / (1.0 + w);
  at::Tensor f;
  if (k == 0) {
    f = at::zeros_like(sq);
  } else {
    const at::Tensor u = solve_shares(c, w, k);
    const at::Tensor shrunk = u / (u + w);
    f = at::where((sq > 0).sum() <= k, ridge, at::where(u > 0, shrunk, at::zeros_like(sq)));
  }
  f = at::where(l == 0, at::ones_like(sq), f);
  return at::where(at::isfinite(sq).all(), f, at::full_like(sq, std::numeric_limits<double>::quiet_NaN()));
}

at::Tensor envelope_value(const at::Tensor& sq, const at::Tensor& d, int64_t k) {
  const at::Tensor nan = scalar(std::numeric_limits<double>::quiet_NaN(), sq);
  const at::Tensor inf = scalar(std::numeric_limits<double>::infinity(), sq);
  if (sq.numel() == 0) return scalar(0.0, sq);
  const at::Tensor dd = ones_or(d, sq);
  const at::Tensor weighted = dd * sq;
  const at::Tensor any = (sq > 0).any();
  at::Tensor value;
  if (k == 0) {
    value = at::where(any, inf, scalar(0.0, sq));
  } else {
    const at::Tensor u = solve_shares(at::sqrt(weighted), at::zeros_like(sq), k);
    const at::Tensor envelope = 0.5 * at::where(u > 0, weighted / u, at::zeros_like(sq)).sum();
    value = at::where((sq > 0).sum() <= k, 0.5 * weighted.sum(), envelope);
  }
  value = at::where(at::isinf(sq).any(), inf, value);
  return at::where(at::isnan(sq).any(), nan, value);
}

at::Tensor envelope_grad_scales(const at::Tensor& sq, const at::Tensor& d, int64_t k) {
  if (sq.numel() == 0) return sq.clone();
  const at::Tensor dd = ones_or(d, sq);
  const at::Tensor nan = at::full_like(sq, std::numeric_limits<double>::quiet_NaN());
  if (k == 0) return at::where((sq > 0).any(), nan, at::zeros_like(sq));
  const at::Tensor u0 = solve_shares(at::sqrt(dd * sq), at::zeros_like(sq), k);
  const at::Tensor u = at::where((sq > 0).sum() <= k, (sq > 0).to(sq.scalar_type()), u0);
  const at::Tensor scales = at::where(u > 0, dd / u, at::zeros_like(sq));
  return at::where(at::isfinite(sq).all(), scales, nan);
}

}  // namespace wgsef::device

namespace {

at::Tensor weights_or_undefined(const std::optional<at::Tensor>& w, const at::Tensor& sq) {
  return w.has_value() ? w->to(sq.options()) : at::Tensor();
}

at::Tensor shares_prox_factors(const at::Tensor& sq, const std::optional<at::Tensor>& w, int64_t k,
                               const at::Tensor& lam) {
  return wgsef::device::prox_factors(sq.to(at::kDouble), weights_or_undefined(w, sq), k, lam);
}

at::Tensor shares_value(const at::Tensor& sq, const std::optional<at::Tensor>& w, int64_t k) {
  return wgsef::device::envelope_value(sq.to(at::kDouble), weights_or_undefined(w, sq), k);
}

at::Tensor shares_grad_scales(const at::Tensor& sq, const std::optional<at::Tensor>& w, int64_t k) {
  return wgsef::device::envelope_grad_scales(sq.to(at::kDouble), weights_or_undefined(w, sq), k);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CompositeExplicitAutograd, m) {
  m.impl("_shares_prox_factors", &shares_prox_factors);
  m.impl("_shares_value", &shares_value);
  m.impl("_shares_grad_scales", &shares_grad_scales);
}
