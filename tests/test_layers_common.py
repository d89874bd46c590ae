"""Tests of the common/utility layers (caffepy.layers.common): gradient checks on small
random inputs and hand-computed values, plus the user errors Caffe CHECKs."""
import numpy as np
import pytest

from caffepy import Blob, LayerError, caffe_pb2
from caffepy.gradient_check import check_layer
from caffepy.layer import create_layer
from caffepy.proto import parse_text
from helpers import bwd, fwd, make


def rnd(*shape, seed=0, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def distinct(n_arrays, shape, seed=0, spacing=0.05):
    """Arrays whose elements are all distinct and at least ``spacing`` apart (no near-ties)."""
    count = int(np.prod(shape))
    vals = (np.arange(n_arrays * count) - n_arrays * count / 2.0) * spacing
    vals = np.random.default_rng(seed).permutation(vals).astype(np.float32)
    return [vals[i * count:(i + 1) * count].reshape(shape) for i in range(n_arrays)]


# -- InnerProduct ---------------------------------------------------------------------------

IP_FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
              'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def test_ip_values():
    x = rnd(2, 3, 2, seed=1)
    layer, bottom, top = make('type: "InnerProduct" inner_product_param { num_output: 4 %s }'
                              % IP_FILLERS, [x])
    W = layer.blobs[0].data.copy()
    b = layer.blobs[1].data.copy()
    assert W.shape == (4, 6) and b.shape == (4,)
    (y,) = fwd(layer, bottom, top)
    assert y.shape == (2, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y, x.reshape(2, 6) @ W.T + b, rtol=1e-5, atol=1e-6)
    dy = rnd(2, 4, seed=2)
    layer.blobs[0].diff[...] = 1.0  # param diffs accumulate
    for t in top:
        t.diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + dy.T @ x.reshape(2, 6), rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(0), rtol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, (dy @ W).reshape(2, 3, 2), rtol=1e-5, atol=1e-6)


def test_ip_transpose_axis_values():
    x = rnd(2, 3, 4, seed=3)
    layer, bottom, top = make('type: "InnerProduct" inner_product_param { num_output: 5 axis: 2 '
                              'transpose: true bias_term: false %s }'
                              % 'weight_filler { type: "gaussian" }', [x])
    assert len(layer.blobs) == 1
    W = layer.blobs[0].data.copy()
    assert W.shape == (4, 5)
    (y,) = fwd(layer, bottom, top)
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, x @ W, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", ["", "axis: 2", "transpose: true", "bias_term: false",
                                   "axis: -1 transpose: true"])
def test_ip_gradient(extra):
    check_layer('type: "InnerProduct" inner_product_param { num_output: 3 %s %s }'
                % (extra, IP_FILLERS), [rnd(2, 3, 2, seed=4)])


def test_ip_batch_change_and_k_check():
    layer, bottom, top = make('type: "InnerProduct" inner_product_param { num_output: 3 }',
                              [rnd(2, 4)])
    bottom[0].reshape(5, 4)
    layer.forward(bottom, top)
    assert top[0].shape == (5, 3)
    bottom[0].reshape(5, 2, 2)  # still K = 4
    layer.forward(bottom, top)
    assert top[0].shape == (5, 3)
    bottom[0].reshape(5, 3)
    with pytest.raises(LayerError, match="incompatible"):
        layer.forward(bottom, top)


def test_ip_preloaded_blobs():
    lp = parse_text('name: "ip" type: "InnerProduct" inner_product_param { num_output: 2 }',
                    caffe_pb2.LayerParameter())
    # legacy 4-D shapes from old caffemodels are accepted
    w = lp.blobs.add()
    w.shape.dim.extend([1, 1, 2, 3])
    w.data.extend([1, 2, 3, 4, 5, 6])
    b = lp.blobs.add()
    b.shape.dim.extend([1, 1, 1, 2])
    b.data.extend([10, 20])
    layer = create_layer(lp)
    bottom, top = [Blob(1, 3)], [Blob()]
    bottom[0].data[...] = [[1, 1, 1]]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[16, 35]])
    # wrong shape is an error naming the layer
    w.shape.dim[3] = 4
    w.data.extend([0, 0])
    with pytest.raises(LayerError, match="'ip'.*weight"):
        create_layer(lp).setup([Blob(1, 3)], [Blob()])


