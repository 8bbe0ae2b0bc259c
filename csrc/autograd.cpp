// Autograd for the ops without a derivative: backpropagating through them
// raises ("derivative for wgsef::prox is not implemented") instead of silently
// yielding no gradient. Registered in C++ so that calls pay no Python dispatch.
// The value's derivative is registered in Python (wgsef/ops.py).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(wgsef, Autograd, m) {
  m.impl("prox", torch::autograd::autogradNotImplementedFallback());
  m.impl("prox_", torch::autograd::autogradNotImplementedFallback());
  m.impl("prox_multi_", torch::autograd::autogradNotImplementedFallback());
  m.impl("group_norms", torch::autograd::autogradNotImplementedFallback());
  m.impl("value_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("nm_mask", torch::autograd::autogradNotImplementedFallback());
}
