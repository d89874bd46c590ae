"""Learning-rate policies, exactly as Caffe's ``SGDSolver::GetLearningRate``.

Every policy is a function ``policy(param, it, current_step) -> (rate, current_step)``
where ``param`` is the SolverParameter, ``it`` the iteration *before* the update and
``current_step`` the solver's step counter (written by "step" and "multistep", and saved
in the solverstate).  The rate is a Python float holding the float32 value Caffe computes:
the same mix of float (Dtype) and double arithmetic as the C++ code, so the rates agree
with Caffe's to the last bit in nearly all cases.

User policies can be added with ``@register_lr_policy("name")``.
"""
import logging

import numpy as np

from ..errors import SolverError
from ..registry import Registry

log = logging.getLogger("caffepy")

f32 = np.float32

_POLICIES = Registry("Unknown learning rate policy: '%s' (lr_policy must be one of: %s)",
                     SolverError)


def register_lr_policy(name, fn=None):
    """Register ``fn(param, it, current_step) -> (rate, current_step)`` under ``name``
    (without ``fn``, a decorator)."""
    return _POLICIES.register(name, fn)


def lr_policy_names():
    return _POLICIES.names()


def _check(cond, msg):
    if not cond:
        raise SolverError(msg)


def _check_gamma(param):
    _check(param.gamma >= 0, "lr_policy \"%s\" needs gamma >= 0 (got %g)"
           % (param.lr_policy, param.gamma))


def _check_stepsize(param):
    _check(param.stepsize > 0, "lr_policy \"%s\" needs stepsize > 0 (got %d)"
           % (param.lr_policy, param.stepsize))


def _pow_dd(base, exponent):
    """std::pow with a float base promoted to double (C++11 pow(float, int))."""
    return float(base) ** exponent


def _powf(base, exponent):
    """std::pow(float, float) -> float (powf); computed in double and rounded once."""
    with np.errstate(all="ignore"):
        return f32(np.power(np.float64(base), np.float64(exponent)))


def _base_lr_times_gamma_to(param, n):
    """base_lr * pow(gamma, n) with an integer n: the product in double, stored as float."""
    return float(f32(float(f32(param.base_lr)) * _pow_dd(f32(param.gamma), n)))


@register_lr_policy("fixed")
def _fixed(param, it, current_step):
    return float(f32(param.base_lr)), current_step


@register_lr_policy("step")
def _step(param, it, current_step):
    _check_stepsize(param)
    current_step = it // param.stepsize
    _check_gamma(param)
    return _base_lr_times_gamma_to(param, current_step), current_step


@register_lr_policy("exp")
def _exp(param, it, current_step):
    _check_gamma(param)
    return _base_lr_times_gamma_to(param, it), current_step


@register_lr_policy("inv")
def _inv(param, it, current_step):
    _check_gamma(param)
    # pow(Dtype(1) + gamma * iter, -power): all float
    base = f32(f32(1) + f32(f32(param.gamma) * f32(it)))
    rate = f32(f32(param.base_lr) * _powf(base, -f32(param.power)))
    return float(rate), current_step


@register_lr_policy("multistep")
def _multistep(param, it, current_step):
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
    _check_gamma(param)
    return _base_lr_times_gamma_to(param, current_step), current_step


@register_lr_policy("poly")
def _poly(param, it, current_step):
    with np.errstate(all="ignore"):
        frac = f32(f32(it) / f32(param.max_iter))
    rate = f32(f32(param.base_lr) * _powf(f32(f32(1) - frac), f32(param.power)))
    return float(rate), current_step


@register_lr_policy("sigmoid")
def _sigmoid(param, it, current_step):
    _check_gamma(param)
    _check_stepsize(param)
    with np.errstate(all="ignore"):
        x = f32(-f32(param.gamma) * f32(f32(it) - f32(param.stepsize)))
        e = f32(np.exp(np.float64(x)))
        q = f32(f32(1) / f32(f32(1) + e))
        rate = f32(f32(param.base_lr) * q)
    return float(rate), current_step


def get_learning_rate(param, it, current_step=0):
    """(rate, new_current_step) for iteration ``it`` under ``param.lr_policy``."""
    return _POLICIES.lookup(param.lr_policy)(param, it, current_step)


def check_lr_policy(param):
    """Raise SolverError now (at solver construction) for an unknown lr_policy."""
    _POLICIES.lookup(param.lr_policy)
