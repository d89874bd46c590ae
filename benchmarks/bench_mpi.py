#!/usr/bin/env python3
"""Data-parallel training over MPI (docs/distributed.md): 1 process against 2 MPI ranks at the
same total batch, and the allreduce bandwidth the multi-node model in docs/distributed.md uses.

Nets: LeNet (total batch 64: 1 x 64 against 2 x 32) and CIFAR-10 quick (total batch 100:
1 x 100 against 2 x 50), the example nets of bench_nets.py (their Data layer replaced by an
Input layer holding one random batch, so the figures are compute plus gradient exchange, not
data reading). Every process has one BLAS thread and one caffepy kernel thread
(CAFFEPY_NUM_THREADS=1, OMP/OPENBLAS/MKL_NUM_THREADS=1), so 2 ranks use the 2 cores.

One iteration is one ``Solver.step(1)``: forward, backward, (2 ranks) the gradient Allreduce
of caffepy.distributed.mpi.GradientSync, and the SGD update. Reported per configuration: the
median wall time per iteration on rank 0, rank 0's CPU time per iteration (the compute,
without waiting for a core or for the other rank), the median time rank 0 spends in the
Allreduce (its wait includes the time the other rank takes to reach it, i.e. load imbalance
and preemption), that time's share of the iteration, and the packing/scaling of the flat gradient buffer. The
parent alternates the configurations for ``--rounds`` rounds (1 rank, 2 ranks, 1 rank, ...) and
takes the medians over all timed iterations: the machine may be shared, so single runs are noisy.

--bandwidth times in-place float32 Allreduce over 2 ranks for message sizes from 4 KiB up to
CaffeNet's gradient (243.9 MB), median of repeats; --caffenet also times CaffeNet training
iterations at a small batch on one process (the compute the scaling model scales to batch 256).

    python benchmarks/bench_mpi.py [--rounds 3] [--nets lenet,cifar10_quick] [--iterations N]
                                   [--bandwidth] [--caffenet] [--json FILE]
    mpiexec -n 2 python benchmarks/bench_mpi.py --worker --net lenet --total-batch 64
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
RESULT = "RESULT "
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "CAFFEPY_NUM_THREADS")
CONFIGS = {"lenet": dict(total_batch=64, iterations=30, warmup=3),
           "cifar10_quick": dict(total_batch=100, iterations=10, warmup=2)}
# the bytes of one gradient exchange: float32 learnable params (+ 4 bytes of action slot)
PARAMS = {"lenet": 431080, "cifar10_quick": 145578, "caffenet": 60965224}


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def worker_env():
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    for k in list(env):
        if k.startswith(("PMI_", "OMPI_", "MV2_", "PMIX_")):
            del env[k]
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(cmd):
    p = subprocess.run(cmd, env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    for line in p.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    sys.stderr.write(p.stderr[-3000:])
    raise SystemExit("worker failed (exit %d): %s" % (p.returncode, " ".join(cmd)))


# -- workers (one per measurement) ----------------------------------------------------------

def train_worker(args):
    sys.path.insert(0, HERE)
    import bench_nets
    from caffepy import distributed
    launched = distributed.launched_world()
    size, rank = (launched[1], launched[0]) if launched else (1, 0)
    world = sync = None
    if size > 1:
        from caffepy.distributed.mpi import GradientSync, start
        world = start()
    solver = bench_nets.caffepy_solver(args.net, batch=args.total_batch // size, seed=rank)
    if world is not None:
        world.broadcast_solver(solver)
        sync = GradientSync(world, solver)
        solver.add_callback(None, sync.on_gradients_ready)
    limit = bench_nets.thread_limit(1)
    for _ in range(args.warmup):
        solver.step(1)
    wall, cpu, allreduce, pack = [], [], [], []
    for _ in range(args.iterations):
        a0 = sync.allreduce_seconds if sync else 0.0
        p0 = sync.pack_seconds if sync else 0.0
        c0 = time.process_time()
        t0 = time.perf_counter()
        solver.step(1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        allreduce.append((sync.allreduce_seconds - a0) if sync else 0.0)
        pack.append((sync.pack_seconds - p0) if sync else 0.0)
    if limit is not None:
        limit.restore_original_limits()
    out = dict(net=args.net, ranks=size, batch_per_rank=args.total_batch // size, wall=wall,
               cpu=cpu, allreduce=allreduce, pack=pack,
               bytes=sync.bytes_per_iteration if sync else 4 * (PARAMS[args.net] + 1),
               preempted_per_iter=None)
    if world is not None:
        others = world.comm.gather(dict(wall=wall, allreduce=allreduce), root=0)
        if rank != 0:
            return
        out["rank1_allreduce"] = others[1]["allreduce"]
    print(RESULT + json.dumps(out), flush=True)


def bandwidth_worker(args):
    import numpy as np
    from caffepy.distributed.mpi import MPI, start
    world = start()
    comm = world.comm
    sizes = [1 << 12, 1 << 16, 1 << 20, 4 * (PARAMS["cifar10_quick"] + 1),
             4 * (PARAMS["lenet"] + 1), 1 << 24, 1 << 26, 4 * (PARAMS["caffenet"] + 1)]
    rows = []
    for nbytes in sizes:
        buf = np.ones(nbytes // 4, np.float32)
        reps = max(3, min(200, int(2e8 // max(nbytes, 1) // 10)))
        times = []
        for _ in range(reps + 1):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        rows.append(dict(bytes=nbytes, seconds=t, reps=reps))
        del buf
    if world.is_root:
        print(RESULT + json.dumps(dict(allreduce=rows, ranks=world.size)), flush=True)


def caffenet_worker(args):
    sys.path.insert(0, HERE)
    import bench_nets
    solver = bench_nets.caffepy_solver("caffenet", batch=args.caffenet_batch)
    limit = bench_nets.thread_limit(1)
    solver.step(1)
    wall = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        solver.step(1)
        wall.append(time.perf_counter() - t0)
    if limit is not None:
        limit.restore_original_limits()
    print(RESULT + json.dumps(dict(batch=args.caffenet_batch, wall=wall)), flush=True)


# -- the parent ------------------------------------------------------------------------------

def ms(x):
    return "%.1f" % (1000 * x)


def parent(args):
    exe = mpiexec()
    if exe is None:
        raise SystemExit("needs mpiexec (pip install 'caffepy[mpi]')")
    me = os.path.abspath(__file__)
    nets = [n for n in args.nets.split(",") if n]
    results = {n: {1: [], 2: []} for n in nets}
    load = open("/proc/loadavg").read().split()[:3]
    for rnd in range(args.rounds):
        for net in nets:
            cfg = CONFIGS[net]
            common = ["--worker", "--net", net, "--total-batch", str(cfg["total_batch"]),
                      "--iterations", str(args.iterations or cfg["iterations"]),
                      "--warmup", str(cfg["warmup"])]
            results[net][1].append(run([sys.executable, me] + common))
            results[net][2].append(run([exe, "-n", "2", sys.executable, me] + common))
            print("round %d %s done" % (rnd + 1, net), file=sys.stderr, flush=True)
    report = {"nets": {}, "load_average_before": load,
              "load_average_after": open("/proc/loadavg").read().split()[:3]}
    print("Data-parallel training, CPU, one BLAS thread per rank (CAFFEPY_NUM_THREADS=1); "
          "medians over %d rounds; cpu ms = rank 0's CPU time per iteration" % args.rounds)
    print("load average after: %s" % " ".join(report["load_average_after"]))
    print("load average before: %s" % " ".join(load))
    print("%-14s %5s %7s %12s %8s %13s %8s %9s %10s %8s" % (
        "net", "ranks", "batch", "ms/iter", "cpu ms", "allreduce ms", "share", "pack ms",
        "bytes", "speedup"))
    for net in nets:
        rows = {}
        for n in (1, 2):
            wall = [w for r in results[net][n] for w in r["wall"]]
            ar = [a for r in results[net][n] for a in r["allreduce"]]
            pk = [a for r in results[net][n] for a in r["pack"]]
            cpu = [a for r in results[net][n] for a in r["cpu"]]
            rows[n] = dict(ms_per_iter=1000 * statistics.median(wall),
                           cpu_ms_per_iter=1000 * statistics.median(cpu),
                           allreduce_ms=1000 * statistics.median(ar),
                           allreduce_share=statistics.median(
                               [a / w for a, w in zip(ar, wall)]),
                           pack_ms=1000 * statistics.median(pk),
                           batch_per_rank=results[net][n][0]["batch_per_rank"],
                           bytes=results[net][n][0]["bytes"],
                           round_medians_ms=[1000 * statistics.median(r["wall"])
                                             for r in results[net][n]])
        for n in (1, 2):
            r = rows[n]
            print("%-14s %5d %3d x %-3d %12.1f %8.1f %13.2f %7.1f%% %9.2f %10d %8s" % (
                net, n, n, r["batch_per_rank"], r["ms_per_iter"], r["cpu_ms_per_iter"],
                r["allreduce_ms"],
                100 * r["allreduce_share"], r["pack_ms"], r["bytes"],
                "%.2fx" % (rows[1]["ms_per_iter"] / r["ms_per_iter"])))
        report["nets"][net] = rows
    if args.bandwidth:
        bw = run([exe, "-n", "2", sys.executable, me, "--bandwidth-worker"])
        report["bandwidth"] = bw["allreduce"]
        print("\nAllreduce (in place, float32, 2 ranks, median):")
        print("%12s %12s %10s" % ("bytes", "ms", "GB/s"))
        for row in bw["allreduce"]:
            print("%12d %12.3f %10.2f" % (row["bytes"], 1000 * row["seconds"],
                                          row["bytes"] / row["seconds"] / 1e9))
    if args.caffenet:
        cn = run([sys.executable, me, "--caffenet-worker", "--caffenet-batch",
                  str(args.caffenet_batch), "--iterations", "2"])
        t = statistics.median(cn["wall"])
        report["caffenet"] = dict(batch=cn["batch"], seconds=t, wall=cn["wall"])
        print("\nCaffeNet, 1 process, batch %d: %.2f s/iter (%.3f s per image)"
              % (cn["batch"], t, t / cn["batch"]))
    print_model(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


# links for the multi-node model: (name, bandwidth bytes/s, latency s per message step);
# "measured" is this machine's 2-rank shared-memory Allreduce at each net's gradient size
LINKS = (("10 GbE (TCP)", 1.1e9, 50e-6), ("100 Gb/s InfiniBand", 11e9, 3e-6))
MODEL_RANKS = (2, 8, 32)
EXAMPLE_BATCH = {"lenet": 64, "cifar10_quick": 100, "caffenet": 256}


def ring_allreduce_seconds(nbytes, ranks, bandwidth, latency):
    """A ring Allreduce: each rank sends and receives 2 (N-1)/N of the buffer in 2 (N-1)
    steps (reduce-scatter, then allgather)."""
    return 2.0 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def print_model(report):
    """Weak scaling (each rank keeps the example's batch): the gradient exchange per iteration
    against the compute per iteration, from this run's measurements."""
    compute = {}
    for net in ("lenet", "cifar10_quick"):
        if net in report["nets"]:
            r = report["nets"][net][1]
            compute[net] = r["cpu_ms_per_iter"] / 1000 / r["batch_per_rank"]
    if "caffenet" in report:
        compute["caffenet"] = report["caffenet"]["seconds"] / report["caffenet"]["batch"]
    if not compute:
        return
    bw = {row["bytes"]: row["bytes"] / row["seconds"] for row in report.get("bandwidth", [])}
    print("\nScaling model (weak scaling: every rank trains the example's batch; compute = "
          "this machine's one-core time per image x batch; no overlap of exchange and "
          "backward):")
    print("%-14s %11s %10s %-22s %s" % ("net", "grad bytes", "compute s", "link",
                                        "  ".join("N=%-2d exch ms / eff" % n
                                                  for n in MODEL_RANKS)))
    model = {}
    for net, per_image in compute.items():
        nbytes = 4 * (PARAMS[net] + 1)
        tc = per_image * EXAMPLE_BATCH[net]
        links = list(LINKS)
        if nbytes in bw:
            links.insert(0, ("this machine (shm)", bw[nbytes], 0.0))
        for name, b, lat in links:
            cells = []
            for n in MODEL_RANKS:
                t = ring_allreduce_seconds(nbytes, n, b, lat)
                cells.append("%8.2f / %3.0f%%" % (1000 * t, 100 * tc / (tc + t)))
                model.setdefault(net, {}).setdefault(name, {})[n] = dict(
                    exchange_s=t, efficiency=tc / (tc + t))
            print("%-14s %11d %10.3f %-22s %s" % (net, nbytes, tc, name, "  ".join(cells)))
    report["model"] = model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nets", default="lenet,cifar10_quick")
    ap.add_argument("--iterations", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bandwidth", action="store_true")
    ap.add_argument("--caffenet", action="store_true")
    ap.add_argument("--caffenet-batch", type=int, default=32)
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--caffenet-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", default="lenet", help=argparse.SUPPRESS)
    ap.add_argument("--total-batch", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.iterations = args.iterations or CONFIGS[args.net]["iterations"]
        return train_worker(args)
    if args.bandwidth_worker:
        return bandwidth_worker(args)
    if args.caffenet_worker:
        return caffenet_worker(args)
    return parent(args)


if __name__ == "__main__":
    main()
