"""Coordinate maps between the tops of a net spec (pycaffe's ``caffe.coord_map``).

A spatial layer relates the coordinates of its output to those of its input by an affine map
per spatial axis, ``out = a * in + b``; this module represents one as ``(axis, a, b)``:

- ``axis`` is the last axis that is *not* a coordinate (1 for N x C x H x W blobs, the
  spatial axes follow it), or None for a layer that works on any axis (ReLU, Eltwise, ...);
- ``a`` (the scale) and ``b`` (the shift) are NumPy arrays with one entry per spatial axis, or
  one entry for all of them.

The rules, with ``k`` the dilated kernel extent ``(kernel_size - 1) * dilation + 1``:

- Convolution, Pooling, Im2col: ``a = 1 / stride``, ``b = (pad - (k - 1) / 2) / stride``
  (an output pixel sits at the centre of its receptive field);
- Deconvolution: the reverse, ``a = stride``, ``b = (k - 1) / 2 - pad``;
- Crop: ``a = 1``, ``b = -offset``, on the axes from ``crop_param.axis``;
- element-wise layers (``PASS_THROUGH_LAYERS``): the identity ``(None, 1, 0)``.

``coord_map_from_to(top_from, top_to)`` composes these along the net to map coordinates of
``top_from`` to coordinates of ``top_to``, and ``crop(top_from, top_to)`` makes the Crop
layer that aligns ``top_from`` with ``top_to`` (as fully convolutional nets do after
upsampling)::

    from caffepy import layers as L, NetSpec
    from caffepy.coord_map import crop
    n = NetSpec()
    ...
    n.upscore = L.Deconvolution(n.score, ...)
    n.score_crop = crop(n.upscore, n.data)

Tops are those of :mod:`caffepy.net_spec`: each has ``fn`` (the layer: ``type_name``,
``inputs`` and its keyword arguments ``params``) and ``n`` (its index among the layer's tops).
"""
from collections import deque

import numpy as np

from .errors import CaffepyError
from .net_spec import layers as _layers

__all__ = ["PASS_THROUGH_LAYERS", "CoordMapError", "UndefinedMapException",
           "AxisMismatchException", "UnconnectedTopsError", "CropError", "conv_params",
           "crop_params", "coord_map", "compose", "inverse", "coord_map_from_to", "crop"]

# Layers that keep every coordinate where it is (element-wise, or acting along channels only).
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Clip", "Dropout", "Eltwise", "ELU",
                       "Exp", "Log", "LRN", "MVN", "Power", "PReLU", "ReLU", "Scale", "Sigmoid",
                       "Split", "Swish", "TanH", "Threshold"]

_CONV_LIKE = ("Convolution", "Pooling", "Im2col")
_IDENTITY = (None, 1, 0)


class CoordMapError(CaffepyError):
    """A coordinate map that cannot be computed or used."""


class UndefinedMapException(CoordMapError):
    """A layer type without a coordinate map (InnerProduct, Input, global pooling, ...)."""


class AxisMismatchException(CoordMapError, ValueError):
    """Two maps that cannot be composed: their spatial axes start at different axes."""


class UnconnectedTopsError(CoordMapError, RuntimeError):
    """Two tops with no common ancestor reachable through layers that have coordinate maps."""


class CropError(CoordMapError, AssertionError):
    """A crop that cannot align the tops: scales differ, or the offset is negative or not an
    integer. (Also an AssertionError, the class pycaffe raises here.)"""


def _layer_params(fn, message):
    """The layer's spatial parameters: the ``<message>`` dict when given that way
    (``convolution_param=dict(kernel_size=3)``), else its direct keyword arguments."""
    params = fn.params.get(message)
    if params is None:
        return fn.params
    if not isinstance(params, dict):
        raise UndefinedMapException("layer %s: %s must be given as a dict to map coordinates "
                                    "through it" % (fn.type_name, message))
    return params


def _per_axis(params, name, name_h, name_w, default, fn):
    """A spatial parameter as a 1-d array: ``name`` (a number or a list, one per spatial
    axis), or the 2-d ``name_h``/``name_w`` pair."""
    has_hw = name_h in params or name_w in params
    if has_hw:
        if name in params:
            raise CoordMapError("layer %s: both %s and %s/%s are set"
                                % (fn.type_name, name, name_h, name_w))
        if name_h not in params or name_w not in params:
            raise CoordMapError("layer %s: %s and %s must be set together"
                                % (fn.type_name, name_h, name_w))
        return np.array([params[name_h], params[name_w]], dtype=np.int64)
    value = params.get(name, default)
    if value is None:
        raise CoordMapError("layer %s has no %s" % (fn.type_name, name))
    value = np.array(value, dtype=np.int64, ndmin=1)
    if value.ndim != 1 or value.size == 0:
        raise CoordMapError("layer %s: %s must be a number or a non-empty list, not %r"
                            % (fn.type_name, name, params.get(name)))
    return value


