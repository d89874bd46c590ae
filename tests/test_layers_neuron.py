"""Neuron layers: gradient checks, hand-computed values, in-place behaviour, errors."""
import numpy as np
import pytest

import caffepy
from caffepy import backend
from caffepy.blob import Blob
from caffepy.gradient_check import check_layer
from caffepy.layer import LayerError, create_layer
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text


def make_layer(text, phase=None):
    return create_layer(parse_text(text, caffe_pb2.LayerParameter()), phase)


def blob_of(a):
    a = np.asarray(a, dtype=np.float32)
    b = Blob(a.shape)
    b.data[...] = a
    return b


def run(text, x, dy=None, phase=None, in_place=False):
    """Forward (and backward with top diff dy); returns (layer, top data, bottom diff)."""
    layer = make_layer(text, phase)
    bottom = [blob_of(x)]
    top = bottom if in_place else [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    dx = None
    if dy is not None:
        for b in layer.blobs:
            b.diff[...] = 0
        top[0].diff[...] = np.asarray(dy, dtype=np.float32)
        layer.backward(top, [True], bottom)
        dx = bottom[0].diff.copy()
    return layer, y, dx


def away_from(rng, shape, points=(0.0,), margin=0.05, lo=-2.0, hi=2.0):
    x = rng.uniform(lo, hi, size=shape).astype(np.float32)
    for p in points:
        close = np.abs(x - p) < margin
        x[close] += np.float32(2 * margin) * np.sign(x[close] - p + 1e-6)
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- gradient checks ------------------------------------------------------------------

GRAD_CASES = [
    ('type: "ReLU"', (0.0,), None),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', (0.0,), None),
    ('type: "ELU" elu_param { alpha: 0.7 }', (0.0,), None),
    ('type: "Sigmoid"', (), None),
    ('type: "TanH"', (), None),
    ('type: "AbsVal"', (0.0,), None),
    ('type: "BNLL"', (), None),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', (), None),
    ('type: "Power" power_param { power: 3 scale: 0.7 }', (), None),
    ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 1.2 }', (), None),
    ('type: "Power" power_param { power: 1 scale: -1.5 shift: 0.3 }', (), None),
    ('type: "Exp"', (), None),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.2 }', (), None),
    ('type: "Log" log_param { shift: 3 }', (), None),
    ('type: "Log" log_param { base: 2 scale: 0.5 shift: 1.3 }', (), None),
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', (-0.5, 0.7), None),
    ('type: "Swish"', (), None),
    ('type: "Swish" swish_param { beta: 1.7 }', (), None),
    ('type: "PReLU"', (0.0,), None),
    ('type: "PReLU" prelu_param { channel_shared: true }', (0.0,), None),
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }', (0.0,), None),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', (), caffe_pb2.TRAIN),
    ('type: "Dropout"', (), caffe_pb2.TEST),
]


@pytest.mark.parametrize("text,kinks,phase", GRAD_CASES)
def test_gradient(text, kinks, phase, rng):
    x = away_from(rng, (2, 3, 2, 2), kinks)
    layer, _, _ = check_layer('name: "l" ' + text, [x], phase=phase, stepsize=1e-2,
                              threshold=2e-3)


def test_gradient_prelu_params_checked(rng):
    x = away_from(rng, (2, 3, 2), (0.0,))
    layer, _, _ = check_layer('name: "l" type: "PReLU"', [x])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3,)


# -- values -----------------------------------------------------------------------------

X = np.array([[-2.0, -0.5, 0.0, 0.25, 1.5, 3.0]], dtype=np.float32)
DY = np.array([[0.1, -0.2, 0.3, -0.4, 0.5, -0.6]], dtype=np.float32)


