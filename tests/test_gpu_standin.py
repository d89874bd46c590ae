"""The GPU code path without a GPU: tests/standin holds a strict NumPy-backed stand-in for
CuPy. These tests check that the stand-in enforces CuPy's host/device rules (else running
caffepy on it would prove nothing), then run every conformance case, layer and solver, with
caffepy in GPU mode on it, in a child pytest (CAFFEPY_TEST_MODE=gpu CAFFEPY_CUPY_STANDIN=1)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import standin_env

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin")

# These tests start the GPU path from an ordinary CPU session (children in GPU mode, or the
# stand-in imported beside the session's modules). In a session that is itself in GPU mode the
# stand-in imported a second time would leave arrays of two different classes behind it, and
# later tests would fail on the mix; the GPU-mode session tests the GPU path directly instead.
pytestmark = pytest.mark.skipif(
    os.environ.get("CAFFEPY_TEST_MODE", "cpu").strip().lower() == "gpu",
    reason="runs the GPU path from a CPU-mode session")


@pytest.fixture(scope="module")
def cp():
    """The stand-in module, imported under its own name without touching sys.modules['cupy']
    for the rest of the run (a real CuPy, if installed, stays what `import cupy` gives)."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k == "cupy" or k.startswith("cupy.") or k == "cupyx"}
    sys.path.insert(0, STANDIN)
    try:
        import cupy
        import cupyx
        yield cupy, cupyx
    finally:
        sys.path.remove(STANDIN)
        for k in [k for k in sys.modules if k == "cupy" or k.startswith("cupy.")
                  or k == "cupyx"]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_device_arrays_never_become_numpy_implicitly(cp):
    cupy, _ = cp
    a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    host = np.ones((2, 3), np.float32)
    for mix in (lambda: a + host, lambda: host + a, lambda: np.add(a, host),
                lambda: cupy.add(a, host), lambda: cupy.matmul(a, host.T)):
        with pytest.raises(TypeError):
            mix()
    np.testing.assert_array_equal(a.get(), np.arange(6).reshape(2, 3))
    assert isinstance(a.get(), np.ndarray) and isinstance(cupy.asnumpy(a), np.ndarray)


def test_numpy_functions_on_device_arrays_stay_on_the_device(cp):
    cupy, _ = cp
    a = cupy.asarray(np.array([[1.0, -2.0], [3.0, 4.0]], np.float32))
    s = np.sum(a)                       # __array_function__: the stand-in's sum
    assert type(s) is cupy.ndarray and s.ndim == 0 and float(s) == 6.0
    m = np.maximum(a, 0)                # __array_ufunc__
    assert type(m) is cupy.ndarray
    np.testing.assert_array_equal(m.get(), [[1, 0], [3, 4]])
    r = a.sum(axis=0)                   # methods too, 0-d and n-d results on the device
    assert type(r) is cupy.ndarray and type(a.max()) is cupy.ndarray
    out = cupy.empty((2, 2), cupy.float32)
    assert cupy.multiply(a, 2, out=out) is out
    np.testing.assert_array_equal(out.get(), [[2, -4], [6, 8]])


def test_host_values_enter_only_as_cupy_allows(cp):
    cupy, cupyx = cp
    a = cupy.zeros((2, 3), cupy.float32)
    a[:] = np.full((2, 3), 2, np.float32)       # CuPy's whole-array copy from the host
    with pytest.raises(TypeError):
        a[...] = np.ones((2, 3), np.float32)    # any other assignment from the host fails
    with pytest.raises(TypeError):
        a[0] = np.ones(3, np.float32)
    a[1] = 5                                      # scalars are fine
    a[0, :2] = cupy.asarray(np.array([7, 8], np.float32))
    np.testing.assert_array_equal(a.get(), [[7, 8, 2], [5, 5, 5]])
    cupyx.scatter_add(a, (cupy.asarray(np.array([0, 0])), cupy.asarray(np.array([2, 2]))),
                      cupy.asarray(np.array([1, 1], np.float32)))
    assert float(a[0, 2]) == 4.0
    with pytest.raises(AttributeError):
        cupy.not_a_cupy_function                  # unknown names never fall back to NumPy


def test_every_conformance_case_runs_in_gpu_mode_on_the_standin():
    env = dict(os.environ, CAFFEPY_TEST_MODE="gpu", CAFFEPY_CUPY_STANDIN="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        os.path.join(HERE, "test_conformance_layers.py"),
                        os.path.join(HERE, "test_conformance_solvers.py")],
                       cwd=os.path.dirname(HERE), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:]
    # the child ran in GPU mode, on the stand-in
    assert "caffepy test mode: gpu (CAFFEPY_TEST_MODE), on CuPy 14.2.0+numpy-standin from %s" \
        % STANDIN in p.stdout, p.stdout[:2000]
    counts = [ln for ln in p.stdout.splitlines()
              if ln.startswith(("layer cases:", "solver cases:"))]
    assert len(counts) == 2, p.stdout[-2000:]
    for ln in counts:
        ran = int(ln.split(":")[1].split()[0])
        assert ran > 0 and ln.split(":")[1].startswith(" %d ran, %d passed, 0 failed, 0 skipped"
                                                       % (ran, ran)), ln


def _train(work, solver, extra_env, *flags):
    env = dict(os.environ, **extra_env)
    p = subprocess.run([sys.executable, "-m", "caffepy", "train", "-solver", solver] + list(flags),
                       cwd=str(work), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]
    return p.stdout


