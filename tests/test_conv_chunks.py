"""Convolution and Deconvolution chunk by chunk on a thread pool: values and gradients against a
float64 reference written per kernel offset, for every chunk size (one image, a remainder
chunk, the whole part), one and two threads; scratch memory that does not grow with the batch;
weight gradients that do not depend on thread timing; the thread pool and its setting."""
import itertools
import logging
import sys

import numpy as np
import pytest

from caffepy import backend, parallel_chunks
from caffepy.errors import CaffepyError
from caffepy.layers import conv
from helpers import bwd, fwd, make

FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


def ref_conv(x, w, dy, stride, pad, dil, group):
    """Caffe's convolution in float64, one kernel offset at a time, and its adjoints:
    y[n,o,p] = Σ_{c,k} w[o,c,k]·x[n, g·C/G + c, p·s − pad + k·d] (zeros outside; no bias),
    dx = ∂(Σ y·dy)/∂x and dw = ∂(Σ y·dy)/∂w. Returns (y, dx, dw)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    D = len(sp)
    O, ks = w.shape[0], w.shape[2:]
    out = tuple((sp[i] + 2 * pad[i] - (dil[i] * (ks[i] - 1) + 1)) // stride[i] + 1
                for i in range(D))
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    y = np.zeros((N, O) + out)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    dy = None if dy is None else np.asarray(dy, np.float64)
    Cg, Og = C // group, O // group
    for g in range(group):
        cs, os_ = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for k in itertools.product(*[range(kk) for kk in ks]):
            sl = tuple(slice(k[i] * dil[i], k[i] * dil[i] + (out[i] - 1) * stride[i] + 1,
                             stride[i]) for i in range(D))
            patch = xpad[(slice(None), cs) + sl]
            wk = w[(os_, slice(None)) + k]
            y[:, os_] += np.einsum("oc,nc...->no...", wk, patch)
            if dy is not None:
                dyg = dy[:, os_]
                axes = [0] + list(range(2, 2 + D))
                dw[(os_, slice(None)) + k] += np.tensordot(dyg, patch, axes=(axes, axes))
                dxpad[(slice(None), cs) + sl] += np.einsum("oc,no...->nc...", wk, dyg)
    dx = dxpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, sp))]
    return y, dx, dw


def chunk_of(monkeypatch, layer, images):
    """Chunks of ``images`` images for this layer (CHUNK_BYTES from its column size), and as
    many blocks as the batch allows, however small the layer (BLOCK_MIN_BYTES)."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", images * 4 * layer._col_values_per_image())
    monkeypatch.setattr(conv, "BLOCK_MIN_BYTES", 1)


def check_chunks(layer, batch, images):
    """The blocks' chunks cover the batch in order, none larger than ``images``."""
    chunks = [c for block in layer._blocks for c in block]
    starts = np.cumsum([0] + [m for _, m in chunks])
    assert [a for a, _ in chunks] == list(starts[:-1]) and starts[-1] == batch
    assert max(m for _, m in chunks) == layer.chunk <= images
    return chunks


