"""ONNX export: a built caffepy Net (TEST phase) as an ONNX graph with the same numbers.

Every layer becomes one ONNX operator where ONNX has the same function, or a short composition
of standard operators where it does not (Swish, Power, Exp, Log, WITHIN_CHANNEL LRN, MVN,
SPP, BatchNorm on batch statistics, ArgMax with Caffe's tie order, ...). Shapes are static: each
graph input and output has the shape the net was built with.

What the graph holds:

* the tops of Input and data layers (Data, ImageData, HDF5Data, MemoryData, DummyData,
  WindowData) become graph inputs; inputs no exported layer reads (a label) are left out;
* losses, Accuracy, Silence and HDF5Output are left out; Split and Dropout (the identity at
  test time) are wires, not operators;
* the outputs are the blobs no exported layer reads (Caffe's own rule for net outputs, applied
  to what is exported), by their Caffe names, unless ``outputs`` names others.

A layer type with no ONNX equivalent is refused with an :class:`ExportError` that lists every
such layer of the net at once. docs/onnx.md has the table.
"""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_write
from ..backend import to_numpy
from ..errors import CaffepyError
from ..kernels.pooling import pooled_size
from ..proto import caffe_pb2

log = logging.getLogger("caffepy")

DEFAULT_OPSET = 13
# The operators emitted are the same in each of these opsets (Softmax needs 13's per-axis
# form; 18 moves the Reduce* axes to inputs).
SUPPORTED_OPSETS = (13, 14, 15, 16, 17)

INPUT_TYPES = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData",
               "WindowData")
DROPPED_TYPES = ("Accuracy", "Silence", "HDF5Output")
WIRE_TYPES = ("Split", "Dropout")

# Refused layer types and why (the reasons docs/onnx.md gives too).
REFUSED = {
    "Python": "its forward is arbitrary Python code (a Python data layer of a train_val net "
              "becomes a graph input when its tops' shapes are given: -input_shape)",
    "Filter": "its output size depends on the values of its selector input",
    "Im2col": "ONNX has no im2col operator",
    "LSTM": "Caffe's recurrent layers (cont input, gate order, static inputs) are not "
            "exported",
    "RNN": "Caffe's recurrent layers (cont input, static inputs) are not exported",
    "LSTMUnit": "Caffe's recurrent layers are not exported",
}

_INT64_MIN = -(2 ** 63)


class ExportError(CaffepyError, ValueError):
    """A net that cannot be exported (a layer with no ONNX equivalent, a missing shape, no
    onnx package); the message names the layers and blobs."""


class _Unsupported(Exception):
    """Raised by a converter: this layer, as configured, has no ONNX equivalent."""


def _require_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise ExportError("ONNX export needs the onnx package (%s); install it with: "
                          "pip install 'caffepy[onnx]'" % e) from None
    return onnx, helper, numpy_helper


# -- the graph under construction -----------------------------------------------------------

class _Graph:
    def __init__(self, helper, numpy_helper):
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes = []
        self.initializers = []
        self.used = set()
        self.prefix = ""

    def unique(self, base):
        name, i = base, 1
        while name in self.used:
            name = "%s_%d" % (base, i)
            i += 1
        self.used.add(name)
        return name

    def const(self, what, value, dtype=np.float32):
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        name = self.unique("%s/%s" % (self.prefix, what))
        self.initializers.append(self.numpy_helper.from_array(arr, name))
        return name

    def ints(self, what, values):
        return self.const(what, list(values), np.int64)

    def op(self, op_type, inputs, out=None, n_out=1, **attrs):
        """Add a node; ``out`` names its output(s) (a name or a list), else fresh names.
        Returns the output name (or the list of names when ``n_out`` > 1 or out is a list)."""
        if out is None:
            outs = [self.unique("%s/%s" % (self.prefix, op_type)) for _ in range(n_out)]
        elif isinstance(out, str):
            outs = [out]
        else:
            outs = list(out)
        node_name = self.unique("%s/%s#node" % (self.prefix, op_type))
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=node_name,
                                                **attrs))
        if isinstance(out, (list, tuple)) or n_out > 1:
            return outs
        return outs[0]


def _blob(layer, i):
    return np.asarray(to_numpy(layer.blobs[i].data), dtype=np.float32)


def _f32(x):
    return float(np.float32(x))


def _canon(axis, rank):
    return axis + rank if axis < 0 else axis


# -- converters: (g, layer, x, y, xs, ys) -> None; x/y are tensor names, xs/ys shapes --------

_CONVERTERS = {}


def _converter(*types):
    def deco(fn):
        for t in types:
            _CONVERTERS[t] = fn
        return fn
    return deco


def _unary(op_type):
    def fn(g, layer, x, y, xs, ys):
        g.op(op_type, [x[0]], y[0])
    return fn


