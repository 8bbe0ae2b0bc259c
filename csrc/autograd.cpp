// Autograd for the ops without a derivative. Out-of-place ones get torch's
// not-implemented node, so that a backward through them raises ("derivative
// for wgsef::prox is not implemented") instead of silently yielding no
// gradient. The value's derivative is registered in Python (wgsef/ops.py).
// Registered in C++ so that calls pay no Python dispatch.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace wgsef {
namespace {

// Calls f(argument, tensor) for every tensor argument on the stack.
template <typename F>
void for_each_tensor_argument(const c10::OperatorHandle& op, const torch::jit::Stack& stack,
                              const F& f) {
  const auto& arguments = op.schema().arguments();
  const size_t n = arguments.size();
  for (size_t i = 0; i < n; ++i) {
    const c10::IValue& v = stack[stack.size() - n + i];
    const auto visit = [&](const c10::IValue& item) {
      if (item.isTensor()) f(arguments[i], item.toTensor());
    };
    if (v.isList()) {
      for (const c10::IValue& item : v.toListRef()) visit(item);
    } else {
      visit(v);
    }
  }
}

std::string short_name(const c10::OperatorHandle& op) {
  const std::string& full = op.schema().name();
  return full.substr(full.find("::") + 2);
}

// The in-place ops (prox_, prox_multi_, prox_coupled_, sgd_group_squares_) at the Autograd key:
// with grad mode on, an argument that requires grad is an error, as an in-place op on a leaf is in
// torch, since no graph can record the change.
void inplace_without_derivative(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    const std::string name = short_name(op);
    for_each_tensor_argument(op, *stack, [&](const c10::Argument& arg, const at::Tensor& t) {
      TORCH_CHECK(!t.requires_grad(), "wgsef.", name, ": ", arg.name(),
                  " requires grad and grad mode is on, but ", name,
                  " has no derivative; call it under torch.no_grad() (ProxSGD.step does)",
                  name == "sgd_group_squares_" ? "" : ", or use the out-of-place op");
    });
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ... and at the ADInplaceOrView key, which runs in inference mode too: bump
// the version counter of every tensor the op writes, so that a backward
// through a tensor saved before the call raises instead of reading the
// changed values.
void bump_versions_of_written(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                              torch::jit::Stack* stack) {
  std::vector<at::Tensor> written;
  for_each_tensor_argument(op, *stack, [&](const c10::Argument& arg, const at::Tensor& t) {
    if (arg.alias_info() && arg.alias_info()->isWrite()) written.push_back(t);
  });
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written)
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, Autograd, m) {
  m.impl("prox", torch::autograd::autogradNotImplementedFallback());
  m.impl("group_norms", torch::autograd::autogradNotImplementedFallback());
  m.impl("value_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("nm_mask", torch::autograd::autogradNotImplementedFallback());
  m.impl("prox_", torch::CppFunction::makeFromBoxedFunction<&inplace_without_derivative>());
  m.impl("prox_multi_", torch::CppFunction::makeFromBoxedFunction<&inplace_without_derivative>());
  m.impl("prox_coupled_", torch::CppFunction::makeFromBoxedFunction<&inplace_without_derivative>());
  m.impl("sgd_group_squares_",
         torch::CppFunction::makeFromBoxedFunction<&inplace_without_derivative>());
}

TORCH_LIBRARY_IMPL(wgsef, ADInplaceOrView, m) {
  m.impl("prox_", torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written>());
  m.impl("prox_multi_", torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written>());
  m.impl("prox_coupled_", torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written>());
  m.impl("sgd_group_squares_",
         torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written>());
}

}  // namespace wgsef
