// CUDA kernels of the WGSEF ops. A call runs three kernels: squared group
// norms, the threshold search (one block per WGSEF term), and the group
// scaling, each launched once per run of up to kMaxEntries tensors of one
// dtype, whose table is passed by value (docs/design.md §3.2). Nothing waits
// for the host except the checks of values the single-tensor ops validate
// (weights, lam on the device) and group ids, so prox_multi_ on strided
// layouts can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_add.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "cuda_common.cuh"
#include "wgsef/threshold.h"

namespace wgsef::cuda {
namespace {

constexpr int kWarps = kThreads / 32;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs one launch per run of up to kMaxEntries tensors of one dtype, in order:
// add(table, i) adds tensors[i]'s entry (or skips it), launch(table, dtype) runs.
template <typename Entry, typename Add, typename Launch>
void launch_in_tables(const std::vector<GroupedTensor>& tensors, const std::vector<size_t>& indices,
                      Add add, Launch launch) {
  for (size_t begin = 0; begin < indices.size();) {
    const at::ScalarType dtype = tensors[indices[begin]].data.scalar_type();
    BlockTable<Entry> table{};
    size_t end = begin;
    for (;
         end < indices.size() && !table.full() && tensors[indices[end]].data.scalar_type() == dtype;
         ++end)
      add(table, indices[end]);
    begin = end;
    if (table.count > 0) launch(table, dtype);
  }
}

// ---------------------------------------------------------------- group norms

struct NormEntry {
  const void* x;
  int64_t outer, groups, inner;
  double* out;
  bool by_thread;  // groups of fewer than 32 elements: a thread per group, else a warp
};

// Squares of one 16-byte vector, summed in float64: the square of any finite
// float or 16-bit value neither overflows nor underflows there.
template <typename T, int W>
__device__ inline double squares(const Vec<T, W>& v) {
  double s = 0;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const double a = static_cast<double>(v.val[i]);
    s += a * a;
  }
  return s;
}

// ||x_g||^2 in float64, summed in a fixed order (deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    group_sq_norms_kernel(const BlockTable<NormEntry> table) {
  constexpr int W = kVecWidth<T>;
  using V = Vec<T, W>;
  int64_t block;
  const NormEntry& e = table.locate(block);
  const T* x = static_cast<const T*>(e.x);
  const int64_t A = e.outer, G = e.groups, C = e.inner;
  if (e.by_thread) {
    const int64_t g = block * kThreads + threadIdx.x;
    if (g >= G) return;
    double sum = 0.0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t c = 0; c < C; ++c) {
        const double v = static_cast<double>(x[(a * G + g) * C + c]);
        sum += v * v;
      }
    e.out[g] = sum;
    return;
  }
  const int64_t g = block * kWarps + threadIdx.x / 32;
  if (g >= G) return;  // the whole warp
  const int lane = threadIdx.x % 32;
  double sum = 0.0;
  if (C % W == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const int64_t nv = C / W;
    constexpr int kInFlight = 8;  // predicated loads per lane, issued before any use
    for (int64_t a = 0; a < A; ++a) {
      const V* run = reinterpret_cast<const V*>(x + (a * G + g) * C);
      for (int64_t j = lane; j < nv; j += 32 * kInFlight) {
        V v[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
          if (j + 32 * u < nv) v[u] = run[j + 32 * u];
        double part = 0;
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
          if (j + 32 * u < nv) part += squares(v[u]);
        sum += part;
      }
    }
  } else if (C >= 32) {
    for (int64_t a = 0; a < A; ++a) {
      const T* run = x + (a * G + g) * C;
      for (int64_t c = lane; c < C; c += 32) {
        const double v = static_cast<double>(run[c]);
        sum += v * v;
      }
    }
  } else {  // short runs: the warp walks (a, c) as one index
    for (int64_t i = lane; i < A * C; i += 32) {
      const int64_t a = i / C;
      const double v = static_cast<double>(x[(a * G + g) * C + (i - a * C)]);
      sum += v * v;
    }
  }
  sum = warp_sum(sum);
  if (lane == 0) e.out[g] = sum;
}

