// N:M selection: which n of m values to keep. Plain C++ with no torch
// includes, shared by every backend. Rule (docs/design.md §6.2):
// rank by |w| descending, NaN ranks as +inf, ties go to the lower index, and
// -0.0 equals +0.0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

#include "wgsef/host_device.h"

namespace wgsef::nm {

// Ranking keys as unsigned integers: with the sign bit cleared, the bits of
// an IEEE float order like its magnitude, and clamping at the +inf pattern
// makes every NaN rank as +inf. Integer compares are exact and cheap.
WGSEF_HOST_DEVICE inline uint32_t rank_key(float v) {
#ifdef __CUDA_ARCH__
  uint32_t b = __float_as_uint(v);
#else
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
#endif
  b &= 0x7FFFFFFFu;
  return b < 0x7F800000u ? b : 0x7F800000u;
}

WGSEF_HOST_DEVICE inline uint64_t rank_key(double v) {
#ifdef __CUDA_ARCH__
  uint64_t b = static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
#endif
  b &= 0x7FFFFFFFFFFFFFFFull;
  return b < 0x7FF0000000000000ull ? b : 0x7FF0000000000000ull;
}

// Groups up to this size use the rank form; larger ones select_large.
constexpr int64_t kRankFormMaxM = 16;

// The CUDA kernels call the two selections below with a constant m and keys in
// registers, which needs their loops unrolled.
#ifdef __CUDA_ARCH__
#define WGSEF_UNROLL _Pragma("unroll")
#else
#define WGSEF_UNROLL
#endif

// Rank form: keep j when fewer than n keys rank before it,
// rank_j = #{i < j : key_i >= key_j} + #{i > j : key_i > key_j}. Branch-free, so
// nothing mispredicts; O(m^2), for small groups. Keep is uint8_t or bool.
template <typename K, typename Keep>
WGSEF_HOST_DEVICE inline void rank_select(const K* key, int64_t m, int64_t n, Keep* keep) {
  WGSEF_UNROLL
  for (int64_t j = 0; j < m; ++j) {
    int64_t rank = 0;
    WGSEF_UNROLL
    for (int64_t i = 0; i < m; ++i)
      rank += i < j ? key[i] >= key[j] : (i > j ? key[i] > key[j] : 0);
    keep[j] = rank < n;
  }
}

// The first maximum of a group, without branches.
template <typename K, typename Keep>
WGSEF_HOST_DEVICE inline void first_max(const K* key, int64_t m, Keep* keep) {
  K best = 0;
  WGSEF_UNROLL
  for (int64_t j = 0; j < m; ++j) best = key[j] > best ? key[j] : best;
  bool seen = false;
  WGSEF_UNROLL
  for (int64_t j = 0; j < m; ++j) {
    const bool hit = key[j] == best;
    keep[j] = hit && !seen;
    seen = seen || hit;
  }
}

#undef WGSEF_UNROLL

// Calls f(std::integral_constant<int64_t, M>{}) when m is one of the common
// group sizes, so that the loops inside f unroll for a constant M; returns
// whether it did.
template <typename F>
inline bool with_constant_m(int64_t m, F&& f) {
  switch (m) {
    case 4:
      f(std::integral_constant<int64_t, 4>{});
      return true;
    case 8:
      f(std::integral_constant<int64_t, 8>{});
      return true;
    case 16:
      f(std::integral_constant<int64_t, 16>{});
      return true;
    case 32:
      f(std::integral_constant<int64_t, 32>{});
      return true;
    default:
      return false;
  }
}

// Candidates (in index order, all others pruned) given the n-th largest key:
// keep the keys above it and, of the keys equal to it, the first ones until n
// are kept.
template <typename K, typename I>
inline void keep_above_threshold(const K* cand_key, const I* cand_index, int64_t count, int64_t n,
                                 K threshold, uint8_t* keep) {
  int64_t ties = n;
  for (int64_t c = 0; c < count; ++c) ties -= cand_key[c] > threshold;
  for (int64_t c = 0; c < count; ++c) {
    const bool tie = cand_key[c] == threshold && ties > 0;
    ties -= tie;
    keep[cand_index[c]] = cand_key[c] > threshold || tie;
  }
}

// One large group (m > 16, 2 <= n < m). Split it into n slices: the smallest
// of their maxima is a lower bound on the n-th largest key (each slice holds
// one key at least that large), so only keys at or above it can be kept. On
// real weights these candidates are a few times n; the exact threshold comes
// from a selection among them, and ties at it go to the lower index. scratch
// holds 3m keys.
template <typename K>
inline void select_large(const K* key, int64_t m, int64_t n, uint8_t* keep, K* scratch) {
  if (m <= 0) return;  // callers never pass it; the guard bounds m for the compiler
  K lower = std::numeric_limits<K>::max();
  for (int64_t b = 0; b < n; ++b) {
    K slice_max = 0;
    for (int64_t j = b * m / n; j < (b + 1) * m / n; ++j) slice_max = std::max(slice_max, key[j]);
    lower = std::min(lower, slice_max);
  }
  K* cand_key = scratch;
  K* cand_index = scratch + m;
  int64_t count = 0;
  for (int64_t j = 0; j < m; ++j) {  // branch-free compaction, in index order
    cand_key[count] = key[j];
    cand_index[count] = static_cast<K>(j);
    count += key[j] >= lower;
  }
  std::fill(keep, keep + m, uint8_t{0});
  // the n-th largest candidate key is the threshold; cand_index keeps index order
  K* sorted = scratch + 2 * m;
  std::copy(cand_key, cand_key + count, sorted);
  std::nth_element(sorted, sorted + (n - 1), sorted + count, std::greater<K>());
  keep_above_threshold(cand_key, cand_index, count, n, sorted[n - 1], keep);
}

// keep[g*m + j] = 1 for the n best-ranked keys of every group g of a block of
// `groups` contiguous groups of m keys; scratch holds 3m keys.
template <typename K>
inline void select_top_n(const K* key, int64_t groups, int64_t m, int64_t n, uint8_t* keep,
                         K* scratch) {
  if (groups <= 0 || m <= 0) return;
  const int64_t total = groups * m;
  if (n >= m || n <= 0) {
    std::fill(keep, keep + total, static_cast<uint8_t>(n > 0));
    return;
  }
  if (n == 1) {  // the first maximum of each group
    const auto first_maxima = [&](auto M) {
      for (int64_t g = 0; g < total; g += M) first_max(key + g, M, keep + g);
    };
    if (!with_constant_m(m, first_maxima)) first_maxima(m);
    return;
  }
  if (m <= kRankFormMaxM) {
    const auto ranks = [&](auto M) {
      for (int64_t g = 0; g < total; g += M) rank_select(key + g, M, n, keep + g);
    };
    if (!with_constant_m(m, ranks)) ranks(m);
    return;
  }
  for (int64_t g = 0; g < total; g += m) select_large(key + g, m, n, keep + g, scratch);
}

// The n best of every group of m among `count` values, one group at a time
// through its keys (keys holds 4m entries).
template <typename T, typename K>
inline void select_values(const T* values, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                          K* keys) {
  for (int64_t g = 0; g < count; g += m) {
    for (int64_t j = 0; j < m; ++j) keys[j] = rank_key(values[g + j]);
    select_top_n(keys, 1, m, n, keep + g, keys + m);
  }
}

}  // namespace wgsef::nm
