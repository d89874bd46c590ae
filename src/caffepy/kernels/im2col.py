"""im2col / col2im for any number of spatial axes: over a whole batch, and chunk by chunk.

Caffe's im2col lays one image out as a (C·K) × P matrix (K = kernel positions, P = output
positions) so that a convolution is one GEMM. Here the whole batch goes into one matrix,
``col`` of shape (C, k₁, …, k_D, N, o₁, …, o_D), i.e. (C·K) × (N·P) once flattened, so that a
convolution pass is a single large matmul (both BLAS threads busy, no per-image GEMMs).

The copy is a loop over the K kernel offsets. For each offset, the output positions whose
input position falls inside the image form one box (a slice per axis), and the input
positions they read form a strided box; everything else in ``col`` is padding (zero). The
hot loop is therefore K strided slice copies (im2col) or slice-adds (col2im), never a Python
loop over images or pixels, and the code is the same for NumPy and CuPy.

``ChunkColumns`` does im2col for a chunk of a few images at a time, into buffers made once
(so memory does not grow with the batch, and the columns stay in cache for the GEMM that reads
them): the chunk is copied into a zero-bordered buffer and all its windows are one strided view
of that buffer (``window_view``), so one chunk is two copies, whatever the kernel size.
"""
import itertools

import numpy as np

from ..backend import array_module


def conv_out_size(in_size, kernel, stride, pad, dilation=1):
    """Caffe's convolution output size (floor); may be <= 0 for a kernel wider than the input."""
    extent = dilation * (kernel - 1) + 1
    num = in_size + 2 * pad - extent
    # C++ integer division truncates toward zero.
    q = abs(num) // stride
    q = q if num >= 0 else -q
    return q + 1


