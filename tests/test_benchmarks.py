"""The measuring instruments in benchmarks/: the nets they build, the bytes they account, the
worker protocol, and that they import without torch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCH)

import bench_memory  # noqa: E402
import bench_nets  # noqa: E402
import bench_scaling  # noqa: E402
from helpers import standin_env  # noqa: E402

# LeNet, batch 64: the floats of each blob the net holds (relu1 works in place on ip1)
LENET_ACTIVATIONS = {"data": 64 * 1 * 28 * 28, "label": 64, "conv1": 64 * 20 * 24 * 24,
                     "pool1": 64 * 20 * 12 * 12, "conv2": 64 * 50 * 8 * 8,
                     "pool2": 64 * 50 * 4 * 4, "ip1": 64 * 500, "ip2": 64 * 10, "loss": 1}
LENET_PARAMS = (20 * 25 + 20) + (50 * 20 * 25 + 50) + (500 * 800 + 500) + (10 * 500 + 10)


@pytest.fixture(scope="module")
def lenet():
    return bench_nets.caffepy_solver("lenet")


def test_lenet_is_the_example_net_fed_by_an_input_layer(lenet):
    net = lenet.net
    assert net.layer_names == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                               "ip2", "loss"]
    assert net.layers[0].type == "Input"
    assert net.blobs["data"].shape == (64, 1, 28, 28)
    assert net.blobs["label"].shape == (64,)
    labels = net.blobs["label"].data
    assert labels.min() >= 0 and labels.max() <= 9 and np.all(labels == np.round(labels))
    assert LENET_PARAMS == 431080
    assert sum(p.count for p in net.learnable_params) == LENET_PARAMS


def test_torch_settings_repeat_the_solver_files():
    from caffepy.solver import read_solver_file
    assert set(bench_nets.TORCH_TWINS) <= set(bench_nets.NETS)
    for name in bench_nets.NETS:
        spec = bench_nets.NETS[name]
        p = read_solver_file(os.path.join(bench_nets.ROOT, spec["solver"]))
        assert (p.base_lr, p.momentum, p.weight_decay) == pytest.approx(
            (spec["base_lr"], spec["momentum"], spec["weight_decay"]))


def test_googlenet_is_the_model_fed_by_an_input_layer():
    """The GoogLeNet entry: the shipped train_val net, TRAIN phase, its Data layer replaced by
    one Input layer of the stated batch and shape; its three losses and 59 convolutions kept."""
    from caffepy.proto import caffe_pb2
    spec = bench_nets.NETS["googlenet"]
    _, net, tops = bench_nets.input_net("googlenet")
    assert tops == ["data", "label"]
    data = net.layer[0]
    assert data.type == "Input" and list(data.top) == tops
    assert [list(s.dim) for s in data.input_param.shape] == [
        [32, 3, 224, 224], [32]] == [[spec["batch"], *spec["shape"]], [spec["batch"]]]
    types = [lp.type for lp in net.layer]
    assert types.count("Input") == 1 and "Data" not in types and "Accuracy" not in types
    assert types.count("SoftmaxWithLoss") == 3 and types.count("Convolution") == 59
    assert not any(r.phase == caffe_pb2.TEST for lp in net.layer for r in lp.include)


def test_accounting_counts_lenet_blobs_and_history(lenet):
    held, by_layer = bench_memory.caffepy_accounting(lenet)
    assert held["activations data"] == 4 * sum(LENET_ACTIVATIONS.values()) == 5041924
    assert held["activations diff"] == 5041924
    assert held["params data"] == held["params diff"] == 4 * LENET_PARAMS
    assert held["solver history"] == 4 * LENET_PARAMS     # SGD: one history blob per param
    assert set(by_layer) <= set(lenet.net.layer_names)


def test_ledger_counts_a_buffer_once_in_the_first_category():
    ledger = bench_memory.Ledger()
    base = np.zeros(1000, dtype=np.float32)
    ledger.claim("a", base[:10].reshape(2, 5))
    ledger.claim("b", base)
    ledger.walk("c", {"x": [base[500:], (np.ones(3, dtype=np.float64),)]}, skip=())
    assert ledger.bytes == {"a": 4000, "c": 24}


def test_round_ratios_pair_each_round_with_its_own_reference():
    """A drift that slows every framework of a round alike cancels in the per-round ratios."""
    samples = {("caffepy", "lenet", 1): {"rounds": [(6.0, 6.1), (9.0, 9.2), (7.0, 7.1)]},
               ("caffe", "lenet", 1): {"rounds": [(10.0, 10.0), (15.0, 16.0), (10.0, 10.0)]}}
    med, lo, hi = bench_nets.round_ratios(samples, "caffe", "lenet", 1, "cpu")
    assert (med, lo, hi) == pytest.approx((0.6, 0.6, 0.7))
    med, lo, hi = bench_nets.round_ratios(samples, "caffe", "lenet", 1, "wall")
    assert (med, lo, hi) == pytest.approx((0.61, 0.575, 0.71))
    assert bench_nets.round_ratios(samples, "torch", "lenet", 1, "cpu") is None


def test_worker_prints_one_json_result():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "bench_nets.py"), "--worker",
                          "caffepy", "--net", "lenet", "--threads", "1", "--iterations", "2",
                          "--warmup", "1"], stdout=subprocess.PIPE, universal_newlines=True,
                         check=True).stdout
    lines = [x for x in out.splitlines() if x.startswith(bench_nets.RESULT)]
    assert len(lines) == 1
    res = json.loads(lines[0][len(bench_nets.RESULT):])
    assert (res["framework"], res["net"], res["threads"]) == ("caffepy", "lenet", 1)
    assert len(res["cpu"]) == len(res["wall"]) == 2
    assert all(0 < c < 10 for c in res["cpu"])
    assert np.isfinite(res["loss"])


def test_gpu_worker_runs_on_the_cupy_stand_in():
    """The --gpu worker on tests/standin (a strict NumPy-backed CuPy that, like CuPy, refuses
    host arrays written into device arrays): the benchmark's GPU path runs before any GPU is
    there to time it."""
    env = standin_env()
    out = subprocess.run([sys.executable, os.path.join(BENCH, "bench_nets.py"), "--worker",
                          "caffepy", "--gpu", "--net", "lenet", "--iterations", "2", "--warmup",
                          "1", "--per-layer"], stdout=subprocess.PIPE, env=env,
                         universal_newlines=True, check=True).stdout
    lines = [x for x in out.splitlines() if x.startswith(bench_nets.RESULT)]
    res = json.loads(lines[0][len(bench_nets.RESULT):])
    assert res["info"][0].startswith("CuPy ") and "stand-in" in res["info"][0]
    assert len(res["wall"]) == 2 and all(w > 0 for w in res["wall"])
    assert np.isfinite(res["loss"]) and 0 < res["loss"] < 10
    assert res["per_layer"]["names"][1:3] == ["conv1", "pool1"]


def test_pair_of_workers_times_the_two_halves_together():
    """bench_scaling.py's pair: two one-thread workers, half the batch each, whose timed loops
    start at the barrier together."""
    a, b = bench_scaling.run_pair("caffepy", "lenet", 63, iterations=3, warmup=1)
    assert (a["batch"], b["batch"]) == (31, 32)
    assert a["threads"] == b["threads"] == 1
    assert len(a["wall"]) == len(b["wall"]) == 3
    assert abs(a["span"][0] - b["span"][0]) < 0.5
    assert bench_scaling.overlap([a["span"], b["span"]]) > 0


def test_barrier_waits_for_the_last_worker(tmp_path):
    import threading
    import time
    other = threading.Timer(0.3, lambda: open(str(tmp_path / "1.ready"), "w").close())
    t0 = time.monotonic()
    other.start()
    bench_nets.barrier(str(tmp_path), 2, timeout=10)
    assert time.monotonic() - t0 >= 0.3
    assert sorted(os.listdir(str(tmp_path))) == sorted(["1.ready", "%d.ready" % os.getpid()])


def test_barrier_names_who_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="1 of 2 workers arrived"):
        bench_nets.barrier(str(tmp_path), 2, timeout=0.05)
    assert os.listdir(str(tmp_path)) == ["%d.ready" % os.getpid()]


def test_overlap_is_the_shared_part_of_the_two_loops():
    assert bench_scaling.overlap([[0.0, 10.0], [1.0, 11.0]]) == pytest.approx(9 / 11)
    assert bench_scaling.overlap([[0.0, 1.0], [2.0, 3.0]]) == 0.0
    assert bench_scaling.overlap([[5.0, 9.0], [5.0, 9.0]]) == 1.0


def test_ceiling_is_halving_times_contention():
    f = bench_scaling.round_figures(one=8.0, half=4.4, pair=[5.0, 5.5], two=5.0)
    assert f["scaling"] == pytest.approx(1.6)
    assert f["ceiling"] == pytest.approx(8.0 / 5.5)        # the slower half paces the step
    assert f["halving"] == pytest.approx(8.0 / 4.4)
    assert f["contention"] == pytest.approx(4.4 / 5.5)
    assert f["halving"] * f["contention"] == pytest.approx(f["ceiling"])
    assert f["share"] == pytest.approx(1.6 / (8.0 / 5.5))
    s = bench_scaling.summarise([f, bench_scaling.round_figures(8.0, 4.0, [5.0, 5.0], 4.0)])
    assert s["scaling"] == pytest.approx((1.8, 1.6, 2.0))
    assert s["ceiling"] == pytest.approx(((8 / 5.5 + 1.6) / 2, 8 / 5.5, 1.6))


def test_scripts_import_without_torch():
    code = ("import sys; sys.path.insert(0, %r); import bench_nets, bench_memory, bench_scaling; "
            "print('torch' in sys.modules, 'caffepy' in sys.modules)" % BENCH)
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout.split()
    assert out == ["False", "False"]


# -- BVLC Caffe as a third reference (bench_nets.py --caffe) ---------------------------------

# the end of a `caffe time` log (Caffe 1.0, LeNet batch 64, one thread), as glog writes it
CAFFE_TIME_LOG = """\
I1206 08:50:48.219789  3453 caffe.cpp:397] Average time per layer: 
I1206 08:50:48.219791  3453 caffe.cpp:400]       data\tforward: 0.00015 ms.
I1206 08:50:48.219793  3453 caffe.cpp:403]       data\tbackward: 0.0002 ms.
I1206 08:50:48.219796  3453 caffe.cpp:400]      conv1\tforward: 0.52204 ms.
I1206 08:50:48.219798  3453 caffe.cpp:403]      conv1\tbackward: 0.5701 ms.
I1206 08:50:48.219800  3453 caffe.cpp:400]       loss\tforward: 0.01133 ms.
I1206 08:50:48.219802  3453 caffe.cpp:403]       loss\tbackward: 0.00115 ms.
I1206 08:50:48.219862  3453 caffe.cpp:408] Average Forward pass: 4.17352 ms.
I1206 08:50:48.219864  3453 caffe.cpp:410] Average Backward pass: 5.58315 ms.
I1206 08:50:48.219866  3453 caffe.cpp:412] Average Forward-Backward: 9.78 ms.
I1206 08:50:48.219867  3453 caffe.cpp:414] Total Time: 978 ms.
"""


def test_parse_caffe_time_reads_the_per_layer_table():
    pl = bench_nets.parse_caffe_time(CAFFE_TIME_LOG)
    assert pl["names"] == ["data", "conv1", "loss"]
    assert pl["forward"] == [0.00015, 0.52204, 0.01133]
    assert pl["backward"] == [0.0002, 0.5701, 0.00115]
    assert pl["total"] == 9.78


FAKE_CAFFE = """\
#!{python}
# Stands in for BVLC Caffe's binary: 'train' burns {per_iter} s of CPU per iteration of the
# solver's max_iter after {setup} s of set-up, and logs the last loss as Caffe does.
import re, sys, time
if sys.argv[1] == "--version":
    print("caffe version 1.0.0")
    sys.exit(0)
