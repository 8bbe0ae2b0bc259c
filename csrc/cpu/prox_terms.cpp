#include "prox_terms.h"

#include "wgsef/threshold.h"

namespace wgsef::cpu {

TermMember make_term_member(const char* op, const at::Tensor& data, int64_t i,
                            at::IntArrayRef layout,
                            const c10::List<std::optional<at::Tensor>>& group_ids,
                            const c10::List<std::optional<at::Tensor>>& weights) {
  check_floating_x(op, data);
  const std::optional<at::Tensor> ids =
      group_ids.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(group_ids.get(i));
  const int64_t outer = layout[3 * i], groups = layout[3 * i + 1], inner = layout[3 * i + 2];
  TermMember m;
  m.data = data;
  if (ids.has_value()) {
    m.groups = check_group_args(op, data, ids, groups);
  } else {
    TORCH_CHECK_VALUE(outer >= 0 && groups >= 0 && inner >= 0 && outer * groups * inner == data.numel(),
                      "wgsef.", op, ": layout (", outer, ", ", groups, ", ", inner, ") of tensor ",
                      i, " does not cover its ", data.numel(), " elements");
    m.groups = check_group_args(op, data.view({outer, groups, inner}), std::nullopt, -1);
  }
  if (!weights.empty()) attach_weights(op, m.groups, data, weights.get(i));
  host_weights(op, m.groups);  // checks their values before any tensor changes
  return m;
}

void apply_prox_terms(const char* op, std::vector<TermMember>& members, at::IntArrayRef k,
                      const at::Tensor& lam, const at::Tensor& scale, bool shared) {
  const at::Tensor lam_host = lam.to(at::kDouble).contiguous();
  const double step = scale.item<double>();
  // every strength is checked before the first tensor changes
  std::vector<double> strengths(shared ? std::min<size_t>(1, members.size()) : members.size());
  for (size_t t = 0; t < strengths.size(); ++t) {
    strengths[t] = step * lam_host.const_data_ptr<double>()[lam.numel() == 1 ? 0 : t];
    check_lam_value(op, strengths[t]);
  }
  WorkspaceLease ws;
  if (!shared) {
    // norms, search and scaling one tensor at a time, so that the scaling pass
    // finds a tensor that fits the last-level cache still there
    for (size_t i = 0; i < members.size(); ++i) {
      TermMember& m = members[i];
      const PooledBuffer<double> sq = group_sq_norms(m.data, m.groups);
      PooledBuffer<double> factors(sq.size());
      prox_factors(sq.data(), host_weights(op, m.groups), m.groups.num_groups, k[i], strengths[i],
                   factors.data(), ws.get());
      scale_groups(m.data, m.data, m.groups, factors.data());
    }
    return;
  }
  if (members.empty()) return;
  // one term: concatenate the groups of all tensors, search once, scale each slice
  std::vector<double> sq, d;
  std::vector<size_t> offsets;
  bool weighted = false;
  for (const TermMember& m : members) weighted = weighted || m.groups.weights.defined();
  for (const TermMember& m : members) {
    offsets.push_back(sq.size());
    const PooledBuffer<double> member_sq = group_sq_norms(m.data, m.groups);
    sq.insert(sq.end(), member_sq.data(), member_sq.data() + member_sq.size());
    if (!weighted) continue;
    const double* w = host_weights(op, m.groups);
    if (w) {
      d.insert(d.end(), w, w + m.groups.num_groups);
    } else {
      d.insert(d.end(), static_cast<size_t>(m.groups.num_groups), 1.0);
    }
  }
  std::vector<double> factors(sq.size());
  prox_factors(sq.data(), weighted ? d.data() : nullptr, static_cast<int64_t>(sq.size()), k[0],
               strengths[0], factors.data(), ws.get());
  for (size_t i = 0; i < members.size(); ++i)
    scale_groups(members[i].data, members[i].data, members[i].groups, factors.data() + offsets[i]);
}

}  // namespace wgsef::cpu
