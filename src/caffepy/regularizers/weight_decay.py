"""Caffe's weight decay (``SGDSolver::Regularize``) with the SSL fork's per-param extensions,
and the L1 / L2 / ElasticNet penalties as plug-ins.

Weight decay for one learnable param: ``local_decay = weight_decay · decay_mult`` (float32);
the type is the ParamSpec's ``regularization_type`` when it is set, else the solver's.
"L2" adds ``local_decay · w`` to the diff (penalty ``local_decay/2 · Σ w²``), "L1" adds
``local_decay · sign(w)`` (penalty ``local_decay · Σ|w|``; sign(0) = 0). With a ParamSpec
``decay_proto`` (a binary BlobProto of per-weight multipliers D, the shape of the param) "L2"
adds ``local_decay · (w ⊙ D)`` (penalty ``local_decay/2 · Σ w·(w⊙D)``) and "L1"
``local_decay · sign(w) ⊙ D`` (penalty ``local_decay · Σ|w⊙D|``).
"""
import numpy as np

from .. import backend, parallel_chunks
from ..errors import ProtoError, RegularizerError, SolverError
from ..kernels import compiled
from ..proto import caffe_pb2
from ..proto.blobproto import blobproto_shape_equals, blobproto_to_array
from ..proto.files import read_binary
from .base import RegularizeContext, Regularizer, register_regularizer

f32 = np.float32
TYPES = ("L2", "L1")
TEMP_BLOCK = 1 << 16      # elements of the CPU work buffer per thread


def apply_weight_decay(regularization_type, local_decay, data, diff, temp=None, decay=None):
    """Caffe's Regularize for one param: flat float32 ``data``/``diff`` arrays, in place.

    ``temp`` is an optional 1-D work buffer (Caffe's ``temp_``), as long as ``data`` or
    shorter: a shorter one is used a block at a time; with it no array is allocated. ``decay``
    is the optional flat array of per-weight multipliers D (``decay_proto``). The numbers are
    the same with or without ``temp``, whatever its length.
    """
    local_decay = f32(local_decay)
    if not local_decay:
        return
    xp = backend.array_module(diff)
    if regularization_type == "L2" and decay is None and xp is np:
        k = compiled.kernels()
        if k is not None and data.flags.c_contiguous and diff.flags.c_contiguous:
            # one compiled pass (it releases the GIL: a large param's halves run side by side)
            parallel_chunks.elementwise(lambda data, diff: k.l2_decay(data, diff, local_decay),
                                        (data, diff), compiled=True)
            return
    if temp is None:
        if regularization_type == "L2" and decay is None:
            diff += local_decay * data                        # caffe_axpy
            return
        temp = xp.empty_like(data)
    arrays = (data, diff) if decay is None else (data, diff, decay)
    if regularization_type == "L2":
        def l2(data, diff, *rest):
            work = rest[-1]
            if decay is None:
                xp.multiply(data, local_decay, out=work)      # caffe_axpy's alpha·w
            else:
                xp.multiply(data, rest[0], out=work)          # caffe_mul(w, D)
                xp.multiply(work, local_decay, out=work)
            diff += work
        # a small ``temp`` is walked block by block; large params run on all the cores
        parallel_chunks.elementwise_with_temp(l2, arrays, temp)
    elif regularization_type == "L1":
        def l1(data, diff, *rest):
            work = rest[-1]
            xp.sign(data, out=work)                           # caffe_cpu_sign, sign(0)=0
            if decay is not None:
                xp.multiply(work, rest[0], out=work)
            xp.multiply(work, local_decay, out=work)
            diff += work
        parallel_chunks.elementwise_with_temp(l1, arrays, temp)
    else:
        raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                          "\"L2\" or \"L1\")" % regularization_type)


def weight_decay_penalty(regularization_type, local_decay, data, decay=None):
    """The term weight decay adds to the objective, as a float: L2 ``λ/2 · Σ w·(w⊙D)``, L1
    ``λ · Σ|w⊙D|`` (D = 1 without ``decay``)."""
    local_decay = f32(local_decay)
    if not local_decay:
        return 0.0
    xp = backend.array_module(data)
    w = data.ravel()
    if regularization_type == "L2":
        s = xp.dot(w, w) if decay is None else xp.dot(w, w * decay.ravel())
        return float(local_decay) / 2.0 * float(s)
    if regularization_type == "L1":
        s = xp.abs(w).sum() if decay is None else xp.abs(w * decay.ravel()).sum()
        return float(local_decay) * float(s)
    raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                      "\"L2\" or \"L1\")" % regularization_type)


