// prox_multi_: the WGSEF prox on every tensor of an optimizer param group in
// one call, each tensor its own term or all of them sharing one group budget.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "elementwise.h"
#include "group_reduce.h"
#include "thread_buffers.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "prox_multi_";

// One term per tensor: norms, search and scaling one tensor at a time, so that
// the scaling pass finds a tensor that fits the last-level cache still there.
// Tensors with group ids get their norms first: that pass checks the ids, and
// it must fail before any tensor changes.
void prox_per_tensor(std::vector<GroupedTensor>& tensors, at::IntArrayRef k,
                     const std::vector<double>& strengths, Workspace& ws) {
  std::vector<SquaredNorms> id_norms;
  for (const GroupedTensor& t : tensors)
    if (t.layout.group_ids.defined()) id_norms.push_back(group_sq_norms(t.data, t.layout));
  size_t next_id_norms = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    GroupedTensor& t = tensors[i];
    if (is_elementwise(t.layout)) {
      prox_elementwise(t.data, t.data, t.layout.weight_data(), k[i], strengths[i]);
      continue;
    }
    const SquaredNorms n = t.layout.group_ids.defined() ? std::move(id_norms[next_id_norms++])
                                                        : group_sq_norms(t.data, t.layout);
    PooledBuffer<double> factors(n.sq.size());
    prox_factors(n.sq.data(), t.layout.weight_data(), t.layout.num_groups, k[i], strengths[i],
                 factors.data(), ws);
    scale_groups(t.data, t.data, t.layout, factors.data());
  }
}

// One term over the groups of all tensors: one search, each tensor scaled by
// its slice of the factors.
void prox_shared(std::vector<GroupedTensor>& tensors, int64_t k, double strength, Workspace& ws) {
  if (std::all_of(tensors.begin(), tensors.end(),
                  [](const GroupedTensor& t) { return is_elementwise(t.layout); })) {
    std::vector<size_t> all(tensors.size());
    std::iota(all.begin(), all.end(), size_t{0});
    return prox_elementwise_terms(tensors, {all}, {k}, {strength});  // no per-group arrays
  }
  bool weighted = false;
  for (const GroupedTensor& t : tensors) weighted = weighted || t.layout.weights.defined();
  std::vector<double> sq = joint_sq_norms(tensors), d;
  for (const GroupedTensor& t : tensors) {
    const double* w = t.layout.weight_data();
    if (w) {
      d.insert(d.end(), w, w + t.layout.num_groups);
    } else if (weighted) {
      d.insert(d.end(), static_cast<size_t>(t.layout.num_groups), 1.0);
    }
  }
  std::vector<double> factors(sq.size());
  prox_factors(sq.data(), weighted ? d.data() : nullptr, static_cast<int64_t>(sq.size()), k,
               strength, factors.data(), ws);
  for (GroupedTensor& t : tensors)
    scale_groups(t.data, t.data, t.layout, factors.data() + t.offset);
}

void prox_multi_(at::TensorList xs, at::IntArrayRef layout,
                 const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k,
                 const at::Tensor& lam, const at::Tensor& lr, bool shared) {
  std::vector<GroupedTensor> tensors =
      check_prox_multi_args(kOp, xs, layout, group_ids, weights, k, lam, lr, shared);
  if (tensors.empty()) return;
  const at::Tensor lam_host = lam.to(at::kDouble).contiguous();
  const double step = lr.item<double>();
  std::vector<double> strengths(shared ? 1 : tensors.size());
  for (size_t t = 0; t < strengths.size(); ++t)
    strengths[t] = step * lam_host.const_data_ptr<double>()[lam.numel() == 1 ? 0 : t];
  WorkspaceLease ws;
  if (shared) {
    prox_shared(tensors, k[0], strengths[0], ws.get());
  } else {
    prox_per_tensor(tensors, k, strengths, ws.get());
  }
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!tensors[i].data.is_same(xs[i])) xs[i].copy_(tensors[i].data);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("prox_multi_", &prox_multi_); }

}  // namespace wgsef::cpu
