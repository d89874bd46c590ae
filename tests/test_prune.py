"""caffepy prune: structured-sparse nets become physically smaller and compute the same outputs.

Each test sets some filters/outputs of a small net exactly to zero (some with a non-zero bias),
prunes it, and checks the exact new shapes and that the pruned net reproduces the original's
outputs within 1e-5 on random inputs.
"""
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


# -- (b) CIFAR-10 quick --------------------------------------------------------------------------

def _cifar(seed=3):
    p = _net_param(CIFAR_QUICK, batch=2)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, seed)
    _zero(net, "conv1", [0, 9])
    _zero(net, "conv1", [4], bias=0.5)      # conv2 pads by 2: the constant cannot be folded
    _zero(net, "conv2", [3, 17])
    _zero(net, "conv3", [5, 6, 60])
    _zero(net, "conv3", [7], bias=-0.3)     # relu3 makes it 0: removed, nothing to fold
    _zero(net, "conv3", [8], bias=0.25)     # relu 0.25, AVE pooling (no pad) 0.25: into ip1
    _zero(net, "ip1", [1, 2])
    return p, net


CIFAR_SHAPES = {"conv1": [(30, 3, 5, 5), (30,)], "conv2": [(30, 30, 5, 5), (30,)],
                "conv3": [(59, 30, 5, 5), (59,)], "ip1": [(62, 59 * 4 * 4), (62,)],
                "ip2": [(10, 62), (10,)]}


def test_cifar10_quick_deploy():
    p, net = _cifar()
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    assert _shapes(new_weights) == CIFAR_SHAPES
    assert report.removed["conv3"] == [5, 6, 7, 8, 60]
    (kept,) = report.kept
    assert kept[:2] == ("conv1", 4)
    assert "pad 2x2" in kept[2] or "pad 2" in kept[2]
    assert "'conv2'" in kept[2] and "0.5" in kept[2]
    x = np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["prob", "ip2"])
    # multiply-adds per image from the blob shapes: conv1 32x32 outputs, conv3 8x8
    c1, c3 = report.layer("conv1"), report.layer("conv3")
    assert (c1.macs_before, c1.macs_after) == (32 * 32 * 32 * 75, 32 * 32 * 30 * 75)
    assert (c3.macs_before, c3.macs_after) == (8 * 8 * 64 * 32 * 25, 8 * 8 * 59 * 30 * 25)
    assert c3.row_sparsity == pytest.approx(5 / 64) and c3.col_sparsity == 0


def _cifar_data(tmp_path, n=4):
    from caffepy.data import array_to_datum, write_db
    from caffepy.proto import write_mean_binaryproto
    rng = np.random.RandomState(7)
    images = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    for split in ("train", "test"):
        write_db(str(tmp_path / ("cifar10_%s_lmdb" % split)),
                 (("%05d" % i, array_to_datum(images[i], i % 10)) for i in range(n)))
    write_mean_binaryproto(images.mean(axis=0), str(tmp_path / "mean.binaryproto"))


def test_cifar10_quick_train_test_with_rules(tmp_path, monkeypatch):
    deploy, net = _cifar()
    weights = net.to_proto()
    p = _net_param(CIFAR_QUICK_TRAIN_TEST)
    monkeypatch.chdir(tmp_path)
    # without the data: shapes unknown, the same pruned weights
    new_net0, new_weights0, report0 = prune_net(p, weights)
    assert _shapes(new_weights0) == CIFAR_SHAPES
    assert report0.layer("conv1").macs_before is None
    # with a 4-image LMDB and a mean file where the prototxt looks for them
    os.makedirs("examples/cifar10")
    _cifar_data(tmp_path / "examples" / "cifar10")
    for lp in p.layer:
        if lp.type == "Data":
            lp.data_param.batch_size = 4
    new_net, new_weights, report = prune_net(p, weights)
    assert new_weights == new_weights0
    assert report.layer("conv1").macs_before == 32 * 32 * 32 * 75
    rules = [(lp.name, [caffe_pb2.Phase.Name(r.phase) for r in lp.include])
             for lp in new_net.layer if len(lp.include)]
    assert rules == [("cifar", ["TRAIN"]), ("cifar", ["TEST"]), ("accuracy", ["TEST"])]
    assert [lp.name for lp in new_net.layer] == [lp.name for lp in p.layer]
    net = _assert_same_outputs((p, weights), (new_net, new_weights), {}, ["ip2", "loss"])
    assert net.blobs["ip2"].data.shape == (4, 10)


