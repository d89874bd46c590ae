"""cupy.random for the stand-in: NumPy's generator, results on the stand-in device."""
import numpy as _np

_rng = _np.random.RandomState(0)


def seed(s=None):
    _rng.seed(s)


def _dev(a):
    from . import _from
    return _from(_np.asarray(a))


def rand(*shape):
    return _dev(_rng.random_sample(shape))


def random_sample(size=None, dtype=float):
    return _dev(_rng.random_sample(size).astype(dtype))


def uniform(low=0.0, high=1.0, size=None, dtype=float):
    return _dev(_rng.uniform(low, high, size).astype(dtype))


def normal(loc=0.0, scale=1.0, size=None, dtype=float):
    return _dev(_rng.normal(loc, scale, size).astype(dtype))


def standard_normal(size=None, dtype=float):
    return _dev(_rng.standard_normal(size).astype(dtype))


def randint(low, high=None, size=None, dtype=int):
    return _dev(_rng.randint(low, high, size).astype(dtype))
