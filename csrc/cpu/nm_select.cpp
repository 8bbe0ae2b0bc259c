// N:M selection over float32, a vector of W lanes at a time. Written with
// GCC/Clang vector extensions, so one source compiles to SSE2 or NEON (W = 4)
// and, on x86-64 CPUs that have it, AVX2 (W = 8, picked at run time; two
// helpers of the large-group path use AVX2 intrinsics there). The ranking
// rule is the one of wgsef/nm.h (NaN = +inf, ties to the lower index,
// -0 == +0), which the scalar path and the CUDA kernels share.
#include "nm_select.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "cpu_features.h"
#ifdef WGSEF_X86_AVX2
#include <immintrin.h>
#endif
#include "wgsef/nm.h"

namespace wgsef::cpu {
namespace {

#ifdef WGSEF_HAVE_SHUFFLEVECTOR
template <int W>
struct Lanes {
  typedef int32_t i32 __attribute__((vector_size(4 * W)));
  typedef uint8_t u8 __attribute__((vector_size(W)));
  typedef uint8_t i32_as_u8 __attribute__((vector_size(4 * W)));
};
template <int W>
using lanes_t = typename Lanes<W>::i32;

template <int W, int... L>
constexpr lanes_t<W> lane_index(std::integer_sequence<int, L...>) {
  return lanes_t<W>{L...};
}
template <int W>
constexpr lanes_t<W> lane_index() {
  return lane_index<W>(std::make_integer_sequence<int, W>{});
}

// Magnitude bits of W floats: rank_key without the NaN clamp. Against a bound
// at most the +inf pattern, key >= bound holds for these exactly when it holds
// for the clamped keys.
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> load_magnitudes(const float* p) {
  lanes_t<W> bits;
  std::memcpy(&bits, p, sizeof bits);
  return bits & 0x7FFFFFFF;
}

// rank_key of W floats: the magnitude bits, NaN clamped to the +inf pattern.
// The keys are below 2^31, so signed compares order them.
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> load_keys(const float* p) {
  const lanes_t<W> bits = load_magnitudes<W>(p);
  const lanes_t<W> inf = lanes_t<W>{} + 0x7F800000;
  return bits < inf ? bits : inf;
}

template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> load(const uint32_t* p) {
  lanes_t<W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// kept lanes hold -1 (a vector compare result); keep bytes are 0 or 1. The
// low byte of each lane is picked by a byte shuffle (a converting cast would
// go lane by lane).
template <int W, int... L>
WGSEF_ALWAYS_INLINE void store_keep(lanes_t<W> kept, uint8_t* keep,
                                    std::integer_sequence<int, L...>) {
  const auto bytes = reinterpret_cast<typename Lanes<W>::i32_as_u8>(kept & 1);
  const typename Lanes<W>::u8 low = __builtin_shufflevector(bytes, bytes, (4 * L)...);
  std::memcpy(keep, &low, sizeof low);
}
template <int W>
WGSEF_ALWAYS_INLINE void store_keep(lanes_t<W> kept, uint8_t* keep) {
  store_keep<W>(kept, keep, std::make_integer_sequence<int, W>{});
}

template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> lanes_max(lanes_t<W> a, lanes_t<W> b) {
  return a > b ? a : b;
}
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> lanes_min(lanes_t<W> a, lanes_t<W> b) {
  return a < b ? a : b;
}

// Lane l of the result is lane (l / G) * G + (l % G + R) % G of v: every run
// of G lanes rotated by R.
template <int W, int G, int R, int... L>
WGSEF_ALWAYS_INLINE lanes_t<W> rotate(lanes_t<W> v, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(v, v, ((L / G) * G + (L % G + R) % G)...);
}
template <int W, int G, int R>
WGSEF_ALWAYS_INLINE lanes_t<W> rotate(lanes_t<W> v) {
  return rotate<W, G, R>(v, std::make_integer_sequence<int, W>{});
}

// -1 in the lanes whose partner after rotate<W, G, R> has the lower index
template <int W, int G, int R, int... L>
constexpr lanes_t<W> partner_before(std::integer_sequence<int, L...>) {
  return lanes_t<W>{((L % G + R) % G < L % G ? -1 : 0)...};
}
template <int W, int G, int R>
constexpr lanes_t<W> partner_before() {
  return partner_before<W, G, R>(std::make_integer_sequence<int, W>{});
}

// Adds -1 to rank where `other` ranks before `key`: larger, or equal with the
// lower index (before = -1). With integer keys, k_i >= k_j is k_i > k_j - 1.
template <int W>
WGSEF_ALWAYS_INLINE void count_beaten(lanes_t<W> other, lanes_t<W> key, lanes_t<W> before,
                                      lanes_t<W>& rank) {
  rank += other > key + before;
}

// Groups of G <= W lanes inside one vector: every lane against the G - 1
// rotations of its group.
template <int W, int G, int R = 1>
WGSEF_ALWAYS_INLINE void rank_within(lanes_t<W> key, lanes_t<W>& rank) {
  if constexpr (R < G) {
    count_beaten<W>(rotate<W, G, R>(key), key, partner_before<W, G, R>(), rank);
    rank_within<W, G, R + 1>(key, rank);
  }
}

// Groups of V vectors: every vector against every rotation of every vector.
template <int W, int V, int R = 0>
WGSEF_ALWAYS_INLINE void rank_across(const lanes_t<W> (&key)[V], lanes_t<W> (&rank)[V]) {
  if constexpr (R < W) {
    for (int a = 0; a < V; ++a) {
      for (int b = 0; b < V; ++b) {
        if (a == b && R == 0) continue;
        const lanes_t<W> before = a == b ? partner_before<W, W, R>() : lanes_t<W>{} - (b < a);
        count_beaten<W>(rotate<W, W, R>(key[b]), key[a], before, rank[a]);
      }
    }
    rank_across<W, V, R + 1>(key, rank);
  }
}

// Rank form for groups of M (4 to 32): keep a lane when fewer than n lanes of
// its group rank before it.
template <int W, int M>
WGSEF_ALWAYS_INLINE void rank_groups(const float* w, int64_t count, int n, uint8_t* keep) {
  if constexpr (M <= W) {
    const auto rank_vector = [n](const float* values, uint8_t* out) {
      const lanes_t<W> key = load_keys<W>(values);
      lanes_t<W> rank{};
      rank_within<W, M>(key, rank);
      store_keep<W>(rank > -n, out);
    };
    int64_t e = 0;
    for (; e + W <= count; e += W) rank_vector(w + e, keep + e);
    if (e < count) {
      // the last groups fill part of a vector: pad them with whole zero groups,
      // which rank among themselves only, so nothing is read or written past count
      float values[W] = {};
      uint8_t kept[W];
      std::memcpy(values, w + e, static_cast<size_t>(count - e) * sizeof(float));
      rank_vector(values, kept);
      std::memcpy(keep + e, kept, static_cast<size_t>(count - e));
    }
  } else {
    constexpr int V = M / W;
    for (int64_t g = 0; g < count; g += M) {
      lanes_t<W> key[V], rank[V];
      for (int v = 0; v < V; ++v) {
        key[v] = load_keys<W>(w + g + v * W);
        rank[v] = lanes_t<W>{};
      }
      rank_across<W, V>(key, rank);
      for (int v = 0; v < V; ++v) store_keep<W>(rank[v] > -n, keep + g + v * W);
    }
  }
}

template <int W, int S, int... L>
WGSEF_ALWAYS_INLINE lanes_t<W> swap_xor(lanes_t<W> v, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(v, v, (L ^ S)...);
}
// every lane gets combine() over the W lanes (max, min, sum), in log2(W) steps
template <int W, int S = W / 2, typename Combine>
WGSEF_ALWAYS_INLINE lanes_t<W> spread(lanes_t<W> v, Combine combine) {
  if constexpr (S == 0) {
    return v;
  } else {
    return spread<W, S / 2>(combine(v, swap_xor<W, S>(v, std::make_integer_sequence<int, W>{})),
                            combine);
  }
}
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> spread_max(lanes_t<W> v) {
  return spread<W>(v, [](lanes_t<W> a, lanes_t<W> b) { return lanes_max<W>(a, b); });
}
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> spread_min(lanes_t<W> v) {
  return spread<W>(v, [](lanes_t<W> a, lanes_t<W> b) { return lanes_min<W>(a, b); });
}
template <int W>
WGSEF_ALWAYS_INLINE lanes_t<W> spread_sum(lanes_t<W> v) {
  return spread<W>(v, [](lanes_t<W> a, lanes_t<W> b) { return a + b; });
}

// n = 1 for groups of any multiple of W: the first lane holding the group max.
template <int W>
WGSEF_ALWAYS_INLINE void first_max_groups(const float* w, int64_t count, int64_t m, uint8_t* keep) {
  const lanes_t<W> lane = lane_index<W>();
  for (int64_t g = 0; g < count; g += m) {
    lanes_t<W> best{};
    for (int64_t v = 0; v < m; v += W) best = lanes_max<W>(best, load_keys<W>(w + g + v));
    best = spread_max<W>(best);
    lanes_t<W> first = lanes_t<W>{} + static_cast<int32_t>(m);
    for (int64_t v = 0; v < m; v += W) {
      const lanes_t<W> at = lane + static_cast<int32_t>(v);
      first = lanes_min<W>(first, load_keys<W>(w + g + v) == best ? at : first);
    }
    std::memset(keep + g, 0, static_cast<size_t>(m));
    keep[g + spread_min<W>(first)[0]] = 1;
  }
}

// n = 1 for groups of a fixed M = V * W: keys stay in registers, the maxima
// and first indices are reduced as a tree.
template <int W, int M>
WGSEF_ALWAYS_INLINE void first_max_fixed(const float* w, int64_t count, uint8_t* keep) {
  constexpr int V = M / W;
  const lanes_t<W> lane = lane_index<W>();
  for (int64_t g = 0; g < count; g += M) {
    lanes_t<W> key[V];
    for (int v = 0; v < V; ++v) key[v] = load_keys<W>(w + g + v * W);
    lanes_t<W> best = key[0];
    for (int v = 1; v < V; ++v) best = lanes_max<W>(best, key[v]);
    best = spread_max<W>(best);
    lanes_t<W> first = lanes_t<W>{} + M;
    for (int v = V - 1; v >= 0; --v)
      first = lanes_min<W>(first, key[v] == best ? lane + v * W : first);
    // one kept entry: clear the group's bytes and set one
    std::memset(keep + g, 0, M);
    keep[g + spread_min<W>(first)[0]] = 1;
  }
}

template <int... I>
WGSEF_ALWAYS_INLINE lanes_t<8> pick(lanes_t<8> a, lanes_t<8> b) {
  return __builtin_shufflevector(a, b, I...);
}

// n = 1, m = 8 with 8 lanes: eight groups at a time, transposed so that lane g
// holds group g and vector j its element j; then the max and the first index
// holding it are plain vertical operations, about half the work of
// first_max_groups per element.
WGSEF_ALWAYS_INLINE void first_max_of_eight(const float* w, int64_t count, uint8_t* keep) {
  typedef uint64_t u64x4 __attribute__((vector_size(32)));
  int64_t e = 0;
  for (; e + 64 <= count; e += 64) {
    lanes_t<8> r[8];
    for (int g = 0; g < 8; ++g) r[g] = load_keys<8>(w + e + 8 * g);
    lanes_t<8> t[8], u[8], c[8];
    for (int q = 0; q < 8; q += 2) {  // 32-bit interleave of group pairs
      t[q] = pick<0, 8, 1, 9, 4, 12, 5, 13>(r[q], r[q + 1]);
      t[q + 1] = pick<2, 10, 3, 11, 6, 14, 7, 15>(r[q], r[q + 1]);
    }
    for (int q = 0; q < 8; q += 4) {  // 64-bit interleave
      u[q] = pick<0, 1, 8, 9, 4, 5, 12, 13>(t[q], t[q + 2]);
      u[q + 1] = pick<2, 3, 10, 11, 6, 7, 14, 15>(t[q], t[q + 2]);
      u[q + 2] = pick<0, 1, 8, 9, 4, 5, 12, 13>(t[q + 1], t[q + 3]);
      u[q + 3] = pick<2, 3, 10, 11, 6, 7, 14, 15>(t[q + 1], t[q + 3]);
    }
    for (int j = 0; j < 4; ++j) {  // 128-bit halves: column j and column j + 4
      c[j] = pick<0, 1, 2, 3, 8, 9, 10, 11>(u[j], u[j + 4]);
      c[j + 4] = pick<4, 5, 6, 7, 12, 13, 14, 15>(u[j], u[j + 4]);
    }
    lanes_t<8> best = c[0];
    for (int j = 1; j < 8; ++j) best = lanes_max<8>(best, c[j]);
    lanes_t<8> first = lanes_t<8>{} + 7;
    for (int j = 6; j >= 0; --j) first = c[j] == best ? lanes_t<8>{} + j : first;
    // group g's eight keep bytes as one little-endian word: byte first[g] is 1
    const u64x4 shift_lo =
        __builtin_convertvector(__builtin_shufflevector(first, first, 0, 1, 2, 3), u64x4);
    const u64x4 shift_hi =
        __builtin_convertvector(__builtin_shufflevector(first, first, 4, 5, 6, 7), u64x4);
    const u64x4 one = u64x4{} + 1;
    const u64x4 words[2] = {one << (shift_lo * 8), one << (shift_hi * 8)};
    std::memcpy(keep + e, words, sizeof words);
  }
  if (e < count) first_max_groups<8>(w + e, count - e, 8, keep + e);
}

// The n-th largest of count keys (count a multiple of W, 1 <= n <= count),
// bit by bit from the top: the largest T with at least n keys >= T. Bits that
// the smallest and largest key share are known from the start; with
// resolved_bits below the number of remaining bits, the result has its lower
// bits cleared, so it is at most the n-th largest (a lower bound).
template <int W>
WGSEF_ALWAYS_INLINE uint32_t nth_largest(const uint32_t* key, int64_t count, int64_t n,
                                         int resolved_bits = 32) {
  lanes_t<W> lo = lanes_t<W>{} + 0x7FFFFFFF, hi{};
  for (int64_t v = 0; v < count; v += W) {
    lo = lanes_min<W>(lo, load<W>(key + v));
    hi = lanes_max<W>(hi, load<W>(key + v));
  }
  const uint32_t low = static_cast<uint32_t>(spread_min<W>(lo)[0]);
  const uint32_t high = static_cast<uint32_t>(spread_max<W>(hi)[0]);
  if (low == high) return low;
  const int free_bits = 32 - __builtin_clz(low ^ high);
  uint32_t threshold = low & ~((1u << free_bits) - 1);
  for (int bit = free_bits - 1; bit >= std::max(0, free_bits - resolved_bits); --bit) {
    const int32_t trial = static_cast<int32_t>(threshold | (1u << bit));
    lanes_t<W> at_least{};
    for (int64_t v = 0; v < count; v += W) at_least += load<W>(key + v) >= trial;
    if (-spread_sum<W>(at_least)[0] >= n) threshold = static_cast<uint32_t>(trial);
  }
  return threshold;
}

// One bit per lane of a compare result, lane 0 lowest.
template <int W, int... L>
WGSEF_ALWAYS_INLINE int lane_bits(lanes_t<W> mask, std::integer_sequence<int, L...>) {
  return spread_sum<W>(mask & lanes_t<W>{(1 << L)...})[0];
}

#ifdef WGSEF_X86_AVX2
// kPackOrder.lanes[bits] lists the set bits of `bits` from the lowest, padded
// with zeros: the lanes a left-pack takes, in index order. int32 entries (8
// KiB) load as a vector with no widening shuffle.
struct PackOrder {
  int32_t lanes[256][8];
};
constexpr PackOrder make_pack_order() {
  PackOrder order{};
  for (int bits = 0; bits < 256; ++bits) {
    int out = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if (bits >> lane & 1) order.lanes[bits][out++] = lane;
    }
  }
  return order;
}
constexpr PackOrder kPackOrder = make_pack_order();

// AVX2 bodies of lane_bits and append_indices. Not always_inline: they are
// inlined where the caller is flattened into an AVX2 function (select_avx2);
// GCC refuses to force AVX2 code into a generic template first.
__attribute__((target("avx2"))) inline int lane_bits_avx2(lanes_t<8> mask) {
  return _mm256_movemask_ps(_mm256_castsi256_ps(reinterpret_cast<__m256i>(mask)));
}
__attribute__((target("avx2"))) inline int64_t append_indices_avx2(int bits, int32_t first,
                                                                   uint32_t* index, int64_t count) {
  const __m256i order =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kPackOrder.lanes[bits]));
  // eight lanes are stored whatever the count; the buffer has room
  const __m256i indices = _mm256_add_epi32(order, _mm256_set1_epi32(first));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + count), indices);
  return count + __builtin_popcount(static_cast<unsigned>(bits));
}
#endif

