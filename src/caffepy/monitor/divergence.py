"""The divergence guard: what to say, and do, when training's loss or gradient is NaN/Inf.

Caffe keeps training through a NaN loss (every later line reads ``loss = nan``).  caffepy's
solver checks each iteration, at the cost of one finiteness test of the loss plus the
gradient's global sum of squares (one dot product per learnable param, the number gradient
clipping needs anyway), and when either is not finite it:

1. names the iteration and where the first non-finite number was made: the first layer in
   forward order whose top data is not finite; when every top is finite, the first layer in
   backward order whose param diff or bottom diff is not finite (the layer whose backward
   produced it);
2. acts on ``Solver.on_nan``:

   - ``"stop"`` (the default): snapshot the last finite state (the weights before the update
     that would have made them non-finite), then raise :class:`caffepy.errors.DivergenceError`
     (``caffepy train`` exits with status 1);
   - ``"snapshot"``: the same snapshot, then keep training as Caffe does;
   - ``"continue"``: only the message; Caffe's behaviour otherwise.

   A run of non-finite iterations is reported once, at its first iteration.
"""
import logging
import math

from .. import backend
from ..errors import DivergenceError, SolverError

log = logging.getLogger("caffepy")

ON_NAN_ACTIONS = ("stop", "snapshot", "continue")


def check_on_nan(value, what="on_nan"):
    if value not in ON_NAN_ACTIONS:
        raise SolverError("%s must be one of %s (got %r)"
                          % (what, ", ".join(ON_NAN_ACTIONS), value))
    return value


def _counts(arr):
    """(#nan, #inf) of an array (NumPy or CuPy)."""
    xp = backend.array_module(arr)
    return int(xp.isnan(arr).sum()), int(xp.isinf(arr).sum())


def _all_finite(arr):
    xp = backend.array_module(arr)
    return bool(xp.isfinite(arr).all())


class Finding:
    """Where a non-finite number sits: ``layer`` (name), ``layer_type``, ``layer_index``,
    ``where`` ("top data", "param diff" or "bottom diff"), ``blob`` (the blob's name, or
    "<layer> param <i>"), ``nan`` and ``inf`` (counts), ``count`` (the blob's size)."""

    def __init__(self, layer_index, layer, layer_type, where, blob, nan, inf, count):
        self.layer_index, self.layer, self.layer_type = layer_index, layer, layer_type
        self.where, self.blob, self.nan, self.inf, self.count = where, blob, nan, inf, count

    def describe(self):
        return ("layer '%s' (%s), %s of %s: %d NaN and %d Inf of %d values"
                % (self.layer, self.layer_type, self.where, self.blob, self.nan, self.inf,
                   self.count))

    def __repr__(self):
        return "Finding(%s)" % self.describe()


def find_non_finite(net):
    """The first place in ``net`` holding a NaN/Inf (see the module doc), or None."""
    layers = net.layers
    for i, layer in enumerate(layers):
        for blob_id in net.top_id_vecs[i]:
            b = net._blobs[blob_id]
            if b.count and not _all_finite(b.data):
                return Finding(i, net.layer_names[i], layer.layer_param.type, "top data",
                               "'%s'" % net.blob_names[blob_id], *_counts(b.data), b.count)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        for j, b in enumerate(layer.blobs):
            if b.count and not _all_finite(b.diff):
                return Finding(i, net.layer_names[i], layer.layer_param.type, "param diff",
                               "param %d" % j, *_counts(b.diff), b.count)
        for k, blob_id in enumerate(net.bottom_id_vecs[i]):
            if not net.bottom_need_backward[i][k]:
                continue
            b = net._blobs[blob_id]
            if b.count and not _all_finite(b.diff):
                return Finding(i, net.layer_names[i], layer.layer_param.type, "bottom diff",
                               "'%s'" % net.blob_names[blob_id], *_counts(b.diff), b.count)
    return None


def weights_finite(net):
    """True when every learnable param of ``net`` holds finite values."""
    return all(_all_finite(b.data) for b in net.learnable_params)


class Divergence:
    """What the guard found at one iteration: ``iteration``, ``loss`` (float),
    ``gradient_norm`` (the global L2 norm, float, inf/nan when it is not finite),
    ``finding`` (a :class:`Finding` or None), ``action`` (the solver's ``on_nan``),
    ``snapshot`` ((model, state) files written, or None)."""

    def __init__(self, iteration, loss, gradient_sumsq, finding, action):
        self.iteration = iteration
        self.loss = float(loss)
        s = float(gradient_sumsq)
        self.gradient_norm = math.sqrt(s) if s >= 0 else float("nan")
        self.finding = finding
        self.action = action
        self.snapshot = None

    def what(self):
        bad = []
        if not math.isfinite(self.loss):
            bad.append("the loss is %s" % _fmt(self.loss))
        if not math.isfinite(self.gradient_norm):
            bad.append("the gradient's L2 norm is %s" % _fmt(self.gradient_norm))
        return " and ".join(bad) or "a value is not finite"

    def message(self):
        where = ("first non-finite value: " + self.finding.describe() if self.finding is not None
                 else "no layer's top data or diff holds a NaN/Inf (the gradient's sum of "
                      "squares overflows float32)")
        return "Iteration %d: %s; %s" % (self.iteration, self.what(), where)

    def __repr__(self):
        return "Divergence(%s)" % self.message()


def _fmt(x):
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else "%g" % x


def gradient_sumsq(params):
    """The squared global L2 norm of the params' diffs, as float32 sums of one dot product
    per param (Caffe's caffe_cpu_dot), on NumPy or CuPy (one device sync)."""
    total = None
    for b in params:
        d = b.flat_diff
        v = d.dot(d)
        total = v if total is None else total + v
    return 0.0 if total is None else float(total)


def handle_divergence(solver, loss, sumsq):
    """The slow path, run only when the loss or the gradient is not finite: report, notify
    the listeners, then act on ``solver.on_nan``."""
    it = solver.iter
    repeated = solver._last_divergence == it - 1 and it > 0
    solver._last_divergence = it
    if repeated and solver.on_nan != "stop":
        return None
    action = solver.on_nan
    report = Divergence(it, loss, sumsq, find_non_finite(solver.net), action)
    log.error("Divergence: %s", report.message())
    for fn in solver._monitors.divergence:
        fn(report)
    solver._emit("divergence", iter=it, loss=report.loss, gradient_norm=report.gradient_norm,
                 layer=report.finding.layer if report.finding is not None else None,
                 message=report.message())
    if action == "continue":
        return report
    if weights_finite(solver.net):
        log.error("Keeping the last finite weights (iteration %d, before this update)", it)
        report.snapshot = solver.snapshot()
    else:
        log.error("The weights are already not finite (an earlier update made them so): "
                  "no snapshot written")
    if action == "stop":
        layer = report.finding.layer if report.finding is not None else None
        msg = "Training diverged at iteration %d: %s" % (it, report.message().split(": ", 1)[1])
        if report.snapshot is not None:
            msg += "; the last finite state is in %s and %s" % report.snapshot
        raise DivergenceError(msg, iteration=it, layer=layer, snapshot=report.snapshot)
    return report

