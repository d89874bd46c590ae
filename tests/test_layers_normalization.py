"""Softmax, BatchNorm, Scale, Bias, MVN, Reduction, ArgMax: gradients, values, errors."""
import numpy as np
import pytest

from caffepy.blob import Blob
from caffepy.gradient_check import GradientChecker, check_layer
from caffepy.layer import LayerError, create_layer
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text


def make_layer(text, phase=None):
    return create_layer(parse_text('name: "l" ' + text, caffe_pb2.LayerParameter()), phase)


def blob_of(a):
    a = np.asarray(a, dtype=np.float32)
    b = Blob(a.shape)
    b.data[...] = a
    return b


def setup(text, xs, phase=None, in_place=False, params=None):
    layer = make_layer(text, phase)
    bottom = [blob_of(x) for x in xs]
    top = [bottom[0]] if in_place else [Blob()]
    layer.setup(bottom, top)
    if params is not None:
        for b, p in zip(layer.blobs, params):
            b.data[...] = np.asarray(p, dtype=np.float32).reshape(b.shape)
    return layer, bottom, top


def fwd_bwd(layer, bottom, top, dy, prop=None):
    layer.forward(bottom, top)
    y = top[0].data.copy()
    for b in layer.blobs:
        b.diff[...] = 0
    top[0].diff[...] = np.asarray(dy, dtype=np.float32).reshape(top[0].shape)
    layer.backward(top, prop or [True] * len(bottom), bottom)
    return y


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- Softmax -----------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_gradient(axis, rng):
    check_layer('name: "l" type: "Softmax" softmax_param { axis: %d }' % axis,
                [randn(rng, 2, 3, 4)])


def test_softmax_values(rng):
    x = randn(rng, 2, 4, 3)
    layer, bottom, top = setup('type: "Softmax"', [x])
    dy = randn(rng, 2, 4, 3)
    y = fwd_bwd(layer, bottom, top, dy)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(y, p, rtol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, p * (dy - (dy * p).sum(1, keepdims=True)),
                               rtol=1e-4, atol=1e-6)
    # huge inputs stay finite (max subtraction)
    layer, bottom, top = setup('type: "Softmax"', [np.array([[1000.0, 1001.0]])])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, [[1 / (1 + np.e), np.e / (1 + np.e)]], rtol=1e-6)


def test_softmax_in_place(rng):
    x = randn(rng, 3, 5)
    dy = randn(rng, 3, 5)
    l1, b1, t1 = setup('type: "Softmax"', [x])
    y1 = fwd_bwd(l1, b1, t1, dy)
    l2, b2, t2 = setup('type: "Softmax"', [x], in_place=True)
    y2 = fwd_bwd(l2, b2, t2, dy)
    np.testing.assert_allclose(y2, y1, rtol=1e-7)
    np.testing.assert_allclose(b2[0].diff, b1[0].diff, rtol=1e-6, atol=1e-8)


def test_softmax_bad_axis():
    with pytest.raises(LayerError, match="axis"):
        setup('type: "Softmax" softmax_param { axis: 3 }', [np.ones((2, 3))])


# -- BatchNorm -----------------------------------------------------------------------------

def test_batchnorm_gradient_train(rng):
    # Caffe's BatchNorm gradient test: compare against the ½Σtop² objective
    x = randn(rng, 2, 3, 2, 2)
    check_layer('name: "l" type: "BatchNorm"', [x], phase=caffe_pb2.TRAIN, threshold=5e-3)


def test_batchnorm_gradient_global(rng):
    x = randn(rng, 2, 3, 2)
    layer, bottom, top = setup('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
                               [x], params=[[0.3, -0.6, 0.9], [3.0, 1.5, 6.0], [1.5]])
    GradientChecker(1e-2, 2e-3).check(layer, bottom, top, check_params=False)


