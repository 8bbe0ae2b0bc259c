// CUDA kernels of the WGSEF ops. Every call is three launches whatever the
// number of tensors: squared group norms, the threshold search (one block per
// WGSEF term), and the group scaling, each over a table of up to kMaxEntries
// tensors passed by value. Nothing waits for the host except the checks of
// values the single-tensor ops validate (weights, lam on the device) and group
// ids, so prox_multi_ on strided layouts can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>
#include <vector>

#include "../checks.h"
#include "cuda_common.cuh"
#include "wgsef/threshold.h"

namespace wgsef::cuda {
namespace {

constexpr int kWarps = kThreads / 32;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One tensor of a call: contiguous data, its groups, and where its groups
// start in the call's per-group arrays.
struct Item {
  at::Tensor x;
  GroupArgs g;
  int64_t offset = 0;
};

// ---------------------------------------------------------------- group norms

struct NormEntry {
  const void* x;
  int64_t outer, groups, inner;
  double* out;
  bool by_thread;  // groups of fewer than 32 elements: a thread per group, else a warp
};

struct NormTable {
  NormEntry e[kMaxEntries];
  int64_t first_block[kMaxEntries];
  int count;
};

// Squares of one 16-byte vector, summed in the op math type.
template <typename T, int W>
__device__ inline at::opmath_type<T> squares(const Vec<T, W>& v) {
  using acc_t = at::opmath_type<T>;
  acc_t s = 0;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const acc_t a = static_cast<acc_t>(v.val[i]);
    s += a * a;
  }
  return s;
}

// ||x_g||^2 in float64, summed in a fixed order (deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads) group_sq_norms_kernel(const NormTable table) {
  constexpr int W = kVecWidth<T>;
  using V = Vec<T, W>;
  const int entry = entry_of(table.first_block, table.count, blockIdx.x);
  const NormEntry& e = table.e[entry];
  const int64_t block = blockIdx.x - table.first_block[entry];
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
    for (int64_t a = 0; a < A; ++a) {
      const V* run = reinterpret_cast<const V*>(x + (a * G + g) * C);
      int64_t j = lane;
      for (; j + 96 < nv; j += 128) {  // four loads in flight per lane
        const V v0 = run[j], v1 = run[j + 32], v2 = run[j + 64], v3 = run[j + 96];
        sum += static_cast<double>(squares(v0) + squares(v1) + squares(v2) + squares(v3));
      }
      for (; j < nv; j += 32) sum += static_cast<double>(squares(run[j]));
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

int grid_stride_blocks(int64_t n) { return static_cast<int>(std::min<int64_t>(ceil_div(n, kThreads), 65535)); }

// Squared norms of items[i] into norms + items[i].offset. Group ids are checked
// on the host (a synchronisation); strided layouts never wait.
void launch_sq_norms(const std::vector<Item>& items, double* norms) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<const Item*> strided;
  for (const Item& it : items) {
    if (!it.g.group_ids.defined()) {
      strided.push_back(&it);
      continue;
    }
    double* out = norms + it.offset;
    C10_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * it.g.num_groups, stream));
    if (it.x.numel() == 0) continue;
    at::Tensor flag = at::zeros({1}, it.x.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, it.x.scalar_type(), "id_sq_norms_cuda", [&] {
      id_sq_norms_kernel<scalar_t><<<grid_stride_blocks(it.x.numel()), kThreads, 0, stream>>>(
          it.x.const_data_ptr<scalar_t>(), it.g.group_ids.const_data_ptr<int64_t>(), it.x.numel(),
          it.g.num_groups, out, flag.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    TORCH_CHECK_VALUE(flag.item<int>() == 0, "wgsef: group_ids must lie in [0, num_groups = ", it.g.num_groups,
                      ")");
  }
  for (size_t begin = 0; begin < strided.size();) {
    const at::ScalarType dtype = strided[begin]->x.scalar_type();
    NormTable table{};
    int64_t blocks = 0;
    size_t end = begin;
    for (; end < strided.size() && table.count < kMaxEntries && strided[end]->x.scalar_type() == dtype; ++end) {
      const Item& it = *strided[end];
      if (it.g.num_groups == 0) continue;
      const bool by_thread = it.g.outer * it.g.inner < 32;
      table.e[table.count] = {it.x.const_data_ptr(), it.g.outer, it.g.num_groups, it.g.inner, norms + it.offset,
                              by_thread};
      table.first_block[table.count++] = blocks;
      blocks += ceil_div(it.g.num_groups, by_thread ? kThreads : kWarps);
    }
    begin = end;
    if (table.count == 0) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "group_sq_norms_cuda", [&] {
      group_sq_norms_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(table);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

// ---------------------------------------------------------------- scaling

struct ScaleEntry {
  const void* src;
  void* dst;
  int64_t numel, groups, inner;
  const double* factors;
};

struct ScaleTable {
  ScaleEntry e[kMaxEntries];
  int64_t first_block[kMaxEntries];
  int count;
};

constexpr int kScaleUnroll = 4;  // 16-byte vectors per thread

__device__ inline int64_t group_at(int64_t i, int64_t C, int64_t G, bool narrow) {
  if (narrow) return static_cast<uint32_t>(i) / static_cast<uint32_t>(C) % static_cast<uint32_t>(G);
  return i / C % G;
}

// dst = factors[group] * src, in place when dst == src.
template <typename T>
__global__ void __launch_bounds__(kThreads) scale_groups_kernel(const ScaleTable table) {
  using acc_t = at::opmath_type<T>;
  constexpr int W = kVecWidth<T>;
  using V = Vec<T, W>;
  const int entry = entry_of(table.first_block, table.count, blockIdx.x);
  const ScaleEntry& e = table.e[entry];
  const int64_t block = blockIdx.x - table.first_block[entry];
  const T* src = static_cast<const T*>(e.src);
  T* dst = static_cast<T*>(e.dst);
  const int64_t n = e.numel, G = e.groups, C = e.inner;
  const bool narrow = n <= int64_t(UINT32_MAX);
  if (C % W == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const int64_t first = block * kThreads * kScaleUnroll + threadIdx.x, nv = n / W;
    V v[kScaleUnroll];
#pragma unroll
    for (int u = 0; u < kScaleUnroll; ++u)  // every load before any store: src may be dst
      if (first + u * kThreads < nv) v[u] = reinterpret_cast<const V*>(src)[first + u * kThreads];
#pragma unroll
    for (int u = 0; u < kScaleUnroll; ++u) {
      const int64_t j = first + u * kThreads;
      if (j >= nv) break;
      const acc_t f = static_cast<acc_t>(e.factors[group_at(j * W, C, G, narrow)]);
#pragma unroll
      for (int i = 0; i < W; ++i) v[u].val[i] = static_cast<T>(static_cast<acc_t>(v[u].val[i]) * f);
      reinterpret_cast<V*>(dst)[j] = v[u];
    }
  } else {
    const int64_t first = block * kThreads * kScaleUnroll * W + threadIdx.x;
    for (int u = 0; u < kScaleUnroll * W; ++u) {
      const int64_t i = first + u * kThreads;
      if (i >= n) break;
      dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * static_cast<acc_t>(e.factors[group_at(i, C, G, narrow)]));
    }
  }
}

template <typename T>
__global__ void id_scale_kernel(const T* src, T* dst, int64_t n, const int64_t* ids, const double* factors) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * static_cast<acc_t>(factors[ids[i]]));
}

// dst[i] = factors[items[i].offset + group] * items[i].x, elementwise by group.
void launch_scale(const std::vector<Item>& items, const std::vector<at::Tensor>& dst, const double* factors) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<size_t> strided;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& it = items[i];
    if (it.x.numel() == 0) continue;
    if (!it.g.group_ids.defined()) {
      strided.push_back(i);
      continue;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, it.x.scalar_type(), "id_scale_cuda", [&] {
      id_scale_kernel<scalar_t><<<grid_stride_blocks(it.x.numel()), kThreads, 0, stream>>>(
          it.x.const_data_ptr<scalar_t>(), dst[i].mutable_data_ptr<scalar_t>(), it.x.numel(),
          it.g.group_ids.const_data_ptr<int64_t>(), factors + it.offset);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  for (size_t begin = 0; begin < strided.size();) {
    const at::ScalarType dtype = items[strided[begin]].x.scalar_type();
    ScaleTable table{};
    int64_t blocks = 0;
    size_t end = begin;
    for (; end < strided.size() && table.count < kMaxEntries && items[strided[end]].x.scalar_type() == dtype;
         ++end) {
      const Item& it = items[strided[end]];
      table.e[table.count] = {it.x.const_data_ptr(), dst[strided[end]].data_ptr(), it.x.numel(), it.g.num_groups,
                              std::max<int64_t>(it.g.inner, 1), factors + it.offset};
      table.first_block[table.count++] = blocks;
      blocks += ceil_div(it.x.numel(), int64_t(kThreads) * kScaleUnroll * (16 / it.x.element_size()));
    }
    begin = end;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "scale_groups_cuda", [&] {
      scale_groups_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(table);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
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
  Scalar scale;  // multiplies every term's lam (ProxSGD's lr)
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
    for (int offset = 16; offset > 0; offset >>= 1) v[j] = op(v[j], __shfl_down_sync(0xffffffffu, v[j], offset));
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

__device__ inline double midpoint_by_bits(double lo, double hi) {
  // positive doubles order like their bit patterns: this halves the exponent
  // range too, so a bracket [0, 1e30] needs ~64 steps, not ~1000
  const unsigned long long a = __double_as_longlong(lo), b = __double_as_longlong(hi);
  return __longlong_as_double(static_cast<long long>(a + (b - a) / 2));
}

// One block per term. The root eta of h(eta) = sum_i clip(c_i eta - w_i, 0, 1) - k
// (c_i = sqrt(d_i ||x_i||^2), w_i = lam d_i; w = 0 for the value and its
// gradient) by safeguarded Newton steps on a bracket: h is piecewise linear
// and nondecreasing, so a Newton step from inside the root's segment lands on
// the root; a step that fails to halve the bracket is followed by a bisection.
// Each step is one pass over the term's groups and one block reduction. The
// root is then solved again on its segment from sums over the linear groups
// only (no cancellation), as the CPU search ends. Writes, per Want: the prox
// factors (in place of the squared norms), the value, or the gradient scales.
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
  const double lam = kWant == Want::kProxFactors ? table.scale.get() * term.lam.get() : 0.0;

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
  const int64_t nonzero = static_cast<int64_t>(counts[0]);
  const bool has_nan = counts[1] > 0.0, finite = counts[1] == 0.0 && counts[2] == 0.0;

  // f(i, c_i, d_i) for this thread's groups
  const auto for_each = [&](auto&& f) {
    if (resident) {
#pragma unroll
      for (int r = 0; r < kResident; ++r) {
        const int64_t i = threadIdx.x + int64_t(r) * kSearchThreads;
        if (i < m) f(i, rc[r], rd[r]);
      }
    } else {
      for (int64_t i = threadIdx.x; i < m; i += kSearchThreads) f(i, roots[i], d ? d[i] : 1.0);
    }
  };

  double eta = INFINITY;  // at most k non-zero groups: every one has share 1
  const bool search = finite && k > 0 && nonzero > k && (kWant != Want::kProxFactors || lam > 0.0);
  if (search) {
    const double kk = static_cast<double>(k);
    // h(0) = -k < 0 < h(top) = nonzero - k
    double lo = 0.0, hi = top[0], h_lo = -kk, h_hi = static_cast<double>(nonzero) - kk;
    const double tol = 16.0 * DBL_EPSILON * static_cast<double>(nonzero + k);
    double candidate = hi * (kk / static_cast<double>(nonzero));
    bool found = false;
    for (int step = 0; step < 256; ++step) {
      if (!(candidate > lo && candidate < hi)) candidate = midpoint_by_bits(lo, hi);
      if (!(candidate > lo && candidate < hi)) break;  // lo and hi are adjacent doubles
      double sums[2] = {0.0, 0.0};                     // sum of shares, slope
      for_each([&](int64_t, double c, double di) {
        const double t = c * candidate - lam * di;
        if (t >= 1.0) {
          sums[0] += 1.0;
        } else if (t > 0.0) {
          sums[0] += t;
          sums[1] += c;
        }
      });
      block_reduce(sums, Add{}, scratch);
      const double h = sums[0] - kk, width = hi - lo;
      if (fabs(h) <= tol) {
        found = true;
        break;
      }
      if (h < 0.0) {
        lo = candidate;
        h_lo = h;
      } else {
        hi = candidate;
        h_hi = h;
      }
      if (hi - lo > 0.5 * width) {
        candidate = NAN;  // too little progress: bisect next
      } else if (sums[1] > 0.0) {
        candidate -= h / sums[1];
      } else {
        candidate = lo + (hi - lo) * (-h_lo / (h_hi - h_lo));
      }
    }
    if (!found) candidate = lo + (hi - lo) * (-h_lo / (h_hi - h_lo));
    eta = candidate;
    // on the root's segment h = sum_linear (c eta - w) + #saturated - k
    double seg[3] = {0.0, 0.0, 0.0};  // saturated groups, sum of linear c, sum of linear w
    for_each([&](int64_t, double c, double di) {
      const double t = c * eta - lam * di;
      if (t >= 1.0) {
        seg[0] += 1.0;
      } else if (t > 0.0) {
        seg[1] += c;
        seg[2] += lam * di;
      }
    });
    block_reduce(seg, Add{}, scratch);
    if (seg[1] > 0.0) {
      const double refined = (kk - seg[0] + seg[2]) / seg[1];
      if (refined >= lo && refined <= hi) eta = refined;
    }
  }

  if constexpr (kWant == Want::kProxFactors) {
    double* f = out + term.begin;
    for_each([&](int64_t i, double c, double di) {
      const double w = lam * di;
      double v;
      if (!finite) {
        v = NAN;
      } else if (lam == 0.0) {
        v = 1.0;
      } else if (k == 0) {
        v = 0.0;
      } else if (nonzero <= k) {
        v = 1.0 / (1.0 + w);
      } else {
        v = c > 0.0 ? shrink_factor(c, eta, w) : 0.0;
      }
      f[i] = v;
    });
  } else if constexpr (kWant == Want::kGradScales) {
    double* s = out + term.begin;
    const bool undefined = !finite || (k == 0 && nonzero > 0);
    for_each([&](int64_t i, double c, double di) {
      const double u = c > 0.0 ? fmin(1.0, c * eta) : 0.0;
      s[i] = undefined ? NAN : (u > 0.0 ? di / u : 0.0);
    });
  } else {
    double total[1] = {0.0};
    for_each([&](int64_t, double c, double) {
      const double u = c > 0.0 ? fmin(1.0, c * eta) : 0.0;
      if (u > 0.0) total[0] += c * c / u;
    });
    block_reduce(total, Add{}, scratch);
    if (threadIdx.x == 0) {
      double v = 0.5 * total[0];
      if (has_nan) {
        v = NAN;
      } else if (!finite || (k == 0 && nonzero > 0)) {
        v = INFINITY;
      }
      out[blockIdx.x] = v;
    }
  }
}

// The search over every term, in launches of up to kMaxEntries blocks. sq
// holds the squared norms of all groups; out gets per Want the factors, the
// value per term, or the scales (out may be sq).
template <Want kWant>
void launch_search(const std::vector<Term>& terms, Scalar scale, const at::Tensor& sq, double* out) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor roots;  // the c_i of terms too large for registers
  for (const Term& t : terms)
    if (t.count > int64_t(kSearchThreads) * kResident && !roots.defined()) roots = at::empty_like(sq);
  for (size_t begin = 0; begin < terms.size(); begin += kMaxEntries) {
    TermTable table{};
    table.scale = scale;
    const size_t count = std::min<size_t>(kMaxEntries, terms.size() - begin);
    for (size_t i = 0; i < count; ++i) table.t[i] = terms[begin + i];
    search_kernel<kWant><<<static_cast<unsigned>(count), kSearchThreads, 0, stream>>>(
        table, sq.const_data_ptr<double>(), roots.defined() ? roots.mutable_data_ptr<double>() : nullptr,
        kWant == Want::kValue ? out + begin : out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------- ops

at::TensorOptions doubles_on(const at::Tensor& x) { return x.options().dtype(at::kDouble); }

// Validates weights on the host (a synchronisation): single-tensor ops only.
void check_weights_values(const char* op, const GroupArgs& g) {
  if (!g.weights.defined()) return;
  const at::Tensor host = g.weights.cpu();
  check_host_weights(op, host.const_data_ptr<double>(), g.num_groups);
}

Item single_item(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& group_ids,
                 int64_t num_groups, const std::optional<at::Tensor>& weights) {
  Item it{x.contiguous(), check_group_args(op, x, group_ids, num_groups), 0};
  attach_weights(op, it.g, x, weights);
  return it;
}

Term single_term(const Item& it, int64_t k, Scalar lam) {
  return {0, it.g.num_groups, k, it.g.weights.defined() ? it.g.weights.const_data_ptr<double>() : nullptr, lam};
}

at::Tensor sq_norms(const Item& it) {
  at::Tensor out = at::empty({it.g.num_groups}, doubles_on(it.x));
  launch_sq_norms({it}, out.mutable_data_ptr<double>());
  return out;
}

at::Tensor group_norms(const at::Tensor& x, const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Item it = single_item("group_norms", x, group_ids, num_groups, std::nullopt);
  return at::sqrt(sq_norms(it)).to(c10::promoteTypes(x.scalar_type(), at::kFloat));
}

at::Tensor value(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& weights,
                 const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Item it = single_item("value", x, group_ids, num_groups, weights);
  check_k("value", k);
  check_weights_values("value", it.g);
  at::Tensor sq = sq_norms(it);
  at::Tensor out = at::empty({1}, doubles_on(x));
  launch_search<Want::kValue>({single_term(it, k, {})}, {}, sq, out.mutable_data_ptr<double>());
  return out.reshape({}).to(x.scalar_type());
}

at::Tensor value_backward(const at::Tensor& grad, const at::Tensor& x, int64_t k,
                          const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& group_ids,
                          int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Item it = single_item("value_backward", x, group_ids, num_groups, weights);
  check_k("value_backward", k);
  at::Tensor scales = sq_norms(it);
  launch_search<Want::kGradScales>({single_term(it, k, {})}, {}, scales, scales.mutable_data_ptr<double>());
  scales.mul_(grad.to(at::kDouble).reshape({}));
  at::Tensor out = at::empty_like(it.x);
  launch_scale({it}, {out}, scales.const_data_ptr<double>());
  return out;
}

// prox of it.x into dst (which may be it.x).
void prox_into(const char* op, const Item& it, const at::Tensor& dst, int64_t k, const at::Tensor& lam) {
  check_k(op, k);
  check_lam_tensor(op, lam);
  check_weights_values(op, it.g);
  check_lam_value(op, lam.item<double>());
  const ScalarArray lams(op, "lam", lam, it.x.device());
  at::Tensor factors = sq_norms(it);
  double* f = factors.mutable_data_ptr<double>();
  launch_search<Want::kProxFactors>({single_term(it, k, lams[0])}, Scalar{nullptr, 1.0}, factors, f);
  launch_scale({it}, {dst}, f);
}

at::Tensor prox(const at::Tensor& x, int64_t k, const at::Tensor& lam, const std::optional<at::Tensor>& weights,
                const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Item it = single_item("prox", x, group_ids, num_groups, weights);
  at::Tensor out = at::empty_like(it.x);
  prox_into("prox", it, out, k, lam);
  return out;
}

void prox_(at::Tensor& x, int64_t k, const at::Tensor& lam, const std::optional<at::Tensor>& weights,
           const std::optional<at::Tensor>& group_ids, int64_t num_groups) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Item it = single_item("prox_", x, group_ids, num_groups, weights);
  prox_into("prox_", it, it.x, k, lam);
  if (!it.x.is_same(x)) x.copy_(it.x);
}

// The optimizer's call: no host synchronisation on strided layouts (values were
// validated when the optimizer was built), so a step can be captured in a CUDA
// graph.
void prox_multi_(at::TensorList xs, at::IntArrayRef layout, const c10::List<std::optional<at::Tensor>>& group_ids,
                 const c10::List<std::optional<at::Tensor>>& weights, at::IntArrayRef k, const at::Tensor& lam,
                 const at::Tensor& scale_by, bool shared) {
  const char* op = "prox_multi_";
  const int64_t n = static_cast<int64_t>(xs.size());
  check_term_lists(op, n, layout, group_ids, weights, k, lam, scale_by, shared);
  if (n == 0) return;
  const c10::Device device = xs[0].device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<Item> items;
  std::vector<at::Tensor> data;
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(xs[i].device() == device, "wgsef.", op, ": every tensor must be on ", device,
                      ", got xs[", i, "] on ", xs[i].device());
    const at::Tensor xc = xs[i].contiguous();
    const std::optional<at::Tensor> ids =
        group_ids.empty() ? std::nullopt : static_cast<std::optional<at::Tensor>>(group_ids.get(i));
    Item it{xc,
            ids.has_value() ? check_group_args(op, xc, ids, layout[3 * i + 1])
                            : check_group_args(op, xc.view({layout[3 * i], layout[3 * i + 1], layout[3 * i + 2]}),
                                               std::nullopt, -1),
            total};
    if (!weights.empty()) attach_weights(op, it.g, xc, weights.get(i));
    total += it.g.num_groups;
    items.push_back(std::move(it));
    data.push_back(xc);
  }
  at::Tensor factors = at::empty({total}, doubles_on(xs[0]));
  double* f = factors.mutable_data_ptr<double>();
  launch_sq_norms(items, f);
  const ScalarArray lams(op, "lam", lam, device), scales(op, "scale", scale_by, device);
  std::vector<Term> terms;
  at::Tensor all_weights;
  if (shared) {
    bool weighted = false;
    for (const Item& it : items) weighted = weighted || it.g.weights.defined();
    if (weighted) {
      std::vector<at::Tensor> ds;
      for (const Item& it : items)
        ds.push_back(it.g.weights.defined() ? it.g.weights : at::ones({it.g.num_groups}, doubles_on(xs[0])));
      all_weights = at::cat(ds);
    }
    terms.push_back({0, total, k[0], weighted ? all_weights.const_data_ptr<double>() : nullptr, lams[0]});
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const Item& it = items[i];
      if (it.g.num_groups == 0) continue;
      terms.push_back({it.offset, it.g.num_groups, k[i],
                       it.g.weights.defined() ? it.g.weights.const_data_ptr<double>() : nullptr, lams[i]});
    }
  }
  launch_search<Want::kProxFactors>(terms, scales[0], factors, f);
  launch_scale(items, data, f);
  for (int64_t i = 0; i < n; ++i)
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
}

}  // namespace wgsef::cuda
