"""caffepy.Classifier (pycaffe's caffe.Classifier): predictions equal a hand-computed forward
of the oversampled / centre crops through a tiny Input -> InnerProduct -> Softmax net."""
import numpy as np
import pytest

import caffepy
from caffepy import io as caffe_io
from caffepy.classifier import Classifier

DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: %d dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    """(deploy path, weights path, W, b) for a net with batch 3 (so 10·N crops need padding)."""
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY % 3)
    rng = np.random.RandomState(0)
    W = rng.randn(5, 48).astype(np.float32) * 0.1
    b = rng.randn(5).astype(np.float32) * 0.1
    net = caffepy.Net(str(deploy), caffepy.TEST)
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = b
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return str(deploy), str(weights), W.astype(np.float64), b.astype(np.float64)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _forward(crop, W, b, channel_swap=None, raw_scale=None, mean=None, input_scale=None):
    """Hand forward of one H×W×K crop: transpose, swap, scale, mean, scale, IP, softmax."""
    x = np.asarray(crop, dtype=np.float64).transpose(2, 0, 1)
    if channel_swap is not None:
        x = x[list(channel_swap)]
    if raw_scale is not None:
        x = x * raw_scale
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    if input_scale is not None:
        x = x * input_scale
    return _softmax(W @ x.ravel() + b)


def _ten_crops(im):
    """pycaffe's oversample on a 6×6 image with 4×4 crops, written out by hand."""
    corners = [im[0:4, 0:4], im[0:4, 2:6], im[2:6, 0:4], im[2:6, 2:6], im[1:5, 1:5]]
    return corners + [c[:, ::-1] for c in corners]


def test_predict_oversample_matches_hand_forward(model):
    deploy, weights, W, b = model
    rng = np.random.RandomState(1)
    images = [rng.rand(6, 6, 3).astype(np.float32) for _ in range(2)]
    clf = Classifier(deploy, weights, image_dims=(6, 6))
    assert clf.phase == caffepy.TEST
    pred = clf.predict(images)                  # oversample=True: 20 crops, batch 3
    assert pred.shape == (2, 5)
    expected = [np.mean([_forward(c, W, b) for c in _ten_crops(im)], axis=0) for im in images]
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.sum(1), 1.0, rtol=1e-5)


def test_predict_centre_crop_with_transformer_settings(model):
    deploy, weights, W, b = model
    rng = np.random.RandomState(2)
    images = [rng.rand(6, 6, 3).astype(np.float32) for _ in range(4)]
    mean = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    kw = dict(channel_swap=(2, 1, 0), raw_scale=255.0, mean=mean, input_scale=0.02)
    clf = Classifier(deploy, weights, image_dims=(6, 6), **kw)
    pred = clf.predict(images, oversample=False)
    assert pred.shape == (4, 5)
    expected = [_forward(im[1:5, 1:5], W, b, **kw) for im in images]
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-6)


def test_predict_resizes_to_image_dims(model):
    deploy, weights, W, b = model
    rng = np.random.RandomState(3)
    im = rng.rand(9, 7, 3).astype(np.float32)
    clf = Classifier(deploy, weights, image_dims=(6, 6))
    resized = caffe_io.resize_image(im, (6, 6))
    pred = clf.predict([im])
    expected = np.mean([_forward(c, W, b) for c in _ten_crops(resized)], axis=0)
    np.testing.assert_allclose(pred[0], expected, rtol=1e-5, atol=1e-6)
    # Default image_dims: the input blob's 4×4, so the single centre crop is the whole image.
    clf4 = Classifier(deploy, weights)
    np.testing.assert_array_equal(clf4.image_dims, (4, 4))
    pred4 = clf4.predict([im], oversample=False)
    np.testing.assert_allclose(pred4[0], _forward(caffe_io.resize_image(im, (4, 4)), W, b),
                               rtol=1e-5, atol=1e-6)


def test_classifier_is_a_net_with_transformer(model):
    deploy, weights, W, b = model
    clf = Classifier(deploy, weights)
    assert isinstance(clf, caffepy.Net)
    np.testing.assert_array_equal(clf.params["ip"][0].data, W.astype(np.float32))
    assert clf.transformer.transpose["data"] == (2, 0, 1)
    np.testing.assert_array_equal(clf.crop_dims, (4, 4))