def _shape_text(shape):
    return "".join("%d " % d for d in shape) + "(%d)" % int(np.prod(shape, dtype=np.int64))


def load_decay_proto(path, shape, layer_name="?", blob_index=0):
    """The per-weight decay multipliers of ``decay_proto: "path"`` as a float32 array of
    ``shape``. A missing/unreadable file or a BlobProto of another shape is a RegularizerError
    naming the file, the layer and both shapes."""
    where = "layer '%s' param %d" % (layer_name, blob_index)
    shape = tuple(int(d) for d in shape)
    try:
        bp = read_binary(path, caffe_pb2.BlobProto())
        arr = blobproto_to_array(bp)
    except ProtoError as e:
        raise RegularizerError("%s: cannot read decay_proto '%s' (expected a BlobProto of the "
                               "param's shape %s): %s" % (where, path, _shape_text(shape), e)) \
            from None
    got = arr.shape
    if not blobproto_shape_equals(shape, bp):          # Blob::ShapeEquals
        raise RegularizerError("%s: decay_proto '%s' has shape %s but the param has shape %s"
                               % (where, path, _shape_text(got), _shape_text(shape)))
    return arr.reshape(shape)


@register_regularizer("WeightDecay")
class WeightDecay(Regularizer):
    """The solver's weight decay as a chain member, with the SSL fork's ParamSpec
    ``regularization_type`` override and ``decay_proto`` multipliers.

    ``WeightDecay.from_solver_param(param)`` takes ``weight_decay`` and ``regularization_type``;
    ``regularize`` gives the same numbers as ``apply_weight_decay`` in Caffe's solver.
    """

    def __init__(self, weight_decay=0.0, regularization_type="L2", layers=None,
                 blob_indices=None):
        if regularization_type not in TYPES:
            raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                              "\"L2\" or \"L1\")" % regularization_type)
        self.weight_decay = float(weight_decay)
        self.regularization_type = regularization_type
        self.coeff = self.weight_decay
        self.select(layers, blob_indices)
        self._decay = {}

    @classmethod
    def from_solver_param(cls, param):
        return cls(param.weight_decay, param.regularization_type)

    def param_type(self, ctx):
        """The regularization type of this param: its ParamSpec's, else the solver's."""
        spec = ctx.param_spec
        t = spec.regularization_type if spec is not None else ""
        if not t:
            return self.regularization_type
        if t not in TYPES:
            raise RegularizerError("layer '%s' param %s: unknown regularization_type '%s' "
                                   "(\"L2\" or \"L1\", or empty for the solver's)"
                                   % (ctx.layer_name, ctx.blob_index, t))
        return t

    def local_decay(self, ctx):
        return f32(f32(self.weight_decay) * f32(ctx.decay_mult))

    def decay_multipliers(self, param_id, blob, ctx):
        """The flat D array of this param's ``decay_proto`` (on the blob's device), or None.
        Loaded once and kept."""
        spec = ctx.param_spec
        path = spec.decay_proto if spec is not None else ""
        if not path:
            return None
        hit = self._decay.get(param_id)
        if hit is not None and hit[0] == path and hit[1].size == blob.count:
            return hit[1]
        arr = load_decay_proto(path, blob.shape, ctx.layer_name, ctx.blob_index or 0)
        xp = backend.array_module(blob.data)
        flat = xp.asarray(arr.ravel())
        self._decay[param_id] = (path, flat)
        return flat

    def setup(self, net):
        """Check every ParamSpec's regularization_type and load every decay_proto now, so a
        bad file stops the run before the first iteration."""
        super().setup(net)
        for info in self.selected_params(net):
            blob = net.learnable_params[info.param_id]
            ctx = RegularizeContext(layer_name=info.layer_name, blob_index=info.blob_index,
                                    param_spec=info.param_spec)
            self.param_type(ctx)
            self.decay_multipliers(info.param_id, blob, ctx)

    def regularize(self, param_id, blob, ctx):
        local_decay = self.local_decay(ctx)
        if not local_decay:
            return
        rtype = self.param_type(ctx)
        decay = self.decay_multipliers(param_id, blob, ctx)
        xp = backend.array_module(blob.data)
        # one work buffer of a few blocks for every param on the CPU (walked block by block),
        # a whole param's on a device (one kernel per operation)
        size = TEMP_BLOCK * parallel_chunks.parts() if xp is np else blob.count
        temp = self.scratch(None if xp is np else param_id, "temp", (size,), xp,
                            blob.data.dtype)
        apply_weight_decay(rtype, local_decay, blob.data.reshape(-1), blob.diff.reshape(-1),
                           temp, decay)

    def penalty(self, param_id, blob, ctx):
        local_decay = self.local_decay(ctx)
        if not local_decay:
            return 0.0
        return weight_decay_penalty(self.param_type(ctx), local_decay, blob.data,
                                    self.decay_multipliers(param_id, blob, ctx))

    def __repr__(self):
        return "<WeightDecay regularizer %s %g>" % (self.regularization_type, self.weight_decay)


