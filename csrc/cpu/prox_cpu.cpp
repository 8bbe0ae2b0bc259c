// Proximal operator of lam * WGSEF on the CPU: one pass for the group norms,
// the O(groups) threshold search, one pass to scale each group.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "elementwise.h"
#include "fresh_output.h"
#include "group_reduce.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

// prox of src into dst (which may be src), both contiguous.
void prox_into(const at::Tensor& src, const at::Tensor& dst, int64_t k, const ProxArgs& a) {
  const GroupLayout& g = a.layout;
  if (is_elementwise(g)) return prox_elementwise(src, dst, g.weight_data(), k, a.lam);
  const SquaredNorms n = group_sq_norms(src, g);
  PooledBuffer<double> factors(g.num_groups);
  WorkspaceLease ws;
  prox_factors(n.sq.data(), g.weight_data(), g.num_groups, k, a.lam, factors.data(), ws.get());
  scale_groups(src, dst, g, factors.data());
}

at::Tensor prox(const at::Tensor& x, int64_t k, const at::Tensor& lam,
                const std::optional<at::Tensor>& weights,
                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const ProxArgs a = check_prox_args("prox", x, k, lam, weights, group_ids, num_groups);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = empty_output(xc.sizes(), xc.options());
  prox_into(xc, out, k, a);
  return out;
}

void prox_(at::Tensor& x, int64_t k, const at::Tensor& lam,
           const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& group_ids,
           int64_t num_groups) {
  const ProxArgs a = check_prox_args("prox_", x, k, lam, weights, group_ids, num_groups);
  if (x.is_contiguous()) {
    prox_into(x, x, k, a);
    return;
  }
  const at::Tensor xc = x.contiguous();
  prox_into(xc, xc, k, a);
  x.copy_(xc);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) {
  m.impl("prox", &prox);
  m.impl("prox_", &prox_);
}

}  // namespace wgsef::cpu
