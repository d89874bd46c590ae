"""Pooling, ReLU and InnerProduct split across the thread pool (caffepy.parallel_chunks): with
the size thresholds lowered so that even small test blobs are split, two threads give the same
bits as one, and the values match hand-computed or float64 references on odd shapes (plane
counts that do not divide evenly, ceil-mode edges, padding, in-place ReLU, transposed weights).
"""
import numpy as np
import pytest

from caffepy import backend, parallel_chunks
from helpers import bwd, fwd, make


@pytest.fixture
def split_everything(monkeypatch, threads):
    """Lower the split thresholds to nothing; returns set_threads(n) (conftest's ``threads``)."""
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_BYTES_COMPILED", 0)
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_MACS", 0)
    return threads


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_layer(text, bottoms, top_diffs, ntop=None):
    layer, bottom, top = make(text, bottoms, ntop)
    outs = fwd(layer, bottom, top)
    bwd(layer, bottom, top, top_diffs)
    return layer, outs, [b.diff.copy() for b in bottom], [p.diff.copy() for p in layer.blobs]


def ref_pool(x, k, s, p, method):
    """Caffe's pooling in float64 with ceil-mode output size; MAX keeps the first maximum."""
    N, C, H, W = x.shape
    OH = -(-(H + 2 * p - k) // s) + 1
    OW = -(-(W + 2 * p - k) // s) + 1
    if p and (OH - 1) * s >= H + p:
        OH -= 1
    if p and (OW - 1) * s >= W + p:
        OW -= 1
    y = np.zeros((N, C, OH, OW))
    arg = np.zeros((N, C, OH, OW), dtype=np.int64)
    for i in range(OH):
        for j in range(OW):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, H + p), min(ws + k, W + p)
            size = (he - hs) * (we - ws)
            h0, w0, h1, w1 = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1).astype(np.float64)
            if method == "MAX":
                a = win.argmax(axis=2)
                y[:, :, i, j] = win.max(axis=2)
                arg[:, :, i, j] = (h0 + a // (w1 - w0)) * W + w0 + a % (w1 - w0)
            else:
                y[:, :, i, j] = win.sum(axis=2) / size
    return y, arg


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("N,C,H,W,k,s,p", [(3, 5, 7, 9, 3, 2, 0), (1, 3, 6, 6, 3, 2, 1),
                                           (2, 7, 5, 4, 2, 1, 0)])
def test_pooling_split_over_planes(split_everything, method, N, C, H, W, k, s, p):
    x = rnd(N, C, H, W)
    text = ('type: "Pooling" pooling_param { pool: %s kernel_size: %d stride: %d pad: %d }'
            % (method, k, s, p))
    yref, arg = ref_pool(x, k, s, p, method)
    dy = rnd(*yref.shape, seed=1)
    results = []
    for threads in (1, 2):
        split_everything(threads)
        layer, outs, dxs, _ = run_layer(text, [x], [dy])
        assert len(layer.kerns) == min(threads, N * C)
        results.append((outs[0], dxs[0]))
        np.testing.assert_allclose(outs[0], yref, rtol=1e-6, atol=1e-6)
        if method == "MAX":
            # each top diff lands on its window's first maximum
            dxref = np.zeros(N * C * H * W)
            np.add.at(dxref, (np.arange(N * C)[:, None] * H * W
                              + arg.reshape(N * C, -1)).ravel(), dy.astype(np.float64).ravel())
            np.testing.assert_allclose(dxs[0].ravel(), dxref, rtol=1e-6, atol=1e-6)
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert results[0][1].tobytes() == results[1][1].tobytes()


def test_compiled_two_by_two_max_pooling_counts_a_quarter_of_its_bytes(threads):
    """The compiled 2 x 2, stride 2 MAX kernel passes over the image once, about as fast as
    the phase-grid kernels over a quarter of it, so it is split among the threads only from
    four times the bytes (MIN_SPLIT_BYTES): an input of 1.2 MB is one part on two threads for
    2 x 2 windows, two parts for 3 x 3 windows (and for 2 x 2 without numba)."""
    from caffepy.kernels import compiled
    threads(2)
    x = rnd(2, 16, 96, 96)
    assert parallel_chunks.MIN_SPLIT_BYTES < x.nbytes < 4 * parallel_chunks.MIN_SPLIT_BYTES
    for k, parts in ((3, 2), (2, 1 if compiled.kernels() is not None else 2)):
        text = 'type: "Pooling" pooling_param { pool: MAX kernel_size: %d stride: 2 }' % k
        layer, bottom, top = make(text, [x])
        y = fwd(layer, bottom, top)[0]
        assert len(layer.kerns) == parts
        yref, _ = ref_pool(x, k, 2, 0, "MAX")
        np.testing.assert_array_equal(y, yref.astype(np.float32))
    avg = 'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }'
    layer, bottom, top = make(avg, [x])
    fwd(layer, bottom, top)
    assert len(layer.kerns) == 2


def test_compiled_elementwise_passes_split_only_when_large(threads, monkeypatch):
    """A compiled element-wise pass runs at the speed of memory, so it is split among the
    threads only from MIN_SPLIT_BYTES_COMPILED (counting all its arrays), a NumPy one from
    MIN_SPLIT_BYTES; the parts cover the arrays in order either way."""
    threads(2)
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_BYTES", 1000)
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_BYTES_COMPILED", 4000)
    seen = []

    def record(a, b):
        seen.append((a[0], a.shape[0]))
        b[...] = 2 * a
    for n, compiled_pass, parts in ((100, False, 1), (300, False, 2), (300, True, 1),
                                    (501, True, 2)):
        seen.clear()
        a = np.arange(n, dtype=np.float32)
        b = np.zeros(n, np.float32)
        parallel_chunks.elementwise(record, (a, b), compiled=compiled_pass)
        assert len(seen) == parts and sum(m for _, m in seen) == n
        np.testing.assert_array_equal(b, 2 * a)


def test_max_pooling_mask_top_split(split_everything):
    x = rnd(2, 3, 6, 7)
    text = ('type: "Pooling" top: "y" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 3 stride: 2 }')
    _, arg = ref_pool(x, 3, 2, 0, "MAX")
    split_everything(2)
    layer, bottom, top = make(text, [x], 2)
    outs = fwd(layer, bottom, top)
    assert len(layer.kerns) == 2
    np.testing.assert_array_equal(outs[1], arg.astype(np.float32))


@pytest.mark.parametrize("slope", [0.0, 0.25])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_split(split_everything, slope, in_place):
    x = rnd(3, 5, 7)
    dy = rnd(3, 5, 7, seed=1)
    expect_y = np.where(x > 0, x, slope * x)
    expect_dx = dy * np.where(x > 0, 1, slope).astype(np.float32)
    got = []
    for threads in (1, 2):
        split_everything(threads)
        text = 'type: "ReLU" relu_param { negative_slope: %g }' % slope
        layer, bottom, top = make(text, [x.copy()])
        if in_place:
            top = bottom
        outs = fwd(layer, bottom, top)
        np.testing.assert_allclose(outs[0], expect_y, rtol=1e-7)
        bwd(layer, bottom, top, [dy])
        np.testing.assert_allclose(bottom[0].diff, expect_dx, rtol=1e-7)
        got.append((outs[0].tobytes(), bottom[0].diff.tobytes()))
    assert got[0] == got[1]


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("M", [1, 5, 9])
def test_inner_product_split_rows(split_everything, transpose, M):
    K, N = 13, 6
    x = rnd(M, K)
    dy = rnd(M, N, seed=1)
    text = ('type: "InnerProduct" inner_product_param { num_output: %d transpose: %s '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }'
            % (N, "true" if transpose else "false"))
    got = []
    for threads in (1, 2):
        split_everything(threads)
        backend.set_random_seed(3)
        layer, outs, dxs, pdiffs = run_layer(text, [x], [dy])
        w = layer.blobs[0].data.astype(np.float64)
        W = w.T if transpose else w                 # (N, K)
        b = layer.blobs[1].data.astype(np.float64)
        np.testing.assert_allclose(outs[0], x @ W.T + b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dxs[0], dy.astype(np.float64) @ W, rtol=1e-5, atol=1e-5)
        dW = dy.astype(np.float64).T @ x
        np.testing.assert_allclose(pdiffs[0], dW.T if transpose else dW, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pdiffs[1], dy.sum(axis=0), rtol=1e-5, atol=1e-5)
        got.append([a.tobytes() for a in outs + dxs + pdiffs])
    assert got[0] == got[1]


