"""Group lasso: the SSL fork's structured sparsity (Wen et al. 2016) and a GroupLasso plug-in.

The maths, as the SSL Caffe fork computes it
--------------------------------------------
A param blob is viewed as a matrix of M = shape[0] rows (num_output for Convolution and
InnerProduct) and C = count / M columns; G is the layer's conv group (1 without a
convolution_param). A group g adds ``λ·‖w_g‖₂`` to the penalty and ``λ·w / ‖w_g‖₂`` to the
gradient of each of its weights, with no epsilon: an all-zero group adds exactly 0 (the fork
divides with a "0 if the denominator is 0" rule). The groups:

- rows ("breadth", filter-wise): one group per row, over all C columns;
- columns ("kernel shape", shape-wise): one group per column *within each conv group*, i.e.
  rows g·M/G … (g+1)·M/G − 1 of column j;
- blocks: ydimen × xdimen tiles over the whole M × C matrix from (0, 0), ignoring conv groups
  (M % ydimen and C % xdimen must be 0); a NaN block norm counts as 0, as the fork's ``res > 0``.

In a run, ``λ_b = breadth_decay · breadth_decay_mult``, ``λ_ks = kernel_shape_decay ·
kernel_shape_decay_mult``, ``λ_k = block_group_decay · block_decay_mult`` (float32 products,
``decay_mult`` does not scale them), applied in the order columns, rows, then each
``block_group_lasso`` spec as listed. ``SSLGroupLasso`` is that, as a plug-in the solver runs
right after weight decay.

Every group family is "reshape the blob to some N-D view and sum w² over some axes", so one
vectorised routine (``add_group_gradient``) serves them all: rows are the (M, C) view summed
over axis 1, columns the (G, M/G, C) view over axis 1, blocks the (M/y, y, C/x, x) view over
axes (1, 3), channels the (G, M/G, C_in/G, kh·kw) view over axes (1, 3), depth the flat blob.
"""
import numpy as np

from .. import backend
from ..errors import RegularizerError
from .base import Regularizer, register_regularizer

f32 = np.float32

KINDS = ("filter", "shape", "channel", "block", "depth")
_ALIASES = {"filter": "filter", "row": "filter", "rows": "filter", "breadth": "filter",
            "shape": "shape", "column": "shape", "columns": "shape", "kernel_shape": "shape",
            "channel": "channel", "block": "block", "depth": "depth"}


