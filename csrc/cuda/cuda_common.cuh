// What the CUDA kernels share: aligned vectors, warp sums, and how a launch
// over several tensors finds the tensor of a block.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace wgsef::cuda {

constexpr int kThreads = 256;
// Tensors per launch of a multi-tensor kernel: their table travels as a kernel
// argument (by value, so a CUDA graph replays it); CUDA >= 12.1 takes up to
// 32764 bytes of arguments (sm_70 and newer); the largest table is ~10.2 KB.
constexpr int kMaxEntries = 128;

// N values of T loaded or stored as one access of sizeof(T) * N bytes.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// 16 bytes of T: the widest single load.
template <typename T>
constexpr int kVecWidth = 16 / static_cast<int>(sizeof(T));

// Blocks of kThreads for a grid-stride loop over n items.
inline int grid_stride_blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

__device__ inline double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // lane 0 holds the sum
}

// The tensors of one multi-tensor launch, passed to the kernel by value: entry
// i owns the thread blocks [first_block[i], first_block[i + 1]).
template <typename Entry>
struct BlockTable {
  Entry e[kMaxEntries];
  int64_t first_block[kMaxEntries];
  int count = 0;
  int64_t blocks = 0;  // the launch's grid size

  bool full() const { return count == kMaxEntries; }
  void add(const Entry& entry, int64_t entry_blocks) {
    e[count] = entry;
    first_block[count++] = blocks;
    blocks += entry_blocks;
  }
  // The entry that owns this thread block; `block` gets its index in that entry.
  __device__ const Entry& locate(int64_t& block) const {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (first_block[mid] <= static_cast<int64_t>(blockIdx.x)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    block = blockIdx.x - first_block[lo];
    return e[lo];
  }
};

// A non-negative scalar argument read on the device (a CUDA tensor, so that
// a captured graph sees later values) or passed by value (a CPU tensor).
struct Scalar {
  const double* ptr = nullptr;
  double value = 0.0;
  __device__ double get() const { return ptr ? *ptr : value; }
};

// The entries of a 0-/1-D real tensor on the CPU or on `device`, as Scalars:
// CPU values go by value, CUDA ones by pointer (converted to float64 once).
class ScalarArray {
 public:
  ScalarArray(const char* op, const char* name, const at::Tensor& t, const c10::Device& device) {
    TORCH_CHECK_VALUE(t.is_cpu() || t.device() == device, "wgsef.", op, ": ", name,
                      " must be on the CPU or on ", device, ", got ", t.device());
    data_ = t.to(at::kDouble).contiguous();
    size_ = data_.numel();
  }
  Scalar operator[](int64_t i) const {
    Scalar s;
    const int64_t at = size_ == 1 ? 0 : i;
    if (data_.is_cpu()) {
      s.value = data_.const_data_ptr<double>()[at];
    } else {
      s.ptr = data_.const_data_ptr<double>() + at;
    }
    return s;
  }

 private:
  at::Tensor data_;
  int64_t size_ = 0;
};

}  // namespace wgsef::cuda
