// The float32 inner loops of the two streaming passes (group norms, group
// scaling). On x86-64 CPUs with AVX2 and FMA a 256-bit build of each loop is
// picked at run time (cpu_features.h); elsewhere the baseline build (SSE2,
// NEON) runs.
#pragma once

#include <cstdint>

namespace wgsef::cpu {

// Sum of squares of p[0, n): blocks of 256 elements summed in float lanes,
// the block sums accumulated in float64 lanes, a tail of fewer than four
// vectors in float64. The order depends only on n and the CPU's
// vector width, so identical runs get identical sums.
double sum_squares_f32(const float* p, int64_t n);

// dst[i] = src[i] * factor (src and dst may be the same array)
void scale_f32(const float* src, float* dst, int64_t n, float factor);

// dst[i] = src[i] * factors[i] (src and dst may be the same array)
void scale_each_f32(const float* src, float* dst, const float* factors, int64_t n);

}  // namespace wgsef::cpu
