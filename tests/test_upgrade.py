"""Caffe's legacy upgrade paths (spec section 5.6, util/upgrade_proto.cpp)."""
import logging

import pytest
from google.protobuf import text_format

from caffepy.proto import caffe_pb2
from caffepy.errors import CaffepyError
from caffepy.proto import ProtoError, write_binary
from caffepy.proto.upgrade import (
    read_net_param, read_net_param_binary, read_solver_param, upgrade_net_as_needed,
    upgrade_solver_as_needed, net_needs_upgrade)


def net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def solver(text):
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def layer_named(n, name):
    (l,) = [l for l in n.layer if l.name == name]
    return l


# -- V1 -> V2 --------------------------------------------------------------------------

V1_LENET = """
name: "LeNet"
layers {
  name: "mnist" type: DATA top: "data" top: "label"
  data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64 }
  transform_param { scale: 0.00390625 }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  param: "shared_w" param: "shared_b"
  blob_share_mode: PERMISSIVE
  blobs_lr: 1
  inner_product_param { num_output: 10 }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers {
  name: "accuracy" type: ACCURACY bottom: "ip1" bottom: "label" top: "accuracy"
  exclude { phase: TRAIN }
  accuracy_param { top_k: 1 }
}
layers {
  name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss"
  loss_weight: 2
  loss_param { ignore_label: 3 }
}
"""


def test_v1_to_v2_lenet():
    n = net(V1_LENET)
    assert net_needs_upgrade(n)
    assert upgrade_net_as_needed(n, "lenet.prototxt") is True
    assert len(n.layers) == 0
    assert n.name == "LeNet"
    assert [l.name for l in n.layer] == ["mnist", "conv1", "pool1", "ip1", "relu1",
                                         "accuracy", "loss"]
    assert [l.type for l in n.layer] == ["Data", "Convolution", "Pooling", "InnerProduct",
                                         "ReLU", "Accuracy", "SoftmaxWithLoss"]
    data = layer_named(n, "mnist")
    assert list(data.top) == ["data", "label"]
    assert data.data_param.source == "mnist_train_lmdb"
    assert data.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert data.data_param.batch_size == 64
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert data.include[0].phase == caffe_pb2.TRAIN

    conv = layer_named(n, "conv1")
    assert list(conv.bottom) == ["data"] and list(conv.top) == ["conv1"]
    assert len(conv.param) == 2
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert [p.decay_mult for p in conv.param] == [1, 0]
    assert all(p.HasField("decay_mult") for p in conv.param)
    assert not any(p.HasField("name") for p in conv.param)
    assert conv.convolution_param.num_output == 20
    assert list(conv.convolution_param.kernel_size) == [5]
    assert conv.convolution_param.weight_filler.type == "xavier"

    pool = layer_named(n, "pool1")
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert pool.pooling_param.kernel_size == 2

    ip = layer_named(n, "ip1")
    assert [p.name for p in ip.param] == ["shared_w", "shared_b"]
    assert ip.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not ip.param[1].HasField("share_mode")
    assert ip.param[0].lr_mult == 1 and not ip.param[1].HasField("lr_mult")
    assert not ip.param[0].HasField("decay_mult")
    assert ip.inner_product_param.num_output == 10

    acc = layer_named(n, "accuracy")
    assert acc.exclude[0].phase == caffe_pb2.TRAIN and len(acc.include) == 0
    assert acc.accuracy_param.top_k == 1

    loss = layer_named(n, "loss")
    assert list(loss.loss_weight) == [2]
    assert loss.loss_param.ignore_label == 3

    # Idempotent: an upgraded net needs nothing further.
    assert not net_needs_upgrade(n)
    assert upgrade_net_as_needed(n) is False


def test_v1_every_type_name():
    V1 = caffe_pb2.V1LayerParameter
    expected = {
        "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
        "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
        "CONVOLUTION": "Convolution", "DATA": "Data", "DECONVOLUTION": "Deconvolution",
        "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
        "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
        "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
        "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
        "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
        "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
        "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
        "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
        "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
        "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
        "THRESHOLD": "Threshold",
    }
    assert set(expected) == set(V1.LayerType.keys())     # all 40 values (39 + NONE)
    n = caffe_pb2.NetParameter()
    for name in expected:
        n.layers.add(name=name, type=V1.LayerType.Value(name))
    upgrade_net_as_needed(n)
    assert {l.name: l.type for l in n.layer} == expected


