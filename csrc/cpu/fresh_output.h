// Fresh output tensors of the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace wgsef::cpu {

// at::empty, plus (on Linux, for outputs of 4 MiB and more) a hint that the
// buffer be backed by transparent huge pages: the kernel then writes it with
// one page fault per 2 MiB instead of one per 4 KiB; on a fresh output of
// 100 MB the page faults are most of the cost of writing it. A hint only:
// with THP off it changes nothing.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace wgsef::cpu
