"""im2col / col2im over a whole batch, for any number of spatial axes.

Caffe's im2col lays one image out as a (C·K) × P matrix (K = kernel positions, P = output
positions) so that a convolution is one GEMM. Here the whole batch goes into one matrix,
``col`` of shape (C, k₁, …, k_D, N, o₁, …, o_D), i.e. (C·K) × (N·P) once flattened, so that a
convolution pass is a single large matmul (both BLAS threads busy, no per-image GEMMs).

The copy is a loop over the K kernel offsets. For each offset, the output positions whose
input position falls inside the image form one box (a slice per axis), and the input
positions they read form a strided box; everything else in ``col`` is padding (zero). The
hot loop is therefore K strided slice copies (im2col) or slice-adds (col2im), never a Python
loop over images or pixels, and the code is the same for NumPy and CuPy.
"""
import itertools


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
