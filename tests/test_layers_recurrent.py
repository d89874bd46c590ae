"""LSTMUnit, LSTM and RNN: gradients by finite differences and values by hand."""
import numpy as np
import pytest

from caffepy.gradient_check import GradientChecker
from helpers import make


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_lstm_unit_values_and_gradient():
    rng = np.random.default_rng(0)
    c_prev = rng.standard_normal((1, 3, 2)).astype(np.float32)
    x = rng.standard_normal((1, 3, 8)).astype(np.float32)
    cont = np.array([[1, 0, 1]], np.float32)
    layer, bottom, top = make('name: "u" type: "LSTMUnit" top: "c" top: "h"', [c_prev, x, cont])
    layer.forward(bottom, top)
    i, f, o, g = sig(x[0, :, :2]), sig(x[0, :, 2:4]), sig(x[0, :, 4:6]), np.tanh(x[0, :, 6:])
    c = cont[0][:, None] * f * c_prev[0] + i * g
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-5)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-5)
    checker = GradientChecker(1e-2, 1e-3)
    checker.check_exhaustive(layer, bottom, top, check_bottom=0)
    checker.check_exhaustive(layer, bottom, top, check_bottom=1)


@pytest.mark.parametrize("typ", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("N", [1, 2])       # one stream: the weight gradients' outer products
def test_recurrent_gradients(typ, static, N):
    rng = np.random.default_rng(1)
    T = 3
    arrays = [rng.standard_normal((T, N, 2)).astype(np.float32),
              np.array([[0, 0], [1, 1], [0, 1]], np.float32)[:, :N]]
    if static:
        arrays.append(rng.standard_normal((N, 2)).astype(np.float32))
    text = ('name: "r" type: "%s" top: "h" recurrent_param { num_output: 2 '
            'weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
            'bias_filler { type: "uniform" min: -0.5 max: 0.5 } }' % typ)
    layer, bottom, top = make(text, arrays)
    assert len(layer.blobs) == (3 if typ == "LSTM" else 5) + int(static)
    checker = GradientChecker(1e-2, 1e-2)
    checker.check(layer, bottom, top, check_bottom=0)
    if static:
        checker.check(layer, bottom, top, check_bottom=2)


def test_rnn_matches_unrolled_by_hand():
    rng = np.random.default_rng(2)
    T, N, I, H = 2, 1, 3, 2
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    cont = np.array([[0], [1]], np.float32)
    layer, bottom, top = make('name: "r" type: "RNN" top: "o" recurrent_param { num_output: 2 '
                              'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                              [x, cont])
    w_xh, b_h, w_hh, w_ho, b_o = (b.data.astype(np.float64) for b in layer.blobs)
    layer.forward(bottom, top)
    h = np.zeros((N, H))
    for t in range(T):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + x[t] @ w_xh.T + b_h)
        np.testing.assert_allclose(top[0].data[t], np.tanh(h @ w_ho.T + b_o), rtol=1e-5, atol=1e-6)


def test_lstm_state_carries_over_between_forwards():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 2)).astype(np.float32)
    cont = np.ones((2, 1), np.float32)
    layer, bottom, top = make('name: "r" type: "LSTM" top: "h" recurrent_param { num_output: 2 '
                              'weight_filler { type: "gaussian" } }', [x, cont])
    layer.forward(bottom, top)
    first = top[0].data.copy()
    layer.forward(bottom, top)
    assert not np.allclose(first, top[0].data)
    bottom[1].data[0] = 0            # a sequence start resets the carried state
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0], first[0], rtol=1e-6)