def test_relu_values():
    _, y, dx = run('type: "ReLU"', X, DY)
    np.testing.assert_allclose(y, [[0, 0, 0, 0.25, 1.5, 3.0]])
    np.testing.assert_allclose(dx, [[0, 0, 0, -0.4, 0.5, -0.6]])
    _, y, dx = run('type: "ReLU" relu_param { negative_slope: 0.1 }', X, DY)
    np.testing.assert_allclose(y, [[-0.2, -0.05, 0, 0.25, 1.5, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(dx, [[0.01, -0.02, 0.03, -0.4, 0.5, -0.6]], rtol=1e-6)


SPECIAL = np.array([[-np.inf, -3.0, -0.0, 0.0, 2.0, np.inf, np.nan, -1e-30]], np.float32)
SPECIAL_DY = np.array([[0.5, -1.0, 2.0, -0.25, 4.0, 1.5, 3.0, np.inf]], np.float32)


def caffe_relu(x, dy, slope):
    """Caffe's CPU ReLU term for term in float32: std::max / std::min return their first
    argument unless the second compares greater / smaller."""
    f = np.float32
    y, dx = np.empty_like(x), np.empty_like(x)
    for i, v in np.ndenumerate(x):
        hi = f(0) if v < 0 else v
        lo = f(0) if 0 < v else v
        with np.errstate(invalid="ignore"):
            y[i] = hi + f(slope) * lo
            dx[i] = dy[i] * (f(v > 0) + f(slope) * f(v <= 0))
    return y, dx


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.1, 0.25])
@pytest.mark.parametrize("path", ["numpy", "python", "numba"])
def test_relu_special_values_as_caffe(slope, path, in_place, monkeypatch):
    """-inf, NaN, signed zeros, infinities and tiny values through forward and backward, with
    Caffe's CPU formula: with slope 0 a -inf gives NaN (0 · -inf), as in Caffe. The NumPy
    code, the compiled kernels' Python source and the compiled kernels agree, in place (one
    array read and written) and not (a non-negative slope keeps the sign, so backward reads
    the same factors from the output)."""
    import types
    from caffepy.kernels import compiled
    if path == "numpy":
        monkeypatch.setattr(compiled, "kernels", lambda: None)
    elif path == "python":
        monkeypatch.setattr(compiled, "kernels", lambda: types.SimpleNamespace(
            relu_forward=compiled.relu_forward, relu_backward=compiled.relu_backward))
    elif compiled.kernels() is None:
        pytest.skip("numba is not installed or turned off")
    text = 'type: "ReLU" relu_param { negative_slope: %g }' % slope
    with np.errstate(invalid="ignore"):
        _, y, dx = run(text, SPECIAL, SPECIAL_DY, in_place=in_place)
    expect_y, expect_dx = caffe_relu(SPECIAL, SPECIAL_DY, slope)
    if in_place:                    # backward reads the output: -inf became NaN (slope 0)
        expect_dx = caffe_relu(expect_y, SPECIAL_DY, slope)[1]
    np.testing.assert_array_equal(y, expect_y)
    np.testing.assert_array_equal(dx, expect_dx)
    assert np.isnan(y[0, 0]) == (slope == 0)
    assert dx[0, 6] == 0            # NaN input: Caffe's factor is 0 + slope · 0


def test_relu_in_place_reads_output_like_caffe():
    # In place, Caffe's backward sees the output: with a negative slope every y > 0.
    _, y, dx = run('type: "ReLU" relu_param { negative_slope: -0.3 }', X, DY, in_place=True)
    np.testing.assert_allclose(y, [[0.6, 0.15, 0, 0.25, 1.5, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(dx, [[0.1, -0.2, 0.3 * -0.3, -0.4, 0.5, -0.6]], rtol=1e-6)
    # slope >= 0: in place equals out of place
    _, y1, dx1 = run('type: "ReLU" relu_param { negative_slope: 0.2 }', X, DY)
    _, y2, dx2 = run('type: "ReLU" relu_param { negative_slope: 0.2 }', X, DY, in_place=True)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)


def test_prelu_values_and_param_diff_accumulates():
    x = np.array([[[-1.0, 2.0]], [[3.0, -4.0]]], dtype=np.float32)  # (2, 1, 2)
    x = np.concatenate([x, -x], axis=1)                              # (2, 2, 2): 2 channels
    dy = np.ones_like(x)
    layer, y, dx = run('type: "PReLU"', x, dy)
    assert layer.blobs[0].shape == (2,)
    np.testing.assert_allclose(layer.blobs[0].data, [0.25, 0.25])
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.25 * x))
    np.testing.assert_allclose(dx, np.where(x > 0, 1.0, 0.25))
    # slope grad: sum over n, spatial of dy * x * (x <= 0)
    np.testing.assert_allclose(layer.blobs[0].diff, [-5.0, -5.0])
    # a second backward accumulates into the slope diff; no bottom diff asked
    bottom, top = [blob_of(x)], [Blob()]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.param_propagate_down = [True]
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, [-10.0, -10.0])
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_prelu_in_place_matches_out_of_place(rng):
    x = away_from(rng, (2, 3, 4), (0.0,))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    l1, y1, dx1 = run('type: "PReLU"', x, dy)
    l2, y2, dx2 = run('type: "PReLU"', x, dy, in_place=True)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_allclose(l1.blobs[0].diff, l2.blobs[0].diff, rtol=1e-6)


