"""All cores on one layer's work: a batch split into blocks that a few threads take in turn.

A CPU kernel that wants the other cores splits its batch into blocks (``split``) and calls
``run_blocks(fn, nblocks)``: ``fn(worker, block)`` runs once per block, on the calling thread
(worker 0) and a small pool of worker threads, each taking the next block when it is free, and
``run_blocks`` returns when all are done. NumPy's copies and ufuncs and OpenBLAS's GEMMs release
the GIL, so the blocks really run side by side — as long as the calls are long: two threads
making many short calls (tens of microseconds) mostly wait for each other's GIL, so a block
should hold a good deal of work, and a small layer is better left as one block. (``run(fn,
parts)`` runs fn(part) once per part, one part per thread.)

Each block writes only its own outputs, and any sum across blocks (a weight gradient) is kept
per block and added by the caller in block order afterwards: results never depend on how the
threads were scheduled, nor on how many there are.

While the pool is in use, BLAS runs one thread per call (threadpoolctl, set once when the pool
is made): the parallelism is the pool's, and two-thread GEMMs called from two threads would only
fight over the same cores. ``CAFFEPY_NUM_THREADS`` (caffepy.backend.num_threads) sets the number
of threads; 1 is the serial path, which leaves BLAS's own threads as they are. (Setting BLAS to
one thread only around each pooled call measured slower: OpenBLAS's idle threads spin on the
cores the pool needs.) In GPU mode there is one part: the device is the parallel machine.
"""
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as _np

from . import backend

log = logging.getLogger("caffepy")

_lock = threading.Lock()
_pool = None             # the ChunkPool for the current thread count (None: serial)
_blas_limit = None       # threadpoolctl limiter holding BLAS at one thread while a pool exists
_warned = False


class ChunkPool:
    """``threads - 1`` worker threads; the caller's thread runs part 0."""

    def __init__(self, threads):
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads - 1, thread_name_prefix="caffepy-chunks")

    def run(self, fn, parts):
        """fn(0), …, fn(parts - 1), side by side; re-raises the first part's error."""
        futures = [self._executor.submit(fn, p) for p in range(1, parts)]
        error = None
        try:
            fn(0)
        except BaseException as e:      # still wait for the others: they use shared buffers
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:
                if error is None:
                    error = e
        if error is not None:
            raise error

    def run_blocks(self, fn, nblocks):
        """fn(worker, block) for every block, handed out in order to whichever worker is free."""
        lock = threading.Lock()
        state = [0]

        def worker(w):
            while True:
                with lock:
                    b = state[0]
                    state[0] = b + 1
                if b >= nblocks:
                    return
                fn(w, b)

        self.run(worker, min(self.threads, nblocks))

    def shutdown(self):
        self._executor.shutdown(wait=True)


def _limit_blas():
    """Hold BLAS at one thread per call; False where that cannot be done (no threadpoolctl)."""
    global _blas_limit, _warned
    if _blas_limit is not None:
        return True
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        if not _warned:
            _warned = True
            # a warning where the user asked for threads, a note where it is only the default
            say = log.warning if os.environ.get("CAFFEPY_NUM_THREADS", "").strip() else log.info
            say("%d threads need the threadpoolctl package to keep BLAS to one thread inside "
                "caffepy's thread pool (pip install threadpoolctl); running serially",
                backend.num_threads())
        return False
    _blas_limit = ThreadpoolController().limit(limits=1, user_api="blas")
    return True


def _release_blas():
    global _blas_limit
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None


def get_pool():
    """The pool for the configured thread count, or None for the serial path (one thread, GPU
    mode, or BLAS threads that cannot be limited)."""
    global _pool
    threads = backend.num_threads() if backend.mode() == backend.CPU else 1
    pool = _pool
    if pool is not None and pool.threads == threads:
        return pool
    if pool is None and threads == 1 and _blas_limit is None:
        return None
    with _lock:
        if _pool is not None and _pool.threads == threads:
            return _pool
        if _pool is not None:
            _pool.shutdown()
            _pool = None
        if threads > 1 and _limit_blas():
            _pool = ChunkPool(threads)
        elif threads == 1 and backend.mode() == backend.CPU:
            _release_blas()
        return _pool


