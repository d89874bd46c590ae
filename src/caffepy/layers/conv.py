"""Convolution layers: Convolution, Deconvolution and Im2col, with their shared base (Caffe's
BaseConvolutionLayer) and the reading of convolution_param's geometry.

Each class reproduces the Caffe 1.0 (master) layer of the same name, including its parameter
rules and its output-size formulas. A convolution pass is one im2col over the whole batch
(caffepy.kernels.im2col) plus one large matmul per group.
"""
import logging

import numpy as np

from ..kernels.im2col import (WindowGeometry, col2im, conv_out_size, deconv_out_size,
                              im2col)
from ..layer import Layer, register_layer
from .params import weight_and_bias
from .shapes import prod, shape_str


# -- convolution_param geometry ---------------------------------------------------------------

def _spatial_params(layer, p, num_spatial):
    """kernel, stride, pad, dilation tuples from a ConvolutionParameter, with Caffe's rules:
    repeated fields given once (all axes) or once per spatial axis; the _h/_w forms are 2-D only
    and exclusive with the repeated forms."""
    def per_axis(name, values, default):
        n = len(values)
        if n == 0 and default is not None:
            return (default,) * num_spatial
        if n != 1 and n != num_spatial:
            raise layer.error("%s must be specified once, or once per spatial dimension "
                              "(%s specified %d times; %d spatial dims)",
                              name, name, n, num_spatial)
        return tuple(int(values[0 if n == 1 else i]) for i in range(num_spatial))

    def read(name, repeated, default):
        """The _h/_w pair if either is set (2-D only, not with the repeated field), else the
        repeated field."""
        if not (p.HasField(name + "_h") or p.HasField(name + "_w")):
            return per_axis(repeated, getattr(p, repeated), default)
        if num_spatial != 2:
            raise layer.error("%s_h & %s_w can only be used for 2D convolution "
                              "(this input has %d spatial axes)", name, name, num_spatial)
        if len(getattr(p, repeated)):
            raise layer.error("Either %s or %s_h/w should be specified; not both.",
                              repeated, name)
        return (int(getattr(p, name + "_h")), int(getattr(p, name + "_w")))

    def nonzero(values, what, name):
        if any(v <= 0 for v in values):
            raise layer.error("%s dimensions must be nonzero (%s %s).", what, name,
                              shape_str(values))
        return values

    kernel = nonzero(read("kernel", "kernel_size", None), "Filter", "kernel")
    stride = nonzero(read("stride", "stride", 1), "Stride", "stride")
    pad = read("pad", "pad", 0)
    dilation = nonzero(per_axis("dilation", p.dilation, 1), "Dilation", "dilation")
    return kernel, stride, pad, dilation


# -- Convolution / Deconvolution ------------------------------------------------------------

def _read_conv_geometry(layer, p, bottom):
    """convolution_param's channel axis and per-spatial-axis kernel/stride/pad/dilation
    (shared by Convolution, Deconvolution and Im2col)."""
    layer.axis = layer.canonical_axis(bottom, p.axis)
    layer.num_spatial = bottom.num_axes - layer.axis - 1
    if layer.num_spatial < 1:
        raise layer.error("needs at least one spatial axis after the channel axis %d "
                          "(bottom shape %s)", layer.axis, shape_str(bottom.shape))
    layer.kernel, layer.stride, layer.pad, layer.dilation = _spatial_params(
        layer, p, layer.num_spatial)


log = logging.getLogger("caffepy")

# conv_mode (ConvolutionParameter field 21, the SSL fork's sparse-inference hint) already
# reported for these layer names: one log line per layer, not one per net built
_CONV_MODE_REPORTED = set()


def _report_conv_mode(layer_param):
    mode = layer_param.convolution_param.conv_mode
    if mode == 0 or layer_param.name in _CONV_MODE_REPORTED:
        return
    _CONV_MODE_REPORTED.add(layer_param.name)
    log.info("Layer %s: conv_mode %s is an inference hint (sparse convolution in the SSL fork); "
             "caffepy computes it as LOWERED_GEMM, with the same results", layer_param.name,
             layer_param.convolution_param.ConvMode.Name(mode))


