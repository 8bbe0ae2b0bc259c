// prox_coupled_: the WGSEF prox on coupled groups, each a union of groups of
// several tensors that one factor scales together.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "group_reduce.h"
#include "thread_buffers.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "prox_coupled_";

void prox_coupled_(at::TensorList xs, at::IntArrayRef layout,
                   const c10::List<std::optional<at::Tensor>>& group_ids, at::TensorList coupling,
                   at::IntArrayRef term_sizes, const std::optional<at::Tensor>& weights,
                   at::IntArrayRef k, const at::Tensor& lam, const at::Tensor& lr) {
  CoupledArgs a = check_prox_coupled_args(kOp, xs, layout, group_ids, coupling, term_sizes, weights,
                                          k, lam, lr);
  if (a.num_coupled == 0) return;
  // a coupled group's squared norm: the sum over its members
  const std::vector<double> sq = joint_sq_norms(a.tensors);
  std::vector<double> coupled(static_cast<size_t>(a.num_coupled), 0.0);
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const int64_t* to = a.coupling[i].const_data_ptr<int64_t>();
    const double* member = sq.data() + a.tensors[i].offset;
    for (int64_t g = 0; g < a.tensors[i].layout.num_groups; ++g) coupled[to[g]] += member[g];
  }
  // one search per term over its consecutive coupled groups
  const at::Tensor lam_host = lam.to(at::kDouble).contiguous();
  const double step = lr.item<double>();
  const double* d = a.weight_data();
  std::vector<double> factors(coupled.size());
  WorkspaceLease ws;
  int64_t begin = 0;
  for (size_t t = 0; t < term_sizes.size(); ++t) {
    const double strength = step * lam_host.const_data_ptr<double>()[lam.numel() == 1 ? 0 : t];
    prox_factors(coupled.data() + begin, d ? d + begin : nullptr, term_sizes[t], k[t], strength,
                 factors.data() + begin, ws.get());
    begin += term_sizes[t];
  }
  // every member scaled by its coupled group's factor
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    GroupedTensor& t = a.tensors[i];
    const int64_t* to = a.coupling[i].const_data_ptr<int64_t>();
    PooledBuffer<double> member_factors(t.layout.num_groups);
    for (int64_t g = 0; g < t.layout.num_groups; ++g) member_factors.data()[g] = factors[to[g]];
    scale_groups(t.data, t.data, t.layout, member_factors.data());
    if (!t.data.is_same(xs[i])) xs[i].copy_(t.data);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("prox_coupled_", &prox_coupled_); }

}  // namespace wgsef::cpu