for _t, _op in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs"),
                ("BNLL", "Softplus")):
    _CONVERTERS[_t] = _unary(_op)


@_converter("ReLU")
def _relu(g, layer, x, y, xs, ys):
    slope = layer.layer_param.relu_param.negative_slope
    if slope:
        g.op("LeakyRelu", [x[0]], y[0], alpha=_f32(slope))
    else:
        g.op("Relu", [x[0]], y[0])


@_converter("PReLU")
def _prelu(g, layer, x, y, xs, ys):
    slope = _blob(layer, 0)
    if slope.size != 1:
        slope = slope.reshape((-1,) + (1,) * (len(xs[0]) - 2))
    g.op("PRelu", [x[0], g.const("slope", slope)], y[0])


@_converter("ELU")
def _elu(g, layer, x, y, xs, ys):
    g.op("Elu", [x[0]], y[0], alpha=_f32(layer.layer_param.elu_param.alpha))


@_converter("Clip")
def _clip(g, layer, x, y, xs, ys):
    p = layer.layer_param.clip_param
    g.op("Clip", [x[0], g.const("min", _f32(p.min)), g.const("max", _f32(p.max))], y[0])


@_converter("Swish")
def _swish(g, layer, x, y, xs, ys):
    beta = _f32(layer.layer_param.swish_param.beta)
    t = x[0] if beta == 1 else g.op("Mul", [x[0], g.const("beta", beta)])
    g.op("Mul", [x[0], g.op("Sigmoid", [t])], y[0])


@_converter("Threshold")
def _threshold(g, layer, x, y, xs, ys):
    t = g.const("threshold", _f32(layer.layer_param.threshold_param.threshold))
    g.op("Cast", [g.op("Greater", [x[0], t])], y[0], to=1)


def _chain(g, x, y, steps):
    """Apply [(op, constant), ...] in turn; the last step writes y (Identity if none)."""
    cur = x
    for i, (op_type, value) in enumerate(steps):
        out = y if i == len(steps) - 1 else None
        args = [cur] if value is None else [cur, g.const(op_type.lower(), value)]
        cur = g.op(op_type, args, out)
    if not steps:
        g.op("Identity", [x], y)


@_converter("Power")
def _power(g, layer, x, y, xs, ys):
    p = layer.layer_param.power_param
    power, scale, shift = _f32(p.power), _f32(p.scale), _f32(p.shift)
    steps = []
    if scale != 1:
        steps.append(("Mul", scale))
    if shift != 0:
        steps.append(("Add", shift))
    if power != 1:
        steps.append(("Pow", power))
    _chain(g, x[0], y[0], steps)


@_converter("Exp")
def _exp(g, layer, x, y, xs, ys):
    # y = base^(shift + scale x) = outer * exp(inner * x), base -1 meaning e
    p = layer.layer_param.exp_param
    base, scale, shift = float(p.base), float(p.scale), float(p.shift)
    if base != -1 and base <= 0:
        raise _Unsupported("base must be -1 or positive (got %g)" % base)
    log_base = 1.0 if base == -1 else math.log(base)
    inner = _f32(log_base * scale)
    outer = 1.0 if shift == 0 else _f32(math.exp(shift) if base == -1 else base ** shift)
    steps = [] if inner == 1 else [("Mul", inner)]
    steps.append(("Exp", None))
    if outer != 1:
        steps.append(("Mul", outer))
    _chain(g, x[0], y[0], steps)


@_converter("Log")
def _log(g, layer, x, y, xs, ys):
    p = layer.layer_param.log_param
    base, scale, shift = float(p.base), _f32(p.scale), _f32(p.shift)
    if base != -1 and base <= 0:
        raise _Unsupported("base must be -1 or positive (got %g)" % base)
    base_scale = 1.0 if base == -1 else _f32(1.0 / math.log(base))
    steps = []
    if scale != 1:
        steps.append(("Mul", scale))
    if shift != 0:
        steps.append(("Add", shift))
    steps.append(("Log", None))
    if base_scale != 1:
        steps.append(("Mul", base_scale))
    _chain(g, x[0], y[0], steps)


@_converter("Convolution", "Deconvolution")
def _conv(g, layer, x, y, xs, ys):
    if layer.axis != 1:
        raise _Unsupported("convolution_param.axis %d: ONNX convolutions take the channels on "
                           "axis 1" % layer.axis)
    ins = [x[0], g.const("weights", _blob(layer, 0))]
    if layer.bias_term:
        ins.append(g.const("bias", _blob(layer, 1)))
    g.op("Conv" if layer.type == "Convolution" else "ConvTranspose", ins, y[0],
         kernel_shape=list(layer.kernel), strides=list(layer.stride),
         pads=list(layer.pad) * 2, dilations=list(layer.dilation), group=layer.group)


