// N:M masks on the CPU: nm_mask (the mask alone) and nm_decay (the mask and
// the decayed weight W * (mask + D * (1 - mask)) in the same pass).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "wgsef/nm.h"

namespace wgsef::cpu {
namespace {

struct NMLayout {
  int64_t outer, length, inner;  // w viewed as (outer, length, inner); groups run along length
};

NMLayout check_nm_args(const char* op, const at::Tensor& w, int64_t n, int64_t m, int64_t dim) {
  check_floating_x(op, w);
  TORCH_CHECK_VALUE(m >= 1, "wgsef.", op, ": m must be >= 1, got ", m);
  TORCH_CHECK_VALUE(n >= 0 && n <= m, "wgsef.", op, ": n must lie in [0, m = ", m, "], got ", n);
  TORCH_CHECK_VALUE(m <= std::numeric_limits<int32_t>::max(), "wgsef.", op, ": m is too large");
  TORCH_CHECK_VALUE(w.dim() >= 1, "wgsef.", op, ": w must have at least 1 dimension");
  TORCH_CHECK_VALUE(dim >= -w.dim() && dim < w.dim(), "wgsef.", op, ": dim ", dim,
                    " is out of range for a ", w.dim(), "-D tensor");
  const int64_t d = dim < 0 ? dim + w.dim() : dim;
  TORCH_CHECK_VALUE(w.size(d) % m == 0, "wgsef.", op, ": the size of dim ", dim, " (", w.size(d),
                    ") must be a multiple of m = ", m);
  NMLayout l{1, w.size(d), 1};
  for (int64_t i = 0; i < d; ++i) l.outer *= w.size(i);
  for (int64_t i = d + 1; i < w.dim(); ++i) l.inner *= w.size(i);
  return l;
}

// Key type of the ranking: exact for every input dtype (16-bit floats widen
// to float exactly).
template <typename T>
using key_t = std::conditional_t<std::is_same_v<T, double>, uint64_t, uint32_t>;

template <typename T>
inline key_t<T> key_of(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return nm::rank_key(v);
  } else {
    return nm::rank_key(static_cast<float>(v));
  }
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

// Groups are gathered, a block at a time, into a contiguous key buffer: for
// last-dim groups (inner == 1) a block is a run of whole groups; for strided
// groups (conv input channels) the m elements of each inner position.
template <typename T>
void nm_kernel(const T* w, bool* mask, T* out, const NMLayout& l, int64_t n, int64_t m,
               double decay) {
  using K = key_t<T>;
  const int64_t blocks = l.length / m;  // groups per (outer, inner) line
  const int64_t tasks = l.outer * blocks;
  const int64_t per_task = std::max<int64_t>(1, m * l.inner);
  const int64_t run_groups = l.inner == 1 ? std::max<int64_t>(1, 4096 / m) : 1;
  at::parallel_for(0, tasks, std::max<int64_t>(1, 32768 / per_task), [&](int64_t t0, int64_t t1) {
    std::vector<K> key(static_cast<size_t>(run_groups * m)), scratch(static_cast<size_t>(3 * m));
    std::vector<uint8_t> keep(static_cast<size_t>(run_groups * m));
    using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const acc_t pruned = static_cast<acc_t>(decay);
    auto scale = [pruned](T v, uint8_t kept) {
      return static_cast<T>(static_cast<acc_t>(v) * (kept ? acc_t(1) : pruned));
    };
    if (l.inner == 1) {
      // tasks are consecutive groups of one contiguous array
      for (int64_t t = t0; t < t1; t += run_groups) {
        const int64_t groups = std::min(run_groups, t1 - t);
        const int64_t first = t * m;  // (t / blocks) * length + (t % blocks) * m
        const int64_t count = groups * m;
        for (int64_t e = 0; e < count; ++e) key[e] = key_of(w[first + e]);
        nm::select_top_n(key.data(), groups, m, n, keep.data(), scratch.data());
        if (mask) std::memcpy(mask + first, keep.data(), static_cast<size_t>(count));
        if (out) apply_keep(w + first, keep.data(), count, pruned, out + first);
      }
      return;
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t base = ((t / blocks) * l.length + (t % blocks) * m) * l.inner;
      for (int64_t i = 0; i < l.inner; ++i) {
        for (int64_t j = 0; j < m; ++j) key[j] = key_of(w[base + i + j * l.inner]);
        nm::select_top_n(key.data(), 1, m, n, keep.data(), scratch.data());
        for (int64_t j = 0; j < m; ++j) {
          const int64_t at = base + i + j * l.inner;
          if (mask) mask[at] = keep[j];
          if (out) out[at] = scale(w[at], keep[j]);
        }
      }
    }
  });
}

// The mask is written only when keep_mask; the decayed weight only when decay is given.
std::tuple<at::Tensor, at::Tensor> run(const char* op, const at::Tensor& w, int64_t n, int64_t m,
                                       int64_t dim, std::optional<double> decay, bool keep_mask) {
  const NMLayout l = check_nm_args(op, w, n, m, dim);
  const at::Tensor wc = w.contiguous();
  at::Tensor mask = at::empty(keep_mask ? wc.sizes() : at::IntArrayRef{0}, wc.options().dtype(at::kBool));
  at::Tensor out = decay ? at::empty_like(wc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "nm_kernel", [&] {
    nm_kernel(wc.const_data_ptr<scalar_t>(), keep_mask ? mask.mutable_data_ptr<bool>() : nullptr,
              decay ? out.mutable_data_ptr<scalar_t>() : nullptr, l, n, m,
              decay.value_or(0.0));
  });
  return {out, mask};
}

at::Tensor nm_mask(const at::Tensor& w, int64_t n, int64_t m, int64_t dim) {
  return std::get<1>(run("nm_mask", w, n, m, dim, std::nullopt, true));
}

std::tuple<at::Tensor, at::Tensor> nm_decay(const at::Tensor& w, int64_t n, int64_t m, int64_t dim,
                                            const at::Tensor& decay, c10::string_view grad_mode,
                                            double srste_weight) {
  TORCH_CHECK_VALUE(decay.numel() == 1, "wgsef.nm_decay: decay must be a one-element tensor, got shape ",
                    decay.sizes());
  const double d = decay.item<double>();
  TORCH_CHECK_VALUE(d >= 0.0 && d <= 1.0, "wgsef.nm_decay: decay must lie in [0, 1], got ", d);
  TORCH_CHECK_VALUE(grad_mode == "ste" || grad_mode == "scaled", "wgsef.nm_decay: grad_mode must be 'ste' or 'scaled', got '",
                    grad_mode, "'");
  TORCH_CHECK_VALUE(srste_weight >= 0.0, "wgsef.nm_decay: srste_weight must be >= 0, got ", srste_weight);
  // the backward needs the mask only to scale the gradient or add the SR-STE term
  return run("nm_decay", w, n, m, dim, d, grad_mode == "scaled" || srste_weight > 0.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgsef, CPU, m) {
  m.impl("nm_mask", &nm_mask);
  m.impl("nm_decay", &nm_decay);
}

}  // namespace wgsef::cpu