def test_v1_copies_typed_params_and_blobs():
    n = net("""
      layers { name: "e" type: ELTWISE bottom: "a" bottom: "b" top: "e"
               eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
      layers { name: "d" type: DUMMY_DATA top: "a"
               dummy_data_param { shape { dim: 2 dim: 3 } } }
      layers { name: "t" type: THRESHOLD bottom: "e" top: "t" threshold_param { threshold: 0.5 } }
      layers { name: "w" type: INNER_PRODUCT bottom: "t" top: "w"
               blobs { shape { dim: 2 } data: 1 data: 2 } blobs { shape { dim: 1 } data: 3 }
               inner_product_param { num_output: 1 } }
      layers { name: "img" type: IMAGE_DATA top: "x" top: "y"
               image_data_param { source: "list.txt" batch_size: 4 shuffle: true new_height: 8 }
               transform_param { mirror: true } }
      layers { name: "m" type: MEMORY_DATA top: "z" top: "zz"
               memory_data_param { batch_size: 1 channels: 1 height: 2 width: 2 } }
    """)
    upgrade_net_as_needed(n)
    e = layer_named(n, "e")
    assert e.eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
    assert list(e.eltwise_param.coeff) == [1, -1]
    assert list(layer_named(n, "d").dummy_data_param.shape[0].dim) == [2, 3]
    assert layer_named(n, "t").threshold_param.threshold == 0.5
    w = layer_named(n, "w")
    assert [list(b.data) for b in w.blobs] == [[1, 2], [3]]
    assert len(w.param) == 0
    img = layer_named(n, "img")
    assert img.image_data_param.shuffle and img.image_data_param.new_height == 8
    assert img.transform_param.mirror
    assert layer_named(n, "m").memory_data_param.height == 2


def test_v1_keeps_net_level_fields():
    n = net("""
      name: "x" force_backward: true debug_info: true state { phase: TEST level: 2 }
      layers { name: "r" type: RELU bottom: "a" top: "b" }
    """)
    upgrade_net_as_needed(n)
    assert n.name == "x" and n.force_backward and n.debug_info
    assert n.state.phase == caffe_pb2.TEST and n.state.level == 2


def test_both_layer_and_layers_is_fatal():
    n = net("""
      layer { name: "a" type: "ReLU" bottom: "x" top: "y" }
      layers { name: "b" type: RELU bottom: "y" top: "z" }
    """)
    with pytest.raises(ProtoError, match=r"bad\.prototxt.*both 'layer' and 'layers'"):
        upgrade_net_as_needed(n, "bad.prototxt")


def test_v1_logging(caplog):
    n = net(V1_LENET)
    with caplog.at_level(logging.INFO, logger="caffepy"):
        upgrade_net_as_needed(n, "lenet.prototxt")
    msgs = [r.getMessage() for r in caplog.records]
    assert ("Attempting to upgrade input file specified using deprecated "
            "V1LayerParameter: lenet.prototxt") in msgs
    assert "Successfully upgraded file specified using deprecated V1LayerParameter" in msgs


# -- data transformation upgrade --------------------------------------------------------

def test_data_transform_upgrade():
    n = net("""
      layers { name: "d" type: DATA top: "data" top: "label"
        data_param { source: "db" batch_size: 10 scale: 0.5 mean_file: "mean.binaryproto"
                     crop_size: 27 mirror: true } }
      layers { name: "i" type: IMAGE_DATA top: "a" top: "b"
        image_data_param { source: "l.txt" batch_size: 2 crop_size: 3 } }
      layers { name: "w" type: WINDOW_DATA top: "c" top: "e"
        window_data_param { source: "w.txt" batch_size: 2 mirror: false scale: 2 } }
      layers { name: "h" type: HDF5_DATA top: "f" hdf5_data_param { source: "h.txt" batch_size: 1 } }
    """)
    upgrade_net_as_needed(n, "d.prototxt")
    d = layer_named(n, "d")
    assert d.transform_param.scale == 0.5
    assert d.transform_param.mean_file == "mean.binaryproto"
    assert d.transform_param.crop_size == 27
    assert d.transform_param.mirror is True
    for f in ("scale", "mean_file", "crop_size", "mirror"):
        assert not d.data_param.HasField(f)
    assert d.data_param.source == "db" and d.data_param.batch_size == 10
    i = layer_named(n, "i")
    assert i.transform_param.crop_size == 3 and not i.image_data_param.HasField("crop_size")
    assert not i.transform_param.HasField("scale")
    w = layer_named(n, "w")
    assert w.transform_param.HasField("mirror") and w.transform_param.mirror is False
    assert w.transform_param.scale == 2
    assert not w.window_data_param.HasField("mirror")
    assert not w.window_data_param.HasField("scale")
    assert not layer_named(n, "h").HasField("transform_param")


