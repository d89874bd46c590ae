"""Compiled (numba) versions of the loops NumPy runs slowest, used when numba is installed.

numba is optional (``pip install 'caffepy[fast]'``). ``kernels()`` imports it the first time a
layer or an update rule asks (never at ``import caffepy``) and returns the compiled kernels, or
None when numba is not installed or the environment sets ``CAFFEPY_COMPILED=0``; every caller
then runs its NumPy code, which stays the reference: each kernel here gives the same bits.

Each kernel is compiled the first time it is used, once per machine, and cached on disk: in
``$NUMBA_CACHE_DIR`` when the user sets it, else in ``~/.cache/caffepy/numba``
(``$XDG_CACHE_HOME/caffepy/numba``). They run on the calling thread (no numba threading layer),
so they never compete with BLAS's threads.

The functions below are plain Python written in the subset numba compiles; ``kernels()``
compiles them as they are used. Run uncompiled they give the same results, slowly (the tests
use that where numba is missing).
"""
import logging
import os
import sys
import threading

import numpy as np

log = logging.getLogger(__name__)

FLT_MAX = np.float32(np.finfo(np.float32).max)

_loaded = None          # None: not tried yet; False: unavailable; else the kernels


def enabled():
    """False when the environment turns the compiled kernels off (CAFFEPY_COMPILED=0)."""
    return os.environ.get("CAFFEPY_COMPILED", "1").strip() != "0"


