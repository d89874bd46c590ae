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

The rules are a registry keyed by ``SolverParameter.type``: ``@register_update_rule("Name")``
on an ``UpdateRule`` subclass makes ``type: "Name"`` in a solver prototxt train with it.
"""
import numpy as np

from .. import backend, parallel_chunks
from ..errors import SolverError
from ..kernels import compiled
from ..registry import Registry

f32 = np.float32

_RULES = Registry("Unknown solver type: '%s' (known types: %s)", SolverError, name_attr="name")


def register_update_rule(type_name, cls=None):
    """Register an UpdateRule subclass as the solver type ``type_name`` (without ``cls``, a
    decorator); it sets the class's ``name``."""
    return _RULES.register(type_name, cls)


def update_rule_names():
    return _RULES.names()


def get_update_rule(type_name):
    """The UpdateRule class registered as ``type_name`` (SolverError if there is none)."""
    return _RULES.lookup(type_name)


def find_update_rule(type_name):
    """The UpdateRule class registered as ``type_name``, or None."""
    return _RULES.get(type_name)


def _axpby(alpha, x, beta, y):
    """caffe_cpu_axpby: y = alpha*x + beta*y, as cblas_sscal(beta, y) then saxpy(alpha, x, y)."""
    y *= beta
    y += alpha * x


def _scaled_ratio(xp, num, h, delta, factor, buf, out):
    """out = factor * num / (sqrt(h) + delta), computed in ``buf`` (Caffe's update_/temp_):
    caffe_powx(h, 0.5), caffe_add_scalar(delta), caffe_div(num, buf), then the scale."""
    xp.sqrt(h, out=buf)
    buf += delta
    xp.divide(num, buf, out=buf)
    xp.multiply(buf, factor, out=out)


def _check_no_momentum(param, type_name):
    if param.momentum != 0:
        raise SolverError("Momentum cannot be used with %s (momentum is %g; remove it from "
                          "the solver prototxt)" % (type_name, param.momentum))


def scratch_buffer(scratch, name, like):
    """The work buffer ``scratch[name]`` shaped like ``like``, allocated on first use."""
    b = scratch.get(name)
    if b is None or b.shape != like.shape:
        b = backend.array_module(like).zeros_like(like)
        scratch[name] = b
    return b


class UpdateRule:
    """Base class.  Subclasses set ``history_blobs``, implement ``update`` and are registered
    with ``@register_update_rule("Name")`` (which sets ``name``)."""
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

    def fused_step(self, data, diff, history, local_decay, local_rate):
        """Optional: L2 weight decay (``local_decay``, 0 for none), this rule's update and
        ``data -= diff`` of one param in one pass, with the same bits as the solver's separate
        steps; True when done. The default, False, leaves the solver to run the steps one by
        one."""
        return False


@register_update_rule("SGD")
class SGDRule(UpdateRule):
    """h = momentum*h + lr*g; diff = h (the history holds the lr-scaled velocity).

    Caffe's caffe_cpu_axpby scales h, then adds lr*g: with numba (kernels/compiled.py) that is
    one pass over both arrays, else four NumPy passes with no temporary; the same bits."""

    def __init__(self, param):
        super().__init__(param)
        self._fused = compiled.kernels()

    def update(self, diff, history, local_rate, it, scratch):
        h = history[0]
        momentum = f32(self.param.momentum)
        if (self._fused is not None and type(diff) is np.ndarray
                and diff.flags.c_contiguous and h.flags.c_contiguous):
            rate, sgd = f32(local_rate), self._fused.sgd_momentum
            # the compiled pass releases the GIL: a large param's halves run side by side
            parallel_chunks.elementwise(lambda diff, h: sgd(diff, h, rate, momentum), (diff, h),
                                        compiled=True)
            return
        xp = backend.array_module(diff)
        h *= momentum                              # cblas_sscal(momentum, h)
        xp.multiply(diff, f32(local_rate), out=diff)
        h += diff                                  # saxpy(lr, g, h): h + (lr*g)
        xp.copyto(diff, h)

    def fused_step(self, data, diff, history, local_decay, local_rate):
        """With numba, on the CPU: kernels.sgd_step does weight decay, the update and
        data -= diff in one pass over the three arrays (LeNet's update 0.35 → 0.27 ms, CaffeNet's
        40 → 25 ms). Not for a subclass that replaces ``update``."""
        h = history[0]
        if (self._fused is None or type(self).update is not SGDRule.update
                or not all(type(a) is np.ndarray and a.dtype == np.float32
                           and a.flags.c_contiguous for a in (data, diff, h))):
            return False
        decay, rate, momentum = f32(local_decay), f32(local_rate), f32(self.param.momentum)
        step = self._fused.sgd_step
        # the compiled pass releases the GIL: a large param's parts run side by side
        parallel_chunks.elementwise(
            lambda data, diff, h: step(data, diff, h, decay, rate, momentum), (data, diff, h),
            compiled=True)
        return True


