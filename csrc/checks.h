// Argument validation shared by every backend's kernels. Messages name the
// argument and what was expected; value errors raise ValueError, dtype errors
// TypeError.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace wgsef {

// How x splits into groups, after validation (wgsef.groups.GroupLayout on the
// Python side).
struct GroupLayout {
  int64_t num_groups = 0;
  int64_t outer = 1, inner = 1;  // strided layout: x viewed as (outer, num_groups, inner)
  at::Tensor group_ids;          // int64, contiguous; undefined for the strided layout
  at::Tensor weights;            // float64, contiguous, on x's device; undefined = all 1

  const double* weight_data() const {
    return weights.defined() ? weights.const_data_ptr<double>() : nullptr;
  }
};

// name: the argument (with index >= 0, entry `index` of a list argument).
inline void check_floating_x(const char* op, const at::Tensor& x, const char* name = "x",
                             int64_t index = -1) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "wgsef.", op, ": ", name, index >= 0 ? "[" + std::to_string(index) + "]" : "",
                   " must be a float16, bfloat16, float32 or float64 tensor, got ", t);
}

inline void check_k(const char* op, int64_t k) {
  TORCH_CHECK_VALUE(k >= 0, "wgsef.", op, ": k must be >= 0, got ", k);
}

// Group weights as float64, after their dtype, shape (one entry per `kind`:
// "group", "coupled group") and device are checked; their values are checked
// separately (check_weight_values, check_host_weights).
inline at::Tensor checked_weights(const char* op, const at::Tensor& w, int64_t count,
                                  const char* kind, const c10::Device& device) {
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "wgsef.", op,
                   ": weights must be a floating-point tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.numel() == count, "wgsef.", op,
                    ": weights must be 1-D with one entry per ", kind, " (", count, "), got shape ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.device() == device, "wgsef.", op, ": weights must be on x's device ", device,
                    ", got ", w.device());
  return w.to(at::kDouble).contiguous();
}

inline void attach_weights(const char* op, GroupLayout& g, const at::Tensor& x,
                           const std::optional<at::Tensor>& weights) {
  if (weights.has_value())
    g.weights = checked_weights(op, *weights, g.num_groups, "group", x.device());
}

// How x splits into groups, with its weights attached. With group_ids, the ids
// themselves are range-checked by the kernels' first pass, which reads them
// anyway and comes before any output is written.
inline GroupLayout check_group_layout(const char* op, const at::Tensor& x,
                                      const std::optional<at::Tensor>& group_ids,
                                      int64_t num_groups,
                                      const std::optional<at::Tensor>& weights) {
  check_floating_x(op, x);
  GroupLayout g;
  if (group_ids.has_value()) {
    const at::Tensor& ids = *group_ids;
    TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "wgsef.", op,
                     ": group_ids must be an int64 tensor, got ", ids.scalar_type());
    TORCH_CHECK_VALUE(ids.sizes() == x.sizes(), "wgsef.", op, ": group_ids must have x's shape ",
                      x.sizes(), ", got ", ids.sizes());
    TORCH_CHECK_VALUE(ids.device() == x.device(), "wgsef.", op,
                      ": group_ids must be on x's device ", x.device(), ", got ", ids.device());
    TORCH_CHECK_VALUE(num_groups >= 0, "wgsef.", op,
                      ": num_groups must be >= 0 when group_ids is given, got ", num_groups);
    // per-group memory follows num_groups: without weights to match, more groups
    // than elements means empty groups, which change nothing (wgsef.groups.renumbered)
    TORCH_CHECK_VALUE(weights.has_value() || num_groups <= std::max<int64_t>(x.numel(), 1),
                      "wgsef.", op, ": num_groups (", num_groups,
                      ") exceeds the number of elements (", x.numel(),
                      "); renumber the group ids to the groups in use");
    g.group_ids = ids.contiguous();
    g.num_groups = num_groups;
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, "wgsef.", op,
                      ": without group_ids, x must be a 3-D view (outer, groups, inner), got ",
                      x.dim(), " dims");
    TORCH_CHECK_VALUE(num_groups == -1 || num_groups == x.size(1), "wgsef.", op,
                      ": num_groups must be -1 or x.size(1) = ", x.size(1),
                      " without group_ids, got ", num_groups);
    g.outer = x.size(0);
    g.num_groups = x.size(1);
    g.inner = x.size(2);
  }
  attach_weights(op, g, x, weights);
  return g;
}

