"""Loss layers and Accuracy: gradients, hand-computed values, Caffe's edge cases, errors."""
import numpy as np
import pytest

import caffepy
from caffepy.gradient_check import check_layer
from caffepy.layer import LayerError
from caffepy.proto import array_to_blobproto, write_binary
from helpers import make


def run(text, arrays, ntop=1, backward=True, prop=None):
    layer, bottom, top = make(text, arrays, ntop)
    loss = layer.forward(bottom, top)
    if backward:
        prop = prop if prop is not None else [True] + [False] * (len(bottom) - 1)
        layer.backward(top, prop, bottom)
    return layer, bottom, top, loss


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


rng = np.random.default_rng(0)


# ---------------------------------------------------------------------------------
# SoftmaxWithLoss

SML = 'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" %s'


def test_softmaxloss_value_and_grad_by_hand():
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = np.array([0, 3, 1, 4], np.float32)
    layer, bottom, top, loss = run(SML % "", [x, y])
    p = softmax(x.astype(np.float64))
    expect = -np.log(p[np.arange(4), y.astype(int)]).mean()
    assert top[0].shape == ()
    assert top[0].data.dtype == np.float32
    assert abs(float(top[0].data) - expect) < 1e-5
    assert abs(loss - expect) < 1e-5                   # default loss_weight 1
    assert list(layer.layer_param.loss_weight) == [1.0]
    g = p.copy()
    g[np.arange(4), y.astype(int)] -= 1
    np.testing.assert_allclose(bottom[0].diff, g / 4, atol=1e-6)


@pytest.mark.parametrize("norm,div", [("VALID", 3), ("FULL", 4), ("BATCH_SIZE", 2), ("NONE", 1)])
def test_softmaxloss_normalization_with_ignore(norm, div):
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)       # outer 2, C 3, inner 2
    y = np.array([[0, 2], [1, 1]], np.float32)
    param = "loss_param { ignore_label: 2 normalization: %s }" % norm
    _, bottom, top, _ = run(SML % param, [x, y])
    p = softmax(x.astype(np.float64))
    lab = y.astype(int)
    total = 0.0
    g = p.copy()
    for i in range(2):
        for j in range(2):
            if lab[i, j] == 2:
                g[i, :, j] = 0
                continue
            total -= np.log(p[i, lab[i, j], j])
            g[i, lab[i, j], j] -= 1
    assert abs(float(top[0].data) - total / div) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, g / div, atol=1e-6)


def test_softmaxloss_legacy_normalize_and_loss_weight():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 1, 2], np.float32)
    _, b_true, t_true, _ = run(SML % "loss_param { normalize: true }", [x, y])
    _, b_false, t_false, _ = run(SML % "loss_param { normalize: false }", [x, y])
    assert abs(float(t_true[0].data) - float(t_false[0].data)) < 1e-6   # no ignore: VALID == N
    _, b_w, t_w, loss = run(SML % "loss_weight: 2.5", [x, y])
    assert abs(loss - 2.5 * float(t_w[0].data)) < 1e-5
    np.testing.assert_allclose(b_w[0].diff, 2.5 * b_true[0].diff, rtol=1e-5)


def test_softmaxloss_all_ignored_is_zero_not_nan():
    x = rng.standard_normal((2, 3)).astype(np.float32)
    _, bottom, top, _ = run(SML % "loss_param { ignore_label: 1 }", [x, [1, 1]])
    assert float(top[0].data) == 0.0
    assert not bottom[0].diff.any()


def test_softmaxloss_tiny_prob_uses_flt_min():
    x = np.array([[0.0, 200.0]], np.float32)
    _, _, top, _ = run(SML % "", [x, [0]], backward=False)
    assert np.isfinite(float(top[0].data))
    assert abs(float(top[0].data) + np.log(np.finfo(np.float32).tiny)) < 1e-3


def test_softmaxloss_noninteger_labels_truncate():
    x = rng.standard_normal((2, 3)).astype(np.float32)
    _, _, t1, _ = run(SML % "", [x, [1.7, 2.2]], backward=False)
    _, _, t2, _ = run(SML % "", [x, [1, 2]], backward=False)
    assert float(t1[0].data) == float(t2[0].data)


@pytest.mark.parametrize("param", [
    "", "softmax_param { axis: 2 }", "softmax_param { axis: -1 }",
    "loss_param { ignore_label: 1 }", "loss_param { normalization: FULL ignore_label: 0 }",
    "loss_param { normalization: NONE }", "loss_weight: 3",
])
def test_softmaxloss_gradient(param):
    x = rng.standard_normal((2, 3, 4))
    if "axis" in param:
        y = rng.integers(0, 4, (2, 3))
    else:
        y = rng.integers(0, 3, (2, 4))
    check_layer(SML % param, [x, y], check_bottom=0, threshold=1e-2)


