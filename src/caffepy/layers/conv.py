"""Convolution layers: Convolution, Deconvolution and Im2col, with their shared base (Caffe's
BaseConvolutionLayer) and the reading of convolution_param's geometry.

Each class reproduces the Caffe 1.0 (master) layer of the same name, including its parameter
rules and its output-size formulas. A convolution pass runs chunk by chunk, as Caffe's does
image by image: im2col of a few images whose columns fit in cache
(caffepy.kernels.im2col.ChunkColumns) and one matmul per group and chunk, channels-first or
channels-last, whichever copies longer rows; blocks of chunks run on all cores
(caffepy.parallel_chunks).
"""
import logging

import numpy as np

from .. import backend, parallel_chunks
from ..kernels import compiled
from ..kernels.im2col import (IMAGES, LAST, ROWS, ChunkColumns, WindowGeometry, col2im,
                              col2im_last, conv_out_size, deconv_out_size, im2col)
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
# are still in the core's cache when the GEMM reads them, and scratch memory is bounded by
# the chunk, not the batch (Caffe's per-image column buffer, a few images at a time). 2 MB
# measured 2-3% faster than 1 MB on CIFAR-10 quick (AMD EPYC, 1 MB L2 a core; fewer, larger
# products) and the same on LeNet.
CHUNK_BYTES = 2 << 20
# On a GPU (one block, no threads) larger chunks keep the device busy; memory stays bounded.
GPU_CHUNK_BYTES = 64 << 20
# The batch is split into blocks of chunks that threads take in turn (parallel_chunks): a power
# of two, at most max(8, 2 × cores); each keeps its own weight-gradient sum, so their bytes
# together are held to about BLOCK_SUM_BYTES (but one block per core is always allowed); and
# each block has at least BLOCK_MIN_BYTES of columns (one block for a small layer: two threads
# running short NumPy calls mostly wait for each other's GIL; LeNet's conv1 at batch 64 is two
# blocks, its conv2 four — measured faster on 2 cores than one and two).
BLOCK_SUM_BYTES = 4 << 20
BLOCK_MIN_BYTES = 1 << 20
# A channels-first weight gradient as dWᵀ = col·dyᵀ (C·K × O) rather than dW = dy·colᵀ
# (O × C·K): OpenBLAS is faster that way round on these shapes (measured, one thread). A
# channels-last one is always dW = dy·col (O × K·C), from the top diff copied as O × m·P (runs
# of P values, where m·P × O moves single values), which also serves the data gradient's
# columns dyᵀ·W: against dWᵀ = colᵀ·dy from an m·P × O copy, as fast or up to 8 % faster per
# chunk on 23 of 26 layer shapes of LeNet, CIFAR-10 quick, CaffeNet and GoogLeNet, 2-5 % slower
# on three (LeNet's conv2: 0.53 → 0.49 ms a chunk of 16 images), and the sum's permuted add to
# the diff is quicker too.
DW_TRANSPOSED = True
# A channels-first weight gradient with at most this many values (C·K × O, one group) is summed
# image by image (a stacked product of each image's columns with its top diff, then a sum over
# the chunk's images, as Caffe accumulates one image at a time) instead of as one product over
# the chunk: such a product has a tiny result and a very long inner dimension, which OpenBLAS
# runs at a third of its speed (LeNet's conv1: 131 → 63 µs per chunk of 16 images), and the top
# diff then needs no transposed copy.
DW_PER_IMAGE_VALUES = 4096
# A channels-first convolution with one group and a bias (on the CPU) puts its bias into its
# product: each image's columns get a row of ones (ChunkColumns' ones_row) and the weights a
# column holding the bias, so the forward needs no pass adding the bias, and the image-by-image
# weight gradient's product gives the bias gradient as its last row, no pass over the top diff
# (Caffe's gemms with its bias multiplier, folded into one). CIFAR-10 quick's conv1: forward
# 3.39 → 2.86 ms, weight and bias gradients 4.00 → 3.61 ms an iteration, one thread.
BIAS_IN_PRODUCT = True
# A 1 × 1 convolution with stride 1, no padding and one group (GoogLeNet's, ResNet's and NIN's
# many 1 × 1 layers, FCN's score layers) multiplies the weights with the bottom directly,
# image by image: y = W·x, dWᵀ = Σ x·dyᵀ, dx = Wᵀ·dy. Against im2col into channels-last
# columns and transposes back, measured on one thread on six layer shapes at 1.7–3.3 times
# the speed forward and 1.1–3.5 times backward (e.g. 256 → 128 channels at 28 × 28, batch 8:
# 3.53 → 2.13 ms forward, 7.19 → 4.37 backward).
POINTWISE_DIRECT = True


