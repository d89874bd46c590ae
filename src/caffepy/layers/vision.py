"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop.

Each class reproduces the Caffe 1.0 (master) layer of the same name, including its parameter
rules and its output-size formulas. The hot loops live in caffepy.kernels (im2col/col2im,
pooling); convolutions are one im2col over the whole batch plus one large matmul per pass.
"""
import numpy as np

from .. import backend
from ..kernels.im2col import (WindowGeometry, col2im, conv_out_size, deconv_out_size,
                              im2col)
from ..kernels.pooling import Pool2D, pooled_size
from ..layer import Layer, register_layer
from ..proto import caffe_pb2


# -- helpers ------------------------------------------------------------------------------

def _prod(dims):
    c = 1
    for d in dims:
        c *= int(d)
    return c


def _shape_str(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"










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

    def hw_form(name, h, w):
        if num_spatial != 2:
            raise layer.error("%s_h & %s_w can only be used for 2D convolution "
                              "(this input has %d spatial axes)", name, name, num_spatial)
        if len(getattr(p, "kernel_size" if name == "kernel" else name)):
            raise layer.error("Either %s or %s_h/w should be specified; not both.",
                              "kernel_size" if name == "kernel" else name, name)
        return (int(h), int(w))

    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = hw_form("kernel", p.kernel_h, p.kernel_w)
    else:
        kernel = per_axis("kernel_size", p.kernel_size, None)
    if any(k <= 0 for k in kernel):
        raise layer.error("Filter dimensions must be nonzero (kernel %s).", _shape_str(kernel))
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = hw_form("stride", p.stride_h, p.stride_w)
    else:
        stride = per_axis("stride", p.stride, 1)
    if any(s <= 0 for s in stride):
        raise layer.error("Stride dimensions must be nonzero (stride %s).", _shape_str(stride))
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = hw_form("pad", p.pad_h, p.pad_w)
    else:
        pad = per_axis("pad", p.pad, 0)
    dilation = per_axis("dilation", p.dilation, 1)
    if any(d <= 0 for d in dilation):
        raise layer.error("Dilation dimensions must be nonzero (dilation %s).",
                          _shape_str(dilation))
    return kernel, stride, pad, dilation


# -- Convolution / Deconvolution ------------------------------------------------------------

def _read_conv_geometry(layer, p, bottom):
    """convolution_param's channel axis and per-spatial-axis kernel/stride/pad/dilation
    (shared by Convolution, Deconvolution and Im2col)."""
    layer.axis = layer.canonical_axis(bottom, p.axis)
    layer.num_spatial = bottom.num_axes - layer.axis - 1
    if layer.num_spatial < 1:
        raise layer.error("needs at least one spatial axis after the channel axis %d "
                          "(bottom shape %s)", layer.axis, _shape_str(bottom.shape))
    layer.kernel, layer.stride, layer.pad, layer.dilation = _spatial_params(
        layer, p, layer.num_spatial)


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
        nblobs = 2 if self.bias_term else 1
        if len(self.blobs) == 0:
            w = self.blobs.add_blob(*wshape)
            self.fill_param(p.weight_filler, w, "weight_filler")
            if self.bias_term:
                b = self.blobs.add_blob(self.num_output)
                self.fill_param(p.bias_filler, b, "bias_filler")
        else:
            if len(self.blobs) != nblobs:
                raise self.error("Incorrect number of weight blobs: expected %d (weights%s), "
                                 "got %d", nblobs, " and bias" if self.bias_term else "",
                                 len(self.blobs))
            self.check_param_shape(0, wshape, "weight")
            if self.bias_term:
                self.check_param_shape(1, (self.num_output,), "bias")
        self.kernel_count = _prod(self.kernel)
        self._key = None

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].shape)
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error("bottom num_axes may not change (set up with %d axes, got shape %s)",
                             self.axis + 1 + self.num_spatial, _shape_str(shape))
        if shape[self.axis] != self.channels:
            raise self.error("Input size incompatible with convolution kernel: the layer was set "
                             "up for %d input channels, bottom has shape %s",
                             self.channels, _shape_str(shape))
        for i in range(1, len(bottom)):
            if tuple(bottom[i].shape) != shape:
                raise self.error("shape mismatch - bottom[0]: %s vs. bottom[%d]: %s "
                                 "(all bottoms of a convolution must have the same shape)",
                                 _shape_str(shape), i, _shape_str(bottom[i].shape))
        key = (shape, len(bottom))
        if key != self._key:
            self.num = _prod(shape[:self.axis])
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
                             _shape_str(in_sp), _shape_str(self.kernel), _shape_str(self.stride),
                             _shape_str(self.pad), _shape_str(self.dilation), _shape_str(out_sp))

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
        Pin, Pout = _prod(self.in_sp), _prod(self.out_sp)
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
        Pin = _prod(self.in_sp)
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
        Pin = _prod(self.in_sp)
        self._xt = [xp.empty((Cin, N * Pin), dtype=np.float32) for _ in range(nbottom)]
        self._col_shape = (O,) + self.kernel + (N,) + self.in_sp
        self._col = xp.empty(self._col_shape, dtype=np.float32)
        self._dcol = None
        self._dxt = None
        self._wtmp = None
        self._OK, self._NP = O * K, N * Pin

    def forward_impl(self, bottom, top):
        N, Cin, O = self.num, self.channels, self.num_output
        Pin = _prod(self.in_sp)
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
        Pin = _prod(self.in_sp)
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
                             self.axis + 1 + self.num_spatial, _shape_str(shape))
        self.channels = shape[self.axis]
        self.num = _prod(shape[:self.axis])
        self.in_sp = shape[self.axis + 1:]
        if getattr(self, "_geom_for", None) != self.in_sp:
            self.geom = WindowGeometry(self.in_sp, self.kernel, self.stride, self.pad,
                                       self.dilation)
            self._geom_for = self.in_sp
        if any(o <= 0 for o in self.geom.out_shape):
            raise self.error("the output would be empty: input spatial shape %s, kernel %s, "
                             "stride %s, pad %s", _shape_str(self.in_sp), _shape_str(self.kernel),
                             _shape_str(self.stride), _shape_str(self.pad))
        top[0].reshape(shape[:self.axis] + (self.channels * _prod(self.kernel),)
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


# -- Pooling --------------------------------------------------------------------------------

_MAX = caffe_pb2.PoolingParameter.MAX
_AVE = caffe_pb2.PoolingParameter.AVE
_STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
_POOL_NAMES = {_MAX: "MAX", _AVE: "AVE", _STOCHASTIC: "STOCHASTIC"}


def _stochastic_guard(layer):
    if backend.mode() == backend.CPU and not getattr(layer, "_allow_cpu_stochastic", False):
        raise layer.error("STOCHASTIC pooling is implemented only on the GPU in Caffe "
                          "(its CPU forward is NOT_IMPLEMENTED); use MAX or AVE, or run in "
                          "GPU mode")


class _PoolRunner:
    """Runs one Pool2D kernel for a pooling method over (N·C, H, W) planes."""

    @staticmethod
    def forward(layer, kern, method, x, out, mask=None):
        if method == _MAX:
            kern.forward_max(x, out, mask)
        elif method == _AVE:
            kern.forward_ave(x, out)
        else:
            _stochastic_guard(layer)
            train = layer.phase == caffe_pb2.TRAIN
            u = None
            if train:
                u = layer.xp.asarray(backend.rng().random(out.shape, dtype=np.float32))
            kern.forward_stochastic(x, out, train, u)

    @staticmethod
    def backward(kern, method, dy, dx):
        if method == _MAX:
            kern.backward_max(dy, dx)
        elif method == _AVE:
            kern.backward_ave(dy, dx)
        else:
            kern.backward_stochastic(dy, dx)


@register_layer("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE (/ STOCHASTIC on GPU) 2-D pooling with Caffe's output size, padding and
    first-maximum rules. A second top (MAX only) receives the argmax mask h·W + w as float."""
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = p.pool
        if len(top) > 1 and self.method != _MAX:
            raise self.error("only MAX pooling can have a second (mask) top; %s pooling takes "
                             "exactly 1 top, got %d", _POOL_NAMES.get(self.method), len(top))
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("With Global_pooling: true Filter size cannot specified")
        else:
            if not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("needs a window size: kernel_size, or kernel_h and kernel_w "
                                 "(or global_pooling: true)")
            if p.HasField("kernel_size") and (p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("Filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not p.HasField("kernel_size") and not (p.HasField("kernel_h")
                                                      and p.HasField("kernel_w")):
                raise self.error("For non-square filters both kernel_h and kernel_w are required.")
        if not ((not p.HasField("pad") and p.HasField("pad_h") and p.HasField("pad_w"))
                or (not p.HasField("pad_h") and not p.HasField("pad_w"))):
            raise self.error("pad is pad OR pad_h and pad_w are required.")
        if not ((not p.HasField("stride") and p.HasField("stride_h") and p.HasField("stride_w"))
                or (not p.HasField("stride_h") and not p.HasField("stride_w"))):
            raise self.error("Stride is stride OR stride_h and stride_w are required.")
        if self.global_pooling:
            self.kernel_h, self.kernel_w = self._plane(bottom[0])
        elif p.HasField("kernel_size"):
            self.kernel_h = self.kernel_w = int(p.kernel_size)
        else:
            self.kernel_h, self.kernel_w = int(p.kernel_h), int(p.kernel_w)
        if self.kernel_h <= 0 or self.kernel_w <= 0:
            raise self.error("Filter dimensions cannot be zero.")
        if p.HasField("pad_h"):
            self.pad_h, self.pad_w = int(p.pad_h), int(p.pad_w)
        else:
            self.pad_h = self.pad_w = int(p.pad)
        if p.HasField("stride_h"):
            self.stride_h, self.stride_w = int(p.stride_h), int(p.stride_w)
        else:
            self.stride_h = self.stride_w = int(p.stride)
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise self.error("Stride dimensions cannot be zero.")
        if self.global_pooling and not (self.pad_h == 0 and self.pad_w == 0
                                        and self.stride_h == 1 and self.stride_w == 1):
            raise self.error("With Global_pooling: true; only pad = 0 and stride = 1")
        if self.pad_h or self.pad_w:
            if self.method not in (_MAX, _AVE):
                raise self.error("Padding implemented only for average and max pooling.")
            if self.pad_h >= self.kernel_h or self.pad_w >= self.kernel_w:
                raise self.error("pad (%d, %d) must be smaller than the kernel (%d, %d)",
                                 self.pad_h, self.pad_w, self.kernel_h, self.kernel_w)
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._key = None

    def _plane(self, blob):
        if blob.num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, "
                             "width); bottom has shape %s", _shape_str(blob.shape))
        return int(blob.shape[2]), int(blob.shape[3])

    def reshape(self, bottom, top):
        H, W = self._plane(bottom[0])
        N, C = int(bottom[0].shape[0]), int(bottom[0].shape[1])
        if self.global_pooling:
            self.kernel_h, self.kernel_w = H, W
        any_pad = bool(self.pad_h or self.pad_w)
        OH = pooled_size(H, self.kernel_h, self.stride_h, self.pad_h, self.ceil_mode, any_pad)
        OW = pooled_size(W, self.kernel_w, self.stride_w, self.pad_w, self.ceil_mode, any_pad)
        if OH <= 0 or OW <= 0:
            raise self.error("the pooled output would be empty: a %dx%d input with kernel "
                             "%dx%d, stride %dx%d and pad %dx%d", H, W, self.kernel_h,
                             self.kernel_w, self.stride_h, self.stride_w, self.pad_h, self.pad_w)
        for t in top:
            t.reshape(N, C, OH, OW)
        key = (N, C, H, W, self.kernel_h, self.kernel_w, OH, OW)
        if key != self._key:
            self._key = key
            self.kern = Pool2D(self.xp, N * C, H, W, self.kernel_h, self.kernel_w,
                               self.stride_h, self.stride_w, self.pad_h, self.pad_w, OH, OW)
        self._shape = (N * C, H, W, OH, OW)

    def forward_impl(self, bottom, top):
        nc, H, W, OH, OW = self._shape
        x = bottom[0].data.reshape(nc, H, W)
        mask = top[1].data.reshape(nc, OH, OW) if len(top) > 1 else None
        _PoolRunner.forward(self, self.kern, self.method, x, top[0].data.reshape(nc, OH, OW),
                            mask)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        nc, H, W, OH, OW = self._shape
        _PoolRunner.backward(self.kern, self.method, top[0].diff.reshape(nc, OH, OW),
                             bottom[0].diff.reshape(nc, H, W))


