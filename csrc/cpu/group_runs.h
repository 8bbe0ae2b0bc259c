// Visiting a tensor's elements group by group, in parallel, to accumulate a
// per-group sum of squares. The visitor run_sq(begin, len) handles the
// contiguous elements [begin, begin + len), all of one group, and returns the
// sum of their squares; group_reduce.cpp reads the group norms with it.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace wgsef::cpu {

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

// Strided layout (A, G, C): group g is x[:, g, :].
template <typename RunSq>
void strided_group_sums(int64_t A, int64_t G, int64_t C, double* out, const RunSq& run_sq) {
  if (G >= 4 * at::get_num_threads()) {
    // Each thread owns a block of groups and visits their A runs of C elements.
    const int64_t per_group = std::max<int64_t>(1, A * C);
    at::parallel_for(0, G, std::max<int64_t>(1, kGrain / per_group), [&](int64_t g0, int64_t g1) {
      for (int64_t a = 0; a < A; ++a) {
        const int64_t row = a * G * C;
        if (C == 1) {
          for (int64_t g = g0; g < g1; ++g) out[g] += run_sq(row + g, 1);
        } else {
          for (int64_t g = g0; g < g1; ++g) out[g] += run_sq(row + g * C, C);
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
      acc[r % G] += run_sq(b, f - b);
    }
  });
}

// Group ids: element i belongs to group ids[i], checked to lie in [0, G).
template <typename RunSq>
void id_group_sums(const int64_t* ids, int64_t n, int64_t G, double* out, const RunSq& run_sq) {
  std::atomic<bool> out_of_range{false};
  chunked_partials(n, G, out, [&](int64_t s, int64_t e, double* acc) {
    bool bad = false;
    for (int64_t i = s; i < e; ++i) {
      const int64_t id = ids[i];
      if (id < 0 || id >= G) {
        bad = true;
        continue;
      }
      acc[id] += run_sq(i, 1);
    }
    if (bad) out_of_range = true;
  });
  TORCH_CHECK_VALUE(!out_of_range, "wgsef: group_ids must lie in [0, num_groups = ", G, ")");
}

}  // namespace wgsef::cpu
