"""Pooling kernels (caffepy.kernels.pooling, caffepy.kernels.compiled) against explicit per-window
references: MAX, AVE and STOCHASTIC (TEST) forward, MAX and AVE backward, on odd shapes (strides,
padding, ceil-mode edge windows, batch 1, global windows, wide kernels) and on awkward values
(ties, NaN, -inf, -FLT_MAX). Backward sums are compared bit for bit with Caffe's float32 order.

Every MAX test runs three ways: the NumPy code (the reference path), the compiled kernels' Python
source run uncompiled, and, where numba is installed, the compiled kernels.
"""
import itertools
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from caffepy.kernels import compiled
from caffepy.kernels.pooling import Pool2D, pooled_size
from helpers import make

FLT_MAX = np.float32(np.finfo(np.float32).max)
FLT_MIN = np.float32(np.finfo(np.float32).tiny)

# (N, C, H, W, kh, kw, sh, sw, ph, pw, ceil)
CASES = [
    (2, 3, 7, 9, 3, 3, 2, 2, 0, 0, True),      # ceil mode: the last windows hang off the image
    (1, 2, 7, 7, 3, 3, 2, 2, 1, 1, True),      # padding, batch 1
    (2, 1, 6, 5, 2, 3, 1, 2, 1, 1, False),     # FLOOR, rectangular kernel and strides
    (1, 1, 5, 5, 1, 1, 3, 3, 0, 0, True),      # kernel < stride: a window past the image
    (1, 3, 5, 5, 2, 2, 3, 3, 0, 0, True),      # stride > kernel: pixels no window sees
    (2, 2, 9, 8, 3, 3, 1, 1, 1, 1, True),      # stride 1: up to 9 windows share a pixel
    (1, 2, 6, 7, 6, 7, 1, 1, 0, 0, True),      # one window covers the image (global)
    (2, 2, 8, 8, 4, 4, 2, 2, 2, 2, True),      # pad 2: windows that are mostly padding
    (2, 2, 19, 18, 17, 16, 1, 1, 1, 1, True),  # offsets past 255: 16-bit codes
    # 2 x 2, stride 2, no padding: the compiled forward reads the image (maxpool2_forward)
    (2, 3, 6, 8, 2, 2, 2, 2, 0, 0, True),      # every pixel in one window
    (2, 2, 7, 9, 2, 2, 2, 2, 0, 0, True),      # ceil, odd sizes: a last row and column of
    (1, 2, 9, 6, 2, 2, 2, 2, 0, 0, True),      # windows one pixel wide or high
    (1, 2, 7, 5, 2, 2, 2, 2, 0, 0, False),     # FLOOR, odd sizes: pixels no window sees
    (2, 1, 1, 1, 2, 2, 2, 2, 0, 0, True),      # a 1 x 1 image
    (1, 1, 3, 259, 2, 2, 2, 2, 0, 0, True),    # NF = W + 2 past 255: 16-bit codes
]
IDS = ["%dx%dx%dx%d_k%dx%d_s%dx%d_p%dx%d_%s" % (c[:10] + ("ceil" if c[10] else "floor",))
       for c in CASES]


def geometry(case):
    N, C, H, W, kh, kw, sh, sw, ph, pw, ceil = case
    any_pad = bool(ph or pw)
    OH = pooled_size(H, kh, sh, ph, ceil, any_pad)
    OW = pooled_size(W, kw, sw, pw, ceil, any_pad)
    return OH, OW


def windows(case, OH, OW):
    """Caffe's windows: (oh, ow, h0, h1, w0, w1 clamped to the image, AVE pool_size)."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, ceil = case
    for oh, ow in itertools.product(range(OH), range(OW)):
        hs, ws = oh * sh - ph, ow * sw - pw
        he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
        size = (he - hs) * (we - ws)
        yield (oh, ow, max(hs, 0), min(hs + kh, H), max(ws, 0), min(ws + kw, W), size)


def ref_max(x, case, OH, OW):
    """Caffe's MAX forward: strict '>' from -FLT_MAX in row-major order; mask -1 for none."""
    N, C, H, W = x.shape
    top = np.empty((N, C, OH, OW), np.float64)
    mask = np.empty((N, C, OH, OW), np.int64)
    for oh, ow, h0, h1, w0, w1, _ in windows(case, OH, OW):
        for n, c in itertools.product(range(N), range(C)):
            best, arg = -FLT_MAX, -1
            for h, w in itertools.product(range(h0, h1), range(w0, w1)):
                if x[n, c, h, w] > best:
                    best, arg = x[n, c, h, w], h * W + w
            top[n, c, oh, ow], mask[n, c, oh, ow] = best, arg
    return top, mask