inline void check_host_weights(const char* op, const double* d, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(d[i] > 0.0 && d[i] < std::numeric_limits<double>::infinity(), "wgsef.", op,
                      ": weights must be positive and finite, got weights[", i, "] = ", d[i]);
  }
}

// The weights' values, read on the host (a copy, and a synchronisation, for
// weights on a device).
inline void check_weight_values(const char* op, const GroupLayout& g) {
  if (!g.weights.defined()) return;
  const at::Tensor host = g.weights.cpu();
  check_host_weights(op, host.const_data_ptr<double>(), g.num_groups);
}

// A hyperparameter passed as a tensor (lam, lr): one real element.
inline void check_scalar_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() == 1, "wgsef.", op, ": ", name,
                    " must be a one-element tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(!t.is_complex() && t.scalar_type() != at::kBool, "wgsef.", op, ": ", name,
                   " must be real, got ", t.scalar_type());
}

inline void check_nonnegative(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && v < std::numeric_limits<double>::infinity(), "wgsef.", op, ": ",
                    name, " must be finite and >= 0, got ", v);
}

// value, value_backward: x's groups and weights, k, and the weights' values.
inline GroupLayout check_value_args(const char* op, const at::Tensor& x, int64_t k,
                                    const std::optional<at::Tensor>& weights,
                                    const std::optional<at::Tensor>& group_ids,
                                    int64_t num_groups) {
  GroupLayout g = check_group_layout(op, x, group_ids, num_groups, weights);
  check_k(op, k);
  check_weight_values(op, g);
  return g;
}

inline void check_upstream_grad(const at::Tensor& grad) {
  TORCH_CHECK_VALUE(grad.numel() == 1,
                    "wgsef.value_backward: grad must have one element, got shape ", grad.sizes());
}

// prox, prox_: as value, plus lam (read on the host).
struct ProxArgs {
  GroupLayout layout;
  double lam;
};

inline ProxArgs check_prox_args(const char* op, const at::Tensor& x, int64_t k,
                                const at::Tensor& lam, const std::optional<at::Tensor>& weights,
                                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  ProxArgs a{check_value_args(op, x, k, weights, group_ids, num_groups), 0.0};
  check_scalar_tensor(op, "lam", lam);
  a.lam = lam.item<double>();
  check_nonnegative(op, "lam", a.lam);
  return a;
}

// One tensor of a multi-tensor call with its group layout; offset is where its
// groups start in the call's per-group arrays (norms, factors).
struct GroupedTensor {
  at::Tensor data;  // contiguous: what the kernels read and write
  GroupLayout layout;
  int64_t offset = 0;
};

// xs[i] of prox_multi_: its layout entry (outer, groups, inner) or, with
// group_ids[i] given, its ids and number of groups, and its weights. data is
// xs[i] made contiguous.
inline GroupedTensor check_grouped_tensor(const char* op, const at::Tensor& x, int64_t i,
                                          at::IntArrayRef layout,
                                          const c10::List<std::optional<at::Tensor>>& group_ids,
                                          const c10::List<std::optional<at::Tensor>>& weights,
                                          int64_t offset, const char* name = "xs") {
  check_floating_x(op, x, name, i);
  GroupedTensor t{x.contiguous(), {}, offset};
  const std::optional<at::Tensor> ids =
      group_ids.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(group_ids.get(i));
  const std::optional<at::Tensor> w =
      weights.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(weights.get(i));
  GroupLayout& g = t.layout;
  if (ids.has_value()) {
    g = check_group_layout(op, t.data, ids, layout[3 * i + 1], w);
  } else {
    g.outer = layout[3 * i];
    g.num_groups = layout[3 * i + 1];
    g.inner = layout[3 * i + 2];
    int64_t size = 0;
    const bool any_zero = g.outer == 0 || g.num_groups == 0 || g.inner == 0;
    const bool overflows = !any_zero && (__builtin_mul_overflow(g.outer, g.num_groups, &size) ||
                                         __builtin_mul_overflow(size, g.inner, &size));
    TORCH_CHECK_VALUE(
        g.outer >= 0 && g.num_groups >= 0 && g.inner >= 0 && !overflows && size == x.numel(),
        "wgsef.", op, ": layout entry ", i, " (", g.outer, ", ", g.num_groups, ", ", g.inner,
        ") does not cover the ", x.numel(), " elements of ", name, "[", i, "]",
        overflows ? " (its product overflows int64)" : "");
    attach_weights(op, g, x, w);
  }
  if (x.numel() == 0) {
    // no elements: every group is empty and changes nothing, so the call keeps
    // no per-group memory for them, however many the layout declares
    g = GroupLayout{};
    g.outer = g.inner = 0;
  }
  return t;
}

