"""Neuron (element-wise activation) layers: one bottom -> one top of the same shape.

Every layer here allows in-place computation (top is bottom). Where the backward pass
needs the input and the input is overwritten in place, the forward keeps a copy of
what it needs (as Caffe's PReLU does). ReLU and ELU read the bottom data in backward
exactly as Caffe does, so in place they see the output (Caffe's numbers).
"""
import numpy as np

from .. import backend, parallel_chunks
from ..kernels import compiled
from ..layer import NeuronLayer, register_layer
from ..proto import caffe_pb2

_f32 = np.float32
_TRAIN = caffe_pb2.TRAIN


def _c(v):
    """A constant as a Python float holding a float32 value (Caffe's Dtype arithmetic),
    so it mixes with NumPy and CuPy float32 arrays without upcasting."""
    return float(np.float32(v))


class _SavesInput(NeuronLayer):
    """A neuron layer whose backward needs the input x: in place, forward keeps a copy."""

    _x_copy = None

    def _save_input(self, bottom, top):
        if top[0] is bottom[0]:
            x = bottom[0].data
            if self._x_copy is None or self._x_copy.shape != x.shape:
                self._x_copy = self.xp.empty_like(x)
            self._x_copy[...] = x

    def _input(self, bottom, top):
        if top[0] is bottom[0]:
            if self._x_copy is None or self._x_copy.shape != bottom[0].shape:
                raise self.error("backward called before forward (in-place input not saved)")
            return self._x_copy
        return bottom[0].data


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0), Caffe's CPU formula: NaN stays NaN and, with
    slope 0, -inf gives NaN (0 · -inf) as in Caffe. On the CPU one compiled pass forward and
    one backward where numba is installed (caffepy.kernels.compiled), else NumPy; the same
    numbers.

    Backward reads bottom data as Caffe does; in place that is the output (sign-equal to
    the input for a non-negative slope)."""

    def layer_setup(self, bottom, top):
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)

    @staticmethod
    def _kernels(*arrays):
        """The compiled kernels, where they can take these arrays (CPU, C-contiguous)."""
        if not all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays):
            return None
        return compiled.kernels()

    def forward_impl(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        s = np.float32(self.negative_slope)
        k = self._kernels(x, y)
        if k is not None:
            # the compiled pass releases the GIL: a large blob's halves run side by side
            parallel_chunks.elementwise(lambda x, y: k.relu_forward(x, y, s),
                                        (x.reshape(-1), y.reshape(-1)), compiled=True)
            return
        # max(x, 0) + slope * min(x, 0), branch-free (xp.where is slower)
        neg = self.scratch("neg", x.shape)

        def relu(x, y, neg):
            xp.minimum(x, 0, out=neg)
            neg *= s
            xp.maximum(x, 0, out=y)
            y += neg
        parallel_chunks.elementwise(relu, (x.reshape(-1), y.reshape(-1), neg.reshape(-1)))

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = bottom[0].data
        dy, dx = top[0].diff, bottom[0].diff
        s = np.float32(self.negative_slope)
        k = self._kernels(x, dy, dx)
        if k is not None:
            parallel_chunks.elementwise(lambda x, dy, dx: k.relu_backward(x, dy, dx, s),
                                        (x.reshape(-1), dy.reshape(-1), dx.reshape(-1)),
                                        compiled=True)
            return
        pos = self.scratch("pos", x.shape, xp.bool_).reshape(-1)
        if s == 0:
            def relu_backward(x, dy, dx, pos):
                xp.greater(x, 0, out=pos)
                xp.multiply(dy, pos, out=dx)
            parallel_chunks.elementwise(relu_backward, (x.reshape(-1), dy.reshape(-1),
                                                        dx.reshape(-1), pos))
        else:
            # Caffe's dy * ((x > 0) + slope * (x <= 0)): the factor is exactly 1 or slope
            factor = self.scratch("factor", x.shape)

            def leaky_backward(x, dy, dx, pos, factor):
                xp.greater(x, 0, out=pos)
                xp.less_equal(x, 0, out=factor)
                factor *= s
                factor += pos
                xp.multiply(dy, factor, out=dx)
            parallel_chunks.elementwise(leaky_backward, (x.reshape(-1), dy.reshape(-1),
                                                         dx.reshape(-1), pos,
                                                         factor.reshape(-1)))


@register_layer("PReLU")
class PReLULayer(_SavesInput):
    """y = max(x, 0) + a_c * min(x, 0), a learned per channel (axis 1) or shared."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.error("number of axes of bottom blob must be >= 2 (got shape %s)",
                             bottom[0].shape)
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            b = self.blobs.add_blob()
            b.reshape(() if self.channel_shared else (channels,))
            if p.HasField("filler"):
                fp = p.filler
            else:
                fp = caffe_pb2.FillerParameter(type="constant", value=0.25)
            self.fill_param(fp, b, "filler")
        if self.channel_shared:
            if self.blobs[0].count != 1:
                raise self.error("negative slope size is inconsistent with prototxt config "
                                 "(channel_shared: one slope expected, blob has %d)",
                                 self.blobs[0].count)
        elif self.blobs[0].count != channels:
            raise self.error("negative slope size is inconsistent with prototxt config "
                             "(%d channels, slope blob has %d values)", channels,
                             self.blobs[0].count)

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.error("number of axes of bottom blob must be >= 2 (got shape %s)",
                             bottom[0].shape)
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.error("bottom has %d channels but the slope blob has %d values",
                             bottom[0].shape[1], self.blobs[0].count)
        super().reshape(bottom, top)

    def _slope(self, x):
        a = self.blobs[0].data
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward_impl(self, bottom, top):
        xp = self.xp
        self._save_input(bottom, top)
        x = bottom[0].data
        a = self._slope(x)
        top[0].data[...] = xp.maximum(x, 0) + a * xp.minimum(x, 0)

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        x = self._input(bottom, top)
        dy = top[0].diff
        neg = x <= 0
        # Param gradient first: in place, bottom diff and top diff are one array.
        if self.param_propagate(0):
            g = dy * x * neg
            if self.channel_shared:
                self.blobs[0].diff[...] += g.sum(dtype=xp.float32)
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += g.sum(axis=axes, dtype=xp.float32)
        if propagate_down[0]:
            a = self._slope(x)
            bottom[0].diff[...] = xp.where(neg, dy * a, dy)


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """y = x > 0 ? x : alpha * (exp(x) - 1)."""

    def layer_setup(self, bottom, top):
        self.alpha = _c(self.layer_param.elu_param.alpha)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        top[0].data[...] = xp.maximum(x, 0) + (xp.exp(xp.minimum(x, 0)) - 1) * self.alpha

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = bottom[0].data
        y = top[0].data
        dy = top[0].diff
        bottom[0].diff[...] = xp.where(x > 0, dy, dy * (y + self.alpha))


