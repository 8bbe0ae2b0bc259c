// CUDA kernels of the N:M ops: nm_mask and the fused decayed weights. Groups
// of m = 4, 8, 16 or 32 contiguous elements (the last dim) take one thread
// each with the group in registers (16-byte loads and stores); other layouts
// and sizes a thread per group that finds the n-th largest key bit by bit.
// Ranking keys and ties follow wgsef/nm.h, as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../nm_ops.h"
#include "cuda_common.cuh"
#include "wgsef/nm.h"

namespace wgsef::cuda {
namespace {

template <typename T>
using KeyOf = std::conditional_t<std::is_same_v<T, double>, uint64_t, uint32_t>;

template <typename T>
__device__ inline KeyOf<T> key_of(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return nm::rank_key(v);
  } else {
    return nm::rank_key(static_cast<float>(v));
  }
}

// One group of M contiguous values as whole 16-byte (or, for small groups,
// M * sizeof(T)-byte) accesses.
template <typename T, int M>
struct Group {
  static constexpr int kBytes = M * static_cast<int>(sizeof(T));
  static constexpr int kPer = (kBytes < 16 ? kBytes : 16) / static_cast<int>(sizeof(T));
  Vec<T, kPer> part[M / kPer];
  __device__ T& operator[](int j) { return part[j / kPer].val[j % kPer]; }
};

// Groups of M contiguous elements, one per thread: the rank form, or the
// first maximum for n = 1 (wgsef/nm.h, as on the CPU).
template <typename T, int M>
__global__ void __launch_bounds__(kThreads)
    nm_contiguous_kernel(const T* w, bool* mask, T* out, int64_t groups, int64_t n, double decay) {
  using acc_t = at::opmath_type<T>;
  using K = KeyOf<T>;
  const acc_t dv = static_cast<acc_t>(decay);
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups;
       t += int64_t(gridDim.x) * blockDim.x) {
    Group<T, M> v = reinterpret_cast<const Group<T, M>*>(w)[t];
    K key[M];
#pragma unroll
    for (int j = 0; j < M; ++j) key[j] = key_of(v[j]);
    bool keep[M];
    if (n == 1) {
      nm::first_max(key, M, keep);
    } else {
      nm::rank_select(key, M, n, keep);
    }
    if (mask) {
      Group<bool, M> b;
#pragma unroll
      for (int j = 0; j < M; ++j) b[j] = keep[j];
      reinterpret_cast<Group<bool, M>*>(mask)[t] = b;
    }
    if (out) {
#pragma unroll
      for (int j = 0; j < M; ++j)
        if (!keep[j]) v[j] = static_cast<T>(static_cast<acc_t>(v[j]) * dv);
      reinterpret_cast<Group<T, M>*>(out)[t] = v;
    }
  }
}

// Any layout and m: one thread per group of m elements at stride `inner`. The
// n-th largest key is found bit by bit (31 or 63 counting passes over the
// group), then the keys above it and the first ties at it are kept.
template <typename T>
__global__ void nm_strided_kernel(const T* w, bool* mask, T* out, int64_t outer, int64_t length,
                                  int64_t inner, int64_t n, int64_t m, double decay) {
  using acc_t = at::opmath_type<T>;
  using K = KeyOf<T>;
  const int64_t blocks = length / m;
  const int64_t groups = outer * blocks * inner;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t % inner, ob = t / inner;
    const int64_t base = ((ob / blocks) * length + (ob % blocks) * m) * inner + i;
    const auto key = [&](int64_t j) { return key_of(w[base + j * inner]); };
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
      if (out)
        out[e] = static_cast<T>(static_cast<acc_t>(w[e]) *
                                (keep ? acc_t(1) : static_cast<acc_t>(decay)));
    }
  }
}

template <typename T>
bool launch_contiguous(const T* w, bool* mask, T* out, int64_t groups, int64_t n, int64_t m,
                       double decay, cudaStream_t stream) {
  const auto run = [&](auto M) {
    // group starts are multiples of M elements: aligned when the bases are
    constexpr int64_t kAlign = std::min<int64_t>(16, M * sizeof(T));
    if (reinterpret_cast<uintptr_t>(w) % kAlign != 0 ||
        (out && reinterpret_cast<uintptr_t>(out) % kAlign != 0) ||
        (mask && reinterpret_cast<uintptr_t>(mask) % std::min<int64_t>(16, M) != 0))
      return false;
    nm_contiguous_kernel<T, decltype(M)::value>
        <<<grid_stride_blocks(groups), kThreads, 0, stream>>>(w, mask, out, groups, n, decay);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  };
  switch (m) {
    case 4:
      return run(std::integral_constant<int, 4>{});
    case 8:
      return run(std::integral_constant<int, 8>{});
    case 16:
      return run(std::integral_constant<int, 16>{});
    case 32:
      return run(std::integral_constant<int, 32>{});
    default:
      return false;
  }
}

std::tuple<at::Tensor, at::Tensor> nm_pass(const char* op, const at::Tensor& w, int64_t n,
                                           int64_t m, int64_t dim, std::optional<double> decay,
                                           bool keep_mask) {
  const NMLayout l = check_nm_args(op, w, n, m, dim);
  const c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  at::Tensor mask =
      at::empty(keep_mask ? wc.sizes() : at::IntArrayRef{0}, wc.options().dtype(at::kBool));
  at::Tensor out = decay ? at::empty_like(wc) : at::Tensor();
  const int64_t groups = l.outer * (l.length / m) * l.inner;
  if (groups == 0) return {out, mask};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "nm_cuda", [&] {
    const scalar_t* src = wc.const_data_ptr<scalar_t>();
    bool* mask_ptr = keep_mask ? mask.mutable_data_ptr<bool>() : nullptr;
    scalar_t* out_ptr = decay ? out.mutable_data_ptr<scalar_t>() : nullptr;
    if (l.inner == 1 &&
        launch_contiguous(src, mask_ptr, out_ptr, groups, n, m, decay.value_or(0.0), stream))
      return;
    nm_strided_kernel<scalar_t><<<grid_stride_blocks(groups), kThreads, 0, stream>>>(
        src, mask_ptr, out_ptr, l.outer, l.length, l.inner, n, m, decay.value_or(0.0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CUDA, m) { register_nm_ops<&nm_pass>(m); }

}  // namespace wgsef::cuda
