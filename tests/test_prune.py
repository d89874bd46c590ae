"""caffepy prune: structured-sparse nets become physically smaller and compute the same outputs.

Each test sets some filters/outputs of a small net exactly to zero (some with a non-zero bias),
prunes it, and checks the exact new shapes and that the pruned net reproduces the original's
outputs within 1e-5 on random inputs.
"""
import math
import os

import numpy as np
import pytest

import caffepy
from caffepy.errors import ToolError
from caffepy.proto import caffe_pb2, parse_text, read_binary, read_text, write_binary, write_text
from caffepy.tools.prune import prune_files, prune_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "examples", "mnist", "lenet.prototxt")
LENET_TRAIN_TEST = os.path.join(ROOT, "examples", "mnist", "lenet_train_test.prototxt")
CIFAR_QUICK = os.path.join(ROOT, "examples", "cifar10", "cifar10_quick.prototxt")
CIFAR_QUICK_TRAIN_TEST = os.path.join(ROOT, "examples", "cifar10",
                                      "cifar10_quick_train_test.prototxt")
TOL = 1e-5


def _net_param(path_or_text, batch=None):
    if os.path.exists(path_or_text):
        p = read_text(path_or_text, caffe_pb2.NetParameter())
    else:
        p = parse_text(path_or_text, caffe_pb2.NetParameter())
    if batch is not None:
        for lp in p.layer:
            if lp.type == "Input":
                lp.input_param.shape[0].dim[0] = batch
    return p


def _random_weights(net, seed, scale=0.2):
    rng = np.random.RandomState(seed)
    for name, blobs in net.params.items():
        layer = net.layer_dict[name]
        if layer.type == "BatchNorm":
            c = blobs[0].count
            blobs[0].data[...] = rng.randn(c).astype(np.float32) * 0.5 * 2.0   # mean sum
            blobs[1].data[...] = (rng.rand(c).astype(np.float32) + 0.5) * 2.0  # variance sum
            blobs[2].data[...] = 2.0                                          # scale factor
            continue
        for b in blobs:
            b.data[...] = rng.randn(*b.shape).astype(np.float32) * scale


def _zero(net, layer, units, bias=None):
    """Zero the weights (and bias, or set it to `bias`) of `units` of `layer`."""
    w = net.params[layer][0].data
    if net.layer_dict[layer].type == "InnerProduct" and \
            net.layer_dict[layer].layer_param.inner_product_param.transpose:
        w[:, units] = 0
    else:
        w[units] = 0
    if len(net.params[layer]) > 1:
        net.params[layer][1].data[units] = 0 if bias is None else bias


def _outputs(net_param, weights, inputs, blobs):
    net = caffepy.Net(net_param, caffepy.TEST)
    net.copy_from(weights)
    net.forward(**inputs)
    return {b: net.blobs[b].data.copy() for b in blobs}, net


def _assert_same_outputs(old, new, inputs, blobs):
    a, _ = _outputs(old[0], old[1], inputs, blobs)
    b, net = _outputs(new[0], new[1], inputs, blobs)
    for name in blobs:
        scale = max(1.0, float(np.abs(a[name]).max()))
        assert a[name].shape == b[name].shape
        assert np.abs(a[name] - b[name]).max() <= TOL * scale, name
        assert np.abs(a[name]).max() > 0      # a real comparison, not zeros against zeros
    return net


def _shapes(weights_param):
    return {l.name: [tuple(b.shape.dim) for b in l.blobs] for l in weights_param.layer
            if len(l.blobs)}


# -- (a) LeNet ------------------------------------------------------------------------------------

def _lenet(seed=1):
    p = _net_param(LENET, batch=3)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, seed)
    _zero(net, "conv1", [2, 5])                 # zero filters, zero bias
    _zero(net, "conv1", [7], bias=0.3)          # zero filter with bias 0.3: a constant channel
    _zero(net, "conv2", [1, 10, 11])
    _zero(net, "conv2", [49], bias=-0.2)        # constant -0.2 through MAX pooling into ip1
    _zero(net, "ip1", [0, 3])
    _zero(net, "ip1", [499], bias=0.7)          # relu(0.7) folded into ip2's bias
    _zero(net, "ip2", [4])                      # a class score: never removed
    return p, net


