// The two streaming passes every CPU op is built from: squared group norms
// (read x once) and per-group scaling (read x, write the output once).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../checks.h"
#include "thread_buffers.h"

namespace wgsef::cpu {

// ||x_{G_i}||^2 = sq[i] * 4^exponent for every group, accumulated in float64.
// exponent is 0 unless x is float64 and a squared norm overflows, or all of
// them fall below float64's normal range: then x is read again scaled by
// 2^-exponent, the power of two that brings max|x| into [0.5, 1). Prox factors and gradient
// scales do not change under that scale (WGSEF is 2-homogeneous); the value
// scales by 4^exponent, the norms by 2^exponent (docs/design.md §3.3).
struct SquaredNorms {
  PooledBuffer<double> sq;
  int exponent = 0;
};

// x must be contiguous.
SquaredNorms group_sq_norms(const at::Tensor& x, const GroupLayout& g);

// The squared norms of the groups of several tensors, concatenated in their
// order, at one scale for all (the largest exponent among tensors with a
// non-zero norm), as one WGSEF term over them needs.
std::vector<double> joint_sq_norms(const std::vector<GroupedTensor>& tensors);

// dst_{G_i} = factors[i] * src_{G_i}. src and dst are contiguous and may alias.
void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupLayout& g,
                  const double* factors);

}  // namespace wgsef::cpu