class _Part:
    """One worker thread's scratch for one layer: flat buffers and ChunkColumns by name, made on
    first use."""
    __slots__ = ("bufs", "cols")

    def __init__(self):
        self.bufs = {}
        self.cols = {}

    def nbytes(self):
        return (sum(b.nbytes for b in self.bufs.values())
                + sum(c.nbytes for c in self.cols.values()))


class _ConvolutionBase(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

    A pass runs chunk by chunk: the batch is split into contiguous blocks that the threads
    take in turn (caffepy.parallel_chunks.run_blocks), and each block into chunks of at most
    ``chunk`` images whose im2col columns fit in L2 (CHUNK_BYTES); per chunk, one im2col and
    one GEMM per group. Backward recomputes the chunk's columns for the weight gradient
    rather than keeping forward's. Each block sums its own weight and bias gradients; these
    are summed in block order, then added to the param diffs. Blocks and chunks depend on the
    batch and the layer only, so the results are the same bits whatever the thread count and
    timing.

    Scratch, sized by the chunk — never by the batch (per worker thread, made where first
    needed):
      col:   one chunk's columns (C·K × chunk·P), shared by every im2col of the pass
      (ChunkColumns) the chunk with its zero padding, when padded or channels-last
      yt/dyt/xt/dxt: a chunk of top, top diff, bottom or bottom diff transposed for a GEMM
      wtmp, btmp: one chunk's gradient terms
    and, per block, its weight and bias gradient sums (_wsums, _bsums).
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
        self._compiled = None
        self._parts = []
        self._wbuf = {}
        self._wsums = self._bsums = None

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
            # A bottom with no values (0 images, 0 channels or an empty padded spatial axis):
            # every column is zero, so the top is the bias (_forward_empty, _backward_empty).
            self._empty = 0 in shape
            self._geometry_changed()
        top_shape = shape[:self.axis] + (self.num_output,) + self.out_sp
        for t in top:
            t.reshape(top_shape)

    _pointwise = False

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
        """The batch's blocks, each a list of chunks [(first image, count), …], and one scratch
        per worker thread; remade, with fresh scratch, when the shape, the thread count or the
        device changes. The blocks and chunks do not depend on the thread count."""
        threads = parallel_chunks.parts()
        xp = self.xp
        key = (self._key, threads, xp)
        if key == self._plan_key:
            return
        N = self.num
        if xp is np:
            target = CHUNK_BYTES
            cap = min(max(8, 2 * backend.cpu_cores()),
                      max(backend.cpu_cores(), BLOCK_SUM_BYTES // (4 * self.blobs[0].count)))
        else:
            target, cap = GPU_CHUNK_BYTES, 1
        per_image = 4 * self._col_values_per_image()
        n = max(1, target // per_image)
        nblocks = max(1, min(cap, N, N * per_image // BLOCK_MIN_BYTES))
        nblocks = 1 << (nblocks.bit_length() - 1)   # even shares for 2, 4, … threads
        self._blocks = []
        for a, b in parallel_chunks.split(N, nblocks) if N else ():
            self._blocks.append([(a + i, j - i) for i, j in
                                 parallel_chunks.split(b - a, -(-(b - a) // n))])
        self.chunk = max((m for block in self._blocks for _, m in block), default=1)
        # ConvolutionLayer: the weight gradient image by image (DW_PER_IMAGE_VALUES) where the
        # weights are no more values than an image's columns (its terms then take no more
        # scratch than the chunk's columns)
        wvalues = self.blobs[0].count
        self._dw_per_image = (not self.reverse and not self._last and self.group == 1
                              and DW_TRANSPOSED
                              and wvalues <= min(DW_PER_IMAGE_VALUES, per_image // 4))
        self._bias_row = (BIAS_IN_PRODUCT and not self.reverse and not self._last
                          and not self._pointwise and self.group == 1 and self.bias_term
                          and xp is np)
        self._block_cap = cap
        self._parts = [_Part() for _ in range(min(threads, len(self._blocks)))]
        # numba's col2im where it is installed (caffepy.kernels.compiled; None: NumPy's)
        self._compiled = compiled.kernels() if xp is np else None
        # a part's column buffer: a chunk's columns in any layout, rows padded (row_length)
        self._col_values = max([self.chunk * self._col_values_per_image()]
                               + [ChunkColumns.values_needed(xp, ch, geom, self.chunk, layout,
                                                             ones and layout == IMAGES)
                                  for ch, geom, ones in self._column_kinds()
                                  for layout in (IMAGES, ROWS)])
        self._wbuf = {}
        self._wsums = self._bsums = None
        self._plan_key = key

    def _column_kinds(self):
        """(channels, geometry, a row of ones) of each column matrix this layer fills with
        ChunkColumns."""
        if self.reverse:
            return [(self.num_output, self.geom, False)]
        kinds = [(self.channels, self.geom, self._bias_row)]
        if self._full is not None:
            kinds.append((self.num_output, self._full, False))
        return kinds

    def _add_bias(self, y, b3):
        """y (m, O, P) += the bias b3 (1, O, 1): numba's pass where it is installed."""
        if self._compiled is not None and y.flags.c_contiguous:
            self._compiled.add_channel_bias(y, b3.reshape(-1))
        else:
            y += b3

    def _run_blocks(self, fn):
        parallel_chunks.run_blocks(fn, len(self._blocks))

    def _forward_empty(self, top):
        """Forward of a bottom with no values: each top is the bias (zeros without one)."""
        O, P = self.num_output, prod(self.out_sp)
        for t in top:
            y3 = t.data.reshape(self.num, O, P)
            if self.bias_term:
                y3[...] = self.blobs[1].data.reshape(1, O, 1)
            else:
                y3[...] = 0

    def _backward_empty(self, top):
        """Backward of a bottom with no values: the weight gradient and the (empty) bottom
        diff get nothing; the bias gradient gets the top diffs summed over images and
        positions."""
        if self.bias_term and self.param_propagate(1):
            bd = self.blobs[1].diff
            shape = (self.num, self.num_output, prod(self.out_sp))
            for t in top:
                bd += t.diff.reshape(shape).sum(axis=(0, 2))

    def _buf(self, part, name, size):
        b = part.bufs.get(name)
        if b is None:
            b = part.bufs[name] = self.xp.empty(size, dtype=np.float32)
        return b

    def _chunk_buf(self, part, name, shape):
        """A view (m, …) of the part's buffer ``name``, which is made for a full chunk."""
        size = prod(shape)
        return self._buf(part, name, prod(shape[1:]) * self.chunk)[:size].reshape(shape)

    def _cols(self, part, name, channels, geom, layout, ones_row=False):
        """The part's ChunkColumns ``name`` (its columns in the part's shared col buffer)."""
        c = part.cols.get(name)
        if c is None:
            col = self._buf(part, "col", self._col_values)
            c = part.cols[name] = ChunkColumns(self.xp, channels, geom, self.chunk, col,
                                               layout, self.group, self._compiled, ones_row)
        return c

    def _weights(self, name, make, extra=0):
        """A per-call rearrangement of the weights (made by ``make(out)``) in a kept buffer of
        their size plus ``extra`` values."""
        w = self.blobs[0].data
        buf = self._wbuf.get(name)
        if buf is None:
            buf = self._wbuf[name] = self.xp.empty(w.size + extra, dtype=np.float32)
        return make(buf)

    def scratch_bytes(self):
        """Bytes of this layer's scratch buffers (all parts, and the rearranged weights)."""
        return (sum(p.nbytes() for p in self._parts)
                + sum(b.nbytes for b in self._wbuf.values())
                + sum(a.nbytes for a in (self._wsums, self._bsums) if a is not None))

    def _grad_sums(self, part, block, idx, shape):
        """(weight, bias) sums of a block, and where its chunk ``idx`` writes its terms: the
        sums themselves for the first chunk, a worker's temporaries, then added, for the rest."""
        if self._wsums is None:
            xp = self.xp
            self._wsums = xp.empty((self._block_cap, self.blobs[0].count), dtype=np.float32)
            self._bsums = xp.empty((self._block_cap, self.num_output), dtype=np.float32)
        wsum = self._wsums[block].reshape(shape)
        bsum = self._bsums[block]
        wtmp = self._buf(part, "wtmp", wsum.size)
        btmp = self._buf(part, "btmp", self.num_output)
        if idx == 0:
            return wsum, bsum, wsum, bsum
        return wsum, bsum, wtmp.reshape(shape), btmp

    def _bias_grad(self, part, dy, out):
        """out = dy summed over images and positions, dy (m, O, P): a matrix-vector product
        with ones per image, then a sum over the images (Caffe's gemv with its bias
        multiplier; three times NumPy's sum over two axes here)."""
        xp = self.xp
        m, O, P = dy.shape
        ones = part.bufs.get("ones")
        if ones is None or ones.shape[0] < P:
            ones = part.bufs["ones"] = xp.ones(P, dtype=np.float32)
        per_image = self._buf(part, "bias_terms", self.chunk * O)[:m * O].reshape(m, O)
        xp.matmul(dy, ones[:P], out=per_image)
        xp.sum(per_image, axis=0, out=out)

    def _add_param_diffs(self, need_w, need_b, weight_view):
        """Add the blocks' sums to the param diffs: summed in block order in the first block's
        sum, then added once (``weight_view(diff, sum)`` gives the two as arrays of one shape;
        for a channels-last layer the sum is a permuted view, whose strided add takes five
        times as long as a contiguous one: 8.4 against 1.6 µs for LeNet's conv2). Onto zero
        diffs, as after ClearParamDiffs, this gives the same bits as adding the blocks one
        after another."""
        nblocks = len(self._blocks)
        if not nblocks:
            return
        if need_w:
            total = self._wsums[0]
            for b in range(1, nblocks):
                total += self._wsums[b]
            wd, acc = weight_view(self.blobs[0].diff, total)
            wd += acc
        if need_b:
            total = self._bsums[0]
            for b in range(1, nblocks):
                total += self._bsums[b]
            self.blobs[1].diff[...] += total

    def _gemm_groups(self, a, b, out, ta=False):
        """out[g] = op(a[g]) @ b[g] per group g, splitting the rows of a, the second-to-last
        axis of b and of out (b and out may be stacks of matrices, one per image)."""
        xp = self.xp
        G = self.group
        if G == 1:
            parallel_chunks.matmul(xp, a.T if ta else a, b, out)
            return
        ra, rb, ro = a.shape[0] // G, b.shape[-2] // G, out.shape[-2] // G
        for g in range(G):
            ag = a[g * ra:(g + 1) * ra]
            parallel_chunks.matmul(xp, ag.T if ta else ag, b[..., g * rb:(g + 1) * rb, :],
                                   out[..., g * ro:(g + 1) * ro, :])

    def _gemm_cols(self, a, b, out):
        """out[:, g] = a[:, g] @ b[g] per group: a (M, G, R), b (G, R, S), out (M, G, S) — the
        channels-last layout's groups side by side."""
        for g in range(self.group):
            parallel_chunks.matmul(self.xp, a[:, g], b[g], out[:, g])

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
    """N-D grouped, dilated cross-correlation, chunk by chunk: im2col + one matmul per group.

    Channels-first chunks (im2col.IMAGES / ROWS): y = W·col per image, written into the top in
    place; dWᵀ = col·dyᵀ over the chunk. Channels-last chunks (im2col.LAST): yᵀ = colᵀ·Wᵀ over
    the chunk, then transposed into the top; dW = dyᵀ·colᵀ. The data gradient is, for stride
    1, a convolution of the top diff with the flipped kernel (when cheaper), else Wᵀ·dy and
    col2im."""

    def _geometry_changed(self):
        # A 1 × 1 kernel with stride 1, no padding and one group: each image's input is its own
        # column matrix (C × P), so the products read the bottom and top directly, no im2col,
        # no col2im and no transposes (POINTWISE_DIRECT)
        self._pointwise = (POINTWISE_DIRECT and self.group == 1
                           and all(k == 1 for k in self.kernel)
                           and all(s == 1 for s in self.stride) and not any(self.pad))
        self._last = self._channels_last_is_better() and not self._pointwise
        if self._pointwise:
            self._full = None
            return
        # With stride 1 the data gradient is itself a convolution: the top diff, padded by
        # (extent − 1 − pad), with the kernel flipped and its in/out channels swapped. One
        # im2col (a copy) + one matmul may be cheaper than matmul + col2im (k^D slice-adds).
        self._full = None
        extents = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        if all(s == 1 for s in self.stride) and all(p <= e - 1 for p, e in zip(self.pad, extents)):
            pad_full = tuple(e - 1 - p for p, e in zip(self.pad, extents))
            gf = WindowGeometry(self.out_sp, self.kernel, self.stride, pad_full, self.dilation)
            if gf.out_shape == tuple(self.in_sp) and self._full_is_cheaper():
                self._full = gf

    def _col_values_per_image(self):
        n = self.channels * self.kernel_count * self.geom.out_count
        if self._full is not None:
            n = max(n, self.num_output * self.kernel_count * prod(self.in_sp))
        return n

    # -- weights rearranged for the GEMMs ---------------------------------------------------

    def _weights_with_bias(self):
        """[W | b]: (O, C·K + 1), the weights of a product with columns that end in a row of
        ones."""
        O = self.num_output

        def make(buf):
            wb = buf.reshape(O, -1)
            wb[:, :-1] = self.blobs[0].data.reshape(O, -1)
            wb[:, -1] = self.blobs[1].data
            return wb
        return self._weights("bias", make, O)

    def _wshape5(self):
        G, O, C = self.group, self.num_output, self.channels
        return (G, O // G, C // G) + self.kernel

    def _weights_last(self):
        """W as (G, K·C/G, O/G): row (kernel position, channel) — the LAST columns' order."""
        D = self.num_spatial
        G, Og, Cg = self._wshape5()[:3]

        def make(buf):
            w = self.blobs[0].data.reshape(self._wshape5())
            out = buf.reshape((G,) + self.kernel + (Cg, Og))
            out[...] = w.transpose((0,) + tuple(range(3, 3 + D)) + (2, 1))
            return buf.reshape(G, -1, Og)
        return self._weights("last", make)

    def _weights_flipped(self):
        """The data-gradient convolution's kernel: W with its spatial axes reversed and its
        in/out channels swapped, per group: (C, (O/G)·K) channels-first, or channels-last
        (G, K·O/G, C/G)."""
        D = self.num_spatial
        G, Og, Cg = self._wshape5()[:3]

        def make(buf):
            w = self.blobs[0].data.reshape(self._wshape5())
            flipped = w[(Ellipsis,) + (slice(None, None, -1),) * D]
            if self._last:
                out = buf.reshape((G,) + self.kernel + (Og, Cg))
                out[...] = flipped.transpose((0,) + tuple(range(3, 3 + D)) + (1, 2))
                return buf.reshape(G, -1, Cg)
            out = buf.reshape((G, Cg, Og) + self.kernel)
            out[...] = flipped.swapaxes(1, 2)
            return buf.reshape(self.channels, -1)
        return self._weights("flipped", make)

    def _weight_sums(self):
        """The shape of a part's weight-gradient sum, and how it lines up with the diff."""
        G, Og, Cg = self._wshape5()[:3]
        K, D = self.kernel_count, self.num_spatial
        if self._last:
            def view(wd, acc):              # acc (G, Og, K·Cg), kernel positions before channels
                acc = acc.reshape((G, Og) + self.kernel + (Cg,))
                return wd.reshape(self._wshape5()), acc.transpose((0, 1, 2 + D)
                                                                  + tuple(range(2, 2 + D)))
            return (G, Og, K * Cg), view

        if DW_TRANSPOSED:
            def view(wd, acc):              # acc (G, Cg·K, Og): dWᵀ
                return wd.reshape(G, Og, Cg * K), acc.reshape(G, Cg * K, Og).transpose(0, 2, 1)
            return (G, Cg * K, Og), view

        def view(wd, acc):                  # acc (G, Og, Cg·K): dW
            return wd.reshape(G, Og, Cg * K), acc.reshape(G, Og, Cg * K)
        return (G, Og, Cg * K), view

    # -- forward ------------------------------------------------------------------------------

    def forward_impl(self, bottom, top):
        if self._empty:
            return self._forward_empty(top)
        self._plan()
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        K, P = self.kernel_count, self.geom.out_count
        b3 = self.blobs[1].data.reshape(1, -1, 1) if self.bias_term else None
        w = self._weights_last() if self._last else self.blobs[0].data.reshape(O, -1)
        wb = self._weights_with_bias() if self._bias_row else None
        for i in range(len(bottom)):
            x = bottom[i].data.reshape((N, C) + self.in_sp)
            y3 = top[i].data.reshape(N, O, P)

            def block_forward(worker, block, x=x, y3=y3):
                part = self._parts[worker]
                if self._last:
                    cols = self._cols(part, "x", C, self.geom, LAST)
                    for a, m in self._blocks[block]:
                        col = cols.fill(x[a:a + m]).reshape(m * P, G, -1)
                        yt = self._chunk_buf(part, "yt", (m, P, O))
                        self._gemm_cols(col, w, yt.reshape(m * P, G, -1))
                        if b3 is None:
                            y3[a:a + m] = yt.swapaxes(1, 2)
                        elif self._compiled is not None:
                            self._compiled.add_bias_from_last(yt, b3.reshape(-1), y3[a:a + m])
                        else:
                            self.xp.add(yt.swapaxes(1, 2), b3, out=y3[a:a + m])
                    return
                if self._pointwise:
                    x3 = x.reshape(N, C, P)
                    for a, m in self._blocks[block]:
                        y = y3[a:a + m]
                        parallel_chunks.matmul(self.xp, w, x3[a:a + m], y)
                        if b3 is not None:
                            self._add_bias(y, b3)
                    return
                cols = self._cols(part, "x", C, self.geom, IMAGES, self._bias_row)
                for a, m in self._blocks[block]:
                    col = cols.fill(x[a:a + m]).reshape(m, C * K, P)
                    y = y3[a:a + m]
                    if self._bias_row:
                        self.xp.matmul(wb, cols.with_ones(m), out=y)
                        continue
                    self._gemm_groups(w, col, y)
                    if b3 is not None:
                        self._add_bias(y, b3)

            self._run_blocks(block_forward)

    # -- backward -----------------------------------------------------------------------------

    def backward_impl(self, top, propagate_down, bottom):
        if self._empty:
            return self._backward_empty(top)
        N, C, O = self.num, self.channels, self.num_output
        need_w = self.param_propagate(0)
        need_b = self.bias_term and self.param_propagate(1)
        self._plan()
        need_any_x = any(propagate_down[:len(top)])
        if self._full is not None:
            wx = self._weights_flipped() if need_any_x else None
        elif self._last:
            wx = self._weights_last() if need_any_x else None
        else:
            wx = self.blobs[0].data.reshape(O, -1)
        wsum_shape, weight_view = self._weight_sums()
        chunk_backward = (self._backward_pointwise if self._pointwise
                          else self._backward_last if self._last else self._backward_first)
        for i in range(len(top)):
            need_x = propagate_down[i]
            if not (need_w or need_b or need_x):
                continue
            x = bottom[i].data.reshape((N, C) + self.in_sp)
            dy3 = top[i].diff.reshape(N, O, self.geom.out_count)
            dx = bottom[i].diff.reshape((N, C) + self.in_sp)

            def block_backward(worker, block, x=x, dy3=dy3, dx=dx, need_x=need_x):
                part = self._parts[worker]
                for idx, (a, m) in enumerate(self._blocks[block]):
                    wacc, bacc, wout, bout = self._grad_sums(part, block, idx, wsum_shape)
                    chunk_backward(part, x[a:a + m], dy3[a:a + m], dx[a:a + m], wx,
                                   wout if need_w else None, bout if need_b else None, need_x)
                    if idx:
                        if need_w:
                            wacc += wout
                        if need_b:
                            bacc += bout

            self._run_blocks(block_backward)
            self._add_param_diffs(need_w, need_b, weight_view)

    def _backward_pointwise(self, part, x, dy, dx, wx, wout, bout, need_x):
        """One chunk of a 1 × 1 convolution (stride 1, no padding, one group), straight from the
        bottom and the top diff: the weight gradient image by image where the weights are small
        (_dw_per_image: dWᵀ = Σ x·dyᵀ), else one product over the chunk of the two laid out
        C × m·P and O × m·P (block copies, scratch bounded by the chunk); the bias gradient as
        elsewhere; dx = Wᵀ·dy. x (m, C, *in), dy (m, O, P), dx (m, C, *in)."""
        xp = self.xp
        m, O, P = dy.shape
        C = self.channels
        x3 = x.reshape(m, C, P)
        if bout is not None:
            self._bias_grad(part, dy, bout)
        if wout is not None and self._dw_per_image:         # wout[0] (C, O)
            terms = self._buf(part, "dw_terms", self.chunk * C * O)[:m * C * O]
            terms = terms.reshape(m, C, O)
            parallel_chunks.matmul(xp, x3, dy.swapaxes(1, 2), terms)
            xp.sum(terms, axis=0, out=wout[0])
        elif wout is not None:
            xt = self._transposed(part, "xt", x3)
            dyt = self._transposed(part, "dyt", dy)
            if DW_TRANSPOSED:       # wout[0] (C, O)
                parallel_chunks.matmul(xp, xt, dyt.T, wout[0])
            else:                   # wout[0] (O, C)
                parallel_chunks.matmul(xp, dyt, xt.T, wout[0])
        if need_x:
            parallel_chunks.matmul(xp, wx.T, dy, dx.reshape(m, C, P))

    def _backward_first(self, part, x, dy, dx, wx, wout, bout, need_x):
        """One chunk, channels-first: x (m, C, *in), dy (m, O, P), dx (m, C, *in)."""
        xp = self.xp
        m, O, P = dy.shape
        C, K = self.channels, self.kernel_count
        per_image = wout is not None and self._dw_per_image
        need_dyt = (wout is not None and not per_image) or (need_x and self._full is None)
        dyt = self._transposed(part, "dyt", dy) if need_dyt else None
        # the bias gradient within the weight gradient's product: the columns' row of ones
        ones = per_image and bout is not None and self._bias_row
        if bout is not None and not ones:
            self._bias_grad(part, dy, bout)
        if per_image:
            # (m, C·K, P) columns times each image's dyᵀ (P, O): m small products, then summed
            cols = self._cols(part, "x", C, self.geom, IMAGES, self._bias_row)
            col = cols.fill(x).reshape(m, C * K, P)
            rows = C * K + ones
            terms = self._buf(part, "dw_terms", self.chunk * (C * K + 1) * O)[:m * rows * O]
            terms = terms.reshape(m, rows, O)
            parallel_chunks.matmul(xp, cols.with_ones(m) if ones else col, dy.swapaxes(1, 2),
                                   terms)
            xp.sum(terms[:, :C * K], axis=0, out=wout[0])
            if ones:
                xp.sum(terms[:, C * K], axis=0, out=bout)
        elif wout is not None:
            col = self._cols(part, "xr", C, self.geom, ROWS).fill(x).reshape(C * K, -1)
            G = self.group
            r, s = C * K // G, O // G
            for g in range(G):
                if DW_TRANSPOSED:
                    parallel_chunks.matmul(xp, col[g * r:(g + 1) * r], dyt[g * s:(g + 1) * s].T,
                                           wout[g])
                else:
                    parallel_chunks.matmul(xp, dyt[g * s:(g + 1) * s], col[g * r:(g + 1) * r].T,
                                           wout[g])
        if not need_x:
            return
        if self._full is not None:
            dcol = self._cols(part, "dy", O, self._full, IMAGES).fill(
                dy.reshape((m, O) + self.out_sp))
            self._gemm_groups(wx, dcol.reshape(m, O * K, -1), dx.reshape(m, C, -1))
        else:
            col = self._buf(part, "col", self._col_values)
            dcol = col[:C * K * m * P].reshape(C * K, -1)
            self._gemm_groups(wx, dyt, dcol, ta=True)
            col2im(dcol.reshape((C,) + self.kernel + (m,) + self.out_sp), dx, self.geom)

    def _backward_last(self, part, x, dy, dx, wx, wout, bout, need_x):
        """One chunk, channels-last: x (m, C, *in), dy (m, O, P), dx (m, C, *in)."""
        xp = self.xp
        m, O, P = dy.shape
        C, G = self.channels, self.group
        need_dyt = wout is not None or (need_x and self._full is None)
        # dy as O × m·P, a group's rows Og × m·P (see DW_TRANSPOSED)
        dyt = (self._transposed(part, "dyt", dy).reshape(G, O // G, m * P) if need_dyt
               else None)
        if bout is not None:
            self._bias_grad(part, dy, bout)
        if wout is not None:        # wout[g] (Og, K·Cg), kernel positions before channels
            col = self._cols(part, "x", C, self.geom, LAST).fill(x).reshape(m * P, G, -1)
            for g in range(G):
                parallel_chunks.matmul(xp, dyt[g], col[:, g], wout[g])
        if not need_x:
            return
        Pin = prod(self.in_sp)
        if self._full is not None:
            dcol = self._cols(part, "dy", O, self._full, LAST).fill(
                dy.reshape((m, O) + self.out_sp)).reshape(m * Pin, G, -1)
            dxt = self._chunk_buf(part, "dxt", (m, Pin, C))
            self._gemm_cols(dcol, wx, dxt.reshape(m * Pin, G, -1))
        else:
            col = self._buf(part, "col", self._col_values)
            dcol = col[:C * self.kernel_count * m * P].reshape(m * P, G, -1)
            for g in range(G):      # dcol[:, g] = dyᵀ·W of the group, m·P × K·Cg
                parallel_chunks.matmul(xp, dyt[g].T, wx[g].T, dcol[:, g])
            dcol = dcol.reshape((m,) + self.out_sp + (G,) + self.kernel + (C // G,))
            if self._compiled is not None and self.num_spatial == 2:
                # summed image by image in a cached (H, W, C) buffer, written channels-first
                work = self._buf(part, "dx_image", Pin * C).reshape(self.in_sp + (C,))
                self._compiled.col2im_last_first_2d(dcol, work, dx.reshape(m, C, Pin),
                                                    self.geom.int_params)
                return
            dxt = self._chunk_buf(part, "dxt", (m, Pin, C))
            col2im_last(dcol, dxt.reshape((m,) + self.in_sp + (C,)), self.geom, self._compiled)
        dx.reshape(m, C, Pin)[...] = dxt.swapaxes(1, 2)

    def _channels_last_is_better(self):
        """Whether to lower channels-last: when a window reads a longer contiguous run of
        channels-last memory (kernel_w · C/group values) than of a channels-first image row
        (out_w values), the strided im2col copies move longer rows (CIFAR-10 quick's conv2 and
        conv3 and LeNet's conv2 go channels-last, the 1- and 3-channel first layers do not)."""
        run_last = (self.channels // self.group) * (self.kernel[-1] if self.dilation[-1] == 1
                                                    else 1)
        return run_last > self.out_sp[-1]

    def _full_is_cheaper(self):
        """Rough cost model (ns, measured on a 2-core NumPy/OpenBLAS machine) of the two ways
        to get the data gradient: Wᵀ·dy + col2im (slice-adds) versus im2col of the top diff + a
        matmul larger by P_in/P_out (a 'valid' convolution shrinks).

        Channels-last, both copies are compiled and cost about the same per value (0.06-0.25
        ns, more for larger chunks, measured over twelve layer shapes from CIFAR-10 quick,
        CaffeNet, VGG and ResNet), and the products run at about 200 GFLOP/s: the choice comes
        down to copying O·P_in values (the top diff's columns) or C·P_out (the data gradient's),
        ties going to the convolution, which measured as fast or faster there (CIFAR-10
        quick's conv2: 18.1-19.0 against 19.2-19.7 ms backward; a 3 × 3, 256-channel 14 × 14
        layer 21 against 22-26). CaffeNet's conv2 (96 channels in, 256 out, 5 × 5) takes
        76-83 ms backward at batch 16 with col2im, 98-105 as a convolution."""
        C, O, K, N = self.channels, self.num_output, self.kernel_count, self.num
        Pin, Pout = prod(self.in_sp), prod(self.out_sp)
        macs = 2.0 * C * K * (O // self.group)
        if self._last:
            flop_ns, copy_ns = 1.0 / 200, 0.15
            return (macs * N * Pin * flop_ns + O * K * N * Pin * copy_ns
                    <= macs * N * Pout * flop_ns + C * K * N * Pout * copy_ns)
        flop_ns = 1.0 / 90
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
        if self._empty:
            return self._forward_empty(top)
        self._plan()
        N, Cin, O = self.num, self.channels, self.num_output
        OK = O * self.kernel_count
        w2 = self.blobs[0].data.reshape(Cin, -1)
        b3 = self.blobs[1].data.reshape(1, O, 1) if self.bias_term else None
        for i in range(len(bottom)):
            x3 = bottom[i].data.reshape(N, Cin, prod(self.in_sp))
            y = top[i].data.reshape((N, O) + self.out_sp)

            def block_forward(worker, block, x3=x3, y=y):
                part = self._parts[worker]
                col = self._buf(part, "col", self._col_values)
                for a, m in self._blocks[block]:
                    xt = self._transposed(part, "xt", x3[a:a + m])
                    dcol = col[:OK * xt.shape[1]].reshape(OK, -1)
                    self._gemm_groups(w2, xt, dcol, ta=True)
                    col2im(dcol.reshape((O,) + self.kernel + (m,) + self.in_sp), y[a:a + m],
                           self.geom)
                    if b3 is not None:
                        self._add_bias(y[a:a + m].reshape(m, O, -1), b3)

            self._run_blocks(block_forward)

    def backward_impl(self, top, propagate_down, bottom):
        if self._empty:
            return self._backward_empty(top)
        xp = self.xp
        N, Cin, O, G, K = self.num, self.channels, self.num_output, self.group, self.kernel_count
        OK, OKg, Cg = O * K, (O // G) * K, Cin // G
        need_w = self.param_propagate(0)
        need_b = self.bias_term and self.param_propagate(1)
        self._plan()
        w2 = self.blobs[0].data.reshape(Cin, -1)

        def weight_view(wd, acc):           # acc (G, O/G·K, Cin/G): dWᵀ
            return wd.reshape(G, Cg, OKg), acc.reshape(G, OKg, Cg).transpose(0, 2, 1)

        for i in range(len(top)):
            need_x = propagate_down[i]
            if not (need_w or need_b or need_x):
                continue
            x3 = bottom[i].data.reshape(N, Cin, prod(self.in_sp))
            dy = top[i].diff.reshape((N, O) + self.out_sp)
            dx3 = bottom[i].diff.reshape(N, Cin, prod(self.in_sp))

            def block_backward(worker, block, x3=x3, dy=dy, dx3=dx3, need_x=need_x):
                part = self._parts[worker]
                cols = self._cols(part, "dy", O, self.geom, ROWS)
                for idx, (a, m) in enumerate(self._blocks[block]):
                    wacc, bacc, wout, bout = self._grad_sums(part, block, idx, (G, OKg, Cg))
                    if need_b:
                        self._bias_grad(part, dy[a:a + m].reshape(m, O, -1), bout)
                        if idx:
                            bacc += bout
                    if not (need_w or need_x):
                        continue
                    dcol = cols.fill(dy[a:a + m]).reshape(OK, -1)
                    if need_w:
                        xt = self._transposed(part, "xt", x3[a:a + m])
                        for g in range(G):
                            parallel_chunks.matmul(xp, dcol[g * OKg:(g + 1) * OKg],
                                                   xt[g * Cg:(g + 1) * Cg].T, wout[g])
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

            self._run_blocks(block_backward)
            self._add_param_diffs(need_w, need_b, weight_view)


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
