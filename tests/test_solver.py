"""Unit tests of the training loop: lr policies, update rules (against hand-computed
float64 references), weight decay, clipping, iter_size, smoothed loss, test nets,
snapshots (binary / HDF5, atomic), restore, signals, callbacks, regularizer plug-ins and
the bad-input errors.

The nets use two small layers defined here (so these tests need no other layer):
``SolverTestQuad`` — a param blob ``w`` and the loss 0.5·Σ(w − t_k)², where the targets
t_k cycle through a list (a cursor, like a data layer's) — and nothing else.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import caffepy
from caffepy import fillers
from caffepy.layer import Layer, register_layer
from caffepy.lr_policies import SolverError, get_learning_rate
from caffepy.proto import caffe_pb2
from caffepy.proto import blobproto_to_array, read_binary
from caffepy.regularizers import Regularizer, register_regularizer
from caffepy.solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                            RMSPropSolver, SGDSolver, Solver, get_solver)

HERE = os.path.dirname(os.path.abspath(__file__))


@register_layer("SolverTestQuad")
class SolverTestQuad(Layer):
    """loss = 0.5 * sum((w - t_k)^2); param_str JSON: shape, init (or gaussian filler),
    targets (cycled, one per forward)."""
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        cfg = json.loads(self.layer_param.python_param.param_str or "{}")
        shape = cfg.get("shape", [3])
        self.targets = []
        for t in cfg.get("targets", [0]):
            t = np.asarray(t, np.float32)
            self.targets.append(np.full(shape, t.ravel()[0], np.float32) if t.size == 1
                                else t.reshape(shape))
        self.cursor = 0
        if not len(self.blobs):
            b = self.blobs.add_blob(*shape)
            if "init" in cfg:
                b.data[...] = np.asarray(cfg["init"], np.float32).reshape(shape)
            else:
                fp = caffe_pb2.FillerParameter(type="gaussian", std=1.0)
                fillers.fill(fp, b)

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward_impl(self, bottom, top):
        self.t = self.targets[self.cursor % len(self.targets)]
        self.cursor += 1
        d = self.blobs[0].data - self.t
        top[0].data[...] = np.float32(0.5) * np.sum(d * d, dtype=np.float32)

    def backward_impl(self, top, propagate_down, bottom):
        if self.param_propagate(0):
            self.blobs[0].diff[...] += (self.blobs[0].data - self.t) * top[0].diff


W0 = [0.5, -1.0, 2.0]
W1 = [1.5, 0.25]
TARGETS0 = [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-0.5, 0.5, 3.0]]
TARGETS1 = [[1.0, 1.0], [0.0, -1.0], [2.0, 0.5]]


def quad_layer(name, init, targets, lr_mult=None, decay_mult=None, loss_weight=None,
               phase=None, shape=None):
    cfg = {"shape": shape or [len(init)], "targets": targets}
    if init is not None:
        cfg["init"] = init
    s = 'layer { name: "%s" type: "SolverTestQuad" top: "%s" ' % (name, name + "_loss")
    s += "python_param { param_str: '%s' } " % json.dumps(cfg)
    if lr_mult is not None or decay_mult is not None:
        s += "param { "
        if lr_mult is not None:
            s += "lr_mult: %g " % lr_mult
        if decay_mult is not None:
            s += "decay_mult: %g " % decay_mult
        s += "} "
    if loss_weight is not None:
        s += "loss_weight: %g " % loss_weight
    if phase is not None:
        s += "include { phase: %s } " % phase
    return s + "}\n"


def default_net(lr1=None, decay1=None):
    return ('name: "quadnet"\n' + quad_layer("q0", W0, TARGETS0)
            + quad_layer("q1", W1, TARGETS1, lr_mult=lr1, decay_mult=decay1))


def make_solver(tmp_path, monkeypatch, solver_text, net_text=None, cls=None, **kw):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(net_text if net_text is not None else default_net())
    # a field given twice is a parse error: the default prefix only where the text has none
    prefix = "" if "snapshot_prefix" in solver_text else 'snapshot_prefix: "snap"\n'
    text = 'net: "net.prototxt"\n' + prefix + solver_text
    (tmp_path / "solver.prototxt").write_text(text)
    if cls is not None:
        return cls("solver.prototxt", **kw)
    return get_solver("solver.prototxt", **kw)


def weights(solver):
    return [b.data.copy() for b in solver.net.learnable_params]


# -- hand-computed float64 references ----------------------------------------------------

def reference_run(n_iter, rule, base_lr=0.1, momentum=0.0, momentum2=0.999, delta=1e-8,
                  rms_decay=0.99, weight_decay=0.0, reg="L2", lr_mults=(1, 1),
                  decay_mults=(1, 1), clip=-1, iter_size=1, lr_fn=None):
    ws = [np.array(W0, np.float64), np.array(W1, np.float64)]
    tg = [np.array(TARGETS0, np.float64), np.array(TARGETS1, np.float64)]
    h = [np.zeros_like(w) for w in ws]
    h2 = [np.zeros_like(w) for w in ws]
    cursor = 0
    losses = []
    for it in range(n_iter):
        g = [np.zeros_like(w) for w in ws]
        loss = 0.0
        for _ in range(iter_size):
            for k in range(2):
                d = ws[k] - tg[k][cursor % 3]
                loss += 0.5 * np.sum(d * d)
                g[k] += d
            cursor += 1
        losses.append(loss / iter_size)
        rate = lr_fn(it) if lr_fn else base_lr
        if clip >= 0:
            norm = np.sqrt(sum(np.sum(x * x) for x in g))
            if norm > clip:
                g = [x * clip / norm for x in g]
        for k in range(2):
            gk = g[k] / iter_size
            ld = weight_decay * decay_mults[k]
            if ld:
                gk = gk + ld * (ws[k] if reg == "L2" else np.sign(ws[k]))
            lr = rate * lr_mults[k]
            if rule == "SGD":
                h[k] = momentum * h[k] + lr * gk
                upd = h[k]
            elif rule == "Nesterov":
                old = h[k].copy()
                h[k] = momentum * h[k] + lr * gk
                upd = (1 + momentum) * h[k] - momentum * old
            elif rule == "AdaGrad":
                h[k] = h[k] + gk * gk
                upd = lr * gk / (np.sqrt(h[k]) + delta)
            elif rule == "RMSProp":
                h[k] = rms_decay * h[k] + (1 - rms_decay) * gk * gk
                upd = lr * gk / (np.sqrt(h[k]) + delta)
            elif rule == "AdaDelta":
                h[k] = momentum * h[k] + (1 - momentum) * gk * gk
                u = gk * np.sqrt((h2[k] + delta) / (h[k] + delta))
                h2[k] = momentum * h2[k] + (1 - momentum) * u * u
                upd = lr * u
            elif rule == "Adam":
                t = it + 1
                h[k] = momentum * h[k] + (1 - momentum) * gk
                h2[k] = momentum2 * h2[k] + (1 - momentum2) * gk * gk
                corr = np.sqrt(1 - momentum2 ** t) / (1 - momentum ** t)
                upd = lr * corr * h[k] / (np.sqrt(h2[k]) + delta)
            ws[k] = ws[k] - upd
    return ws, h, h2, losses


RULES = [
    ("SGD", 'type: "SGD"\nmomentum: 0.9\n', dict(momentum=0.9)),
    ("Nesterov", 'type: "Nesterov"\nmomentum: 0.8\n', dict(momentum=0.8)),
    ("AdaGrad", 'type: "AdaGrad"\ndelta: 1e-6\n', dict(delta=1e-6)),
    ("RMSProp", 'type: "RMSProp"\nrms_decay: 0.9\ndelta: 1e-6\n', dict(rms_decay=0.9, delta=1e-6)),
    ("AdaDelta", 'type: "AdaDelta"\nmomentum: 0.95\ndelta: 1e-6\n',
     dict(momentum=0.95, delta=1e-6)),
    ("Adam", 'type: "Adam"\nmomentum: 0.9\nmomentum2: 0.99\ndelta: 1e-8\n',
     dict(momentum=0.9, momentum2=0.99, delta=1e-8)),
]


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, rec):
        self.events.append((event, rec))

    def of(self, kind):
        return [r for e, r in self.events if e == kind]


@pytest.mark.parametrize("rule,text,kw", RULES, ids=[r[0] for r in RULES])
def test_update_rules_match_hand_computation(rule, text, kw, tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, text + 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'max_iter: 7\ndisplay: 1\nweight_decay: 0.01\n')
    rec = Recorder()
    solver.add_listener(rec)
    solver.step(7)
    ws, h, h2, losses = reference_run(7, rule, base_lr=0.1, weight_decay=0.01, **kw)
    for a, e in zip(weights(solver), ws):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=1e-6)
    n = len(solver.net.learnable_params)
    two = rule in ("AdaDelta", "Adam")
    assert len(solver.history) == (2 * n if two else n)
    for k in range(n):
        np.testing.assert_allclose(solver.history[k], h[k], rtol=2e-5, atol=1e-7)
        if two:
            np.testing.assert_allclose(solver.history[n + k], h2[k], rtol=2e-5, atol=1e-9)
    # display: average_loss 1 -> the displayed loss is the raw loss of each iteration
    assert [r["iter"] for r in rec.of("train")] == list(range(7))
    np.testing.assert_allclose([r["loss"] for r in rec.of("train")], losses, rtol=1e-5)
    assert [r["lr"] for r in rec.of("lr")] == [pytest.approx(0.1)] * 7


def test_sgd_l1_lr_mult_decay_mult(tmp_path, monkeypatch):
    net = default_net(lr1=2.0, decay1=0.5)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.05\nlr_policy: "fixed"\n'
                         'momentum: 0.5\nweight_decay: 0.1\nregularization_type: "L1"\n', net)
    solver.step(5)
    ws, h, _, _ = reference_run(5, "SGD", base_lr=0.05, momentum=0.5, weight_decay=0.1,
                                reg="L1", lr_mults=(1, 2), decay_mults=(1, 0.5))
    for a, e in zip(weights(solver), ws):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)


FUSED_CASES = [
    # (solver text, net, params expected fused)
    ('momentum: 0.9\nweight_decay: 0.01\n', default_net(lr1=2.0, decay1=0.0), [0, 1]),
    ('momentum: 0.5\nweight_decay: 0.1\niter_size: 2\nclip_gradients: 0.5\n',
     default_net(decay1=3.0), [0, 1]),
    ('momentum: 0.9\n', default_net(), [0, 1]),                  # no weight decay at all
    ('momentum: 0.5\nweight_decay: 0.1\nregularization_type: "L1"\n',
     default_net(decay1=0.0), [1]),                              # L1 runs apart; decay 0 fuses
    ('type: "Nesterov"\nmomentum: 0.9\nweight_decay: 0.01\n', default_net(), []),
]


@pytest.mark.parametrize("text,net,expect", FUSED_CASES)
def test_fused_sgd_step_same_bits_as_separate_steps(text, net, expect, tmp_path, monkeypatch):
    """Where numba is installed, plain SGD runs regularize, the update rule and data -= diff as
    one compiled pass per param. Against the same solver with the pass turned off: the same
    bits for weights, diffs (the update value) and history after 6 iterations, with lr_mult,
    decay_mult 0, iter_size, clipping; L1 decay, other rules and masked params run apart."""
    from caffepy.kernels import compiled
    from caffepy.solver.solver import Solver
    if compiled.kernels() is None:
        pytest.skip("numba is not installed or turned off")
    text += 'base_lr: 0.05\nlr_policy: "fixed"\n'
    steps = []
    real = Solver._fused_step

    def spy(self, param_id, rate):
        ok = real(self, param_id, rate)
        if ok:
            steps.append(param_id)
        return ok

    monkeypatch.setattr(Solver, "_fused_step", spy)
    fused = make_solver(tmp_path, monkeypatch, text, net)
    fused.step(6)
    assert sorted(set(steps)) == expect and len(steps) == 6 * len(expect)
    monkeypatch.setattr(Solver, "_may_fuse_update", lambda self: False)
    apart = make_solver(tmp_path, monkeypatch, text, net)
    apart.step(6)
    for a, b in zip(fused.net.learnable_params, apart.net.learnable_params):
        np.testing.assert_array_equal(a.data.view(np.uint32), b.data.view(np.uint32))
        np.testing.assert_array_equal(a.diff.view(np.uint32), b.diff.view(np.uint32))
    for a, b in zip(fused.history, apart.history):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_fused_sgd_step_leaves_masked_params_and_subclasses_alone(tmp_path, monkeypatch):
    """A param with a connectivity mask, and a Solver subclass replacing regularize, take the
    separate steps (the mask still holds its weights; the subclass's step still runs)."""
    from caffepy.kernels import compiled
    from caffepy.solver import SGDSolver
    if compiled.kernels() is None:
        pytest.skip("numba is not installed or turned off")
    text = 'base_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.01\n'
    solver = make_solver(tmp_path, monkeypatch, text)
    blob = solver.net.learnable_params[0]
    blob.mask = np.array([1, 0, 1], np.float32)
    assert solver._may_fuse_update()
    assert not solver._fused_step(0, 0.1)
    solver.step(3)
    assert blob.data[1] == np.float32(W0[1]) and blob.data[0] != np.float32(W0[0])

    calls = []

    class Counting(SGDSolver):
        def regularize(self, param_id):
            calls.append(param_id)
            super().regularize(param_id)

    sub = make_solver(tmp_path, monkeypatch, text, cls=Counting)
    assert not sub._may_fuse_update()
    sub.step(2)
    assert calls == [0, 1, 0, 1]


def test_lr_mult_zero_freezes_param(tmp_path, monkeypatch):
    net = default_net(lr1=0.0)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'momentum: 0.9\nweight_decay: 0.01\n', net)
    solver.step(3)
    np.testing.assert_array_equal(solver.net.learnable_params[1].data, np.float32(W1))
    assert not np.allclose(solver.net.learnable_params[0].data, W0)


