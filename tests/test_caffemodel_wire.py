""".caffemodel and .solverstate bytes written from the arrays (caffepy.proto.wire, caffemodel)
are the bytes protobuf writes for the message Caffe's Net::ToProto / Solver snapshot builds;
the blobs read back as views of the file give the values protobuf's parser gives, for every
form Caffe reads (shape.dim, the legacy 4-D fields, double_data, unpacked values, V1 nets)."""
import os

import numpy as np
import pytest

import caffepy
from caffepy.errors import ProtoError
from caffepy.proto import (array_to_blobproto, caffe_pb2, parse_text, read_binary,
                           write_binary, write_mean_binaryproto)
from caffepy.proto.blobproto import BlobValues
from caffepy.proto.caffemodel import read_net_weights
from caffepy.proto.wire import (I32, LEN, Chunks, WireError, decode_varint, encode_varint,
                                field_key, scan, splice)
from caffepy.solver import state

f32 = np.float32

NET = """
name: "wire"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" }
                            bias_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" }
                      bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
        include { phase: TRAIN }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" }
                              bias_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        loss_weight: 2 }
"""

# Values whose float32 bits must survive: signed zero, denormals, the extremes, infinities.
SPECIAL = f32([-0.0, 1e-45, -1e-40, 3.4028235e38, -np.inf, np.inf, 1.1754944e-38, 0.1])


def make_net(seed=0):
    p = parse_text(NET, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    net = caffepy.Net(p)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.standard_normal(b.shape).astype(f32)
            b.diff[...] = rng.standard_normal(b.shape).astype(f32)
    w = net.params["ip"][0].data.reshape(-1)
    w[:SPECIAL.size] = SPECIAL
    return net


def reference_to_proto(net, write_diff=False):
    """Net::ToProto built field by field with the protobuf runtime."""
    param = caffe_pb2.NetParameter()
    param.name = net.name
    for layer in net.layers:
        lp = param.layer.add()
        lp.CopyFrom(layer.layer_param)
        del lp.blobs[:]
        for b in layer.blobs:
            bp = lp.blobs.add()
            bp.shape.dim.extend(int(d) for d in b.shape)
            bp.data.extend(b.data.ravel().tolist())
            if write_diff:
                bp.diff.extend(b.diff.ravel().tolist())
    return param


def bits(a):
    return np.ascontiguousarray(a, dtype=f32).view(np.uint32)


# -- the wire primitives ---------------------------------------------------------------------

@pytest.mark.parametrize("n, raw", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"),
                                    (128, b"\x80\x01"), (300, b"\xac\x02"),
                                    (2 ** 32, b"\x80\x80\x80\x80\x10"),
                                    (-1, b"\xff" * 9 + b"\x01")])
def test_varints(n, raw):
    assert encode_varint(n) == raw
    assert decode_varint(raw, 0, len(raw)) == (n % 2 ** 64, len(raw))


def test_truncated_varint_and_field_are_wire_errors():
    with pytest.raises(WireError):
        decode_varint(b"\x80\x80", 0, 2)
    with pytest.raises(WireError):          # a 5-byte payload announced, 2 present
        list(scan(b"\x0a\x05ab"))
    with pytest.raises(WireError):          # wire type 3 (a group)
        list(scan(b"\x0b"))


def test_scan_and_splice_place_fields_in_number_order():
    lp = caffe_pb2.LayerParameter(name="a", type="T", top=["x"])
    lp.param.add().lr_mult = 1
    lp.include.add().phase = caffe_pb2.TEST
    lp.convolution_param.num_output = 3
    raw = lp.SerializeToString()
    assert [f[0] for f in scan(raw)] == [1, 2, 4, 6, 8, 106]
    assert list(scan(raw))[0] == (1, LEN, (2, 3), 0, 3)     # name "a": key, length 1, 'a'
    blob = caffe_pb2.BlobProto()
    blob.data.extend([1.0, -2.0])
    entries = Chunks().add_message(7, Chunks([blob.SerializeToString()]))
    lp.blobs.add().CopyFrom(blob)
    assert splice(raw, {7: entries}).tobytes() == lp.SerializeToString()
    assert field_key(100, LEN) == b"\xa2\x06"


