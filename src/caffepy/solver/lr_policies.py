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
from .errors import SolverError  # noqa: F401

log = logging.getLogger("caffepy")

f32 = np.float32


_POLICIES = {}


def register_lr_policy(name, fn=None):
    """Register ``fn(param, it, current_step) -> (rate, current_step)`` under ``name``."""
    def deco(f):
        _POLICIES[name] = f
        return f
    return deco(fn) if fn is not None else deco


def lr_policy_names():
    return sorted(_POLICIES)


def _check(cond, msg):
    if not cond:
        raise SolverError(msg)


def _pow_dd(base, exponent):
    """std::pow with a float base promoted to double (C++11 pow(float, int))."""
    return float(base) ** exponent


def _powf(base, exponent):
    """std::pow(float, float) -> float (powf); computed in double and rounded once."""
    with np.errstate(all="ignore"):
        return f32(np.power(np.float64(base), np.float64(exponent)))


@register_lr_policy("fixed")
def _fixed(param, it, current_step):
    return float(f32(param.base_lr)), current_step


@register_lr_policy("step")
def _step(param, it, current_step):
    _check(param.stepsize > 0, "lr_policy \"step\" needs stepsize > 0 (got %d)" % param.stepsize)
    current_step = it // param.stepsize
    _check(param.gamma >= 0, "lr_policy \"step\" needs gamma >= 0 (got %g)" % param.gamma)
    rate = f32(float(f32(param.base_lr)) * _pow_dd(f32(param.gamma), current_step))
    return float(rate), current_step


@register_lr_policy("exp")
def _exp(param, it, current_step):
    _check(param.gamma >= 0, "lr_policy \"exp\" needs gamma >= 0 (got %g)" % param.gamma)
    rate = f32(float(f32(param.base_lr)) * _pow_dd(f32(param.gamma), it))
    return float(rate), current_step


@register_lr_policy("inv")
def _inv(param, it, current_step):
    _check(param.gamma >= 0, "lr_policy \"inv\" needs gamma >= 0 (got %g)" % param.gamma)
    # pow(Dtype(1) + gamma * iter, -power): all float
    base = f32(f32(1) + f32(f32(param.gamma) * f32(it)))
    rate = f32(f32(param.base_lr) * _powf(base, -f32(param.power)))
    return float(rate), current_step


@register_lr_policy("multistep")
def _multistep(param, it, current_step):
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
    _check(param.gamma >= 0, "lr_policy \"multistep\" needs gamma >= 0 (got %g)" % param.gamma)
    rate = f32(float(f32(param.base_lr)) * _pow_dd(f32(param.gamma), current_step))
    return float(rate), current_step


@register_lr_policy("poly")
def _poly(param, it, current_step):
    with np.errstate(all="ignore"):
        frac = f32(f32(it) / f32(param.max_iter))
    rate = f32(f32(param.base_lr) * _powf(f32(f32(1) - frac), f32(param.power)))
    return float(rate), current_step


@register_lr_policy("sigmoid")
def _sigmoid(param, it, current_step):
    _check(param.gamma >= 0, "lr_policy \"sigmoid\" needs gamma >= 0 (got %g)" % param.gamma)
    _check(param.stepsize > 0,
           "lr_policy \"sigmoid\" needs stepsize > 0 (got %d)" % param.stepsize)
    with np.errstate(all="ignore"):
        x = f32(-f32(param.gamma) * f32(f32(it) - f32(param.stepsize)))
        e = f32(np.exp(np.float64(x)))
        q = f32(f32(1) / f32(f32(1) + e))
        rate = f32(f32(param.base_lr) * q)
    return float(rate), current_step


def get_learning_rate(param, it, current_step=0):
    """(rate, new_current_step) for iteration ``it`` under ``param.lr_policy``."""
    policy = param.lr_policy
    fn = _POLICIES.get(policy)
    if fn is None:
        raise SolverError("Unknown learning rate policy: '%s' (lr_policy must be one of: %s)"
                          % (policy, ", ".join(lr_policy_names())))
    return fn(param, it, current_step)


def check_lr_policy(param):
    """Raise SolverError now (at solver construction) for an unknown lr_policy."""
    if param.lr_policy not in _POLICIES:
        raise SolverError("Unknown learning rate policy: '%s' (lr_policy must be one of: %s)"
                          % (param.lr_policy, ", ".join(lr_policy_names())))
