// The threshold search as tensor operations on the norms' own device: sort the
// breakpoints, prefix-sum the slopes and offsets, search the sign change
// (design notes §3.3(c)). Every branch of the CPU code becomes a torch.where,
// so nothing waits for the host and a CUDA graph can capture it. O(m log m)
// on the number of groups m.
#pragma once

#include <ATen/core/Tensor.h>

namespace wgsef::device {

// Shares u_i = clip(c_i eta - w_i, 0, 1) with sum u = k over the groups with
// c_i > 0 (zero groups get u = 0), snapped to 0 within 8 ulp (design §6).
// c, w: float64 [m] on one device; k >= 1. When at most k groups are non-zero
// the result is unspecified; callers select their own formula then.
at::Tensor solve_shares(const at::Tensor& c, const at::Tensor& w, int64_t k);

// prox factors f_i (prox = f_i * v_i) from squared norms sq, weights d (float64
// [m], or undefined for ones) and lam (a one-element tensor on any device).
at::Tensor prox_factors(const at::Tensor& sq, const at::Tensor& d, int64_t k, const at::Tensor& lam);

// WGSEF value (0-dim float64) and subgradient scales s_i (grad = s_i x_i).
at::Tensor envelope_value(const at::Tensor& sq, const at::Tensor& d, int64_t k);
at::Tensor envelope_grad_scales(const at::Tensor& sq, const at::Tensor& d, int64_t k);

}  // namespace wgsef::device