def test_clip_gradients_and_iter_size(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'momentum: 0.9\nweight_decay: 0.01\nclip_gradients: 0.5\n'
                         'iter_size: 2\ndisplay: 1\n')
    rec = Recorder()
    solver.add_listener(rec)
    solver.step(4)
    ws, _, _, losses = reference_run(4, "SGD", base_lr=0.1, momentum=0.9, weight_decay=0.01,
                                     clip=0.5, iter_size=2)
    for a, e in zip(weights(solver), ws):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)
    assert len(rec.of("clip")) == 4
    np.testing.assert_allclose([r["loss"] for r in rec.of("train")], losses, rtol=1e-5)


def test_smoothed_loss_and_reset_per_step_call(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.0\nlr_policy: "fixed"\n'
                         'average_loss: 2\ndisplay: 1\n')
    rec = Recorder()
    solver.add_listener(rec)
    solver.step(4)
    _, _, _, raw = reference_run(4, "SGD", base_lr=0.0)
    shown = [r["loss"] for r in rec.of("train")]
    np.testing.assert_allclose(shown, [raw[0], (raw[0] + raw[1]) / 2, (raw[1] + raw[2]) / 2,
                                       (raw[2] + raw[3]) / 2], rtol=1e-5)
    # a new step() call restarts the ring buffer: the first loss is shown raw
    solver.step(1)
    _, _, _, raw5 = reference_run(5, "SGD", base_lr=0.0)
    np.testing.assert_allclose(rec.of("train")[-1]["loss"], raw5[4], rtol=1e-5)