def test_lenet_trains_resumes_and_snapshots_in_gpu_mode_as_on_the_cpu(tmp_path):
    """The LeNet example through the command line with -gpu 0 on the stand-in: LMDB batches
    onto the device, the test net, snapshots and a resume; the same losses, accuracies and
    weights as the CPU run (the two paths sum in different orders: relative 1e-3)."""
    import caffepy
    from caffepy import backend
    from caffepy.cli import example

    example.copy_example("mnist", str(tmp_path))
    with open(tmp_path / "lenet_solver.prototxt") as f:
        text = f.read()
    for key, value in (("max_iter", 20), ("test_interval", 10), ("snapshot", 10),
                       ("display", 5)):
        text = "\n".join(ln if not ln.startswith(key + ":") else "%s: %d" % (key, value)
                         for ln in text.splitlines())
    for mode in ("CPU", "GPU"):
        body = text.replace("solver_mode: GPU", "").replace("solver_mode: CPU", "")
        body = body.replace('snapshot_prefix: "lenet"', 'snapshot_prefix: "%s"' % mode.lower())
        (tmp_path / ("solver_%s.prototxt" % mode)).write_text(
            body + "\nsolver_mode: %s\nrandom_seed: 1701\n" % mode)
    gpu_env = {"PYTHONPATH": STANDIN}
    cpu = _train(tmp_path, "solver_CPU.prototxt", {})
    gpu = _train(tmp_path, "solver_GPU.prototxt", gpu_env, "-gpu", "0")
    resumed = _train(tmp_path, "solver_GPU.prototxt", gpu_env, "-gpu", "0",
                     "-snapshot", "gpu_iter_10.solverstate")
    # (a resumed run reads its data from the start again, as Caffe's does: compare it with a
    # resumed CPU run, not with the uninterrupted one)
    resumed_cpu = _train(tmp_path, "solver_CPU.prototxt", {},
                         "-snapshot", "cpu_iter_10.solverstate")

    def numbers(log, pattern):
        import re
        return [float(v) for v in re.findall(pattern, log)]

    loss = r"Iteration \d+ .*?loss = ([-\d.e+]+)"
    acc = r"accuracy = ([-\d.e+]+)"
    assert len(numbers(cpu, loss)) == len(numbers(gpu, loss)) >= 4
    np.testing.assert_allclose(numbers(gpu, loss), numbers(cpu, loss), rtol=1e-3)
    np.testing.assert_allclose(numbers(gpu, acc), numbers(cpu, acc), rtol=1e-3)
    for log in (gpu, resumed):                       # device 0 is the stand-in's
        assert "GPU 0: NumPy stand-in device" in log
    assert "GPU 0" not in cpu + resumed_cpu
    assert "Resuming from gpu_iter_10.solverstate" in resumed
    assert len(numbers(resumed, loss)) == len(numbers(resumed_cpu, loss)) >= 2
    np.testing.assert_allclose(numbers(resumed, loss), numbers(resumed_cpu, loss), rtol=1e-3)
    np.testing.assert_allclose(numbers(resumed, acc), numbers(resumed_cpu, acc), rtol=1e-3)
    # the snapshots, read back on the CPU
    backend.set_mode_cpu()
    nets = {}
    for mode in ("cpu", "gpu"):
        nets[mode] = caffepy.Net(str(tmp_path / "lenet.prototxt"), caffepy.TEST,
                                 weights=str(tmp_path / ("%s_iter_20.caffemodel" % mode)))
    assert list(nets["cpu"].params) == ["conv1", "conv2", "ip1", "ip2"]
    for name, blobs in nets["cpu"].params.items():
        for a, b in zip(blobs, nets["gpu"].params[name]):
            np.testing.assert_allclose(b.data, a.data, rtol=1e-3, atol=1e-5)


def test_time_command_in_gpu_mode_on_the_standin():
    """`caffepy time -gpu 0` synchronizes the device around every layer (the stand-in's
    deviceSynchronize, as CuPy's runtime has it) and prints Caffe's per-layer table."""
    env = standin_env()
    model = os.path.join(os.path.dirname(HERE), "examples", "mnist", "lenet.prototxt")
    p = subprocess.run([sys.executable, "-m", "caffepy", "time", "-model", model, "-gpu", "0",
                        "-iterations", "2"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "Use GPU with device ID 0" in p.stdout
    for name in ("conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"):
        assert re.search(r"\] +%s\tforward: [0-9.e-]+ ms\." % name, p.stdout), name
        assert re.search(r"\] +%s\tbackward: [0-9.e-]+ ms\." % name, p.stdout), name
    assert "Average Forward-Backward:" in p.stdout and "*** Benchmark ends ***" in p.stdout


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_through_on_the_standin():
    """tools/gpu_check.sh, the one script a machine with a GPU runs (docs/gpu.md), end to end on
    the stand-in: every step reached, the conformance cases and the benchmark exit 0."""
    env = standin_env(PYTHON=sys.executable, GPU_CHECK_ITER="2", GPU_CHECK_BUDGET="400")
    env.pop("OUT", None)
    env.pop("CAFFEPY_TEST_MODE", None)
    p = subprocess.run(["bash", os.path.join(os.path.dirname(HERE), "tools", "gpu_check.sh")],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:]
    assert "numpy-standin" in p.stdout
    assert "conformance pytest exit code: 0" in p.stdout
    assert "benchmark exit code: 0" in p.stdout
    assert re.search(r"lenet +wall, \d+ threads? +[0-9.]+", p.stdout), p.stdout[-2000:]
    assert re.search(r"===== \[\d+s\] done in \d+s, status 0 =====", p.stdout)