// Group ids: atomics (the summation order, and so the last bits, may vary).
template <typename T>
__global__ void id_sq_norms_kernel(const T* x, const int64_t* ids, int64_t n, int64_t G,
                                   double* out, int* out_of_range) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[i];
    if (id < 0 || id >= G) {
      *out_of_range = 1;
      continue;
    }
    const double v = static_cast<double>(x[i]);
    atomicAdd(out + id, v * v);
  }
}

// Squared norms of tensors[i] into norms + tensors[i].offset. Group ids are checked
// on the host (a synchronisation); strided layouts never wait.
void launch_sq_norms(const std::vector<GroupedTensor>& tensors, double* norms) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<size_t> strided;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GroupedTensor& t = tensors[i];
    if (!t.layout.group_ids.defined()) {
      strided.push_back(i);
      continue;
    }
    double* out = norms + t.offset;
    C10_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * t.layout.num_groups, stream));
    if (t.data.numel() == 0) continue;
    at::Tensor flag = at::zeros({1}, t.data.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, t.data.scalar_type(), "id_sq_norms_cuda", [&] {
          id_sq_norms_kernel<scalar_t><<<grid_stride_blocks(t.data.numel()), kThreads, 0, stream>>>(
              t.data.const_data_ptr<scalar_t>(), t.layout.group_ids.const_data_ptr<int64_t>(),
              t.data.numel(), t.layout.num_groups, out, flag.mutable_data_ptr<int>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    TORCH_CHECK_VALUE(flag.item<int>() == 0,
                      "wgsef: group_ids must lie in [0, num_groups = ", t.layout.num_groups, ")");
  }
  launch_in_tables<NormEntry>(
      tensors, strided,
      [&](BlockTable<NormEntry>& table, size_t i) {
        const GroupLayout& g = tensors[i].layout;
        if (g.num_groups == 0) return;
        const bool by_thread = g.outer * g.inner < 32;
        table.add({.x = tensors[i].data.const_data_ptr(),
                   .outer = g.outer,
                   .groups = g.num_groups,
                   .inner = g.inner,
                   .out = norms + tensors[i].offset,
                   .by_thread = by_thread},
                  ceil_div(g.num_groups, by_thread ? kThreads : kWarps));
      },
      [&](const BlockTable<NormEntry>& table, at::ScalarType dtype) {
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, dtype, "group_sq_norms_cuda", [&] {
              group_sq_norms_kernel<scalar_t>
                  <<<static_cast<unsigned>(table.blocks), kThreads, 0, stream>>>(table);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      });
}

// ---------------------------------------------------------------- scaling

constexpr int kScaleUnroll = 4;  // 16-byte vectors per thread

// n / d for n < 2^31 by a multiply and a shift (Granlund and Montgomery,
// "Division by invariant integers using multiplication", 1994).
struct Divider {
  uint32_t magic = 1, shift = 0;
  explicit Divider(uint32_t d = 1) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ uint32_t operator()(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// The group of element i: (i / C) % G.
struct GroupIndex {
  int64_t inner, groups;
  bool narrow;  // fewer than 2^31 elements: the dividers apply
  Divider by_inner, by_groups;
  __device__ int64_t operator()(int64_t i) const {
    if (!narrow) return i / inner % groups;
    const uint32_t row = by_inner(static_cast<uint32_t>(i));
    return row - by_groups(row) * static_cast<uint32_t>(groups);
  }
};

GroupIndex group_index(int64_t numel, int64_t groups, int64_t inner) {
  const bool narrow = numel < (int64_t{1} << 31);
  return {inner, groups, narrow, Divider(narrow ? static_cast<uint32_t>(inner) : 1),
          Divider(narrow ? static_cast<uint32_t>(groups) : 1)};
}

struct ScaleEntry {
  const void* src;
  void* dst;
  int64_t numel;
  GroupIndex group;
  const double* factors;
};

// dst = factors[group] * src, in place when dst == src.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scale_groups_kernel(const BlockTable<ScaleEntry> table) {
  using acc_t = at::opmath_type<T>;
  constexpr int W = kVecWidth<T>;
  using V = Vec<T, W>;
  int64_t block;
  const ScaleEntry& e = table.locate(block);
  const T* src = static_cast<const T*>(e.src);
  T* dst = static_cast<T*>(e.dst);
  const int64_t n = e.numel, C = e.group.inner;
  if (C % W == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const int64_t first = block * kThreads * kScaleUnroll + threadIdx.x, nv = n / W;
    V v[kScaleUnroll];
#pragma unroll
    for (int u = 0; u < kScaleUnroll; ++u)  // every load before any store: src may be dst
      if (first + u * kThreads < nv) v[u] = reinterpret_cast<const V*>(src)[first + u * kThreads];
#pragma unroll
    for (int u = 0; u < kScaleUnroll; ++u) {
      const int64_t j = first + u * kThreads;
      if (j >= nv) break;
      const acc_t f = static_cast<acc_t>(e.factors[e.group(j * W)]);
#pragma unroll
      for (int i = 0; i < W; ++i) v[u].val[i] = static_cast<T>(static_cast<acc_t>(v[u].val[i]) * f);
      reinterpret_cast<V*>(dst)[j] = v[u];
    }
  } else {
    const int64_t first = block * kThreads * kScaleUnroll * W + threadIdx.x;
    for (int u = 0; u < kScaleUnroll * W; ++u) {
      const int64_t i = first + u * kThreads;
      if (i >= n) break;
      dst[i] =
          static_cast<T>(static_cast<acc_t>(src[i]) * static_cast<acc_t>(e.factors[e.group(i)]));
    }
  }
}

template <typename T>
__global__ void id_scale_kernel(const T* src, T* dst, int64_t n, const int64_t* ids,
                                const double* factors) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * static_cast<acc_t>(factors[ids[i]]));
}

// dst[i] = factors[tensors[i].offset + group] * tensors[i].x, elementwise by group.
void launch_scale(const std::vector<GroupedTensor>& tensors, const std::vector<at::Tensor>& dst,
                  const double* factors) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<size_t> strided;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GroupedTensor& t = tensors[i];
    if (t.data.numel() == 0) continue;
    if (!t.layout.group_ids.defined()) {
      strided.push_back(i);
      continue;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, t.data.scalar_type(), "id_scale_cuda", [&] {
          id_scale_kernel<scalar_t><<<grid_stride_blocks(t.data.numel()), kThreads, 0, stream>>>(
              t.data.const_data_ptr<scalar_t>(), dst[i].mutable_data_ptr<scalar_t>(),
              t.data.numel(), t.layout.group_ids.const_data_ptr<int64_t>(), factors + t.offset);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  launch_in_tables<ScaleEntry>(
      tensors, strided,
      [&](BlockTable<ScaleEntry>& table, size_t i) {
        const GroupedTensor& t = tensors[i];
        const int64_t n = t.data.numel();
        table.add(
            {.src = t.data.const_data_ptr(),
             .dst = dst[i].data_ptr(),
             .numel = n,
             .group = group_index(n, t.layout.num_groups, std::max<int64_t>(t.layout.inner, 1)),
             .factors = factors + t.offset},
            ceil_div(n, int64_t(kThreads) * kScaleUnroll * (16 / t.data.element_size())));
      },
      [&](const BlockTable<ScaleEntry>& table, at::ScalarType dtype) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "scale_groups_cuda", [&] {
          scale_groups_kernel<scalar_t>
              <<<static_cast<unsigned>(table.blocks), kThreads, 0, stream>>>(table);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

// ---------------------------------------------------------------- threshold search

constexpr int kSearchThreads = 512;
constexpr int kSearchWarps = kSearchThreads / 32;
constexpr int kResident = 8;  // groups per thread held in registers: terms of up to 4096 groups

enum class Want { kProxFactors, kValue, kGradScales };

// One WGSEF term: groups [begin, begin + count) of the call's per-group arrays.
struct Term {
  int64_t begin, count, k;
  const double* weights;  // this term's group weights d_i, or null for ones
  Scalar lam;
};

struct TermTable {
  Term t[kMaxEntries];
  Scalar lr;  // multiplies every term's lam
};

struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

// Reduces each v[j] over the block; every thread gets the same values, summed
// in the same order, so the search's branches agree across the block.
template <int N, typename Op>
__device__ void block_reduce(double (&v)[N], Op op, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    for (int offset = 16; offset > 0; offset >>= 1)
      v[j] = op(v[j], __shfl_down_sync(0xffffffffu, v[j], offset));
    if (lane == 0) scratch[j * kSearchWarps + warp] = v[j];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    double r = scratch[j * kSearchWarps];
    for (int w = 1; w < kSearchWarps; ++w) r = op(r, scratch[j * kSearchWarps + w]);
    v[j] = r;
  }
  __syncthreads();
}

// One block per term. The root eta of h(eta) = sum_i clip(c_i eta - w_i, 0, 1) - k
// (c_i = sqrt(d_i ||x_i||^2), w_i = lam d_i; w = 0 for the value and its
// gradient) by solve_threshold_by_passes, each pass over the term's groups
// ending in one block reduction. Writes, per Want: the prox factors (in place
// of the squared norms), the value, or the gradient scales.
template <Want kWant>
__global__ void __launch_bounds__(kSearchThreads)
    search_kernel(const TermTable table, const double* sq_all, double* roots_all, double* out) {
  __shared__ double scratch[3 * kSearchWarps];
  const Term term = table.t[blockIdx.x];
  const int64_t m = term.count, k = term.k;
  const double* sq = sq_all + term.begin;
  const double* d = term.weights;
  const bool resident = m <= int64_t(kSearchThreads) * kResident;
  double* roots = resident ? nullptr : roots_all + term.begin;
  const double lam = kWant == Want::kProxFactors ? table.lr.get() * term.lam.get() : 0.0;

  double rc[kResident], rd[kResident];
  double counts[3] = {0.0, 0.0, 0.0};  // non-zero groups, NaN norms, infinite norms
  double top[1] = {0.0};               // the largest breakpoint (w_i + 1) / c_i
  const auto first_visit = [&](int64_t i, double& c, double& di) {
    const double s = sq[i];
    di = d ? d[i] : 1.0;
    c = sqrt(di * s);
    counts[0] += s > 0.0;
    counts[1] += isnan(s);
    counts[2] += isinf(s);
    if (s > 0.0 && isfinite(s)) top[0] = fmax(top[0], (lam * di + 1.0) / c);
  };
  if (resident) {
#pragma unroll
    for (int r = 0; r < kResident; ++r) {
      const int64_t i = threadIdx.x + int64_t(r) * kSearchThreads;
      rc[r] = 0.0;
      rd[r] = 0.0;
      if (i < m) first_visit(i, rc[r], rd[r]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < m; i += kSearchThreads) {
      double c, di;
      first_visit(i, c, di);
      roots[i] = c;
    }
  }
  block_reduce(counts, Add{}, scratch);
  block_reduce(top, Max{}, scratch);
  TermCounts summary;
  summary.nonzero = static_cast<int64_t>(counts[0]);
  summary.has_nan = counts[1] > 0.0;
  summary.has_inf = counts[2] > 0.0;
  const int64_t nonzero = summary.nonzero;

  // f(i, c_i, d_i) for this thread's groups
  const auto for_each = [&](auto&& f) {
    if (resident) {
#pragma unroll
      for (int r = 0; r < kResident; ++r) {
        const int64_t i = threadIdx.x + int64_t(r) * kSearchThreads;
        if (i < m) f(i, rc[r], rd[r]);
      }
    } else {
#pragma unroll 4
      for (int64_t i = threadIdx.x; i < m; i += kSearchThreads) f(i, roots[i], d ? d[i] : 1.0);
    }
  };

  double eta = INFINITY;  // at most k non-zero groups: every one has share 1
  const bool search =
      kWant == Want::kProxFactors ? prox_searches(summary, k, lam) : envelope_searches(summary, k);
  if (search) {
    // segment sums at eta, over the block: saturated groups, and the sums of c
    // and of w over the linear ones
    const auto segment = [&](double at, double (&seg)[3]) {
      seg[0] = seg[1] = seg[2] = 0.0;
      for_each([&](int64_t, double c, double di) {
        const double t = c * at - lam * di;
        if (t >= 1.0) {
          seg[0] += 1.0;
        } else if (t > 0.0) {
          seg[1] += c;
          seg[2] += lam * di;
        }
      });
      block_reduce(seg, Add{}, scratch);
    };
    eta = solve_threshold_by_passes(segment, k, full_bracket(nonzero, k, top[0]));
  }

  if constexpr (kWant == Want::kProxFactors) {
    double* f = out + term.begin;
    for_each([&](int64_t i, double c, double di) {
      f[i] = prox_factor(summary, k, lam, c, eta, lam * di);
    });
  } else if constexpr (kWant == Want::kGradScales) {
    double* s = out + term.begin;
    for_each([&](int64_t i, double c, double di) { s[i] = grad_scale(summary, k, c, di, eta); });
  } else {
    double total[1] = {0.0};
    for_each([&](int64_t, double c, double) {
      const double u = envelope_share(c, eta);
      if (u > 0.0) total[0] += c * c / u;
    });
    block_reduce(total, Add{}, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = envelope_value_from(summary, k, 0.5 * total[0]);
  }
}

// The search over every term, in launches of up to kMaxEntries blocks. sq
// holds the squared norms of all groups; out gets per Want the factors, the
// value per term, or the scales (out may be sq).
template <Want kWant>
void launch_search(const std::vector<Term>& terms, Scalar lr, const at::Tensor& sq, double* out) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor roots;  // the c_i of terms too large for registers
  for (const Term& t : terms)
    if (t.count > int64_t(kSearchThreads) * kResident && !roots.defined())
      roots = at::empty_like(sq);
  for (size_t begin = 0; begin < terms.size(); begin += kMaxEntries) {
    TermTable table{};
    table.lr = lr;
    const size_t count = std::min<size_t>(kMaxEntries, terms.size() - begin);
    for (size_t i = 0; i < count; ++i) table.t[i] = terms[begin + i];
    search_kernel<kWant><<<static_cast<unsigned>(count), kSearchThreads, 0, stream>>>(
        table, sq.const_data_ptr<double>(),
        roots.defined() ? roots.mutable_data_ptr<double>() : nullptr,
        kWant == Want::kValue ? out + begin : out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------- ops

at::TensorOptions doubles_on(const at::Tensor& x) { return x.options().dtype(at::kDouble); }

Term single_term(const GroupedTensor& t, int64_t k, Scalar lam) {
  return {0, t.layout.num_groups, k, t.layout.weight_data(), lam};
}

at::Tensor sq_norms(const GroupedTensor& t) {
  at::Tensor out = at::empty({t.layout.num_groups}, doubles_on(t.data));
  launch_sq_norms({t}, out.mutable_data_ptr<double>());
  return out;
}

at::Tensor group_norms(const at::Tensor& x, const std::optional<at::Tensor>& group_ids,
                       int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupedTensor t{x.contiguous(),
                        check_group_layout("group_norms", x, group_ids, num_groups, std::nullopt)};
  return at::sqrt(sq_norms(t)).to(c10::promoteTypes(x.scalar_type(), at::kFloat));
}

at::Tensor value(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& weights,
                 const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupedTensor t{x.contiguous(),
                        check_value_args("value", x, k, weights, group_ids, num_groups)};
  at::Tensor sq = sq_norms(t);
  at::Tensor out = at::empty({1}, doubles_on(x));
  launch_search<Want::kValue>({single_term(t, k, {})}, {}, sq, out.mutable_data_ptr<double>());
  return out.reshape({}).to(x.scalar_type());
}

at::Tensor value_backward(const at::Tensor& grad, const at::Tensor& x, int64_t k,
                          const std::optional<at::Tensor>& weights,
                          const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupedTensor t{x.contiguous(),
                        check_value_args("value_backward", x, k, weights, group_ids, num_groups)};
  check_upstream_grad(grad);
  at::Tensor scales = sq_norms(t);
  launch_search<Want::kGradScales>({single_term(t, k, {})}, {}, scales,
                                   scales.mutable_data_ptr<double>());
  scales.mul_(grad.to(at::kDouble).reshape({}));
  at::Tensor out = at::empty_like(t.data);
  launch_scale({t}, {out}, scales.const_data_ptr<double>());
  return out;
}

// prox of t.data into dst (which may be t.data); lam was checked on the host,
// the kernel reads it where it lies.
void prox_into(const char* op, const GroupedTensor& t, const at::Tensor& dst, int64_t k,
               const at::Tensor& lam) {
  const ScalarArray lams(op, "lam", lam, t.data.device());
  at::Tensor factors = sq_norms(t);
  double* f = factors.mutable_data_ptr<double>();
  launch_search<Want::kProxFactors>({single_term(t, k, lams[0])}, Scalar{nullptr, 1.0}, factors, f);
  launch_scale({t}, {dst}, f);
}

at::Tensor prox(const at::Tensor& x, int64_t k, const at::Tensor& lam,
                const std::optional<at::Tensor>& weights,
                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupedTensor t{x.contiguous(),
                        check_prox_args("prox", x, k, lam, weights, group_ids, num_groups).layout};
  at::Tensor out = at::empty_like(t.data);
  prox_into("prox", t, out, k, lam);
  return out;
}

void prox_(at::Tensor& x, int64_t k, const at::Tensor& lam,
           const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& group_ids,
           int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GroupedTensor t{x.contiguous(),
                        check_prox_args("prox_", x, k, lam, weights, group_ids, num_groups).layout};
  prox_into("prox_", t, t.data, k, lam);
  if (!t.data.is_same(x)) x.copy_(t.data);
}

// The optimizer's call: no host synchronisation on strided layouts with lam,
// lr and weights on the device, so a step can be captured in a CUDA graph.
void prox_multi_(at::TensorList xs, at::IntArrayRef layout,
                 const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k,
                 const at::Tensor& lam, const at::Tensor& lr, bool shared) {
  const char* op = "prox_multi_";
  std::vector<GroupedTensor> tensors =
      check_prox_multi_args(op, xs, layout, group_ids, weights, k, lam, lr, shared);
  const int64_t n = static_cast<int64_t>(xs.size());
  if (n == 0) return;
  const c10::Device device = xs[0].device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> data;  // the outputs: tensors[i].data, scaled in place
  for (const GroupedTensor& t : tensors) data.push_back(t.data);
  const int64_t total = tensors.back().offset + tensors.back().layout.num_groups;
  at::Tensor factors = at::empty({total}, doubles_on(xs[0]));
  double* f = factors.mutable_data_ptr<double>();
  launch_sq_norms(tensors, f);
  const ScalarArray lams(op, "lam", lam, device), lrs(op, "lr", lr, device);
  std::vector<Term> terms;
  at::Tensor all_weights;
  if (shared) {
    bool weighted = false;
    for (const GroupedTensor& t : tensors) weighted = weighted || t.layout.weights.defined();
    if (weighted) {
      std::vector<at::Tensor> ds;
      for (const GroupedTensor& t : tensors)
        ds.push_back(t.layout.weights.defined()
                         ? t.layout.weights
                         : at::ones({t.layout.num_groups}, doubles_on(xs[0])));
      all_weights = at::cat(ds);
    }
    terms.push_back(
        {0, total, k[0], weighted ? all_weights.const_data_ptr<double>() : nullptr, lams[0]});
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const GroupedTensor& t = tensors[i];
      if (t.layout.num_groups == 0) continue;
      terms.push_back(
          {t.offset, t.layout.num_groups, k[i],
           t.layout.weights.defined() ? t.layout.weights.const_data_ptr<double>() : nullptr,
           lams[i]});
    }
  }
  launch_search<Want::kProxFactors>(terms, lrs[0], factors, f);
  launch_scale(tensors, data, f);
  for (int64_t i = 0; i < n; ++i)
    if (!data[i].is_same(xs[i])) xs[i].copy_(data[i]);
}

// torch.optim.SGD's update (see csrc/cpu/sgd_squares_cpu.cpp), then the
// squared group norms of the updated params: two kernels, five streams of
// memory and one, where torch's foreach SGD with momentum runs eight.
template <typename T>
__global__ void sgd_kernel(T* p, const T* g, T* buf, int64_t n, double lr, double weight_decay,
                           double momentum, double one_minus_dampening, double sign,
                           bool nesterov) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t d = static_cast<acc_t>(sign) * static_cast<acc_t>(g[i]);
    if (weight_decay != 0.0) d += static_cast<acc_t>(weight_decay) * static_cast<acc_t>(p[i]);
    if (buf != nullptr) {
      const acc_t b = static_cast<acc_t>(momentum) * static_cast<acc_t>(buf[i]) +
                      static_cast<acc_t>(one_minus_dampening) * d;
      buf[i] = static_cast<T>(b);
      d = nesterov ? d + static_cast<acc_t>(momentum) * b : b;
    }
    p[i] = static_cast<T>(static_cast<acc_t>(p[i]) - static_cast<acc_t>(lr) * d);
  }
}

at::Tensor sgd_group_squares_(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                              at::IntArrayRef layout, double lr, double weight_decay,
                              double momentum, double dampening, bool nesterov, bool maximize) {
  const char* op = "sgd_group_squares_";
  std::vector<GroupedTensor> tensors = check_sgd_squares_args(
      op, params, grads, bufs, layout, lr, weight_decay, momentum, dampening, nesterov);
  if (params.empty()) return at::zeros({0}, at::TensorOptions().dtype(at::kDouble));
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& p = tensors[i].data;
    if (p.numel() == 0) continue;
    const at::Tensor g = grads[i].contiguous(),
                     buf = bufs.empty() ? at::Tensor() : bufs[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "sgd_cuda", [&] {
      sgd_kernel<scalar_t><<<grid_stride_blocks(p.numel()), kThreads, 0, stream>>>(
          p.mutable_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
          buf.defined() ? buf.mutable_data_ptr<scalar_t>() : nullptr, p.numel(), lr, weight_decay,
          momentum, 1.0 - dampening, maximize ? -1.0 : 1.0, nesterov);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (!p.is_same(params[i])) params[i].copy_(p);
    if (buf.defined() && !buf.is_same(bufs[i])) bufs[i].copy_(buf);
  }
  at::Tensor squares = at::zeros({layout_groups(op, layout)}, doubles_on(params[0]));
  launch_sq_norms(tensors, squares.mutable_data_ptr<double>());
  return squares;
}

// Coupled groups: the members' squared norms summed per coupled group
// (index_add_), one search per term, each member scaled by its group's factor
// (index_select). Host synchronisation only for the coupling's range check.
void prox_coupled_(at::TensorList xs, at::IntArrayRef layout,
                   const c10::List<std::optional<at::Tensor>>& group_ids, at::TensorList coupling,
                   at::IntArrayRef term_sizes, const std::optional<at::Tensor>& weights,
                   at::IntArrayRef k, const at::Tensor& lam, const at::Tensor& lr) {
  const char* op = "prox_coupled_";
  const CoupledArgs a =
      check_prox_coupled_args(op, xs, layout, group_ids, coupling, term_sizes, weights, k, lam, lr);
  if (xs.empty() || a.num_coupled == 0) return;
  const c10::Device device = xs[0].device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> data;  // the outputs: tensors[i].data, scaled in place
  for (const GroupedTensor& t : a.tensors) data.push_back(t.data);
  const int64_t total = a.tensors.back().offset + a.tensors.back().layout.num_groups;
  at::Tensor member = at::empty({total}, doubles_on(xs[0]));
  launch_sq_norms(a.tensors, member.mutable_data_ptr<double>());
  at::Tensor coupled = at::zeros({a.num_coupled}, doubles_on(xs[0]));
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const GroupedTensor& t = a.tensors[i];
    if (t.layout.num_groups > 0)
      coupled.index_add_(0, a.coupling[i], member.narrow(0, t.offset, t.layout.num_groups));
  }
  const ScalarArray lams(op, "lam", lam, device), lrs(op, "lr", lr, device);
  std::vector<Term> terms;
  int64_t begin = 0;
  for (size_t t = 0; t < term_sizes.size(); ++t) {
    const double* d = a.weight_data();
    if (term_sizes[t] > 0)
      terms.push_back({begin, term_sizes[t], k[t], d ? d + begin : nullptr, lams[t]});
    begin += term_sizes[t];
  }
  launch_search<Want::kProxFactors>(terms, lrs[0], coupled, coupled.mutable_data_ptr<double>());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const GroupedTensor& t = a.tensors[i];
    if (t.layout.num_groups == 0) continue;
    at::Tensor slice = member.narrow(0, t.offset, t.layout.num_groups);
    at::index_select_out(slice, coupled, 0, a.coupling[i]);  // member factors, over the norms
  }
  launch_scale(a.tensors, data, member.const_data_ptr<double>());
  for (size_t i = 0; i < xs.size(); ++i)
    if (!data[i].is_same(xs[i])) xs[i].copy_(data[i]);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CUDA, m) {
  m.impl("group_norms", &group_norms);
  m.impl("value", &value);
  m.impl("value_backward", &value_backward);
  m.impl("prox", &prox);
  m.impl("prox_", &prox_);
  m.impl("prox_multi_", &prox_multi_);
  m.impl("prox_coupled_", &prox_coupled_);
  m.impl("sgd_group_squares_", &sgd_group_squares_);
}

}  // namespace wgsef::cuda