// lam (1 or `terms` entries) and lr of the multi-tensor ops: shapes, and the
// values held on the host (CPU tensors). Values on a device are not read back,
// so that the call can be captured in a CUDA graph; ProxSGD checks them.
inline void check_strengths(const char* op, const at::Tensor& lam, const at::Tensor& lr,
                            int64_t terms) {
  check_scalar_tensor(op, "lr", lr);
  TORCH_CHECK_VALUE(lam.dim() <= 1 && (lam.numel() == 1 || lam.numel() == terms), "wgsef.", op,
                    ": lam must have 1 or ", terms, " entries, got shape ", lam.sizes());
  TORCH_CHECK_TYPE(!lam.is_complex() && lam.scalar_type() != at::kBool, "wgsef.", op,
                   ": lam must be real, got ", lam.scalar_type());
  const at::Tensor lams = lam.device().is_cpu() ? lam.to(at::kDouble).contiguous() : at::Tensor();
  if (lams.defined())
    for (int64_t i = 0; i < lam.numel(); ++i)
      check_nonnegative(op, "lam", lams.const_data_ptr<double>()[i]);
  if (lr.device().is_cpu()) {
    const double step = lr.item<double>();
    check_nonnegative(op, "lr", step);
    if (lams.defined())
      for (int64_t i = 0; i < lam.numel(); ++i)
        check_nonnegative(op, "lr * lam", step * lams.const_data_ptr<double>()[i]);
  }
}

// A tensor an op writes in place: no two elements may share memory (an expanded view).
inline void check_writable(const char* op, const char* name, const at::Tensor& t, int64_t i) {
  TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, "wgsef.", op, ": ", name,
                    "[", i,
                    "] has elements that share memory (an expanded view); pass a tensor "
                    "that owns each element");
}

// The tensors an op writes in place (named lists, all on one device) must not
// share memory with one another: each is updated through its own pass or
// contiguous copy, so one's result would compound or overwrite another's.
// Sorted by address, only tensors whose address ranges overlap are compared,
// as torch compares an in-place op's arguments (at::get_overlap_status): dense
// tensors exactly; strided views that interleave (columns of one matrix) are
// taken as disjoint unless they are the same view.
inline void check_disjoint(const char* op,
                           std::initializer_list<std::pair<const char*, at::TensorList>> lists) {
  struct Span {
    uintptr_t begin, end;
    const at::Tensor* t;
    const char* name;
    size_t index;
  };
  std::vector<Span> spans;
  for (const auto& [name, xs] : lists) {
    for (size_t i = 0; i < xs.size(); ++i) {
      const at::Tensor& t = xs[i];
      if (t.numel() == 0 || t.const_data_ptr() == nullptr) continue;
      int64_t last = 0;  // offset of the last element, in elements
      for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
      const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
      spans.push_back(
          {begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size()), &t, name, i});
    }
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::vector<const Span*> open;  // earlier spans that reach past the current one's start
  for (const Span& b : spans) {
    open.erase(
        std::remove_if(open.begin(), open.end(), [&](const Span* a) { return a->end <= b.begin; }),
        open.end());
    for (const Span* a : open) {
      const at::MemOverlapStatus status = at::get_overlap_status(*a->t, *b.t);
      const bool same_view = a->t->const_data_ptr() == b.t->const_data_ptr() &&
                             a->t->sizes() == b.t->sizes() && a->t->strides() == b.t->strides();
      TORCH_CHECK_VALUE(
          status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial &&
              !same_view,
          "wgsef.", op, ": ", a->name, "[", a->index, "] and ", b.name, "[", b.index,
          "] share memory; every tensor the op writes in place needs memory of its own");
    }
    open.push_back(&b);
  }
}