def conv_params(fn):
    """``(axis, stride, kernel_extent, pad)`` of a Convolution, Deconvolution, Im2col or
    Pooling layer: the parameters its coordinate map depends on, as 1-d arrays (one entry
    per spatial axis, or one for all). ``kernel_extent`` includes the dilation:
    ``(kernel_size - 1) * dilation + 1``. The 2-d ``kernel_h``/``kernel_w``,
    ``stride_h``/``stride_w`` and ``pad_h``/``pad_w`` forms are read too."""
    if fn.type_name == "Pooling":
        params = _layer_params(fn, "pooling_param")
        if params.get("global_pooling"):
            raise UndefinedMapException("layer Pooling: global pooling has no coordinate map")
        axis = 1
        dilation = np.ones(1, dtype=np.int64)
    else:
        params = _layer_params(fn, "convolution_param")
        axis = params.get("axis", 1)
        dilation = _per_axis(params, "dilation", "dilation_h", "dilation_w", 1, fn)
    kernel = _per_axis(params, "kernel_size", "kernel_h", "kernel_w", None, fn)
    stride = _per_axis(params, "stride", "stride_h", "stride_w", 1, fn)
    pad = _per_axis(params, "pad", "pad_h", "pad_w", 0, fn)
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn):
    """``(axis, offset)`` of a Crop layer, with Crop's defaults (axis 2, offset 0)."""
    params = _layer_params(fn, "crop_param")
    axis = params.get("axis", 2)
    if axis < 0:
        raise UndefinedMapException("layer Crop: a negative crop axis (%d) needs the blob's "
                                    "number of axes, which a net spec does not know" % axis)
    return axis, np.array(params.get("offset", 0), dtype=np.int64, ndmin=1)


def coord_map(fn):
    """The coordinate map ``(axis, a, b)`` of a layer (a net_spec Function): output
    coordinates are ``a * input + b`` on the spatial axes after ``axis``. Raises
    UndefinedMapException for a type without one."""
    type_name = fn.type_name
    if type_name in _CONV_LIKE:
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride.astype(np.float64), (extent - 1) / 2 - pad
    if type_name == "Crop":
        axis, offset = crop_params(fn)
        # crop_param.axis is the first cropped axis; a map names the axis before it
        return axis - 1, 1, -offset
    if type_name in PASS_THROUGH_LAYERS:
        return _IDENTITY
    raise UndefinedMapException("layer type %s has no coordinate map" % type_name)


def compose(base_map, next_map):
    """The map applying ``next_map`` first and then ``base_map``: with ``base_map``
    ``(ax1, a1, b1)`` and ``next_map`` ``(ax2, a2, b2)``, ``(ax, a1 * a2, a1 * b2 + b1)``.
    The axis is whichever is not None; two different axes raise AxisMismatchException."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException("cannot compose coordinate maps on axis %s and axis %s"
                                    % (ax1, ax2))
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The inverse map of ``(axis, a, b)``: ``(axis, 1 / a, -b / a)``."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mapped_bottoms(top):
    """The bottoms whose coordinates ``top``'s coordinates map to. Every bottom, except: a
    Crop's second bottom only gives the size; a Convolution or Deconvolution with several
    bottom/top pairs maps top i to bottom i only."""
    fn = top.fn
    inputs = fn.inputs
    if fn.type_name == "Crop":
        return inputs[:1]
    if fn.type_name in ("Convolution", "Deconvolution") and len(inputs) > 1 \
            and len(inputs) == fn.ntop:
        return inputs[top.n:top.n + 1]
    return inputs


def _maps_to_ancestors(top):
    """``{ancestor: map from the ancestor's coordinates to top's}`` for ``top`` and every top
    it is reached from through layers with a coordinate map, nearest first."""
    maps = {top: _IDENTITY}
    queue = deque([top])
    while queue:
        current = queue.popleft()
        try:
            layer_map = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(maps[current], layer_map)
                queue.append(bottom)
    return maps


def _describe(top):
    return "top %d of %s" % (top.n, top.fn.type_name)


def coord_map_from_to(top_from, top_to):
    """The coordinate map ``(axis, a, b)`` from ``top_from`` to ``top_to``: a point at
    coordinate ``x`` of ``top_from`` is at ``a * x + b`` in ``top_to``. The two tops must
    share an ancestor reached through layers with coordinate maps (the nearest one to
    ``top_to`` is used); otherwise UnconnectedTopsError (a RuntimeError)."""
    from_maps = _maps_to_ancestors(top_from)
    to_maps = {top_to: _IDENTITY}
    queue = deque([top_to])
    while queue:
        current = queue.popleft()
        if current in from_maps:
            return compose(to_maps[current], inverse(from_maps[current]))
        try:
            layer_map = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(current):
            if bottom not in to_maps:
                to_maps[bottom] = compose(to_maps[current], layer_map)
                queue.append(bottom)
    raise UnconnectedTopsError("cannot map coordinates from %s to %s: no common input is "
                               "reached through layers with coordinate maps (are they "
                               "connected by spatial layers only?)"
                               % (_describe(top_from), _describe(top_to)))


def crop(top_from, top_to):
    """A Crop layer (its Top) cropping ``top_from`` to the size and position of ``top_to``.

    The offsets come from ``coord_map_from_to(top_from, top_to)``: the scales must be 1 and
    the shifts whole non-positive numbers; otherwise CropError (an AssertionError)."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a = np.asarray(a)
    b = np.asarray(b)
    if not (a == 1).all():
        raise CropError("cannot crop %s to %s: their scales differ (a = %s)"
                        % (_describe(top_from), _describe(top_to), a))
    if not (b <= 0).all():
        raise CropError("cannot crop %s to %s: the offset would be negative (b = %s)"
                        % (_describe(top_from), _describe(top_to), b))
    if not (np.round(b) == b).all():
        raise CropError("cannot crop %s to %s: the offset is not a whole number (b = %s)"
                        % (_describe(top_from), _describe(top_to), b))
    first_axis = 2 if axis is None else axis + 1
    offset = [int(v) for v in -np.round(b).astype(np.int64).reshape(-1)]
    return _layers.Crop(top_from, top_to, crop_param=dict(axis=first_axis, offset=offset))