# -- (c) Concat, BatchNorm + Scale, PReLU ---------------------------------------------------------

CONCAT_NET = """
name: "concat_bn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "convA" type: "Convolution" bottom: "data" top: "convA"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bnA" type: "BatchNorm" bottom: "convA" top: "convA" }
layer { name: "scA" type: "Scale" bottom: "convA" top: "convA" scale_param { bias_term: true } }
layer { name: "reluA" type: "ReLU" bottom: "convA" top: "convA" }
layer { name: "convB" type: "Convolution" bottom: "data" top: "convB"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "preluB" type: "PReLU" bottom: "convB" top: "convB" }
layer { name: "cat" type: "Concat" bottom: "convA" bottom: "convB" top: "cat" }
layer { name: "convC" type: "Convolution" bottom: "cat" top: "convC"
        convolution_param { num_output: 5 kernel_size: 3 } }
layer { name: "ipD" type: "InnerProduct" bottom: "convC" top: "ipD"
        inner_product_param { num_output: 6 } }
"""


def test_concat_batchnorm_scale_prelu():
    p = _net_param(CONCAT_NET)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, 5)
    _zero(net, "convA", [1])              # 0 -> BatchNorm -> Scale -> ReLU: a constant, folded
    _zero(net, "convA", [2], bias=0.4)
    _zero(net, "convB", [0])              # PReLU(0) = 0
    _zero(net, "convB", [2], bias=-0.5)   # PReLU(-0.5) = -0.5 * slope: folded into convC
    _zero(net, "convC", [3])              # 36 columns of ipD (6x6 outputs)
    _zero(net, "ipD", [2])                # a net output: kept
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    assert _shapes(new_weights) == {
        "convA": [(2, 3, 3, 3), (2,)], "bnA": [(2,), (2,), (1,)], "scA": [(2,), (2,)],
        "convB": [(1, 3, 1, 1), (1,)], "preluB": [(1,)], "convC": [(4, 3, 3, 3), (4,)],
        "ipD": [(6, 4 * 36), (6,)]}
    # the concat offsets: convC keeps input channels 0, 3 (convA) and 5 (convB's filter 1)
    old_c = net.params["convC"][0].data
    new_c = np.asarray([l for l in new_weights.layer if l.name == "convC"][0].blobs[0].data)
    np.testing.assert_array_equal(new_c.reshape(4, 3, 3, 3),
                                  old_c[[0, 1, 2, 4]][:, [0, 3, 5]])
    assert report.kept == [("ipD", 2, "blob 'ipD' is a net output")]
    # BatchNorm's stats and Scale's parameters keep channels 0 and 3
    bn = [l for l in new_weights.layer if l.name == "bnA"][0]
    np.testing.assert_array_equal(np.asarray(bn.blobs[0].data),
                                  net.params["bnA"][0].data[[0, 3]])
    x = np.random.RandomState(2).randn(2, 3, 8, 8).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["ipD"])
    assert sum("into the bias of 'convC'" in f for f in report.folded) == 1


# -- (d) bias folding: exact and not exact --------------------------------------------------------

POOL_NET = """
name: "fold"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: %d } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 } }
"""