@pytest.mark.parametrize("shapes", [((5, 1), (1, 7)), ((3, 4, 1), (3, 1, 6)),
                                    ((2, 1), (1, 1)), ((4, 3), (3, 5))])
def test_matmul_of_inner_dimension_one(shapes):
    """parallel_chunks.matmul: an outer product (inner dimension 1) is a broadcast multiply,
    the same values as NumPy's product, bit for bit; transposed views and stacks included;
    other shapes go to matmul."""
    (sa, sb), rng = shapes, np.random.default_rng(7)
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb[:-2] + sb[:-3:-1]).astype(np.float32).swapaxes(-1, -2)
    out = np.full(np.broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1]), np.nan,
                  np.float32)
    parallel_chunks.matmul(np, a, b, out)
    np.testing.assert_array_equal(out, np.matmul(a, b))
    np.testing.assert_allclose(out, np.matmul(a.astype(np.float64), b), rtol=1e-6)


def test_gemm_row_blocks_depend_on_shape_only(monkeypatch):
    saved = backend._num_threads
    try:
        for threads in (1, 2, 4):
            backend.set_num_threads(threads)
            assert parallel_chunks.gemm_row_blocks(64, 500, 800) == [(0, 32), (32, 64)]
            assert parallel_chunks.gemm_row_blocks(64, 10, 500) == [(0, 64)]
            assert parallel_chunks.gemm_row_blocks(3, 4000, 4000) == [(0, 3)]
    finally:
        backend._num_threads = saved
        parallel_chunks.get_pool()


