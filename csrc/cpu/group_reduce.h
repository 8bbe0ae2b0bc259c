// The two streaming passes every CPU op is built from: squared group norms
// (read x once) and per-group scaling (read x, write the output once).
#pragma once

#include <ATen/core/Tensor.h>

#include "../checks.h"
#include "thread_buffers.h"

namespace wgsef::cpu {

// ||x_{G_i}||^2 for every group, accumulated in float64. x must be contiguous.
PooledBuffer<double> group_sq_norms(const at::Tensor& x, const GroupLayout& g);

// dst_{G_i} = factors[i] * src_{G_i}. src and dst are contiguous and may alias.
void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupLayout& g,
                  const double* factors);

}  // namespace wgsef::cpu