@_converter("Pooling")
def _pool(g, layer, x, y, xs, ys):
    if len(y) > 1:
        raise _Unsupported("a second (argmax mask) top has no ONNX equivalent")
    method = layer.method
    P = caffe_pb2.PoolingParameter
    if method not in (P.MAX, P.AVE):
        raise _Unsupported("STOCHASTIC pooling has no ONNX equivalent")
    if len(xs[0]) != 4:
        raise _Unsupported("Pooling of a %d-axis blob" % len(xs[0]))
    if layer.global_pooling:
        g.op("GlobalMaxPool" if method == P.MAX else "GlobalAveragePool", [x[0]], y[0])
        return
    k = (layer.kernel_h, layer.kernel_w)
    s = (layer.stride_h, layer.stride_w)
    p = (layer.pad_h, layer.pad_w)
    _pool2d(g, x[0], y[0], method == P.MAX, xs[0][2:], k, s, p, ys[0][2:])


def _pool2d(g, src, y, is_max, size, k, s, p, out):
    """Caffe's MAX/AVE pooling of ``src`` (N, C, H, W) into ``y`` of spatial size ``out``."""
    # Caffe's output size (CEIL or FLOOR, less a last window starting in the padding) is
    # reproduced in floor mode by padding the end by q = (out-1)·s + k - size - pad.
    q = []
    for n, o, kk, ss, pp in zip(size, out, k, s, p):
        if (o - 1) * ss - pp >= n:
            raise _Unsupported("its last window lies wholly outside the input (size %d, "
                               "kernel %d, stride %d, pad %d)" % (n, kk, ss, pp))
        q.append((o - 1) * ss + kk - n - pp)
    if is_max:
        pads = [p[0], p[1], max(q[0], 0), max(q[1], 0)]
        node_out = None if min(q) < 0 else y
        r = g.op("MaxPool", [src], node_out, kernel_shape=list(k), strides=list(s), pads=pads)
    else:
        # AVE divides by the window clamped to [-pad, size + pad): pad with zeros explicitly,
        # then count only the elements of the padded tensor.
        if p[0] or p[1]:
            src = g.op("Pad", [src, g.ints("pads", [0, 0, p[0], p[1], 0, 0, p[0], p[1]])],
                       mode="constant")
        pads = [0, 0, max(q[0] - p[0], 0), max(q[1] - p[1], 0)]
        node_out = None if min(q[0] - p[0], q[1] - p[1]) < 0 else y
        r = g.op("AveragePool", [src], node_out, kernel_shape=list(k), strides=list(s),
                 pads=pads, count_include_pad=0)
    if node_out is None:    # floor mode made windows Caffe does not: drop them
        g.op("Slice", [r, g.ints("starts", [0, 0]), g.ints("ends", list(out)),
                       g.ints("axes", [2, 3])], y)


