"""Compiled (numba) versions of the loops NumPy runs slowest, used when numba is installed.

numba is optional (``pip install 'caffepy[fast]'``). ``kernels()`` imports it the first time a
layer or an update rule asks (never at ``import caffepy``) and returns the compiled kernels, or
None when numba is not installed or the environment sets ``CAFFEPY_COMPILED=0``; every caller
then runs its NumPy code, which stays the reference: each kernel here gives the same bits.

The kernels are compiled once per machine and cached on disk: in ``$NUMBA_CACHE_DIR`` when the
user sets it, else in ``~/.cache/caffepy/numba`` (``$XDG_CACHE_HOME/caffepy/numba``). They run
on the calling thread (no numba threading layer), so they never compete with BLAS's threads.

The functions below are plain Python written in the subset numba compiles; ``kernels()``
compiles them. Run uncompiled they give the same results, slowly (the tests use that where
numba is missing).
"""
import os
import sys
import types

import numpy as np

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
    """The compiled kernels (a namespace of functions), or None: numba missing or turned off."""
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
    f32, i64, i32 = numba.float32, numba.int64, numba.int32

    def jit(signature, fn):
        return numba.njit(signature, cache=True, nogil=True)(fn)

    return types.SimpleNamespace(
        maxpool_backward=jit(
            numba.void(f32[:, ::1], f32[::1], i64[::1], i64[::1], i32[::1], i64, i64, i64,
                       i64[:, ::1], f32[:, :, ::1], f32[:, ::1]),
            maxpool_backward),
        sgd_momentum=jit(numba.void(f32[::1], f32[::1], f32, f32), sgd_momentum),
    )


# -- MAX pooling backward ----------------------------------------------------------------------

def maxpool_backward(grids, gmax, phase, shift, cand, Hq, Wq, L, base_nf, dy, dx):
    """dx = 0, then dx[winner of each output] += dy, planes and outputs in row-major order.

    The layout is caffepy.kernels.pooling.Pool2D's: ``grids`` (phases, cells) are the input's
    stride-phase grids, ``gmax`` (cells) the forward's maxima on the grid; kernel position j
    reads ``grids[phase[j]]`` at cell + ``shift[j]`` and has code ``cand[j]`` (NF - its offset
    from the window origin); ``base_nf`` (OH, OW) is each window's origin h·W + w plus NF;
    ``dy`` (planes, OH, OW); ``dx`` (planes, H·W). The winner is the first position equal to the
    maximum (the largest code), none where the maximum is -FLT_MAX (Caffe's start value).

    Works a block of planes at a time so the grid cells a block reads stay in cache.
    """
    nc, OH, OW = dy.shape
    plane = Hq * Wq
    P = max(1, 2048 // plane)
    K = phase.shape[0]
    code = np.empty(P * plane, np.int32)
    lowest = -FLT_MAX
    for p0 in range(0, nc, P):
        c0 = p0 * plane
        n = min(P * plane, L - c0)
        for c in range(n):
            code[c] = 0
        gv = gmax[c0:c0 + n]
        for j in range(K):
            s0 = c0 + shift[j]
            xv = grids[phase[j], s0:s0 + n]
            cj = cand[j]
            for c in range(n):
                hit = -np.int32(xv[c] == gv[c])          # all ones where equal
                code[c] = max(code[c], cj & hit)
        for q in range(min(P, nc - p0)):
            d = dx[p0 + q]
            for i in range(d.shape[0]):
                d[i] = 0
            for oh in range(OH):
                o = q * plane + oh * Wq
                for ow in range(OW):
                    k = code[o + ow]
                    if k != 0 and gv[o + ow] > lowest:
                        d[base_nf[oh, ow] - k] += dy[p0 + q, oh, ow]


# -- solver update ------------------------------------------------------------------------------

def sgd_momentum(diff, history, local_rate, momentum):
    """SGD with momentum in one pass: h = momentum·h + local_rate·g; g = h, with Caffe's
    float32 roundings (caffe_cpu_axpby: h scaled first, then local_rate·g added)."""
    for i in range(diff.shape[0]):
        h = history[i] * momentum
        h = h + local_rate * diff[i]
        history[i] = h
        diff[i] = h
