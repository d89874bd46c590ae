"""Caffe's shipped example models (examples/, models/) build and give Caffe's blob shapes.

The train/test nets read LMDB/LevelDB databases that do not exist here, so every
``Data``/``ImageData`` layer is swapped for an ``Input`` layer with the same name, tops and
include/exclude rules and the batch shapes Caffe's data layer would produce:
data N x C x H x W (H = W = crop_size when the transform crops) and label N.
Each net is then built in TRAIN and in TEST (``param.state.phase``), run forward and
backward on random inputs with random valid labels, and its blob shapes are compared
with the numbers Caffe prints for the same prototxt.

Batch sizes: LeNet, the MNIST autoencoder, the siamese net and the CIFAR-10 TRAIN nets
use the prototxt's own batch. To stay fast some runs use a REDUCED batch (the prototxt's
batch is still asserted on the proto): CaffeNet and GoogLeNet (256/50 and 32/50 -> 2 in the
slow forward/backward tests, 1 in the fast build-only tests), the CIFAR-10 TEST nets
(100 -> 10, and 1000 -> 10 for the sigmoid variants), and the
deploy nets whose Input batch is large (siamese 10000 -> 2, CaffeNet/GoogLeNet 10 -> 1).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import caffepy
from caffepy.proto import caffe_pb2
from caffepy.proto import read_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST

# Datum shape (C, H, W) stored in each example's database.
MNIST = (1, 28, 28)
MNIST_PAIRS = (2, 28, 28)
CIFAR = (3, 32, 32)
IMAGENET = (3, 256, 256)


# -- helpers ---------------------------------------------------------------------------

def path(rel):
    return os.path.join(ROOT, rel)


def load_net(rel):
    return read_text(path(rel), caffe_pb2.NetParameter())


def load_solver(rel):
    return read_text(path(rel), caffe_pb2.SolverParameter())


def data_layers(param):
    return [lp for lp in param.layer if lp.type in ("Data", "ImageData")]


def with_inputs(param, datum_chw, batch=None, phase_batch=None):
    """A copy of ``param`` whose Data/ImageData layers are Input layers of Caffe's batch shape.

    ``batch`` overrides every batch size; ``phase_batch`` ({phase: n}) overrides per phase.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type not in ("Data", "ImageData"):
            continue
        src = lp.data_param if lp.type == "Data" else lp.image_data_param
        n = src.batch_size
        phases = [r.phase for r in lp.include if r.HasField("phase")]
        if phase_batch and phases and phases[0] in phase_batch:
            n = phase_batch[phases[0]]
        if batch is not None:
            n = batch
        c, h, w = datum_chw
        if lp.type == "ImageData" and lp.image_data_param.new_height:
            h, w = lp.image_data_param.new_height, lp.image_data_param.new_width
        if lp.transform_param.crop_size:
            h = w = lp.transform_param.crop_size
        new = caffe_pb2.LayerParameter(name=lp.name, type="Input")
        new.top.extend(lp.top)
        new.include.extend(lp.include)
        new.exclude.extend(lp.exclude)
        for k in range(len(lp.top)):
            new.input_param.shape.add().dim.extend([n, c, h, w] if k == 0 else [n])
        lp.CopyFrom(new)
    return out


def set_input_batch(param, batch):
    """A copy of a deploy net whose Input layers use batch size ``batch``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type == "Input":
            for s in lp.input_param.shape:
                s.dim[0] = batch
    return out


def require_types(param):
    missing = sorted({lp.type for lp in param.layer} - set(caffepy.layer_type_list()))
    if missing:
        pytest.skip("layer types not registered yet: %s" % ", ".join(missing))


def build(param, phase, stages=()):
    p = caffe_pb2.NetParameter()
    p.CopyFrom(param)
    p.state.phase = phase
    del p.state.stage[:]
    p.state.stage.extend(stages)
    require_types(p)
    return caffepy.Net(p)


def fill_inputs(net, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        b = net.blobs[name]
        if name == "label":
            b.data[...] = rng.integers(0, num_classes, size=b.shape).astype(np.float32)
        elif name == "sim":
            b.data[...] = rng.integers(0, 2, size=b.shape).astype(np.float32)
        else:
            b.data[...] = rng.random(b.shape, dtype=np.float32)


def run(net, num_classes, backward=True, seed=0):
    """Forward (and backward) on random inputs; returns the total loss."""
    fill_inputs(net, num_classes, seed)
    loss = net.forward_prefilled()
    assert np.isfinite(loss)
    for name in net.outputs:
        assert np.all(np.isfinite(net.blobs[name].data)), name
    if backward:
        net.clear_param_diffs()
        net.backward()
    return loss


def shapes(net):
    return {name: tuple(b.shape) for name, b in net.blobs.items()}


def check_shapes(net, expected):
    got = shapes(net)
    bad = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != tuple(v)}
    assert not bad, "blob shape mismatch {blob: (got, expected)}: %s" % bad


def n_learnable(net):
    return sum(int(p.count) for p in net.learnable_params)


def assert_grads(net, layer_names, only=None):
    """Each named layer's param diffs (or param ``only``) are finite and non-zero after backward."""
    params = net.params
    for name in layer_names:
        for j, p in enumerate(params[name]):
            if only is not None and j != only:
                continue
            d = np.asarray(p.diff)
            assert np.all(np.isfinite(d)), (name, j)
            assert np.any(d != 0), "no gradient reached %s param %d" % (name, j)