@_converter("SPP")
def _spp(g, layer, x, y, xs, ys):
    P = caffe_pb2.PoolingParameter
    if layer.method not in (P.MAX, P.AVE):
        raise _Unsupported("STOCHASTIC pooling has no ONNX equivalent")
    N, C, H, W = xs[0]
    parts = []
    for level in range(layer.height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        any_pad = bool(ph or pw)
        oh = pooled_size(H, kh, kh, ph, True, any_pad)
        ow = pooled_size(W, kw, kw, pw, True, any_pad)
        if layer.height == 1:
            _pool2d(g, x[0], y[0], layer.method == P.MAX, (H, W), (kh, kw), (kh, kw),
                    (ph, pw), (oh, ow))
            return
        pooled = g.unique("%s/level%d" % (g.prefix, level))
        _pool2d(g, x[0], pooled, layer.method == P.MAX, (H, W), (kh, kw), (kh, kw), (ph, pw),
                (oh, ow))
        parts.append(g.op("Reshape", [pooled, g.ints("shape", [N, C * oh * ow])]))
    g.op("Concat", parts, y[0], axis=1)


@_converter("InnerProduct")
def _inner_product(g, layer, x, y, xs, ys):
    p = layer.layer_param.inner_product_param
    axis = _canon(p.axis, len(xs[0]))
    M = int(np.prod(xs[0][:axis], dtype=np.int64))
    K = int(np.prod(xs[0][axis:], dtype=np.int64))
    src = x[0]
    if tuple(xs[0]) != (M, K):
        src = g.op("Reshape", [src, g.ints("shape", [M, K])])
    ins = [src, g.const("weights", _blob(layer, 0))]
    if p.bias_term:
        ins.append(g.const("bias", _blob(layer, 1)))
    N = ys[0][-1]
    if tuple(ys[0]) == (M, N):
        g.op("Gemm", ins, y[0], transB=0 if p.transpose else 1)
    else:
        r = g.op("Gemm", ins, transB=0 if p.transpose else 1)
        g.op("Reshape", [r, g.ints("shape", ys[0])], y[0])


@_converter("Softmax")
def _softmax(g, layer, x, y, xs, ys):
    axis = _canon(layer.layer_param.softmax_param.axis, len(xs[0]))
    g.op("Softmax", [x[0]], y[0], axis=axis)


@_converter("LRN")
def _lrn(g, layer, x, y, xs, ys):
    n, alpha, beta = layer.size, _f32(layer.alpha), _f32(layer.beta)
    if layer.across:
        g.op("LRN", [x[0]], y[0], size=n, alpha=alpha, beta=beta, bias=_f32(layer.k))
        return
    # WITHIN_CHANNEL: y = x (1 + alpha/n² Σ_{n×n, zero padded} x²)^-beta
    pre = (n - 1) // 2
    sq = g.op("Mul", [x[0], x[0]])
    avg = g.op("AveragePool", [sq], kernel_shape=[n, n], strides=[1, 1],
               pads=[pre, pre, pre, pre], count_include_pad=1)
    t = g.op("Add", [g.op("Mul", [avg, g.const("alpha", alpha)]), g.const("one", 1.0)])
    g.op("Mul", [x[0], g.op("Pow", [t, g.const("neg_beta", -beta)])], y[0])


@_converter("BatchNorm")
def _batch_norm(g, layer, x, y, xs, ys):
    rank = len(xs[0])
    eps = _f32(layer.eps)
    if layer.use_global_stats:
        s = np.float32(_blob(layer, 2).reshape(-1)[0])
        sf = np.float32(0) if s == 0 else np.float32(1) / s
        mean = (_blob(layer, 0).reshape(-1) * sf).astype(np.float32)
        var = (_blob(layer, 1).reshape(-1) * sf).astype(np.float32)
        c = mean.size
        src = x[0]
        if rank < 3:        # (N, C): give BatchNormalization a spatial axis
            src = g.op("Reshape", [src, g.ints("shape", list(xs[0]) + [1] * (3 - rank))])
        out = y[0] if rank >= 3 else None
        r = g.op("BatchNormalization",
                 [src, g.const("scale", np.ones(c)), g.const("bias", np.zeros(c)),
                  g.const("mean", mean), g.const("var", var)], out, epsilon=eps)
        if out is None:
            g.op("Reshape", [r, g.ints("shape", ys[0])], y[0])
        return
    # statistics of the batch itself (use_global_stats: false at test time)
    axes = [0] + list(range(2, rank))
    mean = g.op("ReduceMean", [x[0]], axes=axes, keepdims=1)
    d = g.op("Sub", [x[0], mean])
    var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=axes, keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const("eps", eps)])])
    g.op("Div", [d, std], y[0])


@_converter("MVN")
def _mvn(g, layer, x, y, xs, ys):
    rank = len(xs[0])
    first = 1 if layer.across_channels else 2
    axes = list(range(first, rank))
    if not axes:
        raise _Unsupported("a %d-axis input" % rank)
    mean = g.op("ReduceMean", [x[0]], axes=axes, keepdims=1)
    if not layer.normalize_variance:
        g.op("Sub", [x[0], mean], y[0])
        return
    d = g.op("Sub", [x[0], mean])
    var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=axes, keepdims=1)
    std = g.op("Add", [g.op("Sqrt", [var]), g.const("eps", _f32(layer.eps))])
    g.op("Div", [d, std], y[0])


def _broadcast_shape(span, axis, rank):
    """A (span...) operand laid at bottom axis ``axis``, padded with ones to the end."""
    return list(span) + [1] * (rank - axis - len(span))


def _scale_or_bias(g, layer, x, y, xs, ys, op_type, param):
    rank = len(xs[0])
    axis = _canon(param.axis, rank)
    blobs = list(range(len(layer.blobs)))
    if len(x) > 1:
        operand = x[1]
        span = xs[1]
        if len(span) + axis != rank:
            operand = g.op("Reshape", [operand, g.ints("shape",
                                                       _broadcast_shape(span, axis, rank))])
    else:
        w = _blob(layer, blobs.pop(0))
        operand = g.const("scale" if op_type == "Mul" else "bias",
                          w.reshape(_broadcast_shape(w.shape, axis, rank)))
    bias = op_type == "Mul" and getattr(param, "bias_term", False)
    r = g.op(op_type, [x[0], operand], None if bias else y[0])
    if bias:
        b = _blob(layer, blobs.pop(0))
        g.op("Add", [r, g.const("bias", b.reshape(_broadcast_shape(b.shape, axis, rank)))],
             y[0])


@_converter("Scale")
def _scale(g, layer, x, y, xs, ys):
    _scale_or_bias(g, layer, x, y, xs, ys, "Mul", layer.layer_param.scale_param)


