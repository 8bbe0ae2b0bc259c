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
#include <limits>
#include <type_traits>
#include <vector>

namespace wgsef::cpu {

// Elements per parallel task: large enough to amortise scheduling.
constexpr int64_t kGrain = 1 << 15;

// Runs shorter than this (conv channels: kh * kw elements) are summed directly
// in float64: four independent totals keep consecutive runs overlapping.
constexpr int64_t kShortRun = 32;

// Sum of squares with float64 totals. For 32- and 16-bit inputs, blocks of
// 256 elements are summed in eight float lanes (32 squares per lane, so a
// relative error below ~2e-6 and typically ~1e-7 per block) and the block sums
// in float64: float lanes vectorise twice as wide and keep this pass near
// memory speed. A run whose float sums overflowed, or whose total is below
// 2^-80 while an element is non-zero, is summed again in float64, which holds
// the square of any finite float or 16-bit value. float64 inputs use float64 lanes (see
// group_sq_norms for their range), and short runs float64 totals. Either way
// the order is a fixed function of the run, so identical groups get identical
// norms.
template <typename T>
inline double sum_squares(const T* p, int64_t n) {
  const auto squares_f64 = [p](int64_t begin, int64_t end) {
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = begin;
    for (; i + 4 <= end; i += 4) {
      for (int j = 0; j < 4; ++j)
        t[j] += static_cast<double>(p[i + j]) * static_cast<double>(p[i + j]);
    }
    for (; i < end; ++i) t[0] += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    return (t[0] + t[1]) + (t[2] + t[3]);
  };
  if (n < kShortRun) return squares_f64(0, n);
  using lane_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr int64_t kBlock = std::is_same_v<T, double> ? (int64_t{1} << 40) : 256;
  double total = 0.0;
  bool nonzero[8] = {false, false, false, false, false, false, false, false};
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    lane_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = start;
    for (; i + 8 <= end; i += 8) {
      for (int j = 0; j < 8; ++j) {
        const lane_t v = static_cast<lane_t>(p[i + j]);
        acc[j] += v * v;
        if constexpr (!std::is_same_v<T, double>) nonzero[j] = nonzero[j] || v != lane_t(0);
      }
    }
    double block = ((double(acc[0]) + acc[1]) + (double(acc[2]) + acc[3])) +
                   ((double(acc[4]) + acc[5]) + (double(acc[6]) + acc[7]));
    for (; i < end; ++i) {
      const double v = static_cast<double>(p[i]);
      block += v * v;
    }
    total += block;
  }
  if constexpr (!std::is_same_v<T, double>) {
    // as in float_loops.cpp: squares lost to float overflow or underflow
    bool any = false;
    for (int j = 0; j < 8; ++j) any = any || nonzero[j];
    if (!(total <= std::numeric_limits<double>::max()) || (total < 0x1p-80 && any))
      return squares_f64(0, n);
  }
  return total;
}

// Splits [0, n) into about one chunk per thread, and none smaller than
// `grain`; each chunk accumulates into its own row of `partial` (chunks x G),
// which is then summed into out.
template <typename AccumulateChunk>
void chunked_partials(int64_t n, int64_t G, double* out, const AccumulateChunk& accumulate,
                      int64_t grain = kGrain) {
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain));
  std::vector<double> partial(static_cast<size_t>(chunks * G), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      accumulate(n * c / chunks, n * (c + 1) / chunks, partial.data() + c * G);
  });
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t g = 0; g < G; ++g) out[g] += partial[c * G + g];
}

// Strided layout (A, G, C): group g is x[:, g, :]. With C == 1 consecutive
// elements belong to consecutive groups, and row_sq(begin, len, acc) adds the
// square of element begin + j to acc[j] for a whole row segment at once.
template <typename RunSq, typename RowSq>
void strided_group_sums(int64_t A, int64_t G, int64_t C, double* out, const RunSq& run_sq,
                        const RowSq& row_sq) {
  if (C == 1 && A > 1) {
    // Row after row of consecutive groups: split the rows between threads, each
    // with its own accumulators (splitting the columns instead makes the
    // threads stream interleaved halves of every row, which is slower).
    chunked_partials(
        A, G, out,
        [&](int64_t a0, int64_t a1, double* acc) {
          for (int64_t a = a0; a < a1; ++a) row_sq(a * G, G, acc);
        },
        std::max<int64_t>(1, kGrain / std::max<int64_t>(G, 1)));
    return;
  }
  if (G >= 4 * at::get_num_threads()) {
    // Each thread owns a block of groups and visits their A runs of C elements.
    const int64_t per_group = std::max<int64_t>(1, A * C);
    at::parallel_for(0, G, std::max<int64_t>(1, kGrain / per_group), [&](int64_t g0, int64_t g1) {
      for (int64_t a = 0; a < A; ++a) {
        const int64_t row = a * G * C;
        if (C == 1) {
          row_sq(row + g0, g1 - g0, out + g0);
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