# -- BlobProto -----------------------------------------------------------------------------

@pytest.mark.parametrize("arr", [np.arange(6, dtype=f32).reshape(2, 3) - 2.5,
                                 np.float64(0.1),                     # 0-d, cast to float32
                                 np.zeros((0, 3), f32),                # no values at all
                                 np.arange(24, dtype=np.int64).reshape(2, 3, 4)])
def test_array_to_blobproto_bytes_equal_protobufs(arr, tmp_path):
    ref = caffe_pb2.BlobProto()
    ref.shape.dim.extend(int(d) for d in np.shape(arr))
    ref.data.extend(np.asarray(arr, f32).ravel().tolist())
    ref.diff.extend([0.5] * np.size(arr))
    bp = array_to_blobproto(arr, np.full(np.shape(arr), 0.5))
    assert bp.SerializeToString() == ref.SerializeToString()
    assert bp == ref


def test_mean_binaryproto_is_the_legacy_4d_message(tmp_path):
    mean = (np.arange(2 * 3 * 4, dtype=f32).reshape(2, 3, 4) - 7) / 8
    path = str(tmp_path / "mean.binaryproto")
    write_mean_binaryproto(mean, path)
    ref = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    ref.data.extend(mean.ravel().tolist())
    with open(path, "rb") as f:
        assert f.read() == ref.SerializeToString()


def _legacy_and_double_protos():
    a = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3)       # legacy 4-D
    a.data.extend([1.5, -2.0, 0.25, 3.0, -0.0, 7.0])
    b = caffe_pb2.BlobProto(channels=-1)                                 # negative int32
    c = caffe_pb2.BlobProto()
    c.shape.dim.extend([2, 2])
    c.double_data.extend([0.1, 1e-50, -3.0, 2.0 ** 40])                # double beside float
    c.data.extend([9.0, 9.0, 9.0, 9.0])
    c.double_diff.extend([1.0, 2.0, 3.0, 4.0])
    d = caffe_pb2.BlobProto()
    d.shape.dim.extend([3])
    d.diff.extend([0.5, 0.25, 0.125])
    d.data.extend([1.0, 2.0, 3.0])
    return [a, b, c, d, caffe_pb2.BlobProto()]


@pytest.mark.parametrize("i", range(5))
def test_blob_values_from_bytes_equal_protobufs_reading(i):
    bp = _legacy_and_double_protos()[i]
    raw = b"xyz" + bp.SerializeToString()                    # at an odd offset
    fast = BlobValues.from_bytes(raw, 3, len(raw))
    slow = BlobValues.from_proto(bp)
    assert fast.legacy == slow.legacy and fast.dims == slow.dims and fast.shape == slow.shape
    for k in ("data", "diff", "double_data", "double_diff"):
        a, b = getattr(fast, k), getattr(slow, k)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), k


def test_blob_values_read_caffes_forms():
    a, b, c, d, _ = [BlobValues.of(p) for p in _legacy_and_double_protos()]
    assert a.shape == (1, 1, 2, 3) and a.shape_equals((2, 3)) and a.shape_equals((1, 2, 3))
    assert not a.shape_equals((3, 2)) and not a.shape_equals((1, 1, 1, 2, 3))
    np.testing.assert_array_equal(a.to_array(), f32([[[[1.5, -2, 0.25], [3, -0.0, 7]]]]))
    assert b.legacy == (0, -1, 0, 0)
    # double_data first (Blob::FromProto), data first as pycaffe reads it
    assert c.to_array().tolist() == [[f32(0.1), 0.0], [-3.0, 2.0 ** 40]]
    assert c.to_array(dtype=np.float64, prefer_double=False).tolist() == [[9.0] * 2] * 2
    assert c.to_array(return_diff=True).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert d.to_array(return_diff=True).tolist() == [0.5, 0.25, 0.125]
    short = caffe_pb2.BlobProto()
    short.shape.dim.extend([2, 3])
    short.data.extend([1.0] * 5)
    with pytest.raises(ProtoError, match="holds 5 data values but its shape 2 x 3 needs 6"):
        BlobValues.from_bytes(short.SerializeToString()).to_array()