// The tensors of an in-place multi-tensor op: every one on xs[0]'s device,
// writable, with a valid layout entry or group ids, and its weights (values
// checked for CPU tensors).
inline std::vector<GroupedTensor> check_tensor_list(
    const char* op, at::TensorList xs, at::IntArrayRef layout,
    const c10::List<std::optional<at::Tensor>>& group_ids,
    const c10::List<std::optional<at::Tensor>>& weights, const char* name = "xs") {
  const int64_t n = static_cast<int64_t>(xs.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(layout.size()) == 3 * n, "wgsef.", op,
                    ": layout must have 3 entries per tensor (", 3 * n, "), got ", layout.size());
  TORCH_CHECK_VALUE(group_ids.empty() || static_cast<int64_t>(group_ids.size()) == n, "wgsef.", op,
                    ": group_ids must be empty or have one entry per tensor");
  TORCH_CHECK_VALUE(weights.empty() || static_cast<int64_t>(weights.size()) == n, "wgsef.", op,
                    ": weights must be empty or have one entry per tensor");
  std::vector<GroupedTensor> tensors;
  tensors.reserve(n);
  int64_t offset = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(xs[i].device() == xs[0].device(), "wgsef.", op, ": every tensor must be on ",
                      name, "[0]'s device ", xs[0].device(), ", got ", name, "[", i, "] on ",
                      xs[i].device());
    check_writable(op, name, xs[i], i);
    tensors.push_back(check_grouped_tensor(op, xs[i], i, layout, group_ids, weights, offset, name));
    if (xs[i].device().is_cpu()) check_weight_values(op, tensors.back().layout);
    offset += tensors.back().layout.num_groups;
  }
  check_disjoint(op, {{name, xs}});
  return tensors;
}

// prox_multi_ on every backend: k per term (one per tensor, or one shared),
// lam and lr, then the tensors; nothing is written before this returns.
inline std::vector<GroupedTensor> check_prox_multi_args(
    const char* op, at::TensorList xs, at::IntArrayRef layout,
    const c10::List<std::optional<at::Tensor>>& group_ids,
    const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k, const at::Tensor& lam,
    const at::Tensor& lr, bool shared) {
  const int64_t n = static_cast<int64_t>(xs.size());
  const int64_t terms = shared ? 1 : n;
  TORCH_CHECK_VALUE(static_cast<int64_t>(k.size()) == terms, "wgsef.", op, ": k must have ", terms,
                    " entries (", shared ? "shared budget" : "one per tensor", "), got ", k.size());
  for (int64_t kk : k) check_k(op, kk);
  check_strengths(op, lam, lr, terms);
  return check_tensor_list(op, xs, layout, group_ids, weights);
}

// The groups of all tensors of a strided layout list (outer, groups, inner per tensor).
inline int64_t layout_groups(const char* op, at::IntArrayRef layout) {
  int64_t total = 0;
  for (size_t i = 1; i < layout.size(); i += 3)
    TORCH_CHECK_VALUE(!__builtin_add_overflow(total, layout[i], &total), "wgsef.", op,
                      ": layout's group counts add up to more than int64 holds");
  return total;
}

