"""The divergence guard: a NaN/Inf loss or gradient is reported at once with the iteration
and the layer that made it; on_nan "stop" (the default) keeps a snapshot of the last finite
weights (those before the update that would have made them non-finite) and raises
DivergenceError (caffepy train: exit status 1); "snapshot" keeps the snapshot and goes on;
"continue" trains on with exactly Caffe's numbers."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffepy
from caffepy.errors import DivergenceError, SolverError
from caffepy.monitor import divergence
from caffepy.proto import caffe_pb2
from caffepy.solver import get_solver
from caffepy.solver.listeners import SolverListener

BOMB_MODULE = '''
import numpy as np
import caffe


class Bomb(caffe.Layer):
    """Passes its bottom through; param_str "forward N" puts a NaN in its top at its N-th
    forward, "backward N" an Inf in its bottom diff at its N-th backward (from 0)."""

    def setup(self, bottom, top):
        where, at = self.param_str.split()
        self.where, self.at = where, int(at)
        self.forwards = self.backwards = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        if self.where == "forward" and self.forwards == self.at:
            top[0].data[0, 0] = np.nan
        self.forwards += 1

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
        if self.where == "backward" and self.backwards == self.at:
            bottom[0].diff[1, 1] = np.inf
        self.backwards += 1
'''

NET = """
name: "bombed"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "uniform" min: -1 max: 1 }
    data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bomb" type: "Python" bottom: "h" top: "hb"
  python_param { module: "nan_bomb_layers" layer: "Bomb" param_str: "%s" } }