@_converter("Bias")
def _bias(g, layer, x, y, xs, ys):
    _scale_or_bias(g, layer, x, y, xs, ys, "Add", layer.layer_param.bias_param)


@_converter("Concat")
def _concat(g, layer, x, y, xs, ys):
    p = layer.layer_param.concat_param
    axis = p.axis if not p.HasField("concat_dim") else p.concat_dim
    axis = _canon(axis, len(xs[0]))
    if len(x) == 1:
        g.op("Identity", [x[0]], y[0])
    else:
        g.op("Concat", x, y[0], axis=axis)


@_converter("Slice")
def _slice(g, layer, x, y, xs, ys):
    p = layer.layer_param.slice_param
    axis = p.axis if not p.HasField("slice_dim") else p.slice_dim
    axis = _canon(axis, len(xs[0]))
    if len(y) == 1:
        g.op("Identity", [x[0]], y[0])
        return
    g.op("Split", [x[0], g.ints("split", [s[axis] for s in ys])], list(y), axis=axis)


@_converter("Eltwise")
def _eltwise(g, layer, x, y, xs, ys):
    p = layer.layer_param.eltwise_param
    E = caffe_pb2.EltwiseParameter
    if len(x) == 1:
        g.op("Identity", [x[0]], y[0])
        return
    if p.operation == E.MAX:
        g.op("Max", x, y[0])
        return
    if p.operation == E.PROD:
        terms, op_type = list(x), "Mul"
    else:
        coeffs = list(p.coeff) or [1.0] * len(x)
        terms = [t if _f32(c) == 1 else g.op("Mul", [t, g.const("coeff", _f32(c))])
                 for t, c in zip(x, coeffs)]
        op_type = "Add"
    cur = terms[0]
    for i, t in enumerate(terms[1:]):         # Caffe's order: left to right
        cur = g.op(op_type, [cur, t], y[0] if i == len(terms) - 2 else None)


@_converter("Flatten", "Reshape")
def _reshape(g, layer, x, y, xs, ys):
    g.op("Reshape", [x[0], g.ints("shape", ys[0])], y[0])


@_converter("Crop")
def _crop(g, layer, x, y, xs, ys):
    p = layer.layer_param.crop_param
    rank = len(xs[0])
    start = _canon(p.axis, rank)
    axes = list(range(start, rank))
    offs = [int(p.offset[0]) if len(p.offset) == 1 else
            int(p.offset[i - start]) if len(p.offset) > 1 else 0 for i in axes]
    ends = [o + ys[0][i] for o, i in zip(offs, axes)]
    g.op("Slice", [x[0], g.ints("starts", offs), g.ints("ends", ends), g.ints("axes", axes)],
         y[0])


@_converter("Tile")
def _tile(g, layer, x, y, xs, ys):
    p = layer.layer_param.tile_param
    axis = _canon(p.axis, len(xs[0]))
    reps = [1] * len(xs[0])
    reps[axis] = int(p.tiles)
    g.op("Tile", [x[0], g.ints("repeats", reps)], y[0])


@_converter("Reduction")
def _reduction(g, layer, x, y, xs, ys):
    p = layer.layer_param.reduction_param
    R = caffe_pb2.ReductionParameter
    rank = len(xs[0])
    axis = _canon(p.axis, rank)
    axes = list(range(axis, rank))
    coeff = _f32(p.coeff)
    out = y[0] if coeff == 1 and len(ys[0]) == rank - len(axes) else None
    if not axes:
        r = g.op("Identity", [x[0]], out)
    elif p.operation == R.SUM:
        r = g.op("ReduceSum", [x[0], g.ints("axes", axes)], out, keepdims=0)
    else:
        op_type = {R.ASUM: "ReduceL1", R.SUMSQ: "ReduceSumSquare",
                   R.MEAN: "ReduceMean"}[p.operation]
        r = g.op(op_type, [x[0]], out, axes=axes, keepdims=0)
    if out is None:
        if coeff != 1:
            r = g.op("Mul", [r, g.const("coeff", coeff)])
        g.op("Reshape", [r, g.ints("shape", ys[0])], y[0])


