"""The array module (NumPy or CuPy), the compute mode, and caffepy's random streams.

Layers never import numpy or cupy directly for math on blob data: they call
``xp()`` (or ``array_module(arr)``) so that one implementation runs on CPU and GPU.
"""
import os

import numpy as np

from .errors import CaffepyError, DeviceError

CPU, GPU = 0, 1
_mode = CPU
_device = 0
_xp = np
_seed = None
_rng = np.random.default_rng()


def xp():  # -> numpy or cupy
    """The array module of the current mode: numpy (CPU) or cupy (GPU)."""
    return _xp


def array_module(arr):
    """numpy or cupy, whichever owns ``arr`` (Chainer's get_array_module idiom)."""
    if type(arr).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(arr):
    if type(arr).__module__.startswith("cupy"):
        return arr.get()
    return np.asarray(arr)


def gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU_INSTALL_HELP = ("install the gpu extra, pip install 'caffepy[gpu]' (CuPy for CUDA 12, "
                    "cupy-cuda12x), on a machine with an NVIDIA GPU and its driver")


def _cupy(what):
    """CuPy, or a DeviceError saying how to get it."""
    try:
        import cupy
    except ImportError as e:
        raise DeviceError("%s needs CuPy, which is not installed: %s. Without it caffepy "
                          "runs on the CPU (caffepy.set_mode_cpu())." % (what, GPU_INSTALL_HELP)
                          ) from e
    return cupy


def _use_device(cupy, device_id, what):
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:          # CUDA driver/runtime missing or broken
        raise DeviceError("%s: CuPy cannot reach a CUDA device (%s: %s)"
                          % (what, type(e).__name__, e)) from e
    if count == 0:
        raise DeviceError("%s: CuPy sees no CUDA device on this machine" % what)
    if not 0 <= device_id < count:
        raise DeviceError("%s: no GPU device %d (CuPy sees %d device%s: ids 0..%d)"
                          % (what, device_id, count, "" if count == 1 else "s", count - 1))
    cupy.cuda.Device(device_id).use()


def set_mode_cpu() -> None:
    """Compute on the CPU with NumPy (the default)."""
    global _mode, _xp
    _mode, _xp = CPU, np


def set_mode_gpu() -> None:
    """Compute on the GPU chosen by set_device (default 0) with CuPy. Raises DeviceError (a
    CaffepyError) when CuPy or a CUDA device is missing. Build nets after switching: a net
    keeps the arrays it was built with."""
    global _mode, _xp
    cupy = _cupy("set_mode_gpu()")
    _use_device(cupy, _device, "set_mode_gpu()")
    _mode, _xp = GPU, cupy


def set_device(device_id: int) -> None:
    """Choose the GPU that GPU mode uses (pycaffe's caffe.set_device). Raises DeviceError
    (a CaffepyError) when CuPy is not installed or there is no such device."""
    global _device
    if isinstance(device_id, bool) or int(device_id) != device_id or device_id < 0:
        raise DeviceError("set_device(%r): a device id is an integer >= 0" % (device_id,))
    device_id = int(device_id)
    cupy = _cupy("set_device(%d)" % device_id)
    _use_device(cupy, device_id, "set_device(%d)" % device_id)
    _device = device_id


def mode() -> int:
    return _mode


def set_random_seed(seed: int) -> None:
    """Seed every random number caffepy draws (fillers, dropout, shuffles, crops); pycaffe's
    caffe.set_random_seed (an unsigned int)."""
    global _seed, _rng
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise CaffepyError("set_random_seed(%r): the seed is an integer >= 0" % (seed,))
    _seed = int(seed)
    _rng = np.random.default_rng(_seed)
    if _mode == GPU:
        import cupy
        cupy.random.seed(_seed)


def rng():
    """The host random generator all caffepy randomness draws from."""
    return _rng


def get_rng_state():
    return _rng.bit_generator.state


def set_rng_state(state):
    _rng.bit_generator.state = state


# -- CPU threads ---------------------------------------------------------------------------------

_num_threads = None


def cpu_cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def num_threads():
    """How many threads caffepy's CPU kernels split a batch across (caffepy.parallel_chunks).

    Read once from the environment variable CAFFEPY_NUM_THREADS (a positive integer; 1 is the
    serial path); the default is the number of cores this process may run on."""
    global _num_threads
    if _num_threads is None:
        text = os.environ.get("CAFFEPY_NUM_THREADS", "").strip()
        if not text:
            _num_threads = cpu_cores()
        else:
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value < 1:
                raise CaffepyError("CAFFEPY_NUM_THREADS must be a positive integer (1 = serial), "
                                   "got %r" % text)
            _num_threads = value
    return _num_threads


def set_num_threads(n):
    """Override CAFFEPY_NUM_THREADS for this process (takes effect at the next layer call)."""
    global _num_threads
    n = int(n)
    if n < 1:
        raise CaffepyError("the number of threads must be positive, got %d" % n)
    _num_threads = n