def test_train_outputs_display_loss_weight(tmp_path, monkeypatch):
    net = 'name: "n"\n' + quad_layer("q0", W0, TARGETS0, loss_weight=0.5)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.0\nlr_policy: "fixed"\n'
                         'display: 1\n', net)
    rec = Recorder()
    solver.add_listener(rec)
    solver.step(1)
    (r,) = rec.of("train")
    raw = 0.5 * np.sum((np.array(W0) - np.array(TARGETS0[0])) ** 2)
    assert r["outputs"] == [(0, "q0_loss", pytest.approx(raw, rel=1e-6), 0.5)]
    assert r["loss"] == pytest.approx(0.5 * raw, rel=1e-6)


def test_debug_info_prints_only_on_display_iterations(tmp_path, monkeypatch, caplog):
    # Solver::Step: net_->set_debug_info(display && param_.debug_info()).
    net = 'name: "n"\n' + quad_layer("q0", W0, TARGETS0)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'display: 2\ndebug_info: true\n', net)
    with caplog.at_level(logging.INFO, logger="caffepy"):
        solver.step(3)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("[Backward] All net params" in m for m in msgs) == 2
    assert sum("[Forward] Layer q0, top blob q0_loss data:" in m for m in msgs) == 2
    assert sum(m.startswith("Iteration ") and "lr = " in m for m in msgs) == 2