// sgd_group_squares_: torch.optim.SGD's rules for the hyperparameters, grads
// and momentum buffers shaped like their params, and the params' layouts.
inline std::vector<GroupedTensor> check_sgd_squares_args(const char* op, at::TensorList params,
                                                         at::TensorList grads, at::TensorList bufs,
                                                         at::IntArrayRef layout, double lr,
                                                         double weight_decay, double momentum,
                                                         double dampening, bool nesterov) {
  check_nonnegative(op, "lr", lr);
  check_nonnegative(op, "weight_decay", weight_decay);
  check_nonnegative(op, "momentum", momentum);
  TORCH_CHECK_VALUE(std::isfinite(dampening), "wgsef.", op, ": dampening must be finite, got ",
                    dampening);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0.0 && dampening == 0.0), "wgsef.", op,
                    ": nesterov needs momentum > 0 and dampening = 0, got momentum = ", momentum,
                    " and dampening = ", dampening);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n, "wgsef.", op, ": grads must have one entry per param (", n,
                    "), got ", grads.size());
  const size_t expected_bufs = momentum != 0.0 ? n : 0;
  TORCH_CHECK_VALUE(bufs.size() == expected_bufs, "wgsef.", op, ": momentum_buffers must have ",
                    expected_bufs, " entries (",
                    momentum != 0.0 ? "one per param" : "momentum is 0", "), got ", bufs.size());
  const auto check_like = [&](const char* name, const at::Tensor& t, const at::Tensor& p,
                              size_t i) {
    TORCH_CHECK_VALUE(t.sizes() == p.sizes() && t.device() == p.device() &&
                          t.scalar_type() == p.scalar_type() && t.layout() == at::kStrided,
                      "wgsef.", op, ": ", name, "[", i, "] must be a dense tensor like params[", i,
                      "] (", p.sizes(), ", ", p.scalar_type(), ", ", p.device(), "), got ",
                      t.sizes(), ", ", t.scalar_type(), ", ", t.device(), ", ", t.layout());
  };
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(params[i].layout() == at::kStrided, "wgsef.", op, ": params[", i,
                      "] must be a dense tensor, got ", params[i].layout());
    check_like("grads", grads[i], params[i], i);
    if (expected_bufs) {
      check_like("momentum_buffers", bufs[i], params[i], i);
      check_writable(op, "momentum_buffers", bufs[i], i);
    }
  }
  const c10::List<std::optional<at::Tensor>> none;  // no group ids, no weights
  std::vector<GroupedTensor> tensors = check_tensor_list(op, params, layout, none, none, "params");
  check_disjoint(op, {{"params", params}, {"momentum_buffers", bufs}});
  layout_groups(op, layout);
  // offsets from the layout: a param without elements keeps its (zero) entries
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    tensors[i].offset = offset;
    offset += layout[3 * i + 1];
  }
  return tensors;
}

// prox_coupled_, after validation: the tensors with their own groups, each
// one's map to the coupled groups, and the coupled groups' weights.
struct CoupledArgs {
  std::vector<GroupedTensor> tensors;
  std::vector<at::Tensor> coupling;  // int64, contiguous, on the tensors' device
  int64_t num_coupled = 0;           // G = sum(term_sizes)
  at::Tensor weights;                // float64, contiguous, G entries; undefined = all 1

  const double* weight_data() const {
    return weights.defined() ? weights.const_data_ptr<double>() : nullptr;
  }
};

inline CoupledArgs check_prox_coupled_args(const char* op, at::TensorList xs,
                                           at::IntArrayRef layout,
                                           const c10::List<std::optional<at::Tensor>>& group_ids,
                                           at::TensorList coupling, at::IntArrayRef term_sizes,
                                           const std::optional<at::Tensor>& weights,
                                           at::IntArrayRef k, const at::Tensor& lam,
                                           const at::Tensor& lr) {
  const int64_t n = static_cast<int64_t>(xs.size());
  const int64_t terms = static_cast<int64_t>(term_sizes.size());
  CoupledArgs a;
  for (int64_t t = 0; t < terms; ++t) {
    TORCH_CHECK_VALUE(term_sizes[t] >= 0, "wgsef.", op, ": term_sizes must be >= 0, got ",
                      term_sizes[t], " at ", t);
    a.num_coupled += term_sizes[t];
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(k.size()) == terms, "wgsef.", op,
                    ": k must have one entry per term (", terms, "), got ", k.size());
  for (int64_t kk : k) check_k(op, kk);
  check_strengths(op, lam, lr, terms);
  TORCH_CHECK_VALUE(static_cast<int64_t>(coupling.size()) == n, "wgsef.", op,
                    ": coupling must have one entry per tensor (", n, "), got ", coupling.size());
  const c10::List<std::optional<at::Tensor>> no_weights;
  a.tensors = check_tensor_list(op, xs, layout, group_ids, no_weights);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& c = coupling[i];
    const int64_t declared = layout[3 * i + 1];
    TORCH_CHECK_TYPE(c.scalar_type() == at::kLong, "wgsef.", op,
                     ": coupling must hold int64 tensors, got ", c.scalar_type(), " at ", i);
    TORCH_CHECK_VALUE(c.dim() == 1 && c.numel() == declared, "wgsef.", op, ": coupling[", i,
                      "] must be 1-D with one entry per group of xs[", i, "] (", declared,
                      "), got shape ", c.sizes());
    TORCH_CHECK_VALUE(c.device() == xs[i].device(), "wgsef.", op, ": coupling[", i,
                      "] must be on xs[", i, "]'s device ", xs[i].device(), ", got ", c.device());
    // read on the host (for a device tensor, a synchronisation, as for group ids)
    if (c.numel() > 0) {
      const at::Tensor host = c.cpu();
      const int64_t* v = host.const_data_ptr<int64_t>();
      const auto [lo, hi] = std::minmax_element(v, v + c.numel());
      TORCH_CHECK_VALUE(*lo >= 0 && *hi < a.num_coupled, "wgsef.", op, ": coupling[", i,
                        "] must lie in [0, ", a.num_coupled, ") (the sum of term_sizes), got ",
                        *lo < 0 ? *lo : *hi);
    }
    a.coupling.push_back(a.tensors[i].layout.num_groups == 0 ? c.narrow(0, 0, 0) : c.contiguous());
  }
  if (weights.has_value()) {
    a.weights = checked_weights(op, *weights, a.num_coupled, "coupled group",
                                n > 0 ? xs[0].device() : weights->device());
    if (a.weights.device().is_cpu())
      check_host_weights(op, a.weights.const_data_ptr<double>(), a.num_coupled);
  }
  return a;
}

