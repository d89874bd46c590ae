"""The solver's plug-in points: update rules registered by type name, the class a rule gets,
the learning-rate policies' checks, and the param -> layer map the regularize step reads from
the Net (Net.learnable_param_info), shared params included.

The nets use test_solver.py's SolverTestQuad layer: loss 0.5·Σ(w − t)², gradient w − t.
"""
import numpy as np
import pytest
from google.protobuf import text_format

from caffepy import Net
from caffepy.proto import caffe_pb2
from caffepy.regularizers import Regularizer
from caffepy.solver import (SGDSolver, Solver, SolverError, UpdateRule, get_learning_rate,
                            register_update_rule, solver_class, solver_type_list)
from caffepy.solver.updaters import SGDRule
from test_solver import BASIC, make_solver, quad_layer, weights


def _add_param_spec(layer_text, spec):
    return layer_text.replace("} }\n", "} " + spec + " }\n")


def shared_net_text():
    return ('name: "shared"\n'
            + _add_param_spec(quad_layer("q0", [0.5, -1.0, 2.0], [[0, 0, 0]]),
                              'param { name: "w" lr_mult: 2 }')
            + _add_param_spec(quad_layer("q1", [0.0, 0.0, 0.0], [[1, 1, 1]]),
                              'param { name: "w" }')
            + quad_layer("q2", [1.0, 1.0], [[0, 0]]))


@register_update_rule("TestSignSGD")
class SignRule(UpdateRule):
    """diff = local_rate * sign(diff), no history used."""

    def update(self, diff, history, local_rate, it, scratch):
        np.sign(diff, out=diff)
        diff *= local_rate


@register_update_rule("TestHalfSGD")
class HalfSGDRule(SGDRule):
    """SGD whose update value is then halved: a user rule built on SGD."""

    def update(self, diff, history, local_rate, it, scratch):
        super().update(diff, history, local_rate, it, scratch)
        diff *= np.float32(0.5)


def test_a_rule_built_on_sgd_keeps_its_own_update(tmp_path, monkeypatch):
    """SGD's one-pass step (SGDRule.fused_step) is not taken by a subclass that replaces
    update: every step runs its update, whose halving shows in the weights."""
    text = ('type: "TestHalfSGD"\nbase_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\n'
            'weight_decay: 0.01\n')
    solver = make_solver(tmp_path, monkeypatch, text)
    assert isinstance(solver.rule, HalfSGDRule)
    w0 = weights(solver)
    g = [w - t for w, t in zip(w0, ([0, 0, 0], [1, 1]))]      # the first targets
    solver.step(1)
    f = np.float32
    for w, g0, w_before in zip(weights(solver), g, w0):
        step = (f(0.1) * (g0 + f(0.01) * w_before)).astype(np.float32) * f(0.5)
        np.testing.assert_allclose(w, w_before - step, rtol=1e-6)


def test_learnable_param_info_names_the_owner_of_a_shared_param(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net_param = caffe_pb2.NetParameter()
    text_format.Merge(shared_net_text(), net_param)
    net = Net(net_param, caffe_pb2.TRAIN)
    assert len(net.learnable_params) == 2           # q1's blob is q0's
    info = net.learnable_param_info()
    assert [(i[0], i[1], i[2]) for i in info] == [(0, "q0", 0), (2, "q2", 0)]
    assert info[0][3].name == "w" and info[0][3].lr_mult == 2
    assert info[1][3] is None                        # q2 has no param { }


class _Recorder(Regularizer):
    name = "Recorder"

    def __init__(self):
        self.calls = []

    def regularize(self, param_id, blob, ctx):
        self.calls.append((param_id, ctx.layer_name, ctx.param_index, ctx.lr_mult,
                           ctx.local_rate))


def test_regularize_context_comes_from_the_net(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC, shared_net_text())
    r = s.add_regularizer(_Recorder())
    s.step(1)
    # q0 owns the shared blob (lr_mult 2: local rate 0.2); q2's blob is param 1
    assert r.calls == [(0, "q0", 0, 2.0, pytest.approx(0.2)), (1, "q2", 0, 1.0,
                                                               pytest.approx(0.1))]


def test_registered_rule_is_a_solver_type(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + 'type: "TestSignSGD"\n')
    cls = type(s)
    assert cls.__name__ == "TestSignSGDSolver" and cls.type_name == "TestSignSGD"
    assert isinstance(s, Solver) and solver_class("TestSignSGD") is cls
    assert isinstance(s.rule, SignRule) and SignRule.name == "TestSignSGD"
    assert "TestSignSGD" in solver_type_list()
    s.step(1)
    # w0 = [0.5, -1, 2], targets 0: w -= 0.1·sign(w); w1 = [1.5, 0.25], targets [1, 1]
    np.testing.assert_allclose(weights(s)[0], [0.4, -0.9, 1.9], rtol=1e-6)
    np.testing.assert_allclose(weights(s)[1], [1.4, 0.35], rtol=1e-6)
    assert len(s.history) == 2


def test_forced_class_and_unknown_type(tmp_path, monkeypatch):
    s = make_solver(tmp_path, monkeypatch, BASIC + 'type: "TestSignSGD"\n', cls=SGDSolver)
    assert type(s) is SGDSolver and s.rule.name == "SGD"
    with pytest.raises(SolverError, match="Unknown solver type: 'Sgd' \\(known types: "
                                          "AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, SGD"):
        solver_class("Sgd")


@pytest.mark.parametrize("fields,message", [
    (dict(lr_policy="exp", gamma=-1.0), 'lr_policy "exp" needs gamma >= 0 \\(got -1\\)'),
    (dict(lr_policy="inv", gamma=-0.5), 'lr_policy "inv" needs gamma >= 0 \\(got -0.5\\)'),
    (dict(lr_policy="step", gamma=0.5), 'lr_policy "step" needs stepsize > 0 \\(got 0\\)'),
    (dict(lr_policy="sigmoid", gamma=0.5), 'lr_policy "sigmoid" needs stepsize > 0'),
    (dict(lr_policy="multistep", gamma=-2.0), 'lr_policy "multistep" needs gamma >= 0'),
])
def test_lr_policy_checks_name_the_policy(fields, message):
    with pytest.raises(SolverError, match=message):
        get_learning_rate(caffe_pb2.SolverParameter(base_lr=0.1, **fields), 3, 0)


def test_step_policy_rate():
    # base_lr·gamma^floor(it/stepsize): 0.1·0.5² at it 25, stepsize 10; current_step 2
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="step", gamma=0.5, stepsize=10)
    rate, step = get_learning_rate(p, 25, 0)
    assert rate == float(np.float32(np.float32(0.1) * 0.25)) and step == 2
