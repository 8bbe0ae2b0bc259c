// prox_elements_: the prox of terms of single-element groups spread over
// processes (docs/design.md §8): the search by passes of elementwise.cpp, its
// counts and sums completed across processes at every pass.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../checks.h"
#include "elementwise.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "prox_elements_";

void prox_elements_(at::TensorList xs, const c10::List<std::optional<at::Tensor>>& weights,
                    const c10::List<bool>& counted, at::IntArrayRef k, const at::Tensor& lam,
                    const at::Tensor& lr, bool shared, const std::vector<std::string>& groups,
                    int64_t process_index, int64_t process_count) {
  TORCH_CHECK_VALUE(counted.size() == xs.size(), "wgsef.", kOp,
                    ": counted must have one entry per tensor (", xs.size(), "), got ",
                    counted.size());
  TORCH_CHECK_VALUE(process_count >= 1 && process_index >= 0 && process_index < process_count &&
                        (!groups.empty() || process_count == 1),
                    "wgsef.", kOp,
                    ": process_index must lie in [0, process_count) and "
                    "process_count be 1 without process_groups, got ",
                    process_index, " of ", process_count, " with ", groups.size(), " groups");
  std::vector<int64_t> layout;
  for (const at::Tensor& x : xs) layout.insert(layout.end(), {1, x.numel(), 1});
  const c10::List<std::optional<at::Tensor>> no_ids;
  std::vector<GroupedTensor> tensors =
      check_prox_multi_args(kOp, xs, layout, no_ids, weights, k, lam, lr, shared);
  const at::Tensor lam_host = lam.to(at::kDouble).contiguous();
  const double step = lr.item<double>();
  const auto strength = [&](size_t t) {
    return step * lam_host.const_data_ptr<double>()[lam.numel() == 1 ? 0 : t];
  };
  const ProcessSpread spread{groups, process_index, process_count};
  std::vector<bool> flags;
  for (const bool c : counted) flags.push_back(c);
  // one term over every tensor, or one per tensor; every process runs every
  // term's search, so that the all_reduces pair up
  std::vector<std::vector<size_t>> members;
  std::vector<double> lams;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (shared && i > 0) {
      members[0].push_back(i);
      continue;
    }
    members.push_back({i});
    lams.push_back(strength(i));
  }
  prox_elementwise_terms(tensors, members, k, lams, spread, flags);
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!tensors[i].data.is_same(xs[i])) xs[i].copy_(tensors[i].data);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("prox_elements_", &prox_elements_); }

}  // namespace wgsef::cpu
