"""Data-parallel training over MPI (caffepy.distributed): Caffe's multi-solver semantics.

The mpiexec tests run 2 CPU ranks (``mpiexec -n 2``) and need the ``mpi`` extra
(``pip install 'caffepy[mpi]'``: mpi4py and an MPI such as the mpich wheel); without it they
are skipped. The record-sharing tests run in this process (solver_count/solver_rank set by
hand), with no MPI at all.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import caffepy
from caffepy import distributed
from caffepy.data.datum import array_to_datum
from caffepy.data.db import write_lmdb
from caffepy.proto import caffe_pb2

MPIEXEC = shutil.which("mpiexec") or (os.path.join(os.path.dirname(sys.executable), "mpiexec")
                                      if os.path.exists(os.path.join(
                                          os.path.dirname(sys.executable), "mpiexec")) else None)
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs the mpi extra (pip install 'caffepy[mpi]': mpi4py and mpiexec)")

N_RECORDS = 128          # 2 ranks x batch 32 = 64 records an iteration: an epoch is 2 iterations
SHAPE = (1, 4, 4)


def make_lmdb(path, n=N_RECORDS, seed=3):
    """Records keyed %05d whose label is the record's index (mod ``mod`` for training)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n,) + SHAPE, dtype=np.uint8)
    write_lmdb(path, [("%05d" % k, array_to_datum(imgs[k], k)) for k in range(n)],
               map_size=1 << 22)
    return imgs


NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "%(db)s" backend: LMDB batch_size: %(batch)d }
        transform_param { scale: 0.00390625 } }
