#!/usr/bin/env python3
"""Memory of a training run: caffepy against PyTorch (CPU), each framework alone in its own process.

For each net (LeNet batch 64, CIFAR-10 quick batch 100; the same nets and solvers as
bench_nets.py) one worker process per framework trains ``--iterations`` iterations and reports

* RSS after its imports, and the peak RSS while it builds and trains the net (the kernel's
  high-water mark VmHWM, reset after the imports through /proc/self/clear_refs where allowed;
  ``ru_maxrss`` is the whole process's peak, imports included);
* caffepy only: the bytes its arrays hold, by owner: Blobs (activations data and diff, params
  data and diff; shared buffers counted once), the solver's history, layer scratch buffers
  (``Layer.scratch``) and the other arrays layers keep (im2col columns, pooling tables, ...);
* caffepy only: Python-side allocations per iteration after warm-up, from tracemalloc (NumPy
  reports its buffers to it): the transient peak above the level at the start of an iteration,
  the bytes still held at its end (retained: growth), and the same transient peak per layer
  forward and backward and for the update (their sum is a lower bound on the bytes allocated and
  freed again in one iteration).

    python benchmarks/bench_memory.py [--nets lenet,cifar10_quick] [--iterations 10]
                                      [--traced 3] [--threads 1] [--no-torch] [--json FILE]
    python benchmarks/bench_memory.py --nets caffenet --batch 256 --no-torch   # large: ask for it

CaffeNet (models/bvlc_reference_caffenet/train_val.prototxt, 61M params, its Data layer replaced
by an Input layer holding one random batch) runs only when named; there is no torch twin of it.
PyTorch is a benchmark tool only (pip install torch==2.13.0), imported only in its worker.
"""
import argparse
import json
import os
import resource
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nets import (NETS, RESULT, blas_info, caffepy_solver,  # noqa: E402
                        caffepy_threads, cpu_model, load_average, run_worker_cmd, thread_env,
                        thread_limit, torch_trainer)

MiB = 1024.0 * 1024.0


def proc_status():
    """VmRSS and VmHWM of this process in bytes (from /proc/self/status)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss():
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # kB on Linux


# -- caffepy accounting ----------------------------------------------------------------------

def _root(a):
    """The array that owns the memory of ``a`` (views point to it through .base)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes") \
            and hasattr(a.base, "base"):
        a = a.base
    return a


class Ledger:
    """Bytes of distinct buffers by category: each buffer is counted once, in the first
    category that claims it."""

    def __init__(self):
        self.seen = set()
        self.bytes = {}
        self.owner = None          # also add the bytes claimed to by_owner[owner]
        self.by_owner = {}

    def claim(self, category, array):
        r = _root(array)
        if id(r) in self.seen:
            return
        self.seen.add(id(r))
        self.bytes[category] = self.bytes.get(category, 0) + int(r.nbytes)
        if self.owner is not None:
            self.by_owner[self.owner] = self.by_owner.get(self.owner, 0) + int(r.nbytes)

    def walk(self, category, obj, skip, depth=4, visited=None):
        """Claim every array reachable from ``obj`` through attributes, lists, tuples and
        dicts, down to ``depth`` levels, not entering the objects in ``skip`` types."""
        visited = set() if visited is None else visited
        if id(obj) in visited or depth < 0:
            return
        visited.add(id(obj))
        if isinstance(obj, skip) or isinstance(obj, (str, bytes, int, float, type)):
            return
        if hasattr(obj, "nbytes") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
            self.claim(category, obj)
            return
        if isinstance(obj, dict):
            items = obj.values()
        elif isinstance(obj, (list, tuple, set)):
            items = obj
        elif hasattr(obj, "__dict__"):
            items = list(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            items = [getattr(obj, k, None) for k in obj.__slots__]
        else:
            return
        for x in items:
            self.walk(category, x, skip, depth - 1, visited)


def caffepy_accounting(s):
    """Bytes held by the Blobs, the solver history, layer scratch and other layer arrays;
    and the bytes of the last two by layer name."""
    import types
    from google.protobuf.message import Message
    from caffepy.blob import Blob
    from caffepy.layer import Layer
    net = s.net
    ledger = Ledger()
    params = {id(b) for layer in net.layers for b in layer.blobs}
    for layer in net.layers:                       # params first: shared params counted once
        for b in layer.blobs:
            ledger.claim("params data", b.data)
            ledger.claim("params diff", b.diff)
    for vecs in (net.bottom_vecs, net.top_vecs):
        for blobs in vecs:
            for b in blobs:
                if id(b) not in params:
                    ledger.claim("activations data", b.data)
                    ledger.claim("activations diff", b.diff)
    for h in s.history:
        ledger.claim("solver history", h)
    for name, layer in zip(net.layer_names, net.layers):
        ledger.owner = name
        for a in vars(layer).get("_scratch", {}).values():
            ledger.claim("layer scratch (Layer.scratch)", a)
    skip = (Blob, Message, types.ModuleType, types.FunctionType, types.MethodType)
    for name, layer in zip(net.layer_names, net.layers):
        ledger.owner = name
        ledger.walk("other layer arrays", {k: v for k, v in vars(layer).items()
                                           if k not in ("blobs", "_scratch", "layer_param")},
                    skip)
    ledger.owner = None
    ledger.walk("other solver arrays", {k: v for k, v in vars(s).items()
                                        if k not in ("net", "test_nets", "history")},
                skip + (Layer,))
    return ledger.bytes, ledger.by_owner


def traced_iteration(s, tm):
    """One training iteration layer by layer under tracemalloc: the transient peak above the
    level before each layer's forward, backward and the update (bytes)."""
    net = s.net
    n = len(net.layers)
    fwd, bwd = [0] * n, [0] * n
    net.clear_param_diffs()
    for i in range(n):
        base = tm.get_traced_memory()[0]
        tm.reset_peak()
        net.layers[i].forward(net.bottom_vecs[i], net.top_vecs[i])
        fwd[i] = tm.get_traced_memory()[1] - base
    for i in range(n - 1, -1, -1):
        base = tm.get_traced_memory()[0]
        tm.reset_peak()
        if net.layer_need_backward[i]:
            net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                   net.bottom_vecs[i])
        bwd[i] = tm.get_traced_memory()[1] - base
    base = tm.get_traced_memory()[0]
    tm.reset_peak()
    s.apply_update()
    s.iter += 1
    update = tm.get_traced_memory()[1] - base
    return fwd, bwd, update