@_converter("ArgMax")
def _argmax(g, layer, x, y, xs, ys):
    # Caffe orders equal values by the larger index first; ONNX TopK by the smaller. TopK over
    # the reversed axis, indices mapped back, gives Caffe's order.
    k = layer.top_k
    if layer.has_axis:
        axis, src = layer.axis, x[0]
        dim = xs[0][axis]
    else:
        axis, n = 1, (xs[0][0] if xs[0] else 1)
        dim = int(np.prod(xs[0][1:], dtype=np.int64))
        src = g.op("Reshape", [x[0], g.ints("shape", [n, dim])])
    rev = g.op("Slice", [src, g.ints("starts", [-1]), g.ints("ends", [_INT64_MIN]),
                         g.ints("axes", [axis]), g.ints("steps", [-1])])
    vals, ridx = g.op("TopK", [rev, g.ints("k", [k])], n_out=2, axis=axis, largest=1,
                      sorted=1)
    idx = g.op("Cast", [g.op("Sub", [g.ints("last", [dim - 1]), ridx])], to=1)
    if layer.has_axis:
        g.op("Identity", [vals if layer.out_max_val else idx], y[0])
    elif layer.out_max_val:
        both = g.op("Concat", [g.op("Reshape", [idx, g.ints("shape", [n, 1, k])]),
                               g.op("Reshape", [vals, g.ints("shape", [n, 1, k])])], axis=1)
        g.op("Reshape", [both, g.ints("shape", ys[0])], y[0])
    else:
        g.op("Reshape", [idx, g.ints("shape", ys[0])], y[0])


@_converter("Embed")
def _embed(g, layer, x, y, xs, ys):
    p = layer.layer_param.embed_param
    idx = g.op("Cast", [x[0]], to=7)
    w = g.const("weights", _blob(layer, 0))
    if p.bias_term:
        r = g.op("Gather", [w, idx], axis=0)
        g.op("Add", [r, g.const("bias", _blob(layer, 1))], y[0])
    else:
        g.op("Gather", [w, idx], y[0], axis=0)


@_converter("BatchReindex")
def _batch_reindex(g, layer, x, y, xs, ys):
    g.op("Gather", [x[0], g.op("Cast", [x[1]], to=7)], y[0], axis=0)


@_converter("Parameter")
def _parameter(g, layer, x, y, xs, ys):
    g.op("Identity", [g.const("blob", _blob(layer, 0))], y[0])


def supported_layer_types() -> List[str]:
    """The layer types that export to ONNX operators (graph inputs, dropped and wire layers
    not included)."""
    return sorted(_CONVERTERS)


# -- the net walk -----------------------------------------------------------------------------

def _is_dropped(layer):
    from ..layer import LossLayer
    return (layer.type in DROPPED_TYPES or isinstance(layer, LossLayer)
            or layer.type.endswith("Loss"))


def _kind(layer):
    t = layer.type
    if t in INPUT_TYPES:
        return "input"
    if t in WIRE_TYPES:
        return "wire"
    if _is_dropped(layer):
        return "drop"
    return "node"


def _names(net, i):
    bottoms = [net.blob_names[b] for b in net.bottom_id_vecs[i]]
    tops = [net.blob_names[t] for t in net.top_id_vecs[i]]
    return bottoms, tops


def _shape(net, name):
    return [int(d) for d in net.blobs[name].shape]