def test_batchnorm_values_and_running_stats(rng):
    x = randn(rng, 4, 3, 2) * 2 + 1
    text = 'type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }'
    layer, bottom, top = setup(text, [x], phase=caffe_pb2.TRAIN,
                               params=[[1, 2, 3], [4, 5, 6], [2]])
    assert not layer.use_global_stats
    dy = randn(rng, 4, 3, 2)
    y = fwd_bwd(layer, bottom, top, dy)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(0, 2))
    var = x64.var(axis=(0, 2))
    std = np.sqrt(var + 1e-3)
    yn = (x64 - mu[None, :, None]) / std[None, :, None]
    np.testing.assert_allclose(y, yn, rtol=1e-4, atol=1e-5)
    m = 8
    np.testing.assert_allclose(layer.blobs[2].data, [0.9 * 2 + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, 0.9 * np.array([1, 2, 3]) + mu, rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].data,
                               0.9 * np.array([4, 5, 6]) + var * m / (m - 1), rtol=1e-5)
    d64 = dy.astype(np.float64)
    dx = (d64 - d64.mean(axis=(0, 2), keepdims=True)
          - yn * (d64 * yn).mean(axis=(0, 2), keepdims=True)) / std[None, :, None]
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-5)
    # no gradient into the statistics
    for b in layer.blobs:
        np.testing.assert_array_equal(b.diff, 0)


def test_batchnorm_global_values(rng):
    x = randn(rng, 2, 2, 3)
    layer, bottom, top = setup('type: "BatchNorm"', [x], phase=caffe_pb2.TEST,
                               params=[[1, -2], [8, 2], [4]])
    assert layer.use_global_stats
    dy = randn(rng, 2, 2, 3)
    y = fwd_bwd(layer, bottom, top, dy)
    mu = np.array([0.25, -0.5])[None, :, None]
    std = np.sqrt(np.array([2.0, 0.5]) + 1e-5)[None, :, None]
    np.testing.assert_allclose(y, (x - mu) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, dy / std, rtol=1e-5)
    np.testing.assert_array_equal(layer.blobs[2].data, [4])  # stats unchanged
    # scale factor 0: mean = var = 0
    layer.blobs[2].data[...] = 0
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_in_place_and_2d(rng):
    x = randn(rng, 5, 3)
    dy = randn(rng, 5, 3)
    l1, b1, t1 = setup('type: "BatchNorm"', [x], phase=caffe_pb2.TRAIN)
    y1 = fwd_bwd(l1, b1, t1, dy)
    l2, b2, t2 = setup('type: "BatchNorm"', [x], phase=caffe_pb2.TRAIN, in_place=True)
    y2 = fwd_bwd(l2, b2, t2, dy)
    np.testing.assert_allclose(y2, y1, rtol=1e-6)
    np.testing.assert_allclose(b2[0].diff, b1[0].diff, rtol=1e-5, atol=1e-7)
    # 1-D input: one channel
    l3, b3, t3 = setup('type: "BatchNorm"', [np.arange(4.0)], phase=caffe_pb2.TRAIN)
    l3.forward(b3, t3)
    assert l3.blobs[0].shape == (1,)
    np.testing.assert_allclose(l3.blobs[1].data, [np.var(np.arange(4.0)) * 4 / 3], rtol=1e-6)


def test_batchnorm_param_specs():
    layer = make_layer('type: "BatchNorm"')
    layer.setup([blob_of(np.ones((2, 3)))], [Blob()])
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    layer = make_layer('type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 }')
    layer.setup([blob_of(np.ones((2, 3)))], [Blob()])
    assert len(layer.layer_param.param) == 3
    assert layer.layer_param.param[0].decay_mult == 0
    layer = make_layer('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }')
    with pytest.raises(LayerError, match="batch normalization statistics"):
        layer.setup([blob_of(np.ones((2, 3)))], [Blob()])


