"""TensorBoard event files of a training run, read back: every scalar at the right
iterations with the solver's own values (losses bit for bit, as float32), the learning rate
the lr policy gives, gradient and weight norms against NumPy, test scores, SSL sparsity; the
listener API (on_start ... on_end) and the CLI flag."""
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from google.protobuf import text_format

from caffepy.proto import caffe_pb2
from caffepy.solver import get_solver
from caffepy.solver.listeners import SolverListener

tensorboardX = pytest.importorskip("tensorboardX")

from caffepy.monitor.tensorboard import (TensorBoardListener, output_tags,  # noqa: E402
                                         read_scalars)

f32 = np.float32

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "uniform" min: -1 max: 1 }
    data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "sumsq" type: "Reduction" bottom: "ip" top: "sumsq"
  reduction_param { operation: SUMSQ } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""

SOLVER = """
test_iter: 2 test_interval: 3 base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 2
momentum: 0.9 display: 2 average_loss: 3 max_iter: 6 random_seed: 1
"""


def solver_param(tmp_path, extra=""):
    p = caffe_pb2.SolverParameter()
    text_format.Merge(SOLVER + extra, p)
    text_format.Merge(NET, p.net_param)
    p.snapshot_prefix = str(tmp_path / "snap")
    return p


class Recorder(SolverListener):
    """What the solver hands its listeners, plus NumPy's own norms of the gradient."""

    def __init__(self):
        self.calls = []
        self.iterations = {}
        self.grad_norm = {}
        self.param_norms = {}

    def on_start(self, solver):
        self.calls.append("start")

    def on_gradients(self, it):
        net = self.solver.net
        diffs = [np.asarray(b.diff, np.float64).ravel() for b in net.learnable_params]
        self.grad_norm[it] = math.sqrt(sum(float(d @ d) for d in diffs))
        self.param_norms[it] = [
            (np.linalg.norm(np.asarray(b.data, np.float64)),
             np.linalg.norm(np.asarray(b.diff, np.float64))) for b in net.learnable_params]

    def on_iteration(self, it, smoothed_loss, outputs, lr):
        self.iterations[it] = (smoothed_loss, self.solver.iteration_loss, outputs, lr)

    def on_test(self, it, test_net_id, scores):
        self.calls.append(("test", it, test_net_id))

    def on_snapshot(self, it, model, state):
        self.calls.append(("snapshot", it, os.path.basename(model)))

    def on_end(self, solver):
        self.calls.append("end")


def train(tmp_path, extra=""):
    solver = get_solver(solver_param(tmp_path, extra))
    rec = solver.add_listener(Recorder())
    events = []
    solver.add_listener(lambda ev, r: events.append((ev, r)))
    tb = solver.add_listener(TensorBoardListener(tmp_path / "tb"))
    solver.solve()
    return solver, rec, events, tb, read_scalars(tmp_path / "tb")


def steps(scalars, tag):
    return [s for s, _ in scalars[tag]]


def values(scalars, tag):
    return dict(scalars[tag])


