// The Python extension module: loading it registers the ops (csrc/ops.cpp and
// the kernels). No tensors cross pybind11; it only reports build facts and
// exposes the torch-free threshold search to the tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <tuple>
#include <vector>

#include "wgsef/threshold.h"

namespace {

// (eta, work, rounds) of the threshold search for breakpoint data c, w.
std::tuple<double, int64_t, int64_t> threshold_search(const std::vector<double>& c,
                                                      const std::vector<double>& w, int64_t k) {
  const int64_t m = static_cast<int64_t>(c.size());
  if (static_cast<int64_t>(w.size()) != m) throw std::invalid_argument("c and w differ in length");
  if (k <= 0 || k >= m) throw std::invalid_argument("need 0 < k < len(c)");
  for (int64_t i = 0; i < m; ++i)
    if (!(c[i] > 0.0) || !(w[i] >= 0.0)) throw std::invalid_argument("need c > 0 and w >= 0");
  std::vector<double> uc(c), uw(w), scratch(4 * c.size());
  wgsef::SearchStats stats;
  const double eta = wgsef::solve_threshold(uc.data(), uw.data(), m, k, scratch.data(), &stats);
  return {eta, stats.work, stats.rounds};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "wgsef native extension: registers torch.ops.wgsef.*";
#ifdef WGSEF_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("torch_version") = WGSEF_TORCH_VERSION;
  m.def("threshold_search", &threshold_search,
        "Root of sum_i clip(c_i*eta - w_i, 0, 1) = k and the search's (work, rounds) counts.");
}
