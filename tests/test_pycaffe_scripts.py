"""The pycaffe-style scripts in examples/pycaffe (draw_net.py, classify.py, detect.py), run as
programs on a tiny Input -> InnerProduct -> Softmax net with saved weights: their outputs equal
forwards computed here by hand (crops, channel swap, scales, resized mean, softmax)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffepy

SCRIPTS = Path(__file__).resolve().parent.parent / "examples" / "pycaffe"

DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    """(deploy path, weights path, W, b): batch 4, so 10·N crops and 3 windows need padding."""
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    rng = np.random.RandomState(3)
    W = (rng.randn(5, 3 * 8 * 8) * 0.02).astype(np.float32)
    b = (rng.randn(5) * 0.1).astype(np.float32)
    net = caffepy.Net(str(deploy), caffepy.TEST)
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = b
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return str(deploy), str(weights), W.astype(np.float64), b.astype(np.float64)


def _run(script, *args, env=None):
    r = subprocess.run([sys.executable, str(SCRIPTS / script)] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=120, env=env)
    return r


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _forward(chw, W, b):
    """The net on one preprocessed 3 x 8 x 8 input."""
    return _softmax(W @ np.asarray(chw, dtype=np.float64).ravel() + b)


def _bgr255(hwc):
    """transpose to C x H x W, RGB -> BGR, times 255 (classify/detect defaults)."""
    return np.asarray(hwc, dtype=np.float64).transpose(2, 0, 1)[::-1] * 255.0


# -- classify.py -----------------------------------------------------------------------

def _ramp_mean():
    """A 3 x 10 x 10 mean image and, by hand, its bilinear shrink to 8 x 8 (a plane stays the
    plane sampled at p(d) = (d + 0.5)·10/8 − 0.5, all inside the image)."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(10), np.arange(10), indexing="ij")
    mean = 30.0 * c + 2.0 * y + 1.0 * x + 50.0
    p = (np.arange(8) + 0.5) * 10 / 8 - 0.5
    small = (30.0 * np.arange(3)[:, None, None] + 2.0 * p[None, :, None]
             + 1.0 * p[None, None, :] + 50.0)
    return mean, small


def test_classify_oversampled_with_full_size_mean(model, tmp_path):
    deploy, weights, W, b = model
    mean, small_mean = _ramp_mean()
    np.save(tmp_path / "mean.npy", mean)
    rng = np.random.RandomState(5)
    images = rng.rand(2, 10, 10, 3).astype(np.float32)    # already images_dim: no rescale
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "pred.npy"
    r = _run("classify.py", tmp_path / "images.npy", out, "--model_def", deploy,
             "--pretrained_model", weights, "--images_dim", "10,10",
             "--mean_file", tmp_path / "mean.npy")
    assert r.returncode == 0, r.stderr
    assert "Classifying 2 inputs." in r.stdout
    pred = np.load(out)
    assert pred.shape == (2, 5)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]       # corners and centre of 10 -> 8
    for n, im in enumerate(images):
        crops = [im[y:y + 8, x:x + 8] for y, x in starts]
        crops += [c[:, ::-1] for c in crops]
        exp = np.mean([_forward(_bgr255(c) - small_mean, W, b) for c in crops], axis=0)
        np.testing.assert_allclose(pred[n], exp, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-6)


