"""Common / utility layers: InnerProduct, Eltwise, Concat, Slice, Split, Reshape, Flatten,
Embed, Tile, Filter, BatchReindex, Silence, Parameter, Crop.

Each class reproduces the arithmetic (and the order of floating-point operations, where
it matters) of the Caffe 1.0 layer of the same name.
"""
from .. import parallel_chunks
from ..blob import Blob
from ..kernels.pooling import scatter_add
from ..layer import Layer, register_layer
from ..proto import caffe_pb2
from .params import weight_and_bias
from .shapes import prod, shape_str


# -- InnerProduct -------------------------------------------------------------------------

@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """y = x·Wᵀ + b with x flattened to M×K from ``axis`` (W is N×K, or K×N if transpose)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.N = int(p.num_output)
        if self.N <= 0:
            raise self.error("num_output must be positive (set inner_product_param "
                             "{ num_output: ... })")
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        axis = self.canonical_axis(bottom[0], p.axis)
        self.K = bottom[0].count_range(axis)
        wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
        weight_and_bias(self, p, wshape, self.bias_term, self.N)

    def reshape(self, bottom, top):
        p = self.layer_param.inner_product_param
        axis = self.canonical_axis(bottom[0], p.axis)
        k = bottom[0].count_range(axis)
        if k != self.K:
            raise self.error("input size incompatible with inner product parameters: the layer "
                             "was set up for %d inputs per item (product of bottom dims from "
                             "axis %d) but bottom '%s' has shape %s, i.e. %d",
                             self.K, axis, "0", shape_str(bottom[0].shape), k)
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(tuple(bottom[0].shape[:axis]) + (self.N,))

    def forward_impl(self, bottom, top):
        xp = self.xp
        x = bottom[0].flat_data.reshape(self.M, self.K)
        y = top[0].flat_data.reshape(self.M, self.N)
        w = self.blobs[0].data
        bias = self.blobs[1].data if self.bias_term else None
        # a short batch through many outputs: Wᵀ's product the other way round, then transposed
        # with the bias added (caffepy.parallel_chunks.matmul_transposed_out)
        if not self.transpose and parallel_chunks.matmul_transposed_out(
                xp, x, w.T, y, lambda shape: self.scratch("yt", shape), bias):
            return
        # blocks of outputs side by side on the cores (caffepy.parallel_chunks)
        parallel_chunks.matmul_cols(xp, x, w if self.transpose else w.T, y)
        if bias is not None:
            y += bias

    def _dw_scratch(self, worker, rows):
        """The weight-gradient work rows of one worker thread (parallel_chunks.matmul_rows)."""
        return self.scratch("dw%d" % worker, (rows, self.N if self.transpose else self.K))

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].flat_diff.reshape(self.M, self.N)
        x = bottom[0].flat_data.reshape(self.M, self.K)
        # the weight and data gradients' blocks go to the cores together (caffepy.parallel_chunks)
        dw_jobs = dx_jobs = ()
        if self.param_propagate(0):
            wdiff = self.blobs[0].diff
            # param diffs accumulate: the product goes to scratch, a block of rows at a time,
            # then +=
            if self.transpose:
                dw_jobs = parallel_chunks.matmul_rows_jobs(xp, x.T, dy, wdiff, self._dw_scratch)
            else:
                dw_jobs = parallel_chunks.matmul_rows_jobs(xp, dy.T, x, wdiff, self._dw_scratch)
        if propagate_down[0]:
            w = self.blobs[0].data
            dx = bottom[0].flat_diff.reshape(self.M, self.K)
            dx_jobs = parallel_chunks.matmul_cols_jobs(xp, dy, w.T if self.transpose else w, dx)
        parallel_chunks.run_jobs(dw_jobs, dx_jobs)
        if self.bias_term and self.param_propagate(1):
            db = self.scratch("db", (self.N,))
            xp.sum(dy, axis=0, out=db)
            self.blobs[1].diff[...] += db


# -- Eltwise ------------------------------------------------------------------------------

@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """PROD / SUM (with coefficients) / MAX of two or more bottoms of identical shape."""
    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error("Eltwise takes one coefficient per bottom blob (%d coeff given, "
                             "%d bottoms)", len(p.coeff), len(bottom))
        if self.op == caffe_pb2.EltwiseParameter.PROD and len(p.coeff):
            raise self.error("Eltwise only takes coefficients for summation (operation: SUM), "
                             "not for PROD")
        if self.op == caffe_pb2.EltwiseParameter.MAX and len(p.coeff):
            raise self.error("Eltwise only takes coefficients for summation (operation: SUM), "
                             "not for MAX")
        self.coeffs = [float(c) for c in p.coeff] if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.max_idx = None
        self._tmp = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i in range(1, len(bottom)):
            if bottom[i].shape != shape:
                raise self.error("all bottoms must have the same shape: bottom 0 is %s, "
                                 "bottom %d is %s", shape_str(shape), i,
                                 shape_str(bottom[i].shape))
        top[0].reshape(shape)
        xp = self.xp
        if self.op == caffe_pb2.EltwiseParameter.MAX:
            if self.max_idx is None or self.max_idx.shape != shape:
                self.max_idx = xp.empty(shape, dtype=xp.int32)
        elif self.op == caffe_pb2.EltwiseParameter.SUM and any(c != 1.0 for c in self.coeffs):
            if self._tmp is None or self._tmp.shape != shape:
                self._tmp = xp.empty(shape, dtype=xp.float32)

    def forward_impl(self, bottom, top):
        xp = self.xp
        y = top[0].data
        E = caffe_pb2.EltwiseParameter
        if self.op == E.PROD:
            xp.multiply(bottom[0].data, bottom[1].data, out=y)
            for i in range(2, len(bottom)):
                xp.multiply(y, bottom[i].data, out=y)
        elif self.op == E.SUM:
            for i, b in enumerate(bottom):
                c = self.coeffs[i]
                if i == 0:
                    if c == 1.0:
                        y[...] = b.data
                    else:
                        xp.multiply(b.data, xp.float32(c), out=y)
                elif c == 1.0:
                    xp.add(y, b.data, out=y)
                else:
                    xp.multiply(b.data, xp.float32(c), out=self._tmp)
                    xp.add(y, self._tmp, out=y)
        elif self.op == E.MAX:
            # Caffe: bottom 1 wins over bottom 0 unless bottom 0 is strictly greater;
            # every later bottom must be strictly greater than the running max to win.
            # The winner's index goes to max_idx (it routes the gradient); the value is
            # xp.maximum's, the same number (masked copies are several times slower).
            mask = self.max_idx
            gt = self.scratch("gt", y.shape, xp.bool_)
            xp.greater(bottom[0].data, bottom[1].data, out=gt)
            xp.logical_not(gt, out=mask)                  # 0 where bottom 0 wins, else 1
            xp.maximum(bottom[0].data, bottom[1].data, out=y)
            for i in range(2, len(bottom)):
                bi = bottom[i].data
                won = self.scratch("won", y.shape, xp.int32)
                xp.greater(bi, y, out=won)
                won *= i                                  # i where bottom i wins, else 0
                xp.maximum(mask, won, out=mask)           # indices so far are all < i
                xp.maximum(y, bi, out=y)
        else:
            raise self.error("unknown Eltwise operation %d", self.op)

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        E = caffe_pb2.EltwiseParameter
        dy = top[0].diff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.diff
            if self.op == E.PROD:
                if self.stable_prod_grad:
                    first = True
                    for j, bj in enumerate(bottom):
                        if j == i:
                            continue
                        if first:
                            dx[...] = bj.data
                            first = False
                        else:
                            xp.multiply(dx, bj.data, out=dx)
                else:
                    xp.divide(top[0].data, b.data, out=dx)
                xp.multiply(dx, dy, out=dx)
            elif self.op == E.SUM:
                c = self.coeffs[i]
                if c == 1.0:
                    dx[...] = dy
                else:
                    xp.multiply(dy, xp.float32(c), out=dx)
            else:  # MAX: dy where bottom i won, 0 elsewhere
                won = self.scratch("won_f", dx.shape)
                xp.equal(self.max_idx, i, out=won)
                xp.multiply(dy, won, out=dx)


# -- Concat / Slice -----------------------------------------------------------------------

def _legacy_or_axis(layer, blob, param, legacy_name):
    """Caffe's choice between the legacy ``<kind>_dim`` and ``axis``."""
    if param.HasField(legacy_name):
        ax = int(getattr(param, legacy_name))
        if ax >= 2 ** 31:
            raise layer.error("%s %d is out of range: it must satisfy 0 <= %s < %d",
                              legacy_name, ax, legacy_name, blob.num_axes)
        if ax >= blob.num_axes:
            raise layer.error("%s %d is out of range for a bottom with %d axes (shape %s)",
                              legacy_name, ax, blob.num_axes, shape_str(blob.shape))
        return ax
    return layer.canonical_axis(blob, param.axis)


