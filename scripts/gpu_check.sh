#!/usr/bin/env bash
# The GPU check for a lent device machine (H100/H200, torch with CUDA, nvcc):
# build with CUDA kernels for sm_90, run the CUDA tests, run compute-sanitizer
# on a short test, run the benchmark suite on CUDA. Logs and results go to $OUT.
# Budget: about 8 minutes. Usage (device tool): bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 WGSEF_CUDA=ON
SITE=/tmp/wgsef-site
{
  date; nvidia-smi; nvcc --version; c++ --version | head -1; cmake --version | head -1; command -v compute-sanitizer
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== build" | tee "$OUT/build.log"
timeout 300 python3 -m pip install -q --no-build-isolation --no-deps --target "$SITE" \
  -Cbuild-dir=/tmp/wgsef-build . >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
export PYTHONPATH="$SITE"
python3 -c "import wgsef; print('wgsef with_cuda =', wgsef.with_cuda)" | tee -a "$OUT/build.log"

echo "== CUDA tests" | tee "$OUT/tests.log"
timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py >> "$OUT/tests.log" 2>&1
tail -5 "$OUT/tests.log"

echo "== compute-sanitizer" | tee "$OUT/sanitizer.log"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 -m pytest -q -m cuda \
  -p no:cacheprovider "tests/test_cuda.py::test_nm_matches_cpu" "tests/test_cuda.py::test_value_gradient_matches_cpu" \
  >> "$OUT/sanitizer.log" 2>&1
tail -5 "$OUT/sanitizer.log"

echo "== benchmark suite (quick)" | tee "$OUT/bench.log"
timeout 150 python3 bench/suite.py --quick --out "$OUT" >> "$OUT/bench.log" 2>&1
tail -30 "$OUT/bench.log"
