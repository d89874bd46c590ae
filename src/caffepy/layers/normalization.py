"""Normalization and reduction layers: Softmax, BatchNorm, Scale, Bias, MVN, Reduction, ArgMax,
LRN (local response normalisation)."""
import numpy as np

from .. import parallel_chunks
from ..layer import Layer, register_layer
from ..proto import caffe_pb2
from .shapes import nchw, prod

_f32 = np.float32


def _c(v):
    """A constant as a Python float holding a float32 value (Caffe's Dtype arithmetic),
    so it mixes with NumPy and CuPy float32 arrays without upcasting."""
    return float(np.float32(v))


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """Softmax along softmax_param.axis (default 1), max-subtracted."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        b = bottom[0]
        self.axis = self.canonical_axis(b, self.layer_param.softmax_param.axis)
        self.outer = b.count_range(0, self.axis)
        self.channels = b.shape[self.axis] if b.num_axes else 1
        self.inner = b.count_range(self.axis + 1)
        if top[0] is not b:
            top[0].reshape(b.shape)

    def _view(self, a):
        return a.reshape(self.outer, self.channels, self.inner)

    def _reduced(self):
        """Scratch for a max or sum over the softmax axis, shape (outer, 1, inner)."""
        return self.scratch("reduced", (self.outer, 1, self.inner))

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = self._view(bottom[0].data)
        y = self._view(top[0].data)
        r = self._reduced()
        xp.max(x, axis=1, keepdims=True, out=r)
        xp.subtract(x, r, out=y)
        xp.exp(y, out=y)
        xp.sum(y, axis=1, keepdims=True, out=r)
        y /= r

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        y = self._view(top[0].data)
        dy = self._view(top[0].diff)
        dx = self._view(bottom[0].diff)
        dy_y = self.scratch("dy_y", y.shape)
        dot = self._reduced()
        xp.multiply(dy, y, out=dy_y)
        xp.sum(dy_y, axis=1, keepdims=True, out=dot)
        xp.subtract(dy, dot, out=dx)                   # dx may be dy (in place)
        dx *= y


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm: no affine part; blobs = [mean sum, variance sum, scale factor]."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.moving_average_fraction = _c(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        self.eps = _c(p.eps)
        b = bottom[0]
        if b.num_axes == 0:
            raise self.error("bottom blob must have at least one axis")
        self.channels = 1 if b.num_axes == 1 else b.shape[1]
        if not self.blobs:
            for shape in ((self.channels,), (self.channels,), (1,)):
                blob = self.blobs.add_blob(*shape)
                blob.data[...] = 0
        if len(self.blobs) != 3:
            raise self.error("expects 3 blobs (mean sum, variance sum, scale factor), got %d",
                             len(self.blobs))
        for j, want in enumerate((self.channels, self.channels, 1)):
            if self.blobs[j].count != want:
                raise self.error("blob %d has shape %s (%d values); expected %d values for %d "
                                 "channels", j, self.blobs[j].shape, self.blobs[j].count, want,
                                 self.channels)
        # Mask the statistics from the solver: lr_mult 0 for all three blobs.
        params = self.layer_param.param
        for i in range(len(self.blobs)):
            if len(params) == i:
                params.add().lr_mult = 0.0
            elif params[i].lr_mult != 0:
                raise self.error("Cannot configure batch normalization statistics as layer "
                                 "parameters (param %d has lr_mult %g; it must be 0)",
                                 i, params[i].lr_mult)
        self._x_norm = None
        self._std = None

    def reshape(self, bottom, top):
        b = bottom[0]
        c = 1 if b.num_axes == 1 else (b.shape[1] if b.num_axes >= 2 else 0)
        if c != self.channels:
            raise self.error("bottom has %d channels, the layer was set up for %d (shape %s)",
                             c, self.channels, b.shape)
        if top[0] is not b:
            top[0].reshape(b.shape)
        self.num = b.shape[0]
        self.spatial = b.count // max(self.num * self.channels, 1)
        xp = self.xp
        if self._x_norm is None or self._x_norm.size != b.count:
            self._x_norm = xp.zeros(b.count, dtype=xp.float32)

    def _view(self, a):
        return a.reshape(self.num, self.channels, self.spatial)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = self._view(bottom[0].data)
        y = self._view(top[0].data)
        axes = (0, 2)
        m = self.num * self.spatial
        # y holds x - mean, then (x - mean) / std; x may be y (in place)
        if self.use_global_stats:
            s = float(self.blobs[2].data.reshape(-1)[0])
            sf = 0.0 if s == 0 else _c(_f32(1) / _f32(s))
            mean = self.blobs[0].data.reshape(-1) * sf
            var = self.blobs[1].data.reshape(-1) * sf
            xp.subtract(x, mean.reshape(1, -1, 1), out=y)
        else:
            mean = x.sum(axis=axes, dtype=xp.float32) * _c(1.0 / m)
            xp.subtract(x, mean.reshape(1, -1, 1), out=y)
            sq = self._view(self._x_norm)              # scratch until the end of forward
            xp.multiply(y, y, out=sq)
            var = sq.sum(axis=axes, dtype=xp.float32) * _c(1.0 / m)
            # running averages
            lam = self.moving_average_fraction
            b0, b1, b2 = (blob.data.reshape(-1) for blob in self.blobs)
            b2 *= lam
            b2 += 1
            b0[...] = mean + b0 * lam
            cnt = bottom[0].count // self.channels
            corr = _c(_f32(cnt) / _f32(cnt - 1)) if cnt > 1 else 1.0
            b1[...] = var * corr + b1 * lam
        self._std = xp.sqrt(var + self.eps)
        y /= self._std.reshape(1, -1, 1)
        self._x_norm[...] = top[0].flat_data

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy = self._view(top[0].diff)
        dx = self._view(bottom[0].diff)
        std = self._std.reshape(1, -1, 1)
        if self.use_global_stats:
            xp.divide(dy, std, out=dx)
            return
        y = self._view(self._x_norm)
        axes = (0, 2)
        m = self.num * self.spatial
        t = self.scratch("t", y.shape)
        xp.multiply(dy, y, out=t)
        sum_dyy = t.sum(axis=axes, dtype=xp.float32).reshape(1, -1, 1)
        sum_dy = dy.sum(axis=axes, dtype=xp.float32).reshape(1, -1, 1)
        # dx = (dy - (y * sum_dyy + sum_dy) / m) / std; dx may be dy (in place)
        xp.multiply(y, sum_dyy, out=t)
        t += sum_dy
        t *= _c(1.0 / m)
        xp.subtract(dy, t, out=dx)
        dx /= std


class _BroadcastParam(Layer):
    """Shared plumbing of Scale and Bias: a param (learned or bottom[1]) broadcast over
    bottom[0] axes [axis, axis + num_axes)."""
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def _param_shape(self, bottom, axis_field, num_axes, what):
        b = bottom[0]
        axis = self.canonical_axis(b, axis_field)
        if num_axes < -1:
            raise self.error("num_axes must be non-negative, or -1 to extend to the end of "
                             "bottom[0] (got %d)", num_axes)
        if num_axes >= 0 and b.num_axes < axis + num_axes:
            raise self.error("%s blob's shape extends past bottom[0]'s shape %s when applied "
                             "starting with bottom[0] axis = %d", what, b.shape, axis)
        end = b.num_axes if num_axes == -1 else axis + num_axes
        return tuple(b.shape[axis:end])

    def _add_param(self, bottom, axis_field, num_axes, what, filler, filler_name):
        """A learned param blob over bottom[0] axes [axis, axis + num_axes), filled."""
        shape = self._param_shape(bottom, axis_field, num_axes, what)
        blob = self.blobs.add_blob()
        blob.reshape(shape)
        self.fill_param(filler, blob, filler_name)

    def _dims(self, bottom, pshape, axis_field, what):
        """outer, param, inner dims for a param of shape pshape over bottom[0]."""
        b = bottom[0]
        axis = 0 if len(pshape) == 0 else self.canonical_axis(b, axis_field)
        if b.num_axes < axis + len(pshape):
            raise self.error("%s blob's shape %s extends past bottom[0]'s shape %s when applied "
                             "starting with bottom[0] axis = %d", what, pshape, b.shape, axis)
        for i, d in enumerate(pshape):
            if b.shape[axis + i] != d:
                raise self.error("dimension mismatch between bottom[0]->shape(%d) = %d and "
                                 "%s->shape(%d) = %d (bottom shape %s, %s shape %s)",
                                 axis + i, b.shape[axis + i], what, i, d, b.shape, what, pshape)
        outer = b.count_range(0, axis)
        pdim = prod(pshape)
        inner = b.count_range(axis + len(pshape))
        return outer, pdim, inner


@register_layer("Bias")
class BiasLayer(_BroadcastParam):
    """y = x + b, b (learned blob or bottom[1]) broadcast from `axis`."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            self._add_param(bottom, p.axis, p.num_axes, "bias", p.filler, "filler")

    def _bias_blob(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        bias = self._bias_blob(bottom)
        self.outer, self.dim, self.inner = self._dims(bottom, bias.shape,
                                                      self.layer_param.bias_param.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward_impl(self, bottom, top):
        bias = self._bias_blob(bottom).data.reshape(1, self.dim, 1)
        x = bottom[0].data.reshape(self.outer, self.dim, self.inner)
        self.xp.add(x, bias, out=top[0].data.reshape(self.outer, self.dim, self.inner))

    def backward_impl(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.outer, self.dim, self.inner)
        if len(bottom) == 1 and self.param_propagate(0):
            self.blobs[0].diff[...] += dy.sum(axis=(0, 2), dtype=self.xp.float32).reshape(
                self.blobs[0].shape)
        if len(bottom) > 1 and propagate_down[1]:
            bottom[1].diff[...] = dy.sum(axis=(0, 2), dtype=self.xp.float32).reshape(
                bottom[1].shape)
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff


@register_layer("Scale")
class ScaleLayer(_BroadcastParam):
    """y = x * s (+ b): s learned (blob 0) or bottom[1]; optional learned bias (last blob)."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.scale_param
        if len(bottom) == 1 and not self.blobs:
            fp = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(
                type="constant", value=1.0)
            self._add_param(bottom, p.axis, p.num_axes, "scale", fp, "filler")
        self.bias_param_id = None
        if p.bias_term:
            if len(self.blobs) + len(bottom) < 3:
                # no preloaded bias: create it (shape as the internal Bias layer would)
                num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
                self._add_param(bottom, p.axis, num_axes, "bias", p.bias_filler, "bias_filler")
            self.bias_param_id = len(self.blobs) - 1
        self._x_copy = None

    def _scale_blob(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        p = self.layer_param.scale_param
        scale = self._scale_blob(bottom)
        self.outer, self.dim, self.inner = self._dims(bottom, scale.shape, p.axis, "scale")
        if self.bias_param_id is not None:
            bias = self.blobs[self.bias_param_id]
            self.b_outer, self.b_dim, self.b_inner = self._dims(bottom, bias.shape, p.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _v(self, a):
        return a.reshape(self.outer, self.dim, self.inner)

    def forward_impl(self, bottom, top):
        xp = self.xp
        if top[0] is bottom[0]:
            if self._x_copy is None or self._x_copy.size != bottom[0].count:
                self._x_copy = xp.empty(bottom[0].count, dtype=xp.float32)
            self._x_copy[...] = bottom[0].flat_data
        s = self._scale_blob(bottom).data.reshape(1, self.dim, 1)
        y = self._v(top[0].data)
        xp.multiply(self._v(bottom[0].data), s, out=y)
        if self.bias_param_id is not None:
            bias = self.blobs[self.bias_param_id].data.reshape(1, self.b_dim, 1)
            yb = top[0].data.reshape(self.b_outer, self.b_dim, self.b_inner)
            yb += bias

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        in_place = top[0] is bottom[0]
        dy = self._v(top[0].diff)
        if self.bias_param_id is not None and self.param_propagate(self.bias_param_id):
            bb = self.blobs[self.bias_param_id]
            dyb = top[0].diff.reshape(self.b_outer, self.b_dim, self.b_inner)
            bb.diff[...] += dyb.sum(axis=(0, 2), dtype=xp.float32).reshape(bb.shape)
        learned = len(bottom) == 1
        if (learned and self.param_propagate(0)) or (not learned and propagate_down[1]):
            x = self._x_copy if in_place else bottom[0].data
            dy_x = self.scratch("dy_x", dy.shape)
            xp.multiply(dy, self._v(x), out=dy_x)
            g = dy_x.sum(axis=(0, 2), dtype=xp.float32)
            sblob = self._scale_blob(bottom)
            if learned:
                sblob.diff[...] += g.reshape(sblob.shape)
            else:
                sblob.diff[...] = g.reshape(sblob.shape)
        if propagate_down[0]:
            s = self._scale_blob(bottom).data.reshape(1, self.dim, 1)
            xp.multiply(dy, s, out=self._v(bottom[0].diff))


@register_layer("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per (num, channel), or per num if across_channels."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = _c(p.eps)
        self._std = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes > 4:
            raise self.error("MVN works on blobs of at most 4 axes (num, channels, height, "
                             "width); bottom has shape %s", b.shape)
        legacy = tuple(b.shape) + (1,) * (4 - b.num_axes)
        # Caffe reshapes the top to the legacy 4-D shape (num, channels, height, width)
        top[0].reshape(legacy)
        n, c = legacy[0], legacy[1]
        self.num = n if self.across_channels else n * c
        self.dim = b.count // max(self.num, 1)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.num, self.dim)
        y = top[0].data.reshape(self.num, self.dim)
        inv = _c(1.0 / self.dim)
        mean = x.sum(axis=1, keepdims=True, dtype=xp.float32) * inv
        xp.subtract(x, mean, out=y)
        if self.normalize_variance:
            var = (y * y).sum(axis=1, keepdims=True, dtype=xp.float32) * inv
            self._std = xp.sqrt(var) + self.eps
            y /= self._std

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy = top[0].diff.reshape(self.num, self.dim)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        inv = _c(1.0 / self.dim)
        if self.normalize_variance:
            y = top[0].data.reshape(self.num, self.dim)
            s1 = (y * dy).sum(axis=1, keepdims=True, dtype=xp.float32)
            s2 = dy.sum(axis=1, keepdims=True, dtype=xp.float32)
            g = dy - (y * s1 + s2) * inv
            xp.divide(g, self._std, out=dx)
        else:
            mean = dy.sum(axis=1, keepdims=True, dtype=xp.float32) * inv
            xp.subtract(dy, mean, out=dx)


@register_layer("Reduction")
class ReductionLayer(Layer):
    """SUM / ASUM / SUMSQ / MEAN over all axes from `axis` on, times coeff."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.reduction_param
        R = caffe_pb2.ReductionParameter
        self.op = p.operation
        if self.op not in (R.SUM, R.ASUM, R.SUMSQ, R.MEAN):
            raise self.error("unknown reduction operation %d", self.op)
        self._R = R

    def reshape(self, bottom, top):
        b = bottom[0]
        self.axis = 0 if b.num_axes == 0 else self.canonical_axis(
            b, self.layer_param.reduction_param.axis)
        top[0].reshape(b.shape[:self.axis])
        self.num = b.count_range(0, self.axis)
        self.dim = b.count_range(self.axis)
        coeff = _f32(self.layer_param.reduction_param.coeff)
        if self.op == self._R.MEAN:
            coeff = coeff / _f32(self.dim)
        self.coeff = _c(coeff)

    def forward_impl(self, bottom, top):
        xp = self.xp
        R = self._R
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == R.ASUM:
            r = xp.abs(x).sum(axis=1, dtype=xp.float32)
        elif self.op == R.SUMSQ:
            r = (x * x).sum(axis=1, dtype=xp.float32)
        else:
            r = x.sum(axis=1, dtype=xp.float32)
        if self.coeff != 1:
            r = r * self.coeff
        top[0].data[...] = r.reshape(top[0].shape)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        R = self._R
        c = (top[0].diff.reshape(self.num, 1) * self.coeff)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op == R.ASUM:
            x = bottom[0].data.reshape(self.num, self.dim)
            xp.multiply(xp.sign(x), c, out=dx)
        elif self.op == R.SUMSQ:
            x = bottom[0].data.reshape(self.num, self.dim)
            xp.multiply(x, c * 2, out=dx)
        else:
            dx[...] = c


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the top_k largest entries. No backward.

    Ties rank the larger index first, as Caffe's partial_sort with std::greater on
    (value, index) pairs does."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top_k must not be less than 1")
        b = bottom[0]
        if self.has_axis:
            self.axis = self.canonical_axis(b, p.axis)
            if self.top_k > b.shape[self.axis]:
                raise self.error("top_k (%d) must be less than or equal to the dimension of the "
                                 "axis (%d)", self.top_k, b.shape[self.axis])
        else:
            if self.top_k > b.count_range(1):
                raise self.error("top_k (%d) must be less than or equal to the dimension of the "
                                 "flattened bottom blob per instance (%d)", self.top_k,
                                 b.count_range(1))

    def reshape(self, bottom, top):
        b = bottom[0]
        if self.has_axis:
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0] if b.num_axes else 1
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def forward_impl(self, bottom, top):
        xp = self.xp
        b = bottom[0]
        k = self.top_k
        if self.has_axis:
            outer = b.count_range(0, self.axis)
            dim = b.shape[self.axis]
            inner = b.count_range(self.axis + 1)
        else:
            outer = b.shape[0] if b.num_axes else 1
            dim = b.count_range(1)
            inner = 1
        x = b.data.reshape(outer, dim, inner)
        # descending by value, ties -> larger index first: a stable ascending sort, reversed
        kw = {"kind": "stable"} if xp is np else {}
        idx = xp.argsort(x, axis=1, **kw)[:, ::-1, :][:, :k, :]
        vals = xp.take_along_axis(x, idx, axis=1)
        if self.has_axis:
            out = top[0].data.reshape(outer, k, inner)
            out[...] = vals if self.out_max_val else idx
        elif self.out_max_val:
            out = top[0].data.reshape(outer, 2, k)
            out[:, 0, :] = idx[:, :, 0]
            out[:, 1, :] = vals[:, :, 0]
        else:
            top[0].data.reshape(outer, k)[...] = idx[:, :, 0]


