// prox_multi_: the WGSEF prox on every tensor of an optimizer param group in
// one call, each tensor its own term or all of them sharing one group budget.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "prox_terms.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "prox_multi_";

void prox_multi_(at::TensorList xs, at::IntArrayRef layout,
                 const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k,
                 const at::Tensor& lam, const at::Tensor& scale, bool shared) {
  const int64_t n = static_cast<int64_t>(xs.size());
  check_term_lists(kOp, n, layout, group_ids, weights, k, lam, scale, shared);
  std::vector<TermMember> members;
  members.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    members.push_back(make_term_member(kOp, xs[i].contiguous(), i, layout, group_ids, weights));
  apply_prox_terms(kOp, members, k, lam, scale, shared);
  for (int64_t i = 0; i < n; ++i)
    if (!members[i].data.is_same(xs[i])) xs[i].copy_(members[i].data);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("prox_multi_", &prox_multi_); }

}  // namespace wgsef::cpu