def test_batchnorm_phase_and_override():
    assert make_layer('type: "BatchNorm"', caffe_pb2.TEST).phase == caffe_pb2.TEST
    layer, _, _ = setup('type: "BatchNorm" batch_norm_param { use_global_stats: false }',
                        [np.ones((2, 3))], phase=caffe_pb2.TEST)
    assert not layer.use_global_stats
    layer, _, _ = setup('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
                        [np.ones((2, 3))], phase=caffe_pb2.TRAIN)
    assert layer.use_global_stats


def test_batchnorm_preloaded_shape_mismatch():
    layer = make_layer('type: "BatchNorm"')
    for s in ((4,), (4,), (1,)):
        layer.blobs.add_blob(*s)
    with pytest.raises(LayerError, match="channels"):
        layer.setup([blob_of(np.ones((2, 3)))], [Blob()])


# -- Scale / Bias ----------------------------------------------------------------------------

SCALE_GRAD = [
    ('type: "Scale"', [(2, 3, 4)]),
    ('type: "Scale" scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } '
     'bias_filler { type: "uniform" } }', [(2, 3, 4)]),
    ('type: "Scale" scale_param { axis: 0 num_axes: 2 bias_term: true }', [(2, 3, 2)]),
    ('type: "Scale" scale_param { num_axes: 0 }', [(2, 3)]),
    ('type: "Scale" scale_param { num_axes: -1 }', [(2, 3, 2)]),
    ('type: "Scale"', [(2, 3, 2, 2), (3, 2)]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 3, 2), (3,)]),
    ('type: "Scale" scale_param { axis: -1 }', [(2, 3, 4), (4,)]),
    ('type: "Scale" scale_param { axis: 0 }', [(2, 3), (2, 3)]),
    ('type: "Bias"', [(2, 3, 4)]),
    ('type: "Bias" bias_param { filler { type: "gaussian" } num_axes: 2 }', [(2, 3, 4)]),
    ('type: "Bias"', [(2, 3, 4), (3, 4)]),
]


@pytest.mark.parametrize("text,shapes", SCALE_GRAD)
def test_scale_bias_gradient(text, shapes, rng):
    xs = [randn(rng, *s) for s in shapes]
    layer, _, _ = check_layer('name: "l" ' + text, xs, threshold=2e-3)


@pytest.mark.parametrize("ltype", ["Scale", "Bias"])
def test_scalar_bottom1_gradient(ltype, rng):
    # an empty-shape bottom[1] is a scalar applied from axis 0
    layer = make_layer('type: "%s" scale_param { bias_term: true }' % ltype)
    x = blob_of(randn(rng, 2, 3))
    s = Blob()
    s.reshape(())
    s.data[...] = 1.3
    top = [Blob()]
    layer.setup([x, s], top)
    GradientChecker(1e-2, 2e-3).check(layer, [x, s], top)
    layer.forward([x, s], top)
    expect = x.data * np.float32(1.3) if ltype == "Scale" else x.data + np.float32(1.3)
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-6)


def test_scale_values(rng):
    x = randn(rng, 2, 3, 2)
    dy = randn(rng, 2, 3, 2)
    layer, bottom, top = setup('type: "Scale" scale_param { bias_term: true }', [x],
                               params=[[1, 2, 3], [0.5, -1, 0]])
    y = fwd_bwd(layer, bottom, top, dy)
    s = np.array([1, 2, 3.0])[None, :, None]
    b = np.array([0.5, -1, 0])[None, :, None]
    np.testing.assert_allclose(y, x * s + b, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, dy * s, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].diff, (dy * x).sum((0, 2)), rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum((0, 2)), rtol=1e-5)
    # param diffs accumulate
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * dy.sum((0, 2)), rtol=1e-5)


