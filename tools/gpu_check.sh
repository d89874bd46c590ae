#!/usr/bin/env bash
# caffepy's one prepared GPU check (docs/gpu.md). Run from the repository root on a machine
# with an NVIDIA GPU:
#
#     bash tools/gpu_check.sh
#
# It prints everything to stdout (and, where $OUT is set, also to $OUT/gpu_check.log with
# pytest's JUnit XML beside it) and ends within about 8.5 minutes (GPU_CHECK_BUDGET, 500 s,
# caps every step):
#   1. the environment: nvidia-smi, Python, NumPy, CuPy and the device count;
#   2. CuPy if missing: local wheels in .whl/ first, then pip (cupy-cuda12x, else cupy-cuda11x);
#   3. the Caffe conformance cases in GPU mode (CAFFEPY_TEST_MODE=gpu), from tests/conformance;
#   4. the layer unit tests in GPU mode (informational: several of them compare blob arrays
#      with NumPy directly, which CuPy refuses; see docs/gpu.md);
#   5. benchmarks/bench_nets.py --gpu.
# Environment: PYTHON (default python3), GPU_CHECK_VENV=1 (make a venv with
# --system-site-packages in build/gpu-venv first), GPU_CHECK_ITER (benchmark iterations, 20).
set -u
cd "$(dirname "$0")/.." || exit 2
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    JUNIT_DIR=$OUT
else
    exec 2>&1
    JUNIT_DIR=
fi
export PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/caffepy-cupy-cache}
export CUPY_TF32=0     # plain float32 matmuls (Caffe's numbers), never TF32
START=$(date +%s)
STATUS=0
DEADLINE=$(( START + ${GPU_CHECK_BUDGET:-500} ))   # whole script: 500 s, under 9 minutes
elapsed() { echo $(( $(date +%s) - START )); }
# cap WANT RESERVE: seconds for a step: WANT, but leave RESERVE seconds for later steps
cap() {
    local t=$(( DEADLINE - $(date +%s) - $2 ))
    [ "$t" -gt "$1" ] && t=$1
    [ "$t" -lt 5 ] && t=5
    echo "$t"
}
section() { echo; echo "===== [$(elapsed)s] $* ====="; }

PY=${PYTHON:-python3}
section "environment"
uname -a
nvidia-smi 2>&1 | head -20 || echo "nvidia-smi: not available"
if [ "${GPU_CHECK_VENV:-0}" = 1 ]; then
    "$PY" -m venv --system-site-packages build/gpu-venv && PY=build/gpu-venv/bin/python
fi
echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"

pip_try() {   # bounded: the GPU machine may have no network at all
    timeout "$(cap 60 330)" "$PY" -m pip install -q --retries 0 --timeout 10 "$@"
}

section "CuPy"
if ! "$PY" -c "import cupy" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "installing the wheels in .whl/"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl \
            && export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
if ! "$PY" -c "import cupy" 2>/dev/null; then
    echo "CuPy missing: trying pip install cupy-cuda12x, then cupy-cuda11x"
    pip_try cupy-cuda12x || pip_try cupy-cuda11x || echo "pip could not install CuPy"
fi
if ! "$PY" -c "import cupy; print('cupy', cupy.__version__, 'devices:', cupy.cuda.runtime.getDeviceCount())"; then
    echo "FATAL: no working CuPy with a CUDA device; nothing else can be checked"
    exit 3
fi
"$PY" -c "
import cupy, numpy
p = cupy.cuda.runtime.getDeviceProperties(0)
print('numpy', numpy.__version__, '| device 0:', p['name'], '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(),
      '| has add.at:', hasattr(cupy.add, 'at'))
a = cupy.arange(6, dtype=cupy.float32); print('smoke:', float((a * a).sum()), '(expect 55.0)')
"

section "caffepy"
# Prefer what is already installed (the GPU machine may be offline); pip only for what is missing.
if ! "$PY" -c "import numpy, google.protobuf, h5py, pytest" 2>/dev/null; then
    echo "installing caffepy's dependencies with pip"
    pip_try -e '.[test]' || echo "pip install -e '.[test]' failed; going on with PYTHONPATH=src"
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import caffepy, caffepy.backend as b; b.set_mode_gpu(); print('caffepy', caffepy.__file__, 'GPU mode ok, xp =', b.xp().__name__)" \
    || { echo "FATAL: caffepy does not import or cannot enter GPU mode"; exit 4; }
TIMEOUT_OPT=
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT="--timeout=120"

junit() { [ -n "$JUNIT_DIR" ] && echo "--junitxml=$JUNIT_DIR/$1.xml"; }

section "conformance cases, GPU mode"
# no -x: one run on the GPU should show every failing case
CAFFEPY_TEST_MODE=gpu timeout "$(cap 240 200)" "$PY" -m pytest -q -p no:cacheprovider \
    $TIMEOUT_OPT --tb=short --maxfail=40 $(junit conformance) \
    tests/test_conformance_layers.py tests/test_conformance_solvers.py
rc=$?; echo "conformance pytest exit code: $rc (124 = hit the time budget)"
[ $rc -ne 0 ] && STATUS=1

section "layer unit tests, GPU mode (informational)"
CAFFEPY_TEST_MODE=gpu timeout "$(cap 110 90)" "$PY" -m pytest -q -p no:cacheprovider $TIMEOUT_OPT \
    --tb=no -rf $(junit layers) tests/test_layers_*.py
echo "layer tests pytest exit code: $? (failures that point into tests/ with 'Implicit conversion"
echo "to a NumPy array is not allowed' are the tests' own NumPy comparisons, not caffepy's)"

section "benchmark, GPU mode"
timeout "$(cap 90 0)" "$PY" benchmarks/bench_nets.py --iterations "${GPU_CHECK_ITER:-20}" --no-torch --gpu
rc=$?; echo "benchmark exit code: $rc"
[ $rc -ne 0 ] && STATUS=1

section "done in $(elapsed)s, status $STATUS"
exit $STATUS
