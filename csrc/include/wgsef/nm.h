// N:M selection: which n of m values to keep. Plain C++ with no torch
// includes, shared by every backend. Rule (design notes nm-sparsity.md §1.4):
// rank by |w| descending, NaN ranks as +inf, ties go to the lower index, and
// -0.0 equals +0.0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>

namespace wgsef::nm {

// Ranking keys as unsigned integers: with the sign bit cleared, the bits of
// an IEEE float order like its magnitude, and clamping at the +inf pattern
// makes every NaN rank as +inf. Integer compares are exact and cheap.
inline uint32_t rank_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  b &= 0x7FFFFFFFu;
  return b < 0x7F800000u ? b : 0x7F800000u;
}

inline uint64_t rank_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  b &= 0x7FFFFFFFFFFFFFFFull;
  return b < 0x7FF0000000000000ull ? b : 0x7FF0000000000000ull;
}

// Rank form for a compile-time group size: keep j when fewer than n keys rank
// before it, rank_j = #{i < j : key_i >= key_j} + #{i > j : key_i > key_j}.
// Branch-free and fully unrolled: no data-dependent branches to mispredict.
template <int M, typename K>
inline void rank_select(const K* key, int64_t n, uint8_t* keep) {
  for (int j = 0; j < M; ++j) {
    int rank = 0;
    for (int i = 0; i < M; ++i) rank += i < j ? key[i] >= key[j] : (i > j ? key[i] > key[j] : 0);
    keep[j] = rank < n;
  }
}

// The first maximum of a compile-time group size, without branches.
template <int M, typename K>
inline void first_max(const K* key, uint8_t* keep) {
  K best = 0;
  for (int j = 0; j < M; ++j) best = std::max(best, key[j]);
  uint8_t seen = 0;
  for (int j = 0; j < M; ++j) {
    const uint8_t hit = key[j] == best;
    keep[j] = hit & !seen;
    seen |= hit;
  }
}

// keep[g*m + j] = 1 for the n best-ranked keys of every group g of a block of
// `groups` contiguous groups of m keys; scratch holds m keys.
template <typename K>
inline void select_top_n(const K* key, int64_t groups, int64_t m, int64_t n, uint8_t* keep,
                         K* scratch) {
  const int64_t total = groups * m;
  if (n >= m || n <= 0) {
    std::fill(keep, keep + total, static_cast<uint8_t>(n > 0));
    return;
  }
  if (n == 1) {  // the first maximum of each group
    switch (m) {
      case 4:
        for (int64_t g = 0; g < total; g += 4) first_max<4>(key + g, keep + g);
        return;
      case 8:
        for (int64_t g = 0; g < total; g += 8) first_max<8>(key + g, keep + g);
        return;
      case 16:
        for (int64_t g = 0; g < total; g += 16) first_max<16>(key + g, keep + g);
        return;
      case 32:
        for (int64_t g = 0; g < total; g += 32) first_max<32>(key + g, keep + g);
        return;
      default:
        break;
    }
    for (int64_t g = 0; g < total; g += m) {
      K best = 0;
      for (int64_t j = 0; j < m; ++j) best = std::max(best, key[g + j]);
      uint8_t seen = 0;
      for (int64_t j = 0; j < m; ++j) {
        const uint8_t hit = key[g + j] == best;
        keep[g + j] = hit & !seen;
        seen |= hit;
      }
    }
    return;
  }
  switch (m) {
    case 4:
      for (int64_t g = 0; g < total; g += 4) rank_select<4>(key + g, n, keep + g);
      return;
    case 8:
      for (int64_t g = 0; g < total; g += 8) rank_select<8>(key + g, n, keep + g);
      return;
    case 16:
      for (int64_t g = 0; g < total; g += 16) rank_select<16>(key + g, n, keep + g);
      return;
    default:
      break;
  }
  for (int64_t g = 0; g < total; g += m) {
    const K* k = key + g;
    uint8_t* out = keep + g;
    // the n-th largest key; keep everything above it and the first ties at it
    std::copy(k, k + m, scratch);
    std::nth_element(scratch, scratch + (n - 1), scratch + m, std::greater<K>());
    const K threshold = scratch[n - 1];
    int64_t ties = n;
    for (int64_t j = 0; j < m; ++j) ties -= k[j] > threshold;
    for (int64_t j = 0; j < m; ++j) {
      const bool tie = k[j] == threshold && ties > 0;
      ties -= tie;
      out[j] = k[j] > threshold || tie;
    }
  }
}

}  // namespace wgsef::nm