def test_lenet_shapes_and_outputs():
    p, net = _lenet()
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    shapes = _shapes(new_weights)
    assert shapes["conv1"] == [(17, 1, 5, 5), (17,)]
    assert shapes["conv2"] == [(46, 17, 5, 5), (46,)]          # input channels 2, 5, 7 gone
    assert shapes["ip1"] == [(497, 46 * 4 * 4), (497,)]        # 4 filters x 16 columns gone
    assert shapes["ip2"] == [(10, 497), (10,)]
    nums = {lp.name: lp.convolution_param.num_output or lp.inner_product_param.num_output
            for lp in new_net.layer if lp.type in ("Convolution", "InnerProduct")}
    assert nums == {"conv1": 17, "conv2": 46, "ip1": 497, "ip2": 10}
    assert report.removed == {"conv1": [2, 5, 7], "conv2": [1, 10, 11, 49], "ip1": [0, 3, 499],
                              "ip2": []}
    (kept,) = report.kept
    assert kept[:2] == ("ip2", 4) and "class scores" in kept[2] and "'prob'" in kept[2]
    x = np.random.RandomState(0).randn(3, 1, 28, 28).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["prob", "ip2"])


def test_lenet_folded_biases_are_exact_sums():
    p, net = _lenet()
    w2 = net.params["conv2"][0].data.astype(np.float64)
    b2 = net.params["conv2"][1].data.astype(np.float64)
    wi = net.params["ip2"][0].data.astype(np.float64)
    bi = net.params["ip2"][1].data.astype(np.float64)
    _, new_weights, report = prune_net(p, net.to_proto())
    layers = {l.name: l for l in new_weights.layer}
    got2 = np.asarray(layers["conv2"].blobs[1].data)
    keep_rows = [j for j in range(50) if j not in (1, 10, 11, 49)]
    # conv1's filter 7 outputs 0.3 everywhere; MAX pooling keeps 0.3; conv2 has no padding, so
    # each of its outputs gains 0.3 * (the sum of the 5x5 taps on input channel 7)
    want2 = b2 + 0.3 * w2[:, 7].sum(axis=(1, 2))
    np.testing.assert_allclose(got2, want2[keep_rows], rtol=1e-6, atol=1e-7)
    goti = np.asarray(layers["ip2"].blobs[1].data)
    np.testing.assert_allclose(goti, bi + 0.7 * wi[:, 499], rtol=1e-6, atol=1e-7)
    assert any("into the bias of 'conv2'" in f for f in report.folded)
    assert any("into the bias of 'ip1'" in f for f in report.folded)


def test_lenet_train_test_keeps_data_loss_and_rules(tmp_path, monkeypatch):
    p = _net_param(LENET_TRAIN_TEST)
    monkeypatch.chdir(tmp_path)       # the relative data sources are not there
    deploy, net = _lenet(seed=2)
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    assert _shapes(new_weights)["conv2"] == [(46, 17, 5, 5), (46,)]
    assert _shapes(new_weights)["ip1"] == [(497, 736), (497,)]
    # data layers, loss and accuracy untouched, rules kept
    old = [lp for lp in p.layer if lp.type not in ("Convolution", "InnerProduct")]
    new = [lp for lp in new_net.layer if lp.type not in ("Convolution", "InnerProduct")]
    assert len(old) == len(new) == 7 and all(a == b for a, b in zip(old, new))
    assert [tuple(r.phase for r in lp.include) for lp in new_net.layer] == \
        [tuple(r.phase for r in lp.include) for lp in p.layer]
    (kept,) = report.kept
    assert kept[:2] == ("ip2", 4) and "class scores" in kept[2]
    # the train_test net's data source is not here: shapes unknown, conv multiply-adds '?'
    assert report.layer("conv1").macs_before is None
    assert report.layer("ip1").macs_before == 500 * 800
    assert report.layer("ip1").macs_after == 497 * 736
    assert any("shapes of phase TRAIN unknown" in n for n in report.notes)


def test_threshold_counts_small_weights_as_zero():
    p, net = _lenet()
    net.params["conv1"][0].data[3] = 1e-4
    net.params["conv1"][1].data[3] = -1e-4
    _, w0, r0 = prune_net(p, net.to_proto())
    assert r0.removed["conv1"] == [2, 5, 7]
    _, w1, r1 = prune_net(p, net.to_proto(), threshold=1e-4)
    assert r1.removed["conv1"] == [2, 3, 5, 7]
    assert _shapes(w1)["conv2"][0] == (46, 16, 5, 5)
    assert r1.layer("conv1").row_sparsity == pytest.approx(4 / 20)
