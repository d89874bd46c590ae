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
    for name in ("lenet", "cifar10_quick"):
        spec = bench_nets.NETS[name]
        p = read_solver_file(os.path.join(bench_nets.ROOT, spec["solver"]))
        assert (p.base_lr, p.momentum, p.weight_decay) == pytest.approx(
            (spec["base_lr"], spec["momentum"], spec["weight_decay"]))


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


def test_scripts_import_without_torch():
    code = ("import sys; sys.path.insert(0, %r); import bench_nets, bench_memory; "
            "print('torch' in sys.modules, 'caffepy' in sys.modules)" % BENCH)
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout.split()
    assert out == ["False", "False"]