@pytest.mark.parametrize("pad", [0, 1])
def test_bias_fold_through_average_pooling(pad):
    p = _net_param(POOL_NET % pad)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, 11)
    _zero(net, "conv1", [2])                  # zero: exact through any pooling
    _zero(net, "conv1", [1], bias=0.6)        # 0.6 everywhere; AVE with pad dilutes the borders
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    side = 6 if pad else 4
    x = np.random.RandomState(3).randn(2, 2, 6, 6).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["ip"])
    if pad:
        assert _shapes(new_weights)["conv1"][0] == (3, 2, 3, 3)
        assert _shapes(new_weights)["ip"][0] == (3, 3 * side * side)
        ((layer, unit, reason),) = report.kept
        assert (layer, unit) == ("conv1", 1)
        assert "AVE pooling with pad 1" in reason and "'ip'" in reason
    else:
        assert _shapes(new_weights)["conv1"][0] == (2, 2, 3, 3)
        assert _shapes(new_weights)["ip"][0] == (3, 2 * side * side)
        assert report.kept == []
        w = net.params["ip"][0].data.astype(np.float64).reshape(3, 4, side * side)
        want = net.params["ip"][1].data + 0.6 * w[:, 1].sum(axis=1)
        got = np.asarray([l for l in new_weights.layer if l.name == "ip"][0].blobs[1].data)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bias_fold_adds_a_bias_to_a_consumer_without_one():
    text = POOL_NET.replace("inner_product_param { num_output: 3 }",
                            "inner_product_param { num_output: 3 bias_term: false }") % 0
    p = _net_param(text)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, 12)
    _zero(net, "conv1", [3], bias=-0.25)
    weights = net.to_proto()
    new_net, new_weights, _ = prune_net(p, weights)
    ip = [lp for lp in new_net.layer if lp.name == "ip"][0]
    assert ip.inner_product_param.bias_term
    assert _shapes(new_weights)["ip"] == [(3, 48), (3,)]
    x = np.random.RandomState(4).randn(2, 2, 6, 6).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["ip"])


# -- constraints: Eltwise, conv groups, LRN across channels, a layer prune cannot slice ------------

CONSTRAINT_NET = """
name: "constraints"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "convA" type: "Convolution" bottom: "data" top: "convA"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "convB" type: "Convolution" bottom: "data" top: "convB"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "convA" bottom: "convB" top: "sum" }
layer { name: "convG" type: "Convolution" bottom: "sum" top: "convG"
        convolution_param { num_output: 4 kernel_size: 1 group: 2 } }
layer { name: "convL" type: "Convolution" bottom: "data" top: "convL"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "lrn" type: "LRN" bottom: "convL" top: "lrn" lrn_param { local_size: 3 } }
layer { name: "convM" type: "Convolution" bottom: "data" top: "convM"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "mvn" type: "MVN" bottom: "convM" top: "mvn" }
layer { name: "cat" type: "Concat" bottom: "convG" bottom: "lrn" bottom: "mvn" top: "cat" }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip"
        inner_product_param { num_output: 3 } }
"""


def test_constraints_keep_units_and_say_why():
    p = _net_param(CONSTRAINT_NET)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, 21)
    _zero(net, "convA", [0, 1, 2, 4])
    _zero(net, "convB", [0, 2, 4, 5])
    _zero(net, "convG", [3])
    _zero(net, "convL", [1])
    _zero(net, "convM", [0])
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    # Eltwise: only channels zero in both inputs (0, 2, 4); convG's groups (0-2, 3-5) must
    # lose as many each: 0 and 4 go, 2 stays
    assert report.removed == {"convA": [0, 4], "convB": [0, 4], "convG": [], "convL": [],
                              "convM": [], "ip": []}
    shapes = _shapes(new_weights)
    assert shapes["convA"][0] == shapes["convB"][0] == (4, 4, 1, 1)
    assert shapes["convG"][0] == (4, 2, 1, 1)
    assert shapes["ip"][0] == (3, 9 * 25)
    reasons = {(layer, unit): why for layer, unit, why in report.kept}
    assert set(reasons) == {("convA", 1), ("convA", 2), ("convB", 2), ("convB", 5),
                            ("convG", 3), ("convL", 1), ("convM", 0)}
    assert reasons[("convA", 1)] == ("it is tied to unit 1 of 'convB', which has non-zero "
                                     "weights: layer 'sum' (Eltwise) combines them")
    assert reasons[("convB", 5)].startswith("it is tied to unit 5 of 'convA'")
    assert "group 2" in reasons[("convA", 2)] and "'convG'" in reasons[("convA", 2)]
    assert "removable per group: 2, 1" in reasons[("convA", 2)]
    assert "filter groups must keep equal sizes" in reasons[("convG", 3)]
    assert "ACROSS_CHANNELS" in reasons[("convL", 1)]
    assert reasons[("convM", 0)] == ("layer 'mvn' (type MVN) consumes pruned blob 'convM'; "
                                     "caffepy prune cannot slice MVN layers")
    x = np.random.RandomState(5).randn(2, 4, 5, 5).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["ip"])


