"""Update rules (Caffe's ``ComputeUpdateValue``) for SGD, Nesterov, AdaGrad, RMSProp,
AdaDelta and Adam.

Each rule works on one learnable parameter at a time, on whole flat float32 arrays, in
place, and follows the C++ CPU code operation by operation (``caffe_cpu_axpby`` is
``y *= beta; y += alpha * x``, ``caffe_powx(x, 2)`` is ``x * x`` and so on), so the float32
rounding is Caffe's.  After ``update(...)`` the parameter's diff holds the value that
``Net::Update`` subtracts from the weights.

``history`` is the list of history arrays the rule keeps for *one* parameter
(``history_blobs`` of them: 1, or 2 for AdaDelta/Adam whose second half lives at
``history[N + p]`` in the solverstate).
"""
import numpy as np

from . import backend
from .lr_policies import SolverError

f32 = np.float32


def _axpby(alpha, x, beta, y):
    """caffe_cpu_axpby: y = alpha*x + beta*y, as cblas_sscal(beta, y) then saxpy(alpha, x, y)."""
    y *= beta
    y += alpha * x


class UpdateRule:
    """Base class.  Subclasses set ``name``, ``history_blobs`` and implement ``update``."""
    name = None
    history_blobs = 1

    def __init__(self, param):
        self.param = param
        self.check(param)

    def check(self, param):
        """Raise SolverError for settings Caffe CHECK-fails on (constructor sanity checks)."""

    def update(self, diff, history, local_rate, it, scratch):
        """Turn ``diff`` (the regularised gradient, flat float32) into the update value.

        ``history``: this param's history arrays; ``local_rate``: float32 rate * lr_mult;
        ``it``: the solver iteration (before increment); ``scratch``: a dict for per-param
        work buffers (``update``/``temp`` in Caffe) the rule may allocate lazily.
        """
        raise NotImplementedError

    @staticmethod
    def _buf(scratch, name, like):
        b = scratch.get(name)
        if b is None or b.shape != like.shape:
            b = backend.array_module(like).zeros_like(like)
            scratch[name] = b
        return b


class SGDRule(UpdateRule):
    """h = momentum*h + lr*g; diff = h (the history holds the lr-scaled velocity)."""
    name = "SGD"

    def update(self, diff, history, local_rate, it, scratch):
        h = history[0]
        _axpby(f32(local_rate), diff, f32(self.param.momentum), h)
        diff[...] = h


class NesterovRule(UpdateRule):
    """h_old = h; h = momentum*h + lr*g; diff = (1+momentum)*h - momentum*h_old."""
    name = "Nesterov"

    def update(self, diff, history, local_rate, it, scratch):
        h = history[0]
        momentum = f32(self.param.momentum)
        upd = self._buf(scratch, "update", diff)
        upd[...] = h                                          # caffe_copy(history -> update)
        _axpby(f32(local_rate), diff, momentum, h)            # update history
        _axpby(f32(f32(1) + momentum), h, -momentum, upd)     # compute update: on temp
        diff[...] = upd                                       # copy


class AdaGradRule(UpdateRule):
    """h += g^2; diff = lr * g / (sqrt(h) + delta)."""
    name = "AdaGrad"

    def check(self, param):
        if param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad (momentum is %g; "
                              "remove it from the solver prototxt)" % param.momentum)

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h = history[0]
        delta = f32(self.param.delta)
        upd = self._buf(scratch, "update", diff)
        xp.multiply(diff, diff, out=upd)       # caffe_powx(g, 2)
        h += upd                               # caffe_add(update, history, history)
        xp.sqrt(h, out=upd)                    # caffe_powx(history, 0.5)
        upd += delta                           # caffe_add_scalar
        xp.divide(diff, upd, out=upd)          # caffe_div(g, update)
        xp.multiply(upd, f32(local_rate), out=diff)   # axpby(lr, update, 0, diff)


class RMSPropRule(UpdateRule):
    """h = rms_decay*h + (1-rms_decay)*g^2; diff = lr * g / (sqrt(h) + delta)."""
    name = "RMSProp"

    def check(self, param):
        if param.momentum != 0:
            raise SolverError("Momentum cannot be used with RMSProp (momentum is %g; "
                              "remove it from the solver prototxt)" % param.momentum)
        if not (param.rms_decay >= 0):
            raise SolverError("rms_decay should lie between 0 and 1 (got %g)" % param.rms_decay)
        if not (param.rms_decay < 1):
            raise SolverError("rms_decay should lie between 0 and 1 (got %g)" % param.rms_decay)

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h = history[0]
        rms_decay = f32(self.param.rms_decay)
        delta = f32(self.param.delta)
        upd = self._buf(scratch, "update", diff)
        xp.multiply(diff, diff, out=upd)
        _axpby(f32(f32(1) - rms_decay), upd, rms_decay, h)
        xp.sqrt(h, out=upd)
        upd += delta
        xp.divide(diff, upd, out=upd)
        xp.multiply(upd, f32(local_rate), out=diff)


class AdaDeltaRule(UpdateRule):
    """ρ = momentum.  h1 = ρh1 + (1-ρ)g²; u = g·sqrt((h2+δ)/(h1+δ)); h2 = ρh2 + (1-ρ)u²;
    diff = lr·u."""
    name = "AdaDelta"
    history_blobs = 2

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h1, h2 = history
        momentum = f32(self.param.momentum)
        delta = f32(self.param.delta)
        one_minus = f32(f32(1) - momentum)
        upd = self._buf(scratch, "update", diff)
        temp = self._buf(scratch, "temp", diff)
        xp.multiply(diff, diff, out=upd)          # square of gradient
        _axpby(one_minus, upd, momentum, h1)      # update history of gradients
        temp[...] = delta                         # caffe_set(delta)
        xp.add(temp, h2, out=upd)                 # update = delta + h2
        xp.add(temp, h1, out=temp)                # temp = delta + h1
        xp.divide(upd, temp, out=upd)
        xp.sqrt(upd, out=upd)
        xp.multiply(diff, upd, out=diff)          # diff = g * rms ratio
        xp.multiply(diff, diff, out=upd)          # square of update
        _axpby(one_minus, upd, momentum, h2)      # update history of updates
        xp.multiply(diff, f32(local_rate), out=diff)   # caffe_cpu_scale(lr, diff)


class AdamRule(UpdateRule):
    """β1 = momentum, β2 = momentum2, ε = delta, t = iter + 1.
    m = β1m + (1-β1)g; v = β2v + (1-β2)g²; diff = lr·sqrt(1-β2^t)/(1-β1^t) · m/(sqrt(v)+ε)."""
    name = "Adam"
    history_blobs = 2

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        m, v = history
        beta1 = f32(self.param.momentum)
        beta2 = f32(self.param.momentum2)
        eps_hat = f32(self.param.delta)
        t = it + 1
        # sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1) - pow(beta1, t)): double, stored as Dtype
        correction = f32(np.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        temp = self._buf(scratch, "temp", diff)
        _axpby(f32(f32(1) - beta1), diff, beta1, m)   # m
        xp.multiply(diff, diff, out=temp)             # g^2
        _axpby(f32(f32(1) - beta2), temp, beta2, v)   # v
        xp.sqrt(v, out=temp)
        temp += eps_hat
        xp.divide(m, temp, out=temp)
        xp.multiply(temp, f32(f32(local_rate) * correction), out=diff)


UPDATE_RULES = {r.name: r for r in (SGDRule, NesterovRule, AdaGradRule, RMSPropRule,
                                    AdaDeltaRule, AdamRule)}