def _sigmoid(xp, z, out=None):
    # Caffe's CPU sigmoid: 0.5 * tanh(0.5 * x) + 0.5 (into out, which may be z)
    out = xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 x) + 0.5 like Caffe's CPU code."""

    def forward_impl(self, bottom, top):
        _sigmoid(self.xp, bottom[0].data, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp
            y, dx = top[0].data, bottom[0].diff
            one_minus_y = self.scratch("one_minus_y", y.shape)
            xp.subtract(1, y, out=one_minus_y)
            xp.multiply(top[0].diff, y, out=dx)        # dx may be dy (in place)
            dx *= one_minus_y


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    def forward_impl(self, bottom, top):
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp
            y = top[0].data
            g = self.scratch("g", y.shape)
            xp.multiply(y, y, out=g)
            xp.subtract(1, g, out=g)                   # 1 - y^2
            xp.multiply(top[0].diff, g, out=bottom[0].diff)


@register_layer("AbsVal")
class AbsValLayer(_SavesInput):
    """y = |x|; dx = sign(x) dy. (Caffe forbids in place; here it works.)"""

    def forward_impl(self, bottom, top):
        self._save_input(bottom, top)
        self.xp.abs(bottom[0].data, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp
            xp.multiply(xp.sign(self._input(bottom, top)), top[0].diff, out=bottom[0].diff)


@register_layer("BNLL")
class BNLLLayer(_SavesInput):
    """y = log(1 + exp(x)), computed stably; dx = dy * sigmoid(min(x, 50))."""
    THRESHOLD = 50.0

    def forward_impl(self, bottom, top):
        xp = self.xp
        self._save_input(bottom, top)
        x = bottom[0].data
        top[0].data[...] = xp.where(x > 0, x + xp.log1p(xp.exp(-xp.abs(x))),
                                    xp.log1p(xp.exp(-xp.abs(x))))

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp
            x = self._input(bottom, top)
            e = xp.exp(xp.minimum(x, self.THRESHOLD))
            bottom[0].diff[...] = top[0].diff * e / (e + 1)


@register_layer("Power")
class PowerLayer(_SavesInput):
    """y = (shift + scale * x) ^ power."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power = _c(p.power)
        self.scale = _c(p.scale)
        self.shift = _c(p.shift)
        self.diff_scale = _c(_f32(p.power) * _f32(p.scale))
        self.const = 1.0 if self.power == 0 else _c(_f32(p.shift) ** _f32(p.power))

    def forward_impl(self, bottom, top):
        xp = self.xp
        y = top[0].data
        if self.diff_scale == 0:
            y[...] = self.const
            return
        self._save_input(bottom, top)
        t = bottom[0].data
        if self.scale != 1:
            t = t * self.scale
        if self.shift != 0:
            t = t + self.shift
        if self.power != 1:
            t = xp.power(t, self.power)
        if t is not y:
            y[...] = t

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.diff_scale == 0:
            dx[...] = 0
            return
        dy = top[0].diff
        if self.power == 1:
            dx[...] = dy * self.diff_scale
            return
        x = self._input(bottom, top)
        if self.power == 2:
            # dy/dx = 2 * scale * (shift + scale * x)
            g = x * _c(_f32(self.diff_scale) * _f32(self.scale))
            if self.shift != 0:
                g = g + _c(_f32(self.diff_scale) * _f32(self.shift))
        elif self.shift == 0:
            # dy/dx = power * y / x
            g = (top[0].data / x) * self.power
        else:
            t = x
            if self.scale != 1:
                t = t * self.scale
            t = t + self.shift
            g = top[0].data / t
            if self.diff_scale != 1:
                g = g * self.diff_scale
        dx[...] = dy * g


def _log_base(layer, base):
    """Exp's and Log's base as float32 and its natural log (base -1 means e: log 1)."""
    base = _f32(base)
    if base != -1 and not base > 0:
        raise layer.error("base must be strictly positive (got %g)", float(base))
    with np.errstate(all="ignore"):
        return base, _f32(1) if base == -1 else np.log(base)


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale * x); base -1 means e."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.exp_param
        base, log_base = _log_base(self, p.base)
        if not np.isfinite(log_base):
            raise self.error("log(base) = log(%g) is not finite", float(base))
        scale = _f32(p.scale)
        shift = _f32(p.shift)
        self.inner_scale = _c(log_base * scale)
        if shift == 0:
            self.outer_scale = 1.0
        elif base != -1:
            self.outer_scale = _c(np.power(base, shift))
        else:
            self.outer_scale = _c(np.exp(shift))

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        y = top[0].data
        if self.inner_scale == 1:
            xp.exp(x, out=y)
        else:
            xp.exp(x * self.inner_scale, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].diff * top[0].data
            if self.inner_scale != 1:
                g *= self.inner_scale
            bottom[0].diff[...] = g


@register_layer("Log")
class LogLayer(_SavesInput):
    """y = log_base(shift + scale * x); base -1 means e."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.log_param
        base, log_base = _log_base(self, p.base)
        if not np.isfinite(log_base) or log_base == 0:
            raise self.error("log(base) = log(%g) must be finite and non-zero", float(base))
        base_scale = _f32(1) if base == -1 else _f32(1) / log_base
        self.base_scale = _c(base_scale)
        self.input_scale = _c(p.scale)
        self.input_shift = _c(p.shift)
        self.backward_num_scale = _c(_f32(p.scale) * base_scale)

    def _inner(self, x):
        t = x
        if self.input_scale != 1:
            t = t * self.input_scale
        if self.input_shift != 0:
            t = t + self.input_shift
        return t

    def forward_impl(self, bottom, top):
        xp = self.xp
        self._save_input(bottom, top)
        y = top[0].data
        xp.log(self._inner(bottom[0].data), out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp
            g = xp.reciprocal(self._inner(self._input(bottom, top)))
            if self.backward_num_scale != 1:
                g = g * self.backward_num_scale
            bottom[0].diff[...] = top[0].diff * g


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = x > threshold ? 1 : 0. No backward (Caffe: NOT_IMPLEMENTED)."""

    def layer_setup(self, bottom, top):
        self.threshold = _c(self.layer_param.threshold_param.threshold)

    def forward_impl(self, bottom, top):
        top[0].data[...] = bottom[0].data > self.threshold


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); TEST: identity.

    dropout_ratio 0 drops nothing (scale 1), so TRAIN is the identity too: Caffe checks the
    ratio only in debug builds, and its release builds train such nets. A ratio of 1 (or more)
    is refused: it would drop every unit and scale by 1/0."""

    def layer_setup(self, bottom, top):
        p = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0.0 <= p < 1.0:
            raise self.error("dropout_ratio must be in [0, 1), got %g", p)
        self.ratio = _c(p)
        self.scale = _c(1.0 / (1.0 - self.ratio))
        self._mask = None
        self._uniform = None     # host buffers: the draws and the scaled mask
        self._host_mask = None

    def _dropping(self):
        """TRAIN with a positive ratio (otherwise the layer is the identity)."""
        return self.phase == _TRAIN and self.ratio > 0

    def _draw_mask(self, shape):
        """Scale where kept, 0 where dropped. Drawn from caffepy's host stream, so CPU and
        GPU runs drop the same units; on GPU that costs one host-to-device copy."""
        if self._uniform is None or self._uniform.shape != shape:
            self._uniform = np.empty(shape, dtype=np.float64)
            self._host_mask = np.empty(shape, dtype=np.float32)
        backend.rng().random(out=self._uniform)
        mask = self._host_mask
        np.less(self._uniform, 1.0 - self.ratio, out=mask)
        mask *= _f32(self.scale)
        return self.xp.asarray(mask)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self._dropping():
            # the mask carries the 1/(1-p) scale: x*scale for kept units, 0 otherwise
            self._mask = self._draw_mask(x.shape)
            xp.multiply(x, self._mask, out=top[0].data)
        elif top[0] is not bottom[0]:
            top[0].data[...] = x

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        if self._dropping():
            if self._mask is None or self._mask.shape != top[0].diff.shape:
                raise self.error("backward called before forward (no dropout mask)")
            xp.multiply(top[0].diff, self._mask, out=bottom[0].diff)
        elif top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff


@register_layer("Clip")
class ClipLayer(_SavesInput):
    """y = min(max(x, min), max); dx = dy where min <= x <= max."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs both min and max")
        self.min = _c(p.min)
        self.max = _c(p.max)
        if self.min > self.max:
            raise self.error("clip_param min (%g) must not exceed max (%g)",
                             float(self.min), float(self.max))

    def forward_impl(self, bottom, top):
        xp = self.xp
        self._save_input(bottom, top)
        xp.minimum(xp.maximum(bottom[0].data, self.min), self.max, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._input(bottom, top)
            self.xp.multiply(top[0].diff, (x >= self.min) & (x <= self.max), out=bottom[0].diff)


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta x); dx = dy * (beta y + sigmoid(beta x) (1 - beta y))."""

    def layer_setup(self, bottom, top):
        self.beta = _c(self.layer_param.swish_param.beta)
        self._sig = None

    def forward_impl(self, bottom, top):
        x = bottom[0].data
        self._sig = _sigmoid(self.xp, x * self.beta)
        self.xp.multiply(x, self._sig, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            by = top[0].data * self.beta
            bottom[0].diff[...] = top[0].diff * (by + self._sig * (1 - by))