# -- (e) the command line -------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path, capsys):
    from caffepy import cli
    p, net = _lenet(seed=4)
    model, weights = str(tmp_path / "lenet.prototxt"), str(tmp_path / "lenet.caffemodel")
    write_text(p, model)
    net.save(weights)
    out_model, out_weights = str(tmp_path / "small.prototxt"), str(tmp_path / "small.caffemodel")
    rc = cli.run(["prune", "-model", model, "-weights", weights, "-out_model", out_model,
                  "--out_weights=" + out_weights, "-threshold", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # name, type, shape before/after, params before/after, MACs before/after, col, row, speed-up
    assert rows["conv1"][2:8] == ["20x1x5x5", "17x1x5x5", "520", "442", "288000", "244800"]
    assert rows["conv1"][8:] == ["0.00%", "15.00%", "1.18x"]
    assert rows["conv2"][4:6] == ["25050", str(46 * 17 * 25 + 46)]
    assert rows["ip1"][2:8] == ["500x800", "497x736", "400500", str(497 * 736 + 497), "400000",
                                str(497 * 736)]
    assert rows["ip2"][4:6] == ["5010", "4980"]
    assert rows["total"][1:3] == [str(520 + 25050 + 400500 + 5010),
                                  str(442 + 46 * 17 * 25 + 46 + 497 * 736 + 497 + 4980)]
    small = caffepy.Net(out_model, caffepy.TEST, weights=out_weights)
    assert small.params["conv2"][0].data.shape == (46, 17, 5, 5)
    x = np.random.RandomState(6).randn(3, 1, 28, 28).astype(np.float32)
    _assert_same_outputs((p, net.to_proto()),
                         (read_text(out_model, caffe_pb2.NetParameter()),
                          read_binary(out_weights, caffe_pb2.NetParameter())),
                         {"data": x}, ["prob"])


def test_cli_usage_errors(tmp_path, capsys):
    from caffepy import cli
    assert cli.run(["prune", "-model", "a.prototxt", "-weights", "a.caffemodel"]) == 1
    assert "prune needs -out_model, -out_weights" in capsys.readouterr().err
    assert cli.run(["prune", "-model", "a", "-weights", "b", "-out_model", "c",
                    "-out_weights", "d", "-threshold", "x"]) == 1
    assert "-threshold must be a number (got 'x')" in capsys.readouterr().err


# -- (f) errors -----------------------------------------------------------------------------------

def test_error_all_filters_zero():
    p, net = _lenet()
    net.params["conv1"][0].data[...] = 0
    net.params["conv1"][1].data[...] = 0
    with pytest.raises(ToolError) as e:
        prune_net(p, net.to_proto(), model_name="lenet.prototxt",
                  weights_name="lenet.caffemodel")
    msg = str(e.value)
    assert "all 20 filters of layer 'conv1'" in msg and "20x1x5x5" in msg
    assert "lenet.prototxt" in msg and "lenet.caffemodel" in msg and "disconnects" in msg


def test_error_missing_weights(tmp_path):
    p, net = _lenet()
    weights = net.to_proto()
    for layer in weights.layer:
        if layer.name == "conv2":
            del layer.blobs[:]
    model, wfile = str(tmp_path / "m.prototxt"), str(tmp_path / "w.caffemodel")
    write_text(p, model)
    write_binary(weights, wfile)
    with pytest.raises(ToolError) as e:
        prune_files(model, wfile, str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    msg = str(e.value)
    assert "no blobs for layer 'conv2'" in msg and "weight 50x20x5x5 and bias 50" in msg
    assert wfile in msg and model in msg
    assert not os.path.exists(str(tmp_path / "o.prototxt"))


def test_error_weight_shapes_do_not_match_the_prototxt():
    p, net = _lenet()
    weights = net.to_proto()
    for lp in p.layer:
        if lp.name == "conv2":
            lp.convolution_param.num_output = 40
    with pytest.raises(ToolError) as e:
        prune_net(p, weights, weights_name="w.caffemodel")
    msg = str(e.value)
    assert "'conv2'" in msg and "50x20x5x5" in msg and "40x20x5x5" in msg
    with pytest.raises(ToolError, match="threshold must be a finite number >= 0"):
        prune_net(_lenet()[0], weights, threshold=-1)


# -- layers that run in one phase only -------------------------------------------------------------

PHASE_NET = """
name: "phases"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" include { phase: TRAIN } }
layer { name: "double" type: "Power" bottom: "ip1" top: "ip1" power_param { scale: 2 }
        include { phase: TEST } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 } }
"""


def test_phase_specific_layers_slice_every_phase_and_fold_only_what_agrees():
    p = _net_param(PHASE_NET)
    net = caffepy.Net(p, caffepy.TEST)
    _random_weights(net, 31)
    _zero(net, "ip1", [0])                # 0 in both phases: removed
    _zero(net, "ip1", [2], bias=0.5)      # TRAIN: 0.5 (Dropout at inference), TEST: 1.0: kept
    _zero(net, "ip1", [3], bias=-0.5)     # relu: 0 in both phases: removed
    weights = net.to_proto()
    new_net, new_weights, report = prune_net(p, weights)
    assert report.removed["ip1"] == [0, 3]
    ((layer, unit, reason),) = report.kept
    assert (layer, unit) == ("ip1", 2) and "into layer 'ip2'" in reason
    assert _shapes(new_weights) == {"ip1": [(3, 6), (3,)], "ip2": [(3, 3), (3,)]}
    assert [len(lp.include) for lp in new_net.layer] == [0, 0, 0, 1, 1, 0]
    x = np.random.RandomState(8).randn(2, 6).astype(np.float32)
    _assert_same_outputs((p, weights), (new_net, new_weights), {"data": x}, ["ip2"])


def test_group_lasso_block_specs_follow_the_pruned_matrix():
    p, net = _lenet()
    conv2 = [lp for lp in p.layer if lp.name == "conv2"][0]
    whole = conv2.param[0].block_group_lasso.add()        # the whole 50 x 500 matrix
    whole.xdimen, whole.ydimen = 500, 50
    shape = conv2.param[0].block_group_lasso.add()        # kernel shapes: 25 columns, 1 row
    shape.xdimen, shape.ydimen = 25, 1
    ip1 = [lp for lp in p.layer if lp.name == "ip1"][0]
    odd = ip1.param[0].block_group_lasso.add()            # 100 columns: 736 is no multiple
    odd.xdimen, odd.ydimen = 100, 1
    new_net, _, report = prune_net(p, net.to_proto())
    specs = {lp.name: [(b.xdimen, b.ydimen) for b in lp.param[0].block_group_lasso]
             for lp in new_net.layer if lp.type in ("Convolution", "InnerProduct")}
    assert specs["conv2"] == [(17 * 25, 46), (25, 1)]
    assert specs["ip1"] == [(100, 1)]
    assert ("layer 'ip1': block_group_lasso {xdimen: 100 ydimen: 1} does not tile the pruned "
            "497x736 weight matrix; change it before training the pruned net") in report.notes
