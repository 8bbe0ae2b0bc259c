"""The baseline (non-AVX2) build of the vectorised CPU loops.

On AVX2 machines the other tests exercise only the AVX2 build; here the
correctness tests of the paths with two builds (N:M selection, group norms and
scaling), marked ``baseline_cpu``, run again in a fresh process with
WGSEF_DISABLE_AVX2=1.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(os.environ.get("WGSEF_DISABLE_AVX2", "0") != "0", reason="already the baseline build")
def test_baseline_build_passes_the_correctness_tests():
    here = Path(__file__).parent
    env = dict(os.environ, WGSEF_DISABLE_AVX2="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "baseline_cpu"],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