template <int W>
WGSEF_ALWAYS_INLINE int lane_bits(lanes_t<W> mask) {
#ifdef WGSEF_X86_AVX2
  if constexpr (W == 8) return lane_bits_avx2(mask);
#endif
  return lane_bits<W>(mask, std::make_integer_sequence<int, W>{});
}

// Appends first + j for the set bits j of `bits` (a vector's lanes) to index,
// in order, without branches; returns the new count. index needs room for W
// entries past the count.
template <int W>
WGSEF_ALWAYS_INLINE int64_t append_indices(int bits, int32_t first, uint32_t* index,
                                           int64_t count) {
#ifdef WGSEF_X86_AVX2
  if constexpr (W == 8) return append_indices_avx2(bits, first, index, count);
#endif
  for (int j = 0; j < W; ++j) {
    index[count] = static_cast<uint32_t>(first + j);
    count += bits >> j & 1;
  }
  return count;
}

// Candidates in index order, padded with key -1 (ranks after every key) to V
// vectors: keep a candidate when fewer than n candidates rank before it.
// Returns the n-th largest key.
template <int W, int V>
WGSEF_ALWAYS_INLINE uint32_t rank_candidates(const uint32_t* cand_key, const uint32_t* cand_index,
                                             int64_t count, int64_t n, uint8_t* keep) {
  lanes_t<W> key[V], rank[V];
  for (int v = 0; v < V; ++v) {
    key[v] = load<W>(cand_key + v * W);
    rank[v] = lanes_t<W>{};
  }
  rank_across<W, V>(key, rank);  // rank = -(candidates ranked before)
  int32_t ranks[V * W];
  lanes_t<W> nth{};
  for (int v = 0; v < V; ++v) {
    std::memcpy(ranks + v * W, &rank[v], sizeof rank[v]);
    nth = lanes_max<W>(nth, rank[v] == static_cast<int32_t>(1 - n) ? key[v] : lanes_t<W>{});
  }
  for (int64_t c = 0; c < count; ++c) keep[cand_index[c]] = ranks[c] > -n;
  return static_cast<uint32_t>(spread_max<W>(nth)[0]);
}

