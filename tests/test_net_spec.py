"""Tests of caffepy.net_spec (pycaffe's caffe.net_spec): kwargs routing, naming, ordering,
and a LeNet written in Python that builds a caffepy.Net."""
import numpy as np
import pytest
from google.protobuf import text_format

import caffepy
from caffepy import net_spec
from caffepy.net_spec import layers as L, params as P, NetSpec, to_proto, Top, Function
from caffepy.proto import caffe_pb2


def lenet(batch=4):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 1, 28, 28]))
    n.label = L.Input(shape=dict(dim=[batch]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=caffepy.TEST))
    return n


def test_params_are_enum_values():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Convolution.CAFFE == caffe_pb2.ConvolutionParameter.CAFFE
    with pytest.raises(AttributeError):
        P.Pooling.NOPE


def test_param_name_dict():
    d = net_spec.param_name_dict()
    assert d["Convolution"] == "convolution"
    assert d["InnerProduct"] == "inner_product"
    assert d["TanH"] == "tanh"
    assert d["LRN"] == "lrn"
    assert d["HDF5Data"] == "hdf5_data"
    assert d["Transformation"] == "transform"
    assert "Deconvolution" not in d            # Deconvolution uses convolution_param


def test_lenet_to_proto_text():
    proto = lenet().to_proto()
    assert [l.name for l in proto.layer] == ["data", "label", "conv1", "pool1", "conv2",
                                             "pool2", "ip1", "relu1", "ip2", "loss",
                                             "accuracy"]
    conv1 = proto.layer[2]
    assert conv1.type == "Convolution"
    assert list(conv1.bottom) == ["data"] and list(conv1.top) == ["conv1"]
    assert conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]          # scalar wrapped
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in conv1.param] == [1, 2]
    assert proto.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    relu = proto.layer[7]
    assert list(relu.bottom) == ["ip1"] and list(relu.top) == ["ip1"]  # in place
    assert list(proto.layer[8].bottom) == ["ip1"]
    assert list(proto.layer[9].bottom) == ["ip2", "label"]
    assert proto.layer[10].include[0].phase == caffe_pb2.TEST
    text = str(proto)
    assert 'pool: MAX' in text
    # the text parses back to the same message
    parsed = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == proto


