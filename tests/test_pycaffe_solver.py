"""pycaffe's Solver API on caffepy: the scenarios of Caffe's python/caffe/test/test_solver.py
(solve to max_iter, apply_update on zeroed weights, nets outliving the solver, snapshot file
names) plus the rest of pycaffe's solver surface (step, callbacks, solver.param read live and
base_lr set between updates, lr, share_weights, restore and solve(resume_file), the solver
classes) and the module functions set_mode_gpu/set_device/set_random_seed. Every check is on
values: updates are recomputed by hand from the gradients the net produced."""
import gc
import os

import numpy as np
import pytest

import caffepy
from caffepy import backend
from caffepy.proto import caffe_pb2
from test_pycaffe_net import SIMPLE_NET

f32 = np.float32

SOLVER = """net: 'simple.prototxt'
test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9
weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 100 max_iter: 100 snapshot_after_train: false
snapshot_prefix: "model"
"""


def write(name, text):
    with open(name, "w") as f:
        f.write(text)
    return name


@pytest.fixture
def solver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("simple.prototxt", SIMPLE_NET % 13)
    write("solver.prototxt", SOLVER)
    caffepy.set_random_seed(1701)
    s = caffepy.SGDSolver("solver.prototxt")
    assert type(caffepy.get_solver("solver.prototxt")) is caffepy.SGDSolver
    labels = np.array([3, 0, 12, 7, 5], np.float32).reshape(5, 1, 1, 1)
    s.net.blobs["label"].data[...] = labels
    s.test_nets[0].blobs["label"].data[...] = labels
    return s


def inv_rate(base_lr, it, gamma=0.0001, power=0.75):
    return base_lr * (1 + gamma * it) ** -power


# -- Caffe's TestSolver ------------------------------------------------------------------

def test_solve_runs_to_max_iter_and_tests(solver):
    tests = []
    solver.add_listener(lambda e, r: tests.append(r) if e == "test" else None)
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100
    # test_initialization (default true): a test at iteration 0, then every test_interval
    assert [r["iter"] for r in tests] == list(range(0, 101, 10))
    assert all(r["scores"][0][1] == "loss" and np.isfinite(r["scores"][0][2]) for r in tests)
    assert not os.path.exists("model_iter_100.caffemodel")        # snapshot_after_train false


