// sgd_group_squares_: torch.optim.SGD's update fused with the squared group
// norms of the updated params. Each run of a group's consecutive elements is
// updated and then summed while it is still in the L1 cache, so the step reads
// params, grads and buffers once and writes params and buffers once; the
// sharded prox (docs/design.md §8) needs no separate pass for its norms.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "float_loops.h"
#include "group_runs.h"

namespace wgsef::cpu {
namespace {

constexpr const char* kOp = "sgd_group_squares_";

template <typename acc_t>
struct SgdCoefficients {
  acc_t lr, weight_decay, momentum, one_minus_dampening, sign;  // sign: -1 with maximize
};

// torch.optim.SGD on n elements: d = sign * g (+ weight_decay * p);
// buf = momentum * buf + (1 - dampening) * d; d = buf, or d + momentum * buf
// (nesterov); p -= lr * d. The branches are template arguments so that each
// variant vectorises.
template <bool kDecay, bool kMomentum, bool kNesterov, typename T, typename acc_t>
inline void sgd_run(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int64_t n,
                    const SgdCoefficients<acc_t>& c) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t d = c.sign * static_cast<acc_t>(g[i]);
    if constexpr (kDecay) d += c.weight_decay * static_cast<acc_t>(p[i]);
    if constexpr (kMomentum) {
      const acc_t b = c.momentum * static_cast<acc_t>(buf[i]) + c.one_minus_dampening * d;
      buf[i] = static_cast<T>(b);
      d = kNesterov ? d + c.momentum * b : b;
    }
    p[i] = static_cast<T>(static_cast<acc_t>(p[i]) - c.lr * d);
  }
}

template <typename T>
inline double run_squares(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n >= kShortRun) return sum_squares_f32(p, n);
  }
  return sum_squares(p, n);
}

// One tensor: every run updated, then its squares added to its group's entry of out.
template <bool kDecay, bool kMomentum, bool kNesterov, typename T>
void update_and_sum(T* p, const T* g, T* buf, const GroupLayout& layout,
                    const SgdCoefficients<at::opmath_type<T>>& c, double* out) {
  const auto run_sq = [&](int64_t begin, int64_t len) {
    sgd_run<kDecay, kMomentum, kNesterov>(p + begin, g + begin, kMomentum ? buf + begin : nullptr,
                                          len, c);
    return run_squares(p + begin, len);
  };
  const auto row_sq = [&](int64_t begin, int64_t len, double* acc) {
    sgd_run<kDecay, kMomentum, kNesterov>(p + begin, g + begin, kMomentum ? buf + begin : nullptr,
                                          len, c);
    for (int64_t j = 0; j < len; ++j) {
      const double v = static_cast<double>(p[begin + j]);
      acc[j] += v * v;
    }
  };
  strided_group_sums(layout.outer, layout.num_groups, layout.inner, out, run_sq, row_sq);
}

template <typename T>
void update_and_sum(T* p, const T* g, T* buf, const GroupLayout& layout,
                    const SgdCoefficients<at::opmath_type<T>>& c, bool decay, bool nesterov,
                    double* out) {
  if (buf == nullptr) {
    return decay ? update_and_sum<true, false, false>(p, g, buf, layout, c, out)
                 : update_and_sum<false, false, false>(p, g, buf, layout, c, out);
  }
  if (nesterov) {
    return decay ? update_and_sum<true, true, true>(p, g, buf, layout, c, out)
                 : update_and_sum<false, true, true>(p, g, buf, layout, c, out);
  }
  return decay ? update_and_sum<true, true, false>(p, g, buf, layout, c, out)
               : update_and_sum<false, true, false>(p, g, buf, layout, c, out);
}

at::Tensor sgd_group_squares_(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                              at::IntArrayRef layout, double lr, double weight_decay,
                              double momentum, double dampening, bool nesterov, bool maximize) {
  const std::vector<GroupedTensor> tensors = check_sgd_squares_args(
      kOp, params, grads, bufs, layout, lr, weight_decay, momentum, dampening, nesterov);
  at::Tensor squares = at::zeros({layout_groups(kOp, layout)},
                                 params.empty() ? at::TensorOptions().dtype(at::kDouble)
                                                : params[0].options().dtype(at::kDouble));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GroupedTensor& t = tensors[i];
    if (t.data.numel() == 0) continue;
    // the kernel works on contiguous copies of strided inputs and writes them back
    at::Tensor p = t.data, g = grads[i].contiguous(),
               buf = bufs.empty() ? at::Tensor() : bufs[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), kOp, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const SgdCoefficients<acc_t> c{
          static_cast<acc_t>(lr), static_cast<acc_t>(weight_decay), static_cast<acc_t>(momentum),
          static_cast<acc_t>(1.0 - dampening), static_cast<acc_t>(maximize ? -1.0 : 1.0)};
      update_and_sum(p.mutable_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                     buf.defined() ? buf.mutable_data_ptr<scalar_t>() : nullptr, t.layout, c,
                     weight_decay != 0.0, nesterov, squares.mutable_data_ptr<double>() + t.offset);
    });
    if (!p.is_same(params[i])) params[i].copy_(p);
    if (buf.defined() && !buf.is_same(bufs[i])) bufs[i].copy_(buf);
  }
  return squares;
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { m.impl("sgd_group_squares_", &sgd_group_squares_); }

}  // namespace wgsef::cpu