def test_blob_values_refuse_unpacked_and_repeated_runs():
    unpacked = field_key(5, I32) + f32(1.5).tobytes() + field_key(5, I32) + f32(2).tobytes()
    assert caffe_pb2.BlobProto.FromString(unpacked).data[:] == [1.5, 2.0]
    with pytest.raises(WireError):
        BlobValues.from_bytes(unpacked)
    twice = caffe_pb2.BlobProto(data=[1.0]).SerializeToString() * 2
    assert caffe_pb2.BlobProto.FromString(twice).data[:] == [1.0, 1.0]
    with pytest.raises(WireError):
        BlobValues.from_bytes(twice)


# -- Net.save / to_proto / copy_from ---------------------------------------------------------

@pytest.mark.parametrize("write_diff", [False, True])
def test_saved_caffemodel_is_protobufs_net_to_proto(write_diff, tmp_path):
    net = make_net()
    ref = reference_to_proto(net, write_diff)
    path = str(tmp_path / "w.caffemodel")
    net.save(path, write_diff)
    with open(path, "rb") as f:
        raw = f.read()
    assert raw == ref.SerializeToString()
    got = caffe_pb2.NetParameter.FromString(raw)
    assert got == ref and net.to_proto(write_diff) == ref
    assert [lp.name for lp in got.layer] == ["data", "conv1", "bn", "scale", "relu", "ip",
                                             "loss"]
    expected_shapes = {"conv1": [[4, 3, 3, 3], [4]], "bn": [[4], [4], [1]],
                       "scale": [[4], [4]], "relu": [[4]], "ip": [[5, 64], [5]]}
    for lp, layer in zip(got.layer, net.layers):
        assert [list(bp.shape.dim) for bp in lp.blobs] == expected_shapes.get(lp.name, [])
        for bp, b in zip(lp.blobs, layer.blobs):
            assert not bp.HasField("num") and not len(bp.double_data)
            assert np.array_equal(bits(np.asarray(bp.data, f32)), bits(b.data.ravel()))
            if write_diff:
                assert np.array_equal(bits(np.asarray(bp.diff, f32)), bits(b.diff.ravel()))
            else:
                assert len(bp.diff) == 0
    assert got.layer[5].blobs[0].data[:8] == SPECIAL.tolist()


@pytest.mark.parametrize("ext", [".caffemodel", ".caffemodel.h5"])
def test_weights_round_trip_bit_exact(ext, tmp_path):
    src = make_net(1)
    w = src.params["ip"][0].data.reshape(-1)
    w[-2:] = np.uint32([0x7FC00001, 0xFFA00000]).view(f32)   # NaNs with payloads
    path = str(tmp_path / ("w" + ext))
    (src.save if ext == ".caffemodel" else src.save_hdf5)(path)
    dst = make_net(2)
    dst.copy_from(path)
    n = 0
    for a, b in zip(src.layers, dst.layers):
        for x, y in zip(a.blobs, b.blobs):
            assert np.array_equal(bits(x.data), bits(y.data))
            n += x.count
    assert n == 4 * 27 + 4 + (4 + 4 + 1) + 2 * 4 + 4 + 5 * 64 + 5


def _net_of_protos(blobs_by_layer):
    """A binary NetParameter for NET's layers holding the given BlobProtos."""
    p = caffe_pb2.NetParameter(name="wire")
    for name, blobs in blobs_by_layer:
        lp = p.layer.add(name=name, type="X")
        for bp in blobs:
            lp.blobs.add().CopyFrom(bp)
    return p


