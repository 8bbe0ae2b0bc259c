// The WGSEF terms of an optimizer param group (prox_multi_): how its tensors
// split into groups, and the prox step on them, either one term per tensor or
// one shared term.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "group_reduce.h"

namespace wgsef::cpu {

struct TermMember {
  at::Tensor data;  // contiguous storage the prox reads and writes
  GroupArgs groups;
};

// Validates tensor i's layout entry (outer, groups, inner), or its group ids,
// and its weights. data must be contiguous.
TermMember make_term_member(const char* op, const at::Tensor& data, int64_t i,
                            at::IntArrayRef layout,
                            const c10::List<std::optional<at::Tensor>>& group_ids,
                            const c10::List<std::optional<at::Tensor>>& weights);

// Scales every member in place by its prox factors: one term per member with
// budget k[i] and strength scale * lam[i], or one shared term (k[0], lam[0]).
void apply_prox_terms(const char* op, std::vector<TermMember>& members, at::IntArrayRef k,
                      const at::Tensor& lam, const at::Tensor& scale, bool shared);

}  // namespace wgsef::cpu
