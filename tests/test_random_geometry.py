"""Convolution, Deconvolution and Pooling on seeded random geometries (kernel, stride, padding,
dilation, groups, odd sizes, batches of 1 to 7): the NumPy path and the compiled kernels, on one
thread and split over two, give the same bits, and convolutions match a float64 reference.

The fixed cases of test_conv_chunks.py and test_pooling_kernels.py choose their shapes; these
draw them, so that a geometry nobody thought of still meets every path."""
import random

import numpy as np
import pytest

from caffepy import backend, parallel_chunks
from caffepy.layers import conv
from helpers import bwd, fwd, make
from test_conv_chunks import close, ref_conv


PATHS = [(False, 1), (True, 1), (True, 2), (False, 2)]      # (compiled, threads)
DEFAULT_CHUNK = conv.CHUNK_BYTES


def conv_case(r):
    kind = r.choice(["Convolution", "Deconvolution"])
    group = r.choice([1, 1, 2, 3])
    cin, cout = group * r.randint(1, 5), group * r.randint(1, 5)
    k = [r.randint(1, 5), r.randint(1, 5)]
    s = [r.randint(1, 3), r.randint(1, 3)]
    p = [r.randint(0, 2), r.randint(0, 2)]
    d = [r.choice([1, 1, 2]), r.choice([1, 1, 2])]
    if kind == "Convolution":      # an output of at least one position
        sp = [r.randint(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]), 13) for i in range(2)]
    else:                          # stride·(in − 1) + extent − 2·pad ≥ 1
        sp = [max(r.randint(1, 9), -(-(2 * p[i] - d[i] * (k[i] - 1)) // s[i]) + 1)
              for i in range(2)]
    bias = r.random() < 0.7
    text = ('type: "%s" convolution_param { num_output: %d group: %d kernel_h: %d kernel_w: %d '
            'stride_h: %d stride_w: %d pad_h: %d pad_w: %d dilation: %d dilation: %d '
            'bias_term: %s }' % (kind, cout, group, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                                 "true" if bias else "false"))
    shape = (r.randint(1, 7), cin) + tuple(sp)
    return kind, text, shape, dict(stride=s, pad=p, dil=d, group=group, bias=bias)


def pool_case(r):
    if r.random() < 0.3:           # the 2 × 2, stride 2 kernel that reads the image
        k, s, p, method = [2, 2], [2, 2], [0, 0], "MAX"
    else:
        k = [r.randint(1, 4), r.randint(1, 4)]
        s = [r.randint(1, 3), r.randint(1, 3)]
        p = [r.randint(0, k[0] - 1), r.randint(0, k[1] - 1)]
        method = r.choice(["MAX", "AVE"])
    sp = tuple(r.randint(max(1, k[i] - 2 * p[i]), 13) for i in range(2))
    text = ('type: "Pooling" pooling_param { pool: %s kernel_h: %d kernel_w: %d stride_h: %d '
            'stride_w: %d pad_h: %d pad_w: %d }' % (method, k[0], k[1], s[0], s[1], p[0], p[1]))
    return "Pooling", text, (r.randint(1, 7), r.randint(1, 5)) + sp, {}


def run(text, x, compiled, nthreads, seed, monkeypatch):
    """Forward and backward on one path; the top, the bottom diff, params and param diffs."""
    monkeypatch.setenv("CAFFEPY_COMPILED", "1" if compiled else "0")
    backend.set_num_threads(nthreads)
    parallel_chunks.get_pool()
    layer, bottom, top = make(text, [x])
    rng = np.random.default_rng(seed)
    for blob in layer.blobs:
        blob.data[...] = rng.uniform(-1, 1, blob.data.shape).astype(np.float32)
    y = fwd(layer, bottom, top)[0]
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    bwd(layer, bottom, top, [dy])
    return (y, dy, bottom[0].diff.copy(), [b.data.copy() for b in layer.blobs],
            [b.diff.copy() for b in layer.blobs])


# AVE windows that start past the input divide 0 by a size of 0 (NaN, as in Caffe)
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning",
                            "ignore:divide by zero encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("seed", range(16))
def test_random_geometries(seed, monkeypatch):
    if backend.mode() == backend.GPU:
        pytest.skip("the CPU paths: NumPy, the compiled kernels and the thread pool")
    saved = backend._num_threads
    # blocks for a layer of any size, and element-wise passes split from 1 KB, so that two
    # threads really share the work
    monkeypatch.setattr(conv, "BLOCK_MIN_BYTES", 1)
    monkeypatch.setattr(parallel_chunks, "MIN_SPLIT_BYTES", 1024)
    r = random.Random(seed)
    try:
        for case in range(10):
            kind, text, shape, g = (pool_case if r.random() < 0.3 else conv_case)(r)
            x = np.random.default_rng(case).uniform(-2, 2, shape).astype(np.float32)
            if kind == "Pooling" and r.random() < 0.4:
                x = np.round(x)                 # ties: the first maximum wins
            # chunks of one image, of a few, or the default (the whole batch, for these sizes)
            chunk = r.choice([1, 2048, 16384, DEFAULT_CHUNK])
            monkeypatch.setattr(conv, "CHUNK_BYTES", chunk)
            runs = [run(text, x, compiled, n, 100 * seed + case, monkeypatch)
                    for compiled, n in PATHS]
            what = "%s on %s, chunks of %d bytes" % (text, shape, chunk)
            for (compiled, n), got in zip(PATHS[1:], runs[1:]):
                for name, a, b in [("top", got[0], runs[0][0]), ("bottom diff", got[2],
                                                                 runs[0][2])] + [
                        ("param diff %d" % i, a, b) for i, (a, b) in
                        enumerate(zip(got[4], runs[0][4]))]:
                    assert np.array_equal(a, b, equal_nan=True), (
                        "%s: compiled=%s, %d threads: %s differs from the NumPy path's"
                        % (what, compiled, n, name))
            if kind == "Pooling":
                continue
            y, dy, dx, params, pdiffs = runs[0]
            w = params[0]
            bshape = (1, -1, 1, 1)
            if kind == "Convolution":
                ry, rdx, rdw = ref_conv(x, w, dy, g["stride"], g["pad"], g["dil"], g["group"])
            else:       # the adjoint of the convolution from the top's shape to the bottom's
                _, ry, _ = ref_conv(np.zeros(y.shape), w, x, g["stride"], g["pad"], g["dil"],
                                    g["group"])
                rdx, _, rdw = ref_conv(dy, w, x, g["stride"], g["pad"], g["dil"], g["group"])
            if g["bias"]:
                ry = ry + params[1].reshape(bshape)
                close(pdiffs[1], dy.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
            close(y, ry, rtol=1e-4, atol=1e-4)
            close(dx, rdx, rtol=1e-4, atol=1e-4)
            close(pdiffs[0], rdw, rtol=1e-4, atol=1e-4)
    finally:
        backend._num_threads = saved
        parallel_chunks.get_pool()
