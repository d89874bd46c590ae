"""col2im of channels-last columns and im2col of channels-first chunks: the compiled kernels
(and their Python source run uncompiled) against the NumPy code and a per-window reference, bit
for bit, on odd shapes: strides, padding, dilation, groups, batch 1, a window that runs past the
padded image (Caffe's truncating output size), kernels wider than the stride."""
import types

import numpy as np
import pytest

from caffepy.kernels import compiled
from caffepy.kernels.im2col import (IMAGES, LAST, ROW_ALIAS_BYTES, ROW_PAD, ROWS, ChunkColumns,
                                    WindowGeometry, col2im_last, row_length)

# (m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G)
CASES = [
    (2, 6, 7, 9, 3, 3, 2, 2, 1, 1, 1, 1, 1),
    (1, 4, 5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 2),      # groups, batch 1
    (3, 3, 9, 8, 3, 2, 1, 2, 2, 1, 2, 1, 1),      # dilation, pad wider than the kernel's reach
    (2, 5, 6, 6, 4, 4, 3, 3, 1, 1, 1, 1, 1),      # the last window ends past the padded image
    (1, 2, 4, 7, 1, 5, 1, 1, 0, 2, 1, 1, 1),      # rectangular kernel
    (2, 3, 8, 8, 5, 5, 1, 1, 2, 2, 1, 1, 1),      # stride 1: up to 25 terms a pixel
    (1, 4, 7, 9, 3, 3, 1, 1, 1, 1, 1, 2, 1),      # horizontal dilation (runs of C)
    # horizontal strides past the kernel's extent, with padding wider than some taps' reach
    # and dilation: the stride phases' runs start before the row and end past it
    (2, 2, 7, 11, 2, 3, 2, 4, 1, 3, 1, 2, 1),
    (1, 2, 5, 3, 3, 3, 1, 4, 1, 1, 1, 1, 1),      # a row narrower than the stride
    (2, 3, 23, 23, 11, 11, 4, 4, 0, 0, 1, 1, 1),  # CaffeNet's conv1 geometry, smaller
]


def kernels_for(mode):
    if mode == "numpy":
        return None
    if mode == "python":
        return types.SimpleNamespace(col2im_last_2d=compiled.col2im_last_2d)
    kern = compiled.kernels()
    if kern is None:
        pytest.skip("numba is not installed or CAFFEPY_COMPILED=0")
    return kern


