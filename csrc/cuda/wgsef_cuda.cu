// CUDA kernels of every wgsef op. The two streaming passes (group norms, group
// scaling) and the N:M selection are kernels here; the threshold search runs as
// tensor operations on the device (shares_aten.cpp), so no op waits for the host
// except where it validates values (weights, lam) in the single-tensor ops.
//
// Not yet run on a GPU: written and compile-checked on a machine without one.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/split_with_sizes.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "../checks.h"
#include "../shares_aten.h"
#include "wgsef/nm.h"

namespace wgsef::cuda {
namespace {

constexpr int kThreads = 256;

// One block per group: the group's A runs of C elements (strided layout), or
// the elements whose id is g (id layout, each block scans all n elements: only
// for few groups). A fixed reduction order makes the norms deterministic.
template <typename T>
__global__ void strided_sq_norms_kernel(const T* x, int64_t A, int64_t G, int64_t C, double* out) {
  const int64_t g = blockIdx.x;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < A * C; i += blockDim.x) {
    const int64_t a = i / C, c = i % C;
    const double v = static_cast<double>(x[(a * G + g) * C + c]);
    sum += v * v;
  }
  __shared__ double partial[kThreads];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[g] = partial[0];
}

// Group ids: atomics (the summation order, and so the last bits, may vary).
template <typename T>
__global__ void id_sq_norms_kernel(const T* x, const int64_t* ids, int64_t n, int64_t G, double* out,
                                   int* out_of_range) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[i];
    if (id < 0 || id >= G) {
      *out_of_range = 1;
      continue;
    }
    const double v = static_cast<double>(x[i]);
    atomicAdd(out + id, v * v);
  }
}

template <typename T>
__global__ void scale_kernel(const T* src, T* dst, int64_t n, int64_t G, int64_t C, const int64_t* ids,
                             const double* factors) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = ids ? ids[i] : (i / C) % G;
    dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * static_cast<acc_t>(factors[g]));
  }
}

int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