// Ranks the candidates when they fill at most V_MAX vectors (stores the n-th
// largest key in `nth`); returns whether it did.
constexpr int64_t kMaxRankedCandidates = 48;
template <int W, int V = 1, int V_MAX = kMaxRankedCandidates / W>
WGSEF_ALWAYS_INLINE bool rank_few_candidates(const uint32_t* cand_key, const uint32_t* cand_index,
                                             int64_t vectors, int64_t count, int64_t n,
                                             uint8_t* keep, uint32_t& nth) {
  if constexpr (V > V_MAX) {
    return false;
  } else {
    if (vectors == V) {
      nth = rank_candidates<W, V>(cand_key, cand_index, count, n, keep);
      return true;
    }
    return rank_few_candidates<W, V + 1, V_MAX>(cand_key, cand_index, vectors, count, n, keep, nth);
  }
}

// Large groups (m a multiple of W with at least n slices, see below). Only
// keys at or above a lower bound on the group's n-th largest key can be kept;
// those candidates are gathered and ranked. The bound comes from the previous
// group when there is one (`hint`: a key that would have let through about
// hint_candidates(n) keys there; on the weights of one layer it bounds the
// next group's n-th largest with a few keys to spare). It is checked by
// counting, since a valid bound has at least n keys at or above it, and
// dropped when it lets through too many. Otherwise the n-th largest of the
// maxima of disjoint slices is the bound, since n slices each hold a key at
// least that large; a slice is one lane of a chunk of up to 8 consecutive
// vectors, so the maxima come from vertical vector maxes. The guess usually
// leaves fewer candidates than the slice bound, which is what makes large
// groups cheap. scratch holds 3m + 2W <= 4m keys.
template <int W>
constexpr int64_t slices_of(int64_t m) {
  return (m + 8 * W - 1) / (8 * W) * W;
}
constexpr int64_t hint_candidates(int64_t n) { return n + n / 2 + 4; }

