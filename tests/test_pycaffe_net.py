"""pycaffe's Net and Blob API on caffepy: the scenarios of Caffe's python/caffe/test/test_net.py
(a DummyData conv/ip/softmax-loss net, forward/backward and their start/end forms, layer and
blob dictionaries, top/bottom names, save/load round trips, NetState levels and stages, the
all-in-one net) plus the rest of pycaffe's Net surface (the underscored index calls,
blob_loss_weights, forward_all/_batch, MemoryData's set_input_arrays, share_with, reshape) and
Blob (shape, legacy axes, data/diff views and assignment). Every check is on values."""
import collections
import gc
import os

import numpy as np
import pytest

import caffepy
from caffepy import NetError
from caffepy.net.accessors import InputArrayError

NUM_OUTPUT = 13

SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 }
    data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: %d
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label'
  top: 'loss' }
"""


def write(tmp_path, name, text):
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def simple_net_file(tmp_path, num_output=NUM_OUTPUT):
    return write(tmp_path, "simple.prototxt", SIMPLE_NET % num_output)


@pytest.fixture
def net(tmp_path):
    caffepy.set_random_seed(1701)
    n = caffepy.Net(simple_net_file(tmp_path), caffepy.TRAIN)
    # DummyData fills a constant top once; give it valid labels
    n.blobs["label"].data[...] = np.array([3, 0, 12, 7, 5], np.float32).reshape(5, 1, 1, 1)
    return n


def conv_reference(x, w, b, pad):
    """Cross-correlation with zero padding, float64: (N, C, H, W) * (O, C, k, k) + b."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    oh, ow = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    out = np.empty((x.shape[0], w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = np.tensordot(xp[:, :, i:i + k, j:j + k], w, ([1, 2, 3], [1, 2, 3]))
    return out + b[None, :, None, None]


def softmax_loss_and_grad(scores, labels):
    s = scores.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    idx = np.asarray(labels).ravel().astype(int)
    n = len(idx)
    loss = -np.log(np.maximum(p[np.arange(n), idx], np.finfo(np.float32).tiny)).mean()
    grad = p.copy()
    grad[np.arange(n), idx] -= 1
    return loss, grad / n


# -- Caffe's TestNet --------------------------------------------------------------------

def test_blobs_and_params_outlive_the_net(net):
    params = sum(map(list, net.params.values()), [])
    blobs = list(net.blobs.values())
    net.forward()
    net.backward()
    expected = sum(float(p.data.sum()) + float(p.diff.sum()) for p in params) + \
        sum(float(b.data.sum()) + float(b.diff.sum()) for b in blobs)
    del net
    gc.collect()
    total = sum(float(p.data.sum()) + float(p.diff.sum()) for p in params) + \
        sum(float(b.data.sum()) + float(b.diff.sum()) for b in blobs)
    assert np.isfinite(total) and total == expected
    assert [p.shape for p in params] == [(11, 2, 2, 2), (11,), (13, 792), (13,)]


def test_layer_dict_follows_layer_names(net):
    d = net.layer_dict
    assert isinstance(d, collections.OrderedDict)
    assert list(d) == list(net._layer_names) == ["data", "conv", "ip", "loss"]
    assert [l.type for l in d.values()] == ["DummyData", "Convolution", "InnerProduct",
                                           "SoftmaxWithLoss"]
    assert all(d[name] is net.layers[i] for i, name in enumerate(net._layer_names))