def test_data_transform_not_applied_to_v2_layers():
    # Caffe only moves these fields for V1 `layers`; a V2 net is left as it is.
    n = net("""layer { name: "d" type: "Data" top: "x" data_param { source: "db" scale: 0.5 } }""")
    assert upgrade_net_as_needed(n) is False
    assert n.layer[0].data_param.scale == 0.5
    assert not n.layer[0].HasField("transform_param")


# -- V0 -> V1 -> V2 --------------------------------------------------------------------

V0_NET = """
name: "v0net"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data" top: "pad1"
}
layers {
  layer { name: "conv1" type: "conv" num_output: 16 kernelsize: 5 stride: 2 group: 2
          biasterm: false
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 pad: 1 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1"
}
layers {
  layer { name: "fc" type: "innerproduct" num_output: 7 }
  bottom: "norm1" top: "fc"
}
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layer():
    n = net(V0_NET)
    assert upgrade_net_as_needed(n, "v0.prototxt") is True
    assert len(n.layers) == 0 and len(n.input) == 0 and len(n.input_dim) == 0
    assert n.name == "v0net"
    assert [l.name for l in n.layer] == ["input", "conv1", "relu1", "pool1", "norm1", "fc",
                                         "drop", "prob"]
    assert [l.type for l in n.layer] == ["Input", "Convolution", "ReLU", "Pooling", "LRN",
                                         "InnerProduct", "Dropout", "Softmax"]
    inp = n.layer[0]
    assert list(inp.top) == ["data"] and len(inp.bottom) == 0
    assert [list(s.dim) for s in inp.input_param.shape] == [[10, 3, 8, 8]]

    conv = layer_named(n, "conv1")
    # The padding layer is gone; its pad went to the conv, which now reads "data".
    assert list(conv.bottom) == ["data"] and list(conv.top) == ["conv1"]
    cp = conv.convolution_param
    assert cp.num_output == 16
    assert list(cp.kernel_size) == [5] and list(cp.stride) == [2] and list(cp.pad) == [2]
    assert cp.group == 2
    assert cp.HasField("bias_term") and cp.bias_term is False
    assert cp.weight_filler.type == "gaussian"
    assert cp.weight_filler.std == pytest.approx(0.01)
    assert cp.bias_filler.value == pytest.approx(0.1)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]

    pool = layer_named(n, "pool1")
    pp = pool.pooling_param
    assert pp.pool == caffe_pb2.PoolingParameter.AVE
    assert pp.kernel_size == 3 and pp.stride == 2 and pp.pad == 1
    lrn = layer_named(n, "norm1").lrn_param
    assert lrn.local_size == 3 and lrn.alpha == pytest.approx(1e-4)
    assert lrn.beta == pytest.approx(0.75) and lrn.k == 2
    assert layer_named(n, "fc").inner_product_param.num_output == 7
    assert not layer_named(n, "fc").inner_product_param.HasField("bias_term")
    assert layer_named(n, "drop").dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(layer_named(n, "relu1").top) == ["conv1"]
    assert len(layer_named(n, "relu1").param) == 0


def test_v0_data_layers():
    n = net("""
      layers { layer { name: "data" type: "data" source: "train_db" meanfile: "m.binaryproto"
                       batchsize: 32 cropsize: 20 mirror: true scale: 0.25 rand_skip: 5 }
               top: "data" top: "label" }
      layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 4
                       shuffle_images: true new_height: 10 new_width: 12 rand_skip: 1 }
               top: "img" top: "lab2" }
      layers { layer { name: "win" type: "window_data" source: "w.txt" batchsize: 8
                       det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.5
                       det_context_pad: 16 det_crop_mode: "square" }
               top: "win" top: "lab3" }
      layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 2 } top: "h" }
      layers { layer { name: "cat" type: "concat" concat_dim: 0 }
               bottom: "data" bottom: "img" top: "cat" }
      layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
               bottom: "h" }
      layers { layer { name: "ig" type: "infogain_loss" source: "H.binaryproto" }
               bottom: "cat" bottom: "label" }
    """)
    upgrade_net_as_needed(n, "v0data.prototxt")
    d = layer_named(n, "data")
    assert d.type == "Data"
    assert d.data_param.source == "train_db" and d.data_param.batch_size == 32
    assert d.data_param.rand_skip == 5
    assert d.transform_param.mean_file == "m.binaryproto"
    assert d.transform_param.crop_size == 20
    assert d.transform_param.mirror is True
    assert d.transform_param.scale == 0.25
    assert not d.data_param.HasField("scale")
    img = layer_named(n, "img")
    assert img.type == "ImageData"
    ip = img.image_data_param
    assert (ip.source, ip.batch_size, ip.shuffle, ip.new_height, ip.new_width, ip.rand_skip) \
        == ("list.txt", 4, True, 10, 12, 1)
    win = layer_named(n, "win")
    assert win.type == "WindowData"
    wp = win.window_data_param
    assert wp.source == "w.txt" and wp.batch_size == 8
    assert wp.fg_threshold == pytest.approx(0.6) and wp.bg_threshold == pytest.approx(0.4)
    assert wp.fg_fraction == 0.5 and wp.context_pad == 16 and wp.crop_mode == "square"
    h5 = layer_named(n, "h5")
    assert h5.type == "HDF5Data" and h5.hdf5_data_param.source == "h5.txt"
    assert h5.hdf5_data_param.batch_size == 2
    cat = layer_named(n, "cat")
    assert cat.type == "Concat" and cat.concat_param.HasField("concat_dim")
    assert cat.concat_param.concat_dim == 0
    out = layer_named(n, "out")
    assert out.type == "HDF5Output" and out.hdf5_output_param.file_name == "o.h5"
    ig = layer_named(n, "ig")
    assert ig.type == "InfogainLoss" and ig.infogain_loss_param.source == "H.binaryproto"


def test_v0_every_type_name():
    names = {
        "accuracy": "Accuracy", "bnll": "BNLL", "concat": "Concat", "conv": "Convolution",
        "data": "Data", "dropout": "Dropout", "euclidean_loss": "EuclideanLoss",
        "flatten": "Flatten", "hdf5_data": "HDF5Data", "hdf5_output": "HDF5Output",
        "im2col": "Im2col", "images": "ImageData", "infogain_loss": "InfogainLoss",
        "innerproduct": "InnerProduct", "lrn": "LRN",
        "multinomial_logistic_loss": "MultinomialLogisticLoss", "pool": "Pooling",
        "relu": "ReLU", "sigmoid": "Sigmoid", "softmax": "Softmax",
        "softmax_loss": "SoftmaxWithLoss", "split": "Split", "tanh": "TanH",
        "window_data": "WindowData",
    }
    n = caffe_pb2.NetParameter()
    for v0 in names:
        n.layers.add().layer.CopyFrom(caffe_pb2.V0LayerParameter(name=v0, type=v0))
    upgrade_net_as_needed(n)
    assert {l.name: l.type for l in n.layer} == names


def test_v0_unknown_parameter_is_logged_not_fatal(caplog):
    n = net("""layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }""")
    n.input.append("x")
    with caplog.at_level(logging.INFO, logger="caffepy"):
        assert upgrade_net_as_needed(n, "odd.prototxt")
    assert n.layer[0].type == "ReLU"
    assert not n.layer[0].HasField("inner_product_param")
    msgs = [r.getMessage() for r in caplog.records]
    assert "Unknown parameter num_output for layer type relu" in msgs
    assert any(m.startswith("Warning: had one or more problems upgrading V0NetParameter")
               for m in msgs)
    assert ("Attempting to upgrade input file specified using deprecated "
            "V0LayerParameter: odd.prototxt") in msgs
    # The input had no shape: it is simply dropped.
    assert len(n.input) == 0 and [l.type for l in n.layer] == ["ReLU"]


def test_v0_unknown_type_is_fatal():
    n = net("""layers { layer { name: "x" type: "frobnicate" } top: "y" }""")
    with pytest.raises(ProtoError, match=r"v0\.prototxt.*Unknown layer name: frobnicate"):
        upgrade_net_as_needed(n, "v0.prototxt")


def test_v0_padding_into_non_conv_is_fatal():
    n = net("""
      input: "data"
      layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" }
      layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
    """)
    with pytest.raises(ProtoError, match=r"pad\.prototxt.*non-convolutional.*relu"):
        upgrade_net_as_needed(n, "pad.prototxt")


def test_v0_unknown_bottom_is_fatal():
    n = net("""layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }""")
    with pytest.raises(ProtoError, match=r"u\.prototxt.*Unknown blob input nowhere"):
        upgrade_net_as_needed(n, "u.prototxt")


@pytest.mark.parametrize("text, message", [
    # a conv fed by a padding layer takes one bottom
    ("""input: "a" input: "b"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "a" top: "p" }
        layers { layer { name: "c" type: "conv" } bottom: "p" bottom: "b" top: "c" }""",
     "Conv Layer takes a single blob as input."),
    ("""input: "a" input: "b"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "a" bottom: "b" top: "p" }
        layers { layer { name: "c" type: "conv" } bottom: "p" top: "c" }""",
     "Padding Layer takes a single blob as input."),
    ("""input: "a"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "a" top: "p" top: "q" }
        layers { layer { name: "c" type: "pool" } bottom: "p" top: "c" }""",
     "Padding Layer produces a single blob as output."),
    ("""input: "a" input: "b" input_shape { dim: 1 }
        layer { name: "r" type: "ReLU" bottom: "a" top: "r" }""",
     "2 inputs but only 1 input_shape entries"),
])
def test_upgrade_mistakes_raise_proto_error(text, message):
    n = net(text)
    with pytest.raises(ProtoError) as e:
        upgrade_net_as_needed(n, "old.prototxt")
    assert type(e.value) is ProtoError and isinstance(e.value, CaffepyError)
    assert str(e.value) == "old.prototxt: " + message


# -- net input upgrade -------------------------------------------------------------------

def test_input_dim_upgrade():
    n = net("""
      input: "data" input: "label"
      input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5
      input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
      layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
    """)
    assert upgrade_net_as_needed(n, "deploy.prototxt")
    assert len(n.input) == 0 and len(n.input_dim) == 0 and len(n.input_shape) == 0
    assert [l.name for l in n.layer] == ["input", "r"]
    inp = n.layer[0]
    assert inp.type == "Input"
    assert list(inp.top) == ["data", "label"]
    assert [list(s.dim) for s in inp.input_param.shape] == [[2, 3, 4, 5], [2, 1, 1, 1]]


def test_input_shape_upgrade_with_v1_layers():
    n = net("""
      input: "data"
      input_shape { dim: 1 dim: 3 dim: 7 }
      layers { name: "c" type: CONVOLUTION bottom: "data" top: "c"
               convolution_param { num_output: 2 kernel_size: 3 } }
    """)
    upgrade_net_as_needed(n)
    assert [l.type for l in n.layer] == ["Input", "Convolution"]
    assert list(n.layer[0].input_param.shape[0].dim) == [1, 3, 7]
    assert n.layer[0].name == "input"


def test_input_without_shape_dropped():
    n = net("""input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }""")
    assert upgrade_net_as_needed(n)
    assert len(n.input) == 0
    assert [l.name for l in n.layer] == ["r"]


def test_input_dim_too_few_is_error():
    n = net("""input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4""")
    with pytest.raises(ProtoError, match="in.prototxt"):
        upgrade_net_as_needed(n, "in.prototxt")


def test_input_logging(caplog):
    n = net("""input: "data" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1""")
    with caplog.at_level(logging.INFO, logger="caffepy"):
        upgrade_net_as_needed(n, "d.prototxt")
    msgs = [r.getMessage() for r in caplog.records]
    assert ("Attempting to upgrade input file specified using deprecated input fields: "
            "d.prototxt") in msgs
    assert "Successfully upgraded file specified using deprecated input fields." in msgs


# -- BatchNorm upgrade ------------------------------------------------------------------

def test_batchnorm_three_params():
    n = net("""
      layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y"
              param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 name: "m" }
              param { } }
      layer { name: "bn2" type: "BatchNorm" bottom: "y" top: "z" param { lr_mult: 1 } }
      layer { name: "c" type: "Convolution" bottom: "z" top: "c"
              param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 3 } }
    """)
    assert upgrade_net_as_needed(n, "bn.prototxt") is True
    bn = layer_named(n, "bn")
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert all(p.HasField("lr_mult") and p.HasField("decay_mult") for p in bn.param)
    assert bn.param[1].name == "m"                 # other ParamSpec fields are kept
    assert [p.lr_mult for p in layer_named(n, "bn2").param] == [1]
    assert [p.lr_mult for p in layer_named(n, "c").param] == [1, 2, 3]
    # Already zero: nothing changes any more.
    assert upgrade_net_as_needed(n) is False


def test_batchnorm_after_input_upgrade():
    # A V1 net cannot name BatchNorm (no V1 enum value); a V2 net with input fields and
    # a BatchNorm runs both of the later steps.
    n = net("""
      input: "x" input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1
      layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
              param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
    """)
    upgrade_net_as_needed(n)
    assert [l.type for l in n.layer] == ["Input", "BatchNorm"]
    assert [p.decay_mult for p in n.layer[1].param] == [0, 0, 0]


# -- solver ------------------------------------------------------------------------------

@pytest.mark.parametrize("enum,name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                       ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                       ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_upgrade(enum, name):
    s = solver("base_lr: 0.01 solver_type: %s momentum: 0.9" % enum)
    assert upgrade_solver_as_needed(s, "solver.prototxt") is True
    assert s.type == name and s.HasField("type")
    assert not s.HasField("solver_type")
    assert s.base_lr == pytest.approx(0.01)


def test_solver_without_solver_type_untouched():
    s = solver('type: "Adam" base_lr: 0.1')
    assert upgrade_solver_as_needed(s) is False
    assert s.type == "Adam"
    s = solver("base_lr: 0.1")
    assert upgrade_solver_as_needed(s) is False
    assert not s.HasField("type") and s.type == "SGD"


def test_solver_both_types_is_fatal():
    s = solver('solver_type: NESTEROV type: "Adam"')
    with pytest.raises(ProtoError, match=r"s\.prototxt.*cannot be both specified"):
        upgrade_solver_as_needed(s, "s.prototxt")


def test_solver_logging(caplog):
    s = solver("solver_type: NESTEROV")
    with caplog.at_level(logging.INFO, logger="caffepy"):
        upgrade_solver_as_needed(s, "s.prototxt")
    msgs = [r.getMessage() for r in caplog.records]
    assert ("Attempting to upgrade input file specified using deprecated 'solver_type' "
            "field (enum)': s.prototxt") in msgs


# -- file readers --------------------------------------------------------------------------

def test_read_net_param_text_and_binary(tmp_path):
    p = tmp_path / "v1.prototxt"
    p.write_text(V1_LENET)
    n = read_net_param(str(p))
    assert len(n.layers) == 0 and n.layer[1].type == "Convolution"
    assert [x.lr_mult for x in n.layer[1].param] == [1, 2]

    # A V1 "caffemodel" with weights, as old binaries are.
    m = net("""
      name: "old"
      input: "data"
      layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
               blobs { num: 1 channels: 1 height: 2 width: 3 data: 1 data: 2 data: 3
                       data: 4 data: 5 data: 6 }
               blobs { num: 1 channels: 1 height: 1 width: 2 data: 7 data: 8 } }
    """)
    b = tmp_path / "old.caffemodel"
    write_binary(m, str(b))
    n = read_net_param_binary(str(b))
    assert len(n.input) == 0               # input without shape (old caffemodel): dropped
    assert [l.name for l in n.layer] == ["ip"]
    assert n.layer[0].type == "InnerProduct"
    assert list(n.layer[0].blobs[0].data) == [1, 2, 3, 4, 5, 6]
    assert n.layer[0].blobs[0].width == 3
    assert list(n.layer[0].blobs[1].data) == [7, 8]


def test_read_solver_param(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    s = read_solver_param(str(p))
    assert s.type == "Nesterov" and not s.HasField("solver_type")
    assert s.net == "train.prototxt"


def test_read_net_param_binary_of_a_text_file(tmp_path):
    p = tmp_path / "w.caffemodel"
    p.write_text('name: "text"\n')
    with pytest.raises(ProtoError, match=r"w\.caffemodel: not a valid binary NetParameter"):
        read_net_param_binary(str(p))
    p.write_bytes(net(V1_LENET).SerializeToString())
    n = read_net_param_binary(str(p))                   # binary, upgraded like the text
    assert len(n.layers) == 0 and [l.type for l in n.layer][:2] == ["Data", "Convolution"]


def test_read_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    with pytest.raises(ProtoError, match="bad.prototxt"):
        read_net_param(str(p))
    with pytest.raises(ProtoError, match="missing.prototxt"):
        read_net_param(str(tmp_path / "missing.prototxt"))