def test_ip_needs_num_output():
    with pytest.raises(LayerError, match="num_output"):
        make('type: "InnerProduct"', [rnd(2, 3)])


# -- Eltwise --------------------------------------------------------------------------------

def test_eltwise_sum_coeff_values():
    a, b, c = rnd(2, 3, seed=1), rnd(2, 3, seed=2), rnd(2, 3, seed=3)
    layer, bottom, top = make('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 '
                              'coeff: -0.5 coeff: 2 }', [a, b, c])
    (y,) = fwd(layer, bottom, top)
    np.testing.assert_allclose(y, a - 0.5 * b + 2 * c, rtol=1e-6, atol=1e-7)
    dy = rnd(2, 3, seed=4)
    bwd(layer, bottom, top, [dy])
    np.testing.assert_allclose(bottom[0].diff, dy)
    np.testing.assert_allclose(bottom[1].diff, -0.5 * dy)
    np.testing.assert_allclose(bottom[2].diff, 2 * dy)


def test_eltwise_prod_values():
    a, b, c = rnd(2, 3, seed=1), rnd(2, 3, seed=2), rnd(2, 3, seed=3)
    for stable in ("true", "false"):
        layer, bottom, top = make('type: "Eltwise" eltwise_param { operation: PROD '
                                  'stable_prod_grad: %s }' % stable, [a, b, c])
        (y,) = fwd(layer, bottom, top)
        np.testing.assert_allclose(y, a * b * c, rtol=1e-6)
        dy = rnd(2, 3, seed=4)
        bwd(layer, bottom, top, [dy])
        np.testing.assert_allclose(bottom[0].diff, dy * b * c, rtol=1e-5)
        np.testing.assert_allclose(bottom[1].diff, dy * a * c, rtol=1e-5)
        np.testing.assert_allclose(bottom[2].diff, dy * a * b, rtol=1e-5)


def test_eltwise_max_ties():
    # Caffe: bottom 1 wins ties with bottom 0; later bottoms must be strictly greater.
    a = np.array([1, 2, 3, 5], np.float32)
    b = np.array([1, 1, 3, 4], np.float32)
    c = np.array([1, 3, 3, 5], np.float32)
    layer, bottom, top = make('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    (y,) = fwd(layer, bottom, top)
    np.testing.assert_array_equal(y, [1, 3, 3, 5])
    np.testing.assert_array_equal(layer.max_idx, [1, 2, 1, 0])
    dy = np.array([10, 20, 30, 40], np.float32)
    bwd(layer, bottom, top, [dy])
    np.testing.assert_array_equal(bottom[0].diff, [0, 0, 0, 40])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 20, 0, 0])


@pytest.mark.parametrize("param", ["", "operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5",
                                   "operation: PROD", "operation: PROD stable_prod_grad: false",
                                   "operation: MAX"])
def test_eltwise_gradient(param):
    bots = distinct(3, (2, 3, 2), seed=5)
    if "PROD" in param:  # keep away from zero for the y/x gradient
        bots = [np.where(x >= 0, 1, -1) * (0.5 + np.abs(x)) for x in bots]
    check_layer('type: "Eltwise" eltwise_param { %s }' % param, bots)