def test_sgd_update_and_weight_decay_split(split_everything):
    """The L2 weight decay (diff += decay·w) and the SGD step (h = m·h + lr·diff; diff = h) on
    a param split in halves: the hand-computed float32 values, the same bits for 1 and 2
    threads (with or without the compiled kernel)."""
    from caffepy.regularizers.weight_decay import apply_weight_decay
    from caffepy.solver.updaters import SGDRule
    from caffepy.proto import caffe_pb2

    param = caffe_pb2.SolverParameter(momentum=0.9)
    w = rnd(1001)
    g = rnd(1001, seed=1)
    h0 = rnd(1001, seed=2)
    f = np.float32
    expect_diff = g + f(0.0005) * w
    expect_h = f(0.9) * h0 + f(0.01) * expect_diff
    got = []
    for threads in (1, 2):
        split_everything(threads)
        diff, h, temp = g.copy(), h0.copy(), np.empty_like(w)
        apply_weight_decay("L2", 0.0005, w, diff, temp)
        np.testing.assert_array_equal(diff, expect_diff)
        SGDRule(param).update(diff, [h], 0.01, 0, {})
        np.testing.assert_allclose(h, expect_h, rtol=1e-6)
        np.testing.assert_array_equal(diff, h)
        got.append(h.tobytes())
    assert got[0] == got[1]


@pytest.mark.parametrize("rtype", ["L2", "L1"])
@pytest.mark.parametrize("with_decay", [False, True])
def test_weight_decay_small_work_buffer(split_everything, rtype, with_decay):
    """A work buffer far shorter than the param (walked block by block, two threads each with
    their share) gives the bits of one whole-param buffer: L2 diff += λ·(w⊙D), L1 diff +=
    λ·sign(w)⊙D."""
    from caffepy.regularizers.weight_decay import apply_weight_decay

    w = rnd(1003)
    w[::7] = 0
    g = rnd(1003, seed=1)
    decay = np.abs(rnd(1003, seed=2)) if with_decay else None
    d = np.ones(1003, np.float32) if decay is None else decay
    f = np.float32
    lam = f(0.004)
    expect = g + (w * d if rtype == "L2" else np.sign(w) * d) * lam
    for threads, temp_len in ((1, 1003), (1, 10), (2, 64), (2, 1)):
        split_everything(threads)
        diff = g.copy()
        apply_weight_decay(rtype, lam, w, diff, np.empty(temp_len, np.float32), decay)
        np.testing.assert_array_equal(diff, expect)


