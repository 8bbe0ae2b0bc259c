#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace wgsef::cpu {

bool use_avx2() {
  static const bool use = [] {
    const char* disable = std::getenv("WGSEF_DISABLE_AVX2");
    if (disable && std::strcmp(disable, "0") != 0) return false;
#ifdef WGSEF_X86_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return use;
}

}  // namespace wgsef::cpu
