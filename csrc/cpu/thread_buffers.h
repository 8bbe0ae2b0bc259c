// Per-thread buffers kept between calls, so that repeated calls (an optimizer
// step per layer) reuse memory instead of page-faulting fresh allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "wgsef/threshold.h"

namespace wgsef::cpu {

// The most memory a thread keeps cached in each kind of buffer below.
constexpr size_t kThreadCacheBytes = size_t{64} << 20;

// A per-group array (norms, factors) whose memory is kept per thread between
// calls: with 1e5+ groups, fresh arrays would page-fault on every call, which
// costs milliseconds. A thread keeps at most kThreadCacheBytes of them.
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
    Pool& p = pool();
    const size_t bytes = buf_.capacity() * sizeof(T);
    if (bytes > 0 && p.bytes + bytes <= kThreadCacheBytes) {
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

// Threshold-search scratch kept per thread between calls, so that repeated
// calls (an optimizer step per layer) do not page-fault fresh memory; a lease
// that grew it beyond kThreadCacheBytes releases it when it ends.
class WorkspaceLease {
 public:
  WorkspaceLease();
  ~WorkspaceLease();
  Workspace& get() { return ws_; }

 private:
  Workspace& ws_;
};

}  // namespace wgsef::cpu