layer { name: "ip2" type: "InnerProduct" bottom: "hb" top: "out"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""

PLAIN_NET = """
name: "plain"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 2 }
    data_filler { type: "uniform" min: -1 max: 1 }
    data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "out"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""


@pytest.fixture(autouse=True)
def bomb_module(tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    (d / "nan_bomb_layers.py").write_text(BOMB_MODULE)
    monkeypatch.syspath_prepend(str(d))
    sys.modules.pop("nan_bomb_layers", None)
    yield str(d)
    sys.modules.pop("nan_bomb_layers", None)


def make_solver(tmp_path, bomb="forward 3", net=None, extra="", on_nan=None):
    p = caffe_pb2.SolverParameter()
    text_format.Merge("base_lr: 0.05 lr_policy: 'fixed' momentum: 0.9 display: 1 "
                      "max_iter: 6 random_seed: 7 snapshot_after_train: false " + extra, p)
    text_format.Merge(net or NET % bomb, p.net_param)
    p.snapshot_prefix = str(tmp_path / "snap")
    s = get_solver(p)
    if on_nan is not None:
        s.on_nan = on_nan
    return s


class Watch(SolverListener):
    """The weights before each update (also before one the guard stopped), the raw losses,
    the reports."""

    def __init__(self):
        self.before = {}
        self.losses = {}
        self.reports = []

    def on_gradients(self, it):
        self.before[it] = [np.array(b.data) for b in self.solver.net.learnable_params]

    def on_iteration(self, it, smoothed_loss, outputs, lr):
        self.losses[it] = self.solver.iteration_loss
        # the weights after update `it`: those before update it + 1
        self.before[it + 1] = [np.array(b.data) for b in self.solver.net.learnable_params]

    def on_divergence(self, report):
        self.reports.append(report)


def snapshot_weights(path):
    net = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        net.ParseFromString(f.read())
    return [np.array(b.data, np.float32) for layer in net.layer for b in layer.blobs]


def test_forward_nan_stops_naming_the_layer_and_keeps_the_last_finite_weights(
        tmp_path, caplog):
    s = make_solver(tmp_path)
    w = s.add_listener(Watch())
    with caplog.at_level(logging.INFO, logger="caffepy"):
        with pytest.raises(DivergenceError) as ei:
            s.solve()
    e = ei.value
    assert e.iteration == 3 and e.layer == "bomb"
    msg = str(e)
    assert "iteration 3" in msg and "the loss is nan" in msg
    assert "layer 'bomb' (Python), top data of 'hb': 1 NaN and 0 Inf of 16 values" in msg
    # said at once, in the log, before the snapshot lines
    lines = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(lines) if m.startswith("Divergence: Iteration 3:"))
    assert "layer 'bomb'" in lines[first]
    assert any("Snapshotting to" in m for m in lines[first:])
    # the snapshot: iteration 3, the weights before the update of iteration 3, all finite
    model, state = e.snapshot
    assert os.path.basename(model) == "snap_iter_3.caffemodel" and os.path.isfile(state)
    saved = snapshot_weights(model)
    assert len(saved) == 4
    for a, b in zip(saved, w.before[3]):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b.ravel())
    assert s.iter == 3
    assert [r.iteration for r in w.reports] == [3]
    # the snapshot resumes: a fresh solver restores it
    s2 = make_solver(tmp_path, bomb="forward 100")
    s2.restore(state)
    assert s2.iter == 3
    np.testing.assert_array_equal(np.asarray(s2.net.learnable_params[0].data).ravel(),
                                  saved[0])


def test_backward_inf_names_the_layer_whose_backward_made_it(tmp_path):
    s = make_solver(tmp_path, bomb="backward 2", on_nan="stop")
    with pytest.raises(DivergenceError) as ei:
        s.solve()
    e = ei.value
    # the loss is finite; ip1's param diff is Inf too, but the bomb's backward made it
    assert e.iteration == 2 and e.layer == "bomb"
    assert "the gradient's L2 norm is inf" in str(e)
    assert "the loss is" not in str(e)
    assert "layer 'bomb' (Python), bottom diff of 'h': 0 NaN and 1 Inf of 16 values" in str(e)


def test_huge_learning_rate_blows_up_and_stops_before_the_weights_do(tmp_path):
    # a reference run that goes on: the first iteration whose loss or gradient is not finite
    ref = make_solver(tmp_path / "ref", net=PLAIN_NET, extra="base_lr: 40 max_iter: 40",
                      on_nan="continue")
    (tmp_path / "ref").mkdir()
    rw = ref.add_listener(Watch())
    grads = {}
    ref.add_callback(None, lambda: grads.__setitem__(ref.iter, np.sqrt(sum(
        float(np.sum(np.asarray(b.diff, np.float64) ** 2)) for b in ref.net.learnable_params))))
    ref.solve()
    bad = [it for it in range(40) if not (np.isfinite(rw.losses[it]) and np.isfinite(grads[it]))]
    assert bad, "the reference run should diverge"
    k = bad[0]
    assert k > 0
    # the guarded run stops there
    s = make_solver(tmp_path, net=PLAIN_NET, extra="base_lr: 40 max_iter: 40")
    with pytest.raises(DivergenceError) as ei:
        s.solve()
    e = ei.value
    assert e.iteration == k and s.iter == k
    # the named layer is the first whose top is not finite (every earlier top is finite)
    net = s.net
    order = list(net.layer_names)
    named = order.index(e.layer)
    for i in range(named):
        for blob_id in net.top_id_vecs[i]:
            assert np.isfinite(np.asarray(net._blobs[blob_id].data)).all()
    assert not all(np.isfinite(np.asarray(net._blobs[b].data)).all()
                   for b in net.top_id_vecs[named])
    # the snapshot holds finite weights: the reference run's before its update k
    saved = snapshot_weights(e.snapshot[0])
    for a, b in zip(saved, rw.before[k]):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b.ravel())


def run_to_end(tmp_path, on_nan, caplog, guard=True, monkeypatch=None):
    s = make_solver(tmp_path, on_nan=on_nan)
    w = s.add_listener(Watch())
    if not guard:
        monkeypatch.setattr(caffepy.solver.solver, "handle_divergence", lambda *a: None)
    with caplog.at_level(logging.INFO, logger="caffepy"):
        s.solve()
    return s, w


def test_continue_keeps_caffes_numbers_and_says_it_once(tmp_path, caplog, monkeypatch):
    s, w = run_to_end(tmp_path, "continue", caplog)
    assert s.iter == 6
    said = [r.getMessage() for r in caplog.records if "Divergence:" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("Divergence: Iteration 3:")
    assert not list(tmp_path.glob("snap_iter_*"))
    # iterations 3.. are all nan (Caffe's behaviour), and the numbers are those of a run
    # without the guard, bit for bit
    assert all(np.isnan(w.losses[it]) for it in range(3, 6))
    caplog.clear()
    other = tmp_path / "noguard"
    other.mkdir()
    s2, w2 = run_to_end(other, "continue", caplog, guard=False, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(np.array([w.losses[i] for i in range(6)]),
                                  np.array([w2.losses[i] for i in range(6)]))
    for a, b in zip(s.net.learnable_params, s2.net.learnable_params):
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


def test_snapshot_mode_keeps_the_snapshot_and_goes_on(tmp_path, caplog):
    s, w = run_to_end(tmp_path, "snapshot", caplog)
    assert s.iter == 6
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*")) == [
        "snap_iter_3.caffemodel", "snap_iter_3.solverstate"]
    for a, b in zip(snapshot_weights(tmp_path / "snap_iter_3.caffemodel"), w.before[3]):
        np.testing.assert_array_equal(a, b.ravel())
    assert len(w.reports) == 1 and w.reports[0].snapshot is not None


def test_on_nan_is_checked():
    s = make_solver_plain()
    assert s.on_nan == "stop"
    s.on_nan = "continue"
    assert s.on_nan == "continue"
    with pytest.raises(SolverError, match="on_nan must be one of stop, snapshot, continue"):
        s.on_nan = "ignore"


def make_solver_plain():
    p = caffe_pb2.SolverParameter()
    text_format.Merge("base_lr: 0.01 lr_policy: 'fixed' max_iter: 1", p)
    text_format.Merge(PLAIN_NET, p.net_param)
    return get_solver(p)


def test_gradient_sumsq_is_the_squared_global_norm():
    s = make_solver_plain()
    s.net.forward_backward()
    expected = sum(float(np.sum(np.asarray(b.diff, np.float64) ** 2))
                   for b in s.net.learnable_params)
    assert divergence.gradient_sumsq(s.net.learnable_params) == pytest.approx(expected,
                                                                             rel=1e-6)
    assert divergence.find_non_finite(s.net) is None


def write_cli_files(tmp_path, bomb):
    net = tmp_path / "net.prototxt"
    net.write_text(NET % bomb)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s" base_lr: 0.05 lr_policy: "fixed" display: 1 max_iter: 6 '
                      'random_seed: 7 snapshot_prefix: "%s"\n' % (net, tmp_path / "snap"))
    return solver


def cli(args, mods):
    env = dict(os.environ, PYTHONPATH=mods + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "caffepy"] + args, capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_stops_with_status_1_and_continue_runs_on(tmp_path, bomb_module):
    solver = write_cli_files(tmp_path, "forward 2")
    r = cli(["train", "-solver", str(solver)], bomb_module)
    assert r.returncode == 1
    assert "Divergence: Iteration 2: the loss is nan" in r.stderr
    assert "layer 'bomb' (Python), top data of 'hb'" in r.stderr
    assert "Training diverged at iteration 2" in r.stderr
    assert (tmp_path / "snap_iter_2.caffemodel").is_file()
    assert "Optimization Done." not in r.stderr
    for f in tmp_path.glob("snap_iter_*"):
        f.unlink()
    r = cli(["train", "-solver", str(solver), "-on_nan", "continue"], bomb_module)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Divergence: Iteration 2:") == 1
    assert "Iteration 5, lr = 0.05" in r.stderr and "Optimization Done." in r.stderr
    assert not list(tmp_path.glob("snap_iter_2.*"))
    r = cli(["train", "-solver", str(solver), "-on_nan", "maybe"], bomb_module)
    assert r.returncode == 1 and 'Invalid -on_nan "maybe"' in r.stderr
