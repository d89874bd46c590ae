"""The array module (NumPy or CuPy), the compute mode, and caffepy's random streams.

Layers never import numpy or cupy directly for math on blob data: they call
``xp()`` (or ``array_module(arr)``) so that one implementation runs on CPU and GPU.
"""
import numpy as np

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
