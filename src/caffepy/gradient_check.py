"""Caffe's finite-difference gradient checker (test/gradient_check_util.hpp), for any layer.

The objective is either ½·Σ top² over every top (``top_id=None``) or one top element
(``check_exhaustive`` loops over all of them). The analytic gradient comes from the
layer's backward with ``top.diff = ∂objective/∂top``; the numeric one from central
differences of the objective. An element fails when
``|analytic − numeric| > threshold · max(|analytic|, |numeric|, 1)``.
Use it on your own layers::

    from caffepy.gradient_check import GradientChecker
    GradientChecker(stepsize=1e-2, threshold=1e-3).check_exhaustive(layer, bottom, top)
"""
import numpy as np

from . import backend
from .errors import GradientCheckError  # noqa: F401


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