// How w splits into N:M groups along dim, after validation.
struct NMLayout {
  int64_t outer, length, inner;  // w viewed as (outer, length, inner); groups run along length
};

inline NMLayout check_nm_args(const char* op, const at::Tensor& w, int64_t n, int64_t m,
                              int64_t dim) {
  check_floating_x(op, w, "w");
  TORCH_CHECK_VALUE(m >= 1, "wgsef.", op, ": m must be >= 1, got ", m);
  TORCH_CHECK_VALUE(n >= 0 && n <= m, "wgsef.", op, ": n must lie in [0, m = ", m, "], got ", n);
  TORCH_CHECK_VALUE(m <= std::numeric_limits<int32_t>::max(), "wgsef.", op, ": m is too large");
  TORCH_CHECK_VALUE(w.dim() >= 1, "wgsef.", op, ": w must have at least 1 dimension");
  TORCH_CHECK_VALUE(dim >= -w.dim() && dim < w.dim(), "wgsef.", op, ": dim ", dim,
                    " is out of range for a ", w.dim(), "-D tensor");
  const int64_t d = dim < 0 ? dim + w.dim() : dim;
  TORCH_CHECK_VALUE(w.size(d) % m == 0, "wgsef.", op, ": the size of dim ", dim, " (", w.size(d),
                    ") must be a multiple of m = ", m);
  NMLayout l{1, w.size(d), 1};
  for (int64_t i = 0; i < d; ++i) l.outer *= w.size(i);
  for (int64_t i = d + 1; i < w.dim(); ++i) l.inner *= w.size(i);
  return l;
}

// nm_decay's decay D (read on the host: the kernels take it by value),
// grad_mode and srste_weight; returns D.
inline double check_nm_decay_args(const at::Tensor& decay, c10::string_view grad_mode,
                                  double srste_weight) {
  TORCH_CHECK_VALUE(decay.numel() == 1,
                    "wgsef.nm_decay: decay must be a one-element tensor, got shape ",
                    decay.sizes());
  const double d = decay.item<double>();
  TORCH_CHECK_VALUE(d >= 0.0 && d <= 1.0, "wgsef.nm_decay: decay must lie in [0, 1], got ", d);
  TORCH_CHECK_VALUE(grad_mode == "ste" || grad_mode == "scaled",
                    "wgsef.nm_decay: grad_mode must be 'ste' or 'scaled', got '", grad_mode, "'");
  TORCH_CHECK_VALUE(srste_weight >= 0.0, "wgsef.nm_decay: srste_weight must be >= 0, got ",
                    srste_weight);
  return d;
}

}  // namespace wgsef