def test_classify_centre_only_image_file_and_scales(model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    deploy, weights, W, b = model
    rng = np.random.RandomState(6)
    pixels = rng.randint(0, 256, size=(10, 10, 3)).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "im.png")
    np.save(tmp_path / "means.npy", np.array([100.0, 110.0, 120.0]))   # B, G, R means
    out = tmp_path / "pred.npy"
    r = _run("classify.py", tmp_path / "im.png", out, "--model_def", deploy,
             "--pretrained_model", weights, "--images_dim", "10,10", "--center_only",
             "--mean_file", tmp_path / "means.npy", "--input_scale", "0.5")
    assert r.returncode == 0, r.stderr
    crop = pixels[1:9, 1:9] / 255.0
    x = (_bgr255(crop) - np.array([100.0, 110.0, 120.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(np.load(out), [_forward(x, W, b)], rtol=2e-5, atol=1e-7)


def test_classify_rejects_a_mean_with_other_channels(model, tmp_path):
    deploy, weights, _, _ = model
    np.save(tmp_path / "mean.npy", np.zeros((4, 10, 10)))
    np.save(tmp_path / "images.npy", np.zeros((1, 10, 10, 3), np.float32))
    r = _run("classify.py", tmp_path / "images.npy", tmp_path / "p.npy", "--model_def", deploy,
             "--pretrained_model", weights, "--mean_file", tmp_path / "mean.npy")
    assert r.returncode != 0
    assert "Mean shape incompatible with input shape" in r.stderr
    assert "(4, 10, 10)" in r.stderr and "(3, 8, 8)" in r.stderr


# -- detect.py -------------------------------------------------------------------------

def _detect_setup(tmp_path, windows):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.RandomState(7)
    pixels = rng.randint(0, 256, size=(16, 16, 3)).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "a.png")
    pixels_b = rng.randint(0, 256, size=(12, 14, 3)).astype(np.uint8)
    Image.fromarray(pixels_b, "RGB").save(tmp_path / "b.png")
    rows = ["filename,xmin,ymin,xmax,ymax"]                   # column order is free
    for fname, (y0, x0, y1, x1) in windows:
        rows.append("%s,%d,%d,%d,%d" % (tmp_path / fname, x0, y0, x1, y1))
    (tmp_path / "windows.csv").write_text("\n".join(rows) + "\n")
    return {"a.png": pixels / 255.0, "b.png": pixels_b / 255.0}


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def test_detect_windows_without_context(model, tmp_path):
    deploy, weights, W, b = model
    windows = [("a.png", (4, 4, 12, 12)), ("b.png", (2, 3, 10, 11)), ("a.png", (8, 0, 16, 8))]
    images = _detect_setup(tmp_path, windows)
    # detect.py turns a mean image into its channel means
    mean_image = np.stack([np.full((6, 6), 90.0), np.full((6, 6), 100.0),
                           np.full((6, 6), 110.0)])
    np.save(tmp_path / "mean.npy", mean_image)
    out = tmp_path / "det.csv"
    r = _run("detect.py", tmp_path / "windows.csv", out, "--model_def", deploy,
             "--pretrained_model", weights, "--mean_file", tmp_path / "mean.npy",
             "--context_pad", "0")
    assert r.returncode == 0, r.stderr
    assert "Processed 3 windows" in r.stdout
    rows = _read_csv(out)
    # grouped by image in first-seen order, as pycaffe's detect.py does
    order = [windows[0], windows[2], windows[1]]
    assert [Path(row["filename"]).name for row in rows] == [w[0] for w in order]
    for row, (fname, (y0, x0, y1, x1)) in zip(rows, order):
        assert [int(row[c]) for c in ("ymin", "xmin", "ymax", "xmax")] == [y0, x0, y1, x1]
        crop = images[fname][y0:y1, x0:x1]                   # 8 x 8: no warping needed
        x = _bgr255(crop) - np.array([90.0, 100.0, 110.0])[:, None, None]
        got = [float(row["class%d" % i]) for i in range(5)]
        np.testing.assert_allclose(got, _forward(x, W, b), rtol=2e-5, atol=1e-7)


def test_detect_windows_with_context_pad(model, tmp_path):
    """context_pad 2 on an 8-pixel input grows a window by 8 / (8 - 4) = 2 about its centre.
    Window (4, 4, 7, 7): half size 2, centre 6, box (2, 2, 10, 10), 9 pixels -> scale 8/9:
    the crop is image[2:10, 2:10] exactly. Window (0, 0, 3, 3): box (-2, -2, 6, 6); pad
    round(2 · 8/9) = 2; clipped box (0, 0, 6, 6), 7 pixels -> round(7 · 8/9) = 6: the crop is
    the mean (in raw space) with image[0:6, 0:6] at [2:8, 2:8]."""
    deploy, weights, W, b = model
    windows = [("a.png", (4, 4, 7, 7)), ("a.png", (0, 0, 3, 3))]
    images = _detect_setup(tmp_path, windows)
    means = np.array([90.0, 100.0, 110.0])                   # B, G, R
    np.save(tmp_path / "mean.npy", means[:, None, None])     # shape (3, 1, 1): kept as is
    out = tmp_path / "det.csv"
    r = _run("detect.py", tmp_path / "windows.csv", out, "--model_def", deploy,
             "--pretrained_model", weights, "--mean_file", tmp_path / "mean.npy",
             "--context_pad", "2")
    assert r.returncode == 0, r.stderr
    rows = _read_csv(out)
    im = images["a.png"]
    first = _bgr255(im[2:10, 2:10]) - means[:, None, None]
    second = np.zeros((3, 8, 8))                             # the mean padding: exactly 0
    second[:, 2:8, 2:8] = _bgr255(im[0:6, 0:6]) - means[:, None, None]
    for row, x in zip(rows, [first, second]):
        got = [float(row["class%d" % i]) for i in range(5)]
        np.testing.assert_allclose(got, _forward(x, W, b), rtol=2e-5, atol=1e-6)


def test_detector_api_matches_script_and_selective_search_is_an_error(model, tmp_path):
    deploy, weights, W, b = model
    windows = [("a.png", (4, 4, 12, 12))]
    images = _detect_setup(tmp_path, windows)
    det = caffepy.Detector(deploy, weights, raw_scale=255.0, channel_swap=[2, 1, 0],
                           context_pad=None)
    assert isinstance(det, caffepy.Net)
    assert list(det.crop_dims) == [8, 8, 3]
    res = det.detect_windows([(str(tmp_path / "a.png"), [np.array([4, 4, 12, 12])])])
    assert len(res) == 1 and res[0]["filename"] == str(tmp_path / "a.png")
    np.testing.assert_array_equal(res[0]["window"], [4, 4, 12, 12])
    exp = _forward(_bgr255(images["a.png"][4:12, 4:12]), W, b)
    np.testing.assert_allclose(res[0]["prediction"], exp, rtol=2e-5, atol=1e-7)
    with pytest.raises(caffepy.CaffepyError, match="selective search window proposals"):
        det.detect_selective_search([str(tmp_path / "a.png")])
    r = _run("detect.py", tmp_path / "windows.csv", tmp_path / "o.csv", "--model_def", deploy,
             "--pretrained_model", weights, "--crop_mode", "selective_search")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("detect.py: error: ") and \
        len(r.stderr.strip().splitlines()) == 1


# -- draw_net.py -------------------------------------------------------------------------

def test_draw_net_script_five_arguments(model, tmp_path):
    pytest.importorskip("pydot")
    deploy = model[0]
    out = tmp_path / "net.raw"
    r = _run("draw_net.py", deploy, out, "--rankdir", "TB", "--display_lrm")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Drawing net to %s" % out
    text = out.read_text()
    assert "digraph tiny" in text and "rankdir=TB" in text
    assert '"ip (InnerProduct) lr mult: 1.0, 2.0"' in text
    env = dict(os.environ, PATH=str(tmp_path))               # no Graphviz on the PATH
    r = _run("draw_net.py", deploy, tmp_path / "x.png", "--phase", "TEST", env=env)
    assert r.returncode != 0 and "needs Graphviz's 'dot'" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_detector_crop_at_the_far_edge_and_crop_mean(model):
    """Window (12, 12, 15, 15) of a 16 x 16 image with context_pad 2 on 8 pixels: box
    (10, 10, 18, 18), 9 pixels -> scale 8/9, no pad; clipped to (10, 10, 16, 16): 7 pixels ->
    round(7 · 8/9) = 6; image[10:16, 10:16] lands at [0:6, 0:6], the rest is the raw-space
    mean: the BGR means swapped back to RGB and divided by raw_scale."""
    deploy, weights, _, _ = model
    im = np.random.RandomState(8).rand(16, 16, 3).astype(np.float32)
    det = caffepy.Detector(deploy, weights, mean=np.array([51.0, 102.0, 153.0]),
                           raw_scale=255.0, channel_swap=[2, 1, 0], context_pad=2)
    np.testing.assert_allclose(det.crop_mean.ravel(), [0.6, 0.4, 0.2])
    crop = det.crop(im, np.array([12, 12, 15, 15]))
    assert crop.shape == (8, 8, 3)
    np.testing.assert_allclose(crop[:6, :6], im[10:16, 10:16], atol=1e-6)
    np.testing.assert_allclose(crop[6:, :], np.broadcast_to([0.6, 0.4, 0.2], (2, 8, 3)))
    np.testing.assert_allclose(crop[:, 6:], np.broadcast_to([0.6, 0.4, 0.2], (8, 2, 3)))
    # no mean: context outside the image is 0; no context_pad: the bare window
    det0 = caffepy.Detector(deploy, weights, context_pad=2)
    np.testing.assert_array_equal(det0.crop(im, [12, 12, 15, 15])[6:], 0)
    bare = caffepy.Detector(deploy, weights)
    np.testing.assert_array_equal(bare.crop(im, [1, 2, 5, 9]), im[1:5, 2:9])
    with pytest.raises(caffepy.CaffepyError, match="lies outside the 16 x 16 image"):
        det.crop(im, [40, 40, 44, 44])
    with pytest.raises(caffepy.CaffepyError, match="no windows given"):
        det.detect_windows([])