def test_softmaxloss_second_top_prob_extension():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 1, 3], np.float32)
    text = SML % 'top: "prob"'
    layer, bottom, top, loss = run(text, [x, y], ntop=2, backward=False)
    assert layer.loss_weights == [1.0, 0.0]
    np.testing.assert_allclose(top[1].data, softmax(x.astype(np.float64)), atol=1e-6)
    assert abs(loss - float(top[0].data)) < 1e-6
    # gradient through both tops (the ½Σtop² objective puts a diff on the prob top too)
    check_layer(text, [x, y], check_bottom=0, threshold=1e-2, top_count=2)


def test_softmaxloss_errors():
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(LayerError, match="loss.*out of range"):
        run(SML % "", [x, [0, 3]], backward=False)
    with pytest.raises(LayerError, match="out of range"):
        run(SML % "", [x, [-1, 0]], backward=False)
    # an ignored label may be anything
    run(SML % "loss_param { ignore_label: -1 }", [x, [-1, 0]])
    with pytest.raises(LayerError, match="number of labels must match"):
        make(SML % "", [rng.standard_normal((2, 3, 2)), [0, 1]])
    with pytest.raises(LayerError, match="same first dimension"):
        make(SML % "", [x, [0, 1, 2]])
    layer, bottom, top = make(SML % "", [x, [0, 1]])
    layer.forward(bottom, top)
    with pytest.raises(LayerError, match="label"):
        layer.backward(top, [True, True], bottom)
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


# ---------------------------------------------------------------------------------
# SigmoidCrossEntropyLoss

SCE = 'name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" %s'


def bce(x, t):
    x = x.astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s)), s


def test_sigmoid_ce_value_by_hand_default_batch_size():
    x = rng.standard_normal((3, 4)).astype(np.float32) * 3
    t = rng.uniform(0, 1, (3, 4)).astype(np.float32)
    _, bottom, top, _ = run(SCE % "", [x, t])
    l, s = bce(x, t)
    assert abs(float(top[0].data) - l.sum() / 3) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, (s - t) / 3, atol=1e-6)


def test_sigmoid_ce_large_logits_stable():
    x = np.array([[80.0, -80.0]], np.float32)
    _, _, top, _ = run(SCE % "", [x, [[0.0, 1.0]]], backward=False)
    assert abs(float(top[0].data) - 160.0) < 1e-3


@pytest.mark.parametrize("norm,div", [("", 2), ("normalization: VALID", 5),
                                      ("normalization: FULL", 6)])
def test_sigmoid_ce_ignore(norm, div):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    t = np.array([[1, 0, -1], [0, 1, 1]], np.float32)
    _, bottom, top, _ = run(SCE % ("loss_param { ignore_label: -1 %s }" % norm), [x, t])
    l, s = bce(x, np.clip(t, 0, 1))
    keep = t != -1
    assert abs(float(top[0].data) - l[keep].sum() / div) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, np.where(keep, s - t, 0) / div, atol=1e-6)


@pytest.mark.parametrize("param", ["", "loss_param { ignore_label: -1 normalization: VALID }"])
def test_sigmoid_ce_gradient(param):
    x = rng.standard_normal((2, 3, 2)) * 2
    t = rng.uniform(0, 1, (2, 3, 2))
    t[0, 0, 0] = -1
    check_layer(SCE % param, [x, t], check_bottom=0, threshold=1e-2)


def test_sigmoid_ce_count_mismatch():
    with pytest.raises(LayerError, match="same count"):
        make(SCE % "", [np.zeros((2, 3)), np.zeros((2, 4))])


# ---------------------------------------------------------------------------------
# EuclideanLoss

EUC = 'name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" %s'


def test_euclidean_value_and_both_grads():
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    layer, bottom, top, _ = run(EUC % "loss_weight: 2", [a, b], prop=[True, True])
    d = a - b.reshape(4, 3)
    assert abs(float(top[0].data) - (d ** 2).sum() / 8) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, 2 * d / 4, atol=1e-6)
    np.testing.assert_allclose(bottom[1].diff.reshape(4, 3), -2 * d / 4, atol=1e-6)
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


def test_euclidean_gradient():
    check_layer(EUC % "", [rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))])