def test_eltwise_errors():
    with pytest.raises(LayerError, match="same shape"):
        make('type: "Eltwise"', [rnd(2, 3), rnd(3, 2)])
    with pytest.raises(LayerError, match="one coefficient per bottom"):
        make('type: "Eltwise" eltwise_param { coeff: 1 }', [rnd(2), rnd(2)])
    with pytest.raises(LayerError, match="summation"):
        make('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }',
             [rnd(2), rnd(2)])
    with pytest.raises(LayerError, match="at least 2"):
        make('type: "Eltwise"', [rnd(2)])


# -- Concat / Slice -------------------------------------------------------------------------

def test_concat_values_and_backward():
    a, b = rnd(2, 1, 3, seed=1), rnd(2, 2, 3, seed=2)
    layer, bottom, top = make('type: "Concat"', [a, b])
    (y,) = fwd(layer, bottom, top)
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))
    dy = rnd(2, 3, 3, seed=3)
    bwd(layer, bottom, top, [dy], [True, False])
    np.testing.assert_array_equal(bottom[0].diff, dy[:, :1])
    np.testing.assert_array_equal(bottom[1].diff, 0)
    # legacy concat_dim and negative axis
    for p in ("concat_dim: 0", "axis: -3"):
        layer, bottom, top = make('type: "Concat" concat_param { %s }' % p,
                                  [rnd(1, 2, 3, seed=4), rnd(3, 2, 3, seed=5)])
        (y,) = fwd(layer, bottom, top)
        np.testing.assert_array_equal(y, np.concatenate([bottom[0].data, bottom[1].data], 0))


def test_concat_single_bottom_shares():
    layer, bottom, top = make('type: "Concat"', [rnd(2, 3)])
    assert top[0].shares_data_with(bottom[0])
    top[0].diff[...] = 7
    assert (bottom[0].diff == 7).all()


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_gradient(axis):
    shapes = {0: [(1, 2, 3), (2, 2, 3)], 1: [(2, 1, 3), (2, 3, 3)], -1: [(2, 2, 1), (2, 2, 2)]}
    check_layer('type: "Concat" concat_param { axis: %d }' % axis,
                [rnd(*s, seed=i) for i, s in enumerate(shapes[axis])])