def test_apply_update_on_zeroed_weights_then_a_new_base_lr(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()                         # history 0: step = lr * diff
    np.testing.assert_allclose(data, np.full(data.shape, -0.01), rtol=1e-6)
    assert solver.param.base_lr == pytest.approx(0.01)
    solver.param.base_lr = 0.1                    # pycaffe: takes effect at the next update
    assert solver.param.base_lr == pytest.approx(0.1) and solver.lr == pytest.approx(0.1)
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()                         # history 0.01 * momentum 0.9 + 0.1 * 1
    np.testing.assert_allclose(data, np.full(data.shape, -0.109), rtol=1e-6)


def test_nets_outlive_the_solver(solver):
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    assert nets[0].phase == caffepy.TRAIN and nets[1].phase == caffepy.TEST
    before = [sum(float(p.data.sum()) for ps in n.params.values() for p in ps) for n in nets]
    del solver
    gc.collect()
    after = [sum(float(p.data.sum()) for ps in n.params.values() for p in ps) for n in nets]
    assert after == before and all(np.isfinite(after))
    assert float(nets[0].forward()["loss"]) > 0


def test_snapshot_files(solver):
    model, state = solver.snapshot()
    assert (model, state) == ("model_iter_0.caffemodel", "model_iter_0.solverstate")
    for fn in ("model_iter_0.caffemodel", "model_iter_0.solverstate"):
        assert os.path.isfile(fn)
    net = caffepy.Net("simple.prototxt", caffepy.TEST, weights="model_iter_0.caffemodel")
    for name, ps in solver.net.params.items():
        for i, p in enumerate(ps):
            np.testing.assert_array_equal(net.params[name][i].data, p.data)


# -- the update, recomputed ------------------------------------------------------------

def test_step_is_sgd_with_momentum_weight_decay_and_inv_rate(solver):
    """Two steps: the update recomputed from the gradients each backward produced (captured
    by on_gradients_ready), momentum 0.9, weight_decay 0.0005 times decay_mult (1 for the conv
    weights, 0 for its bias, 1 by default for ip), lr_policy inv."""
    net = solver.net
    params = [p for ps in net.params.values() for p in ps]
    decay = [1, 0, 1, 1]
    grads, starts = [], []
    solver.add_callback(lambda: starts.append(solver.iter),
                        lambda: grads.append([p.diff.astype(np.float64) for p in params]))
    w = [p.data.astype(np.float64) for p in params]
    v = [np.zeros_like(x) for x in w]
    solver.step(2)
    assert solver.iter == 2 and starts == [0, 1] and len(grads) == 2
    for it in range(2):
        rate = inv_rate(0.01, it)
        for k in range(len(w)):
            v[k] = 0.9 * v[k] + rate * (grads[it][k] + 0.0005 * decay[k] * w[k])
            w[k] = w[k] - v[k]
    for k, p in enumerate(params):
        np.testing.assert_allclose(p.data, w[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(solver.history[k], v[k], rtol=1e-4, atol=1e-8)
    assert solver.lr == pytest.approx(inv_rate(0.01, 2), rel=1e-6)


def test_callback_object_and_gradients_before_update(solver):
    seen = []

    class Watch:
        def on_start(self):
            seen.append(("start", solver.iter))

        def on_gradients_ready(self):
            seen.append(("grads", solver.iter, float(np.abs(solver.net.params["ip"][0].diff).sum())))

    solver.add_callback(Watch())
    solver.step(1)
    assert seen[0] == ("start", 0) and seen[1][:2] == ("grads", 0) and seen[1][2] > 0


# -- solver.param ------------------------------------------------------------------------

def test_param_reads_the_live_values(solver):
    p = solver.param
    assert (p.max_iter, p.display, p.test_interval, list(p.test_iter)) == (100, 100, 10, [10])
    assert p.base_lr == pytest.approx(0.01) and p.lr_policy == "inv"
    assert p.layer_wise_reduce is True and p.type == "SGD"
    for field, value in (("max_iter", 5), ("display", 1), ("momentum", 0.5)):
        with pytest.raises(AttributeError, match="only base_lr"):
            setattr(p, field, value)
    with pytest.raises(AttributeError, match="no field 'nonsense'"):
        p.nonsense = 1
    assert solver.param.max_iter == 100 and solver.param.momentum == pytest.approx(0.9)
    c = p.copy()
    # the view on the left: older protobuf releases (4.21) answer msg == view with False
    assert isinstance(c, caffe_pb2.SolverParameter) and p == c
    c.max_iter = 7
    assert solver.param.max_iter == 100
    assert "max_iter: 100" in str(p)


def test_base_lr_set_between_steps_changes_the_step(solver):
    """Zero momentum and decay so that one step is -lr * gradient, with the new base_lr."""
    s2 = caffepy.SGDSolver(_param(solver, momentum=0.0, weight_decay=0.0))
    s2.net.blobs["label"].data[...] = solver.net.blobs["label"].data
    b = s2.net.params["ip"][1]
    grads = []
    s2.add_callback(lambda: None, lambda: grads.append(b.diff.copy()))
    before = b.data.copy()
    s2.step(1)
    np.testing.assert_allclose(b.data, before - f32(0.01) * grads[0], rtol=1e-6, atol=1e-9)
    s2.param.base_lr = 0.5
    before = b.data.copy()
    s2.step(1)
    np.testing.assert_allclose(b.data, before - f32(inv_rate(0.5, 1)) * grads[1], rtol=1e-5,
                               atol=1e-8)


def _param(solver, **fields):
    p = solver.param.copy()
    for k, v in fields.items():
        setattr(p, k, v)
    return p


# -- sharing, snapshot and restore -----------------------------------------------------------

def test_share_weights_with_another_net(solver):
    other = caffepy.Net("simple.prototxt", caffepy.TEST)
    assert np.abs(other.params["ip"][0].data - solver.net.params["ip"][0].data).sum() > 0
    solver.share_weights(other)
    solver.step(3)
    for name, ps in solver.net.params.items():
        for i, p in enumerate(ps):
            np.testing.assert_array_equal(other.params[name][i].data, p.data)
            assert other.params[name][i].shares_data_with(p)


MEMORY_NET = """
name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 1 height: 2 width: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

MEMORY_SOLVER = """net: 'mem.prototxt'
base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: 'step' gamma: 0.5 stepsize: 3
max_iter: 10 snapshot: 5 snapshot_prefix: "snap/mem" display: 0 random_seed: 3
"""


def memory_solver(cls=caffepy.SGDSolver):
    s = cls("mem_solver.prototxt")
    data = np.random.default_rng(0).normal(size=(4, 1, 2, 2)).astype(np.float32)
    s.net.set_input_arrays(data, np.array([0, 1, 2, 1], np.float32))
    s._arrays = data                     # kept alive: MemoryData reads the caller's array
    return s


@pytest.mark.parametrize("cls, history_blobs", [(caffepy.SGDSolver, 1), (caffepy.AdamSolver, 2)])
def test_snapshot_restore_and_resume_give_identical_training(tmp_path, monkeypatch, cls,
                                                             history_blobs):
    monkeypatch.chdir(tmp_path)
    os.mkdir("snap")
    write("mem.prototxt", MEMORY_NET)
    write("mem_solver.prototxt", MEMORY_SOLVER)
    full = memory_solver(cls)
    assert len(full.history) == 2 * history_blobs
    full.solve()                             # snapshots at 5 and 10
    assert full.iter == 10
    assert os.path.isfile("snap/mem_iter_5.caffemodel")
    assert os.path.isfile("snap/mem_iter_5.solverstate")
    restored = memory_solver(cls)
    restored.restore("snap/mem_iter_5.solverstate")
    assert restored.iter == 5 and restored.current_step == 1
    restored.step(5)
    resumed = memory_solver(cls)
    resumed.solve("snap/mem_iter_5.solverstate")
    assert resumed.iter == 10
    for other in (restored, resumed):
        for a, b in zip(full.net.learnable_params, other.net.learnable_params):
            np.testing.assert_array_equal(a.data, b.data)
        for a, b in zip(full.history, other.history):
            np.testing.assert_array_equal(a, b)


# -- the solver classes ------------------------------------------------------------------

def test_get_solver_picks_the_class_and_sgd_solver_forces_sgd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("snap")
    write("mem.prototxt", MEMORY_NET)
    write("mem_solver.prototxt", MEMORY_SOLVER + 'type: "Adam"\n')
    assert type(caffepy.get_solver("mem_solver.prototxt")) is caffepy.AdamSolver
    forced = caffepy.SGDSolver("mem_solver.prototxt")
    assert type(forced) is caffepy.SGDSolver and len(forced.history) == 2     # ip: w and b
    for name in ("Nesterov", "AdaGrad", "RMSProp", "AdaDelta"):
        cls = getattr(caffepy, name + "Solver")
        assert issubclass(cls, caffepy.Solver) and cls.type_name == name
    with pytest.raises(caffepy.SolverError, match="does not exist"):
        caffepy.get_solver("missing_solver.prototxt")


# -- the module functions ------------------------------------------------------------------

def test_set_random_seed_repeats_fillers(tmp_path):
    text = SIMPLE_NET % 13
    caffepy.set_random_seed(5)
    a = caffepy.Net(text, caffepy.TRAIN)
    caffepy.set_random_seed(5)
    b = caffepy.Net(text, caffepy.TRAIN)
    caffepy.set_random_seed(6)
    c = caffepy.Net(text, caffepy.TRAIN)
    np.testing.assert_array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
    assert np.abs(a.params["ip"][0].data - c.params["ip"][0].data).sum() > 0
    with pytest.raises(caffepy.CaffepyError, match="integer >= 0"):
        caffepy.set_random_seed(-1)


def _cupy_missing():
    try:
        import cupy  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(not _cupy_missing(), reason="CuPy is installed")
def test_gpu_calls_without_cupy_name_the_gpu_extra():
    mode = backend.mode()
    for call in (caffepy.set_mode_gpu, lambda: caffepy.set_device(0)):
        with pytest.raises(caffepy.CaffepyError, match=r"pip install 'caffepy\[gpu\]'") as e:
            call()
        assert isinstance(e.value, caffepy.DeviceError) and isinstance(e.value, RuntimeError)
    assert backend.mode() == mode == backend.CPU
    with pytest.raises(caffepy.DeviceError, match="integer >= 0"):
        caffepy.set_device(-1)