def test_euclidean_dim_mismatch():
    with pytest.raises(LayerError, match="same dimension"):
        make(EUC % "", [np.zeros((2, 3)), np.zeros((2, 4))])


# ---------------------------------------------------------------------------------
# HingeLoss

HINGE = 'name: "loss" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" %s'


def hinge_input(shape):
    x = rng.uniform(-3, 3, shape)
    for k in (-1.0, 1.0):               # keep away from the kinks at ±1
        near = np.abs(x - k) < 0.1
        x[near] += 0.3
    return x


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_value_and_grad_by_hand(norm):
    x = hinge_input((4, 5)).astype(np.float32)
    y = np.array([0, 4, 2, 2], np.float32)
    _, bottom, top, _ = run(HINGE % ("hinge_loss_param { norm: %s }" % norm), [x, y])
    t = x.astype(np.float64).copy()
    t[np.arange(4), y.astype(int)] *= -1
    m = np.maximum(0, 1 + t)
    if norm == "L1":
        expect = m.sum() / 4
        g = np.sign(m)
    else:
        expect = (m ** 2).sum() / 4
        g = 2 * m
    g[np.arange(4), y.astype(int)] *= -1
    g /= 4
    assert abs(float(top[0].data) - expect) < 1e-4
    np.testing.assert_allclose(bottom[0].diff, g, atol=1e-5)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    x = hinge_input((3, 4))
    y = np.array([1, 0, 3])
    check_layer(HINGE % ("hinge_loss_param { norm: %s }" % norm), [x, y], check_bottom=0,
                threshold=1e-2)


def test_hinge_forward_leaves_bottom_diff_alone():
    layer, bottom, top = make(HINGE % "", [hinge_input((2, 3)), [0, 2]])
    bottom[0].diff[...] = 7
    layer.forward(bottom, top)
    assert (bottom[0].diff == 7).all()


def test_hinge_bad_label():
    with pytest.raises(LayerError, match="out of range"):
        run(HINGE % "", [hinge_input((2, 3)), [0, 3]], backward=False)


# ---------------------------------------------------------------------------------
# ContrastiveLoss

CON = ('name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" top: "l" '
       '%s')


def contrastive_inputs(legacy, margin, n=6, c=3):
    a = rng.uniform(-0.5, 0.5, (n, c))
    b = rng.uniform(-0.5, 0.5, (n, c))
    s = (np.arange(n) % 2).astype(np.float64)
    # keep dissimilar pairs away from the kink margin == d (or d²)
    for i in range(n):
        while True:
            d2 = ((a[i] - b[i]) ** 2).sum()
            val = d2 if legacy else np.sqrt(d2)
            if abs(margin - val) > 0.1:
                break
            b[i] = rng.uniform(-0.5, 0.5, c)
    return a, b, s


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_value_and_grad_by_hand(legacy):
    margin = 0.8
    a, b, s = contrastive_inputs(legacy, margin)
    param = "contrastive_loss_param { margin: %g legacy_version: %s }" % (
        margin, "true" if legacy else "false")
    _, bottom, top, _ = run(CON % param, [a, b, s], prop=[True, True, False])
    a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    d = a32 - b32
    d2 = (d ** 2).sum(1)
    n = len(s)
    loss = 0.0
    ga = np.zeros_like(d)
    for i in range(n):
        if s[i]:
            loss += d2[i]
            ga[i] = d[i] / n
        elif legacy:
            loss += max(margin - d2[i], 0)
            ga[i] = -d[i] / n if margin - d2[i] > 0 else 0
        else:
            dist = np.sqrt(d2[i])
            loss += max(margin - dist, 0) ** 2
            ga[i] = -(margin - dist) / (dist + 1e-4) * d[i] / n if margin - dist > 0 else 0
    assert abs(float(top[0].data) - loss / n / 2) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, ga, atol=1e-5)
    np.testing.assert_allclose(bottom[1].diff, -ga, atol=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gradient(legacy):
    a, b, s = contrastive_inputs(legacy, 1.0)
    param = "contrastive_loss_param { legacy_version: %s }" % ("true" if legacy else "false")
    for i in (0, 1):
        check_layer(CON % param, [a, b, s], check_bottom=i, threshold=1e-2)


def test_contrastive_force_backward_and_shapes():
    layer, bottom, top = make(CON % "", [np.zeros((2, 3)), np.ones((2, 3, 1, 1)), [1, 0]])
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    assert not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="same number of channels"):
        make(CON % "", [np.zeros((2, 3)), np.zeros((2, 4)), [1, 0]])
    with pytest.raises(LayerError, match="N x C"):
        make(CON % "", [np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), [1, 0]])


