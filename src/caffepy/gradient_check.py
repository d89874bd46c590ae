"""Caffe's finite-difference gradient checker (test/gradient_check_util.hpp), for any layer.

The objective is either ½·Σ top² over every top (``top_id=None``) or one top element
(``check_exhaustive`` loops over all of them). The analytic gradient comes from the
layer's backward with ``top.diff = ∂objective/∂top``; the numeric one from central
differences of the objective. An element fails when
``|analytic − numeric| > threshold · max(|analytic|, |numeric|, 1)``.
Use it on your own layers::

    from caffepy.gradient_check import GradientChecker
    GradientChecker(stepsize=1e-2, threshold=1e-3).check_exhaustive(layer, bottom, top)

and ``check_regularizer`` on your own regularizers: the gradient ``regularize`` adds against
central differences of ``penalty`` (evaluated in float64), on random weights with some
all-zero groups::

    from caffepy.gradient_check import check_regularizer
    check_regularizer(GroupLasso(1e-2, kind="shape"), shape=(8, 2, 3, 3), conv_group=2)
"""
import numpy as np

from . import backend
from .blob import Blob
from .errors import GradientCheckError, RegularizerError
from .proto import caffe_pb2, parse_text
from .regularizers import RegularizeContext


class GradientChecker:
    def __init__(self, stepsize=1e-2, threshold=1e-3, seed=1701, kink=0.0, kink_range=-1.0):
        self.stepsize = stepsize
        self.threshold = threshold
        self.seed = seed
        self.kink = kink
        self.kink_range = kink_range

    # The objective and its gradient w.r.t. the tops.
    @staticmethod
    def _objective(top, top_id, top_data_id):
        loss = 0.0
        if top_id is None:
            for t in top:
                d = backend.to_numpy(t.data).astype(np.float64)
                loss += 0.5 * float((d * d).sum())
                t.diff[...] = t.data
        else:
            for t in top:
                t.diff[...] = 0
            t = top[top_id]
            flat = t.flat_diff
            flat[top_data_id] = 1.0
            loss = float(backend.to_numpy(t.flat_data)[top_data_id])
        return loss

    def check_single(self, layer, bottom, top, check_bottom=None, top_id=None, top_data_id=None,
                     element_wise=False, check_params=True):
        """Check one objective. ``check_bottom``: None = all bottoms, or an index."""
        if element_wise:
            for t in top:
                if t.count != bottom[0].count:
                    raise ValueError("element_wise checking needs tops the size of the bottom")
        blobs = []
        names = []
        if check_params:
            for j, b in enumerate(layer.blobs):
                blobs.append(b)
                names.append("param %d" % j)
        propagate_down = [False] * len(bottom)
        for i, b in enumerate(bottom):
            if check_bottom is None or check_bottom == i:
                blobs.append(b)
                names.append("bottom %d" % i)
                propagate_down[i] = True
        if not blobs:
            raise ValueError("no blobs to check")
        # analytic gradient
        for b in blobs:
            b.diff[...] = 0
        backend.set_random_seed(self.seed)
        layer.forward(bottom, top)
        self._objective(top, top_id, top_data_id)
        layer.backward(top, propagate_down, bottom)
        computed = [backend.to_numpy(b.flat_diff).copy() for b in blobs]
        for bi, b in enumerate(blobs):
            flat = b.flat_data
            for k in range(b.count):
                if element_wise and top_data_id is not None and k != top_data_id:
                    continue
                x = float(backend.to_numpy(flat[k]))
                flat[k] = x + self.stepsize
                backend.set_random_seed(self.seed)
                layer.forward(bottom, top)
                pos = self._objective(top, top_id, top_data_id)
                flat[k] = x - self.stepsize
                backend.set_random_seed(self.seed)
                layer.forward(bottom, top)
                neg = self._objective(top, top_id, top_data_id)
                flat[k] = x
                estimated = (pos - neg) / self.stepsize / 2.0
                analytic = float(computed[bi][k])
                if self.kink_range < 0 or abs(x - self.kink) > self.kink_range:
                    scale = max(abs(analytic), abs(estimated), 1.0)
                    if abs(analytic - estimated) > self.threshold * scale:
                        raise GradientCheckError(
                            "layer '%s' (%s): gradient of %s element %d (objective: %s) "
                            "analytic %.6g vs numeric %.6g"
                            % (layer.name, layer.type, names[bi], k,
                               "½Σtop²" if top_id is None else "top %d[%d]" % (top_id, top_data_id),
                               analytic, estimated))
        # Leave the tops as the layer set them up: loss tops' diffs hold their loss weights again.
        for i, t in enumerate(top):
            if layer.loss(i):
                t.diff[...] = layer.loss(i)

    def check(self, layer, bottom, top, check_bottom=None, **kw):
        """½·Σ top² objective (Caffe's CheckGradient)."""
        self.check_single(layer, bottom, top, check_bottom, None, None, **kw)

    def check_exhaustive(self, layer, bottom, top, check_bottom=None, **kw):
        """One check per top element (Caffe's CheckGradientExhaustive)."""
        for ti, t in enumerate(top):
            for k in range(t.count):
                self.check_single(layer, bottom, top, check_bottom, ti, k, **kw)

    def check_eltwise(self, layer, bottom, top, **kw):
        """Element-wise layers: top[k] depends only on bottom[k] (Caffe's CheckGradientEltwise)."""
        for ti, t in enumerate(top):
            for k in range(t.count):
                self.check_single(layer, bottom, top, None, ti, k, element_wise=True,
                                  check_params=False, **kw)