def deploy_shapes(train_shapes, **extra):
    """The train/test net's expected shapes without the label and loss blobs, plus ``extra``."""
    out = {k: v for k, v in train_shapes.items() if k not in ("label", "loss")}
    out.update(extra)
    return out


def softmax_rows_sum_to_one(blob):
    p = np.asarray(blob.data).reshape(blob.shape[0], -1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


# -- MNIST LeNet -----------------------------------------------------------------------

LENET = "examples/mnist/lenet_train_test.prototxt"


def lenet_shapes(n):
    return {"data": (n, 1, 28, 28), "label": (n,), "conv1": (n, 20, 24, 24),
            "pool1": (n, 20, 12, 12), "conv2": (n, 50, 8, 8), "pool2": (n, 50, 4, 4),
            "ip1": (n, 500), "ip2": (n, 10), "loss": ()}


def test_lenet_prototxt_data_layers():
    param = load_net(LENET)
    dl = data_layers(param)
    assert [(l.include[0].phase, l.data_param.source, l.data_param.batch_size) for l in dl] == [
        (TRAIN, "examples/mnist/mnist_train_lmdb", 64), (TEST, "examples/mnist/mnist_test_lmdb", 100)]
    for l in dl:
        assert l.data_param.backend == caffe_pb2.DataParameter.LMDB
        assert l.transform_param.scale == pytest.approx(0.00390625)
        assert list(l.top) == ["data", "label"]


def test_lenet_train():
    net = build(with_inputs(load_net(LENET), MNIST), TRAIN)
    check_shapes(net, lenet_shapes(64))
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss"]
    assert "accuracy" not in net.layer_names
    assert not any(n.endswith("_split") for n in net.layer_names)
    assert n_learnable(net) == 431080
    assert [tuple(p.shape) for p in net.learnable_params] == [
        (20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]
    assert list(net.params_lr) == [1, 2, 1, 2, 1, 2, 1, 2]
    loss = run(net, 10)
    assert 0 < loss < 20
    assert net.blobs["loss"].data.shape == ()
    assert_grads(net, ["conv1", "conv2", "ip1", "ip2"])


def test_lenet_test_splits_and_outputs():
    net = build(with_inputs(load_net(LENET), MNIST), TEST)
    check_shapes(net, lenet_shapes(100))
    assert net.outputs == ["accuracy", "loss"]
    assert "label_mnist_1_split" in net.layer_names
    assert "ip2_ip2_0_split" in net.layer_names
    assert net.bottom_names["accuracy"] == ["ip2_ip2_0_split_0", "label_mnist_1_split_0"]
    assert net.bottom_names["loss"] == ["ip2_ip2_0_split_1", "label_mnist_1_split_1"]
    assert net.top_names["label_mnist_1_split"] == ["label_mnist_1_split_0", "label_mnist_1_split_1"]
    run(net, 10)
    acc = float(net.blobs["accuracy"].data)
    assert 0.0 <= acc <= 1.0
    assert net.blobs["accuracy"].data.shape == ()
    assert_grads(net, ["conv1", "ip2"])


def test_lenet_deploy():
    net = build(load_net("examples/mnist/lenet.prototxt"), TEST)
    assert net.inputs == ["data"]
    assert net.outputs == ["prob"]
    check_shapes(net, {"data": (64, 1, 28, 28), "conv1": (64, 20, 24, 24), "pool2": (64, 50, 4, 4),
                       "ip1": (64, 500), "prob": (64, 10)})
    assert n_learnable(net) == 431080
    run(net, 10, backward=False)
    softmax_rows_sum_to_one(net.blobs["prob"])


def test_lenet_consolidated_solver_states():
    sp = load_solver("examples/mnist/lenet_consolidated_solver.prototxt")
    assert sp.random_seed == 1701
    assert list(sp.test_iter) == [100, 600]
    assert [list(s.stage) for s in sp.test_state] == [["test-on-test-set"], ["test-on-train-set"]]
    param = with_inputs(sp.net_param, MNIST)
    net = build(param, TRAIN)
    assert net.blobs["data"].shape == (64, 1, 28, 28)
    assert net.outputs == ["loss"]
    for state in sp.test_state:
        net = build(param, TEST, state.stage)
        check_shapes(net, lenet_shapes(100))
        assert net.outputs == ["accuracy", "loss"]
    sources = {tuple(l.include[0].stage): l.data_param.source for l in data_layers(sp.net_param)}
    assert sources == {(): "examples/mnist/mnist_train_lmdb",
                       ("test-on-test-set",): "examples/mnist/mnist_test_lmdb",
                       ("test-on-train-set",): "examples/mnist/mnist_train_lmdb"}


# -- MNIST autoencoder ----------------------------------------------------------------

AUTOENC = "examples/mnist/mnist_autoencoder.prototxt"


def test_mnist_autoencoder():
    param = load_net(AUTOENC)
    dl = data_layers(param)
    assert [l.data_param.batch_size for l in dl] == [100, 100, 100]
    assert [tuple(l.include[0].stage) for l in dl] == [(), ("test-on-train",), ("test-on-test",)]
    assert all(l.transform_param.scale == pytest.approx(0.0039215684) for l in dl)
    param = with_inputs(param, MNIST)
    expected = {"data": (100, 1, 28, 28), "flatdata": (100, 784), "encode1": (100, 1000),
                "encode2": (100, 500), "encode3": (100, 250), "encode4": (100, 30),
                "decode4": (100, 250), "decode3": (100, 500), "decode2": (100, 1000),
                "decode1": (100, 784), "decode1neuron": (100, 784),
                "cross_entropy_loss": (), "l2_error": ()}
    for phase, stages in ((TRAIN, ()), (TEST, ("test-on-train",)), (TEST, ("test-on-test",))):
        net = build(param, phase, stages)
        check_shapes(net, expected)
        assert net.outputs == ["cross_entropy_loss", "l2_error"]
        weights = {n: net.blob_loss_weights[i] for i, n in enumerate(net.blob_names)}
        assert weights["cross_entropy_loss"] == 1 and weights["l2_error"] == 0
        assert {"data_data_0_split", "flatdata_flatdata_0_split",
                "decode1_decode1_0_split"} <= set(net.layer_names)
        assert len(net.learnable_params) == 16
        assert list(net.params_weight_decay) == [1, 0] * 8
        loss = run(net, 10)
        # Only the cross-entropy counts toward the loss (the L2 error has weight 0).
        assert loss == pytest.approx(float(net.blobs["cross_entropy_loss"].data), rel=1e-5)
        assert_grads(net, ["encode1", "encode4", "decode1"])


# -- CIFAR-10 -------------------------------------------------------------------------

def cifar_quick_shapes(n):
    return {"data": (n, 3, 32, 32), "conv1": (n, 32, 32, 32), "pool1": (n, 32, 16, 16),
            "conv2": (n, 32, 16, 16), "pool2": (n, 32, 8, 8), "conv3": (n, 64, 8, 8),
            "pool3": (n, 64, 4, 4), "ip1": (n, 64), "ip2": (n, 10), "loss": ()}


def cifar_full_shapes(n):
    return {"data": (n, 3, 32, 32), "conv1": (n, 32, 32, 32), "pool1": (n, 32, 16, 16),
            "conv2": (n, 32, 16, 16), "pool2": (n, 32, 8, 8), "conv3": (n, 64, 8, 8),
            "pool3": (n, 64, 4, 4), "ip1": (n, 10), "loss": ()}


def test_cifar10_quick():
    param = load_net("examples/cifar10/cifar10_quick_train_test.prototxt")
    assert [l.data_param.batch_size for l in data_layers(param)] == [100, 100]
    assert all(l.transform_param.mean_file == "examples/cifar10/mean.binaryproto"
               for l in data_layers(param))
    param = with_inputs(param, CIFAR, phase_batch={TEST: 10})   # TEST batch 100 -> 10
    net = build(param, TRAIN)
    check_shapes(net, cifar_quick_shapes(100))
    assert net.outputs == ["loss"]
    assert n_learnable(net) == (32 * 75 + 32) + (32 * 800 + 32) + (64 * 800 + 64) \
        + (64 * 1024 + 64) + (10 * 64 + 10)
    run(net, 10)
    assert_grads(net, ["conv1", "conv2", "conv3", "ip1", "ip2"])
    net = build(param, TEST)
    check_shapes(net, cifar_quick_shapes(10))
    assert net.outputs == ["accuracy", "loss"]
    assert "label_cifar_1_split" in net.layer_names and "ip2_ip2_0_split" in net.layer_names
    run(net, 10)


def test_cifar10_quick_deploy():
    net = build(load_net("examples/cifar10/cifar10_quick.prototxt"), TEST)
    check_shapes(net, deploy_shapes(cifar_quick_shapes(1), prob=(1, 10)))
    assert "loss" not in net.blobs and "label" not in net.blobs
    assert net.outputs == ["prob"]
    run(net, 10, backward=False)
    softmax_rows_sum_to_one(net.blobs["prob"])


def test_cifar10_full():
    param = load_net("examples/cifar10/cifar10_full_train_test.prototxt")
    norm = [l for l in param.layer if l.type == "LRN"]
    assert [(l.name, l.lrn_param.local_size, l.lrn_param.norm_region) for l in norm] == [
        ("norm1", 3, caffe_pb2.LRNParameter.WITHIN_CHANNEL),
        ("norm2", 3, caffe_pb2.LRNParameter.WITHIN_CHANNEL)]
    param = with_inputs(param, CIFAR, phase_batch={TEST: 10})   # TEST batch 100 -> 10
    net = build(param, TRAIN)
    check_shapes(net, dict(cifar_full_shapes(100), norm1=(100, 32, 16, 16), norm2=(100, 32, 8, 8)))
    # ip1: decay_mult 250 on the weights, lr 2 / decay 0 on the bias; conv3 has no ParamSpecs.
    assert list(net.params_lr) == [1, 2, 1, 2, 1, 1, 1, 2]
    assert list(net.params_weight_decay) == [1, 1, 1, 1, 1, 1, 250, 0]
    run(net, 10)
    assert_grads(net, ["conv1", "conv3", "ip1"])
    net = build(param, TEST)
    check_shapes(net, cifar_full_shapes(10))
    assert net.outputs == ["accuracy", "loss"]
    run(net, 10)
    net = build(load_net("examples/cifar10/cifar10_full.prototxt"), TEST)
    check_shapes(net, deploy_shapes(cifar_full_shapes(1), prob=(1, 10)))
    assert net.outputs == ["prob"]
    run(net, 10, backward=False)


def test_cifar10_full_sigmoid():
    param = load_net("examples/cifar10/cifar10_full_sigmoid_train_test.prototxt")
    assert [l.data_param.batch_size for l in data_layers(param)] == [111, 1000]
    assert not [l for l in param.layer if l.type in ("ReLU", "LRN")]
    param = with_inputs(param, CIFAR, phase_batch={TEST: 10})   # TEST batch 1000 -> 10
    net = build(param, TRAIN)
    check_shapes(net, cifar_full_shapes(111))
    run(net, 10)
    assert_grads(net, ["conv1", "conv2", "conv3", "ip1"])
    net = build(param, TEST)
    check_shapes(net, cifar_full_shapes(10))
    run(net, 10)


def test_cifar10_full_sigmoid_bn():
    param = load_net("examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt")
    assert [l.data_param.batch_size for l in data_layers(param)] == [100, 1000]
    param = with_inputs(param, CIFAR, phase_batch={TEST: 10})   # TEST batch 1000 -> 10
    for phase, n in ((TRAIN, 100), (TEST, 10)):
        net = build(param, phase)
        check_shapes(net, dict(cifar_full_shapes(n), bn1=(n, 32, 16, 16), bn2=(n, 32, 16, 16),
                               bn3=(n, 64, 8, 8)))
        params = net.params
        for conv, c in (("conv1", 32), ("conv2", 32), ("conv3", 64)):
            assert len(params[conv]) == 1          # bias_term: false
        for bn, c in (("bn1", 32), ("bn2", 32), ("bn3", 64)):
            assert [tuple(b.shape) for b in params[bn]] == [(c,), (c,), (1,)]
        # BatchNorm statistics are learnable params with lr_mult 0.
        assert list(net.params_lr) == [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1]
        run(net, 10)
        if phase == TRAIN:
            assert_grads(net, ["conv1", "conv2", "conv3", "ip1"])
            # TRAIN uses batch statistics and accumulates them: scale factor becomes 1.
            assert float(np.asarray(params["bn1"][2].data)[0]) == pytest.approx(1.0)


# -- siamese ---------------------------------------------------------------------------

SIAMESE = "examples/siamese/mnist_siamese_train_test.prototxt"
SIAMESE_SHARED = ("conv1", "conv2", "ip1", "ip2", "feat")


def test_siamese():
    param = load_net(SIAMESE)
    dl = data_layers(param)
    assert [l.data_param.batch_size for l in dl] == [64, 100]
    assert all(l.data_param.backend == caffe_pb2.DataParameter.LEVELDB for l in dl)
    param = with_inputs(param, MNIST_PAIRS)
    for phase, n in ((TRAIN, 64), (TEST, 100)):
        net = build(param, phase)
        check_shapes(net, {"pair_data": (n, 2, 28, 28), "sim": (n,), "data": (n, 1, 28, 28),
                           "data_p": (n, 1, 28, 28), "conv1": (n, 20, 24, 24),
                           "conv1_p": (n, 20, 24, 24), "pool2_p": (n, 50, 4, 4),
                           "ip1": (n, 500), "ip2_p": (n, 10), "feat": (n, 2), "feat_p": (n, 2),
                           "loss": ()})
        assert net.outputs == ["loss"]
        # Twins share every param by name: 10 owners, LeNet's 431,080 plus feat (10*2+2).
        assert len(net.learnable_params) == 10
        assert n_learnable(net) == 431080 + 22
        params = net.params
        for name in SIAMESE_SHARED:
            for a, b in zip(params[name], params[name + "_p"]):
                assert np.shares_memory(np.asarray(a.data), np.asarray(b.data)), name
                assert np.shares_memory(np.asarray(a.diff), np.asarray(b.diff)), name
        run(net, 2)
        assert_grads(net, SIAMESE_SHARED, only=0)
        assert_grads(net, ("conv1", "conv2", "ip1"), only=1)
        # The loss depends only on feat - feat_p, so a bias added equally to both twins after
        # the last non-linearity (ip2, feat) gets opposite gradients from the twins: sum 0.
        for name in ("ip2", "feat"):
            np.testing.assert_allclose(np.asarray(params[name][1].diff), 0, atol=1e-6)


def test_siamese_deploy():
    param = load_net("examples/siamese/mnist_siamese.prototxt")
    assert list(param.layer[0].input_param.shape[0].dim) == [10000, 1, 28, 28]
    net = build(set_input_batch(param, 2), TEST)       # batch 10000 -> 2
    check_shapes(net, {"data": (2, 1, 28, 28), "ip2": (2, 10), "feat": (2, 2)})
    assert net.outputs == ["feat"]
    run(net, 2, backward=False)


# -- ImageNet models: CaffeNet and GoogLeNet -------------------------------------------

CAFFENET = "models/bvlc_reference_caffenet/train_val.prototxt"
CAFFENET_PARAMS = 60965224


def caffenet_shapes(n):
    return {"data": (n, 3, 227, 227), "conv1": (n, 96, 55, 55), "pool1": (n, 96, 27, 27),
            "norm1": (n, 96, 27, 27), "conv2": (n, 256, 27, 27), "pool2": (n, 256, 13, 13),
            "norm2": (n, 256, 13, 13), "conv3": (n, 384, 13, 13), "conv4": (n, 384, 13, 13),
            "conv5": (n, 256, 13, 13), "pool5": (n, 256, 6, 6), "fc6": (n, 4096),
            "fc7": (n, 4096), "fc8": (n, 1000)}


def check_caffenet(net, n):
    check_shapes(net, caffenet_shapes(n))
    assert n_learnable(net) == CAFFENET_PARAMS
    params = net.params
    assert tuple(params["conv2"][0].shape) == (256, 48, 5, 5)     # group 2
    assert tuple(params["conv4"][0].shape) == (384, 192, 3, 3)
    assert tuple(params["fc6"][0].shape) == (4096, 9216)


def test_caffenet_prototxt():
    param = load_net(CAFFENET)
    dl = data_layers(param)
    assert [(l.data_param.batch_size, l.transform_param.crop_size, l.transform_param.mirror)
            for l in dl] == [(256, 227, True), (50, 227, False)]
    biases = {l.name: l.convolution_param.bias_filler.value if l.type == "Convolution"
              else l.inner_product_param.bias_filler.value
              for l in param.layer if l.type in ("Convolution", "InnerProduct")}
    assert biases == {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1,
                      "fc6": 1, "fc7": 1, "fc8": 0}


def test_caffenet_builds_batch1():
    """Fast: build TRAIN and TEST at batch 1 (REDUCED from 256/50) and check shapes."""
    param = with_inputs(load_net(CAFFENET), IMAGENET, batch=1)
    net = build(param, TRAIN)
    check_caffenet(net, 1)
    assert net.outputs == ["loss"]
    net = build(param, TEST)
    check_caffenet(net, 1)
    assert net.outputs == ["accuracy", "loss"]
    assert "label_data_1_split" in net.layer_names


@pytest.mark.slow
def test_caffenet_forward_backward():
    param = with_inputs(load_net(CAFFENET), IMAGENET, batch=2)   # REDUCED batch: 2
    for phase in (TRAIN, TEST):
        net = build(param, phase)
        check_caffenet(net, 2)
        run(net, 1000)
        check_shapes(net, caffenet_shapes(2))
        assert net.blobs["loss"].data.shape == ()
        assert_grads(net, ["conv1", "conv5", "fc6", "fc8"])


def test_caffenet_deploy():
    param = load_net("models/bvlc_reference_caffenet/deploy.prototxt")
    assert list(param.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    net = build(set_input_batch(param, 1), TEST)      # batch 10 -> 1
    check_shapes(net, deploy_shapes(caffenet_shapes(1), prob=(1, 1000)))
    assert net.outputs == ["prob"]
    run(net, 1000, backward=False)
    softmax_rows_sum_to_one(net.blobs["prob"])


GOOGLENET = "models/bvlc_googlenet/train_val.prototxt"
# block: (input channels, output channels, spatial size)
INCEPTION = {"3a": (192, 256, 28), "3b": (256, 480, 28), "4a": (480, 512, 14),
             "4b": (512, 512, 14), "4c": (512, 512, 14), "4d": (512, 528, 14),
             "4e": (528, 832, 14), "5a": (832, 832, 7), "5b": (832, 1024, 7)}
INCEPTION_SIZES = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
                   "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
                   "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
                   "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
                   "5b": (384, 192, 384, 48, 128, 128)}


def googlenet_param_count(aux=True):
    count = (64 * 3 * 49 + 64) + (64 * 64 + 64) + (192 * 64 * 9 + 192)
    for block, (n1, n3r, n3, n5r, n5, proj) in INCEPTION_SIZES.items():
        cin = INCEPTION[block][0]
        count += n1 * cin + n1 + n3r * cin + n3r + n3 * n3r * 9 + n3 + n5r * cin + n5r \
            + n5 * n5r * 25 + n5 + proj * cin + proj
    count += 1000 * 1024 + 1000
    if aux:
        for cin in (512, 528):
            count += (128 * cin + 128) + (1024 * 2048 + 1024) + (1000 * 1024 + 1000)
    return count


def googlenet_shapes(n, aux=True):
    s = {"data": (n, 3, 224, 224), "conv1/7x7_s2": (n, 64, 112, 112),
         "pool1/3x3_s2": (n, 64, 56, 56), "pool1/norm1": (n, 64, 56, 56),
         "conv2/3x3_reduce": (n, 64, 56, 56), "conv2/3x3": (n, 192, 56, 56),
         "pool2/3x3_s2": (n, 192, 28, 28), "pool3/3x3_s2": (n, 480, 14, 14),
         "pool4/3x3_s2": (n, 832, 7, 7), "pool5/7x7_s1": (n, 1024, 1, 1),
         "loss3/classifier": (n, 1000)}
    for block, (cin, cout, hw) in INCEPTION.items():
        n1, n3r, n3, n5r, n5, proj = INCEPTION_SIZES[block]
        p = "inception_%s/" % block
        s.update({p + "output": (n, cout, hw, hw), p + "1x1": (n, n1, hw, hw),
                  p + "3x3": (n, n3, hw, hw), p + "5x5": (n, n5, hw, hw),
                  p + "pool": (n, cin, hw, hw), p + "pool_proj": (n, proj, hw, hw)})
        assert n1 + n3 + n5 + proj == cout
    if aux:
        for head, cin in (("loss1", 512), ("loss2", 528)):
            s.update({head + "/ave_pool": (n, cin, 4, 4), head + "/conv": (n, 128, 4, 4),
                      head + "/fc": (n, 1024), head + "/classifier": (n, 1000)})
    return s


GOOGLENET_TRAIN_OUTPUTS = ["loss1/loss1", "loss2/loss1", "loss3/loss3"]
GOOGLENET_TEST_OUTPUTS = ["loss1/loss1", "loss1/top-1", "loss1/top-5", "loss2/loss1",
                          "loss2/top-1", "loss2/top-5", "loss3/loss3", "loss3/top-1",
                          "loss3/top-5"]


def check_googlenet(net, n, phase):
    check_shapes(net, googlenet_shapes(n))
    assert n_learnable(net) == googlenet_param_count()
    assert net.outputs == (GOOGLENET_TRAIN_OUTPUTS if phase == TRAIN else GOOGLENET_TEST_OUTPUTS)
    weights = {name: net.blob_loss_weights[i] for i, name in enumerate(net.blob_names)}
    assert [weights[o] for o in GOOGLENET_TRAIN_OUTPUTS] == pytest.approx([0.3, 0.3, 1.0])
    assert len(net.top_names["label_data_1_split"]) == (3 if phase == TRAIN else 9)
    split = "inception_4a/output_inception_4a/output_0_split"
    assert len(net.top_names[split]) == 5        # 4 branches of 4b + the loss1 head


def test_googlenet_files_match_generator():
    r = subprocess.run([sys.executable, path("tools/gen_googlenet.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_googlenet_prototxt():
    param = load_net(GOOGLENET)
    dl = data_layers(param)
    assert [(l.data_param.batch_size, l.transform_param.crop_size, l.transform_param.mirror,
             list(l.transform_param.mean_value)) for l in dl] == [
        (32, 224, True, [104, 117, 123]), (50, 224, False, [104, 117, 123])]
    assert googlenet_param_count() == 13378280
    assert googlenet_param_count(aux=False) == 6998552


def test_googlenet_builds_batch1():
    """Fast: build TRAIN and TEST at batch 1 (REDUCED from 32/50) and check shapes."""
    param = with_inputs(load_net(GOOGLENET), IMAGENET, batch=1)
    for phase in (TRAIN, TEST):
        check_googlenet(build(param, phase), 1, phase)


@pytest.mark.slow
def test_googlenet_forward_backward():
    param = with_inputs(load_net(GOOGLENET), IMAGENET, batch=2)   # REDUCED batch: 2
    for phase in (TRAIN, TEST):
        net = build(param, phase)
        check_googlenet(net, 2, phase)
        run(net, 1000)
        check_shapes(net, googlenet_shapes(2))
        assert_grads(net, ["conv1/7x7_s2", "inception_3a/1x1", "loss1/conv", "loss3/classifier"])


def test_googlenet_deploy():
    param = load_net("models/bvlc_googlenet/deploy.prototxt")
    assert list(param.layer[0].input_param.shape[0].dim) == [10, 3, 224, 224]
    net = build(set_input_batch(param, 1), TEST)      # batch 10 -> 1
    check_shapes(net, dict(googlenet_shapes(1, aux=False), prob=(1, 1000)))
    assert n_learnable(net) == googlenet_param_count(aux=False)
    assert net.outputs == ["prob"]
    run(net, 1000, backward=False)
    softmax_rows_sum_to_one(net.blobs["prob"])


# -- solvers ----------------------------------------------------------------------------

SOLVERS = {
    "examples/mnist/lenet_solver.prototxt": dict(
        net="examples/mnist/lenet_train_test.prototxt", base_lr=0.01, momentum=0.9,
        weight_decay=0.0005, lr_policy="inv", gamma=0.0001, power=0.75, test_iter=[100],
        test_interval=500, display=100, max_iter=10000, snapshot=5000,
        snapshot_prefix="examples/mnist/lenet"),
    "examples/mnist/lenet_multistep_solver.prototxt": dict(
        base_lr=0.01, momentum=0.9, weight_decay=0.0005, lr_policy="multistep", gamma=0.9,
        stepvalue=[5000, 7000, 8000, 9000, 9500], max_iter=10000),
    "examples/mnist/lenet_solver_adam.prototxt": dict(
        type="Adam", base_lr=0.001, momentum=0.9, momentum2=0.999, lr_policy="fixed",
        weight_decay=0),
    "examples/mnist/lenet_solver_rmsprop.prototxt": dict(
        type="RMSProp", base_lr=0.01, momentum=0.0, weight_decay=0.0005, lr_policy="inv",
        gamma=0.0001, power=0.75, rms_decay=0.98),
    "examples/mnist/lenet_adadelta_solver.prototxt": dict(
        type="AdaDelta", base_lr=1.0, lr_policy="fixed", momentum=0.95, weight_decay=0.0005,
        delta=1e-6),
    "examples/mnist/mnist_autoencoder_solver.prototxt": dict(
        net=AUTOENC, base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=10000,
        max_iter=65000, momentum=0.9, weight_decay=0.0005, test_iter=[500, 100],
        test_interval=500, test_compute_loss=True, snapshot=10000),
    "examples/mnist/mnist_autoencoder_solver_adagrad.prototxt": dict(
        type="AdaGrad", base_lr=0.01, lr_policy="fixed", momentum=0),
    "examples/mnist/mnist_autoencoder_solver_nesterov.prototxt": dict(
        type="Nesterov", base_lr=0.01, lr_policy="step", momentum=0.95),
    "examples/mnist/mnist_autoencoder_solver_adadelta.prototxt": dict(
        type="AdaDelta", base_lr=1.0, lr_policy="fixed", momentum=0.95, delta=1e-8),
    "examples/cifar10/cifar10_quick_solver.prototxt": dict(
        net="examples/cifar10/cifar10_quick_train_test.prototxt", base_lr=0.001, momentum=0.9,
        weight_decay=0.004, lr_policy="fixed", test_iter=[100], test_interval=500,
        display=100, max_iter=4000, snapshot=4000),
    "examples/cifar10/cifar10_quick_solver_lr1.prototxt": dict(
        base_lr=0.0001, max_iter=5000, snapshot_format=caffe_pb2.SolverParameter.HDF5),
    "examples/cifar10/cifar10_full_solver.prototxt": dict(
        net="examples/cifar10/cifar10_full_train_test.prototxt", base_lr=0.001, momentum=0.9,
        weight_decay=0.004, lr_policy="fixed", test_iter=[100], test_interval=1000,
        display=200, max_iter=60000, snapshot=10000,
        snapshot_format=caffe_pb2.SolverParameter.HDF5),
    "examples/cifar10/cifar10_full_solver_lr1.prototxt": dict(base_lr=0.0001, max_iter=65000),
    "examples/cifar10/cifar10_full_solver_lr2.prototxt": dict(base_lr=0.00001, max_iter=70000),
    "examples/cifar10/cifar10_full_sigmoid_solver.prototxt": dict(
        net="examples/cifar10/cifar10_full_sigmoid_train_test.prototxt", test_iter=[10],
        base_lr=0.001, momentum=0.9, lr_policy="step", gamma=1, stepsize=5000,
        max_iter=60000, weight_decay=0),
    "examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt": dict(
        net="examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt", test_iter=[10],
        lr_policy="step", gamma=1, stepsize=5000, weight_decay=0),
    "examples/siamese/mnist_siamese_solver.prototxt": dict(
        net=SIAMESE, base_lr=0.01, momentum=0.9, lr_policy="inv", max_iter=50000),
    "models/bvlc_reference_caffenet/solver.prototxt": dict(
        net=CAFFENET, test_iter=[1000], test_interval=1000, base_lr=0.01, lr_policy="step",
        gamma=0.1, stepsize=100000, display=20, max_iter=450000, momentum=0.9,
        weight_decay=0.0005, snapshot=10000),
    "models/bvlc_googlenet/solver.prototxt": dict(
        net=GOOGLENET, test_iter=[1000], test_interval=4000, test_initialization=False,
        display=40, average_loss=40, base_lr=0.01, lr_policy="step", stepsize=320000,
        gamma=0.96, max_iter=10000000, momentum=0.9, weight_decay=0.0002, snapshot=40000),
    "models/bvlc_googlenet/quick_solver.prototxt": dict(
        lr_policy="poly", power=0.5, max_iter=2400000),
}


@pytest.mark.parametrize("rel", sorted(SOLVERS))
def test_solver_settings(rel):
    sp = load_solver(rel)
    for field, want in SOLVERS[rel].items():
        got = getattr(sp, field)
        if isinstance(want, list):
            assert list(got) == pytest.approx(want), field
        elif isinstance(want, float):
            assert got == pytest.approx(want), field
        else:
            assert got == want, field
    assert sp.solver_mode == caffe_pb2.SolverParameter.GPU
    if sp.net:
        assert os.path.exists(path(sp.net)), sp.net
        param = load_net(sp.net)
        # One test_iter per test net; every phase has a data layer.
        assert len(sp.test_iter) == max(1, len(sp.test_state))
        assert data_layers(param)
