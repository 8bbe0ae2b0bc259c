// nm_mask and nm_decay for every backend, on top of the backend's one kernel
// entry point, so that both backends share the argument checks and the rule of
// when the backward needs the mask.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "checks.h"

namespace wgsef {

// A backend's N:M pass: returns (decayed weights, mask). It writes the mask
// only when keep_mask and the decayed weights only when decay is given.
using NMPass = std::tuple<at::Tensor, at::Tensor> (*)(const char* op, const at::Tensor& w,
                                                      int64_t n, int64_t m, int64_t dim,
                                                      std::optional<double> decay, bool keep_mask);

template <NMPass pass>
at::Tensor nm_mask(const at::Tensor& w, int64_t n, int64_t m, int64_t dim) {
  return std::get<1>(pass("nm_mask", w, n, m, dim, std::nullopt, true));
}

template <NMPass pass>
std::tuple<at::Tensor, at::Tensor> nm_decay(const at::Tensor& w, int64_t n, int64_t m, int64_t dim,
                                            const at::Tensor& decay, c10::string_view grad_mode,
                                            double srste_weight) {
  const double d = check_nm_decay_args(decay, grad_mode, srste_weight);
  // the backward needs the mask only to scale the gradient or add the SR-STE term
  return pass("nm_decay", w, n, m, dim, d, grad_mode == "scaled" || srste_weight > 0.0);
}

template <NMPass pass>
void register_nm_ops(torch::Library& m) {
  m.impl("nm_mask", &nm_mask<pass>);
  m.impl("nm_decay", &nm_decay<pass>);
}

}  // namespace wgsef
