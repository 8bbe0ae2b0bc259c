// prox_multi_: the WGSEF prox on every tensor of an optimizer param group in
// one call, each tensor its own term or all of them sharing one group budget.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <numeric>

#include "group_reduce.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "prox_multi_";

struct Member {
  at::Tensor data;  // contiguous storage the prox reads and writes
  GroupArgs groups;
  std::vector<double> sq;
};

Member make_member(const at::Tensor& x, int64_t i, at::IntArrayRef layout,
                   const c10::List<std::optional<at::Tensor>>& group_ids,
                   const c10::List<std::optional<at::Tensor>>& weights) {
  check_floating_x(kOp, x);
  const at::Tensor xc = x.contiguous();
  const std::optional<at::Tensor> ids =
      group_ids.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(group_ids.get(i));
  const int64_t outer = layout[3 * i], groups = layout[3 * i + 1], inner = layout[3 * i + 2];
  Member m;
  m.data = xc;
  if (ids.has_value()) {
    m.groups = check_group_args(kOp, xc, ids, groups);
  } else {
    TORCH_CHECK_VALUE(outer >= 0 && groups >= 0 && inner >= 0 && outer * groups * inner == x.numel(),
                      "wgsef.prox_multi_: layout (", outer, ", ", groups, ", ", inner,
                      ") of tensor ", i, " does not cover its ", x.numel(), " elements");
    m.groups = check_group_args(kOp, xc.view({outer, groups, inner}), std::nullopt, -1);
  }
  if (!weights.empty()) attach_weights(kOp, m.groups, x, weights.get(i));
  m.sq = group_sq_norms(m.data, m.groups);
  return m;
}

void prox_multi_(at::TensorList xs, at::IntArrayRef layout,
                 const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k,
                 const at::Tensor& lam, const at::Tensor& scale, bool shared) {
  const int64_t n = static_cast<int64_t>(xs.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(layout.size()) == 3 * n,
                    "wgsef.prox_multi_: layout must have 3 entries per tensor (", 3 * n, "), got ",
                    layout.size());
  TORCH_CHECK_VALUE(group_ids.empty() || static_cast<int64_t>(group_ids.size()) == n,
                    "wgsef.prox_multi_: group_ids must be empty or have one entry per tensor");
  TORCH_CHECK_VALUE(weights.empty() || static_cast<int64_t>(weights.size()) == n,
                    "wgsef.prox_multi_: weights must be empty or have one entry per tensor");
  const int64_t terms = shared ? 1 : n;
  TORCH_CHECK_VALUE(static_cast<int64_t>(k.size()) == terms, "wgsef.prox_multi_: k must have ",
                    terms, " entries (", shared ? "shared budget" : "one per tensor", "), got ",
                    k.size());
  for (int64_t kk : k) check_k(kOp, kk);
  check_lam_tensor(kOp, scale);
  TORCH_CHECK_VALUE(lam.dim() <= 1 && (lam.numel() == 1 || lam.numel() == terms),
                    "wgsef.prox_multi_: lam must have 1 or ", terms, " entries, got shape ",
                    lam.sizes());
  const at::Tensor lam_host = lam.to(at::kDouble).contiguous();
  const double step = scale.item<double>();
  auto strength = [&](int64_t t) {
    const double l = step * lam_host.const_data_ptr<double>()[lam.numel() == 1 ? 0 : t];
    check_lam_value(kOp, l);
    return l;
  };
  if (n == 0) return;

  std::vector<Member> members;
  members.reserve(n);
  for (int64_t i = 0; i < n; ++i) members.push_back(make_member(xs[i], i, layout, group_ids, weights));

  WorkspaceLease ws;
  if (!shared) {
    for (int64_t i = 0; i < n; ++i) {
      Member& m = members[i];
      const double* d = host_weights(kOp, m.groups);
      std::vector<double> factors(m.sq.size());
      prox_factors(m.sq.data(), d, m.groups.num_groups, k[i], strength(i), factors.data(),
                   ws.get());
      scale_groups(m.data, m.data, m.groups, factors);
    }
  } else {
    // one term: concatenate the groups of all tensors, search once, scale each slice
    std::vector<double> sq, d;
    bool weighted = false;
    for (const Member& m : members) weighted = weighted || m.groups.weights.defined();
    for (const Member& m : members) {
      sq.insert(sq.end(), m.sq.begin(), m.sq.end());
      if (!weighted) continue;
      const double* w = host_weights(kOp, m.groups);
      if (w) {
        d.insert(d.end(), w, w + m.groups.num_groups);
      } else {
        d.insert(d.end(), static_cast<size_t>(m.groups.num_groups), 1.0);
      }
    }
    std::vector<double> factors(sq.size());
    prox_factors(sq.data(), weighted ? d.data() : nullptr, static_cast<int64_t>(sq.size()), k[0],
                 strength(0), factors.data(), ws.get());
    size_t offset = 0;
    for (Member& m : members) {
      const std::vector<double> slice(factors.begin() + offset,
                                      factors.begin() + offset + m.sq.size());
      scale_groups(m.data, m.data, m.groups, slice);
      offset += m.sq.size();
    }
  }
  for (int64_t i = 0; i < n; ++i)
    if (!members[i].data.is_same(xs[i])) xs[i].copy_(members[i].data);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("prox_multi_", &prox_multi_); }

}  // namespace wgsef::cpu
