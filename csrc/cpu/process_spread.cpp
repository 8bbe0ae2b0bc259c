// ProcessSpread's reductions: c10d's functional all_reduce, found through the
// dispatcher, so the extension links nothing of torch.distributed; the process
// groups are those Python created (by name).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>

#include "elementwise.h"

namespace wgsef::cpu {

void ProcessSpread::sum(double* values, int64_t n) const {
  if (groups.empty() || n == 0) return;
  static const c10::OperatorHandle all_reduce =
      c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional::all_reduce", "");
  static const c10::OperatorHandle wait =
      c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional::wait_tensor", "");
  at::Tensor buffer = at::from_blob(values, {n}, at::TensorOptions().dtype(at::kDouble)).clone();
  for (const std::string& group : groups) {
    torch::jit::Stack stack{buffer, std::string("sum"), group};
    all_reduce.callBoxed(&stack);
    torch::jit::Stack waited{stack[0]};
    wait.callBoxed(&waited);
    buffer = waited[0].toTensor();
  }
  std::copy(buffer.const_data_ptr<double>(), buffer.const_data_ptr<double>() + n, values);
}

}  // namespace wgsef::cpu