def test_lenet_builds_a_net():
    text = str(lenet(batch=3).to_proto())
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    param.state.phase = caffepy.TEST
    net = caffepy.Net(param)
    shapes = {k: tuple(v.data.shape) for k, v in net.blobs.items()}
    assert shapes["data"] == (3, 1, 28, 28)
    assert shapes["conv1"] == (3, 20, 24, 24)
    assert shapes["pool1"] == (3, 20, 12, 12)
    assert shapes["conv2"] == (3, 50, 8, 8)
    assert shapes["pool2"] == (3, 50, 4, 4)
    assert shapes["ip1"] == (3, 500)
    assert shapes["ip2"] == (3, 10)
    assert "accuracy" in shapes
    assert [tuple(p.data.shape) for p in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert [tuple(p.data.shape) for p in net.params["ip1"]] == [(500, 800), (500,)]
    out = net.forward(data=np.zeros((3, 1, 28, 28), np.float32),
                      label=np.zeros(3, np.float32))
    assert out["loss"] == pytest.approx(np.log(10), rel=1e-5)      # ip2 = bias = 0
    # in TRAIN the Accuracy layer is excluded
    param.state.phase = caffepy.TRAIN
    assert "accuracy" not in caffepy.Net(param).blobs


def test_auto_names_and_dependency_order():
    data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    c1 = L.Convolution(data, kernel_size=3, num_output=2)
    c2 = L.Convolution(data, kernel_size=1, num_output=2)
    s = L.Eltwise(c1, c2, operation=P.Eltwise.PROD)
    proto = s.to_proto()
    assert [(l.name, l.type) for l in proto.layer] == [
        ("Input1", "Input"), ("Convolution1", "Convolution"), ("Convolution2", "Convolution"),
        ("Eltwise1", "Eltwise")]
    assert list(proto.layer[3].bottom) == ["Convolution1", "Convolution2"]
    assert proto.layer[3].eltwise_param.operation == caffe_pb2.EltwiseParameter.PROD
    assert to_proto(s) == proto
    # several tops: shared layers appear once, in first-needed order
    proto2 = to_proto(c2, s)
    assert [l.name for l in proto2.layer] == ["Input1", "Convolution1", "Convolution2",
                                              "Eltwise1"]
    assert list(proto2.layer[1].convolution_param.kernel_size) == [1]


def test_netspec_names_and_order():
    n = NetSpec()
    inp = L.Input(shape=dict(dim=[2, 3]))
    n.out = L.ReLU(L.InnerProduct(inp, num_output=4))      # assigned before its input
    n.inp = inp
    proto = n.to_proto()
    assert [l.name for l in proto.layer] == ["inp", "InnerProduct1", "out"]
    assert list(proto.layer[1].bottom) == ["inp"]
    assert list(proto.layer[2].top) == ["out"]
    assert n["out"] is n.out and "inp" in n and n.keys() == ["out", "inp"]
    with pytest.raises(AttributeError):
        n.missing
    with pytest.raises(KeyError):
        n["missing"]
    assert not hasattr(n, "missing")
    del n["out"]
    assert n.keys() == ["inp"]


def test_ntop_and_layer_param_routing():
    n = NetSpec()
    n.data, n.label = L.Data(source="db", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 256, mirror=True),
                             include=[dict(phase=caffepy.TRAIN)])
    assert isinstance(n.data, Top) and n.label.n == 1
    n.drop = L.Dropout(n.data, dropout_ratio=0.3, in_place=True)
    n.py = L.Python(n.data, module="mod", layer="MyLayer", param_str="{'a': 1}",
                    loss_weight=2, propagate_down=False)
    n.deconv = L.Deconvolution(n.data, convolution_param=dict(num_output=3, kernel_size=[2],
                                                             bias_term=False))
    n.th = L.TanH(n.data, engine=P.TanH.CAFFE)
    n.silence = L.Silence(n.label, ntop=0)
    assert isinstance(n.silence, Function)
    proto = n.to_proto()
    layers = {l.name: l for l in proto.layer}
    d = layers["data"]
    assert list(d.top) == ["data", "label"]
    assert d.data_param.source == "db" and d.data_param.batch_size == 64
    assert d.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert d.transform_param.scale == pytest.approx(1. / 256) and d.transform_param.mirror
    assert d.include[0].phase == caffe_pb2.TRAIN
    drop = layers["drop"]
    assert list(drop.top) == ["data"] and drop.dropout_param.dropout_ratio == pytest.approx(0.3)
    py = layers["py"]
    assert (py.python_param.module, py.python_param.layer) == ("mod", "MyLayer")
    assert py.python_param.param_str == "{'a': 1}"
    assert list(py.loss_weight) == [2] and list(py.propagate_down) == [False]
    dc = layers["deconv"].convolution_param
    assert (dc.num_output, list(dc.kernel_size), dc.bias_term) == (3, [2], False)
    assert layers["th"].tanh_param.engine == caffe_pb2.TanHParameter.CAFFE
    s = layers["silence"]
    assert s.type == "Silence" and list(s.bottom) == ["label"] and len(s.top) == 0


def test_errors():
    with pytest.raises(TypeError, match="input 0 is not a Top"):
        L.ReLU("data")
    with pytest.raises(AttributeError, match="num_outputs"):
        L.Convolution(L.Input(), num_outputs=3).to_proto()
    with pytest.raises(AttributeError, match="FillerParameter has no field named 'typ'"):
        L.InnerProduct(L.Input(), weight_filler=dict(typ="xavier")).to_proto()
    with pytest.raises(AttributeError):
        L.Deconvolution(L.Input(), num_output=3).to_proto()   # as pycaffe: no deconvolution_param