# -- LRN ------------------------------------------------------------------------------------

# LRN works a chunk of images at a time (about this many bytes of input), so its work buffers
# are a chunk's, not the batch's, and the chunks run on all the cores.
LRN_CHUNK_BYTES = 1 << 20


def _box_sum(xp, src, n, pad_buf, row_buf, out):
    """out = Σ over the n×n window centred on each pixel of src (N, C, H, W), zero-padded.
    Separable: a sum along W into row_buf, then along H into out."""
    H, W = src.shape[2], src.shape[3]
    pre = (n - 1) // 2
    pad_buf[:, :, pre:pre + H, pre:pre + W] = src
    row_buf[...] = pad_buf[:, :, :, 0:W]
    for j in range(1, n):
        row_buf += pad_buf[:, :, :, j:j + W]
    out[...] = row_buf[:, :, 0:H]
    for i in range(1, n):
        out += row_buf[:, :, i:i + H]
    return out


@register_layer("LRN")
class LRNLayer(Layer):
    """Local response normalisation.
    ACROSS_CHANNELS: y = x·(k + α/n·Σ_{n channels} x²)^−β.
    WITHIN_CHANNEL:  y = x·(1 + α/n²·Σ_{n×n window, zero-padded} x²)^−β (k is not used)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error("LRN only supports odd values for local_size (got %d)", self.size)
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
        self._key = None

    def reshape(self, bottom, top):
        b = bottom[0]
        shape = nchw(self, b)
        if top[0] is not b:
            top[0].reshape(shape)
        if (shape, self.xp) != self._key:
            self._key = (shape, self.xp)
            xp = self.xp
            N, C, H, W = shape
            self._scale = xp.empty(shape, dtype=np.float32)
            self._spow = xp.empty(shape, dtype=np.float32)
            # chunks of images that the threads take in turn, each with work buffers of a
            # chunk (caffepy.parallel_chunks); on a device, one chunk
            per_image = max(1, 4 * C * H * W)
            m = max(1, LRN_CHUNK_BYTES // per_image) if xp is np else max(1, N)
            self._chunks = parallel_chunks.split(N, -(-N // m)) if N else []
            self._chunk = max((b - a for a, b in self._chunks), default=1)
            self._work = {}
            self._xsave = None

    def _work_buffers(self, worker):
        """The worker's (padded, row, square) buffers for one chunk; the padding stays zero."""
        w = self._work.get(worker)
        if w is None:
            xp = self.xp
            N, C, H, W = self._key[0]
            m, n = self._chunk, self.size
            if self.across:
                pad = xp.zeros((m, C + n - 1, H, W), dtype=np.float32)
                row = None
            else:
                pad = xp.zeros((m, C, H + n - 1, W + n - 1), dtype=np.float32)
                row = xp.empty((m, C, H + n - 1, W), dtype=np.float32)
            w = self._work[worker] = (pad, row, xp.empty((m, C, H, W), dtype=np.float32))
        return w

    def _window_sum(self, src, out, pad, row):
        """Σ of src over each element's LRN window (channels or n×n plane window); ``pad`` and
        ``row`` are work buffers for src's images. ``out`` may be ``src``."""
        if self.across:
            C = src.shape[1]
            pad[:, self.pre_pad:self.pre_pad + C] = src
            out[...] = pad[:, 0:C]
            for i in range(1, self.size):
                out += pad[:, i:i + C]
            return out
        return _box_sum(self.xp, src, self.size, pad, row, out)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        y = top[0].data
        if top[0] is bottom[0]:         # backward needs the input: keep a copy
            if self._xsave is None:
                self._xsave = xp.empty(x.shape, dtype=np.float32)
            self._xsave[...] = x
        scale_all, spow_all, chunks = self._scale, self._spow, self._chunks
        f32 = np.float32

        def chunk_forward(worker, i):
            a, b = chunks[i]
            m = b - a
            pad, row, sq = self._work_buffers(worker)
            xs, scale = x[a:b], scale_all[a:b]
            xp.multiply(xs, xs, out=sq[:m])
            self._window_sum(sq[:m], scale, pad[:m], None if row is None else row[:m])
            if self.across:
                scale *= f32(self.alpha / self.size)
                scale += f32(self.k)
            else:
                # Caffe's chain: AVE pool (÷ n²) -> Power(scale α, shift 1, power −β)
                scale *= f32(1.0 / (self.size * self.size))
                scale *= f32(self.alpha)
                scale += f32(1.0)
            xp.power(scale, f32(-self.beta), out=spow_all[a:b])
            xp.multiply(xs, spow_all[a:b], out=y[a:b])   # in place: this chunk was read above
        parallel_chunks.run_blocks(chunk_forward, len(chunks))

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy, y, dx = top[0].diff, top[0].data, bottom[0].diff
        x = self._xsave if top[0] is bottom[0] else bottom[0].data
        n2 = self.size if self.across else self.size * self.size
        coeff = np.float32(2.0 * self.alpha * self.beta / n2)
        scale_all, spow_all, chunks = self._scale, self._spow, self._chunks

        def chunk_backward(worker, i):
            a, b = chunks[i]
            m = b - a
            pad, row, ratio = self._work_buffers(worker)
            ratio = ratio[:m]
            xp.multiply(dy[a:b], y[a:b], out=ratio)
            ratio /= scale_all[a:b]
            # the sum reads ratio before overwriting it
            acc = self._window_sum(ratio, ratio, pad[:m], None if row is None else row[:m])
            acc *= x[a:b]
            acc *= coeff
            xp.multiply(dy[a:b], spow_all[a:b], out=dx[a:b])
            dx[a:b] -= acc
        parallel_chunks.run_blocks(chunk_backward, len(chunks))