def test_prelu_errors():
    with pytest.raises(LayerError, match="axes"):
        run('name: "p" type: "PReLU"', np.ones(3))
    layer = make_layer('name: "p" type: "PReLU"')
    layer.blobs.add_blob(4)
    with pytest.raises(LayerError, match="inconsistent"):
        layer.setup([blob_of(np.ones((2, 3)))], [Blob()])


def test_elu_sigmoid_tanh_values():
    _, y, dx = run('type: "ELU" elu_param { alpha: 0.5 }', X, DY)
    ey = np.where(X > 0, X, 0.5 * (np.exp(X) - 1))
    np.testing.assert_allclose(y, ey, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, DY * np.where(X > 0, 1, ey + 0.5), rtol=1e-6, atol=1e-7)
    _, y, dx = run('type: "Sigmoid"', X, DY)
    s = 1 / (1 + np.exp(-X.astype(np.float64)))
    np.testing.assert_allclose(y, s, rtol=1e-6)
    np.testing.assert_allclose(dx, DY * s * (1 - s), rtol=1e-5)
    _, y, dx = run('type: "TanH"', X, DY)
    t = np.tanh(X.astype(np.float64))
    np.testing.assert_allclose(y, t, rtol=1e-6)
    np.testing.assert_allclose(dx, DY * (1 - t * t), rtol=1e-5, atol=1e-7)