class _AxisParts(Layer):
    """Concat and Slice: one whole blob and its parts, consecutive along ``axis``."""
    param_name = legacy_name = None     # concat_param / concat_dim, slice_param / slice_dim

    def layer_setup(self, bottom, top):
        p = getattr(self.layer_param, self.param_name)
        if p.HasField("axis") and p.HasField(self.legacy_name):
            raise self.error("either axis or %s should be specified, not both", self.legacy_name)

    def _read_axis(self, blob):
        self.axis = _legacy_or_axis(self, blob, getattr(self.layer_param, self.param_name),
                                    self.legacy_name)
        return self.axis

    def _finish_reshape(self, whole, bottom, top):
        """Outer and inner sizes around the axis; a single part is the whole (shared)."""
        self.outer = whole.count_range(0, self.axis)
        self.inner = whole.count_range(self.axis + 1)
        if len(bottom) == 1 and len(top) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def _pairs(self, whole, parts, diff):
        """(part view, the whole's slice) for each part, as (outer, size, inner) arrays."""
        n, inner = self.outer, self.inner
        get = (lambda b: b.flat_diff) if diff else (lambda b: b.flat_data)
        wv = get(whole).reshape(n, whole.shape[self.axis], inner)
        off = 0
        for b in parts:
            k = b.shape[self.axis]
            yield get(b).reshape(n, k, inner), wv[:, off:off + k, :]
            off += k


