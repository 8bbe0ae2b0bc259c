// The two streaming passes every CPU op is built from: squared group norms
// (read x once) and per-group scaling (read x, write the output once).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../checks.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {

// ||x_{G_i}||^2 for every group, accumulated in float64. x must be contiguous.
std::vector<double> group_sq_norms(const at::Tensor& x, const GroupArgs& g);

// dst_{G_i} = factors[i] * src_{G_i}. src and dst are contiguous and may alias.
void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupArgs& g,
                  const std::vector<double>& factors);

// Threshold-search scratch kept per thread between calls, so that repeated
// calls (an optimizer step per layer) do not page-fault fresh memory; a lease
// that grew it beyond 64 MiB releases it when it ends.
class WorkspaceLease {
 public:
  WorkspaceLease();
  ~WorkspaceLease();
  Workspace& get() { return ws_; }

 private:
  Workspace& ws_;
};

// The weights as host doubles, or nullptr for all ones; checks their values.
const double* host_weights(const char* op, const GroupArgs& g);

}  // namespace wgsef::cpu