def check_layer(layer_param, bottom_arrays, phase=None, stepsize=1e-2, threshold=1e-3,
                check_bottom=None, exhaustive=False, kink=0.0, kink_range=-1.0, seed=1701,
                top_count=None):
    """Build a layer from a LayerParameter (or prototxt text), set it up on fresh blobs
    holding ``bottom_arrays``, and check its gradients. Returns (layer, bottom, top)."""
    from .layer import build_layer
    backend.set_random_seed(seed)
    layer, bottom, top = build_layer(layer_param, bottom_arrays, top_count, phase)
    checker = GradientChecker(stepsize, threshold, seed=seed, kink=kink, kink_range=kink_range)
    if exhaustive:
        checker.check_exhaustive(layer, bottom, top, check_bottom)
    else:
        checker.check(layer, bottom, top, check_bottom)
    return layer, bottom, top


# -- regularizers ------------------------------------------------------------------------------

class ArrayBlob:
    """A stand-in Blob over plain arrays (any dtype): what ``check_regularizer`` hands a
    regularizer's ``penalty`` so the penalty is evaluated in float64."""

    def __init__(self, data, diff=None):
        self.data = data
        xp = backend.array_module(data)
        self.diff = xp.zeros_like(data) if diff is None else diff

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def count(self):
        return int(self.data.size)

    @property
    def num_axes(self):
        return self.data.ndim

    @property
    def flat_data(self):
        return self.data.reshape(-1)

    @property
    def flat_diff(self):
        return self.diff.reshape(-1)


class RegularizerCheck:
    """The outcome of ``check_regularizer``: ``passed``, ``name``, ``shape``, ``count``,
    ``max_abs_error``, ``max_rel_error`` (relative to max(|analytic|, |numeric|, floor)),
    ``analytic`` and ``numeric`` (float64 arrays of the blob's shape), ``penalty`` (at the
    checked weights), ``failures`` ([(flat index, analytic, numeric)]) and ``message``."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return "RegularizerCheck(%s %s: %s)" % (self.name, self.shape,
                                                "passed" if self.passed else self.message)


def default_zero_groups(shape):
    """Index expressions zeroing some whole groups of a weight blob: the first filter (row 0
    of the M × C view) and the last column of the view (in every conv group)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return [np.s_[:1]] if shape and shape[0] > 1 else []
    m = shape[0]
    c = int(np.prod(shape[1:]))
    zero = []
    if m > 1:
        zero.append(np.s_[0])
    if c > 1:
        last = np.unravel_index(c - 1, shape[1:])
        zero.append((slice(None),) + tuple(int(i) for i in last))
    return zero


