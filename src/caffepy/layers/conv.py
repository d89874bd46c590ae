"""Convolution layers: Convolution, Deconvolution and Im2col, with their shared base (Caffe's
BaseConvolutionLayer) and the reading of convolution_param's geometry.

Each class reproduces the Caffe 1.0 (master) layer of the same name, including its parameter
rules and its output-size formulas. A convolution pass runs chunk by chunk (a few images whose
im2col columns fit in cache, caffepy.kernels.im2col.ChunkColumns), one matmul per group and
chunk, with the batch's parts on all cores (caffepy.parallel_chunks).
"""
import logging

import numpy as np

from .. import parallel_chunks
from ..kernels.im2col import (ChunkColumns, WindowGeometry, col2im, conv_out_size,
                              deconv_out_size, im2col)
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


# Chunks: a chunk's im2col columns take about this many bytes (at least one image), so they
# are still in the core's L2 cache when the GEMM reads them, and scratch memory is bounded by
# the chunk, not the batch (Caffe's per-image column buffer, a few images at a time).
CHUNK_BYTES = 1 << 20
# On a GPU (one part, no threads) larger chunks keep the device busy; memory stays bounded.
GPU_CHUNK_BYTES = 64 << 20
# The weight gradient as dWᵀ = col·dyᵀ (C·K × O) rather than dW = dy·colᵀ: OpenBLAS is faster
# in that orientation for convolution shapes (measured on CIFAR-10 quick and LeNet).
DW_TRANSPOSED = True


class _Part:
    """One thread's scratch for one layer: flat buffers by name, made on first use."""
    __slots__ = ("bufs", "cols", "views")

    def __init__(self):
        self.bufs = {}
        self.cols = {}
        self.views = {}

    def nbytes(self):
        return (sum(b.nbytes for b in self.bufs.values())
                + sum(c.nbytes for c in self.cols.values()))


