#!/usr/bin/env python3
"""How far two cores can speed up one training iteration on this machine: each framework's own
1 → 2 thread scaling beside a ceiling that no threading design can beat by much.

The ceiling is data parallelism with nothing shared and nothing to synchronise: two processes,
one thread each, each training half the batch, their timed loops started together (a barrier
after warm-up). A synchronous data-parallel step waits for the slower half, so

    ceiling = (whole batch, one thread) / (the slower half, while the other half runs)

It is not a strict bound (each half also updates all the weights, as each replica of Caffe's
multi-GPU training does, where a split design could share that work; and its working set is
half the size), but it shows what the machine gives. It splits into two factors, both
measured:

* **halving**: (whole batch, one thread) / (half batch, one thread, alone): how the
  iteration's cost falls with the batch; per-iteration costs that do not shrink (the update,
  the dispatch of every layer) keep it under 2;
* **contention**: (half batch alone) / (half batch beside the other half): what the two cores
  cost each other through the memory and caches they share.

For every net and framework (caffepy, and PyTorch where it is installed) a round runs, one
process after another: the whole batch on one thread, half the batch on one thread, the pair,
and the whole batch on two threads (the framework's own scaling, as bench_nets.py measures it).
Ratios are taken round by round and reported as the median [lowest-highest] of the rounds; times
are medians of wall time per training iteration (solver step, or forward, backward and SGD step
in PyTorch). The pair's loops must overlap: the script prints how much they did.

    python benchmarks/bench_scaling.py [--nets lenet,cifar10_quick] [--rounds 5] [--no-torch]
                                       [--iterations N] [--json FILE]

As for the other benchmarks, you may unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this one
command. It needs two usable cores.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_nets  # noqa: E402

SCRIPT = os.path.abspath(bench_nets.__file__)
KINDS = ("one", "half", "pair", "two")


def worker_cmd(framework, net, threads, batch, iterations, warmup, extra=()):
    return [sys.executable, SCRIPT, "--worker", framework, "--net", net, "--threads",
            str(threads), "--batch", str(batch), "--iterations", str(iterations), "--warmup",
            str(warmup)] + list(extra)


def run_pair(framework, net, batch, iterations, warmup):
    """Two one-thread workers, batch // 2 and the rest, timed together; their result dicts."""
    halves = (batch // 2, batch - batch // 2)
    with tempfile.TemporaryDirectory(prefix="caffepy-pair-") as d:
        cmds = [worker_cmd(framework, net, 1, b, iterations, warmup,
                           ["--barrier", d, "--parties", "2"]) for b in halves]
        procs = [bench_nets.start_worker_cmd(c, 1) for c in cmds]
        return [bench_nets.worker_result(p, c, framework + " (pair)")
                for p, c in zip(procs, cmds)]


def overlap(spans):
    """The share of the pair's timed time during which both loops ran (1.0: all of it)."""
    start, end = max(s[0] for s in spans), min(s[1] for s in spans)
    whole = max(s[1] for s in spans) - min(s[0] for s in spans)
    return max(0.0, end - start) / whole if whole > 0 else 0.0


def round_figures(one, half, pair, two):
    """The ratios of one round from its wall-time medians (ms): ``pair`` is the two halves'
    medians. Returns {name: value}."""
    slower = max(pair)
    return {"scaling": one / two, "ceiling": one / slower, "halving": one / half,
            "contention": half / slower, "share": (one / two) / (one / slower)}


def summarise(rounds):
    """{figure: (median, lowest, highest)} over rounds of round_figures."""
    out = {}
    for key in rounds[0]:
        xs = [r[key] for r in rounds]
        out[key] = (statistics.median(xs), min(xs), max(xs))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=bench_nets.DEFAULT_NETS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=0,
                    help="timed iterations per worker (default: bench_nets.py's per net)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="also write every round's medians to this file")
    args = ap.parse_args(argv)
    nets = args.nets.split(",")
    for name in nets:
        if name not in bench_nets.NETS:
            ap.error("unknown net %r" % name)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench_scaling.py needs two usable cores")
    frameworks = ["caffepy"]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        frameworks.append("torch")
    print("machine: %d cores, %s; load average %s (1, 5, 15 min) at start"
          % (os.cpu_count(), bench_nets.cpu_model(), bench_nets.load_average()))
    print("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" % (os.environ.get("OPENBLAS_CORETYPE"),
                                                        os.environ.get("OPENBLAS_L2_SIZE")))
    medians = {}            # (fw, net) -> [{kind: ms or [ms, ms]}, ...] one per round
    overlaps = {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for name in nets:
            spec = bench_nets.NETS[name]
            its, warm, batch = args.iterations or spec["iterations"], spec["warmup"], spec["batch"]
            for fw in frameworks:
                m = {}
                for kind, threads, b in (("one", 1, batch), ("half", 1, batch // 2),
                                         ("two", 2, batch)):
                    cmd = worker_cmd(fw, name, threads, b, its, warm)
                    res = bench_nets.run_worker_cmd(cmd, threads, fw)
                    m[kind] = bench_nets.ms(res["wall"])
                pair = run_pair(fw, name, batch, its, warm)
                m["pair"] = [bench_nets.ms(res["wall"]) for res in pair]
                overlaps.setdefault((fw, name), []).append(overlap([p["span"] for p in pair]))
                medians.setdefault((fw, name), []).append(m)
        print("round %d of %d done (%.0f s, load average %s)"
              % (r + 1, args.rounds, time.perf_counter() - t0, bench_nets.load_average()),
              flush=True)

    print("\n== wall ms per training iteration (median of the rounds' medians) ==")
    print("%-14s %-8s %9s %9s %9s %15s" % ("net", "", "batch, 1", "batch, 2", "half, 1",
                                           "halves, paired"))
    for (fw, name), rounds in medians.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in ("one", "two", "half")}
        pa = [statistics.median(r["pair"][i] for r in rounds) for i in range(2)]
        print("%-14s %-8s %9.2f %9.2f %9.2f %7.2f %7.2f" % (name, fw, med["one"], med["two"],
                                                            med["half"], pa[0], pa[1]))
    print("\n== 1 -> 2 cores, round by round: median [lowest-highest] ==")
    print("  scaling: the framework's own (1 thread / 2 threads, whole batch)")
    print("  ceiling: whole batch on 1 thread / the slower of two paired halves = halving x "
          "contention")
    print("  share: scaling / ceiling")
    for (fw, name), rounds in medians.items():
        s = summarise([round_figures(r["one"], r["half"], r["pair"], r["two"]) for r in rounds])
        print("%-14s %-8s" % (name, fw) + "".join(
            "  %s %.2f [%.2f-%.2f]" % ((k,) + s[k])
            for k in ("scaling", "ceiling", "halving", "contention", "share")))
        low = min(overlaps[(fw, name)])
        if low < 0.9:
            print("%-23s warning: the pair's timed loops overlapped only %.0f %% in one round"
                  % ("", 100 * low))
    print("\nload average %s at the end; %.0f s in all"
          % (bench_nets.load_average(), time.perf_counter() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"%s/%s" % k: {"rounds": v, "overlap": overlaps[k]}
                       for k, v in medians.items()}, f, indent=1)


if __name__ == "__main__":
    main()
