#include "fresh_output.h"

#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace wgsef::cpu {

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const uintptr_t data = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t bytes = static_cast<uintptr_t>(out.nbytes());
  if (bytes >= 2 * kHugePage) {
    // only whole huge pages inside the buffer: its neighbours are not ours
    const uintptr_t begin = (data + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (data + bytes) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace wgsef::cpu