def test_absval_bnll_values():
    _, y, dx = run('type: "AbsVal"', X, DY)
    np.testing.assert_array_equal(y, np.abs(X))
    np.testing.assert_array_equal(dx, DY * np.sign(X))
    _, y2, dx2 = run('type: "AbsVal"', X, DY, in_place=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    big = np.array([-100.0, -1.0, 0.0, 1.0, 100.0], dtype=np.float32)
    _, y, dx = run('type: "BNLL"', big, np.ones(5))
    np.testing.assert_allclose(y, np.logaddexp(0, big.astype(np.float64)), rtol=1e-6, atol=1e-30)
    expect = 1 / (1 + np.exp(-np.minimum(big.astype(np.float64), 50)))
    np.testing.assert_allclose(dx, expect, rtol=1e-6, atol=1e-30)
    assert np.isfinite(y).all() and np.isfinite(dx).all()


@pytest.mark.parametrize("power,scale,shift", [(2, 0.5, 1), (0.5, 0.5, 1.2), (3, 0.7, 0),
                                               (1, -2, 0.5), (0, 3, 1), (-1, 1, 4), (2, 0, 3)])
def test_power_values(power, scale, shift, rng):
    x = rng.uniform(0.1, 2, size=(2, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    text = 'type: "Power" power_param { power: %g scale: %g shift: %g }' % (power, scale, shift)
    _, y, dx = run(text, x, dy)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, (shift + scale * x64) ** power, rtol=1e-5)
    g = power * scale * (shift + scale * x64) ** (power - 1) if power * scale != 0 else 0 * x64
    np.testing.assert_allclose(dx, dy * g, rtol=1e-4, atol=1e-6)
    _, y2, dx2 = run(text, x, dy, in_place=True)
    np.testing.assert_allclose(y2, y, rtol=1e-7)
    np.testing.assert_allclose(dx2, dx, rtol=1e-7)


def test_exp_log_values(rng):
    x = rng.uniform(-1, 1, size=(3, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    _, y, dx = run('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.2 }', x, dy)
    e = 2.0 ** (0.2 + 0.5 * x64)
    np.testing.assert_allclose(y, e, rtol=1e-5)
    np.testing.assert_allclose(dx, dy * e * 0.5 * np.log(2), rtol=1e-5)
    _, y, dx = run('type: "Exp"', x, dy)
    np.testing.assert_allclose(y, np.exp(x64), rtol=1e-6)
    _, y, dx = run('type: "Log" log_param { base: 10 scale: 2 shift: 3 }', x, dy)
    np.testing.assert_allclose(y, np.log10(3 + 2 * x64), rtol=1e-5)
    np.testing.assert_allclose(dx, dy * 2 / ((3 + 2 * x64) * np.log(10)), rtol=1e-5)
    _, y2, dx2 = run('type: "Log" log_param { base: 10 scale: 2 shift: 3 }', x, dy, in_place=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    with pytest.raises(LayerError, match="strictly positive"):
        run('name: "e" type: "Exp" exp_param { base: -2 }', x)
    with pytest.raises(LayerError, match="strictly positive"):
        run('name: "e" type: "Log" log_param { base: 0 }', x)


def test_threshold_values_and_no_backward():
    layer, y, _ = run('type: "Threshold" threshold_param { threshold: 0.25 }', X)
    np.testing.assert_array_equal(y, [[0, 0, 0, 0, 1, 1]])
    assert y.dtype == np.float32
    with pytest.raises(LayerError):
        layer.backward([blob_of(y)], [True], [blob_of(X)])


def test_clip_values():
    text = 'type: "Clip" clip_param { min: -0.5 max: 1.5 }'
    _, y, dx = run(text, X, DY)
    np.testing.assert_array_equal(y, [[-0.5, -0.5, 0, 0.25, 1.5, 1.5]])
    # boundaries included
    np.testing.assert_array_equal(dx, np.float32([[0, -0.2, 0.3, -0.4, 0.5, 0]]))
    _, y2, dx2 = run(text, X, DY, in_place=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    with pytest.raises(LayerError):
        run('name: "c" type: "Clip" clip_param { min: 1 max: 0 }', X)


def test_swish_values():
    _, y, dx = run('type: "Swish" swish_param { beta: 1.5 }', X, DY)
    x64 = X.astype(np.float64)
    s = 1 / (1 + np.exp(-1.5 * x64))
    np.testing.assert_allclose(y, x64 * s, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, DY * (s + 1.5 * x64 * s * (1 - s)), rtol=1e-5, atol=1e-7)
    _, y2, dx2 = run('type: "Swish" swish_param { beta: 1.5 }', X, DY, in_place=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)


# -- dropout ----------------------------------------------------------------------------

def test_dropout_test_phase_is_identity():
    _, y, dx = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', X, DY,
                   phase=caffe_pb2.TEST)
    np.testing.assert_array_equal(y, X)
    np.testing.assert_array_equal(dx, DY)


def test_dropout_train_scales_and_reuses_mask():
    backend.set_random_seed(3)
    x = np.ones((50, 40), dtype=np.float32)
    dy = np.full(x.shape, 2.0, dtype=np.float32)
    _, y, dx = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, dy,
                   phase=caffe_pb2.TRAIN)
    scale = np.float32(1 / (1 - np.float32(0.3)))
    kept = y != 0
    np.testing.assert_array_equal(y[kept], scale)
    assert abs(kept.mean() - 0.7) < 0.05
    # backward uses the same mask and scale
    np.testing.assert_array_equal(dx, np.where(kept, 2 * scale, 0).astype(np.float32))
    # the same seed gives the same mask; in place gives the same numbers
    backend.set_random_seed(3)
    _, y2, dx2 = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, dy,
                     phase=caffe_pb2.TRAIN, in_place=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)


def test_dropout_phase_comes_from_layer_param():
    layer = make_layer('type: "Dropout" phase: TEST')
    assert layer.phase == caffe_pb2.TEST
    with pytest.raises(LayerError, match="dropout_ratio"):
        run('name: "d" type: "Dropout" dropout_param { dropout_ratio: 1.0 }', X)


def test_types_registered():
    for t in ["ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp",
              "Log", "Threshold", "Dropout", "Clip", "Swish"]:
        assert t in caffepy.layer_type_list()
        assert issubclass(caffepy.layer.get_layer_class(t), caffepy.NeuronLayer)