def parts():
    """How many parts to split a batch into now (1 = serial)."""
    pool = get_pool()
    return 1 if pool is None else pool.threads


def run(fn, nparts):
    """fn(part) for part in range(nparts): on the pool when there is one and nparts > 1."""
    pool = get_pool() if nparts > 1 else None
    if pool is None:
        for p in range(nparts):
            fn(p)
    else:
        pool.run(fn, nparts)


def run_blocks(fn, nblocks):
    """fn(worker, block) for every block in range(nblocks): the blocks are handed out in order
    to min(threads, nblocks) workers, each taking the next block as it finishes one, so a thread
    slowed by other work on its core simply takes fewer. ``worker`` (0 = the calling thread)
    names the scratch to use; what a block computes must not depend on which worker ran it."""
    pool = get_pool() if nblocks > 1 else None
    if pool is None:
        for b in range(nblocks):
            fn(0, b)
    else:
        pool.run_blocks(fn, nblocks)


def split(count, nparts):
    """[start, stop) of ``nparts`` contiguous ranges covering range(count), sizes within one of
    each other (empty ranges dropped, so fewer parts than asked when count < nparts)."""
    nparts = max(1, min(nparts, count))
    base, extra = divmod(count, nparts)
    out, start = [], 0
    for p in range(nparts):
        stop = start + base + (1 if p < extra else 0)
        out.append((start, stop))
        start = stop
    return out


# Element-wise work (a ReLU, a pooling pass over independent planes) is worth splitting only
# when each part is long enough for the threads not to wait on each other's GIL.
MIN_SPLIT_BYTES = 1 << 20
# A compiled element-wise pass (ReLU, weight decay, the SGD step) runs at the speed of memory,
# which the two cores share, and a hand-off to the pool costs a thread wake-up: measured on a
# 2-core machine (bytes of all its arrays), splitting it in two was slower up to about 26 MB
# (ReLU forward on 3.3M values in place: 0.195 against 0.18 ms; 819,200: 0.12 against 0.04;
# the SGD step on 400,000 weights: 0.106 against 0.066) and faster from about 40 MB (ReLU
# backward on 3.3M values 0.83 against 0.90 ms, the SGD step on 4M weights 1.19 against 1.69).
MIN_SPLIT_BYTES_COMPILED = 32 << 20
# A matrix product is split into row blocks when it has at least this many multiply-adds;
# the split depends on the shapes only (never on the thread count), so its results are the
# same bits whether one thread runs the blocks or several.
MIN_SPLIT_MACS = 1 << 22
GEMM_ROW_BLOCKS = 2
# An accumulating product (a weight gradient added to the param diff) works a block of rows of
# at most this many bytes at a time.
ACCUMULATE_BLOCK_BYTES = 4 << 20


def parts_for(nbytes, count, min_bytes=None):
    """How many parts to split ``count`` independent items (``nbytes`` in all) into now: the
    thread count when the work is large enough to gain from it (``min_bytes``, default
    MIN_SPLIT_BYTES), else 1."""
    n = parts()
    if n == 1 or nbytes < (MIN_SPLIT_BYTES if min_bytes is None else min_bytes):
        return 1
    return max(1, min(n, count))


def elementwise(fn, arrays, compiled=False):
    """fn(*pieces) over contiguous pieces of equal-length flat arrays, side by side.

    ``arrays`` are 1-D views of one length; each part gets the same [start, stop) range of
    every array. Element-wise results do not depend on the split. ``compiled``: fn is one
    compiled pass, split only from MIN_SPLIT_BYTES_COMPILED."""
    count = arrays[0].shape[0]
    n = parts_for(sum(a.nbytes for a in arrays), count,
                  MIN_SPLIT_BYTES_COMPILED if compiled else None)
    if n == 1:
        fn(*arrays)
        return
    ranges = split(count, n)
    run(lambda p: fn(*(a[ranges[p][0]:ranges[p][1]] for a in arrays)), len(ranges))


