#!/usr/bin/env python3
"""Training speed of caffepy against PyTorch (CPU), each framework alone in its own process.

Nets: LeNet (examples/mnist/lenet_train_test.prototxt, batch 64) and CIFAR-10 quick
(examples/cifar10/cifar10_quick_train_test.prototxt, batch 100), and on request (``--nets``)
CaffeNet (models/bvlc_reference_caffenet, batch 256) and GoogLeNet (models/bvlc_googlenet,
batch 32), which have no PyTorch twin here and are timed against Caffe only; read from the
example files with their Data layers replaced by an Input layer that holds one random batch. One
training iteration is one caffepy ``Solver.step(1)`` with the example's solver file (forward,
backward, SGD update with momentum and weight decay); PyTorch trains the same nets with
``torch.optim.SGD`` (same momentum and weight decay, twice the rate on biases as the prototxts'
``lr_mult: 2``).

The parent process only starts workers, one process per measurement, and alternates them
(caffepy, torch, caffepy, torch, ...) for ``--rounds`` rounds, so no two thread pools ever spin on
the same cores. It reports medians over all timed iterations of

* CPU time per iteration with one thread (BLAS limited by threadpoolctl for caffepy,
  ``torch.set_num_threads(1)`` for PyTorch): the robust figure on a shared machine;
* wall time per iteration with one thread per core;

the ratios caffepy / PyTorch of both, the same ratios round by round (the median of each
round's ratio: the frameworks of a round run back to back, so a drift of the machine's speed
over the run cancels), and each framework's scaling (wall time with 1 thread
divided by wall time with 2 threads, also from the lowest round medians: the rounds least
disturbed by other processes). Each worker sizes every thread pool it may start (OpenMP,
OpenBLAS, MKL, ``CAFFEPY_NUM_THREADS``) to its ``--threads`` before importing anything, and
reports how often the scheduler preempted it: many preemptions per iteration mean another
process competed for the cores and that row's wall time is not the framework's. A last caffepy
worker per net prints the per-layer table of ``caffe time`` (forward and backward ms per layer,
``--per-layer-threads``, default 1).

    python benchmarks/bench_nets.py [--rounds 3] [--nets lenet,cifar10_quick] [--iterations N]
                                    [--no-torch] [--no-per-layer] [--json FILE] [--caffe BINARY]
    python benchmarks/bench_nets.py --worker caffepy|torch|caffe --net lenet|cifar10_quick
                                    --threads N [--iterations N] [--warmup N] [--per-layer]
                                    [--caffe BINARY]

--gpu runs caffepy in GPU mode (CuPy; see docs/gpu.md) and PyTorch on CUDA, synchronizing the
device around every timed step (per-layer times are then device times, as ``caffe time -gpu``
reports them); only wall times are reported.

--caffe BINARY adds BVLC Caffe's CPU build as a third reference: the same net files (Input
blobs, solver files with display, tests and snapshots off) trained by ``caffe train``. Its
training iteration is the CPU and wall time of a run of ``warmup + 4 x iterations`` iterations
minus that of a run of ``warmup`` iterations, divided by the difference, so process start and net
set-up drop out; its per-layer figures come from ``caffe time`` and print beside caffepy's. The
worker reports the BLAS library the binary loads and the OpenBLAS kernel it picks. One way to get
that binary on Debian 12 is the ``caffe`` package of Debian 11 (see benchmarks/README.md).

PyTorch is a benchmark tool only (pip install torch==2.13.0, the CPU wheel), never a caffepy
dependency; it is imported only in the torch worker. For a fair BLAS comparison you may unset
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this one command; each worker prints the BLAS library,
kernel and thread count threadpoolctl reports.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
RESULT = "RESULT "

# The example files, the batch the Input layer holds, and the SGD settings of each solver file
# (read by the caffepy worker from the file itself; repeated here for the torch worker, which
# never imports caffepy). ``iterations``/``warmup``: the defaults per worker.
NETS = {
    "lenet": dict(net="examples/mnist/lenet_train_test.prototxt",
                  solver="examples/mnist/lenet_solver.prototxt",
                  batch=64, shape=(1, 28, 28), classes=10,
                  base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                  iterations=40, warmup=3),
    "cifar10_quick": dict(net="examples/cifar10/cifar10_quick_train_test.prototxt",
                          solver="examples/cifar10/cifar10_quick_solver.prototxt",
                          batch=100, shape=(3, 32, 32), classes=10,
                          base_lr=0.001, momentum=0.9, weight_decay=0.004,
                          iterations=12, warmup=2),
    # large (61M params); only when asked for (bench_memory.py --net caffenet)
    "caffenet": dict(net="models/bvlc_reference_caffenet/train_val.prototxt",
                     solver="models/bvlc_reference_caffenet/solver.prototxt",
                     batch=256, shape=(3, 227, 227), classes=1000,
                     base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                     iterations=2, warmup=1),
    # 13M params, 59 convolutions (many of them 1 x 1), three losses; only when asked for
    "googlenet": dict(net="models/bvlc_googlenet/train_val.prototxt",
                      solver="models/bvlc_googlenet/solver.prototxt",
                      batch=32, shape=(3, 224, 224), classes=1000,
                      base_lr=0.01, momentum=0.9, weight_decay=0.0002,
                      iterations=3, warmup=1),
}
DEFAULT_NETS = "lenet,cifar10_quick"
# the nets torch_nets defines; the others are timed against Caffe only
TORCH_TWINS = ("lenet", "cifar10_quick")
DATA_TYPES = ("Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData", "Input")


# -- caffepy ------------------------------------------------------------------------------

def training_only(param, net):
    """Make ``param`` train ``net`` (a NetParameter) alone: no test nets, display or snapshots."""
    param.ClearField("net")
    param.ClearField("test_iter")
    param.net_param.CopyFrom(net)
    param.test_interval = 0
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False


def start_worker_cmd(cmd, threads):
    """Start one worker command with every thread pool sized ``threads``; its Popen."""
    env = thread_env(dict(os.environ), threads)
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def worker_result(proc, cmd, what):
    """Wait for a worker started by start_worker_cmd; its result dict."""
    out, err = proc.communicate()
    for line in out.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    sys.stderr.write(err[-3000:])
    raise SystemExit("worker %s failed (exit %d): %s" % (what, proc.returncode, " ".join(cmd)))


def run_worker_cmd(cmd, threads, what):
    """Run one worker command with every thread pool sized ``threads``; its result dict."""
    return worker_result(start_worker_cmd(cmd, threads), cmd, what)


def barrier(directory, parties, timeout=600.0):
    """Wait until ``parties`` workers, this one included, have reached this point: each leaves
    a file named by its process id in ``directory`` and polls for the others' (every half a
    millisecond), so workers started together begin their timed loops together whatever their
    set-up times (bench_scaling.py)."""
    open(os.path.join(directory, "%d.ready" % os.getpid()), "w").close()
    deadline = time.monotonic() + timeout
    while sum(n.endswith(".ready") for n in os.listdir(directory)) < parties:
        if time.monotonic() > deadline:
            raise SystemExit("barrier %s: %d of %d workers arrived in %.0f s"
                             % (directory, sum(n.endswith(".ready")
                                               for n in os.listdir(directory)),
                                parties, timeout))
        time.sleep(0.0005)


def input_net(name, batch=None):
    """The example solver (a SolverParameter) and net (a NetParameter) of ``name``, TRAIN phase,
    its data layer replaced by an Input layer of one batch; no test net, display or snapshots.
    Returns (solver param, net param, the data layer's tops)."""
    from caffepy.proto import caffe_pb2, read_text
    from caffepy.solver import read_solver_file

    spec = NETS[name]
    batch = batch or spec["batch"]
    param = read_solver_file(os.path.join(ROOT, spec["solver"]))
    net = read_text(os.path.join(ROOT, spec["net"]), caffe_pb2.NetParameter())
    tops, layers = None, []
    for lp in net.layer:
        if any(r.HasField("phase") and r.phase == caffe_pb2.TEST for r in lp.include):
            continue
        if lp.type in DATA_TYPES:
            tops = list(lp.top)
            continue
        layers.append(lp)
    del net.layer[:]
    data = net.layer.add()
    data.name = "data"
    data.type = "Input"
    data.top.extend(tops)
    data.input_param.shape.add().dim.extend((batch,) + tuple(spec["shape"]))
    data.input_param.shape.add().dim.append(batch)
    for lp in layers:
        net.layer.add().CopyFrom(lp)
    training_only(param, net)
    return param, net, tops


def caffepy_solver(name, batch=None, gpu=False, seed=0):
    """The example net and solver of ``name`` as input_net makes them, the Input layer holding
    one random batch (images in [0, 1), labels in [0, classes)). Returns the caffepy Solver."""
    import numpy as np
    import caffepy
    from caffepy.proto import caffe_pb2

    spec = NETS[name]
    batch = batch or spec["batch"]
    param, net, tops = input_net(name, batch)
    if gpu:
        caffepy.set_mode_gpu()
        param.solver_mode = caffe_pb2.SolverParameter.GPU
    else:
        param.solver_mode = caffe_pb2.SolverParameter.CPU
    s = caffepy.get_solver(param)
    rng = np.random.default_rng(seed)
    images = rng.random((batch,) + tuple(spec["shape"]), dtype=np.float32)
    labels = rng.integers(0, spec["classes"], batch).astype(np.float32)
    for top, values in zip(tops, (images, labels)):
        data = s.net.blobs[top].data
        # in GPU mode a device array: CuPy takes host values only through asarray
        data[...] = caffepy.backend.array_module(data).asarray(values)
    return s


def _no_sync():
    pass


def device_sync():
    """A function that waits for the GPU (a no-op in CPU mode)."""
    import caffepy
    if caffepy.backend.mode() != caffepy.backend.GPU:
        return _no_sync
    import cupy
    return cupy.cuda.Device().synchronize


def time_caffepy(net, iterations, sync=_no_sync):
    """Per-layer forward/backward ms, as `caffe time` measures them (in GPU mode the device is
    synchronized before each clock read, so each layer's time includes its kernels)."""
    import numpy as np
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


def blas_info():
    """What threadpoolctl sees loaded in this process: library, version, kernel, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed (pip install threadpoolctl)"]
    return ["%s %s (%s, %s%s threads)" % (
        i.get("internal_api"), i.get("version") or "", i.get("prefix"),
        i["architecture"] + " kernel, " if i.get("architecture") else "", i.get("num_threads"))
        for i in threadpool_info()]


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "CAFFEPY_NUM_THREADS")


def thread_env(env, threads):
    """Size every thread pool a worker may start (OpenMP, OpenBLAS, MKL, caffepy's own) to
    ``threads``; a worker sets them before it imports NumPy, caffepy or torch."""
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def thread_limit(threads):
    """One BLAS thread through threadpoolctl (the one-thread figure); None for more threads,
    where caffepy decides how its BLAS and its own threads share the cores."""
    if threads != 1:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1)


def caffepy_threads():
    """caffepy's own thread count for CPU kernels, where this version has one."""
    import caffepy
    fn = getattr(caffepy.backend, "num_threads", None)
    version = getattr(caffepy, "__version__", "")
    if fn is None:
        return "caffepy %s (no kernel thread pool of its own)" % version
    return "caffepy %s, %d kernel threads" % (version, fn())


def measure(step, iterations, warmup, sync=_no_sync, ready=None, span=None):
    """CPU and wall seconds of each of ``iterations`` calls of ``step`` after ``warmup`` calls.
    ``ready()``, if given, runs between the two (a barrier); ``span``, a list, receives the
    clock time (time.time()) at which the timed calls began and ended."""
    for _ in range(warmup):
        step()
    sync()
    if ready is not None:
        ready()
    cpu, wall = [], []
    t0 = time.time()
    for _ in range(iterations):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        sync()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    if span is not None:
        span[:] = [t0, time.time()]
    return cpu, wall


def worker_barrier(args):
    """The ready() of a worker given --barrier DIR --parties N, else None."""
    if not args.barrier:
        return None
    return lambda: barrier(args.barrier, args.parties)


def preempted():
    """Involuntary context switches of this process so far (all threads): how often the
    scheduler took a core away, the sign that another process competed for it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def gpu_name():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return "CuPy %s on %s" % (cupy.__version__,
                              name.decode() if isinstance(name, bytes) else name)


def caffepy_worker(args):
    s = caffepy_solver(args.net, args.batch, args.gpu)
    limit = None if args.gpu else thread_limit(args.threads)
    sync = device_sync()
    out = {"framework": "caffepy", "net": args.net, "threads": args.threads}
    n0 = preempted()
    span = []
    cpu, wall = measure(lambda: s.step(1), args.iterations, args.warmup, sync,
                        worker_barrier(args), span)
    out.update(cpu=cpu, wall=wall, span=span, batch=args.batch or NETS[args.net]["batch"],
               loss=float(s.smoothed_loss),
               info=[caffepy_threads()] + blas_info(),
               preempted=(preempted() - n0) / (args.iterations + args.warmup))
    if args.gpu:
        out["info"].insert(0, gpu_name())
    if args.per_layer:
        fwd, bwd, total = time_caffepy(s.net, args.iterations, sync)
        out["per_layer"] = {"names": list(s.net.layer_names), "forward": fwd.tolist(),
                            "backward": bwd.tolist(), "total": total}
    if limit is not None:
        limit.restore_original_limits()
    return out


# -- PyTorch ------------------------------------------------------------------------------

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

    models = {"lenet": LeNet, "cifar10_quick": CifarQuick}
    assert tuple(models) == TORCH_TWINS
    return torch, models


def torch_trainer(name, batch=None, device="cpu", seed=0):
    """The torch twin of ``name`` with its SGD optimizer; returns (torch, step, model, loss)
    where step() runs one training iteration and loss() reads the last loss."""
    import torch.nn.functional as F
    torch, models = torch_nets()
    if name not in models:
        raise SystemExit("no PyTorch definition of %s" % name)
    spec = NETS[name]
    batch = batch or spec["batch"]
    torch.manual_seed(seed)
    model = models[name]().to(device)
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    lr = spec["base_lr"]
    opt = torch.optim.SGD([{"params": weights, "lr": lr}, {"params": biases, "lr": 2 * lr}],
                          lr=lr, momentum=spec["momentum"], weight_decay=spec["weight_decay"])
    x = torch.rand(batch, *spec["shape"], device=device)
    y = torch.randint(0, spec["classes"], (batch,), device=device)
    last = [None]

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        last[0] = loss

    return torch, step, model, lambda: float(last[0].detach())


def torch_worker(args):
    device = "cuda" if args.gpu else "cpu"
    import torch
    if not args.gpu:
        torch.set_num_threads(args.threads)
    torch, step, _, loss = torch_trainer(args.net, args.batch, device)
    sync = torch.cuda.synchronize if args.gpu else _no_sync
    info = ["torch %s, %d threads (intra-op), %d inter-op, CPU capability %s, MKL %s, oneDNN %s"
            % (torch.__version__, torch.get_num_threads(), torch.get_num_interop_threads(),
               torch.backends.cpu.get_cpu_capability(), torch.backends.mkl.is_available(),
               torch.backends.mkldnn.is_available())]
    n0 = preempted()
    span = []
    cpu, wall = measure(step, args.iterations, args.warmup, sync, worker_barrier(args), span)
    info += [torch.cuda.get_device_name()] if args.gpu else blas_info()
    return {"framework": "torch", "net": args.net, "threads": args.threads, "info": info,
            "cpu": cpu, "wall": wall, "span": span, "batch": args.batch or NETS[args.net]["batch"],
            "loss": loss(),
            "preempted": (preempted() - n0) / (args.iterations + args.warmup)}


# -- BVLC Caffe ---------------------------------------------------------------------------

def caffe_binary_info(binary):
    """What a BVLC Caffe ``caffe`` binary says it is, and the BLAS library it loads; refuses
    caffepy's own ``caffe`` command (the two print different --version lines)."""
    try:
        p = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
    except OSError as e:
        raise SystemExit("--caffe %s: cannot run it (%s)" % (binary, e.strerror or e)) from None
    version = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if "caffepy" in p.stdout or not version.startswith("caffe version"):
        raise SystemExit("%s is not BVLC Caffe's caffe binary (it says %r)" % (binary, version))
    blas = "BLAS unknown"
    try:
        ldd = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, universal_newlines=True)
        libs = [ln.split("=>")[1].split("(")[0].strip() for ln in ldd.stdout.splitlines()
                if "=>" in ln and ("blas" in ln or "libcaffe" in ln)]
        found = []
        for lib in libs:
            if "libcaffe" in lib:
                sub = subprocess.run(["ldd", lib], stdout=subprocess.PIPE, universal_newlines=True)
                found += [ln.split("=>")[1].split("(")[0].strip()
                          for ln in sub.stdout.splitlines() if "=>" in ln and "blas" in ln]
            else:
                found.append(lib)
        if found:
            paths = sorted({os.path.realpath(f) for f in found})
            blas = "BLAS " + ", ".join(paths) + openblas_kernel(paths)
    except OSError:
        pass
    return "BVLC %s (%s), %s; OPENBLAS_NUM_THREADS=%s" % (
        version, binary, blas, os.environ.get("OPENBLAS_NUM_THREADS"))


def openblas_kernel(paths):
    """The kernel OpenBLAS picks here (as Caffe's process will: same machine, same
    environment), as threadpoolctl reports it for the other frameworks."""
    import ctypes
    for path in paths:
        if "openblas" not in os.path.basename(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return " (%s kernel)" % lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            pass
    return ""


def run_caffe(binary, args, workdir):
    """Run ``caffe ARGS`` to the end; (CPU seconds, wall seconds, involuntary switches, stderr)."""
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    w0 = time.perf_counter()
    p = subprocess.Popen([binary] + args, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, universal_newlines=True)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - w0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.stderr.write(err[-3000:])
        raise SystemExit("caffe %s failed (exit %d)" % (" ".join(args), p.returncode))
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_nivcsw, err


def caffe_worker(args):
    """BVLC Caffe training the same net (its Input blobs hold zeros: a convolution, pooling or
    GEMM costs the same whatever the values). A training iteration's cost is the difference
    between a run of warmup + n iterations and a run of warmup iterations, divided by n, so
    start-up and net set-up drop out; ``--iterations`` x 4 timed iterations per sample."""
    import tempfile
    from caffepy.proto import caffe_pb2, write_text
    binary = args.caffe_bin
    info = [caffe_binary_info(binary)]
    n = 4 * args.iterations
    param, net, _ = input_net(args.net, args.batch)
    param.solver_mode = caffe_pb2.SolverParameter.CPU
    out = {"framework": "caffe", "net": args.net, "threads": args.threads, "info": info}
    with tempfile.TemporaryDirectory(prefix="bench-caffe-") as d:
        write_text(net, os.path.join(d, "net.prototxt"))
        param.ClearField("net_param")
        param.net = "net.prototxt"
        runs = {}
        for k in (args.warmup, args.warmup + n):
            param.max_iter = k
            param.display = k      # the last iteration's loss, for the parent's check
            write_text(param, os.path.join(d, "solver%d.prototxt" % k))
            runs[k] = run_caffe(binary, ["train", "-solver", "solver%d.prototxt" % k], d)
        (c0, w0, _, _), (c1, w1, p1, err) = runs[args.warmup], runs[args.warmup + n]
        # preemptions: the longer run's, per iteration (a difference of two counts this
        # small would mostly be noise)
        out.update(cpu=[(c1 - c0) / n], wall=[(w1 - w0) / n],
                   preempted=p1 / (args.warmup + n), loss=float("nan"))
        for line in err.splitlines():
            if "Iteration %d, loss = " % (args.warmup + n) in line:
                out["loss"] = float(line.rsplit("=", 1)[1])
        if args.per_layer:
            _, _, _, err = run_caffe(binary, ["time", "-model", "net.prototxt",
                                              "-iterations", str(args.iterations)], d)
            out["per_layer"] = parse_caffe_time(err)
    return out


def parse_caffe_time(log):
    """The per-layer table of a ``caffe time`` log, as the caffepy worker reports its own."""
    names, fwd, bwd, total = [], {}, {}, float("nan")
    for line in log.splitlines():
        text = line.split("] ", 1)[-1].strip()
        for tag, table in (("\tforward: ", fwd), ("\tbackward: ", bwd)):
            if tag in text:
                name, value = text.split(tag)
                name = name.strip()
                if name not in names:
                    names.append(name)
                table[name] = float(value.split()[0])
        if text.startswith("Average Forward-Backward:"):
            total = float(text.split(":")[1].split()[0])
    return {"names": names, "forward": [fwd.get(k, 0.0) for k in names],
            "backward": [bwd.get(k, 0.0) for k in names], "total": total}


# -- the parent -----------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "-"


def run_worker(script, framework, net, threads, iterations, warmup, extra=()):
    """Start one worker process with every thread pool sized ``threads``; its result dict."""
    cmd = [sys.executable, script, "--worker", framework, "--net", net, "--threads", str(threads),
           "--iterations", str(iterations), "--warmup", str(warmup)] + list(extra)
    return run_worker_cmd(cmd, threads, framework)


def ms(xs):
    return 1e3 * statistics.median(xs)


def print_per_layer(name, res, iterations, reference=None):
    """caffepy's per-layer table, in `caffe time`'s form; with ``reference`` (a caffe worker's
    result) BVLC Caffe's own `caffe time` figures beside it."""
    pl = res["per_layer"]
    ref = reference["per_layer"] if reference else None
    print("\n== caffepy per layer: %s (batch %d), %d iterations, %d thread(s)%s =="
          % (name, NETS[name]["batch"], iterations, res["threads"],
             "; BVLC Caffe's `caffe time` in brackets" if ref else ""))
    print("Average time per layer:")
    theirs = dict(zip(ref["names"], zip(ref["forward"], ref["backward"]))) if ref else {}
    for lname, f, b in zip(pl["names"], pl["forward"], pl["backward"]):
        line = "%12s\tforward: %8.3f ms.\tbackward: %8.3f ms." % (lname, f, b)
        if lname in theirs:
            line += "\t[%8.3f  %8.3f]" % theirs[lname]
        print(line)
    tail = (lambda k: "\t[%.3f]" % sum(ref[k])) if ref else (lambda k: "")
    print("Average Forward pass: %.3f ms.%s" % (sum(pl["forward"]), tail("forward")))
    print("Average Backward pass: %.3f ms.%s" % (sum(pl["backward"]), tail("backward")))
    print("Average Forward-Backward: %.3f ms.%s"
          % (pl["total"], "\t[%.3f]" % ref["total"] if ref else ""))


def parent(args):
    script = os.path.abspath(__file__)
    cores = args.cores or len(os.sched_getaffinity(0))
    threads = [cores] if args.gpu else sorted({1, min(2, cores), cores})
    frameworks = ["caffepy"] if args.no_torch else ["caffepy", "torch"]
    if args.caffe_bin:
        if args.gpu:
            raise SystemExit("--caffe times BVLC Caffe's CPU build; leave it out with --gpu")
        frameworks.append("caffe")
    nets = args.nets.split(",")
    extra = ["--gpu"] if args.gpu else []
    fw_extra = {"caffe": ["--caffe", args.caffe_bin]}
    print("machine: %d cores, %s; load average %s (1, 5, 15 min) at start"
          % (os.cpu_count(), cpu_model(), load_average()))
    print("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" % (os.environ.get("OPENBLAS_CORETYPE"),
                                                        os.environ.get("OPENBLAS_L2_SIZE")))
    samples, info, losses = {}, {}, {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for name in nets:
            its = args.iterations or NETS[name]["iterations"]
            for n in threads:
                for fw in frameworks:
                    if fw == "torch" and name not in TORCH_TWINS:
                        continue
                    res = run_worker(script, fw, name, n, its, NETS[name]["warmup"],
                                     extra + fw_extra.get(fw, []))
                    key = (fw, name, n)
                    s = samples.setdefault(key, {"cpu": [], "wall": [], "rounds": [],
                                                 "preempted": []})
                    s["cpu"] += res["cpu"]
                    s["wall"] += res["wall"]
                    s["rounds"].append((ms(res["cpu"]), ms(res["wall"])))
                    s["preempted"].append(res["preempted"])
                    info.setdefault((fw, n), res["info"])
                    losses[key] = res["loss"]
        print("round %d of %d done (%.0f s, load average %s)"
              % (r + 1, args.rounds, time.perf_counter() - t0, load_average()), flush=True)
    per_layer = {}
    if not args.no_per_layer:
        for name in nets:
            its = args.iterations or NETS[name]["iterations"]
            n = cores if args.gpu else args.per_layer_threads
            per_layer[name] = run_worker(script, "caffepy", name, n, its, NETS[name]["warmup"],
                                         extra + ["--per-layer"])
            reference = None
            if args.caffe_bin:
                reference = run_worker(script, "caffe", name, n, its, NETS[name]["warmup"],
                                       fw_extra["caffe"] + ["--per-layer"])
            print_per_layer(name, per_layer[name], its, reference)

    print("\n== what each worker reports ==")
    for (fw, n), lines in sorted(info.items()):
        print("%-8s %d thread(s): %s" % (fw, n, "; ".join(lines)))
    for key, loss in sorted(losses.items()):
        if not loss == loss or abs(loss) == float("inf"):
            print("warning: %s %s %d threads ended with loss %s" % (key + (loss,)))

    def med(fw, name, n, what):
        s = samples.get((fw, name, n))
        return ms(s[what]) if s else None

    def spread(fw, name, n, what):
        s = samples.get((fw, name, n))
        if not s:
            return ""
        k = 0 if what == "cpu" else 1
        rs = [x[k] for x in s["rounds"]]
        return "[%.1f-%.1f]" % (min(rs), max(rs))

    def ratio(a, b):
        return "%.2f" % (a / b) if a and b else "-"

    def lowest(fw, name, n):
        s = samples.get((fw, name, n))
        return min(x[1] for x in s["rounds"]) if s else None

    def preempt(fw, name, n):
        s = samples.get((fw, name, n))
        return "%.1f" % statistics.median(s["preempted"]) if s else "-"

    print("\n== ms per training iteration: median of %d rounds x iterations "
          "[lowest-highest round median] ==" % args.rounds)
    rows = [("CPU, 1 thread", "cpu", 1)] if not args.gpu else []
    rows += [("wall, %d thread%s" % (n, "s" if n > 1 else ""), "wall", n) for n in threads]

    others = [fw for fw in frameworks if fw != "caffepy"]
    print("%-14s %-16s %22s" % ("net", "figure", "caffepy")
          + "".join(" %22s %7s" % (fw, "ratio") for fw in others)
          + "  preemptions/iteration (%s)" % ", ".join(frameworks))
    for name in nets:
        for label, what, n in rows:
            c = med("caffepy", name, n, what)
            line = "%-14s %-16s %8.2f %13s" % (name, label, c, spread("caffepy", name, n, what))
            for fw in others:
                t = med(fw, name, n, what)
                line += " %8s %13s %7s" % ("%.2f" % t if t else "-", spread(fw, name, n, what),
                                           ratio(c, t))
            print(line + "  " + ", ".join(preempt(fw, name, n) for fw in frameworks))
    if others and args.rounds > 1:
        print("\ncaffepy / each reference, round by round (the median of the rounds' ratios "
              "[lowest-highest]; the frameworks of a round run back to back, so a drift of the "
              "machine's speed over the run cancels):")
        for name in nets:
            for label, what, n in rows:
                line = "%-14s %-16s" % (name, label)
                for fw in others:
                    r = round_ratios(samples, fw, name, n, what)
                    line += "   %s %s" % (fw, "%.2f [%.2f-%.2f]" % r if r else "-")
                print(line)
    if not args.gpu and 2 in threads:
        print("\nscaling (wall 1 thread / wall 2 threads; 2.00 is perfect): from the medians, "
              "and from the lowest round medians (the rounds least disturbed by other load):")
        for name in nets:
            print("%-14s" % name + "".join(
                "   %s %s (%s)" % (fw, ratio(med(fw, name, 1, "wall"), med(fw, name, 2, "wall")),
                                   ratio(lowest(fw, name, 1), lowest(fw, name, 2)))
                for fw in frameworks))
    print("\nload average %s at the end; %.0f s in all"
          % (load_average(), time.perf_counter() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "cpu": cpu_model(),
                       "info": {"%s/%d" % k: v for k, v in info.items()},
                       "samples": {"%s/%s/%d" % k: v for k, v in samples.items()},
                       "per_layer": {k: v["per_layer"] for k, v in per_layer.items()}}, f, indent=1)


def round_ratios(samples, fw, name, n, what):
    """caffepy's time over ``fw``'s, round by round (each round runs the frameworks back to
    back, so a slow drift of the machine's speed, which moves both, cancels): (median, lowest,
    highest) of the per-round ratios of the round medians, or None without both samples.
    ``samples``: {(framework, net, threads): {"rounds": [(cpu ms, wall ms), ...]}};
    ``what``: "cpu" or "wall"."""
    a, b = samples.get(("caffepy", name, n)), samples.get((fw, name, n))
    if not a or not b:
        return None
    k = 0 if what == "cpu" else 1
    rs = [x[k] / y[k] for x, y in zip(a["rounds"], b["rounds"]) if y[k]]
    if not rs:
        return None
    return statistics.median(rs), min(rs), max(rs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=("caffepy", "torch", "caffe"),
                    help="run one framework alone in this process and print its times as JSON")
    ap.add_argument("--net", default="lenet", choices=sorted(NETS), help="the worker's net")
    ap.add_argument("--nets", default=DEFAULT_NETS, help="the nets the parent runs")
    ap.add_argument("--threads", type=int, default=1, help="the worker's thread count")
    ap.add_argument("--cores", type=int, default=0,
                    help="thread count of the all-core figure (default: the usable cores)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the net's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=0,
                    help="timed iterations per worker (default: 40 LeNet, 12 CIFAR-10 quick)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--per-layer", action="store_true", help="worker: also the per-layer table")
    ap.add_argument("--per-layer-threads", type=int, default=1)
    ap.add_argument("--no-per-layer", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--caffe", metavar="BINARY", dest="caffe_bin",
                    help="also time BVLC Caffe's CPU build (the path of its caffe binary)")
    ap.add_argument("--json", help="also write every sample to this file")
    ap.add_argument("--gpu", action="store_true",
                    help="caffepy in GPU mode (CuPy), PyTorch on CUDA; times synchronize "
                         "the device")
    ap.add_argument("--barrier", metavar="DIR",
                    help="worker: wait after warm-up until --parties workers have reached this "
                         "point (files in DIR), then time")
    ap.add_argument("--parties", type=int, default=2)
    args = ap.parse_args(argv)
    for name in args.nets.split(","):
        if name not in NETS:
            ap.error("unknown net %r (choose from %s)" % (name, ", ".join(sorted(NETS))))
    if args.worker:
        if not args.gpu:
            thread_env(os.environ, args.threads)
        args.iterations = args.iterations or NETS[args.net]["iterations"]
        run = {"caffepy": caffepy_worker, "torch": torch_worker,
               "caffe": caffe_worker}[args.worker]
        res = run(args)
        for line in res["info"]:
            print(line)
        print(RESULT + json.dumps(res), flush=True)
    else:
        parent(args)


if __name__ == "__main__":
    main()
