"""Fillers: initial values for learnable blobs, as Caffe's FillerParameter describes.

A filler is a function registered under the name a prototxt's ``type:`` field uses::

    @caffepy.register_filler("my_filler")
    def my_filler(param, shape, rng):
        return ...          # an array of ``shape`` (converted to float32)

``param`` is the FillerParameter (value, min, max, mean, std, sparse, variance_norm), ``shape``
a tuple of ints and ``rng`` caffepy's seeded random stream (``backend.rng()``, a NumPy
Generator), so a solver's random_seed makes initialisation reproducible. Caffe's seven fillers
are registered the same way. Values are computed on the host and copied into the blob
(initialisation is not a hot path).
"""
import math

import numpy as np

from . import backend
from .errors import FillerError  # noqa: F401
from .registry import Registry
from .proto import caffe_pb2

_FILLERS = Registry("Unknown filler type '%s' (registered: %s)", FillerError)


def register_filler(name, fn=None):
    """Register ``fn(param, shape, rng) -> array`` as the filler type ``name`` (usable as a
    decorator). Registering an existing name replaces that filler for the rest of the process."""
    return _FILLERS.register(name, fn)


def filler_type_list():
    """The registered filler type names, sorted."""
    return _FILLERS.names()


def get_filler(name):
    """The function registered as ``name`` (None if there is none)."""
    return _FILLERS.get(name)


def fill_array(param, shape):
    """Return a float32 host array of ``shape`` filled as ``param`` (a FillerParameter) says."""
    shape = tuple(int(d) for d in shape)
    fn = _FILLERS.lookup(param.type)
    if 0 in shape:                      # nothing to fill (Caffe's fillers draw 0 values)
        return np.zeros(shape, dtype=np.float32)
    out = np.asarray(fn(param, shape, backend.rng()), dtype=np.float32)
    if out.shape != shape:
        raise FillerError("filler '%s' returned an array of shape %s for a blob of shape %s"
                          % (param.type, out.shape, shape))
    return out


def fill(param, blob):
    """Fill ``blob.data`` in place."""
    arr = fill_array(param, blob.shape)
    xp = backend.array_module(blob.data)
    blob.data[...] = xp.asarray(arr)


# -- Caffe's fillers ---------------------------------------------------------------------------

def _no_sparse(param):
    if param.sparse != -1:
        raise FillerError("Sparsity is only supported by the gaussian filler "
                          "(filler type '%s' has sparse: %d)" % (param.type, param.sparse))


def _fans(shape):
    count = int(np.prod(shape)) if len(shape) else 1
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    vn = param.variance_norm
    if vn == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if vn == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


@register_filler("constant")
def constant_filler(param, shape, rng):
    """Every value is ``value`` (default 0)."""
    _no_sparse(param)
    return np.full(shape, param.value, dtype=np.float32)


@register_filler("uniform")
def uniform_filler(param, shape, rng):
    """Uniform in [min, max] (default [0, 1])."""
    _no_sparse(param)
    if not param.min <= param.max:      # Caffe's caffe_rng_uniform: CHECK_LE(a, b)
        raise FillerError("uniform filler needs min <= max (min %g, max %g)"
                          % (param.min, param.max))
    return rng.uniform(param.min, param.max, size=shape).astype(np.float32)


@register_filler("gaussian")
def gaussian_filler(param, shape, rng):
    """Normal(mean, std); with ``sparse`` >= 0 each value is kept with probability
    sparse / shape[0] (Caffe: the expected number of non-zero inputs per output)."""
    if not param.std >= 0:              # Caffe's caffe_rng_gaussian: CHECK_GT(sigma, 0)
        raise FillerError("gaussian filler needs std >= 0 (got %g)" % param.std)
    out = rng.normal(param.mean, param.std, size=shape).astype(np.float32)
    if param.sparse >= 0:
        if len(shape) < 1:
            raise FillerError("sparse gaussian filler needs at least 1 axis")
        p = param.sparse / float(shape[0])
        out *= (rng.random(size=shape) < p).astype(np.float32)
    return out


@register_filler("positive_unitball")
def positive_unitball_filler(param, shape, rng):
    """Uniform in [0, 1], then each of the shape[0] rows divided by its sum."""
    _no_sparse(param)
    out = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    num = shape[0] if shape else 1
    flat = out.reshape(num, -1)
    flat /= flat.sum(axis=1, keepdims=True)
    return flat.reshape(shape)


@register_filler("xavier")
def xavier_filler(param, shape, rng):
    """Uniform in ±sqrt(3 / n), n = fan_in, fan_out or their mean (variance_norm)."""
    _no_sparse(param)
    scale = math.sqrt(3.0 / _variance_n(param, shape))
    return rng.uniform(-scale, scale, size=shape).astype(np.float32)


@register_filler("msra")
def msra_filler(param, shape, rng):
    """Normal(0, sqrt(2 / n)), n as for xavier."""
    _no_sparse(param)
    std = math.sqrt(2.0 / _variance_n(param, shape))
    return rng.normal(0.0, std, size=shape).astype(np.float32)


@register_filler("bilinear")
def bilinear_filler(param, shape, rng):
    """Bilinear upsampling kernels for a Deconvolution (4-D blob, square kernel)."""
    _no_sparse(param)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise FillerError("bilinear filler needs a 4-D blob with a square kernel, got %s"
                          % (shape,))
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(k, dtype=np.float64)
    w1 = 1 - np.abs(x / f - c)
    kern = (w1[:, None] * w1[None, :]).astype(np.float32)
    return np.broadcast_to(kern, shape).copy()