class _Penalty(Regularizer):
    """An extra L1/L2 penalty with its own coefficient, scaled by each param's decay_mult."""
    kind = "L2"

    def __init__(self, coeff, layers=None, blob_indices=None):
        self.coeff = float(coeff)
        self.select(layers, blob_indices)

    def _lambda(self, ctx):
        return f32(f32(self.coeff) * f32(ctx.decay_mult))

    def regularize(self, param_id, blob, ctx):
        lam = self._lambda(ctx)
        if not lam:
            return
        xp = backend.array_module(blob.data)
        temp = self.scratch(param_id, "temp", (blob.count,), xp, blob.data.dtype)
        apply_weight_decay(self.kind, lam, blob.data.reshape(-1), blob.diff.reshape(-1), temp)

    def penalty(self, param_id, blob, ctx):
        return weight_decay_penalty(self.kind, self._lambda(ctx), blob.data)

    def __repr__(self):
        return "<%s regularizer coeff=%g>" % (self.name, self.coeff)


@register_regularizer("L2")
class L2Regularizer(_Penalty):
    """An extra L2 penalty ½·coeff·decay_mult·‖w‖² (like weight_decay, own coefficient)."""
    kind = "L2"


@register_regularizer("L1")
class L1Regularizer(_Penalty):
    """An extra L1 penalty coeff·decay_mult·Σ|w| (like weight_decay "L1", own coefficient)."""
    kind = "L1"


@register_regularizer("ElasticNet")
class ElasticNet(Regularizer):
    """``coeff · decay_mult · (l1 · Σ|w| + l2/2 · Σw²)``: the L2 gradient is added first, then
    the L1 one. ``coeff`` (default 1) scales both."""

    def __init__(self, l1=0.0, l2=0.0, coeff=1.0, layers=None, blob_indices=None):
        self.l1, self.l2, self.coeff = float(l1), float(l2), float(coeff)
        self.select(layers, blob_indices)

    def _lambdas(self, ctx):
        scale = f32(f32(self.coeff) * f32(ctx.decay_mult))
        return f32(scale * f32(self.l1)), f32(scale * f32(self.l2))

    def regularize(self, param_id, blob, ctx):
        lam1, lam2 = self._lambdas(ctx)
        if not (lam1 or lam2):
            return
        xp = backend.array_module(blob.data)
        temp = self.scratch(param_id, "temp", (blob.count,), xp, blob.data.dtype)
        data, diff = blob.data.reshape(-1), blob.diff.reshape(-1)
        apply_weight_decay("L2", lam2, data, diff, temp)
        apply_weight_decay("L1", lam1, data, diff, temp)

    def penalty(self, param_id, blob, ctx):
        lam1, lam2 = self._lambdas(ctx)
        return (weight_decay_penalty("L1", lam1, blob.data)
                + weight_decay_penalty("L2", lam2, blob.data))

    def __repr__(self):
        return "<ElasticNet regularizer l1=%g l2=%g>" % (self.l1, self.l2)