%(extra)s
layer { name: "ip1" type: "InnerProduct" bottom: "%(ip_bottom)s" top: "ip1"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 128 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "%(net)s"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 7
max_iter: %(max_iter)d
display: 5
snapshot: %(snapshot)d
snapshot_prefix: "%(prefix)s"
random_seed: 1701
solver_mode: CPU
"""


def write_problem(d, batch, max_iter=20, snapshot=10, extra="", ip_bottom="data", name="run",
                  test=False):
    """An LMDB (shared), a net with ``batch`` per solver and its solver in ``d``/``name``."""
    db = os.path.join(d, "db")
    if not os.path.exists(db):
        make_lmdb(db)
    run = os.path.join(d, name)
    os.makedirs(run, exist_ok=True)
    net = os.path.join(run, "net.prototxt")
    with open(net, "w") as f:
        f.write(NET % dict(db=db, batch=batch, extra=extra, ip_bottom=ip_bottom))
    solver = os.path.join(run, "solver.prototxt")
    with open(solver, "w") as f:
        f.write(SOLVER % dict(net=net, max_iter=max_iter, snapshot=snapshot,
                              prefix=os.path.join(run, "snap")))
        if test:
            f.write('test_net: "%s"\ntest_iter: 2\ntest_interval: 2\n' % net)
    return run, solver


def read_weights(path):
    p = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        p.ParseFromString(f.read())
    return {(layer.name, i): np.array(b.data, np.float32)
            for layer in p.layer for i, b in enumerate(layer.blobs)}


def env(extra_path=None):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith(("PMI_", "OMPI_", "MV2_", "PMIX_")):
            del e[k]
    e["CAFFEPY_NUM_THREADS"] = "1"
    e["OMP_NUM_THREADS"] = "1"
    e["OPENBLAS_NUM_THREADS"] = "1"
    if extra_path:
        e["PYTHONPATH"] = extra_path + os.pathsep + e.get("PYTHONPATH", "")
    return e


def caffepy_cmd():
    return [sys.executable, "-m", "caffepy"]


def launcher(n):
    """mpiexec -n N (Open MPI's also --oversubscribe: the tests run more ranks than cores)."""
    cmd = [MPIEXEC, "-n", str(n)]
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")
    return cmd


def run_mpi(n, args, timeout=120, extra_path=None):
    cmd = launcher(n) + caffepy_cmd() + args
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=env(extra_path))
    return r, time.monotonic() - t0


def run_plain(args, timeout=120):
    return subprocess.run(caffepy_cmd() + args, capture_output=True, text=True,
                          timeout=timeout, env=env())


# -- launcher detection and the pycaffe names (no MPI needed) ---------------------------------

def test_launched_world_reads_the_launchers_variables():
    assert distributed.launched_world({}) is None
    assert distributed.launched_world({"PMI_RANK": "1", "PMI_SIZE": "4"}) == (1, 4)
    assert distributed.launched_world({"OMPI_COMM_WORLD_RANK": "2",
                                       "OMPI_COMM_WORLD_SIZE": "3"}) == (2, 3)
    assert distributed.launched_world({"MV2_COMM_WORLD_RANK": "0",
                                       "MV2_COMM_WORLD_SIZE": "2"}) == (0, 2)
    # a size without a rank, or a rank outside the world, is no launcher
    assert distributed.launched_world({"PMI_SIZE": "2"}) is None
    assert distributed.launched_world({"PMI_RANK": "2", "PMI_SIZE": "2"}) is None


def test_plain_run_imports_no_mpi4py():
    code = ("import sys, caffepy, caffe, caffepy.cli, caffepy.distributed; "
            "from caffepy.cli import run; "
            "print('mpi4py' in sys.modules, caffe.solver_count(), caffe.solver_rank(), "
            "caffe.has_nccl())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "1", "0", "False"]


# -- round-robin records (Caffe's DataLayer / HDF5DataLayer Skip) -----------------------------

def _labels_read(net, batches):
    out = []
    for _ in range(batches):
        net.forward()
        out.append(net.blobs["label"].data.ravel().astype(int).tolist())
    return out


@pytest.fixture
def as_solver():
    """Pretend to be solver ``rank`` of ``count`` (what mpiexec sets), restored afterwards."""
    def set_(count, rank):
        distributed.set_solver_count(count)
        distributed.set_solver_rank(rank)
    yield set_
    distributed.set_solver_count(1)
    distributed.set_solver_rank(0)


DATA_ONLY = """
layer { name: "data" type: "%(type)s" top: "data" top: "label" %(param)s }
"""


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_data_layer_reads_every_nth_record(tmp_path, as_solver, rank):
    # 7 records, 3 solvers, batch 2: offsets keep counting through the wrap (7 is not a
    # multiple of 3), as Caffe's DataLayer offset_ does
    db = str(tmp_path / "db")
    make_lmdb(db, n=7)
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(DATA_ONLY % dict(type="Data", param='data_param { source: "%s" '
                                         'backend: LMDB batch_size: 2 }' % db))
    as_solver(3, rank)
    train = caffepy.Net(str(net_file), caffepy.TRAIN)
    expected = [k % 7 for k in range(rank, 36, 3)][:8]
    assert sum(_labels_read(train, 4), []) == expected
    train.close() if hasattr(train, "close") else None
    # a TEST net reads every record
    test = caffepy.Net(str(net_file), caffepy.TEST)
    assert sum(_labels_read(test, 2), []) == [0, 1, 2, 3]


def test_data_layer_two_ranks_partition_a_batch_of_the_single_solver(tmp_path, as_solver):
    db = str(tmp_path / "db")
    make_lmdb(db, n=10)
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(DATA_ONLY % dict(type="Data", param='data_param { source: "%s" '
                                         'backend: LMDB batch_size: 2 }' % db))
    got = {}
    for rank in (0, 1):
        as_solver(2, rank)
        got[rank] = _labels_read(caffepy.Net(str(net_file), caffepy.TRAIN), 3)
    assert got[0] == [[0, 2], [4, 6], [8, 0]]
    assert got[1] == [[1, 3], [5, 7], [9, 1]]


@pytest.mark.parametrize("in_memory", [True, False])
def test_hdf5_data_reads_every_nth_row_across_files(tmp_path, as_solver, monkeypatch, in_memory):
    import h5py
    from caffepy.data import hdf5 as hdf5_mod
    if not in_memory:
        monkeypatch.setattr(hdf5_mod, "WHOLE_FILE_BYTES", 0)   # rows read from the file
    names = []
    start = 0
    for i, rows in enumerate((5, 4)):       # offsets run on over the file boundary
        fn = str(tmp_path / ("f%d.h5" % i))
        with h5py.File(fn, "w") as f:
            f["data"] = np.arange(start, start + rows, dtype=np.float32).reshape(rows, 1)
            f["label"] = np.arange(start, start + rows, dtype=np.float32)
        names.append(fn)
        start += rows
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n")
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(DATA_ONLY % dict(type="HDF5Data", param='hdf5_data_param { source: '
                                         '"%s" batch_size: 3 }' % lst))
    for rank in (0, 1):
        as_solver(2, rank)
        net = caffepy.Net(str(net_file), caffepy.TRAIN)
        got = sum(_labels_read(net, 4), [])
        # 9 rows in all: the pass wraps after offset 8, offsets keep counting
        assert got == [k % 9 for k in range(rank, 24 + rank, 2)][:12]
        assert net.blobs["data"].data.ravel().astype(int).tolist() == got[-3:]


# -- 2 ranks under mpiexec ------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_batch_32_equal_one_process_batch_64_and_resume(tmp_path):
    one, s1 = write_problem(str(tmp_path), batch=64, name="one")
    two, s2 = write_problem(str(tmp_path), batch=32, name="two")
    res, s3 = write_problem(str(tmp_path), batch=32, name="resume")
    r = run_plain(["train", "-solver", s1])
    assert r.returncode == 0, r.stderr[-3000:]
    r2, _ = run_mpi(2, ["train", "-solver", s2])
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    w1 = read_weights(os.path.join(one, "snap_iter_20.caffemodel"))
    w2 = read_weights(os.path.join(two, "snap_iter_20.caffemodel"))
    w0 = read_weights(os.path.join(two, "snap_iter_10.caffemodel"))
    assert sorted(w1) == sorted(w2) == [("ip1", 0), ("ip1", 1), ("ip2", 0), ("ip2", 1)]
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-3, atol=1e-5 * np.abs(w1[k]).max())
        assert not np.allclose(w0[k], w2[k])       # it trained between the snapshots
    # one set of snapshots, written by rank 0: its log has each file once
    log = r2.stderr
    for it in (10, 20):
        assert log.count("Snapshotting to binary proto file %s"
                         % os.path.join(two, "snap_iter_%d.caffemodel" % it)) == 1
    assert sorted(os.listdir(two)) == sorted(
        ["net.prototxt", "solver.prototxt", "snap_iter_10.caffemodel",
         "snap_iter_10.solverstate", "snap_iter_20.caffemodel", "snap_iter_20.solverstate"])
    # display lines from rank 0 only: iterations 0, 5, 10, 15 once each
    for it in (0, 5, 10, 15):
        assert log.count("Iteration %d (" % it) == 1, log[-3000:]
    # resume with 2 ranks from the iteration-10 snapshot: the same weights as the run that
    # went through (epochs are 2 iterations, so the data lines up)
    r3, _ = run_mpi(2, ["train", "-solver", s3, "-snapshot",
                        os.path.join(two, "snap_iter_10.solverstate")])
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "Resuming from" in r3.stderr
    w3 = read_weights(os.path.join(res, "snap_iter_20.caffemodel"))
    assert not os.path.exists(os.path.join(res, "snap_iter_10.caffemodel"))
    for k in w2:
        np.testing.assert_allclose(w3[k], w2[k], rtol=1e-6, atol=1e-7)


@needs_mpi
def test_three_ranks_batch_16_equal_one_process_batch_48(tmp_path):
    # 48 records an iteration, 128 in the database: the ranks' shares wrap mid-iteration
    one, s1 = write_problem(str(tmp_path), batch=48, max_iter=10, snapshot=0, name="one")
    three, s3 = write_problem(str(tmp_path), batch=16, max_iter=10, snapshot=0, name="three")
    r = run_plain(["train", "-solver", s1])
    assert r.returncode == 0, r.stderr[-3000:]
    r3, _ = run_mpi(3, ["train", "-solver", s3])
    assert r3.returncode == 0, r3.stderr[-3000:]
    w1 = read_weights(os.path.join(one, "snap_iter_10.caffemodel"))
    w3 = read_weights(os.path.join(three, "snap_iter_10.caffemodel"))
    for k in w1:
        np.testing.assert_allclose(w3[k], w1[k], rtol=1e-3, atol=1e-5 * np.abs(w1[k]).max())


DRIVER = r"""
import json, sys
import caffe, caffepy
from caffepy.distributed.mpi import start
world = start()
solver = caffepy.get_solver(sys.argv[1])
labels = []
events = []
solver.add_callback(lambda: None, lambda: labels.append(
    solver.net.blobs["label"].data.ravel().astype(int).tolist()))
solver.add_listener(lambda ev, rec: events.append(ev))
sync = world.train(solver)
w = solver.net.params["ip1"][0].data
print("RESULT " + json.dumps({
    "rank": world.rank, "count": caffe.solver_count(), "rank_caffe": caffe.solver_rank(),
    "nccl": caffe.has_nccl(), "labels": labels, "snapshots": events.count("snapshot"),
    "train_events": events.count("train"), "test_events": events.count("test"),
    "test_nets": len(solver.test_nets),
    "iter": solver.iter, "wsum": float(w.sum()), "allreduce_calls": sync.allreduce_calls,
    "bytes": sync.bytes_per_iteration}), flush=True)
"""


@needs_mpi
def test_ranks_read_round_robin_records_and_only_rank_0_snapshots(tmp_path):
    run, solver = write_problem(str(tmp_path), batch=32, max_iter=3, snapshot=2, test=True)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    r = subprocess.run(launcher(2) + [sys.executable, str(script), solver],
                       capture_output=True, text=True, timeout=120, env=env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = sorted((json.loads(line[7:]) for line in r.stdout.splitlines()
                  if line.startswith("RESULT ")), key=lambda d: d["rank"])
    assert [d["rank"] for d in res] == [0, 1]
    for rank, d in enumerate(res):
        assert (d["count"], d["rank_caffe"], d["nccl"]) == (2, rank, False)
        # batch 32 per rank; 128 records: rank r keeps records r, r+2, ... (labels = indices)
        assert d["labels"] == [list(range(rank, 64, 2)), list(range(64 + rank, 128, 2)),
                               list(range(rank, 64, 2))]
        assert d["iter"] == 3 and d["allreduce_calls"] == 3
        assert d["bytes"] == 4 * (16 * 8 + 8 + 8 * 128 + 128 + 1)
    # snapshots (iteration 2 and the final 3), display lines and test nets: rank 0 only
    assert (res[0]["snapshots"], res[1]["snapshots"]) == (2, 0)
    assert (res[0]["train_events"], res[1]["train_events"]) == (1, 0)
    # test passes at iterations 0 and 2 (test_interval 2), and none at the final 3
    assert (res[0]["test_nets"], res[1]["test_nets"]) == (1, 0)
    assert (res[0]["test_events"], res[1]["test_events"]) == (2, 0)
    # identical weights on both ranks
    assert res[0]["wsum"] == res[1]["wsum"]


FAILING_LAYER = """
import caffe


class FailOnRank1(caffe.Layer):
    def setup(self, bottom, top):
        self.calls = 0
        if caffe.solver_rank() == 1 and self.param_str == "setup":
            raise IOError("cannot open this rank's list")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        if caffe.solver_rank() == 1 and self.calls == 4:
            raise ValueError("bad record on this rank (forward %d)" % self.calls)
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
"""


@needs_mpi
@pytest.mark.parametrize("when, message", [
    ("forward", "bad record on this rank (forward 4)"),
    ("setup", "cannot open this rank's list")])
def test_a_failing_rank_ends_the_job_with_a_clear_error(tmp_path, when, message):
    (tmp_path / "faillayer.py").write_text(FAILING_LAYER)
    extra = ('layer { name: "check" type: "Python" bottom: "data" top: "checked" '
             'python_param { module: "faillayer" layer: "FailOnRank1" param_str: "%s" } }'
             % when)
    run, solver = write_problem(str(tmp_path), batch=32, max_iter=50, snapshot=0, extra=extra,
                                ip_bottom="checked")
    r, elapsed = run_mpi(2, ["train", "-solver", solver], timeout=60,
                         extra_path=str(tmp_path))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "rank 1 of 2 failed" in out, out[-3000:]
    assert message in out
    assert "ending the MPI job" in out
    assert elapsed < 30, elapsed


@needs_mpi
def test_sigint_on_rank_0_stops_every_rank_with_a_snapshot(tmp_path):
    run, solver = write_problem(str(tmp_path), batch=32, max_iter=100000, snapshot=0)
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, signal, sys, caffepy\n"
        "from caffepy.distributed.mpi import start\n"
        "world = start()\n"
        "s = caffepy.get_solver(sys.argv[1], sigint_effect='stop')\n"
        "if world.rank == 0:\n"
        "    s.add_callback(lambda: s.iter == 7 and os.kill(os.getpid(), signal.SIGINT),"
        " None)\n"
        "world.train(s)\n"
        "print('RESULT', world.rank, s.iter, s.requested_early_exit, flush=True)\n")
    r = subprocess.run(launcher(2) + [sys.executable, str(script), solver],
                       capture_output=True, text=True, timeout=60, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = sorted(line.split()[1:] for line in r.stdout.splitlines()
                 if line.startswith("RESULT"))
    # the signal came during iteration 7; both ranks stop after it (8 updates), together
    assert res == [["0", "8", "True"], ["1", "8", "True"]]
    assert sorted(f for f in os.listdir(run) if f.startswith("snap")) == [
        "snap_iter_8.caffemodel", "snap_iter_8.solverstate"]     # snapshot_after_train


@needs_mpi
def test_ctrl_c_on_mpiexec_stops_the_job_after_a_snapshot(tmp_path):
    run, solver = write_problem(str(tmp_path), batch=32, max_iter=10 ** 6, snapshot=0)
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        p = subprocess.Popen(launcher(2) + caffepy_cmd() + ["train", "-solver", solver],
                             stdout=log, stderr=subprocess.STDOUT, env=env())
        try:
            deadline = time.monotonic() + 60
            while "Iteration 5 (" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            p.send_signal(signal.SIGINT)
            assert p.wait(timeout=30) == 0
        finally:
            if p.poll() is None:
                p.kill()
    text = log_path.read_text()
    assert "Optimization stopped early." in text
    snaps = sorted(f for f in os.listdir(run) if f.endswith(".caffemodel"))
    assert len(snaps) == 1 and snaps[0].startswith("snap_iter_")
    it = int(snaps[0][len("snap_iter_"):-len(".caffemodel")])
    assert it >= 5 and os.path.exists(os.path.join(run, "snap_iter_%d.solverstate" % it))


def test_launched_with_several_processes_but_no_mpi4py_is_a_clear_error(tmp_path):
    run, solver = write_problem(str(tmp_path), batch=4, max_iter=1, snapshot=0)
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from caffepy.cli import run\n"
            "sys.exit(run(['train', '-solver', %r]))\n" % solver)
    e = env()
    e.update(PMI_RANK="0", PMI_SIZE="2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                       timeout=60)
    assert r.returncode == 1
    assert "mpi4py cannot be imported" in r.stderr
    assert "pip install 'caffepy[mpi]'" in r.stderr
    assert not os.path.exists(os.path.join(run, "snap_iter_1.caffemodel"))


# -- the benchmark's accounting -------------------------------------------------------------

def test_bench_mpi_gradient_bytes_and_ring_model():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "benchmarks"))
    import bench_mpi
    import bench_nets
    for net in ("lenet", "cifar10_quick"):
        s = bench_nets.caffepy_solver(net, batch=2)
        assert sum(p.count for p in s.net.learnable_params) == bench_mpi.PARAMS[net]
    # LeNet: conv1 520, conv2 25,050, ip1 400,500, ip2 5,010
    assert bench_mpi.PARAMS["lenet"] == 520 + 25050 + 400500 + 5010
    # ring: 2 (N-1)/N of the bytes over the link, 2 (N-1) latencies
    assert bench_mpi.ring_allreduce_seconds(1e9, 2, 1e9, 0.0) == pytest.approx(1.0)
    assert bench_mpi.ring_allreduce_seconds(1e9, 4, 1e9, 1e-3) == pytest.approx(1.5 + 0.006)