def to_onnx(net, path: Union[None, str, "os.PathLike[str]"] = None, *,
            opset: int = DEFAULT_OPSET, outputs: Optional[Sequence[str]] = None,
            model_name: Optional[str] = None, check: bool = True):
    """Export ``net`` (a :class:`caffepy.Net` built in the TEST phase) as an ONNX model.

    ``path``: where to write it (atomically), or None to only return it. ``opset``: one of
    :data:`SUPPORTED_OPSETS`. ``outputs``: the blob names to make graph outputs (default: the
    blobs no exported layer reads). ``check``: run ``onnx.checker`` on the result.
    Returns the ``onnx.ModelProto``. Raises :class:`ExportError` listing every layer that has
    no ONNX equivalent.
    """
    onnx, helper, numpy_helper = _require_onnx()
    from ..net import Net
    if not isinstance(net, Net):
        raise ExportError("to_onnx: expected a caffepy.Net, got %s" % type(net).__name__)
    _check_opset(opset)
    if net.phase != caffe_pb2.TEST:
        raise ExportError("to_onnx: net '%s' was built in the TRAIN phase; export a TEST-phase "
                          "net (caffepy.Net(model, caffepy.TEST, weights=...)), whose Dropout "
                          "and BatchNorm run as at inference" % net.name)
    g = _Graph(helper, numpy_helper)
    kinds = [_kind(layer) for layer in net.layers]

    # Version names: the last writer of a blob gets the blob's own name (so outputs carry
    # Caffe's names); earlier in-place versions get "blob#k". Graph inputs keep their names.
    writes = defaultdict(int)
    input_blobs = set()
    for i, kind in enumerate(kinds):
        if kind in ("input", "node"):
            for t in _names(net, i)[1]:
                writes[t] += 1
                if kind == "input":
                    input_blobs.add(t)
    done = defaultdict(int)

    def version(blob):
        k = done[blob]
        done[blob] += 1
        if k == 0 and blob in input_blobs:
            name = blob
        elif k == writes[blob] - 1 and blob not in input_blobs:
            name = blob
        else:
            name = "%s#%d" % (blob, k)
        if name in g.used:
            name = g.unique(name)
        else:
            g.used.add(name)
        return name

    cur: Dict[str, str] = {}
    passed_on = set()
    graph_inputs = []
    problems = []
    for i, layer in enumerate(net.layers):
        kind = kinds[i]
        bottoms, tops = _names(net, i)
        lname = net.layer_names[i]
        if kind == "drop":
            log.info("ONNX export: leaving out layer %s (%s)", lname, layer.type)
            continue
        if kind == "input":
            for t in tops:
                cur[t] = version(t)
                graph_inputs.append((cur[t], _shape(net, t)))
            continue
        missing = [b for b in bottoms if b not in cur]
        if missing:
            problems.append("layer '%s' (%s): its bottom%s %s come%s from a layer that is not "
                            "exported" % (lname, layer.type, "s" if len(missing) > 1 else "",
                                          ", ".join("'%s'" % b for b in missing),
                                          "" if len(missing) > 1 else "s"))
            continue
        if kind == "wire":
            if layer.type == "Dropout":
                if tops[0] != bottoms[0]:
                    passed_on.add(bottoms[0])   # like a consumed blob: not an output
                cur[tops[0]] = cur[bottoms[0]]
            else:
                for t in tops:
                    cur[t] = cur[bottoms[0]]
            continue
        fn = _CONVERTERS.get(layer.type)
        if fn is None:
            reason = REFUSED.get(layer.type, "no ONNX equivalent is known to caffepy")
            problems.append("layer '%s' (%s): %s" % (lname, layer.type, reason))
            continue
        x = [cur[b] for b in bottoms]
        y = [version(t) for t in tops]
        g.prefix = lname
        try:
            fn(g, layer, x, y, [_shape(net, b) for b in bottoms], [_shape(net, t) for t in tops])
        except _Unsupported as e:
            problems.append("layer '%s' (%s): %s" % (lname, layer.type, e))
            continue
        for t, name in zip(tops, y):
            cur[t] = name
            passed_on.discard(t)
    if problems:
        raise ExportError("net '%s' cannot be exported to ONNX: %d layer%s with no ONNX "
                          "equivalent:\n  %s" % (net.name, len(problems),
                                                 "s" if len(problems) > 1 else "",
                                                 "\n  ".join(problems)))

    input_names = {n for n, _ in graph_inputs}
    consumed = {name for node in g.nodes for name in node.input}
    if outputs is None:
        by_tensor = {}
        for blob in sorted(cur):
            t = cur[blob]
            if t in consumed or t in input_names or blob in passed_on:
                continue
            if t not in by_tensor or blob == t:
                by_tensor[t] = blob
        chosen = sorted((blob, t) for t, blob in by_tensor.items())
    else:
        chosen = []
        for blob in outputs:
            if blob not in cur:
                raise ExportError("to_onnx: output '%s' is not a blob of net '%s' that the "
                                  "export computes (blobs: %s)" % (blob, net.name,
                                                                   ", ".join(sorted(cur))))
            chosen.append((blob, cur[blob]))
    if not chosen:
        raise ExportError("to_onnx: net '%s' has no output left to export" % net.name)
    out_infos = []
    for blob, t in chosen:
        if t != blob and blob not in g.used:
            g.prefix = blob
            g.op("Identity", [t], blob)
            g.used.add(blob)
            t = blob
        out_infos.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT,
                                                       _shape(net, blob)))

    nodes, inits, used_inputs = _prune(g, [info.name for info in out_infos])
    in_infos = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                for n, s in graph_inputs if n in used_inputs]
    graph = helper.make_graph(nodes, model_name or net.name or "caffepy_net", in_infos,
                              out_infos, initializer=inits)
    from .. import __version__
    model = helper.make_model(graph, producer_name="caffepy", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)   # runtimes of opsets 13-17 read IR 8
    data = model.SerializeToString() if check or path is not None else None
    if check:
        onnx.checker.check_model(data)
    if path is not None:
        atomic_write(os.fspath(path), data)
        log.info("Wrote ONNX model %s (opset %d; inputs %s; outputs %s)", os.fspath(path),
                 opset, ", ".join(i.name for i in in_infos),
                 ", ".join(o.name for o in out_infos))
    return model


def _check_opset(opset):
    if opset not in SUPPORTED_OPSETS:
        raise ExportError("ONNX opset %r is not supported; use one of %s"
                          % (opset, ", ".join(map(str, SUPPORTED_OPSETS))))