def ref_max_backward(mask, dy, shape):
    """Caffe's MAX backward: bottom diff 0, then += top diff at the mask, outputs in row-major
    order, in float32."""
    N, C, H, W = shape
    dx = np.zeros((N, C, H * W), np.float32)
    for n, c in itertools.product(range(N), range(C)):
        for oh, ow in itertools.product(range(dy.shape[2]), range(dy.shape[3])):
            if mask[n, c, oh, ow] >= 0:
                dx[n, c, mask[n, c, oh, ow]] += dy[n, c, oh, ow]
    return dx.reshape(shape)


def ref_ave(x, case, OH, OW):
    """Caffe's AVE forward in float32 (sum row by row, then divide) and in float64."""
    N, C, H, W = x.shape
    top32 = np.empty((N, C, OH, OW), np.float32)
    top64 = np.empty((N, C, OH, OW), np.float64)
    for oh, ow, h0, h1, w0, w1, size in windows(case, OH, OW):
        for n, c in itertools.product(range(N), range(C)):
            acc = np.float32(0)
            for h, w in itertools.product(range(h0, h1), range(w0, w1)):
                acc = np.float32(acc + x[n, c, h, w])
            top32[n, c, oh, ow] = acc / np.float32(size)
            top64[n, c, oh, ow] = x[n, c, h0:h1, w0:w1].astype(np.float64).sum() / size
    return top32, top64


def ref_ave_backward(dy, case, shape):
    """Caffe's AVE backward: += top diff / pool_size over the clamped window, in float32."""
    N, C, H, W = shape
    dx = np.zeros(shape, np.float32)
    for oh, ow, h0, h1, w0, w1, size in windows(case, dy.shape[2], dy.shape[3]):
        for n, c in itertools.product(range(N), range(C)):
            g = np.float32(dy[n, c, oh, ow] / np.float32(size))
            for h, w in itertools.product(range(h0, h1), range(w0, w1)):
                dx[n, c, h, w] += g
    return dx


def tied_input(shape, seed, specials=False):
    """Small integers (many ties), optionally with NaN, -inf and -FLT_MAX sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, size=shape).astype(np.float32)
    if specials:
        flat = x.reshape(-1)
        picks = rng.permutation(flat.size)
        k = max(1, flat.size // 12)
        flat[picks[:k]] = np.nan
        flat[picks[k:2 * k]] = -np.inf
        flat[picks[2 * k:3 * k]] = -FLT_MAX
    return x


def top_diff(shape, seed):
    """Diffs of very different sizes, so that the order of a sum shows in its bits."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 4, size=shape)).astype(
        np.float32)


def python_kernels():
    """compiled.py's kernels run as plain Python (no numba needed)."""
    return types.SimpleNamespace(maxpool_forward=compiled.maxpool_forward,
                                 maxpool2_forward=compiled.maxpool2_forward,
                                 maxpool_backward=compiled.maxpool_backward,
                                 avepool_forward=compiled.avepool_forward,
                                 avepool_backward=compiled.avepool_backward,
                                 sgd_momentum=compiled.sgd_momentum)


MODES = ["numpy", "python", "numba"]


def kernels_for(mode):
    if mode == "numpy":
        return False
    if mode == "python":
        return python_kernels()
    if not compiled.enabled():
        pytest.skip("compiled kernels turned off (CAFFEPY_COMPILED=0)")
    kern = compiled.kernels()
    if kern is None:
        pytest.skip("numba is not installed")
    return kern


