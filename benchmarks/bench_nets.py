#!/usr/bin/env python3
"""Time LeNet (batch 64) and CIFAR-10 quick (batch 100) forward+backward, per layer like
`caffe time`, next to the same nets in PyTorch (CPU) in the same process run.

Reports milliseconds per iteration and the ratio caffepy / PyTorch (lower is better;
these machines are noisy, so compare ratios from one run, not absolute times across runs).

    python benchmarks/bench_nets.py [--iterations 20] [--nets lenet,cifar10_quick] [--gpu]

--gpu runs caffepy in GPU mode (CuPy; see docs/gpu.md) and synchronizes the device around
every timed step, so per-layer times are device times as `caffe time -gpu` reports them;
PyTorch then runs on CUDA too.

PyTorch is a benchmark tool only (pip install torch==2.13.0), never a caffepy dependency.
For a fair BLAS comparison you may unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this
one command; the script prints the BLAS kernel threadpoolctl reports.
"""
import argparse
import os
import sys
import time

import numpy as np

import caffepy
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text

LENET = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

CIFAR_QUICK = """
name: "CIFAR10_quick"
layer { name: "cifar" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 100 dim: 3 dim: 32 dim: 32 } shape { dim: 100 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
          weight_filler { type: "gaussian" std: 0.0001 } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 64 pad: 2 kernel_size: 5 stride: 1
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
        inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def build_caffepy(text, batch_shape, n_classes=10):
    p = parse_text(text, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    net = caffepy.Net(p)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random(batch_shape, dtype=np.float32)
    net.blobs["label"].data[...] = rng.integers(0, n_classes, batch_shape[0])
    return net


def _no_sync():
    pass


def device_sync():
    """A function that waits for the GPU (a no-op in CPU mode)."""
    if caffepy.backend.mode() != caffepy.backend.GPU:
        return _no_sync
    import cupy
    dev = cupy.cuda.Device()
    return dev.synchronize


def time_caffepy(net, iterations):
    """Per-layer forward/backward ms, as `caffe time` measures them (in GPU mode the device is
    synchronized before each clock read, so each layer's time includes its kernels)."""
    sync = device_sync()
    n = len(net.layers)
    fwd = np.zeros(n)
    bwd = np.zeros(n)
    net.forward_backward()   # warm-up (on GPU this also compiles the kernels)
    sync()
    total0 = time.perf_counter()
    for _ in range(iterations):
        for i in range(n):
            t = time.perf_counter()
            net.layers[i].forward(net.bottom_vecs[i], net.top_vecs[i])
            sync()
            fwd[i] += time.perf_counter() - t
        for i in range(n - 1, -1, -1):
            t = time.perf_counter()
            if net.layer_need_backward[i]:
                net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                       net.bottom_vecs[i])
            sync()
            bwd[i] += time.perf_counter() - t
    sync()
    total = (time.perf_counter() - total0) / iterations * 1e3
    return fwd / iterations * 1e3, bwd / iterations * 1e3, total


def torch_nets():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5)
            self.conv2 = nn.Conv2d(20, 50, 5)
            self.ip1 = nn.Linear(800, 500)
            self.ip2 = nn.Linear(500, 10)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x), 2, 2)
            x = F.max_pool2d(self.conv2(x), 2, 2)
            return self.ip2(F.relu(self.ip1(x.flatten(1))))

    class CifarQuick(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
            self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
            self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
            self.ip1 = nn.Linear(64 * 4 * 4, 64)
            self.ip2 = nn.Linear(64, 10)

        def forward(self, x):
            # Caffe pools with ceil mode: 32->16->8->4
            x = F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True))
            x = F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True)
            x = F.avg_pool2d(F.relu(self.conv3(x)), 3, 2, ceil_mode=True)
            return self.ip2(self.ip1(x.flatten(1)))

    return torch, {"lenet": LeNet, "cifar10_quick": CifarQuick}


def time_torch(torch, model_cls, batch_shape, iterations, device="cpu"):
    import torch.nn.functional as F
    model = model_cls().to(device)
    x = torch.rand(*batch_shape, device=device)
    y = torch.randint(0, 10, (batch_shape[0],), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else _no_sync

    def step():
        model.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()

    step()
    sync()
    t = time.perf_counter()
    for _ in range(iterations):
        step()
    sync()
    return (time.perf_counter() - t) / iterations * 1e3


def blas_info():
    try:
        from threadpoolctl import threadpool_info
        return "; ".join("%s %s (%s, %d threads)" % (i.get("internal_api"), i.get("version"),
                                                      i.get("architecture"), i.get("num_threads"))
                         for i in threadpool_info())
    except ImportError:
        return "threadpoolctl not installed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--nets", default="lenet,cifar10_quick")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--gpu", action="store_true",
                    help="caffepy in GPU mode (CuPy), PyTorch on CUDA; times synchronize the device")
    args = ap.parse_args(argv)
    if args.gpu:
        caffepy.set_mode_gpu()
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        print("GPU mode: CuPy %s, device %s" % (cupy.__version__, props["name"].decode()
                                                 if isinstance(props["name"], bytes)
                                                 else props["name"]))
    print("BLAS:", blas_info())
    print("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" % (os.environ.get("OPENBLAS_CORETYPE"),
                                                        os.environ.get("OPENBLAS_L2_SIZE")))
    specs = {"lenet": (LENET, (64, 1, 28, 28)), "cifar10_quick": (CIFAR_QUICK, (100, 3, 32, 32))}
    torch = None
    if not args.no_torch:
        try:
            torch, models = torch_nets()
            print("PyTorch %s, %d threads" % (torch.__version__, torch.get_num_threads()))
        except ImportError:
            print("PyTorch not installed: pip install torch==2.13.0 (benchmark tool only)")
    results = []
    for name in args.nets.split(","):
        text, shape = specs[name]
        net = build_caffepy(text, shape)
        fwd, bwd, total = time_caffepy(net, args.iterations)
        print("\n== %s (batch %d), %d iterations ==" % (name, shape[0], args.iterations))
        print("Average time per layer:")
        for i, lname in enumerate(net.layer_names):
            print("%12s\tforward: %8.3f ms.\tbackward: %8.3f ms." % (lname, fwd[i], bwd[i]))
        print("Average Forward pass: %.3f ms." % fwd.sum())
        print("Average Backward pass: %.3f ms." % bwd.sum())
        print("Average Forward-Backward: %.3f ms." % total)
        tt = None
        if torch is not None:
            tt = time_torch(torch, models[name], shape, args.iterations,
                            "cuda" if args.gpu else "cpu")
            print("PyTorch (%s) forward+backward: %.3f ms." % ("cuda" if args.gpu else "cpu", tt))
            print("ratio caffepy / PyTorch: %.2f" % (total / tt))
        results.append((name, total, tt))
    print("\nsummary (ms per forward+backward iteration):")
    for name, total, tt in results:
        print("  %-14s caffepy %8.2f   pytorch %8s   ratio %s" % (
            name, total, "%.2f" % tt if tt else "-", "%.2f" % (total / tt) if tt else "-"))


if __name__ == "__main__":
    main()