# -- SPP ------------------------------------------------------------------------------------

@register_layer("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l × 2^l bins (kernel ceil(H/bins), pad
    (kernel·bins − H + 1)/2, stride = kernel); the levels are flattened and concatenated
    (a single level gives the N×C×1×1 pooled blob itself, as in Caffe)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error("pyramid_height must be at least 1 (set spp_param "
                             "{ pyramid_height: ... })")
        self.method = p.pool
        self._key = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, "
                             "width); bottom has shape %s", _shape_str(b.shape))
        N, C, H, W = (int(d) for d in b.shape)
        key = (N, C, H, W)
        if key != self._key:
            self._key = key
            self.levels = []
            off = 0
            for level in range(self.height):
                bins = 2 ** level
                kh = -(-H // bins)
                kw = -(-W // bins)
                ph = (kh * bins - H + 1) // 2
                pw = (kw * bins - W + 1) // 2
                if ph >= kh or pw >= kw:
                    raise self.error("pyramid level %d needs pad (%d, %d) smaller than its kernel "
                                     "(%d, %d) for a %dx%d input: the input is too small for "
                                     "pyramid_height %d", level, ph, pw, kh, kw, H, W, self.height)
                OH = pooled_size(H, kh, kh, ph, True, bool(ph or pw))
                OW = pooled_size(W, kw, kw, pw, True, bool(ph or pw))
                kern = Pool2D(self.xp, N * C, H, W, kh, kw, kh, kw, ph, pw, OH, OW)
                size = C * OH * OW
                self.levels.append((kern, OH, OW, off, size))
                off += size
            self.total = off
            self._out = [self.xp.empty((N * C, OH, OW), dtype=np.float32)
                         for (_, OH, OW, _, _) in self.levels]
            self._dx = None
        if self.height == 1:
            _, OH, OW, _, _ = self.levels[0]
            top[0].reshape(N, C, OH, OW)
        else:
            top[0].reshape(N, self.total)

    def forward_impl(self, bottom, top):
        N, C, H, W = self._key
        x = bottom[0].data.reshape(N * C, H, W)
        y = top[0].data.reshape(N, -1)
        for (kern, OH, OW, off, size), out in zip(self.levels, self._out):
            _PoolRunner.forward(self, kern, self.method, x, out)
            y[:, off:off + size] = out.reshape(N, size)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        N, C, H, W = self._key
        dy = top[0].diff.reshape(N, -1)
        dx = bottom[0].diff.reshape(N * C, H, W)
        for li, (kern, OH, OW, off, size) in enumerate(self.levels):
            g = xp.ascontiguousarray(dy[:, off:off + size]).reshape(N * C, OH, OW)
            if li == 0:
                _PoolRunner.backward(kern, self.method, g, dx)
            else:
                if self._dx is None:
                    self._dx = xp.empty((N * C, H, W), dtype=np.float32)
                _PoolRunner.backward(kern, self.method, g, self._dx)
                dx += self._dx       # the internal Split layer sums the levels in order


# -- LRN ------------------------------------------------------------------------------------

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
        if b.num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, "
                             "width); bottom has shape %s", _shape_str(b.shape))
        shape = tuple(int(d) for d in b.shape)
        if top[0] is not b:
            top[0].reshape(shape)
        if shape != self._key:
            self._key = shape
            xp = self.xp
            N, C, H, W = shape
            n = self.size
            if self.across:
                self._pad = xp.zeros((N, C + n - 1, H, W), dtype=np.float32)
            else:
                self._pad = xp.zeros((N, C, H + n - 1, W + n - 1), dtype=np.float32)
                self._row = xp.empty((N, C, H + n - 1, W), dtype=np.float32)
            self._scale = xp.empty(shape, dtype=np.float32)
            self._spow = xp.empty(shape, dtype=np.float32)
            self._tmp = xp.empty(shape, dtype=np.float32)
            self._xsave = None

    def _window_sum(self, src, out):
        """Σ of src over each element's LRN window (channels or n×n plane window)."""
        xp = self.xp
        if self.across:
            C = src.shape[1]
            pad = self._pad
            pad[:, self.pre_pad:self.pre_pad + C] = src
            out[...] = pad[:, 0:C]
            for i in range(1, self.size):
                out += pad[:, i:i + C]
            return out
        return _box_sum(xp, src, self.size, self._pad, self._row, out)

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        in_place = top[0] is bottom[0]
        if in_place:
            if self._xsave is None:
                self._xsave = xp.empty(x.shape, dtype=np.float32)
            self._xsave[...] = x
        scale = self._scale
        xp.multiply(x, x, out=self._tmp)
        self._window_sum(self._tmp, scale)
        if self.across:
            scale *= np.float32(self.alpha / self.size)
            scale += np.float32(self.k)
        else:
            # Caffe's chain: AVE pool (÷ n²) -> Power(scale α, shift 1, power −β)
            scale *= np.float32(1.0 / (self.size * self.size))
            scale *= np.float32(self.alpha)
            scale += np.float32(1.0)
        xp.power(scale, np.float32(-self.beta), out=self._spow)
        xp.multiply(x, self._spow, out=top[0].data)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy, y = top[0].diff, top[0].data
        x = self._xsave if top[0] is bottom[0] else bottom[0].data
        n2 = self.size if self.across else self.size * self.size
        ratio = self._tmp
        xp.multiply(dy, y, out=ratio)
        ratio /= self._scale
        acc = self._window_sum(ratio, ratio)     # the sum reads ratio before overwriting it
        acc *= x
        acc *= np.float32(2.0 * self.alpha * self.beta / n2)
        xp.multiply(dy, self._spow, out=bottom[0].diff)
        bottom[0].diff[...] -= acc


# -- Crop -----------------------------------------------------------------------------------

@register_layer("Crop")
class CropLayer(Layer):
    """Crops bottom[0] to bottom[1]'s shape on axes >= axis, at the given offsets.
    bottom[1] only provides the shape: no gradient goes to it."""
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.crop_param
        self.start_axis = self.canonical_axis(bottom[0], p.axis)
        n_off = len(p.offset)
        if n_off > 1 and self.start_axis + n_off != bottom[0].num_axes:
            raise self.error("number of offset values specified must be equal to the number of "
                             "dimensions following axis (axis %d, %d offsets, bottom has %d axes)",
                             self.start_axis, n_off, bottom[0].num_axes)

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        s0, s1 = tuple(bottom[0].shape), tuple(bottom[1].shape)
        if len(s0) != len(s1):
            raise self.error("bottom[0] %s and bottom[1] %s must have the same number of axes",
                             _shape_str(s0), _shape_str(s1))
        new_shape, slices = [], []
        for i in range(len(s0)):
            if i < self.start_axis:
                new_shape.append(s0[i])
                slices.append(slice(None))
                continue
            off = 0
            if len(p.offset) == 1:
                off = int(p.offset[0])
            elif len(p.offset) > 1:
                off = int(p.offset[i - self.start_axis])
            if s0[i] - off < s1[i]:
                raise self.error("invalid crop parameters in dimension: %d (bottom[0] size %d, "
                                 "offset %d, bottom[1] size %d)", i, s0[i], off, s1[i])
            new_shape.append(s1[i])
            slices.append(slice(off, off + s1[i]))
        top[0].reshape(tuple(new_shape))
        self._slices = tuple(slices)

    def forward_impl(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._slices]

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self._slices] = top[0].diff