def deconv_out_size(in_size, kernel, stride, pad, dilation=1):
    """Caffe's deconvolution output size: s·(In−1) + d(k−1) + 1 − 2p."""
    return stride * (in_size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def _valid_range(in_size, out_size, k, stride, pad, dilation):
    """Output positions o with 0 <= o·stride − pad + k·dilation < in_size, as [lo, hi)."""
    off = k * dilation - pad              # input position of output 0
    # o*stride + off >= 0  ->  o >= ceil(-off / stride)
    lo = (-off + stride - 1) // stride if off < 0 else 0
    # o*stride + off <= in_size - 1  ->  o <= floor((in_size - 1 - off) / stride)
    last = in_size - 1 - off
    if last < 0:
        return 0, 0, off
    hi = min(out_size, last // stride + 1)
    return lo, max(lo, hi), off


class WindowGeometry:
    """Sliding windows over D spatial axes.

    ``in_shape``: the image's spatial shape; ``out_shape``: the window grid's shape (given, or
    Caffe's convolution formula). ``offsets`` lists, for each kernel position that touches the
    image at all, ``(kernel_index, in_slices, out_slices)``: image[in_slices] is what that kernel
    position sees at the outputs out_slices. ``covers_all`` is True when every kernel position
    sees the image at every output (no padding reaches ``col``), so a col buffer needs no zeros.
    """

    def __init__(self, in_shape, kernel, stride, pad, dilation=None, out_shape=None):
        D = len(in_shape)
        self.in_shape = tuple(int(v) for v in in_shape)
        self.kernel = tuple(int(v) for v in kernel)
        self.stride = tuple(int(v) for v in stride)
        self.pad = tuple(int(v) for v in pad)
        self.dilation = tuple(int(v) for v in dilation) if dilation is not None else (1,) * D
        if out_shape is None:
            out_shape = tuple(conv_out_size(self.in_shape[d], self.kernel[d], self.stride[d],
                                            self.pad[d], self.dilation[d]) for d in range(D))
        self.out_shape = tuple(int(v) for v in out_shape)
        per_axis = []
        for d in range(D):
            opts = []
            for k in range(self.kernel[d]):
                lo, hi, off = _valid_range(self.in_shape[d], self.out_shape[d], k,
                                           self.stride[d], self.pad[d], self.dilation[d])
                if hi <= lo:
                    opts.append(None)
                    continue
                start = lo * self.stride[d] + off
                stop = start + (hi - lo - 1) * self.stride[d] + 1
                opts.append((slice(start, stop, self.stride[d]), slice(lo, hi),
                             lo == 0 and hi == self.out_shape[d]))
            per_axis.append(opts)
        self.offsets = []
        covers_all = True
        for kidx in itertools.product(*[range(k) for k in self.kernel]):
            parts = [per_axis[d][kidx[d]] for d in range(D)]
            if any(p is None for p in parts):
                covers_all = False
                continue
            covers_all = covers_all and all(p[2] for p in parts)
            self.offsets.append((kidx, tuple(p[0] for p in parts), tuple(p[1] for p in parts)))
        self.covers_all = covers_all

    @property
    def int_params(self):
        """(stride, pad, dilation, output shape, kernel) of a 2-D geometry as an int64 array:
        (s_h, s_w, p_h, p_w, d_h, d_w, OH, OW, KH, KW), the compiled kernels' form."""
        p = self.__dict__.get("_int_params")
        if p is None:
            p = self._int_params = np.array(self.stride + self.pad + self.dilation
                                            + self.out_shape + self.kernel, dtype=np.int64)
        return p

    @property
    def kernel_count(self):
        c = 1
        for k in self.kernel:
            c *= k
        return c

    @property
    def out_count(self):
        c = 1
        for o in self.out_shape:
            c *= o
        return c


def im2col(x, col, geom, zero=True):
    """x: (N, C, *in_shape) -> col: (C, *kernel, N, *out_shape) (any strides).

    ``zero=False`` skips clearing the padding entries of ``col`` (for a buffer that was zeroed
    when it was made and only ever written by im2col with the same geometry)."""
    if zero and not geom.covers_all:
        col[...] = 0
    allc = slice(None)
    for kidx, si, so in geom.offsets:
        col[(allc,) + kidx + (allc,) + so] = x[(allc, allc) + si].swapaxes(0, 1)
    return col


def col2im(col, dx, geom):
    """col: (C, *kernel, N, *out_shape) -> dx: (N, C, *in_shape), summing overlaps.
    Overwrites dx."""
    dx[...] = 0
    allc = slice(None)
    for kidx, si, so in geom.offsets:
        dxv = dx[(allc, allc) + si]
        dxv += col[(allc,) + kidx + (allc,) + so].swapaxes(0, 1)
    return dx


def padded_shape(geom):
    """The spatial shape of an image with ``geom``'s padding on both sides of every axis, longer
    where the last window ends past it (Caffe's truncating output size lets a window that
    starts inside the padded image end beyond it; im2col reads zeros there)."""
    return tuple(max(i + 2 * p, (o - 1) * s + d * (k - 1) + 1)
                 for i, p, o, s, d, k in zip(geom.in_shape, geom.pad, geom.out_shape,
                                             geom.stride, geom.dilation, geom.kernel))


# A column matrix's rows are padded by one cache line where their length is a multiple of
# ROW_ALIAS_BYTES: rows that far apart fall into the same sets of the CPU's caches, and the
# matrix product that reads them runs much slower. Measured with OpenBLAS on one core: W·col
# for CIFAR-10 quick's conv1 (32 × 75 weights, 1024 outputs an image, 4 KB rows) ran at 100-120
# GFLOP/s, at 165-180 with rows of 1040 values; 2 KB rows (512 outputs) gained 15-30 % across
# shapes, 1 KB rows nothing that stood out of the noise.
ROW_ALIAS_BYTES = 2048
ROW_PAD = 16                    # float32 values: 64 bytes


def row_length(n, xp=np):
    """The row stride, in values, of a float32 column matrix with rows of ``n`` values: ``n``,
    or ``n + ROW_PAD`` when ``n`` values are a multiple of ROW_ALIAS_BYTES (NumPy only: the
    padding is for the CPU's caches)."""
    if xp is np and n and (4 * n) % ROW_ALIAS_BYTES == 0:
        return n + ROW_PAD
    return n


# Column layouts of ChunkColumns and window_view (C = channels, K = kernel positions,
# P = output positions, m = images, G = groups):
#   ROWS    (C, *kernel, m, *out): C·K × m·P, one GEMM over the chunk
#   IMAGES  (m, C, *kernel, *out): a C·K × P matrix per image (stacked matmul)
#   LAST    (m, *out, G, *kernel, C/G): m·P × C·K from channels-last images, each window's
#           run of kernel_w·C/G values contiguous in the source
ROWS, IMAGES, LAST = "rows", "images", "last"


def window_view(x, geom, layout=ROWS, groups=1):
    """Every window of ``x`` as one read-only strided view, no copy, in ``layout``. ``x`` holds
    padded images (its borders are the zeros Caffe's im2col reads outside the image):
    (n, C, *padded_shape), or (n, *padded_shape, C) for LAST."""
    xp = array_module(x)
    D = len(geom.kernel)
    if layout == LAST:
        sn, sc, sp = x.strides[0], x.strides[-1], x.strides[1:1 + D]
        C = x.shape[-1]
    else:
        sn, sc, sp = x.strides[0], x.strides[1], x.strides[2:]
        C = x.shape[1]
    n = x.shape[0]
    ks = tuple(s * d for s, d in zip(sp, geom.dilation))
    os_ = tuple(s * t for s, t in zip(sp, geom.stride))
    if layout == IMAGES:
        shape, strides = (n, C) + geom.kernel + geom.out_shape, (sn, sc) + ks + os_
    elif layout == ROWS:
        shape, strides = (C,) + geom.kernel + (n,) + geom.out_shape, (sc,) + ks + (sn,) + os_
    else:
        Cg = C // groups
        shape = (n,) + geom.out_shape + (groups,) + geom.kernel + (Cg,)
        strides = (sn,) + os_ + (Cg * sc,) + ks + (sc,)
    if xp is np:
        return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(x, shape, strides)


class _ChunkViews:
    __slots__ = ("interior", "source", "windows", "col", "kcol", "ones", "xpad")


class ChunkColumns:
    """im2col of up to ``n`` images at a time into buffers made once.

    ``fill(x)`` takes a chunk x (m, C, *in_shape), m <= n, and returns its columns in
    ``layout`` (ROWS, IMAGES or LAST above), a view of ``col_buffer``: a flat float32 array of
    at least ``values_needed(…)`` values, which several ChunkColumns used one after another may
    share. The rows of the ROWS and IMAGES matrices (C·K × m·P and C·K × P) are ``row_length``
    values apart, so the view is strided where that pads them; it reshapes to those matrices
    without a copy. The chunk is first copied into a zero-bordered buffer (channels-last for
    LAST; skipped for the other layouts when there is no padding), whose windows are then one
    strided copy.

    ``ones_row`` (IMAGES only): each image's matrix gets one more row, all ones, after its C·K
    rows; ``with_ones(m)`` gives the (m, C·K + 1, P) matrices of the last fill. A product with
    it adds a bias column of the weights (forward) or sums the top diff (the bias gradient)
    within the convolution's own product.
    """

    def __init__(self, xp, channels, geom, n, col_buffer, layout=ROWS, groups=1,
                 compiled_kernels=None, ones_row=False):
        if ones_row and layout != IMAGES:
            raise ValueError("a row of ones is for the IMAGES layout, not %s" % layout)
        self.geom = geom
        self.channels = channels
        self.layout = layout
        self.groups = groups
        self.ones_row = ones_row
        self._pshape = padded_shape(geom)
        self.padded = any(geom.pad) or self._pshape != tuple(geom.in_shape)
        # numba's im2col (caffepy.kernels.compiled) for 2-D channels-first layouts: it reads
        # the unpadded images, so there is no padded copy; the same bits
        self._kernel = None
        # and, for LAST, numba's copy of the windows out of the channels-last padded images
        self._windows_kernel = None
        if compiled_kernels is not None and xp is np and len(geom.kernel) == 2:
            # (only the kernel this layout uses: each is compiled the first time it is asked for)
            # (a horizontal stride above 1 has its own kernels: runs of stride phases)
            strided = "_strided" if geom.stride[-1] > 1 else ""
            if layout == IMAGES:
                self._kernel = getattr(compiled_kernels, "im2col_images%s_2d" % strided, None)
            elif layout == ROWS:
                self._kernel = getattr(compiled_kernels, "im2col_rows%s_2d" % strided, None)
            else:
                self._windows_kernel = getattr(compiled_kernels, "windows_last_2d", None)
        need = self.values_needed(xp, channels, geom, n, layout, ones_row)
        if col_buffer.size < need:
            raise ValueError("col_buffer holds %d values, %d images of columns need %d"
                             % (col_buffer.size, n, need))
        self._xp = xp
        self._col = col_buffer
        # zeroed once: only the interior is ever written, the border stays Caffe's zero padding
        self._xpad = (xp.zeros(n * channels * _count(self._pshape), dtype=np.float32)
                      if (self.padded or layout == LAST) and self._kernel is None else None)
        self._views = {}

    @staticmethod
    def values_needed(xp, channels, geom, n, layout, ones_row=False):
        """The values a column buffer needs for chunks of up to ``n`` images."""
        CK, P = channels * geom.kernel_count, geom.out_count
        if layout == IMAGES:
            return n * (CK + bool(ones_row)) * row_length(P, xp)
        if layout == ROWS:
            return max(CK * row_length(m * P, xp) for m in range(1, n + 1))
        return n * CK * P

    @property
    def nbytes(self):
        """Bytes of the buffers this object owns (the padded-image buffer)."""
        return self._xpad.nbytes if self._xpad is not None else 0

    def _make(self, m):
        g, C, G = self.geom, self.channels, self.groups
        CK, P = C * g.kernel_count, g.out_count
        v = _ChunkViews()
        v.kcol = v.ones = None
        if self.layout == IMAGES:
            R = row_length(P, self._xp)
            n_rows = CK + bool(self.ones_row)
            v.kcol = self._col[:m * n_rows * R].reshape(m, n_rows, R)
            v.col = v.kcol[:, :CK, :P].reshape((m, C) + g.kernel + g.out_shape)
            if self.ones_row:
                v.ones = v.kcol[:, :, :P]
        elif self.layout == ROWS:
            R = row_length(m * P, self._xp)
            rows = self._col[:CK * R].reshape(CK, R)
            v.col = rows[:, :m * P].reshape((C,) + g.kernel + (m,) + g.out_shape)
            v.kcol = rows.reshape((C,) + g.kernel + (R,))
        else:
            shape = (m,) + g.out_shape + (G,) + g.kernel + (C // G,)
            v.col = self._col[:m * CK * P].reshape(shape)
        v.interior = v.source = v.windows = v.xpad = None
        if self._xpad is not None:
            xpad = self._xpad[:m * C * _count(self._pshape)]
            inner = tuple(slice(p, p + i) for p, i in zip(g.pad, g.in_shape))
            if self.layout == LAST:
                xpad = xpad.reshape((m,) + self._pshape + (C,))
                v.xpad = xpad
                v.interior = xpad[(slice(None),) + inner + (slice(None),)]
                # the chunk's (m, C, *in) seen with its channels last, to copy into interior
                v.source = tuple(range(2, 2 + len(g.in_shape))) + (1,)
            else:
                xpad = xpad.reshape((m, C) + self._pshape)
                v.interior = xpad[(slice(None), slice(None)) + inner]
            v.windows = window_view(xpad, g, self.layout, G)
        self._views[m] = v
        return v

    def fill(self, x):
        v = self._views.get(x.shape[0]) or self._make(x.shape[0])
        if self._kernel is not None:
            if type(x) is not np.ndarray or not x.flags.c_contiguous or x.dtype != np.float32:
                x = np.ascontiguousarray(x, dtype=np.float32)
            self._kernel(x, v.kcol, self.geom.int_params)
        elif v.windows is None:
            v.col[...] = window_view(x, self.geom, self.layout)
        else:
            v.interior[...] = x.transpose((0,) + v.source) if v.source else x
            if self._windows_kernel is not None and self.layout == LAST:
                self._windows_kernel(v.xpad, v.col, self.geom.int_params)
            else:
                v.col[...] = v.windows
        if v.ones is not None:
            # rewritten each time: other ChunkColumns may share (and overwrite) the buffer
            v.ones[:, -1] = 1
        return v.col

    def with_ones(self, m):
        """The last fill's m matrices (m, C·K + 1, P), each with its row of ones."""
        return self._views[m].ones


def col2im_last(col, dx, geom, compiled_kernels=None):
    """col: (m, *out_shape, G, *kernel, C/G) (the LAST layout) -> dx: (m, *in_shape, C),
    channels last, summing overlaps. Overwrites dx.

    With ``compiled_kernels`` (caffepy.kernels.compiled.kernels()), 2-D NumPy arrays in C
    order take the compiled loop, which releases the GIL and gives the same bits."""
    if (compiled_kernels is not None and len(geom.kernel) == 2 and type(col) is np.ndarray
            and col.flags.c_contiguous and dx.flags.c_contiguous):
        compiled_kernels.col2im_last_2d(col, dx.reshape(dx.shape[:3] + (-1,)), geom.int_params)
        return dx
    G, Cg = col.shape[1 + len(geom.out_shape)], col.shape[-1]
    dx4 = dx.reshape(dx.shape[:-1] + (G, Cg))
    dx4[...] = 0
    allc = slice(None)
    for kidx, si, so in geom.offsets:
        dxv = dx4[(allc,) + si + (allc, allc)]
        dxv += col[(allc,) + so + (allc,) + kidx + (allc,)]
    return dx


def _count(shape):
    c = 1
    for s in shape:
        c *= s
    return c
