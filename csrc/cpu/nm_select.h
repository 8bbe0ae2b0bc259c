// N:M selection over float32 weights on the CPU, vectorised (nm_select.cpp).
#pragma once

#include <cstdint>

namespace wgsef::cpu {

// keep[e] = 1 for the n best-ranked of every run of m consecutive values of
// w[0, count), 0 otherwise, by the rule of wgsef/nm.h. count is a multiple of
// m; scratch holds 4 * m keys.
void select_float(const float* w, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                  uint32_t* scratch);

}  // namespace wgsef::cpu