def caffepy_worker(args):
    import numpy as np        # noqa: F401  (the imports count towards the RSS after imports)
    import caffepy            # noqa: F401
    after_import = proc_status()
    reset = reset_peak_rss()
    limit = thread_limit(args.threads)
    s = caffepy_solver(args.net, args.batch)
    built = proc_status()
    s.step(args.iterations)
    trained = proc_status()
    held, by_layer = caffepy_accounting(s)
    out = {"framework": "caffepy", "net": args.net, "batch": args.batch or NETS[args.net]["batch"],
           "info": [caffepy_threads()] + blas_info(), "rss_import": after_import.get("VmRSS"),
           "rss_built": built.get("VmRSS"), "rss_trained": trained.get("VmRSS"),
           "peak": trained.get("VmHWM") if reset else None, "maxrss": maxrss(),
           "held": held, "layer_buffers": by_layer, "loss": float(s.smoothed_loss)}
    if args.traced:
        tracemalloc.start()
        transient, retained = [], []
        for _ in range(args.traced):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            s.step(1)
            cur, peak = tracemalloc.get_traced_memory()
            transient.append(peak - base)
            retained.append(cur - base)
        fwd, bwd, update = traced_iteration(s, tracemalloc)
        tracemalloc.stop()
        out.update(transient=transient, retained=retained,
                   per_layer={"names": list(s.net.layer_names), "forward": fwd,
                              "backward": bwd, "update": update})
    if limit is not None:
        limit.restore_original_limits()
    return out


def torch_worker(args):
    import torch
    after_import = proc_status()
    reset = reset_peak_rss()
    torch.set_num_threads(args.threads)
    torch, step, model, loss = torch_trainer(args.net, args.batch)
    built = proc_status()
    for _ in range(args.iterations):
        step()
    trained = proc_status()
    nparams = sum(p.numel() for p in model.parameters())
    return {"framework": "torch", "net": args.net, "batch": args.batch or NETS[args.net]["batch"],
            "info": ["torch %s, %d threads" % (torch.__version__, torch.get_num_threads())],
            "rss_import": after_import.get("VmRSS"), "rss_built": built.get("VmRSS"),
            "rss_trained": trained.get("VmRSS"), "peak": trained.get("VmHWM") if reset else None,
            "maxrss": maxrss(), "held": {"params data": 4 * nparams}, "loss": loss()}


# -- the parent -------------------------------------------------------------------------------

