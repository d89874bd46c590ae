"""The array module (NumPy or CuPy), the compute mode, and caffepy's random streams.

Layers never import numpy or cupy directly for math on blob data: they call
``xp()`` (or ``array_module(arr)``) so that one implementation runs on CPU and GPU.
"""
import os

import numpy as np

from .errors import CaffepyError

CPU, GPU = 0, 1
_mode = CPU
_device = 0
_xp = np
_seed = None
_rng = np.random.default_rng()


def xp():
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


def set_mode_cpu():
    global _mode, _xp
    _mode, _xp = CPU, np


def set_mode_gpu():
    global _mode, _xp
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError("GPU mode needs CuPy: pip install 'caffepy[gpu]' "
                           "(cupy-cuda12x) on a machine with an NVIDIA GPU") from e
    cupy.cuda.Device(_device).use()
    _mode, _xp = GPU, cupy


def set_device(device_id):
    global _device
    _device = int(device_id)
    if _mode == GPU:
        import cupy
        cupy.cuda.Device(_device).use()


def mode():
    return _mode


def set_random_seed(seed):
    """Seed every random number caffepy draws (fillers, dropout, shuffles, crops)."""
    global _seed, _rng
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