def test_scale_default_fillers_and_shapes():
    layer, _, _ = setup('type: "Scale" scale_param { bias_term: true }', [np.ones((2, 3, 4))])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    layer, _, _ = setup('type: "Scale" scale_param { axis: 0 num_axes: -1 }', [np.ones((2, 3))])
    assert layer.blobs[0].shape == (2, 3)
    layer, _, _ = setup('type: "Scale" scale_param { num_axes: 0 bias_term: true }',
                        [np.ones((2, 3))])
    assert [b.shape for b in layer.blobs] == [(), ()]
    # bottom[1] scale with a learned bias: the bias is blob 0
    layer, _, _ = setup('type: "Scale" scale_param { bias_term: true }',
                        [np.ones((2, 3, 4)), np.ones((3, 4))])
    assert [b.shape for b in layer.blobs] == [(3, 4)]


def test_scale_bottom1_and_in_place(rng):
    x = randn(rng, 2, 3, 4)
    s = randn(rng, 3, 4)
    dy = randn(rng, 2, 3, 4)
    layer, bottom, top = setup('type: "Scale"', [x, s])
    y = fwd_bwd(layer, bottom, top, dy)
    np.testing.assert_allclose(y, x * s, rtol=1e-6)
    np.testing.assert_allclose(bottom[1].diff, (dy * x).sum(0), rtol=1e-5, atol=1e-6)
    l2, b2, t2 = setup('type: "Scale" scale_param { bias_term: true }', [x, s], in_place=True)
    y2 = fwd_bwd(l2, b2, t2, dy)
    np.testing.assert_allclose(y2, y, rtol=1e-6)
    np.testing.assert_allclose(b2[0].diff, dy * s, rtol=1e-6)
    np.testing.assert_allclose(b2[1].diff, (dy * x).sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l2.blobs[0].diff, dy.sum(0), rtol=1e-5, atol=1e-6)


def test_scale_errors():
    with pytest.raises(LayerError, match="extends past"):
        setup('type: "Scale" scale_param { axis: 1 num_axes: 3 }', [np.ones((2, 3))])
    with pytest.raises(LayerError, match="dimension mismatch"):
        setup('type: "Scale"', [np.ones((2, 3)), np.ones(4)])
    layer = make_layer('type: "Scale"')
    layer.blobs.add_blob(5)
    with pytest.raises(LayerError, match="dimension mismatch"):
        layer.setup([blob_of(np.ones((2, 3)))], [Blob()])
    with pytest.raises(LayerError):
        setup('type: "Bias"', [np.ones((2, 3)), np.ones((3, 2))])


def test_bias_values(rng):
    x = randn(rng, 2, 3, 4)
    b = randn(rng, 3, 4)
    dy = randn(rng, 2, 3, 4)
    layer, bottom, top = setup('type: "Bias"', [x, b])
    y = fwd_bwd(layer, bottom, top, dy)
    np.testing.assert_allclose(y, x + b, rtol=1e-6)
    np.testing.assert_array_equal(bottom[0].diff, dy)
    np.testing.assert_allclose(bottom[1].diff, dy.sum(0), rtol=1e-5, atol=1e-6)
    layer, bottom, top = setup('type: "Bias"', [x], in_place=True, params=[[1, 2, 3]])
    y = fwd_bwd(layer, bottom, top, dy)
    np.testing.assert_allclose(y, x + np.array([1, 2, 3.0])[None, :, None], rtol=1e-6)
    np.testing.assert_array_equal(bottom[0].diff, dy)
    np.testing.assert_allclose(layer.blobs[0].diff, dy.sum((0, 2)), rtol=1e-5)


# -- MVN --------------------------------------------------------------------------------------

@pytest.mark.parametrize("param", ["", "mvn_param { across_channels: true }",
                                   "mvn_param { normalize_variance: false }",
                                   "mvn_param { normalize_variance: false across_channels: true }"])
def test_mvn_gradient(param, rng):
    check_layer('name: "l" type: "MVN" ' + param, [randn(rng, 2, 3, 2, 2)], threshold=5e-3)


