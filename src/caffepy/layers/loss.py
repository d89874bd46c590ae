"""Loss layers (Caffe's seven LossLayer types) and Accuracy.

Every loss layer writes a scalar (shape ``()``) into top 0; its backward scales by
``top[0].diff`` (the loss weight the framework writes there). Labels are stored as
floats and cast to int as Caffe's ``static_cast<int>`` does (truncation toward zero).

Normalisation (Caffe's ``LossLayer::GetNormalizer``): FULL = outer·inner, VALID =
number of non-ignored positions, BATCH_SIZE = outer, NONE = 1; the result is
``max(1, ·)`` so a batch with every label ignored gives loss 0, not NaN.

caffepy extension: SoftmaxWithLoss (and InfogainLoss, as in Caffe master) may have a
second top, the softmax probabilities. Without an explicit ``loss_weight`` list it
defaults to [1, 0]; a gradient arriving at that top is propagated through the softmax.
"""
import numpy as np

from ..blob import Blob
from ..layer import Layer, LossLayer, register_layer
from ..proto import ProtoError, blobproto_to_array, caffe_pb2, read_binary

_f32 = np.float32
FLT_MIN = _f32(np.finfo(np.float32).tiny)   # 1.17549435e-38
LOG_THRESHOLD = _f32(1e-20)                  # Caffe's kLOG_THRESHOLD
_LP = caffe_pb2.LossParameter
_NORM_NAMES = {_LP.FULL: "FULL", _LP.VALID: "VALID", _LP.BATCH_SIZE: "BATCH_SIZE",
               _LP.NONE: "NONE"}


def _legacy_dim(blob, i):
    """Caffe's Blob::LegacyShape(i): axes past the blob's own read as 1."""
    shape = blob.shape
    return shape[i] if i < len(shape) else 1


def _normalizer(layer, mode, outer, inner, valid_count):
    """LossLayer::GetNormalizer -> a float32 scalar (a 0-d device array for VALID counts)."""
    xp = layer.xp
    if mode == _LP.FULL:
        n = outer * inner
    elif mode == _LP.VALID:
        if valid_count is None:
            n = outer * inner
        else:
            return xp.maximum(valid_count.astype(xp.float32), _f32(1))
    elif mode == _LP.BATCH_SIZE:
        n = outer
    elif mode == _LP.NONE:
        n = 1
    else:
        raise layer.error("unknown normalization mode %r", mode)
    return _f32(max(1.0, float(n)))


def _read_labels(layer, label_blob, shape, num_classes, ignore_label, what="label"):
    """Cast labels to int, mask ignored ones, check the rest lie in [0, num_classes).

    Returns (labels with ignored positions replaced by 0, valid mask or None)."""
    xp = layer.xp
    lab = label_blob.data.reshape(shape).astype(xp.int64)      # static_cast<int>
    out_of_range = (lab < 0) | (lab >= num_classes)
    if ignore_label is not None:
        valid = lab != ignore_label
        out_of_range &= valid
    else:
        valid = None
    if bool(out_of_range.any()):
        flat = out_of_range.ravel()
        pos = int(xp.argmax(flat.astype(xp.int8)))
        value = float(label_blob.flat_data[pos])
        raise layer.error(
            "%s value %g at position %d is out of range: %s must be integer class indices "
            "in [0, %d)%s", what, value, pos, what, num_classes,
            "" if ignore_label is None else " or the ignore_label %d" % ignore_label)
    if valid is not None:
        lab = xp.where(valid, lab, 0)
    return lab, valid


def _data_gradient_wanted(layer, propagate_down):
    """Caffe's loss backward: asking for a gradient of the labels (bottom 1) is an error;
    returns whether the data (bottom 0) wants its gradient."""
    if len(propagate_down) > 1 and propagate_down[1]:
        raise layer.error("cannot backpropagate to label inputs (bottom 1)")
    return propagate_down[0]


def _ignore_label(loss_param):
    return int(loss_param.ignore_label) if loss_param.HasField("ignore_label") else None


