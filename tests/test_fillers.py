"""Fillers: each one's distribution, Caffe's fan_in/fan_out rules, sparsity, and errors."""
import math

import numpy as np
import pytest

import caffepy
from caffepy import Blob
from caffepy.fillers import FillerError, fill, fill_array
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text


def filler(text):
    return parse_text(text, caffe_pb2.FillerParameter())


@pytest.fixture(autouse=True)
def seeded():
    caffepy.set_random_seed(1701)


def test_constant_default_is_zero_and_value_is_used():
    assert np.array_equal(fill_array(filler(""), (2, 3)), np.zeros((2, 3), np.float32))
    a = fill_array(filler("value: 2.5"), (4,))
    assert a.dtype == np.float32 and np.all(a == 2.5)


def test_uniform_range_and_mean():
    a = fill_array(filler('type: "uniform" min: -2 max: 3'), (200, 500))
    assert a.min() >= -2 and a.max() <= 3
    assert abs(a.mean() - 0.5) < 0.02
    assert abs(a.var() - 25 / 12.0) < 0.05


def test_gaussian_moments():
    a = fill_array(filler('type: "gaussian" mean: 1 std: 0.5'), (300, 300))
    assert abs(a.mean() - 1) < 0.01 and abs(a.std() - 0.5) < 0.01


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    # Caffe: Bernoulli(p = sparse / num_outputs) mask, num_outputs = shape(0)
    a = fill_array(filler('type: "gaussian" std: 1 sparse: 15'), (1000, 400))
    nonzero = (a != 0).mean()
    assert abs(nonzero - 15 / 1000.0) < 0.003


def test_sparse_only_for_gaussian():
    with pytest.raises(FillerError, match="Sparsity is only supported by the gaussian filler"):
        fill_array(filler('type: "uniform" sparse: 3'), (4, 4))


def test_positive_unitball_rows_sum_to_one():
    a = fill_array(filler('type: "positive_unitball"'), (5, 3, 2, 2))
    assert np.all(a >= 0)
    np.testing.assert_allclose(a.reshape(5, -1).sum(1), np.ones(5), rtol=1e-5)


@pytest.mark.parametrize("norm, n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5),
                                     ("AVERAGE", (3 * 25 + 64 * 25) / 2.0)])
def test_xavier_bound_uses_variance_norm(norm, n):
    a = fill_array(filler('type: "xavier" variance_norm: %s' % norm), (64, 3, 5, 5))
    bound = math.sqrt(3.0 / n)
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.95 * bound          # the whole range is used
    assert abs(a.var() - bound ** 2 / 3) < 0.1 * bound ** 2 / 3


@pytest.mark.parametrize("norm, n", [("FAN_IN", 200), ("FAN_OUT", 100)])
def test_msra_std(norm, n):
    a = fill_array(filler('type: "msra" variance_norm: %s' % norm), (100, 200))
    assert abs(a.std() - math.sqrt(2.0 / n)) < 0.03 * math.sqrt(2.0 / n)


def test_fan_in_of_1d_blob_uses_channels_1():
    # fan_in = count / shape(0); a 1-D bias of 10 has fan_in 1 → xavier bound sqrt(3)
    a = fill_array(filler('type: "xavier"'), (10000,))
    assert np.abs(a).max() <= math.sqrt(3.0) and np.abs(a).max() > 1.6


def test_bilinear_kernel_by_hand():
    # K = 4: f = 2, c = (2f - 1 - f%2) / 2f = 3/4; w(x) = 1 - |x/f - c| = [.25, .75, .75, .25]
    a = fill_array(filler('type: "bilinear"'), (2, 1, 4, 4))
    w = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    np.testing.assert_allclose(a[0, 0], np.outer(w, w), rtol=1e-6)
    np.testing.assert_array_equal(a[0], a[1])
    # K = 3: f = 2, c = (4 - 1 - 0) / 4 = 0.75 → [0.25, 0.75, 0.75]
    a = fill_array(filler('type: "bilinear"'), (1, 1, 3, 3))
    w = np.array([0.25, 0.75, 0.75], np.float32)
    np.testing.assert_allclose(a[0, 0], np.outer(w, w), rtol=1e-6)


def test_bilinear_needs_square_4d():
    with pytest.raises(FillerError, match="4-D blob with a square kernel"):
        fill_array(filler('type: "bilinear"'), (1, 1, 3, 4))


def test_unknown_filler_type():
    with pytest.raises(FillerError, match="Unknown filler type 'gausian'"):
        fill_array(filler('type: "gausian"'), (2,))


def test_fill_writes_blob_and_seed_reproduces():
    b = Blob(3, 4)
    caffepy.set_random_seed(5)
    fill(filler('type: "gaussian"'), b)
    first = b.data.copy()
    caffepy.set_random_seed(5)
    fill(filler('type: "gaussian"'), b)
    assert np.array_equal(first, b.data) and first.std() > 0
