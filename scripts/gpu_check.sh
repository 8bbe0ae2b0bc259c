#!/usr/bin/env bash
# The GPU check for a lent device machine (H100/H200, torch with CUDA, nvcc):
# build with CUDA kernels for sm_90, run every CUDA test (tests/test_cuda.py and
# the device-parametrised reference tests), compute-sanitizer memcheck on a
# short subset, a kernel profile of the targets (scripts/gpu_profile.py) and the
# benchmark suite on CUDA. Logs and results go to $OUT.
# Budget: about 2.5 minutes on an H200; the stage timeouts allow about 9.5. Usage (device tool): bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 WGSEF_CUDA=ON
if [ -z "${CUDA_PATH:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_PATH=/usr/local/cuda; fi
SITE=/tmp/wgsef-site
# An image may set CXX to a compiler whose libstdc++ is static only, which
# CMakeLists.txt rejects (errors raised by the kernels would crash): build with
# the system compiler instead.
if [ -n "${CXX:-}" ] && [[ "$("$CXX" -print-file-name=libstdc++.so)" != /* ]]; then
  echo "CXX=$CXX has no shared libstdc++: building with the system compiler"
  unset CXX CC CUDAHOSTCXX
fi
stage() { echo "== $1 ($(date +%T))" | tee -a "$OUT/$2"; }
{
  date; nvidia-smi; nvcc --version; c++ --version | head -1; cmake --version | head -1; command -v compute-sanitizer
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
grep -E "torch|NVIDIA H|release" "$OUT/env.txt"

stage build build.log
timeout 200 python3 -m pip install -q --no-build-isolation --no-deps --target "$SITE" \
  -Cbuild-dir=/tmp/wgsef-build . >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
export PYTHONPATH="$SITE"
python3 -c "import wgsef; print('wgsef with_cuda =', wgsef.with_cuda)" 2>&1 | tee -a "$OUT/build.log"

stage "CUDA tests" tests.log
# xdist spreads the tests over the host cores when the image has it
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
timeout 150 python3 -m pytest -q -p no:cacheprovider -k cuda -rf $XDIST \
  tests/test_cuda.py tests/test_prox_value.py tests/test_nm.py tests/test_optim.py tests/test_prox_optimizer.py \
  tests/test_coupled_optim.py tests/test_sgd_squares.py tests/test_torch_integration.py tests/test_errors.py \
  >> "$OUT/tests.log" 2>&1
grep -E "^FAILED|passed|failed|error" "$OUT/tests.log" | tail -25

stage compute-sanitizer sanitizer.log
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck --print-limit 20 \
  python3 -m pytest -q -p no:cacheprovider -m cuda "tests/test_cuda.py::test_nm_matches_cpu" \
  "tests/test_cuda.py::test_value_gradient_matches_cpu" \
  "tests/test_cuda.py::test_prox_multi_many_tensors_mixed_dtypes_and_large_terms" >> "$OUT/sanitizer.log" 2>&1
tail -4 "$OUT/sanitizer.log"

stage profile profile.log
timeout 40 python3 scripts/gpu_profile.py >> "$OUT/profile.log" 2>&1
grep -E "wall|^ +[0-9]" "$OUT/profile.log" | head -60

stage "benchmark suite on CUDA (quick, with fc6)" bench.log
timeout 100 python3 bench/suite.py --quick --device cuda --out /tmp/wgsef-suite >> "$OUT/bench.log" 2>&1
cp /tmp/wgsef-suite/suite_cuda.md /tmp/wgsef-suite/suite_cuda.csv "$OUT/"
tail -3 "$OUT/bench.log"
grep -E "huge|model|optimizer|nm_decay|nm_mask 2:4" "$OUT/suite_cuda.md"
echo "== done ($(date +%T))"