def reference(col, case, geom):
    """Σ over kernel positions (row-major), each window position's value added to its pixel,
    in float32 in that order (Caffe's col2im order)."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    OH, OW = geom.out_shape
    Cg = C // G
    dx = np.zeros((m, H, W, C), np.float32)
    for a in range(kh):
        for b in range(kw):
            for oh in range(OH):
                ih = oh * sh - ph + a * dh
                if not 0 <= ih < H:
                    continue
                for ow in range(OW):
                    iw = ow * sw - pw + b * dw
                    if 0 <= iw < W:
                        for g in range(G):
                            dx[:, ih, iw, g * Cg:(g + 1) * Cg] += col[:, oh, ow, g, a, b, :]
    return dx


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("case", CASES)
def test_col2im_last_bits(mode, case):
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    rng = np.random.default_rng(len(CASES) * m + C)
    col = (rng.standard_normal((m, OH, OW, G, kh, kw, C // G))
           * 10.0 ** rng.integers(-3, 3, (m, OH, OW, G, kh, kw, C // G))).astype(np.float32)
    dx = np.full((m, H, W, C), np.nan, np.float32)          # overwritten, never read
    col2im_last(col, dx, geom, kernels_for(mode))
    np.testing.assert_array_equal(dx.view(np.uint32), reference(col, case, geom).view(np.uint32))


@pytest.mark.parametrize("mode", ["python", "numba"])
@pytest.mark.parametrize("case", CASES)
def test_col2im_last_first_bits(mode, case):
    """The channels-first col2im (image by image through a small buffer): the same bits as
    col2im_last_2d, transposed to (m, C, H·W); the buffer's old contents never leak in."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    rng = np.random.default_rng(len(CASES) * m + C + 1)
    col = (rng.standard_normal((m, OH, OW, G, kh, kw, C // G))
           * 10.0 ** rng.integers(-3, 3, (m, OH, OW, G, kh, kw, C // G))).astype(np.float32)
    if mode == "python":
        fn = compiled.col2im_last_first_2d
    else:
        fn = kernels_for(mode).col2im_last_first_2d
    work = np.full((H, W, C), np.nan, np.float32)
    dx = np.full((m, C, H * W), np.nan, np.float32)
    fn(col, work, dx, geom.int_params)
    expect = reference(col, case, geom).reshape(m, H * W, C).transpose(0, 2, 1)
    np.testing.assert_array_equal(dx.view(np.uint32), expect.view(np.uint32))


def layers_without_and_with_kernels(monkeypatch, text, x, compiled_on=True):
    """(on, layer, bottom, top) for the compiled kernels off, then on (``compiled_on``): the
    same layer made twice from ``text`` over the bottom ``x``, its params set from fixed
    seeds, so the two give comparable results."""
    from helpers import make
    real = compiled.kernels
    for on in (False, compiled_on):
        monkeypatch.setattr(compiled, "kernels", real if on else (lambda: None))
        layer, bottom, top = make(text, [x])
        for i, blob in enumerate(layer.blobs):
            blob.data[...] = np.random.default_rng(6 + i).standard_normal(
                blob.shape).astype(np.float32)
        yield on, layer, bottom, top


@pytest.mark.parametrize("group", [1, 2])
def test_channels_last_backward_the_same_with_and_without_the_kernels(group, monkeypatch):
    """A channels-last convolution's backward (data gradient by GEMM + col2im, summed into a
    channels-first bottom diff by the compiled kernel, or by NumPy's col2im and a transposing
    copy): the same bits for the bottom diff and both param diffs, chunks of 3 images."""
    from caffepy.layers import conv
    from helpers import bwd, fwd
    if compiled.kernels() is None:
        pytest.skip("numba is not installed or CAFFEPY_COMPILED=0")
    monkeypatch.setattr(conv.ConvolutionLayer, "_full_is_cheaper", lambda self: False)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((7, 20, 12, 11)).astype(np.float32)
    text = ('type: "Convolution" convolution_param { num_output: 10 kernel_size: 5 pad: 1 '
            'group: %d weight_filler { type: "gaussian" std: 0.1 } '
            'bias_filler { type: "constant" value: 0.25 } }' % group)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 3 * 20 * 25 * 10 * 9 * 4)
    got = []
    for on, layer, bottom, top in layers_without_and_with_kernels(monkeypatch, text, x):
        assert layer._channels_last_is_better()
        y = fwd(layer, bottom, top)[0]
        assert layer.chunk == 3
        bwd(layer, bottom, top, [np.random.default_rng(3).standard_normal(y.shape)
                                 .astype(np.float32)])
        assert layer._full is None and (layer._compiled is not None) == on
        got.append([a.copy() for a in (bottom[0].diff, layer.blobs[0].diff,
                                       layer.blobs[1].diff)])
    for a, b in zip(*got):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_strided_arrays_take_the_numpy_path():
    """A column array that is not in C order is summed by the NumPy code even when a compiled
    kernel is offered (the kernel takes contiguous arrays only)."""
    case = CASES[0]
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    big = np.random.default_rng(1).standard_normal((m, OH, OW, G, kh, kw, 2 * C)).astype(
        np.float32)
    col = big[..., ::2]
    calls = []
    fake = types.SimpleNamespace(col2im_last_2d=lambda *a: calls.append(a))
    dx = np.empty((m, H, W, C), np.float32)
    col2im_last(col, dx, geom, fake)
    assert calls == []
    np.testing.assert_array_equal(dx, reference(np.ascontiguousarray(col), case, geom))


# -- im2col of channels-first chunks --------------------------------------------------------

def im2col_reference(x, geom, layout):
    """Caffe's im2col per window position, zeros outside the image: (m, C, kh, kw, OH, OW)
    for IMAGES, (C, kh, kw, m, OH, OW) for ROWS."""
    m, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    OH, OW = geom.out_shape
    col = np.zeros((m, C, kh, kw, OH, OW), np.float32)
    for a in range(kh):
        for b in range(kw):
            for oh in range(OH):
                for ow in range(OW):
                    ih, iw = oh * sh - ph + a * dh, ow * sw - pw + b * dw
                    if 0 <= ih < H and 0 <= iw < W:
                        col[:, :, a, b, oh, ow] = x[:, :, ih, iw]
    return col if layout == IMAGES else np.ascontiguousarray(col.transpose(1, 2, 3, 0, 4, 5))


def im2col_kernels_for(mode):
    if mode == "numpy":
        return None
    if mode == "python":
        return types.SimpleNamespace(im2col_images_2d=compiled.im2col_images_2d,
                                     im2col_rows_2d=compiled.im2col_rows_2d,
                                     im2col_images_strided_2d=compiled.im2col_images_strided_2d,
                                     im2col_rows_strided_2d=compiled.im2col_rows_strided_2d,
                                     windows_last_2d=compiled.windows_last_2d)
    return kernels_for(mode)


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("layout", [IMAGES, ROWS])
@pytest.mark.parametrize("case", CASES)
def test_im2col_channels_first_bits(mode, layout, case):
    """ChunkColumns.fill with and without the compiled kernel: Caffe's columns bit for bit,
    for a full chunk and a smaller last one (the buffer keeps stale values in between), and
    for a strided chunk (the kernel copies it to C order first)."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, _ = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    n = m + 1
    buf = np.full(ChunkColumns.values_needed(np, C, geom, n, layout), np.nan, np.float32)
    cols = ChunkColumns(np, C, geom, n, buf, layout, compiled_kernels=im2col_kernels_for(mode))
    assert (cols.nbytes == 0) == (mode != "numpy" or not cols.padded)   # no padded copy
    rng = np.random.default_rng(C * H + W)
    for images in (n, m):
        x = rng.standard_normal((images, C, H, W)).astype(np.float32)
        got = cols.fill(x)
        np.testing.assert_array_equal(got.view(np.uint32),
                                      im2col_reference(x, geom, layout).view(np.uint32))
    wide = rng.standard_normal((m, C, H, 2 * W)).astype(np.float32)
    np.testing.assert_array_equal(cols.fill(wide[..., ::2]),
                                  im2col_reference(wide[..., ::2], geom, layout))


@pytest.mark.parametrize("case", [c for c in CASES if c[7] > 1])
def test_im2col_strided_kernels_match_the_general_ones(case):
    """A horizontal stride above 1 has its own compiled kernels (runs of stride phases); the
    general ones, which any stride can use, give the same columns, bit for bit."""
    kern = kernels_for("numba")
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, _ = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    P, CK = geom.out_count, C * kh * kw
    x = np.random.default_rng(H * W).standard_normal((m, C, H, W)).astype(np.float32)
    for general, strided, shape in (
            (kern.im2col_images_2d, kern.im2col_images_strided_2d, (m, CK, P)),
            (kern.im2col_rows_2d, kern.im2col_rows_strided_2d, (C, kh, kw, m * P))):
        a = np.full(shape, np.nan, np.float32)
        b = np.full(shape, np.nan, np.float32)
        general(x, a, geom.int_params)
        strided(x, b, geom.int_params)
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("case", CASES)
def test_im2col_channels_last_bits(mode, case):
    """ChunkColumns.fill in the LAST layout (the compiled copy of the windows out of the
    channels-last padded chunk, or NumPy's strided copy): Caffe's columns, each window's
    (kernel position, channel) run in row-major order per group, bit for bit, for a full
    chunk, a smaller last one and a strided chunk; groups, dilation, stride, padding and a
    window past the padded image included."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    n = m + 1
    buf = np.full(n * C * kh * kw * geom.out_count, np.nan, np.float32)
    kern = im2col_kernels_for(mode)
    cols = ChunkColumns(np, C, geom, n, buf, LAST, G, compiled_kernels=kern)
    assert (cols._windows_kernel is not None) == (mode != "numpy")
    rng = np.random.default_rng(C * H + W + G)

    def reference(x):
        ref = im2col_reference(x, geom, IMAGES)          # (m, C, kh, kw, OH, OW)
        ref = ref.reshape(len(x), G, C // G, kh, kw, OH, OW)
        return np.ascontiguousarray(ref.transpose(0, 5, 6, 1, 3, 4, 2))

    for images in (n, m):
        x = rng.standard_normal((images, C, H, W)).astype(np.float32)
        got = cols.fill(x)
        assert got.shape == (images, OH, OW, G, kh, kw, C // G)
        np.testing.assert_array_equal(got.view(np.uint32), reference(x).view(np.uint32))
    wide = rng.standard_normal((m, C, H, 2 * W)).astype(np.float32)
    np.testing.assert_array_equal(cols.fill(wide[..., ::2]), reference(wide[..., ::2]))


# (m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G) and layout, whose column rows are a multiple
# of 2 KB: 32 × 32 outputs an image (CIFAR-10's first layer), 16 × 32 (stride 2), and 16
# images of 4 × 8 in a ROWS row (m·P = 512 values)
PADDED_ROW_CASES = [
    ((2, 3, 32, 32, 5, 5, 1, 1, 2, 2, 1, 1, 1), IMAGES),
    ((2, 3, 32, 32, 5, 5, 1, 1, 2, 2, 1, 1, 1), ROWS),
    ((1, 2, 32, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1), IMAGES),
    ((3, 2, 32, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1), ROWS),
    ((16, 2, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1), ROWS),
]


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("case, layout", PADDED_ROW_CASES)
def test_im2col_padded_rows(mode, case, layout):
    """Rows of 2 KB multiples are laid out ROW_PAD values apart (a row stride that does not
    alias in the CPU's caches): the columns are still Caffe's, bit for bit; they reshape to the
    GEMM's matrix without a copy, with that row stride; and the padding after each row is never
    written."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, _ = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    P, CK = geom.out_count, C * kh * kw
    length = P if layout == IMAGES else m * P
    assert (4 * length) % ROW_ALIAS_BYTES == 0
    assert row_length(length) == length + ROW_PAD
    need = ChunkColumns.values_needed(np, C, geom, m, layout)
    assert need == (m if layout == IMAGES else 1) * CK * (length + ROW_PAD)
    buf = np.full(need, np.nan, np.float32)
    cols = ChunkColumns(np, C, geom, m, buf, layout, compiled_kernels=im2col_kernels_for(mode))
    x = np.random.default_rng(P + C).standard_normal((m, C, H, W)).astype(np.float32)
    got = cols.fill(x)
    np.testing.assert_array_equal(got.view(np.uint32),
                                  im2col_reference(x, geom, layout).view(np.uint32))
    matrix = got.reshape(m, CK, P) if layout == IMAGES else got.reshape(CK, m * P)
    assert np.shares_memory(matrix, buf) and matrix.strides[-2] == 4 * (length + ROW_PAD)
    rows = buf.reshape(-1, length + ROW_PAD)
    assert np.isnan(rows[:, length:]).all() and not np.isnan(rows[:, :length]).any()
    with pytest.raises(ValueError, match="need %d" % need):
        ChunkColumns(np, C, geom, m, buf[:need - 1], layout)


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], PADDED_ROW_CASES[0][0]])
def test_im2col_row_of_ones(mode, case):
    """IMAGES columns with a row of ones per image (a convolution's bias in its product): the
    C·K rows are Caffe's columns bit for bit, then a row of P ones, then the row padding, never
    written; the ones are written again by every fill, after another ChunkColumns sharing the
    buffer has overwritten them."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, _ = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    P, CK = geom.out_count, C * kh * kw
    R = row_length(P)
    need = ChunkColumns.values_needed(np, C, geom, m, IMAGES, ones_row=True)
    assert need == m * (CK + 1) * R
    buf = np.full(need, np.nan, np.float32)
    kern = im2col_kernels_for(mode)
    cols = ChunkColumns(np, C, geom, m, buf, IMAGES, compiled_kernels=kern, ones_row=True)
    other = ChunkColumns(np, C, geom, m, buf, ROWS, compiled_kernels=kern)
    rng = np.random.default_rng(P)
    for first in (True, False):
        x = rng.standard_normal((m, C, H, W)).astype(np.float32)
        got = cols.fill(x)
        want = im2col_reference(x, geom, IMAGES)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        aug = cols.with_ones(m)
        assert aug.shape == (m, CK + 1, P) and np.shares_memory(aug, buf)
        np.testing.assert_array_equal(aug[:, :CK], want.reshape(m, CK, P))
        assert (aug[:, CK] == 1).all()
        if first:                               # (the other columns write past P)
            assert np.isnan(buf.reshape(m * (CK + 1), R)[:, P:]).all()
        other.fill(x)                           # overwrites part of the ones rows
        assert not (cols.with_ones(m)[:, CK] == 1).all()
    with pytest.raises(ValueError, match="row of ones is for the IMAGES layout"):
        ChunkColumns(np, C, geom, m, buf, ROWS, ones_row=True)


def test_rows_are_not_padded_for_other_lengths_or_arrays():
    """Only lengths of 2 KB multiples are padded, and only NumPy's: CuPy's columns (any array
    module but NumPy) stay dense."""
    assert [row_length(n) for n in (1, 500, 511, 513, 576, 1000)] == [1, 500, 511, 513, 576,
                                                                      1000]
    assert [row_length(n) for n in (512, 1024, 2048, 3072)] == [528, 1040, 2064, 3088]
    other = types.SimpleNamespace()
    assert row_length(1024, other) == 1024


# -- a convolution's bias term ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["python", "numba"])
def test_channel_bias_kernel_bits(mode):
    """y[n, c, p] += bias[c]: the same bits as NumPy's broadcast add, NaN and infinities
    included."""
    fn = compiled.add_channel_bias if mode == "python" else kernels_for(mode).add_channel_bias
    rng = np.random.default_rng(4)
    y = rng.standard_normal((3, 5, 37)).astype(np.float32)
    y[0, 1, :3] = [np.inf, -np.inf, np.nan]
    bias = (rng.standard_normal(5) * 100).astype(np.float32)
    bias[4] = -np.inf
    expect = y + bias.reshape(1, 5, 1)
    with np.errstate(invalid="ignore"):
        fn(y, bias)
    np.testing.assert_array_equal(y.view(np.uint32), expect.view(np.uint32))


@pytest.mark.parametrize("mode", ["python", "numba"])
def test_bias_from_last_kernel_bits(mode):
    """dst[n, c, p] = src[n, p, c] + bias[c]: the same bits as NumPy's add over the transposed
    view, NaN and infinities included; nothing past the destination's slice is written."""
    fn = (compiled.add_bias_from_last if mode == "python"
          else kernels_for(mode).add_bias_from_last)
    rng = np.random.default_rng(8)
    src = rng.standard_normal((3, 37, 5)).astype(np.float32)
    src[0, :3, 1] = [np.inf, -np.inf, np.nan]
    bias = (rng.standard_normal(5) * 100).astype(np.float32)
    bias[4] = -np.inf
    expect = src.swapaxes(1, 2) + bias.reshape(1, 5, 1)
    out = np.full((4, 5, 37), 7, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        fn(src, bias, out[1:])
    np.testing.assert_array_equal(out[1:].view(np.uint32), expect.view(np.uint32))
    assert (out[0] == 7).all()


@pytest.mark.parametrize("compiled_on", [False, True])
@pytest.mark.parametrize("channels,size,outputs,last", [(1, 28, 20, False), (20, 12, 50, True)])
def test_convolution_forward_with_bias_the_same_either_way(channels, size, outputs, last,
                                                           compiled_on, monkeypatch):
    """A convolution's forward with the compiled bias term or NumPy's add: the same bits, for a
    channels-first layer (LeNet's conv1 shape) and a channels-last one (LeNet's conv2 shape,
    whose products are transposed into the top with the bias added), a batch not divisible by
    the chunk; and the float64 reference."""
    from caffepy.layers import conv
    from helpers import fwd
    if compiled_on and compiled.kernels() is None:
        pytest.skip("numba is not installed or CAFFEPY_COMPILED=0")
    x = np.random.default_rng(5).standard_normal((7, channels, size, size)).astype(np.float32)
    text = ('type: "Convolution" convolution_param { num_output: %d kernel_size: 5 '
            'weight_filler { type: "constant" value: 0.01 } '
            'bias_filler { type: "constant" value: 0.25 } }' % outputs)
    out_size = size - 4
    # chunks of 3 images
    monkeypatch.setattr(conv, "CHUNK_BYTES", 3 * channels * 25 * out_size ** 2 * 4)
    got = []
    for on, layer, bottom, top in layers_without_and_with_kernels(monkeypatch, text, x,
                                                                  compiled_on):
        assert layer._channels_last_is_better() == last
        out = fwd(layer, bottom, top)[0]
        assert (layer._compiled is not None) == on
        assert layer.chunk == 3
        got.append(out.copy())
    np.testing.assert_array_equal(got[0].view(np.uint32), got[1].view(np.uint32))
    w = layer.blobs[0].data.astype(np.float64)
    cols = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (5, 5), axis=(2, 3))
    ref = (np.einsum("nchwij,ocij->nohw", cols, w)
           + layer.blobs[1].data.reshape(1, -1, 1, 1))
    np.testing.assert_allclose(got[1], ref, rtol=1e-4, atol=1e-4)
