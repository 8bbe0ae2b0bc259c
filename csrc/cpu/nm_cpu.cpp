// N:M masks on the CPU: nm_mask (the mask alone) and nm_decay (the mask and
// the decayed weight W * (mask + D * (1 - mask)) in the same pass).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../nm_ops.h"
#include "fresh_output.h"
#include "nm_select.h"
#include "wgsef/nm.h"

namespace wgsef::cpu {
namespace {

// Selects the kept entries of `count` values forming groups of m, contiguous
// in `values`: float32 through the vectorised select_float, double through
// its exact 64-bit keys (16-bit floats arrive widened to float32).
inline void select_groups(const float* values, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                          SelectBuffers& buffers) {
  select_float(values, count, m, n, keep, buffers);
}
inline void select_groups(const double* values, int64_t count, int64_t m, int64_t n, uint8_t* keep,
                          std::vector<uint64_t>& scratch) {
  nm::select_values(values, count, m, n, keep, scratch.data());
}

// out = w * (keep ? 1 : pruned), written so that the compiler vectorises it:
// a select between two factors (kept weights are multiplied by exactly 1).
template <typename T, typename acc_t>
void apply_keep(const T* __restrict w, const uint8_t* __restrict keep, int64_t count, acc_t pruned,
                T* __restrict out) {
  for (int64_t e = 0; e < count; ++e) {
    const acc_t f = keep[e] ? acc_t(1) : pruned;
    out[e] = static_cast<T>(static_cast<acc_t>(w[e]) * f);
  }
}

// Work goes in blocks of about 4096 values. Last-dim groups of float32 or
// double are selected where they lie; otherwise a block is first gathered
// into a contiguous buffer, widened to float32 (16-bit floats) and, for
// strided groups (conv input channels), transposed from (m, inner) to
// (inner, m). Float32 last-dim groups go in blocks of 1024 values and
// prefetch the block kPrefetchBlocks ahead first: the hardware prefetcher
// alone leaves the vector selection waiting on memory. The other paths keep
// the larger blocks, which measured faster for them.
constexpr int64_t kBlockValues = 4096;
constexpr int64_t kPrefetchedBlockValues = 1024;
constexpr int64_t kPrefetchBlocks = 4;
constexpr int64_t kCacheLine = 64;
template <typename T>
void nm_kernel(const T* w, bool* mask, T* out, const NMLayout& l, int64_t n, int64_t m,
               double decay) {
  using select_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  using scratch_t =
      std::conditional_t<std::is_same_v<T, double>, std::vector<uint64_t>, SelectBuffers>;
  constexpr bool in_place = std::is_same_v<T, select_t>;
  const int64_t blocks = l.length / m;  // groups per (outer, inner) line
  const int64_t tasks = l.outer * blocks;
  constexpr bool prefetch = std::is_same_v<T, float>;
  const int64_t block_values = prefetch && l.inner == 1 ? kPrefetchedBlockValues : kBlockValues;
  const int64_t block_groups = std::max<int64_t>(1, block_values / m);
  const int64_t total = l.outer * l.length;
  const select_t pruned = static_cast<select_t>(decay);
  const auto write = [&](int64_t at, uint8_t kept) {
    if (mask) mask[at] = kept;
    if (out) out[at] = static_cast<T>(static_cast<select_t>(w[at]) * (kept ? select_t(1) : pruned));
  };
  const int64_t per_task = std::max<int64_t>(1, m * l.inner);
  at::parallel_for(0, tasks, std::max<int64_t>(1, 32768 / per_task), [&](int64_t t0, int64_t t1) {
    scratch_t scratch(static_cast<size_t>(4 * m));
    std::vector<select_t> values(in_place && l.inner == 1 ? 0
                                                          : static_cast<size_t>(block_groups * m));
    std::vector<uint8_t> keep(static_cast<size_t>(block_groups * m));
    if (l.inner == 1) {
      // tasks are consecutive groups of one contiguous array
      for (int64_t t = t0; t < t1; t += block_groups) {
        const int64_t count = std::min(block_groups, t1 - t) * m;
        const int64_t first = t * m;
        if constexpr (prefetch) {
          const int64_t ahead = first + kPrefetchBlocks * count;
          const int64_t end = std::min(total, ahead + count);
          for (int64_t e = ahead; e < end; e += kCacheLine / static_cast<int64_t>(sizeof(T)))
            __builtin_prefetch(w + e);
        }
        const select_t* block;
        if constexpr (in_place) {
          block = w + first;
        } else {
          for (int64_t e = 0; e < count; ++e) values[e] = static_cast<float>(w[first + e]);
          block = values.data();
        }
        // the mask is written directly (bool is one byte holding 0 or 1)
        uint8_t* kept = mask ? reinterpret_cast<uint8_t*>(mask + first) : keep.data();
        select_groups(block, count, m, n, kept, scratch);
        if (out) apply_keep(w + first, kept, count, pruned, out + first);
      }
      return;
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t base = ((t / blocks) * l.length + (t % blocks) * m) * l.inner;
      for (int64_t i0 = 0; i0 < l.inner; i0 += block_groups) {
        const int64_t positions = std::min(block_groups, l.inner - i0);
        for (int64_t i = 0; i < positions; ++i) {
          for (int64_t j = 0; j < m; ++j)
            values[i * m + j] = static_cast<select_t>(w[base + i0 + i + j * l.inner]);
        }
        select_groups(values.data(), positions * m, m, n, keep.data(), scratch);
        for (int64_t i = 0; i < positions; ++i) {
          for (int64_t j = 0; j < m; ++j) write(base + i0 + i + j * l.inner, keep[i * m + j]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> nm_pass(const char* op, const at::Tensor& w, int64_t n,
                                           int64_t m, int64_t dim, std::optional<double> decay,
                                           bool keep_mask) {
  const NMLayout l = check_nm_args(op, w, n, m, dim);
  const at::Tensor wc = w.contiguous();
  at::Tensor mask =
      empty_output(keep_mask ? wc.sizes() : at::IntArrayRef{0}, wc.options().dtype(at::kBool));
  at::Tensor out = decay ? empty_output(wc.sizes(), wc.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "nm_kernel", [&] {
    nm_kernel(wc.const_data_ptr<scalar_t>(), keep_mask ? mask.mutable_data_ptr<bool>() : nullptr,
              decay ? out.mutable_data_ptr<scalar_t>() : nullptr, l, n, m, decay.value_or(0.0));
  });
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) { register_nm_ops<&nm_pass>(m); }

}  // namespace wgsef::cpu