// The indices of the keys of w[0, m) at or above bound, in order.
template <int W>
WGSEF_ALWAYS_INLINE int64_t gather_candidates(const float* w, int64_t m, int32_t bound,
                                              uint32_t* cand_index) {
  int64_t count = 0;
  for (int64_t v = 0; v < m; v += W) {
    count = append_indices<W>(lane_bits<W>(load_magnitudes<W>(w + v) > bound - 1),
                              static_cast<int32_t>(v), cand_index, count);
  }
  return count;
}

template <int W>
WGSEF_ALWAYS_INLINE void select_large_group(const float* w, int64_t m, int64_t n, uint8_t* keep,
                                            uint32_t* scratch, uint32_t& hint) {
  if (m <= 0) return;  // callers never pass it; the guard bounds m for the compiler
  uint32_t* cand_key = scratch;
  uint32_t* cand_index = scratch + m + W;
  int64_t count = 0;
  uint32_t bound = hint;
  if (hint != SelectBuffers::kNoHint) {
    count = gather_candidates<W>(w, m, static_cast<int32_t>(hint), cand_index);
  }
  if (count < n || count > std::max(kMaxRankedCandidates, 2 * hint_candidates(n))) {
    uint32_t* slice_max = scratch + 2 * m + 2 * W;  // slices_of(m) <= m entries
    int64_t slices = 0;
    for (int64_t chunk = 0; chunk < m; chunk += 8 * W) {
      lanes_t<W> most{};
      for (int64_t v = chunk; v < std::min(m, chunk + 8 * W); v += W) {
        most = lanes_max<W>(most, load_magnitudes<W>(w + v));
      }
      std::memcpy(slice_max + slices, &most, sizeof most);
      slices += W;
    }
    // 8 bits past the shared prefix bound the n-th largest maximum within ~1%;
    // a NaN maximum counts as +inf
    bound = std::min(nth_largest<W>(slice_max, slices, n, 8), 0x7F800000u);
    count = gather_candidates<W>(w, m, static_cast<int32_t>(bound), cand_index);
  }
  const int64_t vectors = (count + W - 1) / W;
  for (int64_t c = 0; c < count; ++c) cand_key[c] = nm::rank_key(w[cand_index[c]]);
  std::memset(keep, 0, static_cast<size_t>(m));
  uint32_t nth;
  std::fill(cand_key + count, cand_key + vectors * W, ~0u);  // -1 as a signed key
  if (!rank_few_candidates<W>(cand_key, cand_index, vectors, count, n, keep, nth)) {
    // many candidates (ties, heavy tails): the exact n-th largest is the
    // threshold, ties at it kept in index order; zero padding can matter only
    // when the threshold is 0, and then every key is a candidate (count = m)
    std::fill(cand_key + count, cand_key + vectors * W, 0u);
    nth = nth_largest<W>(cand_key, vectors * W, n);
    nm::keep_above_threshold(cand_key, cand_index, count, n, nth, keep);
  }
  // The next group's bound: count keys lie at or above `bound` and n at or
  // above `nth`; a bound moved linearly from these two aims at
  // hint_candidates(n) candidates.
  const int64_t top = nth, low = bound;
  hint = static_cast<uint32_t>(
      std::max<int64_t>(0, top - (top - low) * (hint_candidates(n) - n) / (count - n + 1)));
}