def test_mvn_values(rng):
    x = randn(rng, 2, 3, 4, 2) * 3 + 2
    layer, bottom, top = setup('type: "MVN"', [x])
    layer.forward(bottom, top)
    x64 = x.astype(np.float64).reshape(6, 8)
    yn = (x64 - x64.mean(1, keepdims=True)) / (x64.std(1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(top[0].data.reshape(6, 8), yn, rtol=1e-4, atol=1e-5)
    layer, bottom, top = setup('type: "MVN" mvn_param { across_channels: true '
                               'normalize_variance: false }', [x])
    layer.forward(bottom, top)
    x64 = x.astype(np.float64).reshape(2, 24)
    np.testing.assert_allclose(top[0].data.reshape(2, 24), x64 - x64.mean(1, keepdims=True),
                               rtol=1e-5, atol=1e-5)


def test_mvn_legacy_top_shape():
    layer, bottom, top = setup('type: "MVN"', [np.arange(24.0).reshape(2, 3, 4)])
    assert top[0].shape == (2, 3, 4, 1)
    with pytest.raises(LayerError, match="at most 4 axes"):
        setup('type: "MVN"', [np.ones((1, 1, 1, 1, 2))])


# -- Reduction --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction_gradient(op, axis, rng):
    x = randn(rng, 2, 3, 2)
    x[np.abs(x) < 0.05] += 0.1
    check_layer('name: "l" type: "Reduction" reduction_param { operation: %s axis: %d '
                'coeff: 0.7 }' % (op, axis), [x])


def test_reduction_values(rng):
    x = randn(rng, 2, 3, 4)
    for op, f in [("SUM", lambda a: a.sum(-1)), ("ASUM", lambda a: np.abs(a).sum(-1)),
                  ("SUMSQ", lambda a: (a * a).sum(-1)), ("MEAN", lambda a: a.mean(-1))]:
        layer, bottom, top = setup('type: "Reduction" reduction_param { operation: %s axis: 1 '
                                   'coeff: 2 }' % op, [x])
        dy = randn(rng, 2)
        y = fwd_bwd(layer, bottom, top, dy)
        assert y.shape == (2,)
        np.testing.assert_allclose(y, 2 * f(x.reshape(2, 12).astype(np.float64)), rtol=1e-5)
    layer, bottom, top = setup('type: "Reduction"', [x])
    layer.forward(bottom, top)
    assert top[0].shape == ()
    np.testing.assert_allclose(top[0].data, x.astype(np.float64).sum(), rtol=1e-5)


# -- ArgMax -----------------------------------------------------------------------------------

def test_argmax_values():
    x = np.array([[0.1, 0.9, 0.3, 0.9, 0.0],
                  [5.0, 1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    layer, bottom, top = setup('type: "ArgMax"', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 1, 1)
    # ties: Caffe's partial_sort with std::greater on (value, index) puts the larger index first
    np.testing.assert_array_equal(top[0].data.ravel(), [3, 0])
    layer, bottom, top = setup('type: "ArgMax" argmax_param { out_max_val: true top_k: 3 }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(top[0].data[0], np.float32([[3, 1, 2], [0.9, 0.9, 0.3]]))
    np.testing.assert_array_equal(top[0].data[1], [[0, 4, 3], [5, 4, 3]])
    with pytest.raises(LayerError):
        layer.backward(top, [True], bottom)


def test_argmax_axis(rng):
    x = randn(rng, 2, 4, 3)
    layer, bottom, top = setup('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 3)
    order = np.argsort(-x, axis=1)[:, :2]
    np.testing.assert_array_equal(top[0].data, order)
    layer, bottom, top = setup('type: "ArgMax" argmax_param { axis: -1 out_max_val: true }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 4, 1)
    np.testing.assert_array_equal(top[0].data[..., 0], x.max(-1))
    with pytest.raises(LayerError, match="top_k"):
        setup('type: "ArgMax" argmax_param { axis: 1 top_k: 5 }', [x])
    with pytest.raises(LayerError, match="top_k"):
        setup('type: "ArgMax" argmax_param { top_k: 13 }', [x])
