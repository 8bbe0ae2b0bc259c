// Which builds of the vectorised CPU loops may run.
#pragma once

#include <cstdint>

// x86-64 builds carry an AVX2 build of each vectorised loop, compiled with
// __attribute__((target("avx2,fma"))); helpers it calls are always inlined so
// that they are compiled for that target too.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define WGSEF_X86_AVX2 1
#endif
#define WGSEF_ALWAYS_INLINE inline __attribute__((always_inline))

// The vectorised N:M selection needs __builtin_shufflevector (Clang, GCC >= 12);
// older compilers build the scalar selection instead.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define WGSEF_HAVE_SHUFFLEVECTOR 1
#endif

namespace wgsef::cpu {

// W lanes of each element type, for the vectorised loops (GCC vector extensions).
template <int W>
struct Vectors {
  typedef float f32 __attribute__((vector_size(4 * W)));
  typedef double f64 __attribute__((vector_size(8 * W)));
  typedef int32_t i32 __attribute__((vector_size(4 * W)));
  typedef int64_t i64 __attribute__((vector_size(8 * W)));
};

// True when the CPU has AVX2 and FMA (x86-64 only) and the environment
// variable WGSEF_DISABLE_AVX2 is unset or "0"; setting it forces the baseline
// build everywhere, which is how the tests cover that build on AVX2 machines.
bool use_avx2();

}  // namespace wgsef::cpu