def run_worker(framework, args, net):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--net", net,
           "--iterations", str(args.iterations), "--traced", str(args.traced),
           "--threads", str(args.threads), "--batch", str(args.batch)]
    return run_worker_cmd(cmd, args.threads, framework)


def mib(x):
    return "%8.1f" % (x / MiB) if x is not None else "       -"


def report(results, args):
    print("\n== RSS, MiB (peak: high-water mark from after the imports to the end of training; "
          "%d iterations) ==" % args.iterations)
    print("%-14s %-8s %6s %9s %9s %9s %9s %9s %9s" % (
        "net", "", "batch", "imports", "built", "trained", "peak", "peak-imp", "maxrss"))
    for r in results:
        grow = r["peak"] - r["rss_import"] if r["peak"] is not None else None
        print("%-14s %-8s %6d %s %s %s %s %s %s" % (
            r["net"], r["framework"], r["batch"], mib(r["rss_import"]), mib(r["rss_built"]),
            mib(r["rss_trained"]), mib(r["peak"]), mib(grow), mib(r["maxrss"])))
    for r in results:
        if r["framework"] != "caffepy":
            continue
        held = r["held"]
        print("\n== caffepy %s (batch %d): bytes held by arrays, MiB ==" % (r["net"], r["batch"]))
        order = ["activations data", "activations diff", "params data", "params diff",
                 "solver history", "layer scratch (Layer.scratch)", "other layer arrays",
                 "other solver arrays"]
        for k in order + sorted(set(held) - set(order)):
            print("  %-32s %s" % (k, mib(held.get(k, 0))))
        total = sum(held.values())
        blobs = sum(held.get(k, 0) for k in order[:4])
        print("  %-32s %s" % ("all of them", mib(total)))
        big = sorted(((b, k) for k, b in r["layer_buffers"].items()), reverse=True)
        print("  layer buffers (scratch and other) by layer: %s"
              % ", ".join("%s %.1f" % (k, b / MiB) for b, k in big if b >= 0.05 * MiB))
        if r["peak"] is not None:
            grow = r["peak"] - r["rss_import"]
            print("  peak RSS - RSS after imports: %s MiB = %.2f x the Blobs "
                  "(activations + params + diffs), %.2f x all arrays held"
                  % (mib(grow).strip(), grow / blobs, grow / total))
        if "transient" in r:
            print("  tracemalloc, per iteration after warm-up (%d iterations): transient peak "
                  "%s MiB (max %s), retained %s"
                  % (len(r["transient"]), mib(sorted(r["transient"])[len(r["transient"]) // 2])
                     .strip(), mib(max(r["transient"])).strip(),
                     ", ".join("%d B" % x for x in r["retained"])))
            pl = r["per_layer"]
            total_layers = sum(pl["forward"]) + sum(pl["backward"]) + pl["update"]
            print("  transient peak per step (MiB; sum %.1f = a lower bound on the bytes "
                  "allocated and freed per iteration):" % (total_layers / MiB))
            steps = [(b, name + " forward") for b, name in zip(pl["forward"], pl["names"])]
            steps += [(b, name + " backward") for b, name in zip(pl["backward"], pl["names"])]
            steps.append((pl["update"], "solver update"))
            for b, label in sorted(steps, reverse=True):
                if b >= 64 * 1024:
                    print("    %-24s %s" % (label, mib(b)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=("caffepy", "torch"))
    ap.add_argument("--net", default="lenet", choices=sorted(NETS))
    ap.add_argument("--nets", default="lenet,cifar10_quick")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the net's)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--traced", type=int, default=3,
                    help="caffepy: iterations traced by tracemalloc after the others (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.worker:
        thread_env(os.environ, args.threads)
        run = caffepy_worker if args.worker == "caffepy" else torch_worker
        print(RESULT + json.dumps(run(args)), flush=True)
        return
    nets = args.nets.split(",")
    for name in nets:
        if name not in NETS:
            ap.error("unknown net %r (choose from %s)" % (name, ", ".join(sorted(NETS))))
    print("machine: %d cores, %s; load average %s at start"
          % (os.cpu_count(), cpu_model(), load_average()))
    t0 = time.perf_counter()
    results = []
    for name in nets:
        frameworks = ["caffepy"] if args.no_torch or name == "caffenet" else ["caffepy", "torch"]
        for fw in frameworks:
            r = run_worker(fw, args, name)
            results.append(r)
            print("%s %s: %s" % (name, fw, "; ".join(r["info"])), flush=True)
    report(results, args)
    print("\nload average %s at the end; %.0f s in all"
          % (load_average(), time.perf_counter() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
