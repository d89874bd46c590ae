"""Fillers: initial values for learnable blobs, as Caffe's FillerParameter describes.

All draws come from caffepy's seeded random stream (backend.rng()), so a solver's
random_seed makes initialisation reproducible. Values are computed on the host and
copied into the blob (initialisation is not a hot path).
"""
import math

import numpy as np

from . import backend
from .errors import FillerError  # noqa: F401


def _fans(shape):
    count = int(np.prod(shape)) if len(shape) else 1
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _variance_n(param, shape):
    from .proto import caffe_pb2
    fan_in, fan_out = _fans(shape)
    vn = param.variance_norm
    if vn == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if vn == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill_array(param, shape):
    """Return a float32 host array of ``shape`` filled as ``param`` (a FillerParameter) says."""
    rng = backend.rng()
    shape = tuple(shape)
    ftype = param.type
    if param.sparse != -1 and ftype != "gaussian":
        raise FillerError("Sparsity is only supported by the gaussian filler "
                          "(filler type '%s' has sparse: %d)" % (ftype, param.sparse))
    if ftype == "constant":
        return np.full(shape, param.value, dtype=np.float32)
    if ftype == "uniform":
        return rng.uniform(param.min, param.max, size=shape).astype(np.float32)
    if ftype == "gaussian":
        out = rng.normal(param.mean, param.std, size=shape).astype(np.float32)
        if param.sparse >= 0:
            if len(shape) < 1:
                raise FillerError("sparse gaussian filler needs at least 1 axis")
            num_outputs = shape[0]
            p = param.sparse / float(num_outputs)
            mask = (rng.random(size=shape) < p).astype(np.float32)
            out *= mask
        return out
    if ftype == "positive_unitball":
        out = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        num = shape[0] if shape else 1
        flat = out.reshape(num, -1)
        flat /= flat.sum(axis=1, keepdims=True)
        return flat.reshape(shape)
    if ftype == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, shape))
        return rng.uniform(-scale, scale, size=shape).astype(np.float32)
    if ftype == "msra":
        std = math.sqrt(2.0 / _variance_n(param, shape))
        return rng.normal(0.0, std, size=shape).astype(np.float32)
    if ftype == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise FillerError("bilinear filler needs a 4-D blob with a square kernel, got %s" % (shape,))
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = np.arange(k, dtype=np.float64)
        w1 = 1 - np.abs(x / f - c)
        kern = (w1[:, None] * w1[None, :]).astype(np.float32)
        return np.broadcast_to(kern, shape).copy()
    raise FillerError("Unknown filler type '%s' (known: constant, uniform, gaussian, "
                      "positive_unitball, xavier, msra, bilinear)" % ftype)


def fill(param, blob):
    """Fill ``blob.data`` in place."""
    arr = fill_array(param, blob.shape)
    xp = backend.array_module(blob.data)
    blob.data[...] = xp.asarray(arr)