text = open(sys.argv[sys.argv.index("-solver") + 1]).read()
n = int(re.search(r"max_iter: (\\d+)", text).group(1))
net = re.search(r'net: "([^"]+)"', text).group(1)
assert 'type: "Input"' in open(net).read()
def burn(s):
    t = time.process_time()
    while time.process_time() - t < s:
        pass
burn({setup})
burn({per_iter} * n)
sys.stderr.write("I1206 00:00:00.0 1 solver.cpp:218] Iteration %d, loss = 0.25\\n" % n)
"""


def test_caffe_worker_takes_the_difference_of_two_runs(tmp_path):
    fake = tmp_path / "caffe"
    fake.write_text(FAKE_CAFFE.format(python=sys.executable, per_iter=0.004, setup=0.15))
    fake.chmod(0o755)
    args = bench_nets.argparse.Namespace(caffe_bin=str(fake), net="lenet", batch=0,
                                         threads=1, iterations=10, warmup=2, per_layer=False)
    res = bench_nets.caffe_worker(args)
    assert res["framework"] == "caffe" and res["loss"] == 0.25
    # 4 x 10 timed iterations: the set-up drops out, the per-iteration CPU time is left
    assert res["cpu"][0] == pytest.approx(0.004, rel=0.15)
    assert "BVLC caffe version 1.0.0" in res["info"][0]


def test_caffe_worker_refuses_caffepys_own_caffe_command(tmp_path):
    fake = tmp_path / "caffe"
    fake.write_text("#!/bin/sh\necho 'caffepy 0.1.0 (the caffe command of caffepy)'\n")
    fake.chmod(0o755)
    with pytest.raises(SystemExit, match="is not BVLC Caffe"):
        bench_nets.caffe_binary_info(str(fake))


# -- the GEMM floor (bench_gemm_floor.py) ---------------------------------------------------

def test_gemm_floor_lists_lenets_products(lenet):
    import bench_gemm_floor
    rows = bench_gemm_floor.products(lenet.net)
    got = {}
    for layer, what, m, k, n, times in rows:
        got.setdefault((layer, what), []).append((m, k, n, times))
    # conv1: 20 filters of 1×5×5 over 24×24 outputs, a product per chunk of images, the chunks
    # covering the batch; no data gradient (the data needs none)
    assert sum(n // 576 * t for _, _, n, t in got[("conv1", "forward")]) == 64
    assert {(m, k) for m, k, _, _ in got[("conv1", "forward")]} == {(20, 25)}
    assert ("conv1", "data gradient") not in got
    assert {(m, n) for m, _, n, _ in got[("conv2", "weight gradient")]} == {(50, 500)}
    assert {(m, k) for m, k, _, _ in got[("conv2", "data gradient")]} == {(500, 50)}
    assert got[("ip1", "forward")] == [(64, 800, 500, 1)]
    assert got[("ip2", "data gradient")] == [(64, 10, 500, 1)]
    # the multiply-adds of a LeNet training iteration, counted by hand
    macs = sum(m * k * n * t for _, _, m, k, n, t in rows)
    assert macs == 2 * 64 * 576 * 20 * 25 + 3 * 64 * 64 * 50 * 500 + 3 * 64 * 800 * 500 \
        + 3 * 64 * 500 * 10


def test_caffe_worker_names_a_binary_it_cannot_run(tmp_path):
    with pytest.raises(SystemExit, match="--caffe .*no-caffe-here: cannot run it"):
        bench_nets.caffe_binary_info(str(tmp_path / "no-caffe-here"))