@register_update_rule("Nesterov")
class NesterovRule(UpdateRule):
    """h_old = h; h = momentum*h + lr*g; diff = (1+momentum)*h - momentum*h_old."""

    def update(self, diff, history, local_rate, it, scratch):
        h = history[0]
        momentum = f32(self.param.momentum)
        upd = scratch_buffer(scratch, "update", diff)
        upd[...] = h                                          # caffe_copy(history -> update)
        _axpby(f32(local_rate), diff, momentum, h)            # update history
        _axpby(f32(f32(1) + momentum), h, -momentum, upd)     # compute update: on temp
        diff[...] = upd                                       # copy


@register_update_rule("AdaGrad")
class AdaGradRule(UpdateRule):
    """h += g^2; diff = lr * g / (sqrt(h) + delta)."""

    def check(self, param):
        _check_no_momentum(param, "AdaGrad")

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h = history[0]
        delta = f32(self.param.delta)
        upd = scratch_buffer(scratch, "update", diff)
        xp.multiply(diff, diff, out=upd)       # caffe_powx(g, 2)
        h += upd                               # caffe_add(update, history, history)
        _scaled_ratio(xp, diff, h, delta, f32(local_rate), upd, diff)


@register_update_rule("RMSProp")
class RMSPropRule(UpdateRule):
    """h = rms_decay*h + (1-rms_decay)*g^2; diff = lr * g / (sqrt(h) + delta)."""

    def check(self, param):
        _check_no_momentum(param, "RMSProp")
        if not (0 <= param.rms_decay < 1):
            raise SolverError("rms_decay should lie between 0 and 1 (got %g)" % param.rms_decay)

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h = history[0]
        rms_decay = f32(self.param.rms_decay)
        delta = f32(self.param.delta)
        upd = scratch_buffer(scratch, "update", diff)
        xp.multiply(diff, diff, out=upd)
        _axpby(f32(f32(1) - rms_decay), upd, rms_decay, h)
        _scaled_ratio(xp, diff, h, delta, f32(local_rate), upd, diff)


@register_update_rule("AdaDelta")
class AdaDeltaRule(UpdateRule):
    """ρ = momentum.  h1 = ρh1 + (1-ρ)g²; u = g·sqrt((h2+δ)/(h1+δ)); h2 = ρh2 + (1-ρ)u²;
    diff = lr·u."""
    history_blobs = 2

    def update(self, diff, history, local_rate, it, scratch):
        xp = backend.array_module(diff)
        h1, h2 = history
        momentum = f32(self.param.momentum)
        delta = f32(self.param.delta)
        one_minus = f32(f32(1) - momentum)
        upd = scratch_buffer(scratch, "update", diff)
        temp = scratch_buffer(scratch, "temp", diff)
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


@register_update_rule("Adam")
class AdamRule(UpdateRule):
    """β1 = momentum, β2 = momentum2, ε = delta, t = iter + 1.
    m = β1m + (1-β1)g; v = β2v + (1-β2)g²; diff = lr·sqrt(1-β2^t)/(1-β1^t) · m/(sqrt(v)+ε)."""
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
        temp = scratch_buffer(scratch, "temp", diff)
        _axpby(f32(f32(1) - beta1), diff, beta1, m)   # m
        xp.multiply(diff, diff, out=temp)             # g^2
        _axpby(f32(f32(1) - beta2), temp, beta2, v)   # v
        _scaled_ratio(xp, m, v, eps_hat, f32(f32(local_rate) * correction), temp, diff)