def test_losses_lr_outputs_and_norms_read_back(tmp_path):
    solver, rec, events, tb, sc = train(tmp_path)
    assert solver.iter == 6
    # every iteration 0..5: the smoothed and raw loss, bit for bit the solver's float32s
    assert steps(sc, "loss/smoothed") == list(range(6))
    assert steps(sc, "loss/raw") == list(range(6))
    raw = values(sc, "loss/raw")
    smoothed = values(sc, "loss/smoothed")
    for it, (sm, loss, outputs, lr) in rec.iterations.items():
        assert raw[it] == f32(loss) and smoothed[it] == f32(sm)
    # the smoothed loss is Caffe's average_loss (3) window over the raw ones
    window = []
    for it in range(6):
        window = (window + [f32(raw[it])])[-3:]
        assert smoothed[it] == pytest.approx(float(np.mean(np.float64(window))), rel=1e-6)
    # the display lines (the "train" records) show the same numbers
    shown = {r["iter"]: r for ev, r in events if ev == "train"}
    assert sorted(shown) == [0, 2, 4]
    for it, r in shown.items():
        assert smoothed[it] == f32(r["loss"])
        shown_outputs = {name: v for _, name, v, _ in r["outputs"]}
        assert values(sc, "train/loss")[it] == f32(shown_outputs["loss"])
        assert values(sc, "train/sumsq")[it] == f32(shown_outputs["sumsq"])
    # the raw loss is the EuclideanLoss output itself
    for it in range(6):
        assert values(sc, "train/loss")[it] == raw[it]
    # lr: "step" policy, base_lr 0.1, gamma 0.5, stepsize 2
    assert values(sc, "lr") == {it: pytest.approx(0.1 * 0.5 ** (it // 2), rel=1e-7)
                                for it in range(6)}
    # the global gradient norm every iteration, the per-param norms every display (2)
    assert steps(sc, "grad/global_norm") == list(range(6))
    for it, g in values(sc, "grad/global_norm").items():
        assert g == pytest.approx(rec.grad_norm[it], rel=1e-5)
    for tag_i, tag in enumerate(["ip/0", "ip/1"]):
        assert steps(sc, "weight_norm/" + tag) == [0, 2, 4]
        for it, v in values(sc, "weight_norm/" + tag).items():
            assert v == pytest.approx(rec.param_norms[it][tag_i][0], rel=1e-5)
        for it, v in values(sc, "grad_norm/" + tag).items():
            assert v == pytest.approx(rec.param_norms[it][tag_i][1], rel=1e-5)
    # iterations/s every display, a positive rate
    assert steps(sc, "speed/iter_per_s") == [0, 2, 4]
    assert all(v > 0 for v in values(sc, "speed/iter_per_s").values())
    # solve()'s last loss line (iteration 6, display 2)
    final = [r for ev, r in events if ev == "final_loss"][0]
    assert values(sc, "loss/final") == {6: f32(final["loss"])}


def test_test_scores_per_test_net(tmp_path):
    solver, rec, events, tb, sc = train(tmp_path, "test_compute_loss: true")
    tests = [r for ev, r in events if ev == "test"]
    assert [r["iter"] for r in tests] == [0, 3, 6]
    for name in ("sumsq", "loss"):
        tag = "test0/" + name
        assert steps(sc, tag) == [0, 3, 6]
        for r in tests:
            score = {n: v for _, n, v, _ in r["scores"]}[name]
            assert values(sc, tag)[r["iter"]] == f32(score)
    for r in tests:
        # test_compute_loss ("Test loss"): the mean loss over test_iter; here the loss
        # output's mean too
        assert values(sc, "test_loss/0")[r["iter"]] == f32(r["loss"])
        assert values(sc, "test_loss/0")[r["iter"]] == pytest.approx(
            values(sc, "test0/loss")[r["iter"]], rel=1e-6)
    assert [c for c in rec.calls if c[0] == "test"] == [("test", 0, 0), ("test", 3, 0),
                                                         ("test", 6, 0)]


def test_listener_lifecycle_and_snapshot_hook(tmp_path):
    solver, rec, events, tb, sc = train(tmp_path, "snapshot: 3")
    assert rec.calls[0] == "start" and rec.calls[-1] == "end"
    snaps = [c for c in rec.calls if c[0] == "snapshot"]
    assert snaps == [("snapshot", 3, "snap_iter_3.caffemodel"),
                     ("snapshot", 6, "snap_iter_6.caffemodel")]
    assert tb.writer is None            # on_end closed it
    # outputs handed to on_iteration: (index, name, value, loss weight), as the display
    _, _, outputs, _ = rec.iterations[0]
    # (Caffe's net outputs come in blob-name order)
    assert [(i, n, w) for i, n, _, w in outputs] == [(0, "loss", 1.0), (1, "sumsq", 0.0)]


def test_step_without_solve_and_remove_listener_ends_it(tmp_path):
    solver = get_solver(solver_param(tmp_path))
    rec = solver.add_listener(Recorder())
    tb = solver.add_listener(TensorBoardListener(tmp_path / "tb"))
    solver.step(2)
    solver.step(1)
    assert rec.calls.count("start") == 1 and sorted(rec.iterations) == [0, 1, 2]
    solver.remove_listener(tb)
    solver.remove_listener(rec)
    assert rec.calls[-1] == "end" and tb.writer is None
    solver.step(1)                      # nothing registered any more
    assert sorted(rec.iterations) == [0, 1, 2]
    assert steps(read_scalars(tmp_path / "tb"), "loss/raw") == [0, 1, 2]


def test_sparsity_figures_when_the_solver_computes_them(tmp_path):
    solver, rec, events, tb, sc = train(tmp_path, "display_sparsity: true")
    stats = {r["iter"]: r["stats"] for ev, r in events if ev == "sparsity"}
    assert sorted(stats) == [0, 2, 4]
    for it, st in stats.items():
        for tag, s in zip(["ip/0", "ip/1"], st):
            assert values(sc, "sparsity/%s/element" % tag)[it] == f32(s.element)
            assert values(sc, "sparsity/%s/column" % tag)[it] == f32(s.column)
            assert values(sc, "sparsity/%s/row" % tag)[it] == f32(s.row)
    totals = {r["iter"]: r["total"] for ev, r in events if ev == "regularization"}
    assert values(sc, "regularization/total") == {k: f32(v) for k, v in totals.items()}
    # no sparsity figures when the solver does not compute them
    plain = read_scalars_of_plain_run(tmp_path / "plain")
    assert not [t for t in plain if t.startswith(("sparsity/", "regularization/"))]


def read_scalars_of_plain_run(path):
    path.mkdir()
    train(path)
    return read_scalars(path / "tb")


def test_output_tags():
    outs = [(0, "loss", 1.0, 1.0), (1, "prob", 0.2, 0.0), (2, "prob", 0.8, 0.0)]
    assert output_tags("train", outs) == ["train/loss", "train/prob/0", "train/prob/1"]


def test_cli_flag_writes_the_logged_losses(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER + 'net: "%s"\nsnapshot_prefix: "%s"\n'
                      % (net, tmp_path / "snap"))
    tb = tmp_path / "tb"
    r = subprocess.run([sys.executable, "-m", "caffepy", "train", "-solver", str(solver),
                        "-tensorboard", str(tb)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    logged = {int(m.group(1)): float(m.group(2)) for m in re.finditer(
        r"Iteration (\d+) \([^)]*\), loss = (\S+)", r.stderr)}
    assert sorted(logged) == [0, 2, 4]
    sc = read_scalars(tb)
    for it, loss in logged.items():
        assert values(sc, "loss/smoothed")[it] == pytest.approx(loss, rel=1e-5)
    tests = [(int(m.group(1))) for m in re.finditer(r"Iteration (\d+), Testing net", r.stderr)]
    assert steps(sc, "test0/loss") == tests == [0, 3, 6]
    # the log itself is Caffe's: no progress line on a pipe
    assert "ETA" not in r.stderr and "\r" not in r.stderr


def test_no_listener_no_work_and_only_overridden_hooks_run(tmp_path, monkeypatch):
    from caffepy.solver.solver import Solver

    def boom(*args):
        raise AssertionError("called without a listener")
    monkeypatch.setattr(Solver, "_notify_iteration", boom)
    solver = get_solver(solver_param(tmp_path))
    solver.step(2)                      # no listener: on_iteration's outputs are never built
    assert solver.iter == 2
    monkeypatch.undo()

    class OnlyIterations(SolverListener):
        def __init__(self):
            self.seen = []

        def on_iteration(self, it, smoothed_loss, outputs, lr):
            self.seen.append(it)
    only = solver.add_listener(OnlyIterations())
    monitors = solver._monitors
    assert monitors.iteration == [only.on_iteration]
    assert monitors.gradients == [] and monitors.test_iteration == [] and monitors.divergence == []
    solver.step(2)
    assert only.seen == [2, 3]
    assert solver.listeners == [only]


def test_without_tensorboardx_the_error_says_what_to_install(tmp_path, monkeypatch):
    from caffepy.errors import CaffepyError
    monkeypatch.setitem(sys.modules, "tensorboardX", None)     # import fails
    with pytest.raises(CaffepyError,
                       match=r"pip install tensorboardX \(or caffepy\[tensorboard\]\)"):
        TensorBoardListener(tmp_path / "tb")
