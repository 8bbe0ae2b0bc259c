// N:M selection over float32 weights on the CPU, vectorised (nm_select.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace wgsef::cpu {

// What select_float keeps between calls on one thread: scratch keys (4m for
// groups of m) and, for large groups, a lower bound on the next group's n-th
// largest key guessed from the last one (only a hint: it is checked).
struct SelectBuffers {
  explicit SelectBuffers(size_t keys) : scratch(keys) {}
  std::vector<uint32_t> scratch;
  static constexpr uint32_t kNoHint = ~0u;
  uint32_t hint = kNoHint;
};

// keep[e] = 1 for the n best-ranked of every run of m consecutive values of
// w[0, count), 0 otherwise, by the rule of wgsef/nm.h. count is a multiple of
// m; buffers.scratch holds at least 4m keys.
void select_float(const float* w, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                  SelectBuffers& buffers);

}  // namespace wgsef::cpu