def test_concat_errors():
    with pytest.raises(LayerError, match="not both"):
        make('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [rnd(2, 2), rnd(2, 2)])
    with pytest.raises(LayerError, match="same shape, except"):
        make('type: "Concat"', [rnd(2, 2), rnd(3, 2)])
    with pytest.raises(LayerError, match="number of axes"):
        make('type: "Concat"', [rnd(2, 2), rnd(2, 2, 1)])
    with pytest.raises(LayerError, match="out of range"):
        make('type: "Concat" concat_param { axis: 2 }', [rnd(2, 2), rnd(2, 2)])


def test_slice_values():
    x = rnd(2, 6, 2, seed=1)
    layer, bottom, top = make('type: "Slice" slice_param { axis: 1 slice_point: 1 '
                              'slice_point: 4 }', [x], ntop=3)
    ys = fwd(layer, bottom, top)
    for y, e in zip(ys, np.split(x, [1, 4], axis=1)):
        np.testing.assert_array_equal(y, e)
    dys = [rnd(*y.shape, seed=10 + i) for i, y in enumerate(ys)]
    bwd(layer, bottom, top, dys)
    np.testing.assert_array_equal(bottom[0].diff, np.concatenate(dys, axis=1))
    # equal split, legacy slice_dim
    layer, bottom, top = make('type: "Slice" slice_param { slice_dim: 0 }', [rnd(4, 3)], ntop=2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]


@pytest.mark.parametrize("param,ntop", [("axis: 0", 2), ("slice_point: 1 slice_point: 3", 3),
                                        ("axis: -1 slice_point: 1", 2)])
def test_slice_gradient(param, ntop):
    check_layer('type: "Slice" slice_param { %s }' % param, [rnd(4, 4, 2, seed=2)],
                top_count=ntop)


def test_slice_errors():
    with pytest.raises(LayerError, match="evenly divide"):
        make('type: "Slice"', [rnd(2, 3)], ntop=2)
    with pytest.raises(LayerError, match="one entry fewer"):
        make('type: "Slice" slice_param { slice_point: 1 }', [rnd(2, 4)], ntop=3)
    with pytest.raises(LayerError, match="strictly increasing"):
        make('type: "Slice" slice_param { slice_point: 2 slice_point: 2 }', [rnd(2, 4)], ntop=3)
    with pytest.raises(LayerError, match="beyond the end"):
        make('type: "Slice" slice_param { slice_point: 5 }', [rnd(2, 4)], ntop=2)
    with pytest.raises(LayerError, match="not both"):
        make('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', [rnd(2, 4)], ntop=2)


# -- Split / Reshape / Flatten --------------------------------------------------------------

def test_split_shares_and_sums():
    x = rnd(2, 3, seed=1)
    layer, bottom, top = make('type: "Split"', [x], ntop=3)
    for t in top:
        assert t.shares_data_with(bottom[0])
        np.testing.assert_array_equal(t.data, x)
    dys = [rnd(2, 3, seed=i) for i in range(3)]
    bwd(layer, bottom, top, dys)
    np.testing.assert_allclose(bottom[0].diff, (dys[0] + dys[1]) + dys[2])
    # a bottom that grows is shared again on the next forward
    bottom[0].reshape(5, 3)
    bottom[0].data[...] = 4
    layer.forward(bottom, top)
    assert all(t.shape == (5, 3) and (t.data == 4).all() for t in top)


def test_split_gradient_and_inplace():
    check_layer('type: "Split"', [rnd(2, 3)], top_count=2)
    lp = parse_text('type: "Split"', caffe_pb2.LayerParameter())
    b = Blob(2, 3)
    with pytest.raises(LayerError, match="in-place"):
        create_layer(lp).setup([b], [Blob(), b])


@pytest.mark.parametrize("param,in_shape,out_shape", [
    ("shape { dim: 0 dim: -1 dim: 2 }", (2, 3, 4, 2), (2, 12, 2)),
    ("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", (2, 4, 3), (2, 2, 2, 3)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 3), (2, 3, 1)),
    ("shape { dim: 1 } axis: 0 num_axes: 0", (2, 3), (1, 2, 3)),
    ("shape { dim: -1 } axis: 1", (2, 3, 4), (2, 12)),
    ("shape { dim: 0 dim: 0 dim: 3 dim: -1 }", (2, 3, 6), (2, 3, 3, 2)),
    ("shape { dim: 6 }", (2, 3), (6,)),
])
def test_reshape_shapes(param, in_shape, out_shape):
    x = rnd(*in_shape)
    layer, bottom, top = make('type: "Reshape" reshape_param { %s }' % param, [x])
    assert top[0].shape == out_shape
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x.reshape(out_shape))
    assert top[0].shares_data_with(bottom[0])
    top[0].diff[...] = 3
    assert (bottom[0].diff == 3).all()


def test_reshape_gradient_and_errors():
    check_layer('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }', [rnd(2, 3, 2)])
    with pytest.raises(LayerError, match="divisible"):
        make('type: "Reshape" reshape_param { shape { dim: -1 dim: 5 } }', [rnd(2, 3)])
    with pytest.raises(LayerError, match="more than one -1"):
        make('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', [rnd(2, 3)])
    with pytest.raises(LayerError, match="count must match"):
        make('type: "Reshape" reshape_param { shape { dim: 4 } }', [rnd(2, 3)])
    with pytest.raises(LayerError, match="no corresponding bottom axis"):
        make('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 0 } }', [rnd(6, 1)])
    with pytest.raises(LayerError, match="out of range"):
        make('type: "Reshape" reshape_param { shape { dim: 6 } num_axes: 3 }', [rnd(2, 3)])
    lp = parse_text('type: "Reshape" reshape_param { shape { dim: 6 } }',
                    caffe_pb2.LayerParameter())
    b = Blob(2, 3)
    with pytest.raises(LayerError, match="in-place"):
        create_layer(lp).setup([b], [b])


