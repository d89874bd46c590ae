#!/usr/bin/env python
"""Structured sparsity on LeNet, end to end: baseline vs SSL group lasso, fine-tune, prune, time.

    python examples/mnist/ssl_lenet.py [--strengths 0.005,0.01,0.015,0.02] [--iters 2000] [--finetune 1000]

For the baseline and for each group-lasso strength s (breadth_decay = kernel_shape_decay = s;
the net file's per-layer multipliers scale it):
1. train LeNet from scratch on the bundled MNIST sample (4,000 training digits) with
   examples/mnist/lenet_grouplasso_solver.prototxt (the baseline: the same solver with the
   group decays set to 0);
2. fine-tune the result with examples/mnist/lenet_finetune_solver.prototxt (no group lasso;
   connectivity_mode DISCONNECTED_GRPWISE keeps the zero groups at zero);
3. measure test accuracy on the 1,000 held-out digits, the share of all-zero filters (rows)
   and all-zero columns of each convolution, prune the deploy net (examples/mnist/lenet.prototxt)
   with ``caffepy prune``'s Python API, check the pruned net's outputs against the unpruned
   net's, and time both forward passes in the same run (alternating, medians; CPU time with
   one BLAS thread when threadpoolctl is installed, plus wall time with all threads).

Prints a Markdown table; docs/structured-sparsity.md shows one run. Paths are relative to the
repository root (the script changes there first); outputs go to examples/mnist/ssl_runs/.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = "examples/mnist/ssl_runs"


def _solver_param(path, **fields):
    from caffepy.solver import read_solver_file
    param = read_solver_file(path)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(param, k).extend(v)
        else:
            setattr(param, k, v)
    return param


def _train(solver_file, prefix, iters, weights=None, **fields):
    import caffepy
    param = _solver_param(solver_file, max_iter=iters, snapshot=0, snapshot_prefix=prefix,
                          snapshot_after_train=True, test_interval=iters, random_seed=1,
                          **fields)
    if weights:
        param.weights.append(weights)
    solver = caffepy.get_solver(param)
    scores = []
    solver.add_listener(lambda ev, rec: scores.append(rec) if ev == "test" else None)
    solver.solve()
    acc = [v for _i, name, v, _w in scores[-1]["scores"] if name == "accuracy"][0]
    return float(acc), "%s_iter_%d.caffemodel" % (prefix, iters)


def _zero_groups(weights_file):
    """{conv layer: (% zero filters, % zero columns)} of a .caffemodel (exact zeros)."""
    import numpy as np
    from caffepy.proto import blobproto_to_array, caffe_pb2, read_binary
    net = read_binary(weights_file, caffe_pb2.NetParameter())
    out = {}
    for lp in net.layer:
        if lp.type != "Convolution" or not lp.blobs:
            continue
        w = blobproto_to_array(lp.blobs[0])
        m = w.reshape(w.shape[0], -1)
        out[lp.name] = (100.0 * np.mean(~m.any(axis=1)), 100.0 * np.mean(~m.any(axis=0)))
    return out


def _time_forward(nets, repeats, one_thread):
    """Median seconds per forward of each net, runs alternated; (cpu, wall) per net."""
    import contextlib
    limit = contextlib.nullcontext()
    if one_thread:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(1)
    cpu = [[] for _ in nets]
    wall = [[] for _ in nets]
    with limit:
        for net in nets:
            net.forward()                       # warm-up
        for _ in range(repeats):
            for i, net in enumerate(nets):
                c0, w0 = time.process_time(), time.perf_counter()
                net.forward()
                cpu[i].append(time.process_time() - c0)
                wall[i].append(time.perf_counter() - w0)
    return [statistics.median(c) for c in cpu], [statistics.median(w) for w in wall]


def _prune_and_time(weights_file, tag, repeats):
    import numpy as np
    import caffepy
    from caffepy.proto import caffe_pb2, read_binary, read_text, write_binary, write_text
    from caffepy.tools.prune import prune_net
    deploy = read_text("examples/mnist/lenet.prototxt", caffe_pb2.NetParameter())
    weights = read_binary(weights_file, caffe_pb2.NetParameter())
    new_deploy, new_weights, _report = prune_net(deploy, weights)
    pruned_model = os.path.join(OUT, tag + "_pruned.prototxt")
    pruned_weights = os.path.join(OUT, tag + "_pruned.caffemodel")
    write_text(new_deploy, pruned_model)
    write_binary(new_weights, pruned_weights)
    full = caffepy.Net("examples/mnist/lenet.prototxt", caffepy.TEST, weights=weights_file)
    small = caffepy.Net(pruned_model, caffepy.TEST, weights=pruned_weights)
    x = np.random.RandomState(0).rand(*full.blobs["data"].data.shape).astype(np.float32)
    full.blobs["data"].data[...] = x
    small.blobs["data"].data[...] = x
    full.forward()
    small.forward()
    err = float(np.abs(full.blobs["prob"].data - small.blobs["prob"].data).max())
    params = [sum(int(np.prod(b.data.shape)) for p in n.params.values() for b in p)
              for n in (full, small)]
    try:
        import threadpoolctl  # noqa: F401
        cpu, _ = _time_forward([full, small], repeats, one_thread=True)
    except ImportError:
        cpu = [float("nan"), float("nan")]
    _, wall = _time_forward([full, small], repeats, one_thread=False)
    shapes = {name: tuple(small.params[name][0].data.shape) for name in ("conv1", "conv2", "ip1")}
    return {"max_abs_diff": err, "params": params, "cpu": cpu, "wall": wall, "shapes": shapes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strengths", default="0.005,0.01,0.015,0.02",
                    help="comma-separated group-lasso strengths (breadth = kernel_shape decay)")
    ap.add_argument("--iters", type=int, default=2000, help="training iterations")
    ap.add_argument("--finetune", type=int, default=1000, help="fine-tuning iterations")
    ap.add_argument("--repeats", type=int, default=50, help="timed forward passes per net")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    os.makedirs(OUT, exist_ok=True)

    from caffepy.tools.convert_mnist import create_mnist
    if not all(os.path.exists(d) for d in ("examples/mnist/mnist_train_lmdb",
                                           "examples/mnist/mnist_test_lmdb")):
        create_mnist("examples/mnist", "data/mnist", "lmdb", overwrite=False)

    rows = []
    for s in [0.0] + [float(v) for v in args.strengths.split(",") if v]:
        tag = "baseline" if s == 0 else "gl%g" % s
        prefix = os.path.join(OUT, tag)
        acc, model = _train("examples/mnist/lenet_grouplasso_solver.prototxt", prefix,
                            args.iters, breadth_decay=s, kernel_shape_decay=s)
        if s and args.finetune:
            acc, model = _train("examples/mnist/lenet_finetune_solver.prototxt", prefix + "_ft",
                                args.finetune, weights=model)
        zeros = _zero_groups(model)
        res = _prune_and_time(model, tag, args.repeats)
        rows.append((tag, acc, zeros, res))
        print("%s: accuracy %.4f, zero filters/columns %s, pruned %s" % (tag, acc, zeros, res),
              flush=True)

    print()
    print("| run | test acc. | conv1 zero filters / columns | conv2 zero filters / columns | "
          "pruned shapes conv1, conv2, ip1 | params | pruned fwd speed-up (1 thread CPU / "
          "all-core wall) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for tag, acc, zeros, res in rows:
        sp_cpu = res["cpu"][0] / res["cpu"][1]
        sp_wall = res["wall"][0] / res["wall"][1]
        print("| %s | %.1f%% | %.0f%% / %.0f%% | %.0f%% / %.0f%% | %s, %s, %s | %d → %d | "
              "%.2f× / %.2f× | %.1e |"
              % (tag, 100 * acc, zeros["conv1"][0], zeros["conv1"][1], zeros["conv2"][0],
                 zeros["conv2"][1], "×".join(map(str, res["shapes"]["conv1"])),
                 "×".join(map(str, res["shapes"]["conv2"])),
                 "×".join(map(str, res["shapes"]["ip1"])), res["params"][0], res["params"][1],
                 sp_cpu, sp_wall, res["max_abs_diff"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
