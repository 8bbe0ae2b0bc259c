#include "group_reduce.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

namespace wgsef::cpu {
namespace {

// Elements per parallel task: large enough to amortise scheduling.
constexpr int64_t kGrain = 1 << 15;

// Eight independent accumulators let the compiler vectorise the loop without
// reassociating a single running sum.
template <typename T>
inline double sum_squares(const T* p, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double v = static_cast<double>(p[i + j]);
      acc[j] += v * v;
    }
  }
  double s = 0.0;
  for (; i < n; ++i) {
    const double v = static_cast<double>(p[i]);
    s += v * v;
  }
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Splits [0, n) into about one chunk per thread; each chunk accumulates into
// its own row of `partial` (chunks x G), which is then summed into out.
template <typename AccumulateChunk>
void chunked_partials(int64_t n, int64_t G, double* out, const AccumulateChunk& accumulate) {
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (n + kGrain - 1) / kGrain));
  std::vector<double> partial(static_cast<size_t>(chunks * G), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      accumulate(n * c / chunks, n * (c + 1) / chunks, partial.data() + c * G);
  });
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t g = 0; g < G; ++g) out[g] += partial[c * G + g];
}

template <typename T>
void strided_sq_norms(const T* x, int64_t A, int64_t G, int64_t C, double* out) {
  if (G >= 4 * at::get_num_threads()) {
    // Each thread owns a block of groups and reads their A runs of C elements.
    const int64_t per_group = std::max<int64_t>(1, A * C);
    at::parallel_for(0, G, std::max<int64_t>(1, kGrain / per_group), [&](int64_t g0, int64_t g1) {
      for (int64_t a = 0; a < A; ++a) {
        const T* run = x + (a * G + g0) * C;
        if (C == 1) {
          for (int64_t g = g0; g < g1; ++g) {
            const double v = static_cast<double>(run[g - g0]);
            out[g] += v * v;
          }
        } else {
          for (int64_t g = g0; g < g1; ++g) out[g] += sum_squares(run + (g - g0) * C, C);
        }
      }
    });
    return;
  }
  // Few groups (a whole layer, a few heads): split the elements instead.
  const int64_t n = A * G * C;
  if (n == 0) return;
  chunked_partials(n, G, out, [&](int64_t s, int64_t e, double* acc) {
    for (int64_t r = s / C; r * C < e; ++r) {
      const int64_t b = std::max(s, r * C), f = std::min(e, (r + 1) * C);
      acc[r % G] += sum_squares(x + b, f - b);
    }
  });
}

template <typename T>
void id_sq_norms(const T* x, const int64_t* ids, int64_t n, int64_t G, double* out) {
  std::atomic<bool> out_of_range{false};
  chunked_partials(n, G, out, [&](int64_t s, int64_t e, double* acc) {
    bool bad = false;
    for (int64_t i = s; i < e; ++i) {
      const int64_t id = ids[i];
      if (id < 0 || id >= G) {
        bad = true;
        continue;
      }
      const double v = static_cast<double>(x[i]);
      acc[id] += v * v;
    }
    if (bad) out_of_range = true;
  });
  TORCH_CHECK_VALUE(!out_of_range, "wgsef: group_ids must lie in [0, num_groups = ", G, ")");
}

template <typename T>
void strided_scale(const T* src, T* dst, int64_t A, int64_t G, int64_t C,
                   const at::opmath_type<T>* f) {
  using acc_t = at::opmath_type<T>;
  const int64_t rows = A * G;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)),
                   [&](int64_t r0, int64_t r1) {
    if (C == 1) {
      // consecutive elements belong to consecutive groups: vectorise over g
      for (int64_t r = r0; r < r1;) {
        const int64_t g = r % G, len = std::min(r1 - r, G - g);
        for (int64_t j = 0; j < len; ++j)
          dst[r + j] = static_cast<T>(static_cast<acc_t>(src[r + j]) * f[g + j]);
        r += len;
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t fr = f[r % G];
      const T* s = src + r * C;
      T* d = dst + r * C;
      for (int64_t c = 0; c < C; ++c) d[c] = static_cast<T>(static_cast<acc_t>(s[c]) * fr);
    }
  });
}

template <typename T>
void id_scale(const T* src, T* dst, const int64_t* ids, int64_t n, const at::opmath_type<T>* f) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * f[ids[i]]);
  });
}

}  // namespace

std::vector<double> group_sq_norms(const at::Tensor& x, const GroupArgs& g) {
  std::vector<double> out(static_cast<size_t>(g.num_groups), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_sq_norms", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    if (g.group_ids.defined()) {
      id_sq_norms(px, g.group_ids.const_data_ptr<int64_t>(), x.numel(), g.num_groups, out.data());
    } else {
      strided_sq_norms(px, g.outer, g.num_groups, g.inner, out.data());
    }
  });
  return out;
}

void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupArgs& g,
                  const std::vector<double>& factors) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scale_groups", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> f(factors.begin(), factors.end());
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    if (g.group_ids.defined()) {
      id_scale(s, d, g.group_ids.const_data_ptr<int64_t>(), src.numel(), f.data());
    } else {
      strided_scale(s, d, g.outer, g.num_groups, g.inner, f.data());
    }
  });
}

namespace {
Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}
}  // namespace

WorkspaceLease::WorkspaceLease() : ws_(thread_workspace()) {}

WorkspaceLease::~WorkspaceLease() {
  constexpr size_t kKeepBytes = size_t{64} << 20;
  if (ws_.data.size() * sizeof(double) > kKeepBytes) ws_.data = std::vector<double>();
}

const double* host_weights(const char* op, const GroupArgs& g) {
  if (!g.weights.defined()) return nullptr;
  const double* d = g.weights.const_data_ptr<double>();
  check_host_weights(op, d, g.num_groups);
  return d;
}

}  // namespace wgsef::cpu
