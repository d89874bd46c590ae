#!/usr/bin/env python3
"""The GEMM floor of a training iteration: how long a net's matrix products alone take on this
machine, with one BLAS thread, as a bound on what any im2col + GEMM implementation can reach.

For every Convolution and InnerProduct layer of the bench_nets.py net (the example file, its
data layer an Input layer), the three products of a training iteration (forward, weight
gradient and, where the layer propagates down, data gradient) are timed through NumPy's matmul
on random float32 operands of the layer's shapes: a convolution's products over chunks of
images as the layer itself chunks them (about CHUNK_BYTES of columns), each in the faster of
the two orientations (a product or its transpose, with or without rows padded against cache
aliasing), times the number of chunks; an InnerProduct's as one product over the batch.
Nothing else is counted: no im2col, col2im, bias, pooling, activations, loss or update, so the
sum is a floor, not an estimate.

    python benchmarks/bench_gemm_floor.py [--nets lenet,cifar10_quick] [--repeat 30]

Prints, per product, the shape, GFLOP, ms and GFLOP/s, and the total per net. Run it alone on
the machine, like the other benchmarks (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be unset for
that one command).
"""
import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_nets  # noqa: E402


def products(net):
    """[(layer, what, m, k, n, times)]: the GEMMs (m × k)·(k × n) of one training iteration,
    ``times`` of them (a convolution's chunks; groups are separate products)."""
    out = []
    for i, layer in enumerate(net.layers):
        name = net.layer_names[i]
        down = any(net.bottom_need_backward[i])
        if layer.type == "Convolution":
            layer._plan()           # the layer's own chunks of images
            G, O, C, K = layer.group, layer.num_output, layer.channels, layer.kernel_count
            P = layer.geom.out_count
            Og, CKg = O // G, C * K // G
            chunks = collections.Counter(m for block in layer._blocks for _, m in block)
            for chunk, count in sorted(chunks.items(), reverse=True):
                times = G * count
                out.append((name, "forward", Og, CKg, chunk * P, times))
                out.append((name, "weight gradient", Og, chunk * P, CKg, times))
                if down:
                    out.append((name, "data gradient", CKg, Og, chunk * P, times))
        elif layer.type == "InnerProduct":
            M, N, K = layer.M, layer.N, layer.K
            out.append((name, "forward", M, K, N, 1))
            out.append((name, "weight gradient", N, M, K, 1))
            if down:
                out.append((name, "data gradient", M, N, K, 1))
    return out


def _rows_apart(a):
    """``a`` with its rows caffepy.kernels.im2col.row_length values apart (a view of a wider
    array), or ``a`` itself where that adds no padding."""
    import numpy as np
    from caffepy.kernels.im2col import row_length
    r, c = a.shape
    if row_length(c) == c:
        return a
    wide = np.empty((r, row_length(c)), np.float32)
    wide[:, :c] = a
    return wide[:, :c]


def time_product(m, k, n, repeat, rng):
    """Median seconds of the fastest way to an (m × k)·(k × n) product: a·b into an (m × n)
    array, or bᵀ·aᵀ into an (n × m) one (the same multiply-adds), each also with its operands'
    rows padded as caffepy pads column rows of 2 KB multiples."""
    import numpy as np
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    best = None
    ways = [(a, b), (np.ascontiguousarray(b.T), np.ascontiguousarray(a.T))]
    ways += [(_rows_apart(x), _rows_apart(y)) for x, y in ways
             if _rows_apart(x) is not x or _rows_apart(y) is not y]
    for x, y in ways:
        out = np.empty((x.shape[0], y.shape[1]), np.float32)
        np.matmul(x, y, out=out)
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            np.matmul(x, y, out=out)
            ts.append(time.perf_counter() - t)
        t = statistics.median(ts)
        best = t if best is None else min(best, t)
    return best


def floor(name, repeat=30, seed=0):
    """[(layer, what, m, k, n, times, seconds in all)] for the net ``name``, one BLAS thread."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    solver = bench_nets.caffepy_solver(name)
    rng = np.random.default_rng(seed)
    rows = []
    with threadpool_limits(1):
        for layer, what, m, k, n, times in products(solver.net):
            rows.append((layer, what, m, k, n, times, times * time_product(m, k, n, repeat, rng)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=bench_nets.DEFAULT_NETS)
    ap.add_argument("--repeat", type=int, default=30, help="timed repeats per product")
    args = ap.parse_args(argv)
    for i, name in enumerate(args.nets.split(",")):
        rows = floor(name, args.repeat)
        if i == 0:
            print("; ".join(bench_nets.blas_info()))
        print("\n== %s (batch %d): its matrix products alone, one thread =="
              % (name, bench_nets.NETS[name]["batch"]))
        print("%-8s %-16s %26s %8s %9s %8s" % ("layer", "product", "(m x k).(k x n) x times",
                                               "GFLOP", "ms", "GFLOP/s"))
        total = flops = 0.0
        for layer, what, m, k, n, times, secs in rows:
            gf = 2.0 * m * k * n * times / 1e9
            total += secs
            flops += gf
            print("%-8s %-16s %26s %8.3f %9.3f %8.1f" % (
                layer, what, "(%dx%d).(%dx%d) x %d" % (m, k, k, n, times), gf, secs * 1e3,
                gf / secs if secs else 0.0))
        print("%-8s %-16s %26s %8.3f %9.3f %8.1f" % ("all", "", "", flops, total * 1e3,
                                                     flops / total if total else 0.0))


if __name__ == "__main__":
    main()
