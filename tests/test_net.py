"""Net construction exactly as Caffe's Net::Init: state filtering, splits, in-place, loss
weights, backward pruning, param sharing, outputs, weights I/O, the saved NetParameter, the
Net::Init log and user-facing errors."""
import logging
import os

import numpy as np
import pytest

import caffepy
from caffepy.net import NetError, filter_net, insert_splits
from caffepy.proto import caffe_pb2
from caffepy.proto import ProtoError, parse_text, read_binary

f32 = np.float32

LENET_TEST = """
name: "LeNet"
layer { name: "mnist" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 30 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOFTMAX_NO_TOP = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" }
"""

IP_NET = """
name: "ipnet"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
"""


def net_param(text, phase=caffe_pb2.TEST, stages=(), level=0):
    p = parse_text(text, caffe_pb2.NetParameter())
    p.state.phase = phase
    p.state.stage.extend(stages)
    p.state.level = level
    return p


def net_from(text, phase=caffe_pb2.TRAIN):
    return caffepy.Net(net_param(text, phase))


def write(tmp_path, name, text):
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(text)
    return path


# -- pure graph rewriting: no layers involved ------------------------------------------

def test_filter_net_rules():
    text = """
    layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } }
    layer { name: "b" type: "Input" top: "x" include { phase: TEST } }
    layer { name: "c" type: "Input" top: "y" include { stage: "s1" stage: "s2" } }
    layer { name: "d" type: "Input" top: "z" exclude { not_stage: "s1" } }
    layer { name: "e" type: "Input" top: "w" include { min_level: 2 } }
    layer { name: "f" type: "Input" top: "v" include { max_level: 1 } }
    """
    names = lambda p: [l.name for l in filter_net(p).layer]
    assert names(net_param(text, caffe_pb2.TRAIN)) == ["a", "f"]
    assert names(net_param(text, caffe_pb2.TEST, ["s1", "s2"], level=3)) == ["b", "c", "d", "e"]
    assert names(net_param(text, caffe_pb2.TEST, ["s1"], level=1)) == ["b", "d", "f"]


def test_filter_net_rejects_include_and_exclude():
    text = 'layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(NetError, match="either include rules or exclude rules"):
        filter_net(net_param(text))


def test_insert_splits_lenet_test_names():
    p = insert_splits(filter_net(net_param(LENET_TEST, caffe_pb2.TEST)))
    names = [l.name for l in p.layer]
    assert names == ["mnist", "label_mnist_1_split", "conv1", "pool1", "ip1", "relu1", "ip2",
                     "ip2_ip2_0_split", "accuracy", "loss"]
    split = p.layer[1]
    assert list(split.top) == ["label_mnist_1_split_0", "label_mnist_1_split_1"]
    assert list(split.loss_weight) == []   # ConfigureSplitLayer adds none when the weight is 0
    assert list(p.layer[8].bottom) == ["ip2_ip2_0_split_0", "label_mnist_1_split_0"]
    assert list(p.layer[9].bottom) == ["ip2_ip2_0_split_1", "label_mnist_1_split_1"]
    # TRAIN has no accuracy layer: no splits at all
    p = insert_splits(filter_net(net_param(LENET_TEST, caffe_pb2.TRAIN)))
    assert not any(l.type == "Split" for l in p.layer)


def test_insert_splits_with_explicit_loss_weight_reserves_top_0():
    text = """
    layer { name: "in" type: "Input" top: "x" loss_weight: 2 }
    layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }
    """
    p = insert_splits(net_param(text))
    assert [l.name for l in p.layer] == ["in", "x_in_0_split", "a"]
    assert list(p.layer[0].loss_weight) == []
    assert list(p.layer[1].loss_weight) == [2.0, 0.0]
    assert list(p.layer[2].bottom) == ["x_in_0_split_1"]