at::Tensor sq_norms(const at::Tensor& x, const GroupArgs& g) {
  at::Tensor out = at::zeros({g.num_groups}, x.options().dtype(at::kDouble));
  if (x.numel() == 0 || g.num_groups == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sq_norms_cuda", [&] {
    if (g.group_ids.defined()) {
      at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
      id_sq_norms_kernel<scalar_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), g.group_ids.const_data_ptr<int64_t>(), x.numel(), g.num_groups,
          out.mutable_data_ptr<double>(), flag.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      TORCH_CHECK_VALUE(flag.item<int>() == 0, "wgsef: group_ids must lie in [0, num_groups = ", g.num_groups, ")");
    } else {
      strided_sq_norms_kernel<scalar_t><<<static_cast<unsigned>(g.num_groups), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), g.outer, g.num_groups, g.inner, out.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

void scale(const at::Tensor& src, const at::Tensor& dst, const GroupArgs& g, const at::Tensor& factors) {
  if (src.numel() == 0) return;
  const at::Tensor f = factors.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scale_cuda", [&] {
    scale_kernel<scalar_t><<<blocks_for(src.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), src.numel(), g.num_groups,
        std::max<int64_t>(g.inner, 1), g.group_ids.defined() ? g.group_ids.const_data_ptr<int64_t>() : nullptr,
        f.const_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Validates weights on the host (a synchronisation): single-tensor ops only.
void check_weights_values(const char* op, const GroupArgs& g) {
  if (!g.weights.defined()) return;
  const at::Tensor host = g.weights.cpu();
  check_host_weights(op, host.const_data_ptr<double>(), g.num_groups);
}

at::Tensor group_norms(const at::Tensor& x, const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupArgs g = check_group_args("group_norms", x, group_ids, num_groups);
  return at::sqrt(sq_norms(x.contiguous(), g)).to(c10::promoteTypes(x.scalar_type(), at::kFloat));
}

at::Tensor value(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& weights,
                 const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  GroupArgs g = check_group_args("value", x, group_ids, num_groups);
  check_k("value", k);
  attach_weights("value", g, x, weights);
  check_weights_values("value", g);
  return device::envelope_value(sq_norms(x.contiguous(), g), g.weights, k).to(x.scalar_type());
}

at::Tensor value_backward(const at::Tensor& grad, const at::Tensor& x, int64_t k,
                          const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& group_ids,
                          int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  GroupArgs g = check_group_args("value_backward", x, group_ids, num_groups);
  check_k("value_backward", k);
  attach_weights("value_backward", g, x, weights);
  const at::Tensor xc = x.contiguous();
  const at::Tensor scales =
      device::envelope_grad_scales(sq_norms(xc, g), g.weights, k) * grad.to(at::kDouble).reshape({});
  at::Tensor out = at::empty_like(xc);
  scale(xc, out, g, scales);
  return out;
}

void prox_into(const char* op, const at::Tensor& src, const at::Tensor& dst, int64_t k, const at::Tensor& lam,
               const std::optional<at::Tensor>& weights, GroupArgs g, bool validate_values) {
  check_k(op, k);
  check_lam_tensor(op, lam);
  attach_weights(op, g, src, weights);
  if (validate_values) {
    check_weights_values(op, g);
    check_lam_value(op, lam.item<double>());
  }
  scale(src, dst, g, device::prox_factors(sq_norms(src, g), g.weights, k, lam));
}

at::Tensor prox(const at::Tensor& x, int64_t k, const at::Tensor& lam, const std::optional<at::Tensor>& weights,
                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupArgs g = check_group_args("prox", x, group_ids, num_groups);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  prox_into("prox", xc, out, k, lam, weights, g, true);
  return out;
}

void prox_(at::Tensor& x, int64_t k, const at::Tensor& lam, const std::optional<at::Tensor>& weights,
           const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupArgs g = check_group_args("prox_", x, group_ids, num_groups);
  const at::Tensor xc = x.contiguous();
  prox_into("prox_", xc, xc, k, lam, weights, g, true);
  if (!xc.is_same(x)) x.copy_(xc);
}

// The optimizer's call: no host synchronisation (values were validated when
// the optimizer was built), so a step can be captured in a CUDA graph.
void prox_multi_(at::TensorList xs, at::IntArrayRef layout, const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k, const at::Tensor& lam,
                 const at::Tensor& scale_by, bool shared) {
  const char* op = "prox_multi_";
  const int64_t n = static_cast<int64_t>(xs.size());
  check_term_lists(op, n, layout, group_ids, weights, k, lam, scale_by, shared);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(xs[0].device());
  std::vector<GroupArgs> groups;
  std::vector<at::Tensor> data, sqs;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor xc = xs[i].contiguous();
    const std::optional<at::Tensor> ids =
        group_ids.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(group_ids.get(i));
    GroupArgs g = ids.has_value()
                      ? check_group_args(op, xc, ids, layout[3 * i + 1])
                      : check_group_args(op, xc.view({layout[3 * i], layout[3 * i + 1], layout[3 * i + 2]}),
                                         std::nullopt, -1);
    if (!weights.empty()) attach_weights(op, g, xc, weights.get(i));
    sqs.push_back(sq_norms(xc, g));
    groups.push_back(g);
    data.push_back(xc);
  }
  const at::Tensor lam_d = lam.to(xs[0].device(), at::kDouble).reshape({-1});
  const at::Tensor step = scale_by.to(xs[0].device(), at::kDouble).reshape({});
  if (!shared) {
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor strength = step * lam_d[lam_d.numel() == 1 ? 0 : i];
      scale(data[i], data[i], groups[i], device::prox_factors(sqs[i], groups[i].weights, k[i], strength));
    }
  } else {
    std::vector<at::Tensor> ds;
    bool weighted = false;
    for (const GroupArgs& g : groups) weighted = weighted || g.weights.defined();
    std::vector<int64_t> sizes;
    for (int64_t i = 0; i < n; ++i) {
      sizes.push_back(groups[i].num_groups);
      if (weighted)
        ds.push_back(groups[i].weights.defined() ? groups[i].weights : at::ones_like(sqs[i]));
    }
    const at::Tensor f = device::prox_factors(at::cat(sqs), weighted ? at::cat(ds) : at::Tensor(), k[0],
                                              step * lam_d[0]);
    const auto slices = at::split_with_sizes(f, sizes);
    for (int64_t i = 0; i < n; ++i) scale(data[i], data[i], groups[i], slices[i]);
  }
  for (int64_t i = 0; i < n; ++i)
    if (!data[i].is_same(xs[i])) xs[i].copy_(data[i]);
}

// ---------------------------------------------------------------- N:M