#ifdef WGSEF_X86_AVX2
// flatten: inline every call, the *_avx2 helpers included. A function of its
// own: flattening select_avx2 as a whole slows its calls on short blocks
// (conv layouts, 36 values per call).
__attribute__((target("avx2,fma"), flatten, noinline)) void select_large_groups_avx2(
    const float* w, int64_t count, int64_t m, int64_t n, uint8_t* keep, uint32_t* scratch,
    uint32_t& hint) {
  for (int64_t g = 0; g < count; g += m)
    select_large_group<8>(w + g, m, n, keep + g, scratch, hint);
}
#endif

template <int W>
WGSEF_ALWAYS_INLINE void select_lanes(const float* w, int64_t count, int64_t m, int64_t n,
                                      uint8_t* keep, uint32_t* scratch, uint32_t& hint) {
  const int rank_n = static_cast<int>(n);
  switch (m) {
    case 4:
      return rank_groups<W, 4>(w, count, rank_n, keep);
    case 8:
      if (n > 1) return rank_groups<W, 8>(w, count, rank_n, keep);
      if constexpr (W == 8) return first_max_of_eight(w, count, keep);
      return first_max_groups<W>(w, count, m, keep);
    case 16:
      return n == 1 ? first_max_fixed<W, 16>(w, count, keep)
                    : rank_groups<W, 16>(w, count, rank_n, keep);
    case 32:
      return n == 1 ? first_max_fixed<W, 32>(w, count, keep)
                    : rank_groups<W, 32>(w, count, rank_n, keep);
    default:
      break;
  }
  if (m % W == 0 && n == 1) return first_max_groups<W>(w, count, m, keep);
  if (m % W == 0 && n <= slices_of<W>(m)) {
#ifdef WGSEF_X86_AVX2
    if constexpr (W == 8) return select_large_groups_avx2(w, count, m, n, keep, scratch, hint);
#endif
    for (int64_t g = 0; g < count; g += m)
      select_large_group<W>(w + g, m, n, keep + g, scratch, hint);
    return;
  }
  nm::select_values(w, count, m, n, keep, scratch);
}

#ifdef WGSEF_X86_AVX2
__attribute__((target("avx2,fma"))) void select_avx2(const float* w, int64_t count, int64_t m,
                                                     int64_t n, uint8_t* keep, uint32_t* scratch,
                                                     uint32_t& hint) {
  select_lanes<8>(w, count, m, n, keep, scratch, hint);
}
#endif
#endif  // WGSEF_HAVE_SHUFFLEVECTOR

}  // namespace

void select_float(const float* w, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                  SelectBuffers& buffers) {
  uint32_t* scratch = buffers.scratch.data();
  if (count <= 0) return;
  if (n <= 0 || n >= m) {
    std::fill(keep, keep + count, static_cast<uint8_t>(n > 0));
    return;
  }
#ifdef WGSEF_HAVE_SHUFFLEVECTOR
#ifdef WGSEF_X86_AVX2
  if (use_avx2()) return select_avx2(w, count, m, n, keep, scratch, buffers.hint);
#endif
  select_lanes<4>(w, count, m, n, keep, scratch, buffers.hint);
#else
  nm::select_values(w, count, m, n, keep, scratch);
#endif
}

}  // namespace wgsef::cpu