def test_forward_backward_values(net):
    net.params["ip"][0].data[...] *= 0.01       # scores of a few units: no saturated softmax
    out = net.forward()
    assert list(out) == ["loss"]
    x = net.blobs["data"].data
    w_conv, b_conv = (p.data for p in net.params["conv"])
    conv = conv_reference(x, w_conv, b_conv, pad=3)
    np.testing.assert_allclose(net.blobs["conv"].data, conv, rtol=1e-4, atol=1e-3)
    w_ip, b_ip = (p.data.astype(np.float64) for p in net.params["ip"])
    scores = net.blobs["conv"].data.reshape(5, -1).astype(np.float64) @ w_ip.T + b_ip
    np.testing.assert_allclose(net.blobs["ip_blob"].data, scores, rtol=1e-4, atol=1e-2)
    loss, grad = softmax_loss_and_grad(net.blobs["ip_blob"].data, net.blobs["label"].data)
    assert float(out["loss"]) == pytest.approx(loss, rel=1e-4, abs=1e-5)
    diffs = net.backward()
    assert diffs == {}                                   # no inputs: nothing to return
    np.testing.assert_allclose(net.blobs["ip_blob"].diff, grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(net.params["ip"][1].diff, grad.sum(axis=0), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(net.blobs["conv"].diff.reshape(5, -1), grad @ w_ip,
                               rtol=1e-4, atol=1e-6)


def test_forward_start_end_runs_one_layer(net):
    conv, ip = net.blobs["conv"], net.blobs["ip_blob"]
    sample = np.random.default_rng(0).uniform(size=conv.data.shape).astype(np.float32)
    conv.data[...] = sample
    out = net.forward(start="ip", end="ip")
    assert set(out) == {"ip_blob"} and out["ip_blob"] is not None
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    np.testing.assert_allclose(ip.data, sample.reshape(5, -1) @ w.T + b, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(conv.data, sample)     # the conv layer did not run


def test_backward_start_end_runs_one_layer(net):
    conv, ip = net.blobs["conv"], net.blobs["ip_blob"]
    net.forward()
    top_diff = np.random.default_rng(1).uniform(size=ip.shape).astype(np.float32)
    ip.diff[...] = top_diff
    out = net.backward(start="ip", end="ip")
    assert set(out) == {"conv"}
    w = net.params["ip"][0].data.astype(np.float64)
    np.testing.assert_allclose(conv.diff, (top_diff @ w).reshape(conv.shape), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(out["conv"], conv.diff)


def test_clear_param_diffs(net):
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert np.abs(diff).max() > 0
    net.clear_param_diffs()
    assert not diff.any() and not net.params["ip"][1].diff.any()


def test_inputs_outputs_and_their_ids(net):
    assert net.inputs == [] and net._inputs == []
    assert net.outputs == ["loss"] and net._outputs == [net._blob_names.index("loss")] == [4]


def test_top_and_bottom_names(net):
    assert net.top_names == collections.OrderedDict([
        ("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_blob"]),
        ("loss", ["loss"])])
    assert net.bottom_names == collections.OrderedDict([
        ("data", []), ("conv", ["data"]), ("ip", ["conv"]), ("loss", ["ip_blob", "label"])])
    names = net._blob_names
    for i, layer in enumerate(net._layer_names):
        assert [names[j] for j in net._top_ids(i)] == net.top_names[layer]
        assert [names[j] for j in net._bottom_ids(i)] == net.bottom_names[layer]
    assert net._bottom_ids(3) == [3, 1] and net._top_ids(0) == [0, 1]
    with pytest.raises(IndexError, match="outside the net's 4 layers"):
        net._top_ids(4)


def test_blob_loss_weights_by_name_and_by_id(net):
    w = net.blob_loss_weights
    assert isinstance(w, collections.OrderedDict)
    assert w == collections.OrderedDict([("data", 0.0), ("label", 0.0), ("conv", 0.0),
                                         ("ip_blob", 0.0), ("loss", 1.0)])
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert w["loss"] == 1.0 and w[4] == 1.0 and w[0] == 0.0


def test_blob_loss_weights_from_loss_weight_and_automatic_top():
    text = """force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "y" top: "label"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    layer { name: "l2" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l2"
            loss_weight: 0.25 }
    layer { name: "sm" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" }
    """
    net = caffepy.Net(text, caffepy.TRAIN)
    assert net.blob_loss_weights["l2"] == 0.25
    assert net.blob_loss_weights["x"] == 0.0
    assert net._blob_loss_weights[-1] == 1.0          # the loss layer's automatic top


def test_forward_and_backward_by_layer_index(net):
    loss = net._forward(0, len(net.layers) - 1)
    assert loss == pytest.approx(float(net.blobs["loss"].data), rel=1e-6)
    first = net.blobs["data"].data.copy()
    net.blobs["conv"].data[...] = 0.5
    partial = net._forward(2, 3)                      # ip, loss: data and conv untouched
    np.testing.assert_array_equal(net.blobs["data"].data, first)
    assert np.all(net.blobs["conv"].data == 0.5)
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    scores = np.full((5, 792), 0.5) @ w.T + b
    expected, grad = softmax_loss_and_grad(scores, net.blobs["label"].data)
    assert partial == pytest.approx(expected, rel=1e-4, abs=1e-5)
    net.clear_param_diffs()
    assert net._backward(3, 2) is None
    np.testing.assert_allclose(net.params["ip"][1].diff, grad.sum(axis=0), rtol=1e-4,
                               atol=1e-7)
    assert not net.params["conv"][0].diff.any()       # conv's backward did not run
    with pytest.raises(IndexError):
        net._forward(0, 4)


def test_save_and_read_legacy_and_named_constructors(net, tmp_path, caplog):
    model = os.path.join(str(tmp_path), "w.caffemodel")
    net.save(model)
    net_file = simple_net_file(tmp_path)
    caffepy.set_random_seed(99)                     # other fillers: values must come from the file
    with caplog.at_level("WARNING", logger="caffepy"):
        legacy = caffepy.Net(net_file, model, caffepy.TRAIN)
    assert any("Net(network, weights, phase)" in r.getMessage() for r in caplog.records)
    named = caffepy.Net(net_file, caffepy.TRAIN, weights=model)
    fresh = caffepy.Net(net_file, caffepy.TRAIN)
    assert legacy.phase == named.phase == caffepy.TRAIN
    for other in (legacy, named):
        for name in net.params:
            for i, p in enumerate(net.params[name]):
                assert np.abs(p.data - other.params[name][i].data).sum() == 0
    assert np.abs(fresh.params["ip"][0].data - net.params["ip"][0].data).sum() > 0


def test_save_hdf5_and_load_hdf5(net, tmp_path):
    path = os.path.join(str(tmp_path), "w.caffemodel.h5")
    net.save_hdf5(path)
    caffepy.set_random_seed(7)
    net2 = caffepy.Net(simple_net_file(tmp_path), caffepy.TRAIN)
    assert np.abs(net2.params["conv"][0].data - net.params["conv"][0].data).sum() > 0
    net2.load_hdf5(path)
    for name in net.params:
        for i, p in enumerate(net.params[name]):
            assert np.abs(p.data - net2.params[name][i].data).sum() == 0
    net3 = caffepy.Net(simple_net_file(tmp_path), caffepy.TRAIN, weights=path)
    np.testing.assert_array_equal(net3.params["ip"][0].data, net.params["ip"][0].data)


def test_copy_from_and_share_with(net, tmp_path):
    model = os.path.join(str(tmp_path), "w.caffemodel")
    net.params["ip"][1].data[...] = np.arange(13, dtype=np.float32)
    net.save(model)
    other = caffepy.Net(simple_net_file(tmp_path), caffepy.TEST)
    other.copy_from(model)
    np.testing.assert_array_equal(other.params["ip"][1].data, np.arange(13))
    shared = caffepy.Net(simple_net_file(tmp_path), caffepy.TEST)
    shared.share_with(net)
    net.params["conv"][0].data[...] = 0.125
    assert np.all(shared.params["conv"][0].data == 0.125)   # the same memory
    assert np.all(other.params["conv"][0].data != 0.125)    # a copy


def test_constructor_errors(tmp_path):
    path = simple_net_file(tmp_path)
    with pytest.raises(NetError, match="phase must be caffepy.TRAIN"):
        caffepy.Net(path, 3)
    with pytest.raises(NetError, match="legacy form"):
        caffepy.Net(path, "w.caffemodel", 7)
    with pytest.raises(NetError, match="does not exist"):
        caffepy.Net(os.path.join(str(tmp_path), "missing.prototxt"), caffepy.TEST)
    with pytest.raises(NetError, match="does not exist"):
        caffepy.Net(path, caffepy.TEST, weights=os.path.join(str(tmp_path), "none.caffemodel"))


# -- NetState: levels, stages, the all-in-one net ------------------------------------------

LEVELS_NET = """
layer { name: "data" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel"
        inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
        include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
        include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
        include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
        include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES_NET = """
layer { name: "data" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A" include { stage: "A" }
        inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B" include { stage: "B" }
        inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB"
        include { stage: "A" } include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB"
        include { stage: "A" stage: "B" } inner_product_param { num_output: 1 } }
"""

ALL_IN_ONE_NET = """
layer { name: "train_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TRAIN stage: "train" } }
layer { name: "val_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TEST stage: "val" } }
layer { name: "deploy_data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } include { phase: TEST stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  include: { phase: TRAIN stage: "train" } include: { phase: TEST stage: "val" } }
layer { name: "pred" type: "Softmax" bottom: "ip" top: "pred" include: { phase: TEST stage: "deploy" } }
"""


def non_data_blobs(net):
    return [b for b in net.blobs if "data" not in b]


@pytest.mark.parametrize("level, blobs", [
    (0, ["NoLevel", "Level0Only", "Level>=0"]),
    (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"])])
def test_levels(tmp_path, level, blobs):
    path = write(tmp_path, "levels.prototxt", LEVELS_NET)
    net = caffepy.Net(path, caffepy.TEST, level=level) if level else \
        caffepy.Net(path, caffepy.TEST)
    assert non_data_blobs(net) == blobs


@pytest.mark.parametrize("stages, blobs", [
    (["A"], ["A", "AorB"]), (["B"], ["B", "AorB"]), (["A", "B"], ["A", "B", "AorB", "AandB"]),
    ("A", ["A", "AorB"])])
def test_stages(tmp_path, stages, blobs):
    net = caffepy.Net(write(tmp_path, "stages.prototxt", STAGES_NET), caffepy.TEST,
                      stages=stages)
    assert non_data_blobs(net) == blobs


@pytest.mark.parametrize("phase, stage, outputs, inputs", [
    (caffepy.TRAIN, "train", ["loss"], []), (caffepy.TEST, "val", ["loss"], []),
    (caffepy.TEST, "deploy", ["pred"], ["data"])])
def test_all_in_one(tmp_path, phase, stage, outputs, inputs):
    net = caffepy.Net(write(tmp_path, "all.prototxt", ALL_IN_ONE_NET), phase, stages=[stage])
    assert list(net.blobs["data"].shape) == [1, 1, 10, 10]
    assert net.outputs == outputs and net.inputs == inputs


# -- arrays in, arrays out: forward/backward kwargs, _batch, forward_all ------------------

DEPLOY_NET = """
name: "deploy" force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "z" }
"""


@pytest.fixture
def deploy():
    return caffepy.Net(DEPLOY_NET, caffepy.TEST)


def deploy_ref(net, x):
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    y = x.astype(np.float64) @ w.T + b
    return y, np.maximum(y, 0), w


def test_forward_kwargs_blobs_and_errors(deploy):
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    out = deploy.forward(blobs=["y"], x=x)
    y, z, w = deploy_ref(deploy, x)
    assert set(out) == {"y", "z"}
    np.testing.assert_allclose(out["z"], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-6)
    assert out["z"] is deploy.blobs["z"].data                # views, as pycaffe returns
    with pytest.raises(NetError, match="do not match net inputs"):
        deploy.forward(x=x, z=x)
    with pytest.raises(NetError, match="not batch sized"):
        deploy.forward(x=x[:3])
    with pytest.raises(NetError, match="no layer of that name"):
        deploy.forward(start="nope")
    with pytest.raises(NetError, match="no blob named 'w'"):
        deploy.forward(blobs=["w"])
    with pytest.raises(NetError, match="does not fit"):
        deploy.forward(x=np.zeros((4, 5), np.float32))


def test_backward_kwargs_returns_input_diffs(deploy):
    x = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    deploy.forward(x=x)
    top = np.random.default_rng(4).normal(size=(4, 2)).astype(np.float32)
    grads = deploy.backward(diffs=["y"], z=top)
    y, _, w = deploy_ref(deploy, x)
    dy = top * (y > 0)
    assert set(grads) == {"x", "y"}
    np.testing.assert_allclose(grads["y"], dy, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads["x"], dy @ w, rtol=1e-5, atol=1e-6)
    with pytest.raises(NetError, match="do not match net outputs"):
        deploy.backward(y=top)


def test_batch_splits_and_pads(deploy):
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    batches = list(deploy._batch({"x": x}))
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[0]["x"], x[:4])
    np.testing.assert_array_equal(batches[1]["x"], x[4:8])
    np.testing.assert_array_equal(batches[2]["x"], np.concatenate([x[8:], np.zeros((2, 3))]))
    assert list(deploy._batch({})) == []


def test_forward_all_and_forward_backward_all(deploy):
    x = np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32)
    y, z, w = deploy_ref(deploy, x)
    out = deploy.forward_all(blobs=["y"], x=x)
    assert out["z"].shape == (10, 2) and out["y"].shape == (10, 2)
    np.testing.assert_allclose(out["z"], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-6)
    top = np.ones((10, 2), np.float32)
    outs, diffs = deploy.forward_backward_all(x=x, z=top)
    np.testing.assert_allclose(outs["z"], z, rtol=1e-5, atol=1e-6)
    assert diffs["x"].shape == (10, 3)
    np.testing.assert_allclose(diffs["x"], (y > 0) @ w, rtol=1e-5, atol=1e-6)
    with pytest.raises(NetError, match="needs whole arrays"):
        deploy.forward_all()


def test_reshape_input_and_net(deploy):
    deploy.blobs["x"].reshape(6, 3)
    deploy.reshape()
    assert deploy.blobs["y"].shape == (6, 2) and deploy.blobs["z"].shape == (6, 2)
    x = np.linspace(-1, 1, 18, dtype=np.float32).reshape(6, 3)
    out = deploy.forward(x=x)
    np.testing.assert_allclose(out["z"], deploy_ref(deploy, x)[1], rtol=1e-5, atol=1e-6)


def test_layer_hooks_run_in_order(deploy):
    calls = []
    deploy.before_forward(lambda i: calls.append(("bf", i)))
    deploy.after_forward(lambda i: calls.append(("af", i)))
    deploy.before_backward(lambda i: calls.append(("bb", i)))
    deploy.after_backward(lambda i: calls.append(("ab", i)))
    deploy.forward(x=np.ones((4, 3), np.float32))
    deploy.backward()
    assert calls == [("bf", 0), ("af", 0), ("bf", 1), ("af", 1), ("bf", 2), ("af", 2),
                     ("bb", 2), ("ab", 2), ("bb", 1), ("ab", 1), ("bb", 0), ("ab", 0)]


# -- MemoryData: set_input_arrays ------------------------------------------------------

MEMORY_NET = """
name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
"""


def test_set_input_arrays_serves_batches_without_copying():
    net = caffepy.Net(MEMORY_NET, caffepy.TEST)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([10, 11, 12, 13], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [10, 11])
    np.testing.assert_array_equal(net.blobs["ip"].data, [[15, 15], [51, 51]])   # row sums
    data[2:] = -1                                   # pycaffe keeps the caller's array
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    np.testing.assert_array_equal(net.blobs["ip"].data, [[-6, -6], [-6, -6]])
    net.forward()                                   # wraps around
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [10, 11])
    net._set_input_arrays(data[:2].copy(), labels[:2].reshape(2, 1, 1, 1).copy())
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])


@pytest.mark.parametrize("data, labels, match", [
    (np.zeros((4, 1, 2, 3)), np.zeros(4, np.float32), "must be float32"),
    (np.zeros((4, 1, 3, 2), np.float32).transpose(0, 1, 3, 2), np.zeros(4, np.float32),
     "C contiguous"),
    (np.zeros((4, 6), np.float32), np.zeros(4, np.float32), "must be 4-d"),
    (np.zeros((4, 2, 2, 3), np.float32), np.zeros(4, np.float32), "wrong number of channels"),
    (np.zeros((4, 1, 3, 3), np.float32), np.zeros(4, np.float32), "wrong height"),
    (np.zeros((4, 1, 2, 4), np.float32), np.zeros(4, np.float32), "wrong width"),
    (np.zeros((4, 1, 2, 3), np.float32), np.zeros(6, np.float32), "same first dimension"),
    (np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32), "multiple of batch size"),
    (np.zeros((4, 1, 2, 3), np.float32), np.zeros(4, np.int64), "labels array must be float32"),
    ([[0.0]], np.zeros(1, np.float32), "must be a numpy array"),
])
def test_set_input_arrays_checks(data, labels, match):
    net = caffepy.Net(MEMORY_NET, caffepy.TEST)
    with pytest.raises(InputArrayError, match=match) as e:
        net.set_input_arrays(data, labels)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, caffepy.CaffepyError)


def test_set_input_arrays_needs_memory_data_first(deploy):
    with pytest.raises(InputArrayError, match="first layer is a MemoryData.*'in' of type Input"):
        deploy.set_input_arrays(np.zeros((4, 1, 1, 3), np.float32), np.zeros(4, np.float32))


# -- Blob ---------------------------------------------------------------------------------

def test_blob_shape_count_and_legacy_axes(net):
    b = net.blobs["conv"]
    assert b.shape == (5, 11, 8, 9) and isinstance(b.shape, tuple)
    assert (b.num, b.channels, b.height, b.width, b.count) == (5, 11, 8, 9, 5 * 11 * 8 * 9)
    lab = caffepy.Blob(7)
    assert (lab.num, lab.channels, lab.height, lab.width, lab.count) == (7, 1, 1, 1, 7)
    five = caffepy.Blob(1, 2, 3, 4, 5)
    with pytest.raises(ValueError):
        five.num
    assert five.count == 120


def test_blob_data_and_diff_are_writable_views():
    b = caffepy.Blob(2, 3)
    view = b.data
    view[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert b.data.dtype == np.float32
    np.testing.assert_array_equal(b.data, [[0, 1, 2], [3, 4, 5]])
    b.data[1] = 7                                       # NumPy broadcasting, as pycaffe
    np.testing.assert_array_equal(b.flat_data, [0, 1, 2, 7, 7, 7])
    b.diff[...] = 0.5
    assert b.asum_diff() == 3.0
    b.data = np.ones((2, 3))                           # a whole array of the blob's shape
    assert b.asum_data() == 6.0
    with pytest.raises(ValueError):
        b.data[...] = np.ones((3, 2), np.float32)
    with pytest.raises(NetError, match=r"shape \(3, 2\).*blob's shape is \(2, 3\)"):
        b.data = np.ones((3, 2), np.float32)
    with pytest.raises(NetError, match="blob's shape"):
        b.diff = np.ones(6, np.float32)
    np.testing.assert_array_equal(b.data, np.ones((2, 3)))     # untouched by the failures


def test_blob_reshape_keeps_memory_while_it_fits():
    b = caffepy.Blob(4, 5)
    b.data[...] = np.arange(20, dtype=np.float32).reshape(4, 5)
    b.reshape(2, 5)
    assert b.shape == (2, 5) and b.count == 10
    np.testing.assert_array_equal(b.data, np.arange(10).reshape(2, 5))
    b.reshape((5, 4))
    np.testing.assert_array_equal(b.data.ravel(), np.arange(20))
    b.reshape(3, 10)
    assert b.shape == (3, 10) and not b.data.any()         # grown: new zeroed memory
    with pytest.raises(ValueError, match="non-negative"):
        b.reshape(2, -1)


def test_blob_gpu_pointer_needs_gpu_memory():
    b = caffepy.Blob(2)
    if caffepy.backend.mode() == caffepy.backend.GPU:
        assert b._gpu_data_ptr == b.data.data.ptr
    else:
        with pytest.raises(caffepy.DeviceError, match="host memory"):
            b._gpu_data_ptr


def test_legacy_input_fields_are_net_inputs():
    text = """name: "legacy" input: "data" input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
    """
    net = caffepy.Net(text, caffepy.TEST)
    assert net.inputs == ["data"] and net._inputs == [0] and net.outputs == ["ip"]
    out = net.forward(data=np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1))
    np.testing.assert_array_equal(out["ip"], [[3, 3], [12, 12]])


def test_stages_and_level_apply_to_a_net_parameter():
    from caffepy.proto import caffe_pb2, parse_text
    param = parse_text(STAGES_NET, caffe_pb2.NetParameter())
    param.state.phase = caffepy.TEST
    assert non_data_blobs(caffepy.Net(param, stages=["B"])) == ["B", "AorB"]
    levels = parse_text(LEVELS_NET, caffe_pb2.NetParameter())
    assert non_data_blobs(caffepy.Net(levels, level=1)) == ["NoLevel", "Level1Only", "Level>=0",
                                                           "Level>=1"]
