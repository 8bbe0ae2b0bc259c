// WGSEF terms whose groups are single elements (the "elements" group type:
// a strided layout with outer == inner == 1). Their prox, value and gradient
// stream x and keep no per-group arrays, so memory does not grow with the
// number of groups; the threshold comes from PassSearch (threshold.h), each
// pass one read of x (docs/design.md §3.4).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "../checks.h"

namespace wgsef::cpu {

// The processes over which one term's elements are spread (torch.distributed):
// each holds some of them, and the search's counts and sums are completed by
// c10d's functional all_reduce over each named process group in turn. With no
// groups, one process holds them all. index is this process's place in the
// term's element order, among count processes.
struct ProcessSpread {
  std::vector<std::string> groups;
  int64_t index = 0, count = 1;

  // values summed over the processes, in place (every process gets the same bits)
  void sum(double* values, int64_t n) const;
};

inline bool is_elementwise(const GroupLayout& g) {
  return !g.group_ids.defined() && g.outer == 1 && g.inner == 1;
}

// dst = prox_{lam*WGSEF}(src), elementwise groups; d: weights or nullptr.
// src and dst are contiguous and may alias.
void prox_elementwise(const at::Tensor& src, const at::Tensor& dst, const double* d, int64_t k,
                      double lam);

// The same in place for several terms, term t over the elements of the tensors
// members[t] with budget k[t] and strength lams[t]; every tensor must be
// is_elementwise. With a spread, the tensors hold this process's part of the
// terms, tensor i counts towards its term only where counted[i] (empty: all
// count), and the terms' searches run in lockstep: each round of passes costs
// one all_reduce for all of them.
void prox_elementwise_terms(const std::vector<GroupedTensor>& tensors,
                            const std::vector<std::vector<size_t>>& members, at::IntArrayRef k,
                            const std::vector<double>& lams, const ProcessSpread& spread = {},
                            const std::vector<bool>& counted = {});

// WGSEF_{k,d}(x), elementwise groups.
double value_elementwise(const at::Tensor& x, const double* d, int64_t k);

// out = upstream * (a subgradient of WGSEF at x), elementwise groups.
void grad_elementwise(const at::Tensor& x, const at::Tensor& out, const double* d, int64_t k,
                      double upstream);

}  // namespace wgsef::cpu