TWO_CONSUMERS = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "Power" bottom: "x" top: "a" }
layer { name: "b" type: "Power" bottom: "x" top: "b" }
"""


def test_split_layer_gets_no_loss_weight_entries_without_a_loss():
    # insert_splits.cpp ConfigureSplitLayer: add_loss_weight only `if (loss_weight)`.
    p = insert_splits(parse_text(TWO_CONSUMERS, caffe_pb2.NetParameter()))
    split = [lp for lp in p.layer if lp.type == "Split"]
    assert [s.name for s in split] == ["x_in_0_split"]
    assert len(split[0].loss_weight) == 0
    net = net_from(TWO_CONSUMERS)
    saved = net.to_proto()
    assert len(saved.layer[1].loss_weight) == 0 and saved.layer[1].type == "Split"


def test_split_layer_with_explicit_loss_weight():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "p" type: "Power" bottom: "x" top: "y" loss_weight: 2 }
    layer { name: "q" type: "Power" bottom: "y" top: "z" }
    """
    p = insert_splits(parse_text(text, caffe_pb2.NetParameter()))
    assert len(p.layer[1].loss_weight) == 0
    assert list(p.layer[2].loss_weight) == [2.0, 0.0]
    assert list(p.layer[3].bottom) == ["y_p_0_split_1"]


def test_unknown_bottom_is_reported_with_layer_and_index():
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n' \
           'layer { name: "r" type: "ReLU" bottom: "nosuch" top: "y" }'
    with pytest.raises(NetError, match=r"Unknown bottom blob 'nosuch' \(layer 'r', bottom index 0\)"):
        caffepy.Net(net_param(text))


def test_unknown_layer_type_names_layer_and_type():
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n' \
           'layer { name: "weird" type: "NoSuchLayer" bottom: "x" top: "y" }'
    with pytest.raises(NetError, match="Layer 'weird': unknown layer type 'NoSuchLayer'"):
        caffepy.Net(net_param(text))


def test_prototxt_typo_reports_file_and_line(tmp_path):
    path = write(tmp_path, "bad.prototxt", 'name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    with pytest.raises(ProtoError) as e:
        caffepy.Net(path, caffepy.TEST)
    assert "bad.prototxt:4:" in str(e.value)
    assert "tpye" in str(e.value)


def test_missing_prototxt_file():
    with pytest.raises(NetError, match="does not exist"):
        caffepy.Net("/nonexistent/net.prototxt", caffepy.TEST)


def test_top_produced_twice():
    text = 'layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n' \
           'layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
    with pytest.raises(NetError, match="Top blob 'x' produced by multiple sources"):
        caffepy.Net(net_param(text))


# -- full nets -------------------------------------------------------------------------

def test_lenet_structure_outputs_and_backward_flags():
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TEST))
    assert net.outputs == ["accuracy", "loss"]
    assert net.inputs == ["data", "label"]
    assert list(net.blobs)[:3] == ["data", "label", "label_mnist_1_split_0"]
    assert "ip2_ip2_0_split_1" in net.blobs
    assert net.blobs["conv1"].shape == (4, 20, 24, 24)
    assert net.blobs["pool1"].shape == (4, 20, 12, 12)
    assert net.blobs["ip2"].shape == (4, 10)
    assert net.blobs["loss"].shape == ()
    assert list(net.params) == ["conv1", "ip1", "ip2"]
    assert [b.shape for b in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    # loss weights: the loss top gets 1 by default, accuracy 0
    idx = net.blob_names.index("loss")
    assert net.blob_loss_weights[idx] == 1.0
    assert net.blob_loss_weights[net.blob_names.index("accuracy")] == 0.0
    # accuracy does not need backward; the input layer neither
    flags = dict(zip(net.layer_names, net.layer_need_backward))
    assert flags["accuracy"] is False and flags["mnist"] is False
    assert flags["conv1"] and flags["loss"] and flags["ip2_ip2_0_split"]
    # label bottoms never need backward; conv1's data bottom neither
    loss_id = net.layer_names.index("loss")
    assert net.bottom_need_backward[loss_id] == [True, False]
    assert net.bottom_need_backward[net.layer_names.index("conv1")] == [False]
    # lr_mult defaults and explicit values
    assert net.params_lr == [1, 2, 1, 2, 1, 1]
    assert len(net.learnable_params) == 6


def test_force_backward_respects_allow_force_backward_and_propagate_down():
    text = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 0 }
        propagate_down: false inner_product_param { num_output: 3 bias_term: false } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""
    net = net_from(text)
    # force_backward: bottom_need_backward |= AllowForceBackward (true for ip, even with
    # propagate_down false; false for the label of a LossLayer); params all propagate.
    assert net.bottom_need_backward[1] == [True]
    assert net.bottom_need_backward[2] == [True, False]
    assert net.layers[1].param_propagate_down == [True]
    assert net.blob_need_backward[net.blob_names.index("x")]
    assert not net.blob_need_backward[net.blob_names.index("label")]


