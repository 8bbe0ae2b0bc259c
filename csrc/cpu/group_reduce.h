// The two streaming passes every CPU op is built from: squared group norms
// (read x once) and per-group scaling (read x, write the output once).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../checks.h"
#include "wgsef/threshold.h"

namespace wgsef::cpu {

// A per-group array (norms, factors) whose memory is kept per thread between
// calls: with 1e5+ groups, fresh arrays would page-fault on every call (several
// ms per call on these machines). A thread keeps at most 64 MiB of them.
template <typename T>
class PooledBuffer {
 public:
  explicit PooledBuffer(int64_t n) {
    Pool& p = pool();
    if (!p.free.empty()) {
      buf_ = std::move(p.free.back());
      p.free.pop_back();
      p.bytes -= buf_.capacity() * sizeof(T);
    }
    buf_.assign(static_cast<size_t>(n), T(0));
  }
  ~PooledBuffer() {
    constexpr size_t kKeepBytes = size_t{64} << 20;
    Pool& p = pool();
    const size_t bytes = buf_.capacity() * sizeof(T);
    if (bytes > 0 && p.bytes + bytes <= kKeepBytes) {
      p.bytes += bytes;
      p.free.push_back(std::move(buf_));
    }
  }
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  PooledBuffer(PooledBuffer&& other) noexcept : buf_(std::move(other.buf_)) {}

  T* data() { return buf_.data(); }
  const T* data() const { return buf_.data(); }
  int64_t size() const { return static_cast<int64_t>(buf_.size()); }

 private:
  struct Pool {
    std::vector<std::vector<T>> free;
    size_t bytes = 0;
  };
  static Pool& pool() {
    thread_local Pool p;
    return p;
  }
  std::vector<T> buf_;
};

// ||x_{G_i}||^2 for every group, accumulated in float64. x must be contiguous.
PooledBuffer<double> group_sq_norms(const at::Tensor& x, const GroupArgs& g);

// dst_{G_i} = factors[i] * src_{G_i}. src and dst are contiguous and may alias.
void scale_groups(const at::Tensor& src, const at::Tensor& dst, const GroupArgs& g,
                  const double* factors);

// Threshold-search scratch kept per thread between calls, so that repeated
// calls (an optimizer step per layer) do not page-fault fresh memory; a lease
// that grew it beyond 64 MiB releases it when it ends.
class WorkspaceLease {
 public:
  WorkspaceLease();
  ~WorkspaceLease();
  Workspace& get() { return ws_; }

 private:
  Workspace& ws_;
};

// The weights as host doubles, or nullptr for all ones; checks their values.
const double* host_weights(const char* op, const GroupArgs& g);

}  // namespace wgsef::cpu
