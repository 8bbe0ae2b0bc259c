// Proximal operator of lam * WGSEF on the CPU: one pass for the group norms,
// the O(groups) threshold search, one pass to scale each group.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "fresh_output.h"
#include "group_reduce.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

void prox_into(const char* op, const at::Tensor& src, const at::Tensor& dst, int64_t k,
               const at::Tensor& lam, const std::optional<at::Tensor>& weights,
               const GroupLayout& layout) {
  GroupLayout g = layout;
  check_k(op, k);
  check_scalar_tensor(op, "lam", lam);
  const double l = lam.item<double>();
  check_lam_value(op, l);
  attach_weights(op, g, src, weights);
  const double* d = host_weights(op, g);
  const PooledBuffer<double> sq = group_sq_norms(src, g);
  PooledBuffer<double> factors(g.num_groups);
  WorkspaceLease ws;
  prox_factors(sq.data(), d, g.num_groups, k, l, factors.data(), ws.get());
  scale_groups(src, dst, g, factors.data());
}

at::Tensor prox(const at::Tensor& x, int64_t k, const at::Tensor& lam,
                const std::optional<at::Tensor>& weights,
                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const GroupLayout g = check_group_layout("prox", x, group_ids, num_groups);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = empty_output(xc.sizes(), xc.options());
  prox_into("prox", xc, out, k, lam, weights, g);
  return out;
}

void prox_(at::Tensor& x, int64_t k, const at::Tensor& lam,
           const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& group_ids,
           int64_t num_groups) {
  const GroupLayout g = check_group_layout("prox_", x, group_ids, num_groups);
  if (x.is_contiguous()) {
    prox_into("prox_", x, x, k, lam, weights, g);
    return;
  }
  const at::Tensor xc = x.contiguous();
  prox_into("prox_", xc, xc, k, lam, weights, g);
  x.copy_(xc);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) {
  m.impl("prox", &prox);
  m.impl("prox_", &prox_);
}

}  // namespace wgsef::cpu