def test_forward_loss_equals_loss_weight_times_top():
    net = caffepy.Net(net_param(LENET_TEST.replace('top: "loss" }', 'top: "loss" loss_weight: 2.5 }'),
                                caffe_pb2.TRAIN))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random((4, 1, 28, 28))
    net.blobs["label"].data[...] = [1, 2, 3, 4]
    loss = net.forward_prefilled()
    assert loss == pytest.approx(2.5 * float(net.blobs["loss"].data), rel=1e-6)
    # softmax loss of ip2 by hand
    ip2 = net.blobs["ip2"].data.astype(np.float64)
    p = np.exp(ip2 - ip2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(4), [1, 2, 3, 4]]))
    assert float(net.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)


def test_loss_layer_without_top_gets_an_automatic_top_with_loss_weight_1():
    # LossLayer::AutoTopBlobs() is true; Net::Init appends an "(automatic)" top that is not
    # an output (not in available_blobs) but still carries the default loss weight 1.
    net = net_from(SOFTMAX_NO_TOP)
    x = np.array([[1, 2, 3], [0, 0, 0]], f32)
    label = np.array([2, 1], f32)
    net.blob_by_name("x").data[...] = x
    net.blob_by_name("label").data[...] = label
    loss = net.forward_prefilled()
    e = np.exp(x.astype(np.float64))
    p = e / e.sum(1, keepdims=True)
    want = -(np.log(p[0, 2]) + np.log(p[1, 1])) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    assert len(net.top_vecs[1]) == 1
    assert net.blob_names[net.top_id_vecs[1][0]] == "(automatic)"
    assert net.blob_loss_weights[net.top_id_vecs[1][0]] == 1.0
    assert net.outputs == []
    assert list(net.layers[1].layer_param.loss_weight) == [1.0]
    net.backward()
    assert net.blob_by_name("x").diff[0, 2] == pytest.approx((p[0, 2] - 1) / 2, rel=1e-5)


def test_net_loss_is_summed_in_float32():
    # Net::ForwardFromTo: `Dtype loss = 0; loss += layer_loss;` (float). 1 + 2^-24 rounds to 1
    # in float, twice; a double sum would give 1 + 2^-23.
    text = ""
    for i in range(3):
        text += ('layer { name: "i%d" type: "Input" top: "x%d" loss_weight: 1 '
                 'input_param { shape { dim: 1 } } }\n' % (i, i))
    net = net_from(text)
    for i, v in enumerate([1.0, 2.0 ** -24, 2.0 ** -24]):
        net.blob_by_name("x%d" % i).data[...] = v
    assert net.forward_prefilled() == 1.0


def test_layer_loss_is_summed_in_float32_over_tops():
    # Layer::Forward: `Dtype loss = 0; loss += caffe_cpu_dot(...)` per top with a loss.
    text = ('layer { name: "i" type: "Input" top: "a" top: "b" top: "c" loss_weight: 1 '
            'loss_weight: 1 loss_weight: 1 input_param { shape { dim: 1 } } }\n')
    net = net_from(text)
    for n, v in zip("abc", [1.0, 2.0 ** -24, 2.0 ** -24]):
        net.blob_by_name(n).data[...] = v
    assert net.layers[0].forward([], net.top_vecs[0]) == 1.0
    assert net.forward_prefilled() == 1.0


def test_pycaffe_forward_kwargs_and_errors():
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TEST))
    x = np.random.default_rng(1).random((4, 1, 28, 28)).astype(np.float32)
    out = net.forward(data=x, label=np.array([0, 1, 2, 3], dtype=np.float32))
    assert set(out) == {"accuracy", "loss"}
    assert np.array_equal(net.blobs["data"].data, x)
    with pytest.raises(NetError, match="do not match net inputs"):
        net.forward(data=x)
    with pytest.raises(NetError, match="not batch sized"):
        net.forward(data=x[:2], label=np.zeros(2, np.float32))


def test_pycaffe_backward_does_not_clear_param_diffs():
    net = net_from(IP_NET.replace('name: "ipnet"', 'name: "ipnet" force_backward: true'))
    net.forward()
    net.backward(y=np.ones((2, 2), f32))
    g1 = net.params["ip"][1].diff.copy()
    net.backward(y=np.ones((2, 2), f32))
    np.testing.assert_array_equal(net.params["ip"][1].diff, 2 * g1)


