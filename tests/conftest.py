import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# CAFFEPY_TEST_MODE=gpu runs the tests with caffepy in GPU mode (blobs are CuPy arrays);
# tools/gpu_check.sh uses it. Unset (or "cpu"): the ordinary NumPy run.
TEST_MODE = os.environ.get("CAFFEPY_TEST_MODE", "cpu").strip().lower() or "cpu"
# CAFFEPY_CUPY_STANDIN=1 (with CAFFEPY_TEST_MODE=gpu) runs the GPU path without a GPU, on the
# strict NumPy-backed stand-in for CuPy in tests/standin (its docstring says what it checks).
if TEST_MODE == "gpu" and os.environ.get("CAFFEPY_CUPY_STANDIN", "").strip() == "1":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin"))


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: one of Caffe's reference cases "
                                       "(tests/conformance, plus newer ones in ../shared)")
    if TEST_MODE not in ("cpu", "gpu"):
        raise pytest.UsageError("CAFFEPY_TEST_MODE must be 'cpu' or 'gpu', not %r" % TEST_MODE)
    if TEST_MODE == "gpu":
        # Fail the whole run at once, with the reason, rather than every test one by one.
        try:
            import cupy
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # ImportError, or CUDA's own errors (no driver, no device)
            raise pytest.UsageError("CAFFEPY_TEST_MODE=gpu needs CuPy and a CUDA device: %s: %s"
                                    % (type(e).__name__, e))
        if n < 1:
            raise pytest.UsageError("CAFFEPY_TEST_MODE=gpu: CuPy sees no CUDA device")


@pytest.fixture(scope="session", autouse=True)
def _caffepy_test_mode():
    """GPU mode for the whole session when CAFFEPY_TEST_MODE=gpu (tests that switch to CPU
    themselves still can)."""
    if TEST_MODE != "gpu":
        yield
        return
    from caffepy import backend
    backend.set_mode_gpu()
    yield
    backend.set_mode_cpu()


@pytest.fixture(autouse=True)
def _caffepy_restore_gpu_mode():
    """In GPU mode, put GPU mode back after any test that switched caffepy to CPU."""
    yield
    if TEST_MODE == "gpu":
        from caffepy import backend
        if backend.mode() != backend.GPU:
            backend.set_mode_gpu()


@pytest.fixture
def threads():
    """Sets caffepy's thread count for one test (``threads(n)``) and puts the previous
    setting back."""
    from caffepy import backend, parallel_chunks
    saved = backend._num_threads

    def set_threads(n):
        backend.set_num_threads(n)
        parallel_chunks.get_pool()

    yield set_threads
    backend._num_threads = saved
    parallel_chunks.get_pool()


def pytest_report_header(config):
    if TEST_MODE != "gpu":
        return "caffepy test mode: %s (CAFFEPY_TEST_MODE)" % TEST_MODE
    import cupy
    return "caffepy test mode: gpu (CAFFEPY_TEST_MODE), on CuPy %s from %s" % (
        cupy.__version__, os.path.dirname(os.path.dirname(cupy.__file__)))


_counts = {}


def pytest_runtest_logreport(report):
    if "conformance" not in report.keywords:
        return
    kind = "solver" if "solver" in report.nodeid else "layer"
    c = _counts.setdefault(kind, {"passed": 0, "failed": 0, "skipped": 0})
    if report.skipped and report.when in ("setup", "call"):
        c["skipped"] += 1
    elif report.when == "call":
        c["passed" if report.passed else "failed"] += 1
    elif report.when == "setup" and report.failed:
        c["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _counts:
        return
    from helpers import LAYER_CASES, REPO_CONFORMANCE, SOLVER_CASES
    terminalreporter.write_sep("=", "Caffe conformance cases")
    for kind, c in sorted(_counts.items()):
        cases = LAYER_CASES if kind == "layer" else SOLVER_CASES
        outside = sum(1 for d in cases.values()
                      if not os.path.abspath(d).startswith(os.path.abspath(REPO_CONFORMANCE)))
        ran = c["passed"] + c["failed"]
        terminalreporter.write_line("%s cases: %d ran, %d passed, %d failed, %d skipped "
                                    "(%d read from outside tests/conformance)"
                                    % (kind, ran, c["passed"], c["failed"], c["skipped"], outside))