// One thread per group of m elements at stride `inner`. The n-th largest key
// is found bit by bit (31 or 63 counting passes over the group), then the keys
// above it and the first ties at it are kept: O(m) memory per thread, any m.
template <typename T, typename K>
__global__ void nm_kernel(const T* w, bool* mask, T* out, int64_t outer, int64_t length, int64_t inner, int64_t n,
                          int64_t m, double decay) {
  using acc_t = at::opmath_type<T>;
  const int64_t blocks = length / m;
  const int64_t groups = outer * blocks * inner;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t % inner, ob = t / inner;
    const int64_t base = ((ob / blocks) * length + (ob % blocks) * m) * inner + i;
    auto key = [&](int64_t j) {
      if constexpr (sizeof(K) == 8) {
        return nm::rank_key(static_cast<double>(w[base + j * inner]));
      } else {
        return nm::rank_key(static_cast<float>(w[base + j * inner]));
      }
    };
    K threshold = 0;
    if (n > 0 && n < m) {
      for (int bit = int(sizeof(K) * 8) - 2; bit >= 0; --bit) {
        const K candidate = threshold | (K(1) << bit);
        int64_t count = 0;
        for (int64_t j = 0; j < m; ++j) count += key(j) >= candidate;
        if (count >= n) threshold = candidate;
      }
    }
    int64_t ties = n;
    if (n > 0 && n < m)
      for (int64_t j = 0; j < m; ++j) ties -= key(j) > threshold;
    for (int64_t j = 0; j < m; ++j) {
      bool keep;
      if (n >= m || n <= 0) {
        keep = n > 0;
      } else {
        const K kj = key(j);
        const bool tie = kj == threshold && ties > 0;
        ties -= tie;
        keep = kj > threshold || tie;
      }
      const int64_t e = base + j * inner;
      if (mask) mask[e] = keep;
      if (out) out[e] = static_cast<T>(static_cast<acc_t>(w[e]) * (keep ? acc_t(1) : static_cast<acc_t>(decay)));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nm_run(const char* op, const at::Tensor& w, int64_t n, int64_t m, int64_t dim,
                                          std::optional<double> decay, bool keep_mask) {
  check_floating_x(op, w);
  TORCH_CHECK_VALUE(m >= 1 && n >= 0 && n <= m, "wgsef.", op, ": need 0 <= n <= m and m >= 1, got ", n, ":", m);
  TORCH_CHECK_VALUE(w.dim() >= 1 && dim >= -w.dim() && dim < w.dim(), "wgsef.", op, ": dim ", dim,
                    " is out of range for a ", w.dim(), "-D tensor");
  const int64_t d = dim < 0 ? dim + w.dim() : dim;
  TORCH_CHECK_VALUE(w.size(d) % m == 0, "wgsef.", op, ": the size of dim ", dim, " (", w.size(d),
                    ") must be a multiple of m = ", m);
  const c10::cuda::CUDAGuard guard(w.device());
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= w.size(i);
  for (int64_t i = d + 1; i < w.dim(); ++i) inner *= w.size(i);
  const at::Tensor wc = w.contiguous();
  at::Tensor mask = at::empty(keep_mask ? wc.sizes() : at::IntArrayRef{0}, wc.options().dtype(at::kBool));
  at::Tensor out = decay ? at::empty_like(wc) : at::Tensor();
  const int64_t groups = outer * (w.size(d) / m) * inner;
  if (groups == 0) return {out, mask};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "nm_cuda", [&] {
    using K = std::conditional_t<std::is_same_v<scalar_t, double>, uint64_t, uint32_t>;
    nm_kernel<scalar_t, K><<<blocks_for(groups), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        wc.const_data_ptr<scalar_t>(), keep_mask ? mask.mutable_data_ptr<bool>() : nullptr,
        decay ? out.mutable_data_ptr<scalar_t>() : nullptr, outer, w.size(d), inner, n, m, decay.value_or(0.0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mask};
}

at::Tensor nm_mask(const at::Tensor& w, int64_t n, int64_t m, int64_t dim) {
  return std::get<1>(nm_run("nm_mask", w, n, m, dim, std::nullopt, true));
}

std::tuple<at::Tensor, at::Tensor> nm_decay(const at::Tensor& w, int64_t n, int64_t m, int64_t dim,
                                            const at::Tensor& decay, c10::string_view grad_mode, double srste_weight) {
  TORCH_CHECK_VALUE(decay.numel() == 1, "wgsef.nm_decay: decay must be a one-element tensor");
  TORCH_CHECK_VALUE(grad_mode == "ste" || grad_mode == "scaled",
                    "wgsef.nm_decay: grad_mode must be 'ste' or 'scaled', got '", grad_mode, "'");
  // the kernel takes D by value: read once on the host
  const double dv = decay.item<double>();
  TORCH_CHECK_VALUE(dv >= 0.0 && dv <= 1.0, "wgsef.nm_decay: decay must lie in [0, 1], got ", dv);
  return nm_run("nm_decay", w, n, m, dim, dv, grad_mode == "scaled" || srste_weight > 0.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CUDA, m) {
  m.impl("group_norms", &group_norms);
  m.impl("value", &value);
  m.impl("value_backward", &value_backward);
  m.impl("prox", &prox);
  m.impl("prox_", &prox_);
  m.impl("prox_multi_", &prox_multi_);
  m.impl("nm_mask", &nm_mask);
  m.impl("nm_decay", &nm_decay);
}

}  // namespace wgsef::cuda