def _prune(g, output_names):
    """The nodes needed for ``output_names`` (in order), their initializers and the graph
    inputs they read."""
    needed = set(output_names)
    keep = []
    for node in reversed(g.nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    inits = [t for t in g.initializers if t.name in needed]
    return keep, inits, needed


# -- from files --------------------------------------------------------------------------

_DATA_TYPES = tuple(t for t in INPUT_TYPES if t != "Input")


def _parse_shapes(input_shapes):
    out = {}
    for name, shape in (input_shapes or {}).items():
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            raise ExportError("input shape of '%s' must be a list of integers, got %r"
                              % (name, shape)) from None
        if not dims or any(d <= 0 for d in dims):
            raise ExportError("input shape of '%s' must have positive dimensions, got %r"
                              % (name, shape))
        out[name] = dims
    return out


def _probe_shapes(lp, param):
    """The top shapes of data layer ``lp`` on its own (reads the first record of its
    source); its mean file is not needed for that."""
    from ..net import Net
    probe = caffe_pb2.NetParameter()
    probe.name = param.name
    probe.state.CopyFrom(param.state)
    one = probe.layer.add()
    one.CopyFrom(lp)
    one.transform_param.ClearField("mean_file")
    one.transform_param.ClearField("mean_value")
    net = Net(probe, caffe_pb2.TEST)
    try:
        return [_shape(net, t) for t in lp.top]
    finally:
        net.close()


def load_for_export(model, weights=None, input_shapes: Optional[Dict[str, Iterable[int]]] = None,
                    level: int = 0, stages: Optional[Iterable[str]] = None):
    """The TEST-phase :class:`caffepy.Net` of ``model`` with each data layer replaced by an
    Input layer of the same tops and shapes, and ``weights`` copied in (else the fillers' random
    values).

    The shapes of a data layer's tops come from ``input_shapes`` ({blob: shape}), else from
    the layer's own source (its first record), else the export stops with an ExportError naming
    the layer. ``input_shapes`` also overrides the shapes of Input layers (a deploy net's
    batch size, for example), and turns any other layer with no bottoms (a Python data layer)
    whose tops it all gives into an Input layer.
    """
    from ..net import Net
    from ..net.build import filter_net, load_net_param
    shapes = _parse_shapes(input_shapes)
    param = load_net_param(model)
    param.state.phase = caffe_pb2.TEST
    param.state.level = int(level)
    if stages:
        param.state.stage.extend([stages] if isinstance(stages, str) else list(stages))
    param = filter_net(param)
    problems = []
    known = set()
    for lp in param.layer:
        known.update(lp.top)
        if lp.type == "Input":
            if any(t in shapes for t in lp.top):
                old = [list(s.dim) for s in lp.input_param.shape]
                if len(old) == 1 and len(lp.top) > 1:
                    old = old * len(lp.top)
                lp.input_param.ClearField("shape")
                for j, t in enumerate(lp.top):
                    lp.input_param.shape.add().dim.extend(shapes.get(t, old[j] if j < len(old)
                                                                     else []))
            continue
        given = bool(lp.top) and all(t in shapes for t in lp.top)
        if lp.type not in _DATA_TYPES and not (given and not lp.bottom):
            continue        # a layer with no bottoms (a Python data layer) whose tops are given
        if given:
            tops = [shapes[t] for t in lp.top]
        else:
            try:
                probed = _probe_shapes(lp, param)
            except CaffepyError as e:
                problems.append("layer '%s' (%s): the shapes of its tops (%s) come from its "
                                "source, which cannot be read (%s); give them, e.g. "
                                "-input_shape %s=N,C,H,W" % (lp.name, lp.type,
                                                             ", ".join(lp.top), e, lp.top[0]))
                continue
            tops = [shapes.get(t, s) for t, s in zip(lp.top, probed)]
        name, top = lp.name, list(lp.top)
        lp.Clear()
        lp.name, lp.type = name, "Input"
        lp.top.extend(top)
        for s in tops:
            lp.input_param.shape.add().dim.extend(s)
    unknown = sorted(set(shapes) - known)
    if unknown:
        problems.append("input shape given for %s, which no layer of the net produces"
                        % ", ".join("'%s'" % u for u in unknown))
    if problems:
        raise ExportError("cannot prepare net '%s' for export:\n  %s"
                          % (param.name, "\n  ".join(problems)))
    return Net(param, caffe_pb2.TEST, weights=weights)


def export_onnx(model, onnx_path, weights=None, *,
                input_shapes: Optional[Dict[str, Iterable[int]]] = None,
                opset: int = DEFAULT_OPSET, outputs: Optional[Sequence[str]] = None,
                level: int = 0, stages: Optional[Iterable[str]] = None):
    """``caffepy export``: build ``model`` (prototxt) for TEST with ``weights`` and write
    ``onnx_path``. Returns the ``onnx.ModelProto``."""
    _require_onnx()
    _check_opset(opset)
    net = load_for_export(model, weights, input_shapes, level, stages)
    try:
        return to_onnx(net, onnx_path, opset=opset, outputs=outputs)
    finally:
        net.close()
