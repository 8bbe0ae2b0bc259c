#include "thread_buffers.h"

namespace wgsef::cpu {

namespace {
Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}
}  // namespace

WorkspaceLease::WorkspaceLease() : ws_(thread_workspace()) {}

WorkspaceLease::~WorkspaceLease() {
  if (ws_.data.size() * sizeof(double) > kThreadCacheBytes) ws_.data = std::vector<double>();
}

}  // namespace wgsef::cpu