# ---------------------------------------------------------------------------------
# MultinomialLogisticLoss

MLL = 'name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l"'


def test_multinomial_value_and_grad_by_hand():
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
    y = np.array([1, 0], np.float32)
    _, bottom, top, _ = run(MLL, [p, y])
    assert abs(float(top[0].data) - (-(np.log(0.5) + np.log(0.6)) / 2)) < 1e-6
    g = np.zeros((2, 3))
    g[0, 1] = -1 / (2 * 0.5)
    g[1, 0] = -1 / (2 * 0.6)
    np.testing.assert_allclose(bottom[0].diff, g, rtol=1e-5)


def test_multinomial_zero_prob_threshold():
    _, bottom, top, _ = run(MLL, [[[0.0, 1.0]], [0]])
    assert abs(float(top[0].data) + np.log(np.float32(1e-20))) < 1e-3
    assert np.isfinite(bottom[0].diff).all()


def test_multinomial_gradient():
    p = rng.uniform(0.3, 1.0, (3, 4))
    check_layer(MLL, [p, [0, 3, 1]], check_bottom=0, threshold=1e-2)


def test_multinomial_label_shape():
    with pytest.raises(LayerError, match="label bottom"):
        make(MLL, [np.ones((2, 3)), np.zeros((2, 2))])


# ---------------------------------------------------------------------------------
# InfogainLoss

INFO = 'name: "loss" type: "InfogainLoss" bottom: "x" bottom: "y" %s top: "l" %s'


def infogain_ref(x, y, H, axis=1, ignore=None):
    p = softmax(x.astype(np.float64), axis)
    p = np.moveaxis(p, axis, -1).reshape(-1, H.shape[0])
    lab = y.astype(int).ravel()
    keep = lab != ignore if ignore is not None else np.ones(len(lab), bool)
    loss = 0.0
    g = np.zeros_like(p)
    for i in np.nonzero(keep)[0]:
        loss -= (H[lab[i]] * np.log(np.maximum(p[i], 1e-20))).sum()
        g[i] = p[i] * H[lab[i]].sum() - H[lab[i]]
    return loss, g, keep.sum(), p.shape


def test_infogain_bottom2_by_hand():
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 1], np.float32)
    H = rng.uniform(0, 1, (3, 3)).astype(np.float32)
    layer, bottom, top, _ = run(INFO % ('bottom: "H"', ""), [x, y, H])
    loss, g, n, _ = infogain_ref(x, y, H)
    assert abs(float(top[0].data) - loss / n) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, g / n, atol=1e-6)
    assert layer.allow_force_backward(0)
    assert not layer.allow_force_backward(1) and not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="infogain matrix"):
        layer.backward(top, [True, False, True], bottom)


def test_infogain_identity_H_equals_softmaxloss():
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    y = rng.integers(0, 4, (3, 2)).astype(np.float32)
    _, b1, t1, _ = run(INFO % ('bottom: "H"', ""), [x, y, np.eye(4)])
    _, b2, t2, _ = run(SML % "", [x, y])
    assert abs(float(t1[0].data) - float(t2[0].data)) < 1e-5
    np.testing.assert_allclose(b1[0].diff, b2[0].diff, atol=1e-6)


def test_infogain_source_axis_ignore_and_gradient(tmp_path):
    H = rng.uniform(0, 1, (4, 4)).astype(np.float32)
    path = str(tmp_path / "H.binaryproto")
    write_binary(array_to_blobproto(H.reshape(1, 1, 4, 4)), path)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)          # classes on axis 2
    y = np.array([[0, 3, 1], [2, 2, 1]], np.float32)
    param = ('infogain_loss_param { source: "%s" axis: 2 } '
             'loss_param { ignore_label: 1 normalization: VALID }' % path)
    _, bottom, top, _ = run(INFO % ("", param), [x, y])
    loss, g, n, _ = infogain_ref(x, y, H, axis=2, ignore=1)
    assert abs(float(top[0].data) - loss / n) < 1e-5
    np.testing.assert_allclose(bottom[0].diff, g.reshape(x.shape) / n, atol=1e-6)
    check_layer(INFO % ("", param), [x, y], check_bottom=0, threshold=1e-2)