@pytest.mark.parametrize("param,out_shape", [("", (2, 24)), ("axis: 1 end_axis: 2", (2, 12, 2)),
                                             ("axis: 0 end_axis: -2", (24, 2)),
                                             ("axis: 2", (2, 3, 8))])
def test_flatten(param, out_shape):
    x = rnd(2, 3, 4, 2)
    layer, bottom, top = make('type: "Flatten" flatten_param { %s }' % param, [x])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x.reshape(out_shape))
    top[0].diff[...] = 2
    assert (bottom[0].diff == 2).all()


def test_flatten_gradient_and_inplace():
    check_layer('type: "Flatten"', [rnd(2, 3, 2)])
    lp = parse_text('type: "Flatten"', caffe_pb2.LayerParameter())
    b = Blob(2, 3)
    with pytest.raises(LayerError, match="in-place"):
        create_layer(lp).setup([b], [b])


@pytest.mark.parametrize("type_,param", [("Flatten", ""),
                                         ("Reshape", "reshape_param { shape { dim: 6 } }")])
def test_view_layer_in_place_names_the_blob(type_, param):
    lp = parse_text('name: "v" type: "%s" bottom: "feat" top: "feat" %s' % (type_, param),
                    caffe_pb2.LayerParameter())
    b = Blob(2, 3)
    with pytest.raises(LayerError) as e:
        create_layer(lp).setup([b], [b])
    assert str(e.value) == ("Layer 'v' (%s): %s does not allow in-place computation: top 0 "
                            "'feat' is its bottom 0; give the top its own name" % (type_, type_))