def matmul(xp, a, b, out):
    """out = a @ b (stacks of matrices too). A product whose inner dimension is 1 is an outer
    product: NumPy computes that with its own loop, not BLAS (ten times slower: LeNet's ip1
    weight gradient at batch 1, 500 × 1 · 1 × 800, took 0.36 ms against 0.08), so it is one
    broadcast multiply here, each value the one product BLAS would give."""
    if a.shape[-1] == 1 and xp is _np:
        xp.multiply(a, b, out=out)
    else:
        xp.matmul(a, b, out=out)


def product(xp, a, b):
    """a @ b as a new array, for matrices or stacks of them; an outer product (inner dimension
    1) a broadcast multiply, as in ``matmul``."""
    if a.ndim >= 2 and b.ndim >= 2 and a.shape[-1] == 1 and xp is _np:
        return xp.multiply(a, b)
    return a @ b


def gemm_row_blocks(m, n, k, max_block_bytes=None):
    """[start, stop) row ranges of an (m × k)·(k × n) product, fixed by the shapes: two when
    the product is large enough to share, and (``max_block_bytes``) enough that each block's
    float32 rows of the result fit in that many bytes."""
    blocks = GEMM_ROW_BLOCKS if m * n * k >= MIN_SPLIT_MACS and m >= 2 * GEMM_ROW_BLOCKS else 1
    if max_block_bytes:
        blocks = max(blocks, -(-4 * m * n // max_block_bytes))
    return split(m, blocks)


def run_jobs(*job_lists):
    """Run the jobs of one or more products (lists from matmul_rows_jobs, matmul_cols_jobs:
    callables taking the worker number, as run_blocks hands it out) side by side on the pool,
    in one hand-off rather than one per product. A hand-off costs a thread wake-up (40–58 µs
    on an idle 2-core virtual machine): InnerProduct's backward, its weight and data gradients
    in one, went from 0.43 to 0.37 ms for LeNet's ip1. Products too small to be split (one
    job each) run here, one after another, with no hand-off."""
    jobs = [job for product in job_lists for job in product]
    if all(len(product) <= 1 for product in job_lists):
        for job in jobs:
            job(0)
    else:
        run_blocks(lambda worker, i: jobs[i](worker), len(jobs))


def matmul_rows_jobs(xp, a, b, out, accumulate=None):
    """The jobs of out = a·b (2-D) in row blocks of ``a`` and ``out`` (gemm_row_blocks), for
    run_jobs. ``out`` must be C-contiguous (each block a contiguous slab).

    ``accumulate=scratch`` adds the product to ``out`` instead (out += a·b, as a BLAS GEMM
    with beta = 1 does): each block's product goes to ``scratch(worker, rows)``, a (rows × n)
    float32 work array of the worker running it, then is added, so the work memory is a block
    (ACCUMULATE_BLOCK_BYTES), not a whole product."""
    m, k = a.shape
    n = b.shape[1]
    if xp is not _np:               # the device runs one product as it likes
        blocks = [(0, m)]
    else:
        blocks = gemm_row_blocks(m, n, k, ACCUMULATE_BLOCK_BYTES if accumulate else None)
    if accumulate is None:
        return [lambda worker, start=start, stop=stop: matmul(xp, a[start:stop], b,
                                                              out[start:stop])
                for start, stop in blocks]
    rows = max(stop - start for start, stop in blocks)

    def job(worker, start, stop):
        t = accumulate(worker, rows)[:stop - start]
        matmul(xp, a[start:stop], b, t)
        out[start:stop] += t
    return [lambda worker, start=start, stop=stop: job(worker, start, stop)
            for start, stop in blocks]


def matmul_rows(xp, a, b, out, accumulate=None):
    """out = a·b, or out += a·b (matmul_rows_jobs), its row blocks side by side on the pool."""
    run_jobs(matmul_rows_jobs(xp, a, b, out, accumulate))


def matmul_cols_jobs(xp, a, b, out):
    """The jobs of out = a·b (2-D) in column blocks of ``b`` and ``out`` (gemm_row_blocks of
    the transposed product, so fixed by the shapes), for run_jobs. For a short ``a`` (a batch
    of a few dozen rows times a layer's weights) this keeps each block's product as tall as
    the whole one: OpenBLAS runs two half-height products a third slower than one, two
    half-width ones barely slower (InnerProduct, 64 × 800 · 800 × 500: 0.33 ms whole, 0.48 in
    row halves, 0.38 in column halves, one thread)."""
    m, k = a.shape
    n = b.shape[1]
    blocks = [(0, n)] if xp is not _np else gemm_row_blocks(n, m, k)
    return [lambda worker, start=start, stop=stop: matmul(xp, a, b[:, start:stop],
                                                          out[:, start:stop])
            for start, stop in blocks]


def matmul_cols(xp, a, b, out):
    """out = a·b, its column blocks side by side on the pool (matmul_cols_jobs)."""
    run_jobs(matmul_cols_jobs(xp, a, b, out))


# matmul_transposed_out: a product whose result is at least this many times wider than it is
# tall is computed the other way round, as outᵀ = bᵀ·aᵀ, then transposed (see its docstring).
TRANSPOSED_OUT_RATIO = 4


def matmul_transposed_out(xp, a, b, out, work, bias=None):
    """out = a·b (+ ``bias``, one value per column), for a short ``a`` and a wide ``b`` that is
    the transpose of a C-contiguous array (an InnerProduct's x·Wᵀ): computed as outᵀ = bᵀ·aᵀ
    into ``work(shape)`` (which returns a float32 (n × m) array), then transposed into ``out``
    with the bias added, one block of columns per thread (gemm_row_blocks of outᵀ, fixed by the
    shapes, so the same bits for any thread count). OpenBLAS runs (64 × 800)·(800 × 500) with a
    transposed right operand in 0.33 ms on one thread, the transposed problem in 0.24 ms, and
    the transpose costs 0.02. Returns False, doing nothing, when the product is not wide enough
    (n < TRANSPOSED_OUT_RATIO · m) or not on the CPU: the caller then uses matmul_cols."""
    m, k = a.shape
    n = b.shape[1]
    if xp is not _np or m < 2 or n < TRANSPOSED_OUT_RATIO * m:
        return False
    bt = b.T
    wt = work((n, m))
    blocks = gemm_row_blocks(n, m, k)

    def block(p):
        start, stop = blocks[p]
        w = wt[start:stop]
        matmul(xp, bt[start:stop], a.T, w)
        if bias is None:
            out[:, start:stop] = w.T
        else:
            xp.add(w.T, bias[start:stop], out=out[:, start:stop])
    run(block, len(blocks))
    return True


def elementwise_with_temp(fn, arrays, temp):
    """fn(*pieces, work) over contiguous pieces of equal-length flat arrays, ``work`` a piece of
    the 1-D buffer ``temp`` as long as the others: the arrays are split among the threads and
    each thread's range is walked in blocks as long as its share of ``temp``, so a small work
    buffer serves an array of any size. Element-wise results do not depend on the split."""
    count = arrays[0].shape[0]
    nparts = parts_for(sum(a.nbytes for a in arrays), count)
    if temp.shape[0] < nparts:
        nparts = 1
    block = temp.shape[0] // nparts
    ranges = split(count, nparts)

    def part(p):
        start, stop = ranges[p]
        work = temp[p * block:(p + 1) * block]
        for s in range(start, stop, block):
            e = min(s + block, stop)
            fn(*(x[s:e] for x in arrays), work[:e - s])
    run(part, len(ranges))


def _forget_after_fork():
    # a forked child has none of the parent's worker threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