def test_param_sharing_by_name_accumulates_gradients():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya"
            param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "yb"
            param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 } }
    layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" top: "y" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "y" top: "l" }
    """
    net = caffepy.Net(net_param(text, caffe_pb2.TRAIN))
    assert len(net.learnable_params) == 2
    wa, wb = net.params["ip_a"][0], net.params["ip_b"][0]
    assert np.array_equal(wa.data, wb.data) and wa.shares_data_with(wb)
    rng = np.random.default_rng(0)
    a = rng.random((2, 3)).astype(np.float32)
    b = rng.random((2, 3)).astype(np.float32)
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    net.clear_param_diffs()
    net.forward_prefilled()
    net.blobs["y"].diff[...] = 1.0
    net.backward_from_to(net.layer_names.index("sum"), 0)
    # dW = Σ dy^T x over both uses
    expected = np.ones((2, 4)).T @ a + np.ones((2, 4)).T @ b
    np.testing.assert_allclose(wa.diff, expected, rtol=1e-5)


def test_param_sharing_shape_mismatch_is_an_error():
    text = """
    layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" }
            inner_product_param { num_output: 4 bias_term: false } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "yb" param { name: "w" }
            inner_product_param { num_output: 5 bias_term: false } }
    """
    with pytest.raises(NetError, match="Cannot share param 'w' owned by layer 'ip_a' with layer 'ip_b'"):
        caffepy.Net(net_param(text, caffe_pb2.TRAIN))


def test_save_load_bit_identical_and_copy_from(tmp_path):
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TRAIN))
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = np.random.default_rng(b.count).standard_normal(b.shape)
    path = os.path.join(str(tmp_path), "m.caffemodel")
    net.save(path)
    with open(path, "rb") as f:
        raw = f.read()
    other = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TEST), weights=path)
    for name in net.params:
        for x, y in zip(net.params[name], other.params[name]):
            assert np.array_equal(x.data, y.data)
    path2 = os.path.join(str(tmp_path), "m2.caffemodel")
    other.save(path2)
    # TEST net has the extra Split/accuracy layers, so compare the weights message-wise
    p1 = read_binary(path, caffe_pb2.NetParameter())
    p2 = read_binary(path2, caffe_pb2.NetParameter())
    w1 = {l.name: [list(b.data) for b in l.blobs] for l in p1.layer if l.blobs}
    w2 = {l.name: [list(b.data) for b in l.blobs] for l in p2.layer if l.blobs}
    assert w1 == w2
    # saving the same net again gives identical bytes
    net.save(path2)
    with open(path2, "rb") as f:
        assert f.read() == raw
    # HDF5 form round trip
    h5 = os.path.join(str(tmp_path), "m.caffemodel.h5")
    net.save_hdf5(h5)
    third = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TRAIN), weights=h5)
    for name in net.params:
        for x, y in zip(net.params[name], third.params[name]):
            assert np.array_equal(x.data, y.data)


def test_to_proto_has_phase_split_layers_and_added_param_specs():
    # Layer::ToProto copies layer_param_ after SetUp: the inherited phase, LossLayer's
    # loss_weight 1, BatchNorm's three lr_mult-0 ParamSpecs, and the Split layers.
    text = """
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }
"""
    saved = net_from(text, caffe_pb2.TEST).to_proto()
    names = [lp.name for lp in saved.layer]
    assert names == ["in", "label_in_1_split", "bn", "x_bn_0_split", "loss", "acc"]
    assert all(lp.phase == caffe_pb2.TEST for lp in saved.layer)
    bn = saved.layer[2]
    assert [ps.lr_mult for ps in bn.param] == [0, 0, 0] and len(bn.blobs) == 3
    assert list(saved.layer[4].loss_weight) == [1.0]
    assert len(saved.layer[5].loss_weight) == 0


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TRAIN))
    path = os.path.join(str(tmp_path), "m.caffemodel")
    net.save(path)
    other = caffepy.Net(net_param(LENET_TEST.replace("num_output: 30", "num_output: 31"),
                                  caffe_pb2.TRAIN))
    with pytest.raises(NetError, match=r"cannot copy param 0 weights from layer 'ip1'; shape "
                                       r"mismatch. Source param shape is 30 2880; target param "
                                       r"shape is 31 2880"):
        other.copy_from(path)


def test_copy_from_ignores_unknown_layers(tmp_path, caplog):
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TRAIN))
    path = os.path.join(str(tmp_path), "m.caffemodel")
    net.save(path)
    renamed = caffepy.Net(net_param(LENET_TEST.replace('name: "ip1"', 'name: "ip1_new"'),
                                    caffe_pb2.TRAIN))
    import logging
    with caplog.at_level(logging.INFO, logger="caffepy"):
        renamed.copy_from(path)
    assert "Ignoring source layer ip1" in caplog.text
    assert np.array_equal(renamed.params["conv1"][0].data, net.params["conv1"][0].data)


def test_copy_trained_layers_copies_a_stored_diff():
    # CopyTrainedLayersFrom -> Blob::FromProto(proto, reshape=false), which copies diff (or
    # double_diff) too when the proto holds one (a model saved with snapshot_diff).
    src = net_from(IP_NET)
    for b in src.params["ip"]:
        b.diff[...] = np.arange(b.count, dtype=f32).reshape(b.shape) + 0.5
    with_diff = src.to_proto(write_diff=True)
    dst = net_from(IP_NET)
    dst.copy_from(with_diff)
    for s, d in zip(src.params["ip"], dst.params["ip"]):
        np.testing.assert_array_equal(s.data, d.data)
        np.testing.assert_array_equal(s.diff, d.diff)
    # without a stored diff the target diff is left alone
    dst2 = net_from(IP_NET)
    dst2.params["ip"][0].diff[...] = 3
    dst2.copy_from(src.to_proto())
    np.testing.assert_array_equal(dst2.params["ip"][0].diff, np.full((2, 3), 3, f32))


def test_blobs_given_in_the_layer_param_load_their_diff_too():
    # Layer::Layer: blobs_[i]->FromProto(layer_param_.blobs(i)) (reshape=true) copies diff.
    src = net_from(IP_NET)
    for b in src.params["ip"]:
        b.diff[...] = 1.25
    p = parse_text(IP_NET, caffe_pb2.NetParameter())
    p.layer[1].blobs.extend(src.to_proto(write_diff=True).layer[1].blobs)
    p.state.phase = caffe_pb2.TRAIN
    net = caffepy.Net(p)
    np.testing.assert_array_equal(net.params["ip"][0].data, src.params["ip"][0].data)
    np.testing.assert_array_equal(net.params["ip"][1].diff, np.full(2, 1.25, f32))


def test_hdf5_weights_need_the_exact_shape(tmp_path):
    # CopyTrainedLayersFromHDF5 -> hdf5_load_nd_dataset(..., reshape=false): CHECK that the
    # dataset dims equal the blob shape (same count is not enough).
    h5py = pytest.importorskip("h5py")
    src = net_from(IP_NET)
    path = str(tmp_path / "w.caffemodel.h5")
    src.save_hdf5(path)
    dst = net_from(IP_NET)
    dst.copy_from(path)
    np.testing.assert_array_equal(dst.params["ip"][0].data, src.params["ip"][0].data)
    with h5py.File(path, "r+") as f:
        w = np.asarray(f["data/ip/0"])
        del f["data/ip/0"]
        f["data/ip/0"] = w.reshape(3, 2)
    with pytest.raises(NetError, match="shape"):
        net_from(IP_NET).copy_from(path)


def test_share_trained_layers_logs_ignored_layers(caplog):
    # Net::ShareTrainedLayersWith: LOG(INFO) << "Ignoring source layer " << name.
    train = net_from(IP_NET)
    test = net_from(IP_NET.replace('name: "ip"', 'name: "ip_other"'))
    with caplog.at_level(logging.INFO, logger="caffepy"):
        test.share_trained_layers_with(train)
    assert "Ignoring source layer ip" in caplog.text
    assert "Ignoring source layer in" not in caplog.text


def test_duplicate_layer_names_index_and_copy():
    # layer_names_index_ is a std::map filled in order (the last duplicate wins:
    # layer_by_name); CopyTrainedLayersFrom(proto) searches layer_names_ linearly (the first).
    text = IP_NET + """