# params, bottom shape, stride, pad, dilation, group
CONV_CASES = [
    ("num_output: 4 kernel_size: 3", (19, 3, 6, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (21, 3, 7, 6), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 2", (17, 4, 5, 5), (1, 1), (1, 1), (1, 1), 2),
    ("num_output: 4 kernel_size: 3 stride: 2 group: 2", (5, 6, 7, 7), (2, 2), (0, 0), (1, 1), 2),
    ("num_output: 2 kernel_size: 3 pad: 2 dilation: 2", (6, 2, 7, 6), (1, 1), (2, 2), (2, 2), 1),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
     (19, 2, 5, 7), (1, 2), (1, 0), (1, 1), 1),
    ("num_output: 5 kernel_size: 1", (3, 4, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 3", (1, 2, 4, 4), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 2 kernel_size: 3 kernel_size: 2 kernel_size: 2 pad: 1 pad: 0 pad: 1 "
     "stride: 1 stride: 2 stride: 1", (18, 2, 4, 5, 3), (1, 2, 1), (1, 0, 1), (1, 1, 1), 1),
    # 32 × 32 outputs: column rows of 4 KB, laid out a cache line apart (im2col.row_length)
    ("num_output: 3 kernel_size: 3 pad: 1", (5, 2, 32, 32), (1, 1), (1, 1), (1, 1), 1),
    # products with an inner dimension of 1 (parallel_chunks.matmul): one input value per
    # output (C·K = 1), one output channel, one output position
    ("num_output: 3 kernel_size: 1", (4, 1, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 1 kernel_size: 3 stride: 2", (6, 3, 5, 5), (2, 2), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3", (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),
]


@pytest.fixture(params=["channels-first", "channels-last"])
def lowering(request, monkeypatch):
    """Both im2col layouts of Convolution, whatever its own rule would choose."""
    last = request.param == "channels-last"
    monkeypatch.setattr(conv.ConvolutionLayer, "_channels_last_is_better", lambda self: last)
    return last


@pytest.fixture(params=["dw-per-chunk", "dw-per-image"])
def dw_per_image(request, monkeypatch):
    """Both ways of a channels-first weight gradient: one product over the chunk, or a product
    per image summed over the chunk (where the layer allows it: one group, weights no larger
    than an image's columns)."""
    per_image = request.param == "dw-per-image"
    monkeypatch.setattr(conv, "DW_PER_IMAGE_VALUES", 1 << 30 if per_image else 0)
    return per_image


@pytest.fixture(params=["bias-pass", "bias-in-product"])
def bias_in_product(request, monkeypatch):
    """Both ways of a channels-first bias: a pass adding it to the top and a product of the top
    diff with ones, or a row of ones under the columns and the bias as a column of the weights
    (where the layer allows it: one group)."""
    on = request.param == "bias-in-product"
    monkeypatch.setattr(conv, "BIAS_IN_PRODUCT", on)
    return on


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("images", [1, 2, 64])
@pytest.mark.parametrize("params,shape,stride,pad,dil,group", CONV_CASES)
def test_conv_chunks_match_reference(params, shape, stride, pad, dil, group, images, nthreads,
                                     lowering, dw_per_image, bias_in_product, threads,
                                     monkeypatch):
    threads(nthreads)
    x = rnd(*shape)
    layer, bottom, top = make('type: "Convolution" convolution_param { %s %s }'
                              % (params, FILLERS), [x])
    # a 1 × 1 kernel, stride 1, no padding, one group: the direct products, never lowered
    pointwise = (group == 1 and all(k == 1 for k in layer.kernel) and set(stride) == {1}
                 and not any(pad))
    assert layer._pointwise == pointwise
    assert layer._last == (lowering and not pointwise)
    chunk_of(monkeypatch, layer, images)
    y = fwd(layer, bottom, top)[0]
    assert layer._dw_per_image == (dw_per_image and not layer._last and group == 1
                                   and layer.blobs[0].count <= layer._col_values_per_image())
    assert layer._bias_row == (bias_in_product and not layer._last and not pointwise
                               and group == 1)
    chunks = check_chunks(layer, shape[0], images)
    if images == 2 and shape[0] > 16:
        assert {m for _, m in chunks} == {1, 2}         # some chunks full, some a remainder
    assert len(layer._parts) == min(nthreads, len(layer._blocks))
    w, b = layer.blobs[0].data, layer.blobs[1].data
    dy = rnd(*y.shape, seed=1)
    ry, rdx, rdw = ref_conv(x, w, dy, stride, pad, dil, group)
    close(y, ry + b.reshape((1, -1) + (1,) * (x.ndim - 2)))
    bwd(layer, bottom, top, [dy])
    close(bottom[0].diff, rdx)
    close(layer.blobs[0].diff, rdw)
    rdb = dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
    close(layer.blobs[1].diff, rdb)
    # param diffs accumulate (iter_size, shared weights): a second backward adds the blocks'
    # sums onto the first's, and the bottom diff is overwritten, not added to
    layer.backward(top, [True], bottom)
    close(bottom[0].diff, rdx)
    close(layer.blobs[0].diff, 2 * rdw)
    close(layer.blobs[1].diff, 2 * rdb)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("dw_transposed", [True, False])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_data_gradient_paths_in_chunks(group, full, dw_transposed, nthreads, lowering,
                                            dw_per_image, threads, monkeypatch):
    # stride 1: the data gradient as a convolution of the top diff, or GEMM + col2im; the
    # weight gradient as dWᵀ = col·dyᵀ or dW = dy·colᵀ; with one group, the columns with a
    # row of ones for the bias share their buffer with the top diff's (the full path)
    threads(nthreads)
    monkeypatch.setattr(conv.ConvolutionLayer, "_full_is_cheaper", lambda self: full)
    monkeypatch.setattr(conv, "DW_TRANSPOSED", dw_transposed)
    x = rnd(5, 4, 6, 5, seed=2)
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 6 '
                              'kernel_size: 3 pad: 1 group: %d %s }' % (group, FILLERS), [x])
    assert (layer._full is not None) == full
    chunk_of(monkeypatch, layer, 2)
    for _ in range(2):              # the second forward and backward after the buffer's reuse
        y = fwd(layer, bottom, top)[0]
        assert layer._bias_row == (group == 1 and not lowering)
        ry, _, _ = ref_conv(x, layer.blobs[0].data, None, (1, 1), (1, 1), (1, 1), group)
        close(y, ry + layer.blobs[1].data.reshape(1, -1, 1, 1))
        dy = rnd(*y.shape, seed=3)
        bwd(layer, bottom, top, [dy])
        _, rdx, rdw = ref_conv(x, layer.blobs[0].data, dy, (1, 1), (1, 1), (1, 1), group)
        close(bottom[0].diff, rdx)
        close(layer.blobs[0].diff, rdw)
        close(layer.blobs[1].diff, dy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("dw_transposed", [True, False])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("params,shape,stride,pad,group", [
    ("num_output: 6 kernel_size: 1", (7, 5, 4, 6), (1, 1), (0, 0), 1),
    ("num_output: 4 kernel_size: 1", (3, 9, 32, 32), (1, 1), (0, 0), 1),     # 4 KB rows
    ("num_output: 4 kernel_size: 1 stride: 2", (5, 3, 5, 5), (2, 2), (0, 0), 1),
    ("num_output: 4 kernel_size: 1 pad: 1", (5, 3, 4, 4), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_size: 1 group: 2", (5, 6, 4, 4), (1, 1), (0, 0), 2),
    ("num_output: 3 kernel_size: 1 kernel_size: 1 kernel_size: 1", (4, 2, 3, 2, 5),
     (1, 1, 1), (0, 0, 0), 1),
])
def test_pointwise_convolution(params, shape, stride, pad, group, nthreads, direct,
                               dw_transposed, threads, monkeypatch):
    """1 × 1 convolutions: with stride 1, no padding and one group the products read the bottom
    and top diff directly (no im2col columns are ever made); with a stride, padding or groups,
    or with POINTWISE_DIRECT off, they go through im2col. Both against the float64 reference,
    values and all three gradients, chunk sizes of one and two images, the weight gradient
    either way round."""
    threads(nthreads)
    monkeypatch.setattr(conv, "POINTWISE_DIRECT", direct)
    monkeypatch.setattr(conv, "DW_TRANSPOSED", dw_transposed)
    x = rnd(*shape)
    for images in (1, 2):
        layer, bottom, top = make('type: "Convolution" convolution_param { %s %s }'
                                  % (params, FILLERS), [x])
        assert layer._pointwise == (direct and group == 1 and set(stride) == {1} and not any(pad))
        chunk_of(monkeypatch, layer, images)
        y = fwd(layer, bottom, top)[0]
        dy = rnd(*y.shape, seed=1)
        bwd(layer, bottom, top, [dy])
        if layer._pointwise:
            assert all(not part.cols for part in layer._parts)
        w, b = layer.blobs[0].data, layer.blobs[1].data
        ry, rdx, rdw = ref_conv(x, w, dy, stride, pad, (1,) * len(stride), group)
        close(y, ry + b.reshape((1, -1) + (1,) * (x.ndim - 2)))
        close(bottom[0].diff, rdx)
        close(layer.blobs[0].diff, rdw)
        close(layer.blobs[1].diff, dy.sum(axis=(0,) + tuple(range(2, dy.ndim))))


def test_pointwise_weight_gradient_scratch_is_bounded_by_the_chunk(monkeypatch):
    """A 1 × 1 layer whose weights outnumber an image's values sums its weight gradient as one
    product over the chunk, not image by image: no chunk × C × O terms buffer, its scratch no
    larger than the chunk's bottom and top diff laid out again; the gradient still right."""
    x = rnd(12, 48, 3, 3)
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 96 '
                              'kernel_size: 1 %s }' % FILLERS, [x])
    chunk_of(monkeypatch, layer, 4)
    y = fwd(layer, bottom, top)[0]
    dy = rnd(*y.shape, seed=2)
    bwd(layer, bottom, top, [dy])
    assert layer._pointwise and not layer._dw_per_image
    # per worker: x and dy of a chunk laid out again, one weight-gradient sum and the bias
    # gradient's terms, ones and sum — less than the chunk's image-by-image terms would take
    m = layer.chunk
    bound = m * 9 * (48 + 96) + 48 * 96 + m * 96 + 9 + 96
    # (a worker that took no block, as the thread pool may hand them all to the other, has none)
    sizes = [sum(b.size for b in part.bufs.values()) for part in layer._parts]
    assert 0 < max(sizes) and all(s <= bound for s in sizes) and bound < m * 48 * 96
    _, _, rdw = ref_conv(x, layer.blobs[0].data, dy, (1, 1), (0, 0), (1, 1), 1)
    close(layer.blobs[0].diff, rdw)


@pytest.mark.parametrize("params,shape,full", [
    ("num_output: 32 pad: 2 kernel_size: 5", (100, 32, 16, 16), True),      # CIFAR-10 quick conv2
    ("num_output: 64 pad: 2 kernel_size: 5", (100, 32, 8, 8), False),       # its conv3
    ("num_output: 50 kernel_size: 5", (64, 20, 12, 12), False),             # LeNet's conv2
    ("num_output: 256 pad: 2 kernel_size: 5 group: 2", (4, 96, 27, 27), False),  # CaffeNet
    ("num_output: 384 pad: 1 kernel_size: 3 group: 2", (4, 384, 13, 13), True),
    ("num_output: 256 pad: 1 kernel_size: 3", (2, 256, 14, 14), True),      # a tie
])
def test_data_gradient_path_follows_the_copy_volume(params, shape, full):
    """Channels-last, the data gradient is a convolution of the top diff when that copies no
    more values (O·P_in, with the products' sizes) than Wᵀ·dy + col2im does (C·P_out): the
    choices measured fastest on these layers (docs/performance.md)."""
    layer, _, _ = make('type: "Convolution" convolution_param { %s %s }' % (params, FILLERS),
                       [rnd(*shape)])
    assert layer._last
    assert (layer._full is not None) == full


DECONV_CASES = [
    ("num_output: 3 kernel_size: 3", (19, 2, 4, 4), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (5, 2, 4, 3), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_size: 2 stride: 2 group: 2", (3, 4, 3, 3), (2, 2), (0, 0), (1, 1), 2),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 3, 4, 4), (1, 1), (1, 1), (2, 2), 1),
    # 16 × 32 positions an image: rows of the top diff's columns in 2 KB multiples
    ("num_output: 2 kernel_size: 3 pad: 1", (3, 2, 16, 32), (1, 1), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("images", [1, 2, 64])
@pytest.mark.parametrize("params,shape,stride,pad,dil,group", DECONV_CASES)
def test_deconv_chunks_match_reference(params, shape, stride, pad, dil, group, images,
                                       nthreads, threads, monkeypatch):
    # Deconvolution is the adjoint of the convolution that maps its top onto its bottom:
    # forward = that convolution's data gradient, backward data = that convolution's forward
    threads(nthreads)
    x = rnd(*shape)
    layer, bottom, top = make('type: "Deconvolution" convolution_param { %s %s }'
                              % (params, FILLERS), [x])
    chunk_of(monkeypatch, layer, images)
    y = fwd(layer, bottom, top)[0]
    check_chunks(layer, shape[0], images)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    dy = rnd(*y.shape, seed=1)
    u = np.zeros(y.shape)
    _, ry, _ = ref_conv(u, w, x, stride, pad, dil, group)
    close(y, ry + b.reshape(1, -1, 1, 1))
    bwd(layer, bottom, top, [dy])
    rdx, _, rdw = ref_conv(dy, w, x, stride, pad, dil, group)
    close(bottom[0].diff, rdx)
    close(layer.blobs[0].diff, rdw)
    close(layer.blobs[1].diff, dy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_same_bits_for_any_thread_count(kind, lowering, threads, monkeypatch):
    # blocks and chunks depend on the batch only, each block sums its own chunks and the
    # blocks are added in order: the same bits for 1, 2 or 3 threads and every repeat
    x = rnd(21, 4, 6, 6, seed=4)
    layer, bottom, top = make('type: "%s" convolution_param { num_output: 4 kernel_size: 3 '
                              'pad: 1 %s }' % (kind, FILLERS), [x])
    chunk_of(monkeypatch, layer, 2)
    runs = []
    for nthreads in (1, 2, 3, 2, 1):
        threads(nthreads)
        y = fwd(layer, bottom, top)[0]
        assert len(layer._blocks) > 3 and len(layer._parts) == min(nthreads, len(layer._blocks))
        bwd(layer, bottom, top, [rnd(*y.shape, seed=5)])
        runs.append([y, bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            np.testing.assert_array_equal(a, b)


def conv_scratch(batch, text, shape):
    """(bytes of each worker's scratch, bytes of the rest) after two training passes."""
    layer, bottom, top = make(text, [rnd(batch, *shape)])
    for _ in range(2):
        y = fwd(layer, bottom, top)[0]
        bwd(layer, bottom, top, [np.ones_like(y)])
    workers = [p.nbytes() for p in layer._parts]
    return workers, layer.scratch_bytes() - sum(workers), layer


@pytest.mark.parametrize("text,shape,per_image,chunk", [
    # CIFAR-10 quick's conv2: 32 channels of 16×16, 5×5 kernel, pad 2 — 800 KB of columns an
    # image, two images a chunk (CHUNK_BYTES, 2 MB)
    ('type: "Convolution" convolution_param { num_output: 32 kernel_size: 5 pad: 2 %s }'
     % FILLERS, (32, 16, 16), 800 * 256 * 4, 2),
    # LeNet's conv2: 500 × 64 columns, 125 KB an image, 16 images a chunk
    ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 %s }' % FILLERS,
     (20, 12, 12), 500 * 64 * 4, 16),
    # a stride-2 Deconvolution: (O·K) × P_in = 1024 × 256 columns, 1 MB an image
    ('type: "Deconvolution" convolution_param { num_output: 64 kernel_size: 4 stride: 2 '
     'pad: 1 %s }' % FILLERS, (32, 16, 16), 1024 * 256 * 4, 2),
])
def test_scratch_does_not_grow_with_the_batch(text, shape, per_image, chunk, threads):
    threads(1)
    (w4,), shared4, layer4 = conv_scratch(4, text, shape)
    (w64,), shared64, layer = conv_scratch(64, text, shape)
    (w256,), shared256, _ = conv_scratch(256, text, shape)
    assert layer.chunk == chunk
    assert w64 == w256 and shared4 == shared64 == shared256
    # (a batch of 4 may give smaller chunks: fewer images than LeNet's chunk of 16, or a block
    # an image where the batch is split among the blocks)
    assert w4 == w64 if layer4.chunk == chunk else w4 < w64
    # a thread: a chunk's columns, padded images, top and bottom diffs transposed, a gradient
    # term — under 2 chunks of columns; the rest: a weight-gradient sum per block and the
    # weights rearranged, a few times the weights
    assert chunk * per_image < w64 <= 2 * chunk * per_image
    weights = 4 * (layer.blobs[0].count + layer.blobs[1].count)
    assert shared64 <= (layer._block_cap + 2) * weights
    assert w256 + shared256 < 256 * per_image / 8       # the whole batch's columns
    # two threads: each keeps at most what one thread keeps, and the rest does not change
    threads(2)
    workers, shared, layer = conv_scratch(64, text, shape)
    assert len(workers) == 2 and max(workers) == w64 and shared == shared64


def test_conv_thread_count_change_replans(threads, monkeypatch):
    threads(1)
    text = ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 %s }'
            % FILLERS)
    x = rnd(6, 2, 5, 5)
    layer, bottom, top = make(text, [x])
    chunk_of(monkeypatch, layer, 1)
    y1 = fwd(layer, bottom, top)[0]
    assert len(layer._parts) == 1
    threads(2)
    y2 = fwd(layer, bottom, top)[0]
    assert len(layer._parts) == 2
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_empty_batch(kind, lowering):
    # no images: an empty top, and backward adds nothing to the param diffs
    layer, bottom, top = make('type: "%s" convolution_param { num_output: 4 kernel_size: 3 '
                              'pad: 1 %s }' % (kind, FILLERS), [rnd(0, 3, 5, 5)])
    layer.forward(bottom, top)
    assert top[0].shape == (0, 4, 5, 5)
    for b in layer.blobs:
        b.diff[...] = 0.25
    layer.backward(top, [True], bottom)
    assert all((b.diff == 0.25).all() for b in layer.blobs)


def test_small_layers_are_one_block():
    # a layer whose whole batch of columns is under BLOCK_MIN_BYTES is not split across
    # threads: two threads' short NumPy calls would mostly wait for each other's GIL
    text = ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 %s }'
            % FILLERS)
    layer, bottom, top = make(text, [rnd(6, 2, 5, 5)])
    fwd(layer, bottom, top)
    assert len(layer._blocks) == 1 and len(layer._parts) == 1
    # LeNet's conv2 (128 KB of columns an image): 64 images are 8 MB, room for seven blocks
    # of 1 MB; blocks come in powers of two (even shares for 2, 4, … threads): four blocks of
    # 16 images, each one chunk (2 MB of columns)
    assert conv.BLOCK_MIN_BYTES == 1 << 20 and conv.CHUNK_BYTES == 2 << 20
    text = ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 %s }'
            % FILLERS)
    layer, bottom, top = make(text, [rnd(64, 20, 12, 12)])
    fwd(layer, bottom, top)
    assert layer._blocks == [[(a, 16)] for a in range(0, 64, 16)]


# -- the pool ---------------------------------------------------------------------------------

def test_split_ranges():
    assert parallel_chunks.split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert parallel_chunks.split(64, 2) == [(0, 32), (32, 64)]
    assert parallel_chunks.split(2, 4) == [(0, 1), (1, 2)]
    assert parallel_chunks.split(1, 2) == [(0, 1)]
    assert parallel_chunks.split(5, 1) == [(0, 5)]


def test_run_every_part_once_on_two_threads(threads):
    import threading
    threads(2)
    seen = {}

    def part(p):
        seen[p] = threading.current_thread().name

    parallel_chunks.run(part, 2)
    assert sorted(seen) == [0, 1]
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("caffepy-chunks")


def test_run_blocks_every_block_once_in_order(threads):
    import threading
    threads(2)
    seen = []
    lock = threading.Lock()

    def block(worker, b):
        with lock:
            seen.append((b, worker, threading.current_thread().name))

    parallel_chunks.run_blocks(block, 9)
    assert sorted(b for b, _, _ in seen) == list(range(9))
    assert [b for b, _, _ in seen][:2] in ([0, 1], [1, 0])      # handed out in order
    me = threading.current_thread().name
    assert all((w == 0) == (name == me) for _, w, name in seen)
    threads(1)
    seen.clear()
    parallel_chunks.run_blocks(block, 3)
    assert seen == [(0, 0, me), (1, 0, me), (2, 0, me)]


def test_run_reraises_a_part_error(threads):
    threads(2)
    done = []

    def part(p):
        if p == 1:
            raise ValueError("part one failed")
        done.append(p)

    with pytest.raises(ValueError, match="part one failed"):
        parallel_chunks.run(part, 2)
    assert done == [0]


def test_pool_holds_blas_to_one_thread(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(1)
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()
              if i["user_api"] == "blas"]
    threads(2)
    assert parallel_chunks.parts() == 2
    assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info()
               if i["user_api"] == "blas")
    threads(1)
    assert parallel_chunks.parts() == 1
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"] == before


@pytest.mark.parametrize("asked,level", [("2", logging.WARNING), ("", logging.INFO)])
def test_without_threadpoolctl_runs_serially(asked, level, threads, monkeypatch, caplog):
    # BLAS's threads cannot be held to one: the pool would fight them, so caffepy runs
    # serially, with a warning where the user asked for threads, a note where it is the default
    threads(1)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    monkeypatch.setattr(parallel_chunks, "_warned", False)
    monkeypatch.setenv("CAFFEPY_NUM_THREADS", asked)
    backend.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="caffepy"):
        assert parallel_chunks.get_pool() is None and parallel_chunks.parts() == 1
    notes = [r for r in caplog.records if "threadpoolctl" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == level
    assert "2 threads need the threadpoolctl package" in notes[0].getMessage()


@pytest.mark.parametrize("text,value", [("3", 3), ("1", 1), (" 2 ", 2)])
def test_num_threads_from_environment(text, value, monkeypatch):
    monkeypatch.setattr(backend, "_num_threads", None)
    monkeypatch.setenv("CAFFEPY_NUM_THREADS", text)
    assert backend.num_threads() == value
    monkeypatch.setenv("CAFFEPY_NUM_THREADS", "7")
    assert backend.num_threads() == value               # read once


def test_num_threads_default_is_the_cores(monkeypatch):
    monkeypatch.setattr(backend, "_num_threads", None)
    monkeypatch.delenv("CAFFEPY_NUM_THREADS", raising=False)
    assert backend.num_threads() == backend.cpu_cores() >= 1


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_num_threads_bad_value(text, monkeypatch):
    monkeypatch.setattr(backend, "_num_threads", None)
    monkeypatch.setenv("CAFFEPY_NUM_THREADS", text)
    with pytest.raises(CaffepyError, match="CAFFEPY_NUM_THREADS must be a positive integer"):
        backend.num_threads()
    with pytest.raises(CaffepyError, match="must be positive"):
        backend.set_num_threads(0)
