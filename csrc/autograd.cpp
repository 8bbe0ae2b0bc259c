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

#include <vector>

namespace wgsef {
namespace {

// The in-place ops (prox_, prox_multi_): with grad mode on, an argument that
// requires grad is an error, as an in-place op on a leaf is in torch, since
// no graph can record the change. Otherwise the op runs and bumps the version
// counter of every tensor it wrote, so that a backward through a tensor saved
// before the call raises instead of reading the changed values.
void inplace_without_derivative(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                torch::jit::Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const std::string name = schema.name().substr(schema.name().find("::") + 2);
  const size_t n = schema.arguments().size();
  const bool grad_mode = at::GradMode::is_enabled();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < n; ++i) {
    const c10::Argument& arg = schema.arguments()[i];
    const bool writes = arg.alias_info() && arg.alias_info()->isWrite();
    const auto visit = [&](const c10::IValue& v) {
      if (!v.isTensor()) return;
      const at::Tensor& t = v.toTensor();
      TORCH_CHECK(!(grad_mode && t.requires_grad()), "wgsef.", name, ": ", arg.name(),
                  " requires grad and grad mode is on, but ", name,
                  " has no derivative; call it under torch.no_grad() (ProxSGD.step does), or "
                  "use the out-of-place op");
      if (writes) written.push_back(t);
    };
    const c10::IValue& v = (*stack)[stack->size() - n + i];
    if (v.isList()) {
      for (const c10::IValue& item : v.toListRef()) visit(item);
    } else {
      visit(v);
    }
  }
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
}

}  // namespace wgsef