def matrix_shape(shape):
    """(M, C) of the fork's matrix view: M = shape[0], C = count / M (a scalar is 1 × 1)."""
    shape = tuple(int(d) for d in shape)
    count = 1
    for d in shape:
        count *= d
    if not shape:
        return 1, count
    m = shape[0]
    return m, (count // m if m else 0)


class GroupView:
    """How one group family sees a blob: reshape to ``vshape``, sum w² over ``axes``.

    ``nshape`` is the shape of the norms (``vshape`` with the summed axes kept as 1, so it
    broadcasts against the view); ``nan_to_zero`` makes a NaN norm 0 (blocks, as the fork).
    """
    __slots__ = ("kind", "vshape", "axes", "nshape", "nan_to_zero", "count")

    def __init__(self, kind, vshape, axes, nan_to_zero=False):
        self.kind = kind
        self.vshape = tuple(int(d) for d in vshape)
        self.axes = tuple(axes)
        self.nshape = tuple(1 if i in self.axes else d for i, d in enumerate(self.vshape))
        self.nan_to_zero = nan_to_zero
        c = 1
        for d in self.vshape:
            c *= d
        self.count = c

    @property
    def num_groups(self):
        n = 1
        for d in self.nshape:
            n *= d
        return n

    def __repr__(self):
        return "GroupView(%s, %s, axes=%s)" % (self.kind, self.vshape, self.axes)


def _fmt_param(where):
    return (where + ": ") if where else ""


def group_view(kind, shape, conv_group=1, xdimen=1, ydimen=1, where=""):
    """The GroupView of group family ``kind`` (filter/row, shape/column, channel, block, depth)
    on a blob of ``shape``. ``where`` names the param in errors ("layer 'conv1' param 0").

    Raises RegularizerError when the groups do not tile the blob (naming the sizes).
    """
    k = _ALIASES.get(kind)
    if k is None:
        raise RegularizerError("%sunknown group kind '%s' (kinds: %s)"
                               % (_fmt_param(where), kind, ", ".join(KINDS)))
    m, c = matrix_shape(shape)
    g = int(conv_group) if conv_group else 1
    if k == "filter":
        return GroupView("filter", (m, c), (1,))
    if k == "depth":
        return GroupView("depth", (m * c,), (0,))
    if k == "block":
        x, y = int(xdimen), int(ydimen)
        if x < 1 or y < 1 or m % y or c % x:
            raise RegularizerError(
                "%sblock group lasso (xdimen %d, ydimen %d) does not tile the %dx%d weight "
                "matrix (%d rows x %d columns): rows %% ydimen = %s, columns %% xdimen = %s"
                % (_fmt_param(where), x, y, m, c, m, c, m % y if y >= 1 else "n/a",
                   c % x if x >= 1 else "n/a"))
        return GroupView("block", (m // y, y, c // x, x), (1, 3), nan_to_zero=True)
    # shape and channel groups live within a conv group
    if g < 1 or m % g:
        raise RegularizerError("%s%d rows (num_output) do not split into %d conv groups"
                               % (_fmt_param(where), m, g))
    if k == "shape":
        return GroupView("shape", (g, m // g, c), (1,))
    shape = tuple(shape)
    ch = int(shape[1]) if len(shape) > 1 else 1
    per = c // ch if ch else 0
    return GroupView("channel", (g, m // g, ch, per), (1, 3))


def group_norms(view, data):
    """‖w_g‖₂ for every group (an array of ``view.nshape``; allocates). Zero for an all-zero
    group; NaN for a group holding a NaN, except blocks (0, like the fork)."""
    xp = backend.array_module(data)
    w = data.reshape(view.vshape)
    n = (w * w).sum(axis=view.axes, keepdims=True)
    xp.sqrt(n, out=n)
    if view.nan_to_zero:
        xp.fmax(n, 0, out=n)
    return n


def group_penalty(view, lam, data):
    """``lam · Σ_g ‖w_g‖₂`` as a float (the sum over groups is taken in float64)."""
    if not lam or view.count == 0:
        return 0.0
    n = group_norms(view, data)
    return float(lam) * float(n.sum(dtype=np.float64))


def add_group_gradient(view, lam, data, diff, scratch=None):
    """``diff += lam · w / ‖w_g‖₂`` for every weight w of group g; 0 where ‖w_g‖ = 0.

    ``data`` and ``diff`` are C-contiguous arrays of the blob (any shape with the view's
    count); ``diff`` is updated in place. ``scratch(name, shape, dtype)`` hands out reusable
    work buffers (None: allocate). The quotient is formed as a division, as the fork does.
    """
    if not lam or view.count == 0:
        return
    xp = backend.array_module(data)
    dtype = data.dtype
    if scratch is None:
        def scratch(name, shape, dt):
            return xp.empty(shape, dtype=dt)
    w = data.reshape(view.vshape)
    d = diff.reshape(view.vshape)
    q = scratch("q", (view.count,), dtype).reshape(view.vshape)
    n = scratch("n:" + view.kind, view.nshape, dtype)
    den = scratch("den:" + view.kind, view.nshape, dtype)
    zero = scratch("zero:" + view.kind, view.nshape, np.bool_)
    xp.multiply(w, w, out=q)
    xp.sum(q, axis=view.axes, keepdims=True, out=n)
    xp.sqrt(n, out=n)
    if view.nan_to_zero:
        xp.fmax(n, 0, out=n)                       # res > 0 ? sqrt(res) : 0
    xp.equal(n, 0, out=zero)
    xp.add(n, zero, out=den)                       # 1 where the norm is 0, else the norm
    xp.divide(w, den, out=q)
    xp.copyto(q, 0, where=zero)                    # div_checkzero: b ? a / b : 0
    xp.multiply(q, lam, out=q)
    d += q


def _where(ctx):
    if ctx is None or ctx.layer_name is None:
        return ""
    return "layer '%s' param %s" % (ctx.layer_name, ctx.blob_index)


# -- the SSL fork's three group families from ParamSpec -------------------------------------

def ssl_terms(shape, param_spec, breadth_decay, kernel_shape_decay, block_group_decay,
              conv_group=1, where=""):
    """[(GroupView, λ)] of the SSL group lasso for one param, in the fork's order: columns
    (per conv group), rows, then each ``block_group_lasso`` spec. Terms with λ = 0 are left
    out; λ is the float32 product of the solver's decay and the ParamSpec's multiplier."""
    if param_spec is None:
        return []
    terms = []
    lam_ks = f32(f32(kernel_shape_decay) * f32(param_spec.kernel_shape_decay_mult))
    lam_b = f32(f32(breadth_decay) * f32(param_spec.breadth_decay_mult))
    if lam_ks:
        terms.append((group_view("shape", shape, conv_group, where=where), lam_ks))
    if lam_b:
        terms.append((group_view("filter", shape, conv_group, where=where), lam_b))
    for spec in param_spec.block_group_lasso:
        lam_k = f32(f32(spec.block_decay_mult) * f32(block_group_decay))
        if lam_k:
            terms.append((group_view("block", shape, conv_group, spec.xdimen, spec.ydimen,
                                     where=where), lam_k))
    return terms


@register_regularizer("SSLGroupLasso")
class SSLGroupLasso(Regularizer):
    """The SSL fork's group lasso: the SolverParameter's ``breadth_decay``,
    ``kernel_shape_decay`` and ``block_group_decay`` times each param's ParamSpec multipliers
    (``breadth_decay_mult``, ``kernel_shape_decay_mult``, ``block_group_lasso { xdimen ydimen
    block_decay_mult }``). A param without a ParamSpec, or with zero multipliers, is left alone.
    Every learnable param is considered (biases too, if their ParamSpec asks for it).
    """

    def __init__(self, breadth_decay=0.0, kernel_shape_decay=0.0, block_group_decay=0.0,
                 layers=None, blob_indices=None):
        self.breadth_decay = float(breadth_decay)
        self.kernel_shape_decay = float(kernel_shape_decay)
        self.block_group_decay = float(block_group_decay)
        self.coeff = 0.0
        self.select(layers, blob_indices)
        self._terms = {}

    @classmethod
    def from_solver_param(cls, param):
        """From a SolverParameter's ``breadth_decay``, ``kernel_shape_decay``,
        ``block_group_decay`` (fields 1001-1003)."""
        return cls(param.breadth_decay, param.kernel_shape_decay, param.block_group_decay)

    @property
    def active(self):
        """False when all three decays are 0 (the solver then need not run it)."""
        return bool(self.breadth_decay or self.kernel_shape_decay or self.block_group_decay)

    def terms(self, param_id, shape, ctx):
        """The cached ``ssl_terms`` of this param."""
        key = (tuple(shape), ctx.conv_group, id(ctx.param_spec))
        hit = self._terms.get(param_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        terms = ssl_terms(shape, ctx.param_spec, self.breadth_decay, self.kernel_shape_decay,
                          self.block_group_decay, ctx.conv_group, _where(ctx))
        self._terms[param_id] = (key, terms)
        return terms

    def setup(self, net):
        super().setup(net)
        for info in self.selected_params(net):
            if info.param_spec is None:
                continue
            ssl_terms(net.learnable_params[info.param_id].shape, info.param_spec,
                      self.breadth_decay, self.kernel_shape_decay, self.block_group_decay,
                      info.conv_group, "layer '%s' param %d" % (info.layer_name,
                                                               info.blob_index))

    def regularize(self, param_id, blob, ctx):
        terms = self.terms(param_id, blob.shape, ctx)
        if not terms:
            return
        xp = backend.array_module(blob.data)

        def scratch(name, shape, dtype):
            return self.scratch(param_id, name, shape, xp, dtype)
        for view, lam in terms:
            add_group_gradient(view, lam, blob.data, blob.diff, scratch)

    def penalty(self, param_id, blob, ctx):
        return sum(group_penalty(view, lam, blob.data)
                   for view, lam in self.terms(param_id, blob.shape, ctx))

    def __repr__(self):
        return ("<SSLGroupLasso regularizer breadth_decay=%g kernel_shape_decay=%g "
                "block_group_decay=%g>" % (self.breadth_decay, self.kernel_shape_decay,
                                           self.block_group_decay))


@register_regularizer("GroupLasso")
class GroupLasso(Regularizer):
    """``coeff · Σ_g ‖w_g‖₂`` over one family of groups, on chosen layers.

    ``kind``: "filter" (rows: one group per output filter / neuron), "shape" (columns within
    each conv group: one input channel at one kernel position across the group's filters),
    "channel" (all the weights of one input channel: ``w[g·N/G:(g+1)·N/G, c, :, :]`` of a conv
    weight N × C/G × kh × kw), "block" (``ydimen`` × ``xdimen`` tiles of the M × C matrix,
    ignoring conv groups), "depth" (the whole blob as one group, to learn depth).
    λ = coeff, not scaled by decay_mult (as the SSL group decays). By default only the weights
    (blob 0) of every layer are regularized; choose with ``layers=[...]``/``blob_indices=[...]``.
    """
    group_kind = True

    def __init__(self, coeff=0.0, kind="filter", xdimen=1, ydimen=1, layers=None,
                 blob_indices=None):
        k = _ALIASES.get(kind)
        if k is None:
            raise RegularizerError("GroupLasso: unknown kind '%s' (kinds: %s)"
                                   % (kind, ", ".join(KINDS)))
        self.coeff = float(coeff)
        self.kind = k
        self.xdimen = int(xdimen)
        self.ydimen = int(ydimen)
        self.select(layers, blob_indices)
        self._views = {}

    def view(self, param_id, shape, ctx):
        key = (tuple(shape), ctx.conv_group)
        hit = self._views.get(param_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        v = group_view(self.kind, shape, ctx.conv_group, self.xdimen, self.ydimen, _where(ctx))
        self._views[param_id] = (key, v)
        return v

    def setup(self, net):
        super().setup(net)
        for info in self.selected_params(net):
            group_view(self.kind, net.learnable_params[info.param_id].shape, info.conv_group,
                       self.xdimen, self.ydimen,
                       "layer '%s' param %d" % (info.layer_name, info.blob_index))

    def regularize(self, param_id, blob, ctx):
        lam = f32(self.coeff)
        if not lam:
            return
        view = self.view(param_id, blob.shape, ctx)
        xp = backend.array_module(blob.data)

        def scratch(name, shape, dtype):
            return self.scratch(param_id, name, shape, xp, dtype)
        add_group_gradient(view, lam, blob.data, blob.diff, scratch)

    def penalty(self, param_id, blob, ctx):
        return group_penalty(self.view(param_id, blob.shape, ctx), f32(self.coeff), blob.data)

    def __repr__(self):
        extra = " %dx%d" % (self.ydimen, self.xdimen) if self.kind == "block" else ""
        return "<GroupLasso regularizer kind=%s%s coeff=%g>" % (self.kind, extra, self.coeff)
