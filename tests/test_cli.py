"""The caffepy command line (Caffe's `caffe` tool) and the MNIST example scripts."""
import gzip
import importlib.util
import os
import re
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

import caffepy
from caffepy import cli
from caffepy.proto import caffe_pb2
from caffepy.tools import ToolError
from caffepy.tools import convert_mnist as cm
from helpers import messages, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2
    weight_filler { type: "constant" value: 0.1 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_weight: 2 }
layer { name: "sum" type: "Reduction" bottom: "ip" top: "sum"
  include { stage: "with_sum" } }
"""

TINY_SOLVER = """
net: "net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
max_iter: 4
display: 1
snapshot: 2
snapshot_prefix: "snap/tiny"
test_iter: 2
test_interval: 2
test_net: "net.prototxt"
random_seed: 1
solver_mode: GPU
"""

LEVEL_NET = """
name: "n"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_weight: 3 }
layer { name: "lvl" type: "Reduction" bottom: "ip" top: "lvl" include { min_level: 2 } }
"""

LEVEL_SOLVER = """
net: "net.prototxt"
base_lr: 0
lr_policy: "fixed"
max_iter: 0
test_iter: 1
test_interval: 100
test_net: "net.prototxt"
"""


def _have_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(TINY_SOLVER)
    (tmp_path / "snap").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_weights(tiny):
    net = caffepy.Net("net.prototxt", caffepy.TEST)
    net.params["ip"][0].data[...] = [[0.1, 0.2, 0.3], [0.0, -0.1, 0.5]]
    net.params["ip"][1].data[...] = [0.05, 0.0]
    net.save("w.caffemodel")
    return "w.caffemodel"


@pytest.fixture
def clidir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(LEVEL_NET)
    (tmp_path / "solver.prototxt").write_text(LEVEL_SOLVER)
    for name, w in (("a.caffemodel", 1.0), ("b.caffemodel", 2.0)):
        net = caffepy.Net("net.prototxt", caffepy.TEST)
        net.params["ip"][0].data[...] = w
        net.params["ip"][1].data[...] = 0.5
        net.save(name)
    return tmp_path


# -- flag parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["train", "-solver", "s.prototxt"],
    ["train", "-solver=s.prototxt"],
    ["train", "--solver", "s.prototxt"],
    ["train", "--solver=s.prototxt"],
    ["-solver", "s.prototxt", "train"],
    ["--solver=s.prototxt", "train"],
])
def test_flag_spellings(argv):
    flags, pos = cli.parse_flags(argv)
    assert flags.solver == "s.prototxt"
    assert pos == ["train"]
    assert flags.given("solver") and not flags.given("weights")


def test_flag_types_and_defaults():
    flags, pos = cli.parse_flags(["test", "-iterations", "7", "--level=-2", "-stage", "a,b,,c",
                                  "-gpu=", "-weights", "a.caffemodel,b.caffemodel"])
    assert pos == ["test"]
    assert flags.iterations == 7 and flags.level == -2
    assert cli.get_stages(flags) == ["a", "b", "c"]
    assert flags.gpu == "" and flags.weights == "a.caffemodel,b.caffemodel"
    d, _ = cli.parse_flags([])
    assert (d.iterations, d.level, d.sigint_effect, d.sighup_effect, d.backend) == \
        (50, 0, "stop", "snapshot", "lmdb")
    assert cli.get_stages(d) == []


@pytest.mark.parametrize("argv,value", [
    (["-bundled"], True), (["--bundled"], True), (["-bundled=true"], True),
    (["--bundled=1"], True), (["-bundled=false"], False), (["--nobundled"], False),
    (["-bundled", "-nobundled"], False), ([], False),
])
def test_bool_flags(argv, value):
    flags, pos = cli.parse_flags(argv + ["convert_mnist", "out"])
    assert flags.bundled is value
    assert pos == ["convert_mnist", "out"]


def test_double_dash_ends_flags():
    flags, pos = cli.parse_flags(["convert_mnist", "--split", "test", "--", "-odd-name"])
    assert flags.split == "test" and pos == ["convert_mnist", "-odd-name"]


@pytest.mark.parametrize("argv,msg", [
    (["train", "-nosuchflag", "1"], "unknown command line flag 'nosuchflag'"),
    (["test", "-iterations", "many"], "illegal value 'many' specified for int32 flag"),
    (["train", "-solver"], "flag '-solver' is missing its argument"),
    (["-bundled=maybe"], "illegal value 'maybe' specified for bool flag"),
])
def test_flag_errors(capsys, argv, msg):
    with pytest.raises(cli.FlagError, match=re.escape(msg)):
        cli.parse_flags(argv)
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 1 and msg in err


# -- usage errors ----------------------------------------------------------------------------

def test_no_command_prints_usage(capsys):
    rc, out, err = run_cli(capsys)
    assert rc == 1
    assert "usage: caffepy <command> <args>" in err
    for name in ("train", "test", "time", "device_query", "convert_mnist"):
        assert re.search(r"^  %s +\S" % name, err, re.M)
    assert "-solver (The solver definition protocol buffer text file.)" in err


def test_help_and_version(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "usage: caffepy <command> <args>" in out
    rc, out, _ = run_cli(capsys, "-version")
    assert rc == 0 and caffepy.__version__ in out


def test_unknown_command(capsys):
    rc, out, err = run_cli(capsys, "fly")
    assert rc == 1
    assert "Available caffepy actions:" in messages(err)
    assert "\ttrain" in messages(err)
    assert re.search(r"^F\d{4} .*\] Unknown action: fly$", err, re.M)


def test_train_needs_solver(capsys):
    rc, _, err = run_cli(capsys, "train")
    assert rc == 1
    assert re.search(r"^F.*Need a solver definition to train", err, re.M)


def test_train_weights_and_snapshot_exclusive(capsys, tiny):
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-weights", "a",
                         "-snapshot", "b")
    assert rc == 1
    assert "Give a snapshot to resume training or weights to finetune but not both." in err


def test_train_bad_signal_effect(capsys, tiny):
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-sigint_effect", "quit")
    assert rc == 1 and 'Invalid signal effect "quit" was specified' in err


def test_train_missing_solver_file(capsys, tiny):
    rc, _, err = run_cli(capsys, "train", "--solver=nope.prototxt")
    assert rc == 1 and "nope.prototxt" in err and "Traceback" not in err


def test_bad_prototxt_is_a_clean_fatal_line(capsys, tiny):
    (tiny / "bad.prototxt").write_text('net: "net.prototxt"\nbase_lr: abc\n')
    rc, _, err = run_cli(capsys, "train", "-solver", "bad.prototxt")
    assert rc == 1
    assert re.search(r"^F\d{4} .*\] bad\.prototxt:2:.*base_lr", err, re.M)
    assert "Traceback" not in err


def test_unexpected_positional(capsys):
    rc, _, err = run_cli(capsys, "train", "extra")
    assert rc == 1 and "unexpected argument" in err


def test_test_needs_model_and_weights(capsys, tiny):
    rc, _, err = run_cli(capsys, "test", "-weights", "w.caffemodel")
    assert rc == 1 and "Need a model definition to score" in err
    rc, _, err = run_cli(capsys, "test", "-model", "net.prototxt")
    assert rc == 1 and "Need model weights to score" in err


@pytest.mark.skipif(_have_gpu(), reason="a GPU backend is available here")
def test_gpu_flag_without_gpu_backend_fails(capsys, tiny, tiny_weights):
    for argv in (["test", "-model", "net.prototxt", "-weights", tiny_weights, "-gpu", "0"],
                 ["time", "-model", "net.prototxt", "-gpu", "all"],
                 ["train", "-solver", "solver.prototxt", "--gpu=0"]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 1, argv
        assert "needs CuPy and an NVIDIA GPU" in err
    assert not os.listdir("snap")


# -- convert_mnist ------------------------------------------------------------------------------

def _write_idx(tmp_path, images, labels, gz=False):
    ip, lp = tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte"
    ib = struct.pack(">iiii", 2051, len(images), 28, 28) + images.tobytes()
    lb = struct.pack(">ii", 2049, len(labels)) + labels.tobytes()
    if gz:
        ip, lp = ip.with_suffix(".gz"), lp.with_suffix(".gz")
        ib, lb = gzip.compress(ib), gzip.compress(lb)
    ip.write_bytes(ib)
    lp.write_bytes(lb)
    return str(ip), str(lp)


def read_lmdb(path):
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(k, v) for k, v in txn.cursor()]
    finally:
        env.close()


def check_db(path, images, labels):
    records = read_lmdb(path)
    assert len(records) == len(images)
    for i, (key, value) in enumerate(records):
        assert key == b"%08d" % i
        d = caffe_pb2.Datum()
        d.ParseFromString(value)
        assert (d.channels, d.height, d.width) == (1, 28, 28)
        assert not d.encoded and len(d.float_data) == 0
        assert d.label == labels[i]
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(28, 28), images[i])


@pytest.mark.parametrize("gz", [False, True])
def test_convert_mnist_idx(capsys, tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 23, dtype=np.uint8)
    ip, lp = _write_idx(tmp_path, images, labels, gz)
    db = str(tmp_path / "out_lmdb")
    rc, _, err = run_cli(capsys, "convert_mnist", ip, lp, db, "--backend=lmdb")
    assert rc == 0, err
    assert "A total of 23 items." in messages(err)
    assert "Rows: 28 Cols: 28" in messages(err)
    assert "Processed 23 files." in messages(err)
    check_db(db, images, labels)
    # The output must not exist yet.
    rc, _, err = run_cli(capsys, "convert_mnist", ip, lp, db)
    assert rc == 1 and "already exists" in err
    check_db(db, images, labels)


def test_convert_mnist_commits_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    labels = np.arange(10) % 10
    db = str(tmp_path / "db")
    assert cm.write_mnist_db(images, labels, db, commit_every=3, progress=False) == 10
    check_db(db, images, labels)


def test_convert_mnist_bundled_and_npz(capsys, tmp_path):
    from caffepy.datasets import MNIST_5K, mnist_5k
    data = mnist_5k()
    db = str(tmp_path / "test_lmdb")
    rc, _, err = run_cli(capsys, "convert_mnist", "--bundled", "--split", "test", db)
    assert rc == 0, err
    check_db(db, data["test_images"], data["test_labels"])
    small = tmp_path / "small.npz"
    np.savez(small, train_images=data["train_images"][:7], train_labels=data["train_labels"][:7])
    db2 = str(tmp_path / "small_lmdb")
    rc, _, err = run_cli(capsys, "convert_mnist", "-npz", str(small), "-split=train", db2)
    assert rc == 0, err
    check_db(db2, data["train_images"][:7], data["train_labels"][:7])
    assert os.path.isfile(MNIST_5K)


@pytest.mark.parametrize("argv,msg", [
    (["convert_mnist", "--bundled", "x_lmdb"], "needs --split train or --split test"),
    (["convert_mnist", "--bundled", "--split", "val", "x_lmdb"], "--split must be 'train' or"),
    (["convert_mnist", "a", "b"], "convert_mnist needs IMAGES_IDX LABELS_IDX OUT_DB"),
    (["convert_mnist", "nofile", "nofile2", "x_lmdb"], "cannot open 'nofile'"),
    (["convert_mnist", "--bundled", "--split", "test", "--backend", "rocksdb", "x_lmdb"],
     "Unknown database backend 'rocksdb'"),
])
def test_convert_mnist_errors(capsys, tmp_path, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 1 and msg in err
    assert not os.path.exists("x_lmdb")


def test_convert_mnist_leveldb_needs_plyvel(capsys, tmp_path):
    try:
        import plyvel  # noqa: F401
        pytest.skip("plyvel is installed")
    except ImportError:
        pass
    db = str(tmp_path / "x_leveldb")
    rc, _, err = run_cli(capsys, "convert_mnist", "--bundled", "--split", "test",
                         "--backend=leveldb", db)
    assert rc == 1 and "needs the optional plyvel package" in err
    assert not os.path.exists(db)


def test_idx_bad_magic(tmp_path):
    ip, lp = _write_idx(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ToolError, match="Incorrect image file magic"):
        cm.read_idx_images(lp)
    with pytest.raises(ToolError, match="Incorrect label file magic"):
        cm.read_idx_labels(ip)


# -- test / time --------------------------------------------------------------------------------

def test_test_command_prints_caffe_lines(capsys, tiny, tiny_weights):
    rc, _, err = run_cli(capsys, "test", "-model", "net.prototxt", "-weights", tiny_weights,
                         "-iterations", "3", "-stage", "with_sum")
    assert rc == 0, err
    m = messages(err)
    # ip = [0.65, 0.4] per sample; Euclidean: 4 * (0.15^2 + 0.1^2) / (2*4) = 0.01625
    for i in range(3):
        assert "Batch %d, loss = 0.01625" % i in m
        assert "Batch %d, sum = 4.2" % i in m
    assert "Batch 3, loss = 0.01625" not in m
    assert "Running for 3 iterations." in m
    assert "Loss: 0.0325" in m
    assert "loss = 0.01625 (* 2 = 0.0325 loss)" in m
    assert "sum = 4.2" in m
    assert m.index("Loss: 0.0325") < m.index("sum = 4.2")


def test_test_command_without_stage_has_no_sum(capsys, tiny, tiny_weights):
    rc, _, err = run_cli(capsys, "test", "--model=net.prototxt", "--weights=" + tiny_weights,
                         "--iterations=1")
    assert rc == 0, err
    m = messages(err)
    assert "Batch 0, loss = 0.01625" in m and not any("sum" in x for x in m)


def test_test_command_level_batches_and_loss_weight_suffix(clidir, capsys):
    # Net(model, TEST, level, stages); per batch "Batch i, out = v"; then "Loss: " and the means
    # with " (* w = w*mean loss)". ip = 3 * 2 + 0.5 = 6.5 per item, Euclidean = 2*6.5^2/(2*2).
    rc = cli.main(["test", "-model", "net.prototxt", "-weights", "b.caffemodel", "-level", "2",
                   "-iterations", "2"])
    m = messages(capsys.readouterr().err)
    assert rc == 0
    assert "Running for 2 iterations." in m
    for i in range(2):
        assert "Batch %d, loss = 21.125" % i in m
        assert "Batch %d, lvl = 13" % i in m          # Reduction SUM of [6.5, 6.5]
    assert "Loss: 63.375" in m                         # 3 * 21.125
    assert "loss = 21.125 (* 3 = 63.375 loss)" in m
    assert "lvl = 13" in m
    # outputs are reported in output-blob order (alphabetical: loss, lvl)
    assert m.index("Batch 0, loss = 21.125") < m.index("Batch 0, lvl = 13")


def test_test_command_default_iterations_is_50(clidir, capsys):
    assert cli.main(["test", "-model", "net.prototxt", "-weights", "a.caffemodel"]) == 0
    m = messages(capsys.readouterr().err)
    assert "Running for 50 iterations." in m
    assert "Batch 49, loss = 6.125" in m and "Batch 50, loss = 6.125" not in m


def test_time_command(capsys, tiny):
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "3",
                         "-stage", "with_sum")
    assert rc == 0, err
    m = messages(err)
    assert "Initial loss: 0.08" in m       # 2 * Euclidean(0.3 - 0.5) = 2 * 0.04
    assert "Average time per layer: " in m
    for name in ("data", "ip", "loss", "sum"):
        for what in ("forward", "backward"):
            assert any(re.fullmatch(r" *%s\t%s: [0-9.e+-]+ ms\." % (name, what), x) for x in m), \
                (name, what)
    assert any(re.fullmatch(r" {8}ip\tforward: .* ms\.", x) for x in m)   # setw(10)
    for head in ("Average Forward pass: ", "Average Backward pass: ",
                 "Average Forward-Backward: ", "Total Time: "):
        assert any(x.startswith(head) and x.endswith(" ms.") for x in m), head
    assert sum(x.startswith("Iteration: ") for x in m) == 3


def test_time_phase_flag(capsys, tiny):
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "1",
                         "-phase", "TEST")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-phase", "VAL")
    assert rc == 1 and 'phase must be "TRAIN" or "TEST"' in err


def test_time_backward_runs_every_layer_with_bottom_need_backward(clidir, capsys, monkeypatch):
    # time(): layers[i]->Backward(top_vecs[i], bottom_need_backward[i], bottom_vecs[i]) for
    # every layer, regardless of layer_need_backward; -level reaches the net.
    from caffepy.net import Net
    calls = []
    orig_init = Net.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        for i, layer in enumerate(self.layers):
            orig = layer.backward

            def spy(top, pd, bottom, _orig=orig, _i=i):
                calls.append((_i, list(pd)))
                return _orig(top, pd, bottom)
            layer.backward = spy
        self._spied = True
        seen_nets.append(self)
    seen_nets = []
    monkeypatch.setattr(Net, "__init__", init)
    rc = cli.main(["time", "-model", "net.prototxt", "-iterations", "2", "-level", "2"])
    capsys.readouterr()
    assert rc == 0
    net = seen_nets[0]
    names = [l.layer_param.name for l in net.layers]
    assert "lvl" in names
    timed = calls[-2 * len(names):]
    assert [i for i, _ in timed] == list(range(len(names)))[::-1] * 2
    for i, pd in timed[:len(names)]:
        assert pd == list(net.bottom_need_backward[i])


def test_device_query(capsys):
    rc, _, err = run_cli(capsys, "device_query")
    assert rc == 0, err
    m = messages(err)
    assert any(x.startswith("CPU backend: NumPy ") for x in m)
    assert any(x.startswith("GPU backend: ") for x in m)


def test_log_dir(capsys, tmp_path, tiny):
    logs = tmp_path / "logs"
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "1",
                         "--log_dir", str(logs))
    assert rc == 0, err
    files = [f for f in os.listdir(logs) if ".log.INFO." in f]
    assert len(files) == 1
    text = (logs / files[0]).read_text()
    assert text.startswith("Log file created at: ")
    assert "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg" in text
    assert "Average Forward pass: " in text
    if hasattr(os, "symlink"):
        assert os.path.realpath(logs / "caffepy.INFO") == os.path.realpath(logs / files[0])


def test_minloglevel(capsys, tiny):
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "1",
                         "-minloglevel", "1")
    assert rc == 0 and err == ""


def test_cli_leaves_logging_alone(capsys, tiny):
    import logging
    logger = logging.getLogger("caffepy")
    before = (list(logger.handlers), logger.level, logger.propagate)
    run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "1")
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_subprocess_python_m_caffepy(tiny):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(REPO, "src") + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "caffepy", "time", "--model", "net.prototxt",
                        "-iterations=2"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ cli\.py:\d+\] Total Time: ",
                     p.stderr, re.M)
    p = subprocess.run([sys.executable, "-m", "caffepy"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 1 and "usage: caffepy <command> <args>" in p.stderr


# -- train ----------------------------------------------------------------------------------------

def _snapshots(d="snap"):
    return sorted(os.listdir(d))


def test_train_tiny_solver(capsys, tiny):
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt")
    assert rc == 0, err
    m = messages(err)
    assert any("solver_mode: GPU" in x and "running on the CPU" in x for x in m) or _have_gpu()
    assert "Starting Optimization" in m
    assert m.count("Optimization Done.") >= 1
    assert _snapshots() == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate",
                            "tiny_iter_4.caffemodel", "tiny_iter_4.solverstate"]
    # The weights moved: ip started at 0.1 everywhere.
    net = caffepy.Net("net.prototxt", caffepy.TEST, weights="snap/tiny_iter_4.caffemodel")
    assert not np.allclose(net.params["ip"][0].data, 0.1)


def _capture_solver_param(monkeypatch):
    from caffepy import solver as solver_mod
    seen = {}
    orig = solver_mod.get_solver

    def spy(param, **kw):
        seen["param"] = param
        seen["kw"] = kw
        seen["solver"] = orig(param, **kw)
        return seen["solver"]
    monkeypatch.setattr(solver_mod, "get_solver", spy)
    return seen


def test_train_flags_reach_the_solver(capsys, tiny, monkeypatch):
    seen = _capture_solver_param(monkeypatch)
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-level", "3",
                         "-stage", "with_sum,b", "-sigint_effect", "snapshot",
                         "-sighup_effect", "none")
    assert rc == 0, err
    p = seen["param"]
    assert p.train_state.level == 3 and list(p.train_state.stage) == ["with_sum", "b"]
    assert not p.test_state          # the test nets are not affected
    assert seen["kw"] == {"sigint_effect": "snapshot", "sighup_effect": "none"}
    assert "sum" in seen["solver"].net.outputs
    assert "sum" not in seen["solver"].test_nets[0].outputs


def test_train_level_affects_only_the_train_net(clidir, capsys, monkeypatch):
    seen = _capture_solver_param(monkeypatch)
    assert cli.main(["train", "-solver", "solver.prototxt", "-level", "2"]) == 0
    assert "lvl" in seen["solver"].net.outputs
    assert "lvl" not in seen["solver"].test_nets[0].outputs
    capsys.readouterr()


def test_train_finetune_and_resume(capsys, tiny, tiny_weights, monkeypatch):
    seen = _capture_solver_param(monkeypatch)
    (tiny / "solver.prototxt").write_text(TINY_SOLVER.replace("max_iter: 4", "max_iter: 0"))
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-weights", tiny_weights)
    assert rc == 0, err
    assert "Finetuning from " + tiny_weights in messages(err)
    assert list(seen["param"].weights) == [tiny_weights]
    s = seen["solver"]
    for net in [s.net] + list(s.test_nets):
        np.testing.assert_allclose(net.params["ip"][1].data, [0.05, 0.0])

    (tiny / "solver.prototxt").write_text(TINY_SOLVER)
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt")
    assert rc == 0, err
    for f in _snapshots():
        if "iter_4" in f:
            os.remove(os.path.join("snap", f))
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt",
                         "-snapshot", "snap/tiny_iter_2.solverstate")
    assert rc == 0, err
    assert "Resuming from snap/tiny_iter_2.solverstate" in messages(err)
    assert seen["solver"].iter == 4
    assert "tiny_iter_4.solverstate" in _snapshots()


def test_train_weights_list_copied_into_train_and_test_nets_in_order(clidir, capsys,
                                                                         monkeypatch):
    # CopyLayers: for each model in order, CopyTrainedLayersFrom into net() and every test net;
    # the later model wins for a layer both hold.
    seen = _capture_solver_param(monkeypatch)
    assert cli.main(["train", "-solver", "solver.prototxt",
                     "-weights", "a.caffemodel,b.caffemodel"]) == 0
    s = seen["solver"]
    for net in [s.net] + list(s.test_nets):
        np.testing.assert_array_equal(net.params["ip"][0].data, [[2, 2, 2]])
    capsys.readouterr()


def test_train_sigint_stops_and_snapshots(capsys, tiny, monkeypatch):
    if not hasattr(signal, "raise_signal"):
        pytest.skip("signal.raise_signal needs Python 3.8")
    from caffepy import solver as solver_mod
    orig = solver_mod.get_solver
    holder = {}

    def spy(param, **kw):
        s = orig(param, **kw)
        holder["solver"] = s

        def on_start():
            if s.iter == 1:
                signal.raise_signal(signal.SIGINT)
        s.add_callback(on_start, lambda: None)
        return s
    monkeypatch.setattr(solver_mod, "get_solver", spy)
    (tiny / "solver.prototxt").write_text(TINY_SOLVER.replace("snapshot: 2", "snapshot: 0")
                                          .replace("max_iter: 4", "max_iter: 10"))
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt")
    assert rc == 0, err
    assert holder["solver"].iter == 2
    assert _snapshots() == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- examples/mnist -------------------------------------------------------------------------------

def _load_example(tmp_path, name):
    """Copy examples/mnist into tmp_path/examples/mnist and import ``name`` from there (the
    scripts change to the repository root they live in)."""
    dst = tmp_path / "examples" / "mnist"
    if not dst.exists():
        shutil.copytree(os.path.join(REPO, "examples", "mnist"), dst,
                        ignore=shutil.ignore_patterns("*_lmdb", "*_leveldb", "lenet_iter_*"))
    spec = importlib.util.spec_from_file_location("ex_" + name, dst / (name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_lenet_max_iter_option(tmp_path):
    mod = _load_example(tmp_path, "train_lenet")
    assert mod._pop_max_iter(["--max_iter", "5", "-gpu", "0"]) == (5, ["-gpu", "0"])
    assert mod._pop_max_iter(["-max_iter=7"]) == (7, [])
    assert mod._pop_max_iter(["--solver=x"]) == (None, ["--solver=x"])


def test_create_mnist_example(capsys, tmp_path, monkeypatch):
    from caffepy.datasets import mnist_5k
    monkeypatch.chdir(tmp_path)
    mod = _load_example(tmp_path, "create_mnist")
    assert mod.main([]) == 0
    data = mnist_5k()
    ex = tmp_path / "examples" / "mnist"
    check_db(str(ex / "mnist_train_lmdb"), data["train_images"], data["train_labels"])
    check_db(str(ex / "mnist_test_lmdb"), data["test_images"], data["test_labels"])
    # Run again: the databases are replaced, as create_mnist.sh does.
    assert mod.main([]) == 0
    check_db(str(ex / "mnist_test_lmdb"), data["test_images"], data["test_labels"])


def test_create_mnist_prefers_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    data_dir = tmp_path / "data" / "mnist"
    data_dir.mkdir(parents=True)
    imgs = {}
    for split, (iname, lname) in cm.IDX_FILES.items():
        images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, 5, dtype=np.uint8)
        ip, lp = _write_idx(tmp_path, images, labels)
        os.replace(ip, data_dir / iname)
        os.replace(lp, data_dir / lname)
        imgs[split] = (images, labels)
    monkeypatch.chdir(tmp_path)
    os.makedirs("examples_out")
    out = cm.create_mnist("examples_out", "data/mnist", progress=False)
    for split, (images, labels) in imgs.items():
        check_db(out[split], images, labels)


@pytest.mark.slow
@pytest.mark.skipif("Convolution" not in caffepy.layer_type_list()
                    or "Pooling" not in caffepy.layer_type_list(),
                    reason="LeNet needs the Convolution and Pooling layers")
def test_train_lenet_example(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = _load_example(tmp_path, "train_lenet")
    rc = mod.main(["--max_iter", "2", "-sigint_effect", "stop"])
    err = capsys.readouterr().err
    assert rc == 0, err
    ex = tmp_path / "examples" / "mnist"
    assert (ex / "mnist_train_lmdb").is_dir() and (ex / "mnist_test_lmdb").is_dir()
    assert (ex / "lenet_iter_2.caffemodel").is_file()
    assert (ex / "lenet_iter_2.solverstate").is_file()
    assert "Optimization Done." in messages(err)
