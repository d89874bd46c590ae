"""Net._after_weights_loaded: one call after every weight load (binary .caffemodel, HDF5,
NetParameter, Net(weights=...), solver restore), seeing the loaded values."""
import numpy as np
import pytest

import caffepy
from caffepy.proto import caffe_pb2, parse_text
from caffepy.solver import get_solver

f32 = np.float32

NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 }
                              bias_filler { type: "constant" value: 0.25 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

W = np.arange(6, dtype=f32).reshape(2, 3) / 4     # 0, .25, ..., 1.25
B = np.array([-1.5, 2.0], f32)


def make_net():
    p = parse_text(NET, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    return caffepy.Net(p)


@pytest.fixture
def loads(monkeypatch):
    """Every call of Net._after_weights_loaded, as (net, copies of the ip params it saw)."""
    seen = []

    def record(net):
        seen.append((net, [b.data.copy() for b in net.params["ip"]]))
    monkeypatch.setattr(caffepy.Net, "_after_weights_loaded", record)
    return seen


@pytest.fixture
def saved(tmp_path):
    """A net holding W and B, saved as .caffemodel and .caffemodel.h5."""
    net = make_net()
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = B
    binary, hdf5 = str(tmp_path / "w.caffemodel"), str(tmp_path / "w.caffemodel.h5")
    net.save(binary)
    net.save_hdf5(hdf5)
    return net, binary, hdf5


def check_one_load(seen, net):
    assert len(seen) == 1 and seen[0][0] is net
    w, b = seen[0][1]
    np.testing.assert_array_equal(w, W)
    np.testing.assert_array_equal(b, B)


@pytest.mark.parametrize("source", ["binary", "hdf5", "proto"])
def test_copy_from_ends_in_one_hook_call_after_the_values_are_in(saved, loads, source):
    src_net, binary, hdf5 = saved
    net = make_net()
    np.testing.assert_array_equal(net.params["ip"][0].data, np.full((2, 3), 0.5, f32))
    net.copy_from({"binary": binary, "hdf5": hdf5, "proto": src_net.to_proto()}[source])
    check_one_load(loads, net)


def test_load_hdf5_calls_the_hook(saved, loads):
    net = make_net()
    net.load_hdf5(saved[2])
    check_one_load(loads, net)


def test_constructor_weights_call_the_hook_once_per_file(saved, loads, tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    net = caffepy.Net(str(proto), caffe_pb2.TEST, weights=saved[1] + "," + saved[2])
    assert len(loads) == 2 and all(n is net for n, _ in loads)
    for _, (w, b) in loads:
        np.testing.assert_array_equal(w, W)
        np.testing.assert_array_equal(b, B)


def test_sharing_weights_is_not_a_load(saved, loads):
    net = make_net()
    net.share_with(saved[0])
    assert loads == []
    np.testing.assert_array_equal(net.params["ip"][0].data, W)


def test_failed_load_does_not_call_the_hook(loads, tmp_path):
    net = make_net()
    with pytest.raises(caffepy.NetError, match="does not exist"):
        net.copy_from(str(tmp_path / "missing.caffemodel"))
    assert loads == []


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_solver_restore_calls_the_hook_with_the_snapshot_weights(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nsnapshot_prefix: "snap"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
        'snapshot_format: %s\n' % fmt)
    solver = get_solver("solver.prototxt")
    ip = solver.net.params["ip"]
    ip[0].data[...] = W
    ip[1].data[...] = B
    _, state = solver.snapshot()
    ip[0].data[...] = 7
    ip[1].data[...] = 7
    seen = []
    monkeypatch.setattr(caffepy.Net, "_after_weights_loaded",
                        lambda net: seen.append((net, [b.data.copy() for b in ip])))
    solver.restore(state)
    check_one_load(seen, solver.net)