def test_accumulated_product_in_row_blocks(split_everything, monkeypatch):
    """out += a·b with a work buffer of a few rows: many blocks (a remainder block too), one
    or two threads, the float64 value; the work arrays asked for are never larger than a
    block."""
    monkeypatch.setattr(parallel_chunks, "ACCUMULATE_BLOCK_BYTES", 4 * 3 * 11)
    a, b = rnd(13, 5), rnd(5, 11, seed=1)
    out0 = rnd(13, 11, seed=2)
    sizes = []
    bufs = {}

    def scratch(worker, rows):
        sizes.append(rows)
        return bufs.setdefault(worker, np.empty((rows, 11), np.float32))

    got = []
    for threads in (1, 2):
        split_everything(threads)
        out = out0.copy()
        parallel_chunks.matmul_rows(np, a, b, out, scratch)
        np.testing.assert_allclose(out, out0 + a.astype(np.float64) @ b, rtol=1e-5, atol=1e-6)
        got.append(out.tobytes())
    assert got[0] == got[1]
    assert parallel_chunks.gemm_row_blocks(13, 11, 5, 4 * 3 * 11) == [
        (0, 3), (3, 6), (6, 9), (9, 11), (11, 13)]
    assert max(sizes) == 3


@pytest.mark.parametrize("transposed", [False, True])
def test_product_in_column_blocks(split_everything, transposed):
    """out = a·b as column blocks of b and out (an odd width, so the halves differ), b a
    transposed view or not: the float64 value, the same bits for one and two threads, and
    two blocks fixed by the shapes."""
    a = rnd(4, 9)
    b = rnd(7, 9, seed=1).T if transposed else rnd(9, 7, seed=1)
    got = []
    for threads in (1, 2):
        split_everything(threads)
        out = np.full((4, 7), np.nan, np.float32)
        parallel_chunks.matmul_cols(np, a, b, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-6)
        got.append(out.tobytes())
        assert parallel_chunks.gemm_row_blocks(7, 4, 9) == [(0, 4), (4, 7)]
    assert got[0] == got[1]


@pytest.mark.parametrize("with_bias", [False, True])
def test_wide_product_computed_transposed(split_everything, with_bias):
    """out = a·bᵀ (+ bias) for a wide product (an odd width at least 4 times the height): as
    (b·aᵀ)ᵀ in two column blocks fixed by the shapes, the float64 value, the same bits for one
    and two threads, each of them the bits of the transposed product; a narrower product and
    a single row are left to the caller."""
    a, w = rnd(3, 9), rnd(13, 9, seed=1)
    bias = rnd(13, seed=2) if with_bias else None
    work = []

    def scratch(shape):
        work.append(shape)
        return np.full(shape, np.nan, np.float32)

    got = []
    for threads in (1, 2):
        split_everything(threads)
        out = np.full((3, 13), np.nan, np.float32)
        assert parallel_chunks.matmul_transposed_out(np, a, w.T, out, scratch, bias)
        ref = a.astype(np.float64) @ w.T.astype(np.float64)
        if with_bias:
            ref += bias
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        expect = np.concatenate([np.matmul(w[:7], a.T).T, np.matmul(w[7:], a.T).T], axis=1)
        if with_bias:
            expect = expect + bias
        np.testing.assert_array_equal(out, expect)
        got.append(out.tobytes())
    assert got[0] == got[1] and work == [(13, 3), (13, 3)]
    assert parallel_chunks.gemm_row_blocks(13, 3, 9) == [(0, 7), (7, 13)]
    out = np.zeros((4, 13), np.float32)
    assert not parallel_chunks.matmul_transposed_out(np, rnd(4, 9), w.T, out, scratch)
    assert not parallel_chunks.matmul_transposed_out(np, rnd(1, 9), w.T, out[:1], scratch)
    assert not out.any() and len(work) == 2


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_short_batch(split_everything, transpose):
    """A batch of 3 through 40 outputs (the forward computed transposed unless the weights are
    stored transposed): top, bottom and param diffs against float64, one and two threads the
    same bits."""
    x, dy = rnd(3, 2, 5), rnd(3, 40, seed=1)
    text = ('type: "InnerProduct" inner_product_param { num_output: 40 transpose: %s '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }'
            % ("true" if transpose else "false"))
    wv, bv = rnd(40, 10, seed=2), rnd(40, seed=3)
    w, b = wv.astype(np.float64), bv.astype(np.float64)
    got = []
    for threads in (1, 2):
        split_everything(threads)
        layer, bottom, top = make(text, [x])
        layer.blobs[0].data[...] = wv.T if transpose else wv
        layer.blobs[1].data[...] = bv
        outs = fwd(layer, bottom, top)
        bwd(layer, bottom, top, [dy])
        dxs, dps = [bottom[0].diff.copy()], [p.diff.copy() for p in layer.blobs]
        xf = x.reshape(3, 10).astype(np.float64)
        np.testing.assert_allclose(outs[0], xf @ w.T + b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dxs[0].reshape(3, 10), dy @ w, rtol=1e-5, atol=1e-5)
        dw = dy.T.astype(np.float64) @ xf
        np.testing.assert_allclose(dps[0], dw.T if transpose else dw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dps[1], dy.sum(axis=0), rtol=1e-5, atol=1e-5)
        assert ("yt" in getattr(layer, "_scratch", {})) == (not transpose)
        got.append(b"".join(a.tobytes() for a in outs + dxs + dps))
    assert got[0] == got[1]