class _ConvolutionBase(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

    A pass runs chunk by chunk: the batch is split into one contiguous part per thread
    (caffepy.parallel_chunks) and each part into chunks of ``chunk`` images whose im2col
    columns fit in L2 (CHUNK_BYTES); per chunk, one im2col and one GEMM per group. Backward
    recomputes the chunk's columns for the weight gradient rather than keeping forward's.
    Each part accumulates its own weight and bias gradients; they are added to the param
    diffs in part order, so the result does not depend on thread timing.

    Scratch (per part, made where first needed, sized by the chunk — never by the batch):
      col:   one chunk's columns (C·K × chunk·P), shared by every im2col of the pass
      xpad:  the chunk with its zero padding (ChunkColumns), when pad > 0
      dyt:   the chunk's top diff as O × chunk·P;  wacc/wtmp, bacc/btmp: gradient sums
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
        self._plan_key = None
        self._parts = []

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
        if shape != self._key:
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
            self._key = shape
            self._geometry_changed()
        top_shape = shape[:self.axis] + (self.num_output,) + self.out_sp
        for t in top:
            t.reshape(top_shape)

    def _geometry_changed(self):
        pass

    def _check_out(self, in_sp, out_sp):
        if any(o <= 0 for o in out_sp):
            raise self.error("the output would be empty: input spatial shape %s, kernel %s, "
                             "stride %s, pad %s, dilation %s give output %s",
                             shape_str(in_sp), shape_str(self.kernel), shape_str(self.stride),
                             shape_str(self.pad), shape_str(self.dilation), shape_str(out_sp))

    # -- parts, chunks and their scratch ----------------------------------------------------

    def _plan(self):
        """The batch's parts (one per thread) and their chunks [(first image, count), …];
        remade, with fresh scratch, when the shape, the thread count or the device changes."""
        nparts = parallel_chunks.parts()
        xp = self.xp
        key = (self._key, nparts, xp)
        if key == self._plan_key:
            return
        ranges = parallel_chunks.split(self.num, nparts)
        target = CHUNK_BYTES if xp is np else GPU_CHUNK_BYTES
        per_image = 4 * self._col_values_per_image()
        n = max(1, min(max(b - a for a, b in ranges), target // per_image))
        self.chunk = n
        self._chunks = [[(i, min(n, b - i)) for i in range(a, b, n)] for a, b in ranges]
        self._parts = [_Part() for _ in ranges]
        self._plan_key = key

    def _buf(self, part, name, size, zeros=False):
        b = part.bufs.get(name)
        if b is None:
            xp = self.xp
            b = part.bufs[name] = (xp.zeros if zeros else xp.empty)(size, dtype=np.float32)
        return b

    def _cols(self, part, name, channels, geom, batch_first):
        """The part's ChunkColumns ``name`` (its columns in the part's shared col buffer)."""
        c = part.cols.get(name)
        if c is None:
            col = self._buf(part, "col", self.chunk * self._col_values_per_image())
            c = part.cols[name] = ChunkColumns(self.xp, channels, geom, self.chunk, col,
                                               batch_first)
        return c

    def scratch_bytes(self):
        """Bytes of this layer's scratch buffers (all parts)."""
        return sum(p.nbytes() for p in self._parts)

    def _grad_sums(self, part, idx, O, CKg):
        """(weight, bias) accumulators of a part for chunk ``idx``: the chunk's GEMM writes the
        sum itself for the first chunk, a temporary that is then added for the others."""
        G = self.group
        wshape = (G, CKg, O // G) if DW_TRANSPOSED else (G, O // G, CKg)
        wacc = self._buf(part, "wacc", O * CKg).reshape(wshape)
        bacc = self._buf(part, "bacc", self.num_output)
        if idx == 0:
            return wacc, bacc, wacc, bacc
        return (wacc, bacc, self._buf(part, "wtmp", O * CKg).reshape(wshape),
                self._buf(part, "btmp", self.num_output))

    def _add_param_diffs(self, need_w, need_b):
        """Add each part's weight and bias sums to the param diffs, in part order."""
        G = self.group
        if need_w:
            wd = self.blobs[0].diff
            rows = wd.shape[0]
            wd3 = wd.reshape(G, rows // G, -1)
            for part in self._parts:
                acc = part.bufs.get("wacc")
                if acc is None:
                    continue
                acc = acc.reshape((G, -1, rows // G) if DW_TRANSPOSED else (G, rows // G, -1))
                wd3 += acc.transpose(0, 2, 1) if DW_TRANSPOSED else acc
        if need_b:
            bd = self.blobs[1].diff
            for part in self._parts:
                acc = part.bufs.get("bacc")
                if acc is not None:
                    bd += acc

    def _weight_grad(self, cols, dyt, out):
        """out[g] = cols[g]·dyt[g]ᵀ (or dyt[g]·cols[g]ᵀ) per group: cols (G·R, M), dyt (G·S, M)."""
        xp = self.xp
        G = self.group
        r, s = cols.shape[0] // G, dyt.shape[0] // G
        for g in range(G):
            c = cols[g * r:(g + 1) * r]
            d = dyt[g * s:(g + 1) * s]
            if DW_TRANSPOSED:
                xp.matmul(c, d.T, out=out[g])
            else:
                xp.matmul(d, c.T, out=out[g])

    def _gemm_groups(self, a, b, out, ta=False):
        """out[g] = op(a[g]) @ b[g] per group g, splitting the rows of a, the second-to-last
        axis of b and of out (b and out may be stacks of matrices, one per image)."""
        xp = self.xp
        G = self.group
        if G == 1:
            xp.matmul(a.T if ta else a, b, out=out)
            return
        ra, rb, ro = a.shape[0] // G, b.shape[-2] // G, out.shape[-2] // G
        for g in range(G):
            ag = a[g * ra:(g + 1) * ra]
            xp.matmul(ag.T if ta else ag, b[..., g * rb:(g + 1) * rb, :],
                      out=out[..., g * ro:(g + 1) * ro, :])

    def _transposed(self, part, name, a):
        """a (m, R, P) as R × m·P: a view for one image, else a copy into the part's scratch."""
        m, R, P = a.shape
        if m == 1:
            return a.reshape(R, P)
        t = self._buf(part, name, R * self.chunk * P)[:R * m * P].reshape(R, m, P)
        t[...] = a.swapaxes(0, 1)
        return t.reshape(R, m * P)


@register_layer("Convolution")
class ConvolutionLayer(_ConvolutionBase):
    """N-D grouped, dilated cross-correlation, chunk by chunk: im2col + one matmul per group."""

    def _geometry_changed(self):
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
        self._wflip = None

    def _col_values_per_image(self):
        n = self.channels * self.kernel_count * self.geom.out_count
        if self._full is not None:
            n = max(n, self.num_output * self.kernel_count * prod(self.in_sp))
        return n

    def forward_impl(self, bottom, top):
        self._plan()
        w2 = self.blobs[0].data.reshape(self.num_output, -1)
        b3 = self.blobs[1].data.reshape(1, -1, 1) if self.bias_term else None
        for i in range(len(bottom)):
            x = bottom[i].data.reshape((self.num, self.channels) + self.in_sp)
            y3 = top[i].data.reshape(self.num, self.num_output, -1)

            def part_forward(t, x=x, y3=y3):
                part = self._parts[t]
                cols = self._cols(part, "x", self.channels, self.geom, batch_first=True)
                CK = self.channels * self.kernel_count
                for a, m in self._chunks[t]:
                    col = cols.fill(x[a:a + m]).reshape(m, CK, -1)
                    y = y3[a:a + m]
                    self._gemm_groups(w2, col, y)
                    if b3 is not None:
                        y += b3

            parallel_chunks.run(part_forward, len(self._parts))

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        N, C, O, G, K = self.num, self.channels, self.num_output, self.group, self.kernel_count
        need_w = self.param_propagate(0)
        need_b = self.bias_term and self.param_propagate(1)
        self._plan()
        w2 = self.blobs[0].data.reshape(O, -1)
        wflip = self._flipped_weights() if self._full is not None and any(propagate_down) else None
        CK, CKg = C * K, (C // G) * K
        for i in range(len(top)):
            need_x = propagate_down[i]
            if not (need_w or need_b or need_x):
                continue
            x = bottom[i].data.reshape((N, C) + self.in_sp)
            dy3 = top[i].diff.reshape(N, O, -1)
            dx = bottom[i].diff.reshape((N, C) + self.in_sp)

            def part_backward(t, x=x, dy3=dy3, dx=dx, need_x=need_x):
                part = self._parts[t]
                xcols = self._cols(part, "xb", C, self.geom, batch_first=False) if need_w else None
                for idx, (a, m) in enumerate(self._chunks[t]):
                    wacc, bacc, wout, bout = self._grad_sums(part, idx, O, CKg)
                    dy = dy3[a:a + m]
                    dyt = self._transposed(part, "dyt", dy) if (need_w or not self._full) \
                        else None
                    if need_b:
                        if dyt is not None:
                            xp.sum(dyt, axis=1, out=bout)
                        else:
                            xp.sum(dy, axis=(0, 2), out=bout)
                        if idx:
                            bacc += bout
                    if need_w:
                        col = xcols.fill(x[a:a + m]).reshape(CK, -1)
                        self._weight_grad(col, dyt, wout)
                        if idx:
                            wacc += wout
                    if not need_x:
                        continue
                    if self._full is not None:
                        dycols = self._cols(part, "dy", O, self._full, batch_first=True)
                        dcol = dycols.fill(dy.reshape((m, O) + self.out_sp))
                        self._gemm_groups(wflip, dcol.reshape(m, O * K, -1),
                                          dx[a:a + m].reshape(m, C, -1))
                    else:
                        col = self._buf(part, "col", self.chunk * self._col_values_per_image())
                        dcol = col[:CK * m * self.geom.out_count].reshape(CK, -1)
                        self._gemm_groups(w2, dyt, dcol, ta=True)
                        col2im(dcol.reshape((C,) + self.kernel + (m,) + self.out_sp),
                               dx[a:a + m], self.geom)

            parallel_chunks.run(part_backward, len(self._parts))
            self._add_param_diffs(need_w, need_b)

    def _flipped_weights(self):
        """The data gradient's kernel: W with its spatial axes reversed and its in/out channels
        swapped, per group, as (C, (O/G)·K)."""
        xp = self.xp
        C, O, G, D = self.channels, self.num_output, self.group, self.num_spatial
        Og, Cg = O // G, C // G
        if self._wflip is None or not isinstance(self._wflip, xp.ndarray):
            self._wflip = xp.empty((C, Og * self.kernel_count), dtype=np.float32)
        w = self.blobs[0].data.reshape((G, Og, Cg) + self.kernel)
        flipped = w[(Ellipsis,) + (slice(None, None, -1),) * D].swapaxes(1, 2)
        self._wflip.reshape((G, Cg, Og) + self.kernel)[...] = flipped
        return self._wflip

    def scratch_bytes(self):
        return super().scratch_bytes() + (self._wflip.nbytes if self._wflip is not None else 0)

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


@register_layer("Deconvolution")
class DeconvolutionLayer(_ConvolutionBase):
    """Transposed convolution: forward = the convolution's data gradient (matmul + col2im) + bias,
    chunk by chunk. Weight shape (C_in, num_output/group, k…)."""
    reverse = True

    def _col_values_per_image(self):
        return self.num_output * self.kernel_count * prod(self.in_sp)

    def forward_impl(self, bottom, top):
        self._plan()
        N, Cin, O = self.num, self.channels, self.num_output
        OK = O * self.kernel_count
        w2 = self.blobs[0].data.reshape(Cin, -1)
        b3 = self.blobs[1].data.reshape(1, O, 1) if self.bias_term else None
        for i in range(len(bottom)):
            x3 = bottom[i].data.reshape(N, Cin, -1)
            y = top[i].data.reshape((N, O) + self.out_sp)

            def part_forward(t, x3=x3, y=y):
                part = self._parts[t]
                col = self._buf(part, "col", self.chunk * self._col_values_per_image())
                for a, m in self._chunks[t]:
                    xt = self._transposed(part, "xt", x3[a:a + m])
                    dcol = col[:OK * xt.shape[1]].reshape(OK, -1)
                    self._gemm_groups(w2, xt, dcol, ta=True)
                    col2im(dcol.reshape((O,) + self.kernel + (m,) + self.in_sp), y[a:a + m],
                           self.geom)
                    if b3 is not None:
                        y3 = y[a:a + m].reshape(m, O, -1)
                        y3 += b3

            parallel_chunks.run(part_forward, len(self._parts))

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        N, Cin, O, G, K = self.num, self.channels, self.num_output, self.group, self.kernel_count
        OK, OKg = O * K, (O // G) * K
        need_w = self.param_propagate(0)
        need_b = self.bias_term and self.param_propagate(1)
        self._plan()
        w2 = self.blobs[0].data.reshape(Cin, -1)
        for i in range(len(top)):
            need_x = propagate_down[i]
            if not (need_w or need_b or need_x):
                continue
            x3 = bottom[i].data.reshape(N, Cin, -1)
            dy = top[i].diff.reshape((N, O) + self.out_sp)
            dx3 = bottom[i].diff.reshape(N, Cin, -1)

            def part_backward(t, x3=x3, dy=dy, dx3=dx3, need_x=need_x):
                part = self._parts[t]
                cols = self._cols(part, "dy", O, self.geom, batch_first=False)
                for idx, (a, m) in enumerate(self._chunks[t]):
                    # the weight sums are (Cin, OKg) per group here: the roles of x and dy swap
                    wacc, bacc, wout, bout = self._grad_sums(part, idx, Cin, OKg)
                    if need_b:
                        xp.sum(dy[a:a + m].reshape(m, O, -1), axis=(0, 2), out=bout)
                        if idx:
                            bacc += bout
                    if not (need_w or need_x):
                        continue
                    dcol = cols.fill(dy[a:a + m]).reshape(OK, -1)
                    if need_w:
                        xt = self._transposed(part, "xt", x3[a:a + m])
                        self._weight_grad(dcol, xt, wout)
                        if idx:
                            wacc += wout
                    if need_x:
                        if m == 1:
                            self._gemm_groups(w2, dcol, dx3[a].reshape(Cin, -1))
                        else:
                            P = dx3.shape[2]
                            dxt = self._buf(part, "dxt", Cin * self.chunk * P)
                            dxt = dxt[:Cin * m * P].reshape(Cin, m * P)
                            self._gemm_groups(w2, dcol, dxt)
                            dx3[a:a + m] = dxt.reshape(Cin, m, P).swapaxes(0, 1)

            parallel_chunks.run(part_backward, len(self._parts))
            self._add_param_diffs(need_w, need_b)


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