@register_layer("Concat")
class ConcatLayer(_AxisParts):
    """Concatenate the bottoms along ``axis`` (all other dims must match)."""
    min_bottom_blobs = 1
    exact_num_top_blobs = 1
    param_name, legacy_name = "concat_param", "concat_dim"

    def reshape(self, bottom, top):
        b0 = bottom[0]
        axis = self._read_axis(b0)
        shape = list(b0.shape)
        for i in range(1, len(bottom)):
            bs = bottom[i].shape
            if len(bs) != len(shape):
                raise self.error("all inputs must have the same number of axes: bottom 0 is %s, "
                                 "bottom %d is %s", shape_str(b0.shape), i, shape_str(bs))
            for j in range(len(shape)):
                if j != axis and bs[j] != shape[j]:
                    raise self.error("all inputs must have the same shape, except at the concat "
                                     "axis %d: bottom 0 is %s, bottom %d is %s", axis,
                                     shape_str(b0.shape), i, shape_str(bs))
            shape[axis] += bs[axis]
        top[0].reshape(shape)
        self._finish_reshape(b0, bottom, top)

    def forward_impl(self, bottom, top):
        if len(bottom) == 1:
            return
        for bv, tv in self._pairs(top[0], bottom, False):
            tv[...] = bv

    def backward_impl(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        for i, (bv, tv) in enumerate(self._pairs(top[0], bottom, True)):
            if propagate_down[i]:
                bv[...] = tv


@register_layer("Slice")
class SliceLayer(_AxisParts):
    """Split the bottom along ``axis`` at ``slice_point`` (or into equal parts)."""
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    param_name, legacy_name = "slice_param", "slice_dim"

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self.slice_points = [int(s) for s in self.layer_param.slice_param.slice_point]

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = self._read_axis(b)
        n_axis = b.shape[axis]
        ntop = len(top)
        if self.slice_points:
            if len(self.slice_points) != ntop - 1:
                raise self.error("slice_point must have exactly one entry fewer than the number "
                                 "of tops (%d slice_point given, %d tops)",
                                 len(self.slice_points), ntop)
            if ntop > n_axis:
                raise self.error("cannot slice axis %d of size %d into %d tops (bottom shape %s)",
                                 axis, n_axis, ntop, shape_str(b.shape))
            sizes = []
            prev = 0
            for s in self.slice_points:
                if s <= prev:
                    raise self.error("slice_point values must be strictly increasing and "
                                     "positive (got %s)", self.slice_points)
                sizes.append(s - prev)
                prev = s
            if prev >= n_axis:
                raise self.error("slice_point %d is beyond the end of axis %d (size %d, bottom "
                                 "shape %s)", prev, axis, n_axis, shape_str(b.shape))
            sizes.append(n_axis - prev)
        else:
            if n_axis % ntop:
                raise self.error("the number of tops (%d) should evenly divide the input slice "
                                 "axis %d of size %d (bottom shape %s); or give slice_point",
                                 ntop, axis, n_axis, shape_str(b.shape))
            sizes = [n_axis // ntop] * ntop
        shape = list(b.shape)
        for t, k in zip(top, sizes):
            shape[axis] = k
            t.reshape(shape)
        self._finish_reshape(b, bottom, top)

    def forward_impl(self, bottom, top):
        if len(top) == 1:
            return
        for tv, bv in self._pairs(bottom[0], top, False):
            tv[...] = bv

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        for tv, bv in self._pairs(bottom[0], top, True):
            bv[...] = tv


# -- Split --------------------------------------------------------------------------------

@register_layer("Split")
class SplitLayer(Layer):
    """Every top shares the bottom's data; backward sums the top diffs into the bottom diff."""
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom, top):
        for i, t in enumerate(top):
            if t is bottom[0]:
                raise self.error("Split does not allow in-place computation (top %d is the "
                                 "bottom)", i)
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward_impl(self, bottom, top):
        pass  # the tops share the bottom's data

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottom[0].diff
        if len(top) == 1:
            dx[...] = top[0].diff
            return
        xp.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            xp.add(dx, t.diff, out=dx)


# -- Reshape / Flatten --------------------------------------------------------------------

class _ViewLayer(Layer):
    """A top that is the bottom with another shape: it shares the bottom's data and diff, so
    forward and backward have nothing to compute (Caffe's Reshape and Flatten)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            names = list(self.layer_param.bottom[:1]) or ["0"]
            raise self.error("%s does not allow in-place computation: top 0 '%s' is its "
                             "bottom 0; give the top its own name", self.type, names[0])

    def view(self, bottom, top, shape):
        top[0].reshape(shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        pass


@register_layer("Reshape")
class ReshapeLayer(_ViewLayer):
    """A new view of the bottom (0 copies a bottom dim, one -1 is inferred)."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        self.copy_axes = []
        self.inferred_axis = -1
        self.constant_count = 1
        for i, d in enumerate(dims):
            if d == 0:
                self.copy_axes.append(i)
            elif d == -1:
                if self.inferred_axis != -1:
                    raise self.error("new shape %s contains more than one -1 dim; at most a "
                                     "single -1 may be given", dims)
                self.inferred_axis = i
            elif d < -1:
                raise self.error("new shape %s has dim %d; dims must be positive, 0 (copy the "
                                 "bottom dim) or -1 (infer)", dims, d)
            else:
                self.constant_count *= d
        self.dims = dims

    def reshape(self, bottom, top):
        p = self.layer_param.reshape_param
        b = bottom[0]
        nb = b.num_axes
        in_axis = int(p.axis)
        start = in_axis if in_axis >= 0 else nb + in_axis + 1
        if not 0 <= start <= nb:
            raise self.error("axis %d out of range for a bottom with %d axes (shape %s)",
                             in_axis, nb, shape_str(b.shape))
        num_axes = int(p.num_axes)
        if num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all (got %d)", num_axes)
        end = nb if num_axes == -1 else start + num_axes
        if end > nb:
            raise self.error("end axis = axis + num_axes = %d is out of range for a bottom with "
                             "%d axes (shape %s)", end, nb, shape_str(b.shape))
        shape = list(b.shape[:start]) + list(self.dims) + list(b.shape[end:])
        for ci in self.copy_axes:
            if start + ci >= nb:
                raise self.error("new shape contains a 0 at position %d, but there is no "
                                 "corresponding bottom axis to copy (bottom shape %s)",
                                 ci, shape_str(b.shape))
            shape[start + ci] = b.shape[start + ci]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * b.count_range(0, start) * b.count_range(end)
            for ci in self.copy_axes:
                explicit *= shape[start + ci]
            if explicit == 0 or b.count % explicit:
                raise self.error("bottom count (%d, shape %s) must be divisible by the product "
                                 "of the specified dimensions (%d)", b.count,
                                 shape_str(b.shape), explicit)
            shape[start + self.inferred_axis] = b.count // explicit
        if prod(shape) != b.count:
            raise self.error("output count must match input count: new shape %s has %d "
                             "elements, bottom shape %s has %d", shape_str(shape), prod(shape),
                             shape_str(b.shape), b.count)
        self.view(bottom, top, shape)


@register_layer("Flatten")
class FlattenLayer(_ViewLayer):
    """Collapse axes [axis, end_axis] into one."""

    def reshape(self, bottom, top):
        p = self.layer_param.flatten_param
        b = bottom[0]
        start = self.canonical_axis(b, p.axis)
        end = self.canonical_axis(b, p.end_axis, "end_axis")
        if start > end + 1:
            raise self.error("flatten_param axis %d comes after end_axis %d (axes %d > %d + 1) "
                             "for bottom '%s' of shape %s: axis must be <= end_axis + 1",
                             int(p.axis), int(p.end_axis), start, end,
                             (list(self.layer_param.bottom) or ["?"])[0], shape_str(b.shape))
        shape = list(b.shape[:start]) + [b.count_range(start, end + 1)] + list(b.shape[end + 1:])
        self.view(bottom, top, shape)


# -- Embed --------------------------------------------------------------------------------

@register_layer("Embed")
class EmbedLayer(Layer):
    """Lookup table: each integer index in the bottom selects a row of W (input_dim ×
    num_output), plus an optional bias. The top has the bottom's shape + (num_output,)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.N = int(p.num_output)
        if self.N <= 0:
            raise self.error("num_output must be positive (set embed_param { num_output: ... })")
        self.K = int(p.input_dim)
        if self.K <= 0:
            raise self.error("input_dim must be positive (set embed_param { input_dim: ... }, "
                             "the number of distinct indices)")
        self.bias_term = p.bias_term
        weight_and_bias(self, p, (self.K, self.N), self.bias_term, self.N)

    def reshape(self, bottom, top):
        self.M = bottom[0].count
        top[0].reshape(tuple(bottom[0].shape) + (self.N,))

    def _indices(self, bottom):
        xp = self.xp
        v = bottom[0].flat_data
        idx = v.astype(xp.int32)
        if self.M:
            bad = xp.logical_or(idx.astype(xp.float32) != v, xp.logical_or(idx < 0, idx >= self.K))
            if bool(bad.any()):
                k = int(xp.argmax(bad))
                raise self.error("input %d holds %r, which is not an integer index in [0, %d) "
                                 "(input_dim %d)", k, float(v[k]), self.K, self.K)
        return idx

    def forward_impl(self, bottom, top):
        xp = self.xp
        idx = self._indices(bottom)
        y = top[0].flat_data.reshape(self.M, self.N)
        xp.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the Embed input (bottom 0 holds indices); "
                             "do not set force_backward on a net whose Embed input would need "
                             "a gradient")
        xp = self.xp
        dy = top[0].flat_diff.reshape(self.M, self.N)
        if self.param_propagate(0):
            idx = self._indices(bottom)
            scatter_add(xp, self.blobs[0].diff, idx, dy)
        if self.bias_term and self.param_propagate(1):
            self.blobs[1].diff[...] += dy.sum(axis=0)


# -- Tile ---------------------------------------------------------------------------------

@register_layer("Tile")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis``; backward sums the copies."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        p = self.layer_param.tile_param
        b = bottom[0]
        self.axis = self.canonical_axis(b, p.axis)
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise self.error("the number of tiles must be positive (set tile_param { tiles: ... }, "
                             "got %d)", self.tiles)
        shape = list(b.shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(shape)
        self.outer = b.count_range(0, self.axis)
        self.inner = b.count_range(self.axis)

    def forward_impl(self, bottom, top):
        y = top[0].flat_data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].flat_data.reshape(self.outer, 1, self.inner)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].flat_diff.reshape(self.outer, self.tiles, self.inner)
        dx = bottom[0].flat_diff.reshape(self.outer, self.inner)
        self.xp.sum(dy, axis=1, out=dx)


# -- Filter -------------------------------------------------------------------------------

@register_layer("Filter")
class FilterLayer(Layer):
    """Keep the items (axis 0) of bottoms 0..k-1 whose selector (the last bottom) is non-zero.
    The tops' first dimension follows the selector."""
    min_bottom_blobs = 2
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error("needs one top per filtered bottom: the last bottom is the selector, "
                             "so there must be %d top(s), got %d", len(bottom) - 1, len(top))
        self.first_reshape = True
        self.indices = None
        self.n_fwd = 0

    def reshape(self, bottom, top):
        xp = self.xp
        sel = bottom[-1]
        if sel.num_axes < 1:
            raise self.error("the selector (last bottom) needs at least one axis")
        for i in range(1, sel.num_axes):
            if sel.shape[i] != 1:
                raise self.error("selector (last bottom) dimensions must be 1 except the first; "
                                 "its shape is %s", shape_str(sel.shape))
        n = sel.shape[0]
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != n:
                raise self.error("each bottom must have the same first dimension as the selector "
                                 "(%d): bottom %d has shape %s", n, i, shape_str(b.shape))
        self.indices = xp.nonzero(sel.flat_data != 0)[0]
        self.n_fwd = int(self.indices.shape[0])
        new_n = self.n_fwd
        if self.first_reshape:
            # Like Caffe, the tops get the full batch at setup.
            new_n = n
            self.first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((new_n,) + tuple(b.shape[1:]))

    def forward_impl(self, bottom, top):
        xp = self.xp
        for t, b in zip(top, bottom):
            n = b.shape[0]
            dim = b.count // n if n else 0
            xp.take(b.flat_data.reshape(n, dim), self.indices, axis=0,
                    out=t.flat_data.reshape(self.n_fwd, dim))

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (last bottom); do not set "
                             "force_backward on a net whose Filter selector would need a "
                             "gradient")
        for i, t in enumerate(top):
            if not propagate_down[i]:
                continue
            b = bottom[i]
            n = b.shape[0]
            dim = b.count // n if n else 0
            dx = b.flat_diff.reshape(n, dim)
            dx[...] = 0
            dx[self.indices] = t.flat_diff.reshape(self.n_fwd, dim)


