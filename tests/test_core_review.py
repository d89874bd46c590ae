"""Semantic review of the core (Blob, Layer, Net, Solver) against BVLC Caffe.

Each test pins one Caffe behaviour, with the value Caffe gives and the C++ code path it
comes from cited in the test.
"""
import logging
import os

import numpy as np
import pytest

import caffepy
from caffepy.net import NetError, insert_splits
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text, read_binary, set_blobproto, write_binary

f32 = np.float32


def net_from(text, phase=caffe_pb2.TRAIN):
    p = parse_text(text, caffe_pb2.NetParameter())
    p.state.phase = phase
    return caffepy.Net(p)


# -- Net::Init ------------------------------------------------------------------------------

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


SOFTMAX_NO_TOP = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" }
"""


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


IP_NET = """
name: "ipnet"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
"""


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


def test_pycaffe_backward_does_not_clear_param_diffs():
    net = net_from(IP_NET.replace('name: "ipnet"', 'name: "ipnet" force_backward: true'))
    net.forward()
    net.backward(y=np.ones((2, 2), f32))
    g1 = net.params["ip"][1].diff.copy()
    net.backward(y=np.ones((2, 2), f32))
    np.testing.assert_array_equal(net.params["ip"][1].diff, 2 * g1)


# -- logs -----------------------------------------------------------------------------------

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