def test_infogain_gradient_bottom2_and_prob_top():
    x = rng.standard_normal((3, 4))
    y = np.array([0, 3, 2])
    H = rng.uniform(0, 1, (4, 4))
    check_layer(INFO % ('bottom: "H"', ""), [x, y, H], check_bottom=0, threshold=1e-2)
    layer, bottom, top = make(INFO % ('bottom: "H"', 'top: "prob"'), [x, y, H], ntop=2)
    assert layer.loss_weights == [1.0, 0.0]
    check_layer(INFO % ('bottom: "H"', 'top: "prob"'), [x, y, H], check_bottom=0,
                threshold=1e-2, top_count=2)


def test_infogain_errors(tmp_path):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(LayerError, match="must be given"):
        make(INFO % ("", ""), [x, [0, 1]])
    with pytest.raises(LayerError, match="cannot read"):
        make(INFO % ("", 'infogain_loss_param { source: "%s" }' % (tmp_path / "nope")),
             [x, [0, 1]])
    with pytest.raises(LayerError, match="3x3"):
        make(INFO % ('bottom: "H"', ""), [x, [0, 1], np.eye(2)])
    with pytest.raises(LayerError, match="normalize is deprecated"):
        make(INFO % ('bottom: "H"', "loss_param { normalize: true }"), [x, [0, 1], np.eye(3)])


# ---------------------------------------------------------------------------------
# Accuracy

ACC = 'name: "acc" type: "Accuracy" bottom: "x" bottom: "y" top: "a" %s'


def test_accuracy_top1_topk_and_not_a_loss():
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]],
                 np.float32)
    y = np.array([1, 2, 2, 1], np.float32)
    layer, _, top, loss = run(ACC % "", [x, y], backward=False)
    assert float(top[0].data) == pytest.approx(0.5)
    assert loss == 0.0 and layer.loss_weights == [0.0]
    _, _, top, _ = run(ACC % "accuracy_param { top_k: 2 }", [x, y], backward=False)
    assert float(top[0].data) == pytest.approx(1.0)


def test_accuracy_ties_rank_above_true_class():
    x = np.array([[1, 1, 0], [2, 2, 2], [3, 1, 3]], np.float32)
    y = np.array([0, 2, 2], np.float32)
    _, _, top, _ = run(ACC % "", [x, y], backward=False)
    assert float(top[0].data) == 0.0                        # every true class is tied
    _, _, top, _ = run(ACC % "accuracy_param { top_k: 2 }", [x, y], backward=False)
    assert float(top[0].data) == pytest.approx(2 / 3)       # row 1 has 2 ties


def test_accuracy_all_ignored_is_zero_and_per_class():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    _, _, top, _ = run(ACC % "accuracy_param { ignore_label: 2 }", [x, [2, 2, 2]], ntop=2,
                       backward=False)
    assert float(top[0].data) == 0.0
    assert top[1].shape == (4,) and not top[1].data.any()


def test_accuracy_per_class_spatial_ignore():
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    y = rng.integers(0, 3, (2, 2, 2)).astype(np.float32)
    y[0, 0, 0] = 5                                           # ignored
    _, _, top, _ = run(ACC % "accuracy_param { ignore_label: 5 }", [x, y], ntop=2,
                       backward=False)
    pred = x.argmax(1)
    keep = y != 5
    hit = (pred == y) & keep
    assert float(top[0].data) == pytest.approx(hit.sum() / keep.sum())
    for c in range(3):
        n = ((y == c) & keep).sum()
        expect = (hit & (y == c)).sum() / n if n else 0.0
        assert float(top[1].data[c]) == pytest.approx(expect)


def test_accuracy_axis_and_errors():
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)     # classes on the last axis
    y = x.argmax(-1).astype(np.float32)
    _, _, top, _ = run(ACC % "accuracy_param { axis: -1 }", [x, y], backward=False)
    assert float(top[0].data) == 1.0
    with pytest.raises(LayerError, match="top_k"):
        make(ACC % "accuracy_param { top_k: 4 }", [np.zeros((2, 3)), [0, 1]])
    with pytest.raises(LayerError, match="number of labels"):
        make(ACC % "", [np.zeros((2, 3, 2)), [0, 1]])
    with pytest.raises(LayerError, match="out of range"):
        run(ACC % "", [np.zeros((2, 3)), [0, 3]], backward=False)
    layer, bottom, top = make(ACC % "", [np.zeros((2, 3)), [0, 1]])
    layer.forward(bottom, top)
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError):
        layer.backward(top, [True, False], bottom)


def test_registered_types():
    types = caffepy.layer_type_list()
    for t in ("SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss",
              "ContrastiveLoss", "MultinomialLogisticLoss", "InfogainLoss", "Accuracy"):
        assert t in types