def _ip_protos(weight, bias, legacy):
    """The InnerProduct weight (5 x 64) and bias (5) as legacy 4-D float protos or as
    shape.dim double_data protos."""
    w, b = caffe_pb2.BlobProto(), caffe_pb2.BlobProto()
    if legacy:
        w.num, w.channels, w.height, w.width = 1, 1, 5, 64
        b.num, b.channels, b.height, b.width = 1, 1, 1, 5
        w.data.extend(weight.ravel().tolist())
        b.data.extend(bias.tolist())
    else:
        w.shape.dim.extend([5, 64])
        b.shape.dim.extend([5])
        w.double_data.extend(weight.ravel().tolist())
        b.double_data.extend(bias.tolist())
        b.double_diff.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    return w, b


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("via", ["file", "message"])
def test_legacy_4d_and_double_data_load(legacy, via, tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((5, 64))                     # float64
    bias = np.array([0.1, -0.2, 1e-50, 2.0 ** 30 + 1, -7.0])   # float32: 0.1f, 0, 2^30
    param = _net_of_protos([("ip", _ip_protos(weight, bias, legacy)), ("gone", [])])
    net = make_net()
    before = net.params["conv1"][0].data.copy()
    if via == "file":
        path = str(tmp_path / "old.caffemodel")
        write_binary(param, path)
        _, blobs = read_net_weights(path)
        assert all(isinstance(b, BlobValues) for bl in blobs for b in bl)
        net.copy_from(path)
    else:
        net.copy_from(param)
    np.testing.assert_array_equal(net.params["ip"][0].data, weight.astype(f32))
    np.testing.assert_array_equal(net.params["ip"][1].data, bias.astype(f32))
    assert net.params["ip"][1].data[3] == 2.0 ** 30 and net.params["ip"][1].data[2] == 0.0
    if not legacy:      # a stored double_diff is copied too (Blob::FromProto)
        np.testing.assert_array_equal(net.params["ip"][1].diff, f32([1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(net.params["conv1"][0].data, before)   # not in the file


def test_unpacked_values_and_v1_nets_are_read_by_protobuf(tmp_path):
    # A BlobProto written with unpacked floats (legal protobuf) and a V1 `layers` net: both
    # read whole by protobuf, with the same result.
    bias = f32([0.5, -1.5, 2.5, 4.0, -8.0])
    unpacked = caffe_pb2.BlobProto()
    unpacked.shape.dim.extend([5])
    raw_bias = unpacked.SerializeToString() + b"".join(field_key(5, I32) + v.tobytes()
                                                       for v in bias)
    weight = caffe_pb2.BlobProto()
    weight.shape.dim.extend([5, 64])
    weight.data.extend([0.25] * 320)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    blobs = b"".join(field_key(7, LEN) + encode_varint(len(b)) + b
                     for b in (weight.SerializeToString(), raw_bias))
    body = layer + blobs
    path = str(tmp_path / "unpacked.caffemodel")
    with open(path, "wb") as f:
        f.write(field_key(100, LEN) + encode_varint(len(body)) + body)
    _, got = read_net_weights(path)
    assert all(isinstance(b, caffe_pb2.BlobProto) for b in got[0])
    net = make_net()
    net.copy_from(path)
    np.testing.assert_array_equal(net.params["ip"][1].data, bias)
    np.testing.assert_array_equal(net.params["ip"][0].data, np.full((5, 64), 0.25, f32))

    v1 = caffe_pb2.NetParameter(name="old")
    l1 = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    l1.blobs.add().CopyFrom(weight)
    l1.blobs.add().CopyFrom(caffe_pb2.BlobProto.FromString(raw_bias))
    path = str(tmp_path / "v1.caffemodel")
    write_binary(v1, path)
    param, got = read_net_weights(path)
    assert [lp.type for lp in param.layer] == ["InnerProduct"] and len(got[0]) == 2
    net = make_net()
    net.copy_from(path)
    np.testing.assert_array_equal(net.params["ip"][1].data, bias)


def test_bad_files_name_the_problem(tmp_path):
    net = make_net()
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    with open(path, "rb") as f:
        raw = f.read()
    trunc = str(tmp_path / "trunc.caffemodel")
    with open(trunc, "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(ProtoError, match="trunc.caffemodel: not a valid binary NetParameter"):
        make_net().copy_from(trunc)
    short_weight = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[5, 64]), data=[1.0] * 319)
    short = _net_of_protos([("ip", [short_weight, caffe_pb2.BlobProto()])])
    write_binary(short, path)
    with pytest.raises(ProtoError, match="holds 319 data values but its shape 5 x 64 needs 320"):
        make_net().copy_from(path)
    wrong = _net_of_protos([("ip", [caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[64, 5]))])])
    write_binary(wrong, path)
    with pytest.raises(caffepy.NetError, match="incompatible number of blobs for layer 'ip'"):
        make_net().copy_from(path)


def test_caffes_caffemodels_take_the_view_path():
    from helpers import SOLVER_CASES
    files = [os.path.join(d, "init.caffemodel") for d in SOLVER_CASES.values()
             if os.path.exists(os.path.join(d, "init.caffemodel"))]
    assert files
    for path in files:
        param, blobs = read_net_weights(path)
        whole = read_binary(path, caffe_pb2.NetParameter())
        assert [lp.name for lp in param.layer] == [lp.name for lp in whole.layer]
        for bl, lp in zip(blobs, whole.layer):
            assert len(bl) == len(lp.blobs)
            for b, bp in zip(bl, lp.blobs):
                assert isinstance(b, BlobValues)
                assert b.shape == tuple(bp.shape.dim)
                assert b.data.tobytes() == np.asarray(bp.data, f32).tobytes()


# -- solver state --------------------------------------------------------------------------

def test_solver_state_bytes_equal_protobufs_and_read_back(tmp_path):
    rng = np.random.default_rng(4)
    history = [rng.standard_normal(s).astype(f32) for s in [(4, 3, 3, 3), (4,), (5, 64), ()]]
    reg = {"ip/0": rng.standard_normal((5, 64)).astype(f32), "conv1/0": f32([1.5, -2.0])}
    ref = caffe_pb2.SolverState(iter=1200, learned_net="x_iter_1200.caffemodel",
                                current_step=3)
    for h in history:
        bp = ref.history.add()
        bp.shape.dim.extend(h.shape)
        bp.data.extend(h.ravel().tolist())
    for key in sorted(reg):
        e = ref.regularizer_state.add(key=key)
        e.value.shape.dim.extend(reg[key].shape)
        e.value.data.extend(reg[key].ravel().tolist())
    raw = state.solver_state_chunks(1200, "x_iter_1200.caffemodel", 3, history, reg).tobytes()
    assert raw == ref.SerializeToString()
    assert state.solver_state(1200, "x_iter_1200.caffemodel", 3, history, reg) == ref
    assert state.solver_state_chunks(0, "", 0, []).tobytes() == \
        caffe_pb2.SolverState(iter=0, learned_net="", current_step=0).SerializeToString()

    net = make_net()
    param = caffe_pb2.SolverParameter(snapshot_prefix=str(tmp_path / "s"),
                                      snapshot_format=caffe_pb2.SolverParameter.BINARYPROTO)
    model, st = state.write_snapshot(net, param, 1200, 3, history, reg)
    assert st == str(tmp_path / "s_iter_1200.solverstate")
    it, learned, step, hist, reg_back = state.read_solver_state(st)
    assert (it, learned, step) == (1200, model, 3)
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(hist, history))
    assert hist[3].shape == () and set(reg_back) == set(reg)
    assert all(np.array_equal(bits(reg_back[k]), bits(reg[k])) for k in reg)