layer { name: "ip" type: "InnerProduct" bottom: "y" top: "z"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0 } } }
"""
    net = net_from(text)
    assert net.layer_by_name("ip") is net.layers[2]
    src = net_from(IP_NET)
    net.copy_from(src.to_proto())
    np.testing.assert_array_equal(net.layers[1].blobs[0].data, src.params["ip"][0].data)
    np.testing.assert_array_equal(net.layers[2].blobs[0].data, np.zeros((2, 2), f32))


def test_truncated_caffemodel_is_a_clear_error(tmp_path):
    net = caffepy.Net(net_param(LENET_TEST, caffe_pb2.TRAIN))
    path = os.path.join(str(tmp_path), "m.caffemodel")
    net.save(path)
    with open(path, "rb") as f:
        raw = f.read()
    bad = os.path.join(str(tmp_path), "truncated.caffemodel")
    with open(bad, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(ProtoError, match="truncated.caffemodel.*truncated or corrupt"):
        net.copy_from(bad)


def test_large_caffemodel_over_64mb_loads(tmp_path):
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4200 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 4200 } }
    """
    net = caffepy.Net(net_param(text, caffe_pb2.TEST))
    net.params["ip"][0].data[...] = 0.5
    path = os.path.join(str(tmp_path), "big.caffemodel")
    net.save(path)
    assert os.path.getsize(path) > 64 * 1024 * 1024
    net.params["ip"][0].data[...] = 0
    net.copy_from(path)
    assert float(net.params["ip"][0].data[17, 4100]) == 0.5