def check_regularizer(regularizer, shape=(6, 4, 3, 3), weights=None, zero="default", *,
                      layer_name="layer", layer_type=None, param_spec=None, conv_group=1,
                      blob_index=0, decay_mult=1.0, lr_mult=1.0, solver_param=None,
                      stepsize=1e-3, threshold=1e-3, seed=1701, raise_on_failure=True):
    """Check a regularizer's gradient against central differences of its penalty.

    Weights: ``weights`` (an array), else random with |w| in [0.2, 1] (away from the L1 kink),
    then the groups named by ``zero`` (index expressions into the weights, or a function
    ``f(w)`` that zeroes in place; "default": ``default_zero_groups``; None/[]: none) are set
    to 0. The analytic gradient is what ``regularize`` adds to a float32 Blob's diff (it must
    add, not overwrite, and must leave the data alone); the numeric one is
    ``(P(w + h·e_k) − P(w − h·e_k)) / 2h`` with ``penalty`` evaluated on float64 weights. An
    element fails when ``|analytic − numeric| > threshold · max(|analytic|, |numeric|,
    1e-3 · max|numeric|)``. The context describes param 0 of ``layer_name`` (``layer_type``,
    ``param_spec`` — a ParamSpec or its prototxt text —, ``conv_group``, ``blob_index``,
    ``decay_mult``, ``lr_mult``, ``solver_param``).

    Returns a RegularizerCheck; raises GradientCheckError on failure when
    ``raise_on_failure``.
    """
    if isinstance(param_spec, str):
        param_spec = parse_text(param_spec, caffe_pb2.ParamSpec())
    rng = np.random.default_rng(seed)
    if weights is None:
        shape = tuple(int(d) for d in shape)
        w = rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        w = np.array(backend.to_numpy(weights), dtype=np.float64)
        shape = w.shape
    w = w.astype(np.float32)
    if zero == "default":
        zero = default_zero_groups(shape)
    if callable(zero):
        zero(w)
    elif zero:
        for idx in zero:
            w[idx] = 0
    w64 = w.astype(np.float64)
    if layer_type is None:
        layer_type = "Convolution" if len(shape) == 4 else "InnerProduct"
    xp = backend.xp()
    name = getattr(regularizer, "name", type(regularizer).__name__)
    weight_decay = float(solver_param.weight_decay) if solver_param is not None else 0.0
    ctx = RegularizeContext(
        solver=None, net=None, param_id=0, layer=None, layer_name=layer_name,
        layer_type=layer_type, blob_index=blob_index, param_spec=param_spec,
        conv_group=conv_group, history=[], rate=0.01, lr_mult=lr_mult, decay_mult=decay_mult,
        local_rate=float(np.float32(0.01) * np.float32(lr_mult)),
        local_decay=float(np.float32(weight_decay) * np.float32(decay_mult)), iter=0,
        param=solver_param, xp=xp)
    sel = getattr(regularizer, "selects", None)
    if sel is not None and not sel(ctx):
        raise RegularizerError("regularizer '%s' does not apply to layer '%s' blob %d (check "
                               "its layers / blob_indices)" % (name, layer_name, blob_index))

    blob = Blob(shape)
    blob.data[...] = xp.asarray(w)
    blob.diff[...] = 0
    regularizer.regularize(0, blob, ctx)
    analytic = backend.to_numpy(blob.diff).astype(np.float64)
    problems = []
    if not np.array_equal(backend.to_numpy(blob.data), w):
        problems.append("regularize() changed blob.data (it must only add to blob.diff)")
    # it must add to the diff, not overwrite it
    start = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    blob.data[...] = xp.asarray(w)
    blob.diff[...] = xp.asarray(start)
    regularizer.regularize(0, blob, ctx)
    got = backend.to_numpy(blob.diff).astype(np.float64)
    want = start.astype(np.float64) + analytic
    tol = 1e-6 * (np.abs(start).max(initial=0) + np.abs(analytic).max(initial=0)) + 1e-30
    if not np.all(np.abs(got - want) <= tol):
        problems.append("regularize() must add its gradient to blob.diff: with a non-zero diff "
                        "the result is off by up to %.3g" % float(np.abs(got - want).max()))

    pblob = ArrayBlob(xp.asarray(w64))
    flat = pblob.flat_data
    numeric = np.zeros(w64.size)
    base = float(regularizer.penalty(0, pblob, ctx))
    h = float(stepsize)
    for k in range(w64.size):
        x = float(w64.flat[k])
        flat[k] = x + h
        pos = float(regularizer.penalty(0, pblob, ctx))
        flat[k] = x - h
        neg = float(regularizer.penalty(0, pblob, ctx))
        flat[k] = x
        numeric[k] = (pos - neg) / (2.0 * h)
    numeric = numeric.reshape(shape)
    a, n = analytic.ravel(), numeric.ravel()
    err = np.abs(a - n)
    floor = max(1e-3 * max(np.abs(n).max(initial=0), np.abs(a).max(initial=0)), 1e-30)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    rel = err / scale
    bad = np.nonzero(rel > threshold)[0]
    failures = [(int(k), float(a[k]), float(n[k])) for k in bad]
    if failures:
        k, av, nv = failures[0]
        problems.append("gradient of element %d %s: analytic %.6g vs numeric %.6g (%d of %d "
                        "elements off)" % (k, tuple(int(i) for i in np.unravel_index(k, shape)),
                                           av, nv, len(failures), a.size))
    result = RegularizerCheck(
        name=name, shape=tuple(shape), count=int(a.size), passed=not problems,
        max_abs_error=float(err.max(initial=0)), max_rel_error=float(rel.max(initial=0)),
        analytic=analytic, numeric=numeric, penalty=base, failures=failures,
        message="; ".join(problems) if problems else "ok")
    if problems and raise_on_failure:
        raise GradientCheckError("regularizer '%s' on layer '%s' blob %d %s: %s"
                                 % (name, layer_name, blob_index, tuple(shape), result.message))
    return result