# -- learning-rate policies ----------------------------------------------------------------

def _sp(**kw):
    p = caffe_pb2.SolverParameter()
    for k, v in kw.items():
        if k == "stepvalue":
            p.stepvalue.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.mark.parametrize("kw,fn", [
    (dict(lr_policy="fixed", base_lr=0.01), lambda it: 0.01),
    (dict(lr_policy="step", base_lr=0.1, gamma=0.5, stepsize=3),
     lambda it: 0.1 * 0.5 ** (it // 3)),
    (dict(lr_policy="exp", base_lr=0.1, gamma=0.9), lambda it: 0.1 * 0.9 ** it),
    (dict(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75),
     lambda it: 0.01 * (1 + 1e-4 * it) ** -0.75),
    (dict(lr_policy="poly", base_lr=0.1, power=2.0, max_iter=20),
     lambda it: 0.1 * (1 - it / 20.0) ** 2),
    (dict(lr_policy="sigmoid", base_lr=0.1, gamma=0.5, stepsize=6),
     lambda it: 0.1 / (1 + np.exp(-0.5 * (it - 6)))),
], ids=["fixed", "step", "exp", "inv", "poly", "sigmoid"])
def test_lr_policies(kw, fn):
    p = _sp(**kw)
    cs = 0
    for it in [0, 1, 2, 3, 5, 7, 10, 19]:
        rate, cs = get_learning_rate(p, it, cs)
        assert rate == pytest.approx(fn(it), rel=1e-6)
        assert rate == float(np.float32(rate))      # a float32 value, as Caffe's Dtype
    if kw["lr_policy"] == "step":
        assert cs == 19 // 3                         # step writes current_step


class LogCapture(logging.Handler):
    """The "caffepy" logger's messages (independent of pytest's logging plugin)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger = logging.getLogger("caffepy")
        self.old = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old)


def test_lr_multistep_current_step_and_log():
    p = _sp(lr_policy="multistep", base_lr=0.1, gamma=0.3, stepvalue=[3, 7, 9])
    cs = 0
    rates = []
    with LogCapture() as cap:
        for it in range(12):
            r, cs = get_learning_rate(p, it, cs)
            rates.append(r)
    exp = [0.1 * 0.3 ** (0 if it < 3 else 1 if it < 7 else 2 if it < 9 else 3) for it in range(12)]
    np.testing.assert_allclose(rates, exp, rtol=1e-6)
    assert cs == 3
    msgs = cap.messages
    assert "MultiStep Status: Iteration 3, step = 1" in msgs
    assert "MultiStep Status: Iteration 9, step = 3" in msgs
    # multistep depends on the restored current_step: at most one step per call
    r, cs2 = get_learning_rate(p, 10, 0)
    assert cs2 == 1 and r == pytest.approx(0.03, rel=1e-6)


def test_unknown_lr_policy():
    with pytest.raises(SolverError, match="Unknown learning rate policy: 'cosine'"):
        get_learning_rate(_sp(lr_policy="cosine", base_lr=0.1), 0, 0)


# -- bad input -----------------------------------------------------------------------------

BASIC = 'base_lr: 0.1\nlr_policy: "fixed"\n'


@pytest.mark.parametrize("text,cls,match", [
    (BASIC + 'type: "Foo"\n', None, "Unknown solver type: 'Foo'"),
    ('base_lr: 0.1\nlr_policy: "cosine"\n', None, "Unknown learning rate policy: 'cosine'"),
    (BASIC + 'type: "AdaGrad"\nmomentum: 0.9\n', None, "Momentum cannot be used with AdaGrad"),
    (BASIC + 'momentum: 0.9\n', AdaGradSolver, "Momentum cannot be used with AdaGrad"),
    (BASIC + 'type: "RMSProp"\nmomentum: 0.9\n', None, "Momentum cannot be used with RMSProp"),
    (BASIC + 'type: "RMSProp"\nrms_decay: 1.0\n', None, "rms_decay"),
    (BASIC + 'test_iter: 2\n', None, "test_interval"),
    (BASIC + 'test_net: "net.prototxt"\n', None, "test_iter must be specified"),
    (BASIC + 'average_loss: 0\n', None, "average_loss"),
    (BASIC + 'snapshot: 5\nsnapshot_prefix: "no/such/dir/snap"\n', None,
     "Cannot write to snapshot prefix 'no/such/dir/snap'"),
    (BASIC + 'weight_decay: 0.1\nregularization_type: "L3"\n', None,
     "Unknown regularization type: 'L3'"),
    (BASIC + 'net_param { name: "x" }\n', None, "more than one"),
])
def test_bad_solver_input(text, cls, match, tmp_path, monkeypatch):
    with pytest.raises(SolverError, match=match):
        make_solver(tmp_path, monkeypatch, text, cls=cls)


def test_missing_net_and_missing_net_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.prototxt").write_text(BASIC)
    with pytest.raises(SolverError, match="must specify a train net"):
        get_solver("s.prototxt")
    (tmp_path / "s2.prototxt").write_text(BASIC + 'net: "nope.prototxt"\n')
    with pytest.raises(SolverError, match="nope.prototxt"):
        get_solver("s2.prototxt")
    with pytest.raises(SolverError, match="does not exist"):
        get_solver("missing_solver.prototxt")


def test_bad_signal_effect(tmp_path, monkeypatch):
    with pytest.raises(SolverError, match="sigint_effect"):
        make_solver(tmp_path, monkeypatch, BASIC, sigint_effect="explode")


def test_abstract_solver_and_forced_class(tmp_path, monkeypatch):
    with pytest.raises(SolverError, match="abstract"):
        make_solver(tmp_path, monkeypatch, BASIC, cls=Solver)
    s = make_solver(tmp_path, monkeypatch, BASIC + 'type: "Adam"\n', cls=SGDSolver)
    assert type(s) is SGDSolver and len(s.history) == 2
    assert type(get_solver("solver.prototxt")) is AdamSolver


def test_solver_type_enum_upgrade_and_param_copy(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + 'solver_type: NESTEROV\nmomentum: 0.9\n')
    assert type(s) is NesterovSolver
    p = s.param
    assert p.type == "Nesterov" and not p.HasField("solver_type")
    c = p.copy()                                     # a detached SolverParameter
    c.base_lr = 5.0
    assert s.param.base_lr == pytest.approx(0.1)
    p.base_lr = 5.0                                  # pycaffe: solver.param is live
    assert s.param.base_lr == pytest.approx(5.0)
    for cls in (RMSPropSolver, AdaDeltaSolver):
        assert cls.type_name in caffepy.solver.solver_type_list()


def test_random_seed_seeds_fillers(tmp_path, monkeypatch):
    net = 'name: "n"\n' + quad_layer("q0", None, [[0, 0, 0]], shape=[3])
    a = make_solver(tmp_path, monkeypatch, BASIC + "random_seed: 7\n", net)
    b = make_solver(tmp_path, monkeypatch, BASIC + "random_seed: 7\n", net)
    c = make_solver(tmp_path, monkeypatch, BASIC + "random_seed: 8\n", net)
    np.testing.assert_array_equal(weights(a)[0], weights(b)[0])
    assert not np.array_equal(weights(a)[0], weights(c)[0])


# -- test nets -------------------------------------------------------------------------------

def test_test_nets_share_weights_and_average(tmp_path, monkeypatch):
    net = ('name: "n"\n' + quad_layer("q0", W0, TARGETS0, phase="TRAIN")
           + quad_layer("q0", [9.0, 9.0, 9.0], [[0, 0, 0], [1, 1, 1]], phase="TEST"))
    solver = make_solver(tmp_path, monkeypatch, BASIC + 'test_iter: 2\ntest_interval: 2\n'
                         'test_compute_loss: true\nmax_iter: 4\ndisplay: 1\n'
                         'snapshot_after_train: false\n', net)
    rec = Recorder()
    solver.add_listener(rec)
    solver.solve()
    tests = rec.of("test")
    assert [t["iter"] for t in tests] == [0, 2, 4]   # test_initialization, interval, final
    # iteration 0: weights W0 (shared from the train net), targets 0 and 1 (averaged)
    w = np.array(W0)
    exp0 = (0.5 * np.sum(w ** 2) + 0.5 * np.sum((w - 1) ** 2)) / 2
    assert tests[0]["scores"] == [(0, "q0_loss", pytest.approx(exp0, rel=1e-6), 1.0)]
    assert tests[0]["loss"] == pytest.approx(exp0, rel=1e-6)
    assert solver.mean_scores[0] == [pytest.approx(tests[-1]["scores"][0][2])]
    # final forward-only pass is displayed at max_iter
    assert rec.of("final_loss")[0]["iter"] == 4


def test_test_state_and_test_iter_per_net(tmp_path, monkeypatch):
    net = ('name: "n"\n' + quad_layer("q0", W0, TARGETS0)
           + 'layer { name: "s" type: "SolverTestQuad" top: "s_loss" '
             'python_param { param_str: \'{"shape": [1], "init": [1], "targets": [0]}\' } '
             'include { stage: "extra" } }\n')
    solver = make_solver(tmp_path, monkeypatch, BASIC + 'test_iter: 1\ntest_iter: 1\n'
                         'test_interval: 10\ntest_state { stage: "extra" }\ntest_state { }\n',
                         net)
    assert len(solver.test_nets) == 2
    assert "s" in solver.test_nets[0].layer_names
    assert "s" not in solver.test_nets[1].layer_names
    assert "s" not in solver.net.layer_names


# -- snapshots, restore, resume ------------------------------------------------------------------

RESUME = 'type: "Adam"\nbase_lr: 0.05\nlr_policy: "multistep"\nstepvalue: 2\nstepvalue: 4\n' \
         'gamma: 0.5\nmomentum: 0.9\nweight_decay: 0.01\nmax_iter: 6\nsnapshot: 3\n'


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_equals_uninterrupted(fmt, tmp_path, monkeypatch):
    text = RESUME + "snapshot_format: %s\n" % fmt
    a = make_solver(tmp_path, monkeypatch, text)
    a.solve()
    wa, ha, csa = weights(a), [h.copy() for h in a.history], a.current_step
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    model_ext = ".caffemodel.h5" if fmt == "HDF5" else ".caffemodel"
    for it in (3, 6):
        assert os.path.isfile("snap_iter_%d%s" % (it, ext))
        assert os.path.isfile("snap_iter_%d%s" % (it, model_ext))
    b = get_solver("solver.prototxt")
    b.solve(resume_file="snap_iter_3" + ext)
    assert b.iter == 6 and b.current_step == csa == 2
    for x, y in zip(wa, weights(b)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(ha, b.history):
        np.testing.assert_array_equal(x, y)
    # restore() alone sets iter, current_step, history and the weights
    c = get_solver("solver.prototxt")
    c.restore("snap_iter_6" + ext)
    assert c.iter == 6 and c.current_step == 2
    for x, y in zip(wa, weights(c)):
        np.testing.assert_array_equal(x, y)
    assert len(c.history) == 4
    for x, y in zip(ha, c.history):
        np.testing.assert_array_equal(x, y)


def test_snapshot_contents(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + 'type: "AdaDelta"\nmomentum: 0.9\n'
                    'snapshot_diff: true\n')
    s.step(2)
    model, state = s.snapshot()
    assert (model, state) == ("snap_iter_2.caffemodel", "snap_iter_2.solverstate")
    st = read_binary(state, caffe_pb2.SolverState())
    assert st.iter == 2 and st.learned_net == model and len(st.history) == 4
    assert list(st.history[0].shape.dim) == [3]
    np.testing.assert_array_equal(blobproto_to_array(st.history[3]), s.history[3])
    net = read_binary(model, caffe_pb2.NetParameter())
    q0 = [l for l in net.layer if l.name == "q0"][0]
    np.testing.assert_array_equal(blobproto_to_array(q0.blobs[0]), weights(s)[0])
    assert len(q0.blobs[0].diff) == 3      # snapshot_diff


def test_restore_history_count_mismatch(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC)
    s.step(1)
    _, state = s.snapshot()
    adam = make_solver(tmp_path, monkeypatch, BASIC + 'type: "Adam"\n')
    with pytest.raises(SolverError, match="Incorrect length of history blobs"):
        adam.restore(state)
    with pytest.raises(SolverError, match="does not exist"):
        adam.restore("nope.solverstate")


def test_hdf5_solverstate_learned_net_is_a_nul_terminated_string(tmp_path, monkeypatch):
    # hdf5_save_string -> H5LTmake_dataset_string: a scalar fixed-length string of
    # strlen + 1 bytes, H5T_STR_NULLTERM; hdf5_load_string builds std::string(buf) from it.
    h5py = pytest.importorskip("h5py")
    net = 'name: "n"\n' + quad_layer("q0", W0, TARGETS0)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'snapshot_format: HDF5\n', net)
    solver.step(1)
    model, state = solver.snapshot()
    assert model == "snap_iter_1.caffemodel.h5" and state == "snap_iter_1.solverstate.h5"
    with h5py.File(state, "r") as f:
        ds = f["learned_net"]
        assert ds.shape == ()
        tid = ds.id.get_type()
        assert tid.get_strpad() == h5py.h5t.STR_NULLTERM
        assert tid.get_size() == len(model) + 1
        assert ds[()] == model.encode()
        assert f["iter"].shape == (1,) and int(f["iter"][0]) == 1
    solver2 = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n', net)
    solver2.restore(state)
    assert solver2.iter == 1
    np.testing.assert_array_equal(solver2.net.learnable_params[0].data,
                                  solver.net.learnable_params[0].data)


def test_hdf5_restore_checks_the_history_shape(tmp_path, monkeypatch):
    # RestoreSolverStateFromHDF5 -> hdf5_load_nd_dataset(..., reshape=false) CHECKs shapes.
    h5py = pytest.importorskip("h5py")
    net = 'name: "n"\n' + quad_layer("q0", W0, TARGETS0)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'momentum: 0.9\nsnapshot_format: HDF5\n', net)
    solver.step(1)
    _, state = solver.snapshot()
    with h5py.File(state, "r+") as f:
        h = np.asarray(f["history/0"])
        del f["history/0"]
        f["history/0"] = h.reshape(1, 3)
    with pytest.raises(SolverError, match="shape"):
        make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n', net) \
            .restore(state)


def test_snapshot_prefix_directory(tmp_path, monkeypatch):
    (tmp_path / "snaps").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(default_net())
    (tmp_path / "my_solver.prototxt").write_text(
        BASIC + 'net: "net.prototxt"\nsnapshot_prefix: "snaps/"\nmax_iter: 2\nsnapshot: 1\n')
    s = get_solver("my_solver.prototxt")
    s.solve()
    assert sorted(os.listdir("snaps")) == [
        "my_solver_iter_1.caffemodel", "my_solver_iter_1.solverstate",
        "my_solver_iter_2.caffemodel", "my_solver_iter_2.solverstate"]
    # no snapshot_prefix: the solver file's name without its extension
    (tmp_path / "other.prototxt").write_text(BASIC + 'net: "net.prototxt"\nmax_iter: 1\n')
    get_solver("other.prototxt").solve()
    assert os.path.isfile("other_iter_1.caffemodel") and os.path.isfile("other_iter_1.solverstate")


def test_display_zero_and_snapshot_after_train_rule(tmp_path, monkeypatch):
    # display 0: no output; Solve: snapshot after train only if iter % snapshot != 0
    net = 'name: "n"\n' + quad_layer("q0", W0, TARGETS0)
    solver = make_solver(tmp_path, monkeypatch, 'base_lr: 0.1\nlr_policy: "fixed"\n'
                         'max_iter: 4\nsnapshot: 2\n', net)
    solver.solve()
    files = sorted(f for f in os.listdir(str(tmp_path)) if f.startswith("snap_"))
    assert files == ["snap_iter_2.caffemodel", "snap_iter_2.solverstate",
                     "snap_iter_4.caffemodel", "snap_iter_4.solverstate"]
    st = read_binary(str(tmp_path / "snap_iter_4.solverstate"), caffe_pb2.SolverState())
    assert st.iter == 4 and st.learned_net == "snap_iter_4.caffemodel"


def test_weights_field_finetunes(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC)
    s.step(3)
    model, _ = s.snapshot()
    trained = weights(s)
    s2 = make_solver(tmp_path, monkeypatch, BASIC + 'weights: "%s"\n' % model)
    for x, y in zip(trained, weights(s2)):
        np.testing.assert_array_equal(x, y)
    assert s2.iter == 0


# -- callbacks, regularizers, signals ------------------------------------------------------------

def test_callbacks_order(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + "max_iter: 3\nsnapshot_after_train: false\n")
    seen = []
    s.add_callback(lambda: seen.append(("start", s.iter)),
                   lambda: seen.append(("grad", s.iter,
                                        float(s.net.learnable_params[0].diff[0]))))
    s.solve()
    assert [x[:2] for x in seen] == [("start", 0), ("grad", 0), ("start", 1), ("grad", 1),
                                     ("start", 2), ("grad", 2)]
    # on_gradients_ready sees the raw gradient w - t
    assert seen[1][2] == pytest.approx(W0[0] - TARGETS0[0][0])

    class CB:
        n = 0

        def on_start(self):
            CB.n += 1

        def on_gradients_ready(self):
            CB.n += 10
    s.add_callback(CB())
    s.step(1)
    assert CB.n == 11


@register_regularizer("SolverTestL2")
class SolverTestL2(Regularizer):
    """diff += coeff * decay_mult * w (the same as weight_decay: coeff)."""

    def __init__(self, coeff):
        self.coeff = coeff
        self.calls = []

    def regularize(self, param_id, blob, ctx):
        self.calls.append((param_id, ctx.layer_name, ctx.param_index, ctx.iter))
        assert ctx.solver is not None and ctx.net is ctx.solver.net
        assert ctx.local_rate == pytest.approx(ctx.rate * ctx.lr_mult)
        blob.diff[...] += np.float32(self.coeff * ctx.decay_mult) * blob.data


def test_regularizer_chain_plugin(tmp_path, monkeypatch):
    ref = make_solver(tmp_path, monkeypatch, BASIC + "momentum: 0.9\nweight_decay: 0.03\n")
    ref.step(4)
    s = make_solver(tmp_path, monkeypatch, BASIC + "momentum: 0.9\n")
    assert s.regularizers == []
    r = s.add_regularizer("SolverTestL2", 0.03)
    s.step(4)
    for x, y in zip(weights(ref), weights(s)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert r.calls[:2] == [(0, "q0", 0, 0), (1, "q1", 0, 0)]
    assert len(r.calls) == 8
    with pytest.raises(SolverError, match="Unknown regularizer 'Nope'"):
        s.add_regularizer("Nope")


def test_sigint_stops_and_snapshots_sighup_snapshots(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + "max_iter: 10\n")

    def on_start():
        if s.iter == 1:
            os.kill(os.getpid(), signal.SIGHUP)
        if s.iter == 3:
            os.kill(os.getpid(), signal.SIGINT)
    s.add_callback(on_start, None)
    before = signal.getsignal(signal.SIGINT)
    s.solve()
    assert signal.getsignal(signal.SIGINT) is before        # handlers put back
    assert s.iter == 4 and s.requested_early_exit
    assert os.path.isfile("snap_iter_2.caffemodel")         # SIGHUP -> snapshot
    assert os.path.isfile("snap_iter_4.solverstate")        # stop -> final snapshot

    s2 = make_solver(tmp_path, monkeypatch, BASIC + "max_iter: 3\n", sigint_effect="none")
    s2.add_callback(lambda: os.kill(os.getpid(), signal.SIGINT), None)
    s2.solve()
    assert s2.iter == 3 and not s2.requested_early_exit


def test_action_function(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + "max_iter: 5\nsnapshot_after_train: false\n")
    s.set_action_function(lambda: "stop" if s.iter == 2 else "none")
    s.solve()
    assert s.iter == 2


# -- atomic snapshots ----------------------------------------------------------------------------

BIG = 50000


class _SlowFile:
    """A binary file whose writes go out in small chunks with pauses: a slow disk, so
    that a SIGKILL often lands in the middle of writing a snapshot."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        data = memoryview(data).cast("B")
        for i in range(0, len(data), 32768):
            self._f.write(data[i:i + 32768])
            self._f.flush()
            time.sleep(0.001)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def _slow_disk():
    import builtins
    real_open = builtins.open

    def slow_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _SlowFile(f) if ("w" in mode or "a" in mode) and "b" in mode else f
    builtins.open = slow_open


def _snapshot_loop(folder, fmt):  # runs in a subprocess
    os.chdir(folder)
    _slow_disk()
    net = 'name: "big"\n' + quad_layer("q0", None, [[0.0]], shape=[BIG])
    with open("net.prototxt", "w") as f:
        f.write(net)
    with open("solver.prototxt", "w") as f:
        f.write(BASIC + 'type: "Adam"\nnet: "net.prototxt"\nsnapshot_prefix: "snap"\n'
                'snapshot_format: %s\nrandom_seed: 1\n' % fmt)
    s = get_solver("solver.prototxt")
    s.iter = int(time.time() * 1000) % 100000
    s.snapshot()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        s.iter += 1
        s.snapshot()


def _check_complete(folder):
    import h5py
    n = 0
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".") or not name.startswith("snap_iter_"):
            continue
        n += 1
        if name.endswith(".caffemodel"):
            p = read_binary(path, caffe_pb2.NetParameter())
            assert len(p.layer[0].blobs[0].data) == BIG, name
        elif name.endswith(".solverstate"):
            st = read_binary(path, caffe_pb2.SolverState())
            assert len(st.history) == 2 and all(len(h.data) == BIG for h in st.history), name
            assert st.learned_net.startswith("snap_iter_")
        elif name.endswith(".h5"):
            with h5py.File(path, "r") as f:
                if name.endswith(".solverstate.h5"):
                    assert f["history"]["1"].shape == (BIG,), name
                else:
                    assert f["data"]["q0"]["0"].shape == (BIG,), name
        else:
            raise AssertionError("unexpected file %s" % name)
    return n


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshots_are_atomic_under_sigkill(fmt, tmp_path):
    rng = np.random.default_rng(0)
    code = ("import sys; sys.path.insert(0, %r); import test_solver; "
            "test_solver._snapshot_loop(%r, %r)" % (HERE, str(tmp_path), fmt))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    for _ in range(5 if fmt == "BINARYPROTO" else 3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        try:
            line = proc.stdout.readline()
            assert line.strip() == b"ready", "snapshot loop did not start"
            time.sleep(float(rng.uniform(0.03, 0.2)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
    assert _check_complete(str(tmp_path)) >= 2
