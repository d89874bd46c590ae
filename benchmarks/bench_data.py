#!/usr/bin/env python3
"""How long does LeNet's train loop wait for data? (the Data layer's background prefetching)

Builds an MNIST LMDB (the bundled 4,000 training digits, keys %08d, as convert_mnist_data
writes them), then trains examples/mnist/lenet_train_test.prototxt (TRAIN net, batch 64,
scale 1/256) with plain SGD steps and measures, per iteration, the time spent in the Data
layer's forward (waiting for the next prefetched batch plus copying it into the tops) against
the whole iteration (forward, backward, update).

    python benchmarks/bench_data.py [--iterations 200] [--prefetch 4] [--compare]

--compare also runs the same loop with data_param.prefetch 0 (every batch read and transformed
inside forward, as without a prefetch thread) to show what the thread saves. The target is a
data wait under 5% of the iteration time with prefetching. Extra flags: --crop/--mirror add a
TRAIN transform (random crop 24, mirror) to give the thread more work per batch.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time


import caffepy
from caffepy.data import array_to_datum, write_lmdb
from caffepy.datasets import mnist_5k
from caffepy.proto import caffe_pb2
from caffepy.proto import read_text

HERE = os.path.dirname(os.path.abspath(__file__))
LENET = os.path.join(HERE, "..", "examples", "mnist", "lenet_train_test.prototxt")


def make_lmdb(path):
    d = mnist_5k()
    images, labels = d["train_images"], d["train_labels"]
    write_lmdb(path, (("%08d" % i, array_to_datum(images[i][None], int(labels[i])))
                      for i in range(len(images))))
    return len(images)


def build_net(db, prefetch, crop, mirror):
    param = read_text(LENET, caffe_pb2.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = db
            layer.data_param.prefetch = prefetch
            if crop:
                layer.transform_param.crop_size = 24
            if mirror:
                layer.transform_param.mirror = True
    param.state.phase = caffepy.TRAIN
    return caffepy.Net(param, caffepy.TRAIN)


def run(db, iterations, prefetch, crop=False, mirror=False, lr=0.01, warmup=5):
    caffepy.set_random_seed(1)
    net = build_net(db, prefetch, crop, mirror)
    data_layer = net.layers[0]
    assert data_layer.type == "Data"
    params = net.learnable_params
    data_time = 0.0
    total = 0.0
    orig_forward = data_layer.forward

    def timed_forward(bottom, top):
        nonlocal data_time
        t0 = time.perf_counter()
        try:
            return orig_forward(bottom, top)
        finally:
            data_time += time.perf_counter() - t0

    data_layer.forward = timed_forward
    losses = []
    for it in range(warmup + iterations):
        if it == warmup:
            data_time = 0.0
            t_start = time.perf_counter()
        net.clear_param_diffs()
        loss = net.forward_backward()
        for p in params:
            p.diff *= lr
        net.update()
        losses.append(float(loss))
    total = time.perf_counter() - t_start
    data_layer.close()
    del data_layer.forward
    return total / iterations, data_time / iterations, losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--compare", action="store_true",
                    help="also run without prefetching (prefetch 0)")
    ap.add_argument("--crop", action="store_true", help="random 24x24 crops at TRAIN")
    ap.add_argument("--mirror", action="store_true", help="random mirroring")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="caffepy-bench-data-")
    try:
        db = os.path.join(tmp, "mnist_train_lmdb")
        n = make_lmdb(db)
        print("LeNet TRAIN, batch 64, %d MNIST digits in an LMDB, %d iterations%s%s"
              % (n, args.iterations, ", crop 24" if args.crop else "",
                 ", mirror" if args.mirror else ""))
        rows = [("prefetch %d" % args.prefetch, args.prefetch)]
        if args.compare and args.prefetch != 0:
            rows.append(("prefetch 0 (no thread)", 0))
        results = {}
        fraction = None
        for name, pf in rows:
            it_s, data_s, losses = run(db, args.iterations, pf, args.crop, args.mirror)
            results[pf] = losses
            fraction = data_s / it_s if fraction is None else fraction
            print("  %-24s iteration %7.2f ms   data wait %6.3f ms   = %5.2f%% of the iteration"
                  % (name, it_s * 1e3, data_s * 1e3, 100.0 * data_s / it_s))
        print("  target: data wait under 5%% of the iteration with prefetching: %s"
              % ("met" if fraction < 0.05 else "NOT met"))
        if len(results) == 2:
            same = results[args.prefetch] == results[0]
            print("  same losses with and without the thread: %s" % same)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if fraction is not None and fraction < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
