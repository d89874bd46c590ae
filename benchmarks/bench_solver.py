#!/usr/bin/env python3
"""What does structured sparsity cost per training iteration? (LeNet, batch 64)

Trains examples/mnist/lenet_train_test.prototxt (its Data layer replaced by a MemoryData layer
holding the bundled MNIST training digits, so no database is read) with Caffe's
lenet_solver settings, and, in the same process with the runs
alternated, the same net with the SSL group lasso of examples/mnist/lenet_grouplasso_solver
(rows and columns of conv1, conv2, rows of ip1; zerout_threshold 1e-4). Prints the median CPU
time and wall time of one whole iteration (forward, backward, update) and of the update alone
(``apply_update``), and the ratio group lasso / plain — the reference is the plain Caffe solver.

    python benchmarks/bench_solver.py [--iterations 100] [--threads 1]

``--threads N`` limits the BLAS threads and caffepy's convolution threads (default 1, the
robust CPU-time figure);
``--threads 0`` leaves them as they are (all-core wall time).
"""
import argparse
import contextlib
import os
import statistics
import time

import numpy as np

import caffepy
from caffepy.datasets import mnist_5k
from caffepy.proto import caffe_pb2, parse_text, read_text
from caffepy.solver import read_solver_file

from bench_nets import training_only  # noqa: E402  (benchmarks/ is on sys.path when run)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MEMORY = ('name: "mnist" type: "MemoryData" top: "data" top: "label" memory_data_param { '
          'batch_size: 64 channels: 1 height: 28 width: 28 }')


def solver(solver_file):
    param = read_solver_file(os.path.join(ROOT, solver_file))
    net = read_text(os.path.join(ROOT, param.net), caffe_pb2.NetParameter())
    layers = [lp for lp in net.layer if lp.type not in ("Data", "Accuracy")
              and not any(r.phase == caffe_pb2.TEST for r in lp.include)]
    del net.layer[:]
    net.layer.add().CopyFrom(parse_text(MEMORY, caffe_pb2.LayerParameter()))
    for lp in layers:
        net.layer.add().CopyFrom(lp)
    training_only(param, net)
    param.solver_mode = caffe_pb2.SolverParameter.CPU
    s = caffepy.get_solver(param)
    digits = mnist_5k()
    n = len(digits["train_images"]) // 64 * 64           # MemoryData takes whole batches
    images = digits["train_images"][:n, None].astype(np.float32) * np.float32(0.00390625)
    s.net.set_input_arrays(images, digits["train_labels"][:n].astype(np.float32))
    return s


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    limit = contextlib.nullcontext()
    if args.threads:
        from threadpoolctl import threadpool_info, threadpool_limits
        caffepy.backend.set_num_threads(args.threads)       # the convolution pool too
        limit = threadpool_limits(args.threads)
        print("BLAS:", ", ".join("%s %s (%s)" % (i["internal_api"], i.get("version"),
                                                 i.get("architecture")) for i in threadpool_info()))
    runs = {"plain": solver("examples/mnist/lenet_solver.prototxt"),
            "group lasso": solver("examples/mnist/lenet_grouplasso_solver.prototxt")}
    step = {k: [] for k in runs}
    update = {k: [] for k in runs}
    with limit:
        for s in runs.values():
            s.step(5)                                   # warm-up
        for _ in range(args.iterations):
            for name, s in runs.items():
                step[name].append(timed(lambda: s.step(1)))
                s.net.clear_param_diffs()
                s.net.forward_backward()
                update[name].append(timed(s.apply_update))

    def med(xs, i):
        return 1000 * statistics.median(x[i] for x in xs)
    print("LeNet batch 64, %d iterations, medians in ms (CPU / wall):" % args.iterations)
    print("%-12s %18s %18s" % ("", "iteration", "apply_update"))
    for name in runs:
        print("%-12s %8.2f / %7.2f %8.3f / %7.3f" % (name, med(step[name], 0), med(step[name], 1),
                                                     med(update[name], 0), med(update[name], 1)))
    print("ratio group lasso / plain: iteration %.3f (CPU), update %.2f (CPU)"
          % (med(step["group lasso"], 0) / med(step["plain"], 0),
             med(update["group lasso"], 0) / med(update["plain"], 0)))


if __name__ == "__main__":
    main()
