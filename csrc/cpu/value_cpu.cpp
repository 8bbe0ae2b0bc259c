// WGSEF value, its subgradient and the group norms on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "elementwise.h"
#include "fresh_output.h"
#include "group_reduce.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

at::Tensor group_norms(const at::Tensor& x, const std::optional<at::Tensor>& group_ids,
                       int64_t num_groups) {
  const GroupLayout g = check_group_layout("group_norms", x, group_ids, num_groups, std::nullopt);
  const SquaredNorms n = group_sq_norms(x.contiguous(), g);
  at::Tensor out = at::empty({g.num_groups}, x.options().dtype(at::kDouble));
  double* p = out.mutable_data_ptr<double>();
  for (int64_t i = 0; i < g.num_groups; ++i)
    p[i] = std::ldexp(std::sqrt(n.sq.data()[i]), n.exponent);
  return out.to(c10::promoteTypes(x.scalar_type(), at::kFloat));
}

// v as a 0-dim tensor of x's dtype: a value beyond the dtype's range becomes
// inf (at::scalar_tensor would raise instead).
at::Tensor value_in(const at::Tensor& x, double v) {
  double largest = std::numeric_limits<double>::max();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "value_in", [&] {
    largest = static_cast<double>(std::numeric_limits<scalar_t>::max());
  });
  if (std::abs(v) > largest) v = std::copysign(std::numeric_limits<double>::infinity(), v);
  return at::scalar_tensor(v, x.options());
}

at::Tensor value(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& weights,
                 const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const GroupLayout g = check_value_args("value", x, k, weights, group_ids, num_groups);
  if (is_elementwise(g)) return value_in(x, value_elementwise(x.contiguous(), g.weight_data(), k));
  const SquaredNorms n = group_sq_norms(x.contiguous(), g);
  WorkspaceLease ws;
  const double v = envelope_value(n.sq.data(), g.weight_data(), g.num_groups, k, ws.get());
  return value_in(x, std::ldexp(v, 2 * n.exponent));
}

at::Tensor value_backward(const at::Tensor& grad, const at::Tensor& x, int64_t k,
                          const std::optional<at::Tensor>& weights,
                          const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const GroupLayout g = check_value_args("value_backward", x, k, weights, group_ids, num_groups);
  check_upstream_grad(grad);
  const at::Tensor xc = x.contiguous();
  if (is_elementwise(g)) {
    at::Tensor out = empty_output(xc.sizes(), xc.options());
    grad_elementwise(xc, out, g.weight_data(), k, grad.item<double>());
    return out;
  }
  const SquaredNorms n = group_sq_norms(xc, g);
  PooledBuffer<double> scales(g.num_groups);
  WorkspaceLease ws;
  envelope_grad_scales(n.sq.data(), g.weight_data(), g.num_groups, k, scales.data(), ws.get());
  const double upstream = grad.item<double>();
  for (int64_t i = 0; i < scales.size(); ++i) scales.data()[i] *= upstream;
  at::Tensor out = empty_output(xc.sizes(), xc.options());
  scale_groups(xc, out, g, scales.data());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) {
  m.impl("group_norms", &group_norms);
  m.impl("value", &value);
  m.impl("value_backward", &value_backward);
}

}  // namespace wgsef::cpu