@pytest.fixture
def hand_offs(monkeypatch):
    """The block counts of every hand-off to the pool (parallel_chunks.run_blocks) from now."""
    calls = []
    run_blocks = parallel_chunks.run_blocks

    def counting(fn, nblocks):
        calls.append(nblocks)
        return run_blocks(fn, nblocks)
    monkeypatch.setattr(parallel_chunks, "run_blocks", counting)
    return calls


def test_inner_product_backward_hands_both_gradients_to_the_pool_at_once(split_everything,
                                                                         hand_offs):
    """InnerProduct's backward runs the blocks of its weight gradient and of its data gradient
    in one hand-off to the pool (each hand-off wakes a thread), with the same results as one
    thread."""
    M, K, N = 6, 12, 10
    x, dy = rnd(M, K), rnd(M, N, seed=1)
    text = ('type: "InnerProduct" inner_product_param { num_output: %d '
            'weight_filler { type: "gaussian" std: 1 } }' % N)
    got = []
    for threads in (1, 2):
        split_everything(threads)
        layer, bottom, top = make(text, [x])
        layer.blobs[0].data[...] = rnd(N, K, seed=2)
        fwd(layer, bottom, top)
        hand_offs.clear()
        bwd(layer, bottom, top, [dy])
        assert hand_offs == [4]             # two row blocks of dW and two column blocks of dx
        w = layer.blobs[0].data.astype(np.float64)
        np.testing.assert_allclose(layer.blobs[0].diff, dy.T.astype(np.float64) @ x,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bottom[0].diff, dy @ w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=0), rtol=1e-5, atol=1e-5)
        got.append(layer.blobs[0].diff.tobytes() + bottom[0].diff.tobytes())
    assert got[0] == got[1]


def test_small_inner_product_backward_makes_no_hand_off(threads, hand_offs):
    """Products too small to split (LeNet's ip2: 64 x 500 -> 10) run on the calling thread: a
    weight and a data gradient of one block each are not handed to the pool together."""
    M, K, N = 64, 500, 10
    x, dy = rnd(M, K), rnd(M, N, seed=1)
    assert M * K * N < parallel_chunks.MIN_SPLIT_MACS
    text = ('type: "InnerProduct" inner_product_param { num_output: %d '
            'weight_filler { type: "gaussian" std: 1 } }' % N)
    threads(2)
    layer, bottom, top = make(text, [x])
    fwd(layer, bottom, top)
    bwd(layer, bottom, top, [dy])
    assert hand_offs == []
    np.testing.assert_allclose(layer.blobs[0].diff, dy.T.astype(np.float64) @ x,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(bottom[0].diff, dy @ layer.blobs[0].data.astype(np.float64),
                               rtol=1e-5, atol=1e-5)


def test_inner_product_weight_gradient_scratch_is_a_block(monkeypatch):
    """The weight-gradient work memory of a large InnerProduct is a block of rows
    (ACCUMULATE_BLOCK_BYTES per thread), not a second weight-sized array, and the gradient
    accumulates onto the diff as Caffe's GEMM with beta = 1."""
    monkeypatch.setattr(parallel_chunks, "ACCUMULATE_BLOCK_BYTES", 4 * 8 * 300)
    M, K, N = 4, 300, 64
    x, dy = rnd(M, K), rnd(M, N, seed=1)
    text = ('type: "InnerProduct" inner_product_param { num_output: %d '
            'weight_filler { type: "gaussian" std: 1 } }' % N)
    layer, bottom, top = make(text, [x])
    fwd(layer, bottom, top)
    layer.blobs[0].diff[...] = 1
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 1 + dy.T.astype(np.float64) @ x,
                               rtol=1e-5, atol=1e-5)
    work = [v for k, v in layer._scratch.items() if k.startswith("dw")]
    assert work and all(v.shape == (8, K) for v in work)