def cache_dir():
    """Where compiled kernels are cached unless NUMBA_CACHE_DIR says otherwise."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "caffepy", "numba")


def kernels():
    """The compiled kernels (a namespace of functions), or None: numba missing, unable to
    compile them (a warning says why), or turned off."""
    global _loaded
    if not enabled():
        return None
    if _loaded is None:
        _loaded = _compile() or False
    return _loaded or None


def _compile():
    if "numba" not in sys.modules and "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = cache_dir()
    try:
        import numba
    except ImportError:
        return None
    try:
        return _build(numba)
    except Exception as e:         # an unsupported numba release: keep to the NumPy code
        global _copy_phase_grids, _copy_columns, _copy_pair, _maxpool2_edges, _stride_phases
        global _copy_row_runs, _col2im_last_image
        _maxpool2_edges = _maxpool2_edges_py
        _copy_phase_grids, _copy_columns, _copy_pair = (_copy_phase_grids_py, _copy_columns_py,
                                                        _copy_pair_py)
        _stride_phases, _copy_row_runs = _stride_phases_py, _copy_row_runs_py
        _col2im_last_image = _col2im_last_image_py
        log.warning("numba %s could not compile caffepy's kernels (%s: %s); using the NumPy "
                    "code", getattr(numba, "__version__", "?"), type(e).__name__, e)
        return None


class _Kernels:
    """The compiled kernels by name, each compiled (or loaded from the disk cache) the first time
    it is used, so a process compiles only what its layers and solver call (all of them, the
    first time on a machine: about 6 s; LeNet's share about half of that)."""

    def __init__(self, makers):
        self._makers = makers           # name -> function returning the compiled kernel
        self._lock = threading.Lock()

    def __getattr__(self, name):
        makers = self.__dict__.get("_makers")
        if makers is None or name not in makers:
            raise AttributeError(name)
        with self._lock:
            fn = self.__dict__.get(name)
            if fn is None:
                fn = makers[name]()
                setattr(self, name, fn)
        return fn


def _build(numba):
    f32, i64 = numba.float32, numba.int64

    # error_model="numpy": float division by zero gives inf/NaN (as in Caffe), not an exception
    def jit(signatures, fn):
        return lambda: numba.njit(signatures, cache=True, nogil=True, error_model="numpy")(fn)

    def jit_per_type(fn):
        """A kernel whose arguments are all arrays of Pool2D's (the dtype of its winner codes
        varies): compiled for the types of its first call, each code type only if used."""
        return lambda: numba.njit(cache=True, nogil=True, error_model="numpy")(fn)

    # the kernels call these helpers by their module names: compile them first
    global _copy_phase_grids, _copy_columns, _copy_pair, _maxpool2_edges, _stride_phases
    global _copy_row_runs, _col2im_last_image
    _col2im_last_image = numba.njit(cache=True, nogil=True)(_col2im_last_image_py)
    _maxpool2_edges = numba.njit(cache=True, nogil=True)(_maxpool2_edges_py)
    _stride_phases = numba.njit(cache=True, nogil=True)(_stride_phases_py)
    _copy_row_runs = numba.njit(cache=True, nogil=True)(_copy_row_runs_py)
    _copy_columns = numba.njit(cache=True, nogil=True)(_copy_columns_py)
    _copy_pair = numba.njit(cache=True, nogil=True)(_copy_pair_py)
    _copy_phase_grids = numba.njit(cache=True, nogil=True)(_copy_phase_grids_py)

    kern = _Kernels(dict(
        maxpool_forward=jit_per_type(maxpool_forward),
        maxpool2_forward=jit_per_type(maxpool2_forward),
        maxpool_backward=jit_per_type(maxpool_backward),
        avepool_forward=jit(
            [numba.void(f32[:, :, ::1], f32[:, :, ::1], f32[:, ::1], f32[:, ::1], f32[::1],
                        i64[::1], i64[::1], i64[:, ::1], i64[::1])],
            avepool_forward),
        avepool_backward=jit(
            [numba.void(f32[:, :, ::1], f32[:, :, ::1], f32[:, ::1], f32[:, ::1], f32[::1],
                        i64[::1], i64[::1], i64[:, ::1], i64[::1])],
            avepool_backward),
        sgd_momentum=jit([numba.void(f32[::1], f32[::1], f32, f32)], sgd_momentum),
        l2_decay=jit([numba.void(f32[::1], f32[::1], f32)], l2_decay),
        add_channel_bias=jit([numba.void(f32[:, :, ::1], f32[::1])], add_channel_bias),
        add_bias_from_last=jit([numba.void(f32[:, :, ::1], f32[::1], f32[:, :, ::1])],
                               add_bias_from_last),
        sgd_step=jit([numba.void(f32[::1], f32[::1], f32[::1], f32, f32, f32)], sgd_step),
        relu_forward=jit([numba.void(f32[::1], f32[::1], f32)], relu_forward),
        relu_backward=jit([numba.void(f32[::1], f32[::1], f32[::1], f32)], relu_backward),
        col2im_last_2d=jit([numba.void(f32[:, :, :, :, :, :, ::1], f32[:, :, :, ::1],
                                       i64[::1])], col2im_last_2d),
        col2im_last_first_2d=jit([numba.void(f32[:, :, :, :, :, :, ::1], f32[:, :, ::1],
                                             f32[:, :, ::1], i64[::1])], col2im_last_first_2d),
        im2col_images_2d=jit([numba.void(f32[:, :, :, ::1], f32[:, :, ::1], i64[::1])],
                             im2col_images_2d),
        im2col_rows_2d=jit([numba.void(f32[:, :, :, ::1], f32[:, :, :, ::1],
                                       i64[::1])], im2col_rows_2d),
        im2col_images_strided_2d=jit([numba.void(f32[:, :, :, ::1], f32[:, :, ::1],
                                                 i64[::1])], im2col_images_strided_2d),
        im2col_rows_strided_2d=jit([numba.void(f32[:, :, :, ::1], f32[:, :, :, ::1],
                                               i64[::1])], im2col_rows_strided_2d),
        windows_last_2d=jit([numba.void(f32[:, :, :, ::1], f32[:, :, :, :, :, :, ::1],
                                        i64[::1])], windows_last_2d),
    ))
    # one small kernel now: a numba that cannot compile them shows here, and caffepy keeps to
    # its NumPy code (kernels() returns None)
    kern.l2_decay
    return kern


# -- im2col (channels-first, 2-D) ------------------------------------------------------------

def im2col_images_2d(x, col, geom):
    """col[n, (c·KH + kh)·KW + kw, oh·OW + ow] = x[n, c, oh·s_h − p_h + kh·d_h, ow·s_w − p_w +
    kw·d_w], zero outside the image (Caffe's im2col, the IMAGES layout of
    caffepy.kernels.im2col), read straight from the unpadded images. ``x`` (m, C, H, W); ``col``
    (m, rows, R): rows >= C·KH·KW, R >= OH·OW (the rows and values past those, a row's padding
    or a row of ones, are left as they are); ``geom`` (s_h, s_w, p_h, p_w, d_h, d_w, OH, OW,
    KH, KW). A copy: the same bits as the NumPy path."""
    m, C, H, W = x.shape
    sh, sw, ph, pw, dh, dw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    OH, OW, KH, KW = geom[6], geom[7], geom[8], geom[9]
    for n in range(m):
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    k = (c * KH + kh) * KW + kw
                    for oh in range(OH):
                        r = oh * OW
                        ih = oh * sh - ph + kh * dh
                        if ih < 0 or ih >= H:
                            for ow in range(OW):
                                col[n, k, r + ow] = 0
                            continue
                        for ow in range(OW):
                            iw = ow * sw - pw + kw * dw
                            if iw >= 0 and iw < W:
                                col[n, k, r + ow] = x[n, c, ih, iw]
                            else:
                                col[n, k, r + ow] = 0


def im2col_rows_2d(x, col, geom):
    """im2col_images_2d in the ROWS layout: col[c, kh, kw, (n·OH + oh)·OW + ow], ``col``
    (C, KH, KW, R), R >= m·OH·OW. (One kernel for both layouts, taking the column strides as
    arguments or a strided column array, measured 1.2 to 5 times slower: numba vectorizes the
    copy only with the index order fixed at compile time. Sharing the copy of an output row
    through a helper taking the row as a view was 5 to 6 times slower still, so the two loops
    stay written out.)"""
    m, C, H, W = x.shape
    KH, KW = col.shape[1], col.shape[2]
    sh, sw, ph, pw, dh, dw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    OH, OW = geom[6], geom[7]
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for n in range(m):
                    for oh in range(OH):
                        r = (n * OH + oh) * OW
                        ih = oh * sh - ph + kh * dh
                        if ih < 0 or ih >= H:
                            for ow in range(OW):
                                col[c, kh, kw, r + ow] = 0
                            continue
                        for ow in range(OW):
                            iw = ow * sw - pw + kw * dw
                            if iw >= 0 and iw < W:
                                col[c, kh, kw, r + ow] = x[n, c, ih, iw]
                            else:
                                col[c, kh, kw, r + ow] = 0


def im2col_images_strided_2d(x, col, geom):
    """im2col_images_2d for a horizontal stride above 1, as runs of stride phases
    (_copy_row_runs): the same columns. Its own kernel, so that layers with stride 1 never
    compile it."""
    # (m, rows, R): row (n, k) starts at (n·rows + k)·R
    _copy_row_runs(x, col.reshape(-1), geom, col.shape[1] * col.shape[2], col.shape[2])


def im2col_rows_strided_2d(x, col, geom):
    """im2col_rows_2d for a horizontal stride above 1 (_copy_row_runs): the same columns."""
    # (C, KH, KW, R): row k starts at k·R, image n's positions at n·OH·OW within it
    _copy_row_runs(x, col.reshape(-1), geom, geom[6] * geom[7], col.shape[3])


def _stride_phases_py(x, sw):
    """The rows of x (m, C, H, W), C order, split into their ``sw`` horizontal stride phases,
    flat: value (r·sw + p)·Wq + j is x's row r (r = (n·C + c)·H + h) at column j·sw + p, with
    Wq = ceil(W / sw) (a shorter phase's last slot is left unset: nothing reads it)."""
    m, C, H, W = x.shape
    Wq = (W + sw - 1) // sw
    out = np.empty(m * C * H * sw * Wq, np.float32)
    xf = x.reshape(-1)
    for r in range(m * C * H):
        for p in range(sw):
            base = (r * sw + p) * Wq
            src = r * W + p
            for j in range((W - p + sw - 1) // sw):
                out[base + j] = xf[src + j * sw]
    return out


def _copy_row_runs_py(x, cf, geom, image_step, k_step):
    """Channels-first im2col with a horizontal stride above 1 (any stride gives the same
    columns), for both layouts: the windows' columns at one kernel position along one output
    row read x's row at kw·d_w − p_w + ow·s_w, every s_w-th value, i.e. one contiguous run of a
    stride phase of the row (_stride_phases), so each output row is zeros, one run copied,
    zeros (a strided gather per value measured 2.6 times slower for CaffeNet's conv1, 11 × 11
    stride 4, and 3.7 times for a 7 × 7 stride 2 one on 224 × 224 images). ``cf`` is the flat
    column buffer: the row of kernel position k of image n, output row oh starts at
    n·image_step + k·k_step + oh·OW."""
    m, C, H, W = x.shape
    sh, sw, ph, pw, dh, dw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    OH, OW, KH, KW = geom[6], geom[7], geom[8], geom[9]
    Wq = (W + sw - 1) // sw
    xph = _stride_phases(x, sw)
    for n in range(m):
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    k = (c * KH + kh) * KW + kw
                    off = kw * dw - pw
                    p = off % sw
                    j0 = (off - p) // sw
                    lo = min(OW, max(0, -j0))
                    hi = max(lo, min(OW, (W - 1 - p) // sw - j0 + 1))
                    for oh in range(OH):
                        d = n * image_step + k * k_step + oh * OW
                        ih = oh * sh - ph + kh * dh
                        if ih < 0 or ih >= H:
                            for ow in range(OW):
                                cf[d + ow] = 0
                            continue
                        for ow in range(lo):
                            cf[d + ow] = 0
                        du = np.uint64(d)
                        su = np.uint64((((n * C + c) * H + ih) * sw + p) * Wq + j0)
                        for ow in range(lo, hi):
                            u = np.uint64(ow)
                            cf[du + u] = xph[su + u]
                        for ow in range(hi, OW):
                            cf[d + ow] = 0


def windows_last_2d(xpad, col, geom):
    """col[n, oh, ow, g, kh, kw, c] = xpad[n, oh·s_h + kh·d_h, ow·s_w + kw·d_w, g·Cg + c]: the
    LAST layout's windows of zero-bordered channels-last images ``xpad`` (m, Hp, Wp, C), the
    copy caffepy.kernels.im2col.window_view gives as a strided view. Each window row is one run
    of kernel_w·C values when there is one group and no horizontal dilation, else runs of C/G;
    flat unsigned indices let the runs vectorise (NumPy's strided copy took 1.5 times as long).
    ``geom`` (s_h, s_w, p_h, p_w, d_h, d_w)."""
    m, Hp, Wp, C = xpad.shape
    OH, OW, G, KH, KW, Cg = col.shape[1], col.shape[2], col.shape[3], col.shape[4], \
        col.shape[5], col.shape[6]
    sh, sw, dh, dw = geom[0], geom[1], geom[4], geom[5]
    xf, cf = xpad.reshape(-1), col.reshape(-1)
    whole = G == 1 and dw == 1
    run = np.uint64(KW * Cg if whole else Cg)
    d = np.uint64(0)
    for n in range(m):
        for oh in range(OH):
            for ow in range(OW):
                for g in range(G):
                    for kh in range(KH):
                        row = ((n * Hp + oh * sh + kh * dh) * Wp + ow * sw) * C + g * Cg
                        if whole:
                            s = np.uint64(row)
                            for i in range(run):
                                u = np.uint64(i)
                                cf[d + u] = xf[s + u]
                            d += run
                            continue
                        for kw in range(KW):
                            s = np.uint64(row + kw * dw * C)
                            for i in range(run):
                                u = np.uint64(i)
                                cf[d + u] = xf[s + u]
                            d += run


# -- col2im (channels-last, 2-D) -------------------------------------------------------------

def col2im_last_2d(col, dx, geom):
    """dx = 0, then dx[n, ih, iw, g·Cg + c] += col[n, oh, ow, g, kh, kw, c] for every window
    position inside the image (ih = oh·s_h − p_h + kh·d_h, likewise iw), so that each pixel
    receives its terms in Caffe's col2im order, kernel positions in row-major order (as in
    caffepy.kernels.im2col.col2im_last): the sums are the same bits.
    ``col`` (m, OH, OW, G, KH, KW, Cg); ``dx`` (m, H, W, G·Cg); ``geom`` (s_h, s_w, p_h, p_w,
    d_h, d_w)."""
    for n in range(col.shape[0]):
        _col2im_last_image(col, n, dx[n], geom)


def col2im_last_first_2d(col, work, dx, geom):
    """col2im_last_2d with the result channels-first: each image is summed into ``work``
    (H, W, C), which stays in cache, then written to ``dx`` (m, C, H·W) as channels × pixels,
    so the layer needs no transposing pass over the whole block afterwards (LeNet's conv2:
    0.08 ms an iteration in the net). The same bits as col2im_last_2d, transposed."""
    C = work.shape[2]
    wf = work.reshape(-1)
    for n in range(col.shape[0]):
        _col2im_last_image(col, n, work, geom)
        d = dx[n]
        for c in range(C):
            for q in range(d.shape[1]):
                d[c, q] = wf[q * C + c]


def _col2im_last_image_py(col, n, out, geom):
    """Image n of col2im_last_2d into ``out`` (H, W, G·Cg), zeroed first.

    With one group and no horizontal dilation, a window row's kernel_w · C terms lie side by
    side in both arrays, so they are added as one run (twice as fast as runs of C: LeNet's
    conv2, 20 channels, 0.115 -> 0.06 ms for 16 images); the windows of an image row then go
    right to left, which gives each pixel its terms of one kernel row in the order of their
    kernel columns, as Caffe adds them."""
    m, OH, OW, G, KH, KW, Cg = col.shape
    H, W, C = out.shape
    sh, sw, ph, pw, dh, dw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    xf, cf = out.reshape(-1), col.reshape(-1)
    for i in range(np.uint64(H * W * C)):
        xf[i] = 0
    if G == 1 and dw == 1:
        for kh in range(KH):
            for oh in range(OH):
                ih = oh * sh - ph + kh * dh
                if ih < 0 or ih >= H:
                    continue
                for ow in range(OW - 1, -1, -1):
                    iw = ow * sw - pw               # the window's first column
                    lo, hi = max(0, -iw), min(KW, W - iw)
                    if hi <= lo:
                        continue
                    s = np.uint64(((((n * OH + oh) * OW + ow) * KH + kh) * KW + lo) * C)
                    d = np.uint64((ih * W + iw + lo) * C)
                    for j in range(np.uint64((hi - lo) * C)):
                        u = np.uint64(j)
                        xf[d + u] += cf[s + u]
        return
    for kh in range(KH):
        for kw in range(KW):
            for oh in range(OH):
                ih = oh * sh - ph + kh * dh
                if ih < 0 or ih >= H:
                    continue
                for ow in range(OW):
                    iw = ow * sw - pw + kw * dw
                    if iw < 0 or iw >= W:
                        continue
                    for g in range(G):
                        for c in range(Cg):
                            out[ih, iw, g * Cg + c] += col[n, oh, ow, g, kh, kw, c]


# -- MAX pooling --------------------------------------------------------------------------------

def maxpool_forward(x, top, code, grids, best, wins, phase, shift, cand, boxes, geom):
    """top = each window's maximum, code = its winner's code (0: none), in one pass over x.

    Caffe's scan: strict '>' from -FLT_MAX through the window clamped to the image in row-major
    order, so the first maximum wins, NaN never does, and nothing wins where the maximum stays
    at -FLT_MAX. The layout is caffepy.kernels.pooling.Pool2D's stride-phase grids, built here a
    block of planes at a time in ``grids`` (phases, block cells + the largest shift; cells
    outside the image hold -inf and are never written), so the block stays in cache: kernel
    position j reads ``grids[phase[j]]`` at cell + ``shift[j]`` and has code ``cand[j]`` (NF
    minus its offset from the window origin). ``boxes`` (phases, 7): the grid rows [ilo, ihi)
    and columns [jlo, jhi) that hold image pixels and the first pixel's (h0, w0), as
    (ilo, ihi, h0, jlo, jhi, w0), and the pairing of _copy_phase_grids; ``geom``: (stride_h,
    stride_w, grid rows, grid columns, planes per block, ...). ``best``/``wins``: work rows of a
    block's cells.
    """
    nc = x.shape[0]
    OH, OW = top.shape[1], top.shape[2]
    Wq, P = geom[3], geom[4]
    plane = geom[2] * Wq
    lowest = -FLT_MAX
    for p0 in range(0, nc, P):
        npl = min(P, nc - p0)
        n = npl * plane
        _copy_phase_grids(x, p0, npl, grids, boxes, geom, False)
        for c in range(n):
            best[c] = lowest
            wins[c] = 0
        for j in range(phase.shape[0]):
            xv = grids[phase[j], shift[j]:shift[j] + n]
            cj = cand[j]
            for c in range(n):
                v = xv[c]
                b = best[c]
                gt = v > b
                m = -np.int32(gt)                      # all ones where v wins
                best[c] = v if gt else b
                wins[c] = (cj & m) | (wins[c] & ~m)
        # the block's output box to the top, row by row (flat unsigned indices: the short row
        # copies vectorise; indexing [p, oh, ow] took three to seven times as long)
        tf, cf = top.reshape(-1), code.reshape(-1)
        for q in range(npl):
            for oh in range(OH):
                o = np.uint64(q * plane + oh * Wq)
                d = np.uint64(((p0 + q) * OH + oh) * OW)
                for ow in range(np.uint64(OW)):
                    u = np.uint64(ow)
                    tf[d + u] = best[o + u]
                    cf[d + u] = wins[o + u]


def maxpool2_forward(x, top, code):
    """``maxpool_forward`` for 2 x 2 windows with stride 2 and no padding, read straight from x
    (no phase grids): three times as fast on LeNet's pools, where every pixel belongs to one
    window. Caffe's scan (strict '>' from -FLT_MAX in row-major order, so the first maximum
    wins and NaN never does) and the same codes: NF - the winner's offset from the window's
    origin, NF = W + 2, 0 for none. x (planes, H, W); top and code (planes, OH, OW) with
    OH = H // 2 or, in ceil mode with an odd H, H // 2 + 1, whose last row of windows holds
    one image row (OW likewise)."""
    nc, H, W = x.shape
    OH, OW = top.shape[1], top.shape[2]
    h2, w2 = H // 2, W // 2                 # the windows that lie wholly inside the image
    xf, tf, cf = x.reshape(-1), top.reshape(-1), code.reshape(-1)
    kind = code.dtype.type
    c00, c01, c10, c11 = kind(W + 2), kind(W + 1), kind(2), kind(1)
    none = kind(0)
    lowest = -FLT_MAX
    one, uw = np.uint64(1), np.uint64(W)
    for p in range(nc):
        for oh in range(h2):
            r0 = np.uint64((p * H + 2 * oh) * W)
            r1 = r0 + uw
            o = np.uint64((p * OH + oh) * OW)
            for ow in range(np.uint64(w2)):
                u = np.uint64(ow)
                j = u + u
                a, b = xf[r0 + j], xf[r0 + j + one]
                c, d = xf[r1 + j], xf[r1 + j + one]
                best, k = lowest, none
                if a > best:
                    best, k = a, c00
                if b > best:
                    best, k = b, c01
                if c > best:
                    best, k = c, c10
                if d > best:
                    best, k = d, c11
                tf[o + u] = best
                cf[o + u] = k
        if OH > h2 or OW > w2:
            _maxpool2_edges(xf, tf, cf, p, H, W, OH, OW)


def _maxpool2_edges_py(xf, tf, cf, p, H, W, OH, OW):
    """maxpool2_forward's windows that hang off an odd-sized plane p (ceil mode): a last
    column and a last row of windows, one pixel wide or high."""
    h2, w2 = H // 2, W // 2
    kind = cf.dtype.type
    for oh in range(OH):
        r0 = (p * H + 2 * oh) * W
        o = (p * OH + oh) * OW
        first = w2 if oh < h2 else 0
        for ow in range(first, OW):
            best, k = -FLT_MAX, kind(0)
            for i in range(min(2, H - 2 * oh)):
                for j in range(min(2, W - 2 * ow)):
                    v = xf[r0 + i * W + 2 * ow + j]
                    if v > best:
                        best, k = v, kind(W + 2 - i * W - j)
            tf[o + ow] = best
            cf[o + ow] = k


def maxpool_backward(code, dy, base_nf, dx):
    """dx = 0, then dx[winner] += dy for each output, planes and outputs in row-major order
    (Caffe's order). ``code`` (planes, OH, OW): NF - the winner's offset from its window's
    origin, 0 for none; ``base_nf`` (OH, OW): each window's origin h·W + w, plus NF;
    ``dy`` (planes, OH, OW); ``dx`` (planes, H·W)."""
    nc, OH, OW = dy.shape
    cf, dyf, bf = code.reshape(-1), dy.reshape(-1), base_nf.reshape(-1)
    n = OH * OW
    for p in range(nc):
        d = dx[p]
        for i in range(d.shape[0]):
            d[i] = 0
        o = p * n
        for i in range(n):
            k = cf[o + i]
            if k != 0:
                d[bf[i] - k] += dyf[o + i]


# -- AVE pooling --------------------------------------------------------------------------------

def avepool_forward(x, top, divisor, grids, acc, phase, shift, boxes, geom):
    """top = (the window's sum, pixel after pixel in row-major order) / divisor: Caffe's AVE.

    The same blocks of phase grids as ``maxpool_forward`` (cells outside the image hold 0 and
    are never written); ``divisor`` (OH, OW) is Caffe's pool_size; ``acc`` a work row."""
    nc, H, W = x.shape
    OH, OW = top.shape[1], top.shape[2]
    plane = geom[2] * geom[3]
    for p0 in range(0, nc, geom[4]):
        npl = min(geom[4], nc - p0)
        n = npl * plane
        _copy_phase_grids(x, p0, npl, grids, boxes, geom, False)
        for c in range(n):
            acc[c] = 0
        for j in range(phase.shape[0]):
            xv = grids[phase[j], shift[j]:shift[j] + n]
            for c in range(n):
                acc[c] += xv[c]
        tf, df = top.reshape(-1), divisor.reshape(-1)
        for q in range(npl):
            for oh in range(OH):
                o = np.uint64(q * plane + oh * geom[3])
                d = np.uint64(((p0 + q) * OH + oh) * OW)
                v = np.uint64(oh * OW)
                for ow in range(np.uint64(OW)):
                    u = np.uint64(ow)
                    tf[d + u] = acc[o + u] / df[v + u]


def avepool_backward(dy, dx, divisor, grids, spread, phase, shift, boxes, geom):
    """dx = 0, then every pixel of each window += dy / divisor, outputs in row-major order
    (Caffe's order: kernel positions from the last to the first). ``grids`` (phases, block
    cells + the largest shift) and ``spread`` (block cells) are work rows; geom[5] is 1 when the
    phase grids hold every pixel (else dx is zeroed first)."""
    nc, OH, OW = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    Hq, Wq, P = geom[2], geom[3], geom[4]
    plane = Hq * Wq
    K = phase.shape[0]
    dxf, dyf, df = dx.reshape(-1), dy.reshape(-1), divisor.reshape(-1)
    for p0 in range(0, nc, P):
        npl = min(P, nc - p0)
        n = npl * plane
        for c in range(n):
            spread[c] = 0
        for q in range(npl):
            for oh in range(OH):
                o = np.uint64(q * plane + oh * Wq)
                d = np.uint64(((p0 + q) * OH + oh) * OW)
                v = np.uint64(oh * OW)
                for ow in range(np.uint64(OW)):
                    u = np.uint64(ow)
                    spread[o + u] = dyf[d + u] / df[v + u]
        for f in range(grids.shape[0]):
            g = grids[f]
            for c in range(g.shape[0]):
                g[c] = 0
        for jj in range(K):
            j = K - 1 - jj
            gv = grids[phase[j], shift[j]:shift[j] + n]
            for c in range(n):
                gv[c] += spread[c]
        if geom[5] == 0:
            for i in range(p0 * H * W, (p0 + npl) * H * W):
                dxf[i] = 0
        _copy_phase_grids(dx, p0, npl, grids, boxes, geom, True)


def _copy_phase_grids_py(x, p0, npl, grids, boxes, geom, to_image):
    """Copy planes p0 .. p0+npl of x into the block's phase grids (image cells only), or with
    ``to_image`` the grids' image cells back into x.

    ``boxes[f, 6]`` pairs the phases of a horizontal stride of 2: the phase of even grid
    columns' image pixels names its partner (the next pixels to the right), which says -2 and is
    copied with it. One pass over an image row then serves both, in the row's order (twice as
    fast as two strided passes); a phase with no partner (-1), and the columns one of a pair
    has beyond the other, are copied alone."""
    for f in range(boxes.shape[0]):
        g = boxes[f, 6]
        if g == -2:
            continue
        if g < 0:
            _copy_columns(x, p0, npl, grids, boxes, geom, f, boxes[f, 3], boxes[f, 4], to_image)
            continue
        lo = max(boxes[f, 3], boxes[g, 3])
        hi = max(lo, min(boxes[f, 4], boxes[g, 4]))
        for ph in (f, g):
            # (calls for empty ranges cost nearly half as much as the copying: test first)
            if boxes[ph, 3] < lo:
                _copy_columns(x, p0, npl, grids, boxes, geom, ph, boxes[ph, 3],
                              min(lo, boxes[ph, 4]), to_image)
            if boxes[ph, 4] > hi:
                _copy_columns(x, p0, npl, grids, boxes, geom, ph, max(hi, boxes[ph, 3]),
                              boxes[ph, 4], to_image)
        if hi > lo:
            _copy_pair(x, p0, npl, grids, boxes, geom, f, g, lo, hi, to_image)


def _copy_columns_py(x, p0, npl, grids, boxes, geom, f, c0, c1, to_image):
    """Phase f's grid columns [c0, c1) of planes p0 .. p0+npl (image pixels only)."""
    H, W = x.shape[1], x.shape[2]
    sh, sw, Hq, Wq = geom[0], geom[1], geom[2], geom[3]
    plane = Hq * Wq
    xf = x.reshape(-1)
    usw = np.uint64(sw)
    ilo, ihi, h0 = boxes[f, 0], boxes[f, 1], boxes[f, 2]
    first = boxes[f, 5] + (c0 - boxes[f, 3]) * sw
    gr = grids[f]
    n = np.uint64(c1 - c0)
    for q in range(npl):
        for r in range(ilo, ihi):
            # unsigned indices: no negative-index wraparound, so the copy vectorises
            src = np.uint64(((p0 + q) * H + h0 + (r - ilo) * sh) * W + first)
            dst = np.uint64(q * plane + r * Wq + c0)
            if to_image:
                for cc in range(n):
                    u = np.uint64(cc)
                    xf[src + u * usw] = gr[dst + u]
            else:
                for cc in range(n):
                    u = np.uint64(cc)
                    gr[dst + u] = xf[src + u * usw]


def _copy_pair_py(x, p0, npl, grids, boxes, geom, f, g, c0, c1, to_image):
    """Grid columns [c0, c1) of a pair of stride-2 phases f and g: column c of f holds image
    pixel w, of g w + 1 (f's box gives w). (Its row loop is _copy_columns'; one function for
    both, choosing its copy loop per call, made the pooling kernels a third slower.)"""
    H, W = x.shape[1], x.shape[2]
    sh, Hq, Wq = geom[0], geom[2], geom[3]
    plane = Hq * Wq
    xf = x.reshape(-1)
    g0, g1 = grids[f], grids[g]
    ilo, ihi, h0 = boxes[f, 0], boxes[f, 1], boxes[f, 2]
    first = boxes[f, 5] + (c0 - boxes[f, 3]) * 2
    n = np.uint64(c1 - c0)
    two, one = np.uint64(2), np.uint64(1)
    for q in range(npl):
        for r in range(ilo, ihi):
            src = np.uint64(((p0 + q) * H + h0 + (r - ilo) * sh) * W + first)
            dst = np.uint64(q * plane + r * Wq + c0)
            # unsigned: the two accesses of a pixel pair vectorise as one
            if to_image:
                for cc in range(n):
                    u = np.uint64(cc)
                    s2 = src + two * u
                    xf[s2] = g0[dst + u]
                    xf[s2 + one] = g1[dst + u]
            else:
                for cc in range(n):
                    u = np.uint64(cc)
                    s2 = src + two * u
                    g0[dst + u] = xf[s2]
                    g1[dst + u] = xf[s2 + one]


# compiled by kernels() along with their callers
_copy_phase_grids = _copy_phase_grids_py
_copy_columns = _copy_columns_py
_stride_phases = _stride_phases_py
_copy_row_runs = _copy_row_runs_py
_col2im_last_image = _col2im_last_image_py
_copy_pair = _copy_pair_py
_maxpool2_edges = _maxpool2_edges_py


# -- bias ---------------------------------------------------------------------------------------

def add_channel_bias(y, bias):
    """y[n, c, p] += bias[c] for y (images, channels, positions): a convolution's bias term, in
    place, each image's channel rows in turn (NumPy's broadcast add took 3.5 times as long)."""
    m, C, P = y.shape
    yf = y.reshape(-1)
    for n in range(m):
        for c in range(C):
            b = bias[c]
            row = np.uint64((n * C + c) * P)
            for p in range(np.uint64(P)):
                u = np.uint64(p)
                yf[row + u] += b


def add_bias_from_last(src, bias, dst):
    """dst[n, c, p] = src[n, p, c] + bias[c]: a channels-last convolution's products (images,
    positions, channels) into the top's layout (images, channels, positions), the bias added
    on the way. NumPy's broadcast add over the transposed view took 1.4 to 2.4 times as long
    (LeNet's conv2, 16 images of 64 positions and 50 channels: 17.5 against 7.6 µs; a 784 ×
    128 image 80 against 50)."""
    m, P, C = src.shape
    for n in range(m):
        for c in range(C):
            b = bias[c]
            for p in range(P):
                dst[n, c, p] = src[n, p, c] + b


# -- ReLU ---------------------------------------------------------------------------------------

def relu_forward(x, y, slope):
    """y = max(x, 0) + slope · min(x, 0), Caffe's CPU formula term for term, with its
    std::max / std::min (the first argument unless the second compares greater / smaller): NaN
    stays NaN, and with slope 0 a -inf gives 0 · -inf = NaN, as in Caffe. One pass (NumPy's
    maximum alone took three times as long). ``y`` may be ``x`` (an in-place ReLU): that loop
    reads and writes one array, which vectorises; two arrays that might overlap would not."""
    zero = np.float32(0)
    if y.ctypes.data == x.ctypes.data:
        for i in range(x.shape[0]):
            v = x[i]
            x[i] = (zero if v < zero else v) + slope * (zero if zero < v else v)
        return
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = (zero if v < zero else v) + slope * (zero if zero < v else v)


def relu_backward(x, dy, dx, slope):
    """dx = dy · ((x > 0) + slope · (x <= 0)), Caffe's factor term for term (1 or slope, and 0
    where x is NaN). ``dx`` may be ``dy`` (in place: one array, as in relu_forward)."""
    one, zero = np.float32(1), np.float32(0)
    if dx.ctypes.data == dy.ctypes.data:
        for i in range(x.shape[0]):
            v = x[i]
            dx[i] = dx[i] * ((one if v > zero else zero) + slope * (one if v <= zero else zero))
        return
    for i in range(x.shape[0]):
        v = x[i]
        dx[i] = dy[i] * ((one if v > zero else zero) + slope * (one if v <= zero else zero))


# -- solver update ------------------------------------------------------------------------------

def l2_decay(data, diff, local_decay):
    """diff += local_decay · data in one pass (Caffe's caffe_axpy for L2 weight decay: the
    product rounded to float32, then the sum); NumPy needed a product into a work buffer and
    an add, block by block."""
    for i in range(diff.shape[0]):
        diff[i] = diff[i] + local_decay * data[i]


def sgd_step(data, diff, history, local_decay, local_rate, momentum):
    """A whole SGD step of one param in one pass, each operation Caffe's in its order:
    diff += local_decay · data (L2 weight decay, skipped when local_decay is 0, as Caffe skips
    it), h = momentum · h + local_rate · diff (caffe_cpu_axpby), diff = h, data -= diff
    (Blob::Update). The same bits as l2_decay, sgd_momentum and the update one after another,
    with one pass over the three arrays instead of three."""
    decay = local_decay != 0
    for i in range(diff.shape[0]):
        g = diff[i]
        if decay:
            g = g + local_decay * data[i]
        h = history[i] * momentum
        h = h + local_rate * g
        history[i] = h
        diff[i] = h
        data[i] = data[i] - h


def sgd_momentum(diff, history, local_rate, momentum):
    """SGD with momentum in one pass: h = momentum·h + local_rate·g; g = h, with Caffe's
    float32 roundings (caffe_cpu_axpby: h scaled first, then local_rate·g added)."""
    for i in range(diff.shape[0]):
        h = history[i] * momentum
        h = h + local_rate * diff[i]
        history[i] = h
        diff[i] = h