def _softmax(xp, x3, out3, red):
    """Softmax over axis 1 of an (outer, C, inner) array, as Caffe's Softmax layer;
    red is (outer, 1, inner) scratch."""
    xp.max(x3, axis=1, keepdims=True, out=red)
    xp.subtract(x3, red, out=out3)
    xp.exp(out3, out=out3)
    xp.sum(out3, axis=1, keepdims=True, out=red)
    out3 /= red


def _index_grid(layer):
    """(arange(outer)[:, None], arange(inner)[None, :]) for indexing an (outer, C, inner)
    array by (outer, inner) labels; rebuilt only when outer or inner change."""
    xp = layer.xp
    grid = getattr(layer, "_grid", None)
    if (grid is None or grid[0].shape[0] != layer.outer or grid[1].shape[1] != layer.inner
            or not isinstance(grid[0], xp.ndarray)):
        grid = layer._grid = (xp.arange(layer.outer)[:, None], xp.arange(layer.inner)[None, :])
    return grid


def _gather(a3, lab, grid):
    """a3[i, lab[i, j], j] for an (outer, C, inner) array and (outer, inner) labels."""
    return a3[grid[0], lab, grid[1]]


def _label_geometry(layer, bottom, axis):
    """Scores split as outer × channels × inner around ``axis``; one label per (outer, inner)
    position (Caffe's SoftmaxWithLoss / Accuracy Reshape checks). Sets layer.axis, .outer,
    .inner, .channels."""
    layer.axis = axis = layer.canonical_axis(bottom[0], axis)
    layer.outer = bottom[0].count_range(0, axis)
    layer.inner = bottom[0].count_range(axis + 1)
    layer.channels = bottom[0].shape[axis]
    if layer.outer * layer.inner != bottom[1].count:
        raise layer.error(
            "number of labels must match number of predictions; e.g., if the axis is 1 and the "
            "prediction shape is (N, C, H, W), the label count must be N*H*W, with integer "
            "values in {0, 1, ..., C-1} (prediction shape %s, axis %d -> %d labels expected, "
            "label shape %s has %d)", bottom[0].shape, axis, layer.outer * layer.inner,
            bottom[1].shape, bottom[1].count)


class _SoftmaxLoss(LossLayer):
    """Shared machinery of SoftmaxWithLoss and InfogainLoss: internal softmax along an axis,
    optional 2nd top = probabilities."""
    max_top_blobs = 2

    def setup(self, bottom, top):
        # Extension: a 2-top loss without explicit loss weights gets [1, 0].
        if len(top) == 2 and len(self.layer_param.loss_weight) == 0:
            self.layer_param.loss_weight.extend([1.0, 0.0])
        super().setup(bottom, top)

    def _softmax_axis_param(self):
        raise NotImplementedError

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        _label_geometry(self, bottom, self._softmax_axis_param())
        if not hasattr(self, "prob"):
            self.prob = Blob()
        self.prob.reshape(bottom[0].shape)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def _write_loss(self, top, logp, lab, valid):
        """top = −Σ logp over the non-ignored positions / the normalizer; keeps what backward needs."""
        count = None
        if valid is not None:
            logp = self.xp.where(valid, logp, _f32(0))
            count = valid.sum()
        self._lab, self._valid = lab, valid
        self._norm = _normalizer(self, self.normalization, self.outer, self.inner, count)
        top[0].data[...] = -logp.sum() / self._norm

    def _shape3(self):
        return (self.outer, self.channels, self.inner)

    def _forward_softmax(self, bottom, top):
        xp = self.xp
        p3 = self.prob.data.reshape(self._shape3())
        red = self.scratch("softmax_red", (self.outer, 1, self.inner))
        _softmax(xp, bottom[0].data.reshape(self._shape3()), p3, red)
        if len(top) > 1:
            top[1].data[...] = self.prob.data
        return p3

    def _finish_backward(self, top, d3):
        """The tail of both backwards: zero the ignored positions, scale by loss weight /
        normalizer, then add the gradient arriving at the probability top (if any)."""
        if self._valid is not None:
            d3 *= self._valid[:, None, :]
        d3 *= (top[0].diff / self._norm).astype(self.xp.float32)
        if len(top) < 2:
            return
        # Backprop a gradient arriving at the probability top (extension; Caffe has none).
        p3 = self.prob.data.reshape(self._shape3())
        dy = top[1].diff.reshape(self._shape3())
        d3 += p3 * (dy - (dy * p3).sum(axis=1, keepdims=True))


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_SoftmaxLoss):
    """−Σ log max(p_label, FLT_MIN) / normalizer, softmax along softmax_param.axis."""

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = _ignore_label(lp)
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        self.prob = Blob()

    def _softmax_axis_param(self):
        return self.layer_param.softmax_param.axis

    def forward_impl(self, bottom, top):
        xp = self.xp
        p3 = self._forward_softmax(bottom, top)
        lab, valid = _read_labels(self, bottom[1], (self.outer, self.inner), self.channels,
                                  self.ignore_label)
        logp = xp.log(xp.maximum(_gather(p3, lab, _index_grid(self)), FLT_MIN))
        self._write_loss(top, logp, lab, valid)

    def backward_impl(self, top, propagate_down, bottom):
        if not _data_gradient_wanted(self, propagate_down):
            return
        lab = self._lab
        d3 = bottom[0].diff.reshape(self._shape3())
        d3[...] = self.prob.data.reshape(self._shape3())
        rows, cols = _index_grid(self)
        d3[rows, lab, cols] -= _f32(1)
        self._finish_backward(top, d3)