class _ConvolutionBase(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

    Buffers (made in reshape, kept while the shapes stay the same):
      col:  (C·K, N·P) im2col of a whole batch, one per bottom (kept from forward for the
            weight gradient), where C/K/P are the image channels, kernel size and window count.
    """
    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    reverse = False     # Deconvolution: the convolution's forward and backward swap roles

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        _report_conv_mode(self.layer_param)
        _read_conv_geometry(self, p, bottom[0])
        self.channels = int(bottom[0].shape[self.axis])
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error("num_output must be positive (set convolution_param "
                             "{ num_output: ... })")
        self.group = int(p.group)
        if self.group <= 0:
            raise self.error("group must be positive, got %d", self.group)
        if self.channels % self.group:
            raise self.error("the number of input channels (%d) must be a multiple of group (%d)",
                             self.channels, self.group)
        if self.num_output % self.group:
            raise self.error("Number of output should be multiples of group "
                             "(num_output %d, group %d).", self.num_output, self.group)
        if self.reverse:
            self.conv_out_channels, self.conv_in_channels = self.channels, self.num_output
        else:
            self.conv_out_channels, self.conv_in_channels = self.num_output, self.channels
        wshape = (self.conv_out_channels, self.conv_in_channels // self.group) + self.kernel
        self.bias_term = bool(p.bias_term)
        weight_and_bias(self, p, wshape, self.bias_term, self.num_output)
        self.kernel_count = prod(self.kernel)
        self._key = None

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].shape)
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error("bottom num_axes may not change (set up with %d axes, got shape %s)",
                             self.axis + 1 + self.num_spatial, shape_str(shape))
        if shape[self.axis] != self.channels:
            raise self.error("Input size incompatible with convolution kernel: the layer was set "
                             "up for %d input channels, bottom has shape %s",
                             self.channels, shape_str(shape))
        for i in range(1, len(bottom)):
            if tuple(bottom[i].shape) != shape:
                raise self.error("shape mismatch - bottom[0]: %s vs. bottom[%d]: %s "
                                 "(all bottoms of a convolution must have the same shape)",
                                 shape_str(shape), i, shape_str(bottom[i].shape))
        key = (shape, len(bottom))
        if key != self._key:
            self.num = prod(shape[:self.axis])
            in_sp = shape[self.axis + 1:]
            if self.reverse:
                out_sp = tuple(deconv_out_size(in_sp[d], self.kernel[d], self.stride[d],
                                               self.pad[d], self.dilation[d])
                               for d in range(self.num_spatial))
                self._check_out(in_sp, out_sp)
                # The convolution this deconvolution reverses maps the top onto the bottom.
                geom = WindowGeometry(out_sp, self.kernel, self.stride, self.pad, self.dilation,
                                      out_shape=in_sp)
            else:
                out_sp = tuple(conv_out_size(in_sp[d], self.kernel[d], self.stride[d],
                                             self.pad[d], self.dilation[d])
                               for d in range(self.num_spatial))
                self._check_out(in_sp, out_sp)
                geom = WindowGeometry(in_sp, self.kernel, self.stride, self.pad, self.dilation)
            self.in_sp, self.out_sp = in_sp, out_sp
            self.geom = geom
            self._key = key
            self._alloc(len(bottom))
        top_shape = shape[:self.axis] + (self.num_output,) + self.out_sp
        for t in top:
            t.reshape(top_shape)

    def _check_out(self, in_sp, out_sp):
        if any(o <= 0 for o in out_sp):
            raise self.error("the output would be empty: input spatial shape %s, kernel %s, "
                             "stride %s, pad %s, dilation %s give output %s",
                             shape_str(in_sp), shape_str(self.kernel), shape_str(self.stride),
                             shape_str(self.pad), shape_str(self.dilation), shape_str(out_sp))

    def _gemm_groups(self, a, b, out, ta=False, tb=False):
        """out[g] = op(a[g]) @ op(b[g]) for each group g, splitting rows of a, b and out."""
        xp = self.xp
        G = self.group
        if G == 1:
            xp.matmul(a.T if ta else a, b.T if tb else b, out=out)
            return
        ra, rb, ro = a.shape[0] // G, b.shape[0] // G, out.shape[0] // G
        for g in range(G):
            ag = a[g * ra:(g + 1) * ra]
            bg = b[g * rb:(g + 1) * rb]
            xp.matmul(ag.T if ta else ag, bg.T if tb else bg, out=out[g * ro:(g + 1) * ro])

    def _weight_diff_add(self, a, b, ta=False, tb=False):
        """weight.diff += op(a) @ op(b), per group (through a scratch buffer)."""
        wd = self.blobs[0].diff.reshape(self.conv_out_channels, -1)
        if self._wtmp is None or self._wtmp.shape != wd.shape:
            self._wtmp = self.xp.empty(wd.shape, dtype=np.float32)
        self._gemm_groups(a, b, self._wtmp, ta, tb)
        wd += self._wtmp

    def _bias_diff_add(self, dy):
        """bias.diff += Σ over batch and spatial positions of dy (num, O, P)."""
        if self.bias_term and self.param_propagate(1):
            self.blobs[1].diff[...] += dy.sum(axis=(0, 2))


@register_layer("Convolution")
class ConvolutionLayer(_ConvolutionBase):
    """N-D grouped, dilated cross-correlation: im2col of the whole batch + one matmul per group."""

    def _alloc(self, nbottom):
        xp = self.xp
        C, K, N, P = self.channels, self.kernel_count, self.num, self.geom.out_count
        col_shape = (C,) + self.kernel + (N,) + self.out_sp
        # zeroed once: im2col never writes the padding entries (same geometry every time)
        self._cols = [xp.zeros(col_shape, dtype=np.float32) for _ in range(nbottom)]
        self._y = xp.empty((self.num_output, N * P), dtype=np.float32)
        self._dy = None
        self._dcol = None
        self._wtmp = None
        self._CK, self._NP = C * K, N * P
        # With stride 1 the data gradient is itself a convolution: the top diff, padded by
        # (extent − 1 − pad), with the kernel flipped and its in/out channels swapped. One
        # im2col (a copy) + one matmul is much cheaper than matmul + col2im (k^D slice-adds).
        self._full = None
        extents = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        if all(s == 1 for s in self.stride) and all(p <= e - 1 for p, e in zip(self.pad, extents)):
            pad_full = tuple(e - 1 - p for p, e in zip(self.pad, extents))
            gf = WindowGeometry(self.out_sp, self.kernel, self.stride, pad_full, self.dilation)
            if gf.out_shape == tuple(self.in_sp) and self._full_is_cheaper():
                self._full = gf
        self._dycol = None
        self._dxt = None
        self._wflip = None

    def forward_impl(self, bottom, top):
        xp = self.xp
        N, C, O = self.num, self.channels, self.num_output
        P = self.geom.out_count
        w2 = self.blobs[0].data.reshape(O, -1)
        for i in range(len(bottom)):
            x = bottom[i].data.reshape((N, C) + self.in_sp)
            col = self._cols[i]
            im2col(x, col, self.geom, zero=False)
            self._gemm_groups(w2, col.reshape(self._CK, self._NP), self._y)
            y = self._y.reshape(O, N, P).swapaxes(0, 1)
            out = top[i].data.reshape(N, O, P)
            if self.bias_term:
                xp.add(y, self.blobs[1].data.reshape(1, O, 1), out=out)
            else:
                out[...] = y

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        N, C, O = self.num, self.channels, self.num_output
        P = self.geom.out_count
        need_w = self.param_propagate(0)
        w2 = self.blobs[0].data.reshape(O, -1)
        for i in range(len(top)):
            dy3 = top[i].diff.reshape(N, O, P)
            if not (need_w or propagate_down[i]):
                self._bias_diff_add(dy3)
                continue
            if self._dy is None:
                self._dy = xp.empty((O, self._NP), dtype=np.float32)
            self._dy.reshape(O, N, P)[...] = dy3.swapaxes(0, 1)
            if self.bias_term and self.param_propagate(1):
                self.blobs[1].diff[...] += self._dy.sum(axis=1)
            col2 = self._cols[i].reshape(self._CK, self._NP)
            if need_w:
                self._weight_diff_add(self._dy, col2, tb=True)
            if propagate_down[i]:
                if self._full is not None:
                    self._data_grad_as_conv(top[i].diff, bottom[i].diff)
                    continue
                if self._dcol is None:
                    self._dcol = xp.empty((self._CK, self._NP), dtype=np.float32)
                self._gemm_groups(w2, self._dy, self._dcol, ta=True)
                col2im(self._dcol.reshape(self._cols[i].shape),
                       bottom[i].diff.reshape((N, C) + self.in_sp), self.geom)

    def _full_is_cheaper(self):
        """Rough cost model (ns, measured on a 2-core NumPy/OpenBLAS machine) of the two ways
        to get the data gradient: matmul + col2im (slice-adds, slow per row) versus im2col of
        the top diff + a matmul that is larger by P_in/P_out (a 'valid' convolution shrinks)."""
        C, O, K, N = self.channels, self.num_output, self.kernel_count, self.num
        Pin, Pout = prod(self.in_sp), prod(self.out_sp)
        flop_ns = 1.0 / 50
        macs = 2.0 * C * K * (O // self.group)
        col2im_ns = C * K * N * Pout * (0.36 + 23.5 / self.out_sp[-1])
        im2col_ns = O * K * N * Pin * (0.13 + 7.5 / self.in_sp[-1])
        return macs * N * Pin * flop_ns + im2col_ns < macs * N * Pout * flop_ns + col2im_ns

    def _data_grad_as_conv(self, dy, dx):
        """dx = conv(dy, flipped Wᵀ) (stride 1): im2col of dy + one matmul per group."""
        xp = self.xp
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        K, D = self.kernel_count, self.num_spatial
        Pin = prod(self.in_sp)
        if self._dycol is None:
            self._dycol = xp.zeros((O,) + self.kernel + (N,) + tuple(self.in_sp),
                                   dtype=np.float32)
            self._dxt = xp.empty((C, N * Pin), dtype=np.float32)
            self._wflip = xp.empty((C, (O // G) * K), dtype=np.float32)
        Og, Cg = O // G, C // G
        w = self.blobs[0].data.reshape((G, Og, Cg) + self.kernel)
        flipped = w[(Ellipsis,) + (slice(None, None, -1),) * D].swapaxes(1, 2)
        self._wflip.reshape((G, Cg, Og) + self.kernel)[...] = flipped
        im2col(dy.reshape((N, O) + self.out_sp), self._dycol, self._full, zero=False)
        self._gemm_groups(self._wflip, self._dycol.reshape(O * K, N * Pin), self._dxt)
        dx.reshape(N, C, Pin)[...] = self._dxt.reshape(C, N, Pin).swapaxes(0, 1)


@register_layer("Deconvolution")
class DeconvolutionLayer(_ConvolutionBase):
    """Transposed convolution: forward = the convolution's data gradient (matmul + col2im) + bias.
    Weight shape (C_in, num_output/group, k…)."""
    reverse = True

    def _alloc(self, nbottom):
        xp = self.xp
        Cin, O, K, N = self.channels, self.num_output, self.kernel_count, self.num
        Pin = prod(self.in_sp)
        self._xt = [xp.empty((Cin, N * Pin), dtype=np.float32) for _ in range(nbottom)]
        self._col_shape = (O,) + self.kernel + (N,) + self.in_sp
        self._col = xp.empty(self._col_shape, dtype=np.float32)
        self._dcol = None
        self._dxt = None
        self._wtmp = None
        self._OK, self._NP = O * K, N * Pin

    def forward_impl(self, bottom, top):
        N, Cin, O = self.num, self.channels, self.num_output
        Pin = prod(self.in_sp)
        w2 = self.blobs[0].data.reshape(Cin, -1)
        col2 = self._col.reshape(self._OK, self._NP)
        for i in range(len(bottom)):
            xt = self._xt[i]
            xt.reshape(Cin, N, Pin)[...] = bottom[i].data.reshape(N, Cin, Pin).swapaxes(0, 1)
            self._gemm_groups(w2, xt, col2, ta=True)
            y = top[i].data.reshape((N, O) + self.out_sp)
            col2im(self._col, y, self.geom)
            if self.bias_term:
                y3 = top[i].data.reshape(N, O, -1)
                y3 += self.blobs[1].data.reshape(1, O, 1)

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        N, Cin, O = self.num, self.channels, self.num_output
        Pin = prod(self.in_sp)
        need_w = self.param_propagate(0)
        w2 = self.blobs[0].data.reshape(Cin, -1)
        for i in range(len(top)):
            self._bias_diff_add(top[i].diff.reshape(N, O, -1))
            if not (need_w or propagate_down[i]):
                continue
            if self._dcol is None:
                self._dcol = xp.zeros(self._col_shape, dtype=np.float32)
            im2col(top[i].diff.reshape((N, O) + self.out_sp), self._dcol, self.geom, zero=False)
            dcol2 = self._dcol.reshape(self._OK, self._NP)
            if need_w:
                self._weight_diff_add(self._xt[i], dcol2, tb=True)
            if propagate_down[i]:
                if self._dxt is None:
                    self._dxt = xp.empty((Cin, self._NP), dtype=np.float32)
                self._gemm_groups(w2, dcol2, self._dxt)
                bottom[i].diff.reshape(N, Cin, Pin)[...] = \
                    self._dxt.reshape(Cin, N, Pin).swapaxes(0, 1)


# -- Im2col ---------------------------------------------------------------------------------

@register_layer("Im2col")
class Im2colLayer(Layer):
    """Exposes im2col: top (…, C·K, out…) holds each image's column matrix."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        _read_conv_geometry(self, p, bottom[0])

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].shape)
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error("bottom num_axes may not change (set up with %d axes, got shape %s)",
                             self.axis + 1 + self.num_spatial, shape_str(shape))
        self.channels = shape[self.axis]
        self.num = prod(shape[:self.axis])
        self.in_sp = shape[self.axis + 1:]
        if getattr(self, "_geom_for", None) != self.in_sp:
            self.geom = WindowGeometry(self.in_sp, self.kernel, self.stride, self.pad,
                                       self.dilation)
            self._geom_for = self.in_sp
        if any(o <= 0 for o in self.geom.out_shape):
            raise self.error("the output would be empty: input spatial shape %s, kernel %s, "
                             "stride %s, pad %s", shape_str(self.in_sp), shape_str(self.kernel),
                             shape_str(self.stride), shape_str(self.pad))
        top[0].reshape(shape[:self.axis] + (self.channels * prod(self.kernel),)
                       + self.geom.out_shape)

    def _col_view(self, arr):
        D = self.num_spatial
        v = arr.reshape((self.num, self.channels) + self.kernel + self.geom.out_shape)
        return self.xp.moveaxis(v, 0, 1 + D)        # (C, *K, N, *out)

    def forward_impl(self, bottom, top):
        x = bottom[0].data.reshape((self.num, self.channels) + self.in_sp)
        im2col(x, self._col_view(top[0].data), self.geom, zero=True)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff.reshape((self.num, self.channels) + self.in_sp)
            col2im(self._col_view(top[0].diff), dx, self.geom)