# -- BatchReindex -------------------------------------------------------------------------

@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    """top[i] = bottom0[bottom1[i]] along axis 0; backward accumulates (repeated indices add)."""
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.error("the index bottom (bottom 1) must be 1-D, got shape %s",
                             shape_str(bottom[1].shape))
        if bottom[0].num_axes < 1:
            raise self.error("bottom 0 needs at least one axis")
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _indices(self, bottom):
        xp = self.xp
        v = bottom[1].flat_data
        n = bottom[0].shape[0]
        if v.size:
            if bool((v < 0).any()):
                raise self.error("an index given to BatchReindex (bottom 1) is negative")
            idx = v.astype(xp.int32)
            if bool((idx >= n).any()):
                raise self.error("an index given to BatchReindex (bottom 1) is not smaller than "
                                 "the batch size %d of bottom 0", n)
            return idx
        return v.astype(xp.int32)

    def _dims(self, bottom):
        n = bottom[0].shape[0]
        return n, (bottom[0].count // n if n else 0)

    def forward_impl(self, bottom, top):
        idx = self._indices(bottom)
        n, dim = self._dims(bottom)
        if top[0].count == 0:
            return
        self.xp.take(bottom[0].flat_data.reshape(n, dim), idx, axis=0,
                     out=top[0].flat_data.reshape(idx.shape[0], dim))

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the index bottom (bottom 1)")
        if not propagate_down[0]:
            return
        idx = self._indices(bottom)
        n, dim = self._dims(bottom)
        dx = bottom[0].flat_diff.reshape(n, dim)
        dx[...] = 0
        if idx.shape[0]:
            scatter_add(self.xp, dx, idx, top[0].flat_diff.reshape(idx.shape[0], dim))


# -- Silence ------------------------------------------------------------------------------

@register_layer("Silence")
class SilenceLayer(Layer):
    """Consumes its bottoms (so they are not net outputs); backward writes zero diffs."""
    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        for i, b in enumerate(bottom):
            if propagate_down[i]:
                b.diff[...] = 0


# -- Parameter ----------------------------------------------------------------------------

@register_layer("Parameter")
class ParameterLayer(Layer):
    """Exposes one learnable blob (parameter_param.shape, zero-initialised) as its top; the top
    shares data and diff with the blob."""
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        shape = tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)
        for d in shape:
            if d < 0:
                raise self.error("parameter_param shape %s has a negative dimension",
                                 shape_str(shape))
        if len(self.blobs) == 0:
            blob = Blob()
            blob.reshape(shape)
            self.blobs.append(blob)
        else:
            if len(self.blobs) != 1:
                raise self.error("expects 1 parameter blob but %d were given", len(self.blobs))
            self.check_param_shape(0, shape, "parameter")

    def reshape(self, bottom, top):
        # Shared again at every reshape, so that a blob replaced or resized after setup
        # (e.g. weights loaded from a caffemodel) stays the one the top shows.
        blob = self.blobs[0]
        top[0].reshape(blob.shape)
        top[0].share_data(blob)
        top[0].share_diff(blob)

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        pass