@register_layer("InfogainLoss")
class InfogainLossLayer(_SoftmaxLoss):
    """Internal softmax along infogain_loss_param.axis, then
    −Σ_l H[label, l]·log max(p_l, 1e-20) / normalizer. H comes from
    infogain_loss_param.source (a BlobProto file) or from bottom 2."""
    exact_num_bottom_blobs = -1
    min_bottom_blobs = 2
    max_bottom_blobs = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = _ignore_label(lp)
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss; '
                             'use "normalization" instead')
        self.normalization = lp.normalization
        self.prob = Blob()
        self.H = None
        if len(bottom) < 3:
            ip = self.layer_param.infogain_loss_param
            if not ip.HasField("source") or not ip.source:
                raise self.error("the infogain matrix H must be given, either as "
                                 "infogain_loss_param.source or as a third bottom")
            try:
                h = blobproto_to_array(read_binary(ip.source, caffe_pb2.BlobProto()))
            except (ProtoError, OSError) as e:
                raise self.error("cannot read the infogain matrix: %s", e) from None
            self.H = self.xp.asarray(h, dtype=self.xp.float32)

    def _softmax_axis_param(self):
        return self.layer_param.infogain_loss_param.axis

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        h = self.H if len(bottom) < 3 else bottom[2].data
        c = self.channels
        if h.size != c * c:
            raise self.error("the infogain matrix H must be %dx%d (%d classes along axis %d), "
                             "got shape %s", c, c, c, self.axis, tuple(h.shape))

    def _h2(self, bottom):
        h = self.H if len(bottom) < 3 else bottom[2].data
        return h.reshape(self.channels, self.channels)

    def _h_rows(self, bottom, lab):
        """H[label] laid out as (outer, C, inner)."""
        return self._h2(bottom)[lab].transpose(0, 2, 1)

    def forward_impl(self, bottom, top):
        xp = self.xp
        p3 = self._forward_softmax(bottom, top)
        lab, valid = _read_labels(self, bottom[1], (self.outer, self.inner), self.channels,
                                  self.ignore_label)
        logp = xp.log(xp.maximum(p3, LOG_THRESHOLD))
        per_pos = (self._h_rows(bottom, lab) * logp).sum(axis=1)
        self._write_loss(top, per_pos, lab, valid)

    def backward_impl(self, top, propagate_down, bottom):
        wanted = _data_gradient_wanted(self, propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error("cannot backpropagate to the infogain matrix (bottom 2)")
        if not wanted:
            return
        xp = self.xp
        lab = self._lab
        sum_rows = self._h2(bottom).sum(axis=1)
        d3 = bottom[0].diff.reshape(self._shape3())
        p3 = self.prob.data.reshape(self._shape3())
        xp.multiply(p3, sum_rows[lab][:, None, :], out=d3)
        d3 -= self._h_rows(bottom, lab)
        self._finish_backward(top, d3)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Numerically stable cross-entropy of sigmoid(x) against targets t in [0, 1]:
    −Σ [x·(t − [x≥0]) − log(1 + exp(−|x|))] / normalizer (default BATCH_SIZE)."""

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = _ignore_label(lp)
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        else:
            self.normalization = _LP.BATCH_SIZE
        self.sigmoid = Blob()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error("inputs must have the same count (scores %s, targets %s)",
                             bottom[0].shape, bottom[1].shape)
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count_range(1)
        self.sigmoid.reshape(bottom[0].shape)

    def _valid(self, bottom):
        if self.ignore_label is None:
            return None
        return bottom[1].data.astype(self.xp.int64) != self.ignore_label

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = (x >= 0).astype(xp.float32)
        term = x * (t - pos) - xp.log1p(xp.exp(-xp.abs(x)))
        valid = self._valid(bottom)
        count = None
        if valid is not None:
            valid = valid.reshape(x.shape)
            term = xp.where(valid, term, _f32(0))
            count = valid.sum()
        self._valid_mask = valid
        self._norm = _normalizer(self, self.normalization, self.outer, self.inner, count)
        top[0].data[...] = -term.sum() / self._norm
        # Caffe's Sigmoid layer (master): 0.5·tanh(0.5·x) + 0.5
        s = self.sigmoid.data
        xp.multiply(x, _f32(0.5), out=s)
        xp.tanh(s, out=s)
        s *= _f32(0.5)
        s += _f32(0.5)

    def backward_impl(self, top, propagate_down, bottom):
        if not _data_gradient_wanted(self, propagate_down):
            return
        xp = self.xp
        d = bottom[0].diff
        xp.subtract(self.sigmoid.data, bottom[1].data.reshape(d.shape), out=d)
        if self._valid_mask is not None:
            d *= self._valid_mask
        d *= (top[0].diff / self._norm).astype(xp.float32)


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """Σ(a − b)² / (2N), N = shape(0). Both bottoms take gradients (±)."""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error("inputs must have the same dimension (shapes %s and %s)",
                             bottom[0].shape, bottom[1].shape)
        if not hasattr(self, "diff"):
            self.diff = Blob()
        self.diff.reshape(bottom[0].shape)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1

    def forward_impl(self, bottom, top):
        xp = self.xp
        d = self.diff.data
        xp.subtract(bottom[0].data, bottom[1].data.reshape(d.shape), out=d)
        dot = xp.vdot(self.diff.flat_data, self.diff.flat_data)
        top[0].data[...] = dot / _f32(self.num) / _f32(2)

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        for i in (0, 1):
            if propagate_down[i]:
                sign = _f32(1) if i == 0 else _f32(-1)
                alpha = (sign * top[0].diff / _f32(self.num)).astype(xp.float32)
                xp.multiply(self.diff.data.reshape(bottom[i].shape), alpha, out=bottom[i].diff)


@register_layer("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge: t = x with the true-class entry negated;
    L1: Σ max(0, 1 + t)/N, L2: Σ max(0, 1 + t)²/N."""

    def layer_setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise self.error("unknown norm %r", self.norm)
        self.margins = Blob()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // self.num if self.num else 0
        self.margins.reshape((self.num, self.dim))

    def _labels(self, bottom):
        xp = self.xp
        lab_blob = bottom[1]
        lab = lab_blob.flat_data[:self.num].astype(xp.int64)
        bad = (lab < 0) | (lab >= self.dim)
        if bool(bad.any()):
            pos = int(xp.argmax(bad.astype(xp.int8)))
            raise self.error("label value %g at position %d is out of range: labels must be "
                             "integer class indices in [0, %d)",
                             float(lab_blob.flat_data[pos]), pos, self.dim)
        return xp.arange(self.num), lab

    def forward_impl(self, bottom, top):
        xp = self.xp
        rows, lab = self._labels(bottom)
        self._rows, self._lab = rows, lab
        m = self.margins.data
        m[...] = bottom[0].data.reshape(m.shape)
        m[rows, lab] *= _f32(-1)
        m += _f32(1)
        xp.maximum(m, _f32(0), out=m)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            loss = m.sum()
        else:
            loss = xp.vdot(self.margins.flat_data, self.margins.flat_data)
        top[0].data[...] = loss / _f32(self.num)

    def backward_impl(self, top, propagate_down, bottom):
        if not _data_gradient_wanted(self, propagate_down):
            return
        xp = self.xp
        d = bottom[0].diff.reshape(self.margins.shape)
        d[...] = self.margins.data
        d[self._rows, self._lab] *= _f32(-1)
        w = top[0].diff
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            xp.sign(d, out=d)
            d *= (w / _f32(self.num)).astype(xp.float32)
        else:
            d *= (w * _f32(2) / _f32(self.num)).astype(xp.float32)


@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """(1/2N) Σ [ y·d² + (1 − y)·max(margin − d, 0)² ] over pairs (a, b, y);
    legacy_version: max(margin − d², 0) for dissimilar pairs."""
    exact_num_bottom_blobs = 3
    min_bottom_blobs = -1

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = _f32(p.margin)
        self.legacy = bool(p.legacy_version)
        self.diff = Blob()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, b in enumerate(bottom):
            if b.num_axes > 4:
                raise self.error("bottom %d must have at most 4 axes (N x C x 1 x 1), got shape %s",
                                 i, b.shape)
        a, b, y = bottom
        if _legacy_dim(a, 1) != _legacy_dim(b, 1):
            raise self.error("bottoms 0 and 1 must have the same number of channels "
                             "(shapes %s and %s)", a.shape, b.shape)
        for i in (0, 1):
            if _legacy_dim(bottom[i], 2) != 1 or _legacy_dim(bottom[i], 3) != 1:
                raise self.error("bottom %d must be N x C (x 1 x 1), got shape %s",
                                 i, bottom[i].shape)
        if any(_legacy_dim(y, k) != 1 for k in (1, 2, 3)):
            raise self.error("the similarity bottom 2 must be N (x 1 x 1 x 1), got shape %s",
                             y.shape)
        self.num = a.shape[0] if a.num_axes else 1
        self.channels = _legacy_dim(a, 1)
        if b.count != a.count or y.count != self.num:
            raise self.error("bottoms must hold N pairs: shapes %s, %s and similarity %s",
                             a.shape, b.shape, y.shape)
        self.diff.reshape((self.num, self.channels))

    def forward_impl(self, bottom, top):
        xp = self.xp
        d = self.diff.data
        xp.subtract(bottom[0].data.reshape(d.shape), bottom[1].data.reshape(d.shape), out=d)
        dist_sq = (d * d).sum(axis=1)
        similar = bottom[2].data.reshape(self.num).astype(xp.int64) != 0
        if self.legacy:
            dis = xp.maximum(self.margin - dist_sq, _f32(0))
        else:
            dis = xp.maximum(self.margin - xp.sqrt(dist_sq), _f32(0))
            dis = dis * dis
        self._dist_sq, self._similar = dist_sq, similar
        loss = xp.where(similar, dist_sq, dis).sum()
        top[0].data[...] = loss / _f32(self.num) / _f32(2)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the similarity input (bottom 2)")
        xp = self.xp
        dist_sq, similar = self._dist_sq, self._similar
        for i in (0, 1):
            if not propagate_down[i]:
                continue
            sign = _f32(1) if i == 0 else _f32(-1)
            alpha = (sign * top[0].diff / _f32(self.num)).astype(xp.float32)
            if self.legacy:
                mdist = self.margin - dist_sq
                beta = -alpha * xp.ones_like(dist_sq)
            else:
                dist = xp.sqrt(dist_sq)
                mdist = self.margin - dist
                beta = -alpha * mdist / (dist + _f32(1e-4))
            coef = xp.where(similar, alpha, xp.where(mdist > 0, beta, _f32(0)))
            xp.multiply(self.diff.data, coef.astype(xp.float32)[:, None],
                        out=bottom[i].diff.reshape(self.diff.shape))


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """−(1/N) Σ log max(p[label], 1e-20); bottom 0 holds probabilities (N x C)."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        lab = bottom[1]
        if lab.num_axes > 4 or any(_legacy_dim(lab, k) != 1 for k in (1, 2, 3)):
            raise self.error("the label bottom must be N (x 1 x 1 x 1), got shape %s", lab.shape)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // self.num if self.num else 0

    def forward_impl(self, bottom, top):
        xp = self.xp
        lab, _ = _read_labels(self, bottom[1], (self.num,), self.dim, None)
        rows = xp.arange(self.num)
        p = xp.maximum(bottom[0].data.reshape(self.num, self.dim)[rows, lab], LOG_THRESHOLD)
        self._rows, self._lab, self._p = rows, lab, p
        top[0].data[...] = -xp.log(p).sum() / _f32(self.num)

    def backward_impl(self, top, propagate_down, bottom):
        if not _data_gradient_wanted(self, propagate_down):
            return
        xp = self.xp
        d = bottom[0].diff.reshape(self.num, self.dim)
        d[...] = 0
        scale = (-top[0].diff / _f32(self.num)).astype(xp.float32)
        d[self._rows, self._lab] = scale / self._p


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """Top-k accuracy along accuracy_param.axis. A class whose score ties the true class's
    score ranks above it (Caffe master). Optional 2nd top: per-class accuracy (length C).
    Output is 0 when every position is ignored. No backward."""
    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2

    def allow_force_backward(self, bottom_index):
        # Caffe would abort (NOT_IMPLEMENTED) under force_backward; caffepy just skips it.
        return False

    def layer_setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        p = self.layer_param.accuracy_param
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.error("top_k must be less than or equal to the number of classes "
                             "(top_k %d, scores %s, labels %s)",
                             self.top_k, bottom[0].shape, bottom[1].shape)
        _label_geometry(self, bottom, p.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))

    def forward_impl(self, bottom, top):
        xp = self.xp
        C = self.channels
        s3 = bottom[0].data.reshape(self.outer, C, self.inner)
        lab, valid = _read_labels(self, bottom[1], (self.outer, self.inner), C,
                                  self.ignore_label)
        true_score = _gather(s3, lab, _index_grid(self))
        # Caffe counts every class scoring >= the true one, the true class itself included.
        ge = self.scratch("ge", s3.shape, xp.bool_)
        xp.greater_equal(s3, true_score[:, None, :], out=ge)
        num_better = ge.sum(axis=1) - 1
        hit = num_better < self.top_k
        if valid is not None:
            hit &= valid
            count = valid.sum()
        else:
            count = xp.asarray(self.outer * self.inner)
        hits = hit.sum()
        top[0].data[...] = hits.astype(xp.float32) / xp.maximum(count, 1).astype(xp.float32)
        if len(top) > 1:
            flat_lab = lab.ravel()
            w = (xp.ones(flat_lab.shape, dtype=xp.float32) if valid is None
                 else valid.ravel().astype(xp.float32))
            nums = xp.bincount(flat_lab, weights=w, minlength=C).astype(xp.float32)
            hits_c = xp.bincount(flat_lab, weights=hit.ravel().astype(xp.float32),
                                 minlength=C).astype(xp.float32)
            top[1].data[...] = xp.where(nums == 0, _f32(0),
                                        hits_c / xp.maximum(nums, _f32(1)))