def test_flatten_axis_after_end_axis():
    x = rnd(2, 3, 5, 5)
    with pytest.raises(LayerError) as e:
        make('name: "fl" bottom: "data" type: "Flatten" '
             'flatten_param { axis: 3 end_axis: 1 }', [x])
    assert str(e.value) == ("Layer 'fl' (Flatten): flatten_param axis 3 comes after end_axis 1 "
                            "(axes 3 > 1 + 1) for bottom 'data' of shape (2, 3, 5, 5): axis "
                            "must be <= end_axis + 1")
    # negative axes are canonicalised first: axis -1 (3) after end_axis -3 (1)
    with pytest.raises(LayerError, match=r"axis -1 comes after end_axis -3 \(axes 3 > 1 \+ 1\)"):
        make('type: "Flatten" flatten_param { axis: -1 end_axis: -3 }', [x])
    # axis == end_axis + 1 flattens no axis: Caffe inserts a 1 there (count(2, 2) = 1)
    layer, bottom, top = make('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 1, 5, 5)
    np.testing.assert_array_equal(top[0].data, x.reshape(2, 3, 1, 5, 5))


# -- Embed ----------------------------------------------------------------------------------

EMBED = ('type: "Embed" embed_param { input_dim: 5 num_output: 3 %s '
         'weight_filler { type: "uniform" min: -1 max: 1 } '
         'bias_filler { type: "uniform" min: -1 max: 1 } }')


def test_embed_values():
    idx = np.array([[0, 4, 2], [2, 2, 1]], np.float32)
    layer, bottom, top = make(EMBED % "", [idx])
    W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    assert W.shape == (5, 3) and b.shape == (3,)
    (y,) = fwd(layer, bottom, top)
    assert y.shape == (2, 3, 3)
    np.testing.assert_allclose(y, W[idx.astype(int)] + b, rtol=1e-6)
    dy = rnd(2, 3, 3, seed=7)
    bwd(layer, bottom, top, [dy], [False])
    ew = np.zeros((5, 3), np.float32)
    for i, k in enumerate(idx.astype(int).ravel()):
        ew[k] += dy.reshape(6, 3)[i]
    np.testing.assert_allclose(layer.blobs[0].diff, ew, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.reshape(6, 3).sum(0), rtol=1e-5)


@pytest.mark.parametrize("extra", ["", "bias_term: false"])
def test_embed_gradient(extra):
    idx = np.array([[0, 4], [2, 2], [1, 0]], np.float32)
    check_layer(EMBED % extra, [idx], check_bottom=-1)


def test_embed_errors():
    layer, bottom, top = make(EMBED % "", [np.array([1, 2], np.float32)])
    bottom[0].data[...] = [1, 5]
    with pytest.raises(LayerError, match="integer index in"):
        layer.forward(bottom, top)
    bottom[0].data[...] = [1, 1.5]
    with pytest.raises(LayerError, match="integer index"):
        layer.forward(bottom, top)
    bottom[0].data[...] = [1, 2]
    layer.forward(bottom, top)
    with pytest.raises(LayerError, match="cannot backpropagate"):
        layer.backward(top, [True], bottom)
    with pytest.raises(LayerError, match="input_dim"):
        make('type: "Embed" embed_param { num_output: 3 }', [np.zeros(2, np.float32)])


# -- Tile -----------------------------------------------------------------------------------

def test_tile_values():
    x = rnd(2, 2, 3, seed=1)
    layer, bottom, top = make('type: "Tile" tile_param { axis: 1 tiles: 3 }', [x])
    (y,) = fwd(layer, bottom, top)
    np.testing.assert_array_equal(y, np.tile(x, (1, 3, 1)))
    dy = rnd(2, 6, 3, seed=2)
    bwd(layer, bottom, top, [dy])
    np.testing.assert_allclose(bottom[0].diff, dy.reshape(2, 3, 2, 3).sum(1), rtol=1e-6)


@pytest.mark.parametrize("param", ["axis: 1 tiles: 3", "axis: 0 tiles: 2", "axis: -1 tiles: 2"])
def test_tile_gradient(param):
    check_layer('type: "Tile" tile_param { %s }' % param, [rnd(2, 2, 2)])


def test_tile_errors():
    with pytest.raises(LayerError, match="tiles must be positive"):
        make('type: "Tile"', [rnd(2, 2)])


# -- Filter ---------------------------------------------------------------------------------

def test_filter_values_and_shape_change():
    a, b = rnd(4, 3, seed=1), rnd(4, 2, 2, seed=2)
    sel = np.array([1, 0, 1, 1], np.float32)
    layer, bottom, top = make('type: "Filter"', [a, b, sel], ntop=2)
    assert top[0].shape == (4, 3)  # Caffe: the full batch at setup
    ya, yb = fwd(layer, bottom, top)
    np.testing.assert_array_equal(ya, a[[0, 2, 3]])
    np.testing.assert_array_equal(yb, b[[0, 2, 3]])
    dya, dyb = rnd(3, 3, seed=3), rnd(3, 2, 2, seed=4)
    bottom[0].diff[...] = 9
    bwd(layer, bottom, top, [dya, dyb], [True, True, False])
    ea = np.zeros_like(a)
    ea[[0, 2, 3]] = dya
    np.testing.assert_array_equal(bottom[0].diff, ea)
    np.testing.assert_array_equal(bottom[1].diff[[0, 2, 3]], dyb)
    np.testing.assert_array_equal(bottom[1].diff[1], 0)
    # the tops follow the selector
    bottom[2].data[...] = [0, 0, 0, 1]
    layer.forward(bottom, top)
    assert top[0].shape == (1, 3) and top[1].shape == (1, 2, 2)
    bottom[2].data[...] = 0
    layer.forward(bottom, top)
    assert top[0].shape == (0, 3)
    bwd(layer, bottom, top, [np.zeros((0, 3)), np.zeros((0, 2, 2))], [True, True, False])
    assert (bottom[0].diff == 0).all()
    with pytest.raises(LayerError, match="selector"):
        layer.backward(top, [True, True, True], bottom)


def test_filter_gradient():
    sel = np.array([0, 1, 1], np.float32)
    for i in (0, 1):
        check_layer('type: "Filter"', [rnd(3, 2, seed=1), rnd(3, 2, 1, seed=2), sel],
                    top_count=2, check_bottom=i)


def test_filter_errors():
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        make('type: "Filter"', [rnd(3, 2), np.ones(3, np.float32)], ntop=2)
    with pytest.raises(LayerError, match="same first dimension"):
        make('type: "Filter"', [rnd(3, 2), np.ones(4, np.float32)])
    with pytest.raises(LayerError, match="must be 1 except the first"):
        make('type: "Filter"', [rnd(3, 2), np.ones((3, 2), np.float32)])


# -- BatchReindex ---------------------------------------------------------------------------

def test_batch_reindex_values():
    x = rnd(4, 3, seed=1)
    idx = np.array([3, 0, 3, 1, 3], np.float32)
    layer, bottom, top = make('type: "BatchReindex"', [x, idx])
    (y,) = fwd(layer, bottom, top)
    np.testing.assert_array_equal(y, x[[3, 0, 3, 1, 3]])
    dy = rnd(5, 3, seed=2)
    bwd(layer, bottom, top, [dy], [True, False])
    e = np.zeros_like(x)
    for i, k in enumerate([3, 0, 3, 1, 3]):
        e[k] += dy[i]
    np.testing.assert_allclose(bottom[0].diff, e, rtol=1e-6)
    with pytest.raises(LayerError, match="index"):
        layer.backward(top, [True, True], bottom)


def test_batch_reindex_gradient_and_errors():
    check_layer('type: "BatchReindex"', [rnd(3, 2, 2), np.array([2, 2, 0, 1], np.float32)],
                check_bottom=0)
    layer, bottom, top = make('type: "BatchReindex"', [rnd(3, 2), np.array([0, 3], np.float32)])
    with pytest.raises(LayerError, match="batch size"):
        layer.forward(bottom, top)
    bottom[1].data[...] = [-1, 0]
    with pytest.raises(LayerError, match="negative"):
        layer.forward(bottom, top)
    with pytest.raises(LayerError, match="1-D"):
        make('type: "BatchReindex"', [rnd(3, 2), np.zeros((2, 1), np.float32)])


# -- Silence / Parameter --------------------------------------------------------------------

def test_silence():
    layer, bottom, top = make('type: "Silence"', [rnd(2, 3), rnd(4)], ntop=0)
    layer.forward(bottom, top)
    for b in bottom:
        b.diff[...] = 5
    layer.backward(top, [True, False], bottom)
    assert (bottom[0].diff == 0).all() and (bottom[1].diff == 5).all()
    with pytest.raises(LayerError, match="top"):
        make('type: "Silence"', [rnd(2)], ntop=1)


def test_parameter_shares_data_and_diff():
    layer, bottom, top = make('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }',
                              [], ntop=1)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    assert (layer.blobs[0].data == 0).all()
    layer.blobs[0].data[...] = rnd(2, 3)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, layer.blobs[0].data)
    top[0].diff[...] = 4
    layer.backward(top, [], bottom)
    assert (layer.blobs[0].diff == 4).all()
    # a blob replaced after setup (weights loaded from a file) is shared at the next forward
    nb = Blob(2, 3)
    nb.data[...] = 7
    layer.blobs[0] = nb
    layer.forward(bottom, top)
    assert (top[0].data == 7).all()


def test_parameter_gradient():
    lp = parse_text('type: "Parameter" parameter_param { shape { dim: 3 } }',
                    caffe_pb2.LayerParameter())
    layer = create_layer(lp)
    top = [Blob()]
    layer.setup([], top)
    layer.blobs[0].data[...] = [1, -2, 3]
    from caffepy.gradient_check import GradientChecker
    GradientChecker().check(layer, [], top)