def test_legacy_pycaffe_constructor_order_and_blob_api(tmp_path):
    path = write(tmp_path, "lenet.prototxt", LENET_TEST)
    net = caffepy.Net(path, caffepy.TRAIN)
    assert "accuracy" not in net.blobs            # TRAIN: the accuracy layer is excluded
    model = os.path.join(str(tmp_path), "w.caffemodel")
    net.params["ip2"][1].data[...] = 0.25
    net.save(model)
    legacy = caffepy.Net(path, model, caffepy.TEST)          # Net(prototxt, weights, phase)
    assert legacy.phase == caffepy.TEST and "accuracy" in legacy.blobs
    assert np.all(legacy.params["ip2"][1].data == 0.25)
    modern = caffepy.Net(path, caffepy.TEST, weights=model)
    assert np.all(modern.params["ip2"][1].data == 0.25)
    b = modern.blobs["data"]
    assert (b.num, b.channels, b.height, b.width, b.count) == (4, 1, 28, 28, 4 * 28 * 28)
    b.data[...] = 1.5
    assert float(modern.blobs["data"].data.sum()) == 1.5 * b.count
    b.reshape(2, 1, 28, 28)
    modern.blobs["label"].reshape(2)
    modern.reshape()
    assert modern.blobs["conv1"].shape == (2, 20, 24, 24)


def test_forward_all_batches_pads_and_trims():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    """
    net = caffepy.Net(net_param(text, caffe_pb2.TEST))
    w = net.params["ip"][0].data.astype(np.float64)
    x = np.random.default_rng(0).random((10, 3)).astype(np.float32)   # 2 full batches + 2
    out = net.forward_all(x=x)
    assert out["y"].shape == (10, 2)
    np.testing.assert_allclose(out["y"], x @ w.T, rtol=1e-5)
    outs, diffs = net.forward_backward_all(x=x, y=np.ones((10, 2), np.float32))
    np.testing.assert_allclose(outs["y"], x @ w.T, rtol=1e-5)
    np.testing.assert_allclose(diffs["x"], np.ones((10, 2)) @ w, rtol=1e-5)


# -- Net::Init's log -------------------------------------------------------------------

def test_net_init_log_order_and_memory(caplog):
    # Net::Init: "Creating layer" (LayerRegistry) -> "Creating Layer" -> connections ->
    # SetUp -> "Setting up" -> "Top shape" [+ loss weight] -> "Memory required for data".
    with caplog.at_level(logging.INFO, logger="caffepy"):
        net_from(SOFTMAX_NO_TOP.replace("force_backward: true", ""))
    msgs = [r.getMessage() for r in caplog.records]
    i = msgs.index("Creating layer loss")
    assert msgs[i:i + 9] == ["Creating layer loss", "Creating Layer loss", "loss <- x",
                             "loss <- label", "loss -> (automatic)", "Setting up loss",
                             "Top shape: (1)", "    with loss weight 1",
                             "Memory required for data: 36"]
    assert msgs[0].startswith("Initializing net from parameters: ")