# -- Crop -----------------------------------------------------------------------------------

@register_layer("Crop")
class CropLayer(Layer):
    """Crops bottom[0] to bottom[1]'s shape on axes >= axis, at the given offsets.
    bottom[1] only provides the shape: no gradient goes to it."""
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.crop_param
        self.start_axis = self.canonical_axis(bottom[0], p.axis)
        n_off = len(p.offset)
        if n_off > 1 and self.start_axis + n_off != bottom[0].num_axes:
            raise self.error("number of offset values specified must be equal to the number of "
                             "dimensions following axis (axis %d, %d offsets, bottom has %d axes)",
                             self.start_axis, n_off, bottom[0].num_axes)

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        s0, s1 = tuple(bottom[0].shape), tuple(bottom[1].shape)
        if len(s0) != len(s1):
            raise self.error("bottom[0] %s and bottom[1] %s must have the same number of axes",
                             shape_str(s0), shape_str(s1))
        new_shape, slices = [], []
        for i in range(len(s0)):
            if i < self.start_axis:
                new_shape.append(s0[i])
                slices.append(slice(None))
                continue
            off = 0
            if len(p.offset) == 1:
                off = int(p.offset[0])
            elif len(p.offset) > 1:
                off = int(p.offset[i - self.start_axis])
            if s0[i] - off < s1[i]:
                raise self.error("invalid crop parameters in dimension: %d (bottom[0] size %d, "
                                 "offset %d, bottom[1] size %d)", i, s0[i], off, s1[i])
            new_shape.append(s1[i])
            slices.append(slice(off, off + s1[i]))
        top[0].reshape(tuple(new_shape))
        self._slices = tuple(slices)

    def forward_impl(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._slices]

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self._slices] = top[0].diff