def make_pool(case, mode):
    N, C, H, W, kh, kw, sh, sw, ph, pw, ceil = case
    OH, OW = geometry(case)
    return Pool2D(np, N * C, H, W, kh, kw, sh, sw, ph, pw, OH, OW,
                  use_compiled=kernels_for(mode)), OH, OW


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("specials", [False, True], ids=["ties", "nan_inf"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_forward_backward(case, specials, mode):
    N, C, H, W = case[:4]
    if mode == "python" and case[4] * case[5] > 64:
        pytest.skip("too slow uncompiled; the numba run covers it")
    kern, OH, OW = make_pool(case, mode)
    x = tied_input((N, C, H, W), seed=sum(case[:6]), specials=specials)
    top64, mask = ref_max(x, case, OH, OW)
    top = np.empty((N, C, OH, OW), np.float32)
    got_mask = np.empty((N, C, OH, OW), np.float32)
    kern.forward_max(x.reshape(N * C, H, W), top.reshape(N * C, OH, OW),
                     got_mask.reshape(N * C, OH, OW))
    np.testing.assert_array_equal(top, top64.astype(np.float32))
    np.testing.assert_array_equal(got_mask, mask)
    # a second forward without the mask top, then the backward
    kern.forward_max(x.reshape(N * C, H, W), top.reshape(N * C, OH, OW))
    dy = top_diff((N, C, OH, OW), seed=1)
    dx = np.full((N, C, H, W), 7.0, np.float32)            # overwritten, not added to
    kern.backward_max(dy.reshape(N * C, OH, OW), dx.reshape(N * C, H, W))
    expect = ref_max_backward(mask, dy, (N, C, H, W))
    np.testing.assert_array_equal(dx.view(np.uint32), expect.view(np.uint32))


@pytest.mark.parametrize("specials", [False, True], ids=["ties", "nan_inf"])
@pytest.mark.parametrize("case", [c for c in CASES if c[4] < c[2] or c[5] < c[3]],
                         ids=[i for c, i in zip(CASES, IDS) if c[4] < c[2] or c[5] < c[3]])
def test_max_backward_gather_same_bits_as_scatter(case, specials):
    """The device path's MAX backward (a gather over kernel positions, no atomic adds) gives
    the scatter's bits and Caffe's: each pixel sums the windows it won in row-major output
    order, overlapping windows (stride 1: up to nine), ceil-mode and padded edges, empty
    windows, ties, NaN and infinities."""
    N, C, H, W = case[:4]
    kern, OH, OW = make_pool(case, "numpy")
    assert not kern.global_like
    x = tied_input((N, C, H, W), seed=sum(case[:6]), specials=specials)
    top = np.empty((N, C, OH, OW), np.float32)
    mask = np.empty((N, C, OH, OW), np.float32)
    kern.forward_max(x.reshape(N * C, H, W), top.reshape(N * C, OH, OW),
                     mask.reshape(N * C, OH, OW))
    dy = top_diff((N, C, OH, OW), seed=2)
    if specials:
        dy.reshape(-1)[::7] = np.inf
        dy.reshape(-1)[3::11] = np.nan
    got = {}
    for how in ("_scatter_code", "_gather_code"):
        dx = np.zeros((N, C, H, W), np.float32)
        getattr(kern, how)(dy.reshape(N * C, OH, OW), dx.reshape(N * C, H, W))
        got[how] = dx
    _, ref_mask = ref_max(x, case, OH, OW)
    np.testing.assert_array_equal(mask, ref_mask)
    expect = ref_max_backward(ref_mask, dy, (N, C, H, W))
    for dx in got.values():
        np.testing.assert_array_equal(dx.view(np.uint32), expect.view(np.uint32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ave_forward_backward(case, mode):
    N, C, H, W = case[:4]
    if mode == "python" and case[4] * case[5] > 64:
        pytest.skip("too slow uncompiled; the numba run covers it")
    kern, OH, OW = make_pool(case, mode)
    x = np.random.default_rng(3).standard_normal((N, C, H, W)).astype(np.float32)
    top32, top64 = ref_ave(x, case, OH, OW)
    top = np.empty((N, C, OH, OW), np.float32)
    kern.forward_ave(x.reshape(N * C, H, W), top.reshape(N * C, OH, OW))
    np.testing.assert_allclose(top, top64, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(top, top32)
    dy = top_diff((N, C, OH, OW), seed=2)
    dx = np.full((N, C, H, W), 7.0, np.float32)
    kern.backward_ave(dy.reshape(N * C, OH, OW), dx.reshape(N * C, H, W))
    np.testing.assert_array_equal(dx.view(np.uint32),
                                  ref_ave_backward(dy, case, (N, C, H, W)).view(np.uint32))


@pytest.mark.parametrize("case", [c for c in CASES if not (c[8] or c[9])],
                         ids=[i for c, i in zip(CASES, IDS) if not (c[8] or c[9])])
def test_stochastic_test_phase(case):
    # TEST phase: Σx² / Σx over the clamped window, the sum started at FLT_MIN
    N, C, H, W = case[:4]
    kern, OH, OW = make_pool(case, "numpy")
    x = np.random.default_rng(4).uniform(0.1, 1.0, (N, C, H, W)).astype(np.float32)
    top = np.empty((N, C, OH, OW), np.float32)
    kern.forward_stochastic(x.reshape(N * C, H, W), top.reshape(N * C, OH, OW), False, None)
    expect = np.empty(top.shape, np.float64)
    for oh, ow, h0, h1, w0, w1, _ in windows(case, OH, OW):
        win = x[:, :, h0:h1, w0:w1].astype(np.float64)
        expect[:, :, oh, ow] = (win * win).sum(axis=(2, 3)) / (win.sum(axis=(2, 3))
                                                                + float(FLT_MIN))
    np.testing.assert_allclose(top, expect, rtol=2e-6)


@pytest.mark.parametrize("mode", ["python", "numba"])
@pytest.mark.parametrize("shape,k,s,p", [
    ((1, 3, 9, 9), 2, 3, 0),        # stride > kernel: pixels no window sees
    ((3, 4, 32, 32), 3, 2, 0),      # CIFAR-10 quick's pool1 geometry
    ((2, 5, 24, 24), 2, 2, 0),      # LeNet's pool1
    ((2, 3, 27, 27), 3, 2, 1),
    ((1, 2, 13, 11), 5, 3, 2),
])
def test_compiled_same_bits_as_numpy(shape, k, s, p, mode):
    N, C, H, W = shape
    case = (N, C, H, W, k, k, s, s, p, p, True)
    ref, OH, OW = make_pool(case, "numpy")
    kern, _, _ = make_pool(case, mode)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N * C, H, W)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.5                     # ties
    dy = top_diff((N * C, OH, OW), seed=6)
    out = []
    for pool in (ref, kern):
        top = np.empty((N * C, OH, OW), np.float32)
        mask = np.empty((N * C, OH, OW), np.float32)
        dx = np.empty((N * C, H, W), np.float32)
        pool.forward_max(x, top, mask)
        pool.backward_max(dy, dx)
        out.append((top.view(np.uint32), mask, dx.view(np.uint32)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(out[0][2]) > 0
    out = []
    for pool in (ref, kern):
        top = np.empty((N * C, OH, OW), np.float32)
        dx = np.empty((N * C, H, W), np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):    # windows past the image: 0/0
            pool.forward_ave(x, top)
            pool.backward_ave(dy, dx)
        out.append((top.view(np.uint32), dx.view(np.uint32)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["python", "numba"])
@pytest.mark.parametrize("H,W,k,s,p,pairs", [
    (24, 24, 2, 2, 0, [(0, 1), (2, 3)]),    # LeNet's pool1: both column phases of each row
    (32, 32, 3, 2, 0, [(0, 1), (2, 3)]),    # CIFAR-10 quick's pool1 (ceil: a grid column more)
    (7, 9, 3, 2, 1, [(0, 1), (2, 3)]),      # pad 1: the pair's columns start one apart
    (6, 5, 3, 2, 1, [(0, 1)]),              # vertical stride 1 (one row phase), odd width
    (9, 9, 1, 2, 0, []),                     # a 1-wide window: one column phase, nothing to pair
    (9, 9, 3, 3, 0, []),                     # stride 3: copied column by column
])
def test_phase_grids_copy_pairs_stride_two_columns(H, W, k, s, p, pairs, mode):
    """A horizontal stride of 2 pairs each row phase's two column phases (one pass over an
    image row fills both); the copy into the grids puts every image pixel where the strided
    NumPy copy puts it, and the copy back gives the image again (pixels in no grid untouched)."""
    sh = 1 if (H, W) == (6, 5) else s
    OH = pooled_size(H, k, sh, p, True, bool(p))
    OW = pooled_size(W, k, s, p, True, bool(p))
    pool = Pool2D(np, 3, H, W, k, k, sh, s, p, p, OH, OW, use_compiled=kernels_for(mode))
    boxes = pool._c_boxes
    assert [(f, int(boxes[f, 6])) for f in range(len(boxes)) if boxes[f, 6] >= 0] == pairs
    assert all(boxes[g, 6] == -2 for _, g in pairs)
    assert (boxes[:, 6] == -1).sum() == len(boxes) - 2 * len(pairs)
    if pairs and p:
        f, g = pairs[0]
        assert boxes[f, 3] != boxes[g, 3]       # the columns one of the pair has alone
    copy = compiled._copy_phase_grids if mode == "numba" else compiled._copy_phase_grids_py
    x = np.random.default_rng(3).standard_normal((3, H, W)).astype(np.float32)
    plane = pool.Hq * pool.Wq
    grids = np.full((len(boxes), 3 * plane + pool.maxshift), np.nan, np.float32)
    geom = pool._c_geom.copy()
    geom[4] = 3
    copy(x, 0, 3, grids, boxes, geom, False)
    for ab, (dst, src) in pool.phases.items():
        g = grids[pool.phase_index[ab], :3 * plane].reshape(3, pool.Hq, pool.Wq)
        if dst is not None:
            np.testing.assert_array_equal(g[dst], x[src])
    back = np.full_like(x, -7)
    copy(back, 0, 3, grids, boxes, geom, True)
    seen = np.zeros(x.shape, bool)
    for dst, src in pool.phases.values():
        if dst is not None:
            seen[src] = True
    np.testing.assert_array_equal(back[seen], x[seen])
    assert (back[~seen] == -7).all()


def test_compiled_max_keeps_the_first_zero_as_caffe():
    # Caffe's scan keeps the first of equal maxima, sign of zero included
    pool = Pool2D(np, 1, 1, 3, 1, 2, 1, 1, 0, 0, 1, 2, use_compiled=kernels_for("python"))
    top = np.empty((1, 1, 2), np.float32)
    pool.forward_max(np.array([[[-0.0, 0.0, -1.0]]], np.float32), top)
    assert top[0, 0, 0] == 0 and np.signbit(top[0, 0, 0])
    assert top[0, 0, 1] == 0 and not np.signbit(top[0, 0, 1])


def test_compiled_sgd_kernel_as_python_matches_caffe_order():
    rng = np.random.default_rng(7)
    g = rng.standard_normal(257).astype(np.float32)
    h = rng.standard_normal(257).astype(np.float32)
    lr, mom = np.float32(0.01), np.float32(0.9)
    expect_h = h * mom                           # caffe_cpu_axpby: scal, then axpy
    expect_h += lr * g
    compiled.sgd_momentum(g, h, lr, mom)
    np.testing.assert_array_equal(h, expect_h)
    np.testing.assert_array_equal(g, expect_h)


@pytest.mark.parametrize("mode", ["python", "numba"])
def test_l2_decay_kernel_is_caffes_axpy(mode):
    """diff += decay · data: the product rounded to float32, then the sum, as NumPy's two
    steps (and Caffe's axpy without a fused multiply-add) give it."""
    fn = compiled.l2_decay if mode == "python" else kernels_for("numba").l2_decay
    rng = np.random.default_rng(8)
    data = (rng.standard_normal(1031) * 1e3).astype(np.float32)
    diff = rng.standard_normal(1031).astype(np.float32)
    decay = np.float32(0.0005)
    work = data * decay
    expect = diff + work
    fn(data, diff, decay)
    np.testing.assert_array_equal(diff.view(np.uint32), expect.view(np.uint32))


# -- the switch, the lazy import and the cache folder -------------------------------------------

MAX_LAYER = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'


def test_env_turns_compiled_kernels_off(monkeypatch):
    monkeypatch.setenv("CAFFEPY_COMPILED", "0")
    assert compiled.kernels() is None
    layer, bottom, top = make(MAX_LAYER, [np.zeros((1, 2, 7, 7), np.float32)])
    assert layer.kern._compiled is None
    monkeypatch.setenv("CAFFEPY_COMPILED", "1")
    if compiled.kernels() is None:
        pytest.skip("numba is not installed")
    layer, bottom, top = make(MAX_LAYER, [np.zeros((1, 2, 7, 7), np.float32)])
    assert layer.kern._compiled is compiled.kernels()


def test_a_numba_that_cannot_compile_falls_back_to_numpy(monkeypatch, caplog):
    numba = pytest.importorskip("numba")

    def broken(*args, **kwargs):
        raise RuntimeError("no such option")

    monkeypatch.setenv("CAFFEPY_COMPILED", "1")
    monkeypatch.setattr(compiled, "_loaded", None)
    for name in ("_copy_phase_grids", "_copy_columns", "_copy_pair"):
        monkeypatch.setattr(compiled, name, getattr(compiled, name))
    monkeypatch.setattr(numba, "njit", broken)
    assert compiled.kernels() is None
    assert "could not compile" in caplog.text and "no such option" in caplog.text
    assert compiled._copy_phase_grids is compiled._copy_phase_grids_py
    assert compiled._copy_columns is compiled._copy_columns_py
    layer, bottom, top = make(MAX_LAYER, [np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)])
    assert layer.kern._compiled is None
    np.testing.assert_array_equal(fwd_top(layer, bottom, top),
                                  [[[[16, 18, 20], [30, 32, 34], [44, 46, 48]]]])


def fwd_top(layer, bottom, top):
    layer.forward(bottom, top)
    return top[0].data


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compiled.cache_dir() == os.path.join(str(tmp_path), "caffepy", "numba")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compiled.cache_dir() == os.path.join(str(tmp_path), ".cache", "caffepy", "numba")


def _run(code, env):
    full = dict(os.environ)
    full.pop("NUMBA_CACHE_DIR", None)
    full.pop("CAFFEPY_COMPILED", None)
    full.update(env)
    res = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


LAZY = """
import sys
import numpy as np
import caffepy
print('numba' in sys.modules)
from caffepy.layer import build_layer
build_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }',
            [np.zeros((1, 1, 4, 4), np.float32)])
import os
print('numba' in sys.modules, os.environ.get('NUMBA_CACHE_DIR'))
"""


def test_numba_imported_at_first_layer_setup_not_at_import(tmp_path):
    out = _run(LAZY, {"XDG_CACHE_HOME": str(tmp_path)})
    assert out[0] == "False"
    if out[1] == "False":
        pytest.skip("numba is not installed")
    assert out[2] == os.path.join(str(tmp_path), "caffepy", "numba")
    names = os.listdir(out[2])
    assert names, "no compiled kernels were cached"
    assert any(n.endswith(".nbi") for n in os.listdir(os.path.join(out[2], names[0])))
    # the user's NUMBA_CACHE_DIR wins (here the folder just filled); CAFFEPY_COMPILED=0 never
    # imports numba
    other = str(tmp_path / "other")
    assert _run(LAZY, {"NUMBA_CACHE_DIR": out[2], "XDG_CACHE_HOME": other})[1:] == ["True",
                                                                                  out[2]]
    assert not os.path.exists(other)
    assert _run(LAZY, {"CAFFEPY_COMPILED": "0"})[:2] == ["False", "False"]


LAZY_COMPILE = """
import numpy as np
from caffepy.kernels import compiled
from caffepy.layer import build_layer
k = compiled.kernels()
if k is None:
    print('none')
else:
    names = ('maxpool2_forward', 'maxpool_forward', 'avepool_forward', 'avepool_backward',
             'relu_forward')
    print(' '.join(str(n in vars(k)) for n in names))
    for kernel in (2, 3):
        layer, bottom, top = build_layer(
            'type: "Pooling" pooling_param { pool: MAX kernel_size: %d stride: 2 }' % kernel,
            [np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)])
        layer.forward(bottom, top)
        print(' '.join(str(n in vars(k)) for n in names))
        print(','.join('%g' % v for v in top[0].data.ravel()))
"""


def test_kernels_are_compiled_when_first_used(tmp_path):
    """kernels() compiles one small kernel (the check that numba works); each of the others is
    compiled the first time a layer uses it: a 2 x 2, stride 2 MAX pooling layer's forward
    compiles that kernel only, a 3 x 3 one the general MAX pooling, and neither compiles AVE
    pooling or ReLU."""
    out = _run(LAZY_COMPILE, {"XDG_CACHE_HOME": str(tmp_path)})
    if out == ["none"]:
        pytest.skip("numba is not installed")
    assert out[:5] == ["False"] * 5
    assert out[5:10] == ["True", "False", "False", "False", "False"]
    assert out[10] == "5,7,13,15"
    assert out[11:16] == ["True", "True", "False", "False", "False"]
    assert out[16] == "10,11,14,15"