def ref_lrn(x, n, alpha, beta, k, across):
    """LRN in float64: the scale k + α/n·Σ x² over n channels (ACROSS_CHANNELS) or
    1 + α/n²·Σ x² over the zero-padded n×n window (WITHIN_CHANNEL); y = x·scale^−β."""
    x = x.astype(np.float64)
    N, C, H, W = x.shape
    pre = (n - 1) // 2
    sq = x * x
    if across:
        pad = np.zeros((N, C + n - 1, H, W))
        pad[:, pre:pre + C] = sq
        s = sum(pad[:, i:i + C] for i in range(n))
        scale = k + alpha / n * s
    else:
        pad = np.zeros((N, C, H + n - 1, W + n - 1))
        pad[:, :, pre:pre + H, pre:pre + W] = sq
        s = sum(pad[:, :, i:i + H, j:j + W] for i in range(n) for j in range(n))
        scale = 1 + alpha / (n * n) * s
    return x * scale ** -beta


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("in_place", [False, True])
def test_lrn_in_chunks(split_everything, monkeypatch, across, in_place):
    """LRN a chunk of images at a time (here one image per chunk, 5 images, so an odd number
    of chunks for two threads): the float64 values, a finite-difference gradient, and the
    bits of the one-chunk run, for one and two threads, in place or not."""
    from caffepy.layers import normalization
    x = rnd(5, 6, 4, 3)
    dy = rnd(5, 6, 4, 3, seed=1)
    region = "ACROSS_CHANNELS" if across else "WITHIN_CHANNEL"
    text = ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 '
            'norm_region: %s }' % region)
    results = []
    for threads, chunk_bytes in ((1, 1 << 30), (1, 1), (2, 1)):
        monkeypatch.setattr(normalization, "LRN_CHUNK_BYTES", chunk_bytes)
        split_everything(threads)
        layer, bottom, top = make(text, [x.copy()])
        if in_place:
            top = bottom
        layer.reshape(bottom, top)
        assert len(layer._chunks) == (1 if chunk_bytes > 1 else 5)
        y = fwd(layer, bottom, top)[0]
        np.testing.assert_allclose(y, ref_lrn(x, 3, 0.5, 0.75, 2, across), rtol=2e-6,
                                   atol=1e-7)
        bwd(layer, bottom, top, [dy])
        results.append((y.tobytes(), bottom[0].diff.tobytes()))
        if threads == 1 and chunk_bytes == 1:
            # ∂(Σ y·dy)/∂x by central differences in float64
            eps, num = 1e-5, np.zeros(x.size)
            for i in range(0, x.size, 7):
                xp_, xm = x.astype(np.float64).ravel(), x.astype(np.float64).ravel()
                xp_[i] += eps
                xm[i] -= eps
                f = [(ref_lrn(v.reshape(x.shape), 3, 0.5, 0.75, 2, across) * dy).sum()
                     for v in (xp_, xm)]
                num[i] = (f[0] - f[1]) / (2 * eps)
            got = bottom[0].diff.ravel()
            np.testing.assert_allclose(got[::7], num[::7], rtol=1e-3, atol=1e-4)
    assert results[0] == results[1] == results[2]


def test_max_pooling_backward_after_the_thread_count_changed(split_everything):
    """MAX's backward scatters to the winners its forward found: changing the thread count
    between the two passes must not make new kernels (which would know no winners)."""
    x = rnd(2, 3, 6, 7)
    dy = rnd(2, 3, 3, 3, seed=1)
    text = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
    split_everything(1)
    ref_layer, outs, ref_dx, _ = run_layer(text, [x], [dy])
    split_everything(2)
    layer, bottom, top = make(text, [x])
    fwd(layer, bottom, top)
    assert len(layer.kerns) == 2
    split_everything(1)
    bwd(layer, bottom, top, [dy])
    assert bottom[0].diff.tobytes() == ref_dx[0].tobytes()
    assert np.count_nonzero(bottom[0].diff) == np.count_nonzero(ref_dx[0]) > 0
