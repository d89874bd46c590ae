"""Weights, solver states and prototxts that used to load silently wrong: each is now an error
naming the file (and the line, layer or blob), or a logged line naming each layer left out.

The net: x = 1 (1 x 3) -> ip1 (3 -> 2) -> ip2 (2 -> 1) -> y, loss = y^2 / 2. With the
fillers (ip1 weights 0.5, ip2 weights 1, biases 0) y = 3; with ip1 from W1/B1 below
h = [6, 1.5] and y = 7.5.
"""
import logging
import os

import numpy as np
import pytest

import caffepy
from caffepy import cli
from caffepy.errors import CaffepyError, NetError, ProtoError, SolverError
from caffepy.proto import caffe_pb2, parse_text, read_text, write_binary
from caffepy.proto.files import read_proto
from caffepy.solver import get_solver, read_solver_file

from helpers import messages, run_cli

h5py = pytest.importorskip("h5py")
f32 = np.float32

DATA = """
layer { name: "data" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 1 dim: 3 } shape { dim: 1 dim: 1 }
                           data_filler { type: "constant" value: 1 }
                           data_filler { type: "constant" value: 0 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
"""
NET = 'name: "two"\n' + DATA + """
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 1 weight_filler { type: "constant" value: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
# The model of another net: ip1 as in NET, and a layer NET does not have.
PART_NET = 'name: "part"\n' + DATA + """
layer { name: "fc_old" type: "InnerProduct" bottom: "h" top: "z"
        inner_product_param { num_output: 4 } }
"""
W1 = np.array([[1, 2, 3], [0, 0, 1]], f32)
B1 = np.array([0, 0.5], f32)
W2 = np.array([[2, -1]], f32)
B2 = np.array([0.25], f32)

FILLER = {"ip1": (np.full((2, 3), 0.5, f32), np.zeros(2, f32)),
          "ip2": (np.ones((1, 2), f32), np.zeros(1, f32))}


def make_net(text=NET):
    p = parse_text(text, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TEST
    return caffepy.Net(p)


def values(net):
    return {name: [np.array(b.data) for b in net.params[name]] for name in net.params}


def assert_values(net, expected):
    got = values(net)
    assert set(got) == set(expected)
    for name, arrays in expected.items():
        for g, e in zip(got[name], arrays):
            np.testing.assert_array_equal(g, e)


@pytest.fixture
def files(tmp_path):
    """full.caffemodel(.h5): ip1 = W1/B1, ip2 = W2/B2; part.caffemodel(.h5): ip1 and fc_old."""
    full = make_net()
    full.params["ip1"][0].data[...] = W1
    full.params["ip1"][1].data[...] = B1
    full.params["ip2"][0].data[...] = W2
    full.params["ip2"][1].data[...] = B2
    part = make_net(PART_NET)
    part.params["ip1"][0].data[...] = W1
    part.params["ip1"][1].data[...] = B1
    out = {}
    for name, net in (("full", full), ("part", part)):
        out[name] = str(tmp_path / (name + ".caffemodel"))
        out[name + "_h5"] = str(tmp_path / (name + ".caffemodel.h5"))
        net.save(out[name])
        net.save_hdf5(out[name + "_h5"])
    return out


# -- a .caffemodel that copies nothing ----------------------------------------------------

@pytest.mark.parametrize("content", [
    b"",                                                        # 0 bytes
    caffe_pb2.NetParameter(name="two").SerializeToString(),     # a header only
    b"\x90\x03\x01\xa8\x06\x07",                                  # fields 50 and 101: unknown
])
def test_a_caffemodel_without_layers_is_an_error(tmp_path, content):
    path = str(tmp_path / "w.caffemodel")
    with open(path, "wb") as f:
        f.write(content)
    net = make_net()
    with pytest.raises(NetError) as e:
        net.copy_from(path)
    detail = ("the file is empty: 0 bytes" if not content else
              "%d bytes that parse as a NetParameter without layers: a truncated file, or not "
              "a .caffemodel" % len(content))
    assert str(e.value) == "%s: holds no layers, so no weights to copy (%s)" % (path, detail)
    assert_values(net, FILLER)
    with pytest.raises(NetError, match="w.caffemodel: holds no layers"):
        caffepy.Net(NET, caffepy.TEST, weights=path)


def test_a_prototxt_given_as_weights_is_named_as_text(tmp_path):
    path = str(tmp_path / "deploy.caffemodel")
    with open(path, "w") as f:
        f.write(NET)
    with pytest.raises(ProtoError) as e:
        make_net().copy_from(path)
    assert str(e.value).startswith("%s: not a valid binary NetParameter" % path)
    assert str(e.value).endswith("(the file is text: a prototxt? weights come from a binary "
                                 ".caffemodel or a .caffemodel.h5)")
    with open(path, "wb") as f:
        f.write(b"P1P1")       # text that parses as binary: field 10 (unknown) twice
    with pytest.raises(NetError, match=r"deploy\.caffemodel: holds no layers, so no weights "
                                       r"to copy \(4 bytes of text: a prototxt\?"):
        make_net().copy_from(path)


def test_a_caffemodel_of_another_net_is_an_error(tmp_path):
    other = make_net(NET.replace('"ip1"', '"conv_a"').replace('"ip2"', '"conv_b"'))
    path = str(tmp_path / "other.caffemodel")
    other.save(path)
    net = make_net()
    with pytest.raises(NetError) as e:
        net.copy_from(path)
    assert str(e.value) == (
        "%s: gives no weights to this net: none of its 4 layers (data, conv_a, conv_b, loss) "
        "is a layer of the net with params (ip1, ip2); is it the model of another net?" % path)
    assert_values(net, FILLER)
    # the same from a NetParameter
    with pytest.raises(NetError, match="<NetParameter>: gives no weights to this net"):
        net.copy_from(other.to_proto())


# -- a .caffemodel that leaves layers out ---------------------------------------------------

def test_layers_left_out_are_logged_by_name(files, caplog):
    net = make_net()
    assert net.layers_without_weights() == ["ip1", "ip2"]
    with caplog.at_level(logging.INFO, logger="caffepy"):
        net.copy_from(files["part"])
    lines = [r.getMessage() for r in caplog.records]
    assert "Ignoring source layer fc_old" in lines
    assert "Target layer ip2 got no weights from %s" % files["part"] in lines
    assert not any("Target layer ip1" in x for x in lines)
    assert_values(net, {"ip1": (W1, B1), "ip2": FILLER["ip2"]})
    assert net.layers_without_weights() == ["ip2"]
    np.testing.assert_allclose(net.forward()["loss"], 7.5 ** 2 / 2)


@pytest.mark.parametrize("kind", ["part", "part_h5"])
def test_strict_copy_refuses_layers_left_out_and_changes_nothing(files, kind):
    net = make_net()
    with pytest.raises(NetError) as e:
        net.copy_from(files[kind], strict=True)
    assert str(e.value) == ("%s: 1 layer(s) with params got no weights from it (strict "
                            "weights): ip2" % files[kind])
    assert_values(net, FILLER)            # ip1 is not written either
    with pytest.raises(NetError, match="got no weights .*: ip2"):
        caffepy.Net(NET, caffepy.TEST, weights=files[kind], strict_weights=True)
    net.copy_from(files[kind.replace("part", "full")], strict=True)
    assert_values(net, {"ip1": (W1, B1), "ip2": (W2, B2)})


def test_strict_weights_over_several_files_counts_their_union(files, tmp_path):
    only_ip2 = make_net()
    only_ip2.params["ip2"][0].data[...] = W2
    only_ip2.params["ip2"][1].data[...] = B2
    proto = only_ip2.to_proto()
    keep = [lp for lp in proto.layer if lp.name == "ip2"]
    del proto.layer[:]
    proto.layer.extend(keep)
    path = str(tmp_path / "ip2.caffemodel")
    write_binary(proto, path)
    net = caffepy.Net(NET, caffepy.TEST, weights=[files["part"], path], strict_weights=True)
    assert_values(net, {"ip1": (W1, B1), "ip2": (W2, B2)})
    assert net.layers_without_weights() == []
    net = caffepy.Net(NET, caffepy.TEST, weights=files["part"] + "," + files["part_h5"])
    with pytest.raises(NetError) as e:
        net.check_weights_loaded([files["part"], files["part_h5"]])
    assert str(e.value) == ("1 layer(s) with params got no weights from %s, %s (strict "
                            "weights): ip2" % (files["part"], files["part_h5"]))


def bad_model(tmp_path):
    """A model whose ip1 fits NET and whose ip2 weights are 3 x 2."""
    proto = make_net().to_proto()
    ip2 = [lp for lp in proto.layer if lp.name == "ip2"][0]
    ip2.blobs[0].shape.dim[:] = [3, 2]
    ip2.blobs[0].data[:] = [1.0] * 6
    path = str(tmp_path / "bad.caffemodel")
    write_binary(proto, path)
    return path


def test_a_failed_copy_writes_no_layer(files, tmp_path):
    # ip1 fits, ip2 has the wrong shape: the error comes before ip1 is written
    path = bad_model(tmp_path)
    net = make_net()
    with pytest.raises(NetError, match=r"bad\.caffemodel: cannot copy param 0 weights from "
                                       r"layer 'ip2'; shape mismatch. Source param shape is "
                                       r"3 2; target param shape is 1 2"):
        net.copy_from(path)
    assert_values(net, FILLER)
    assert net.layers_without_weights() == ["ip1", "ip2"]


def test_a_short_blob_names_file_layer_and_param(tmp_path):
    proto = caffe_pb2.NetParameter(name="two")
    lp = proto.layer.add(name="ip1", type="InnerProduct")
    lp.blobs.add(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=[1.0] * 5)
    lp.blobs.add(shape=caffe_pb2.BlobShape(dim=[2]), data=[0.0, 0.0])
    path = str(tmp_path / "short.caffemodel")
    write_binary(proto, path)
    with pytest.raises(ProtoError) as e:
        make_net().copy_from(path)
    assert str(e.value) == ("%s: layer 'ip1' param 0: BlobProto holds 5 data values but its "
                            "shape 2 x 3 needs 6" % path)


SHARED_NET = NET.replace('top: "h"\n', 'top: "h"\n        param { name: "w1" } '
                         'param { name: "b1" }\n', 1) + """
layer { name: "ip1b" type: "InnerProduct" bottom: "x" top: "h2"
        param { name: "w1" } param { name: "b1" } inner_product_param { num_output: 2 } }
layer { name: "sink" type: "Silence" bottom: "h2" }
"""


def test_a_layer_sharing_loaded_params_counts_as_loaded(files):
    net = make_net(SHARED_NET)
    net.copy_from(files["full"], strict=True)      # ip1b shares ip1's params
    assert net.layers_without_weights() == []
    np.testing.assert_array_equal(net.params["ip1b"][0].data, W1)


# -- .caffemodel.h5 ----------------------------------------------------------------------

def h5_model(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


def write_layer(group, name, *arrays):
    g = group.create_group(name)
    for j, a in enumerate(arrays):
        g.create_dataset(str(j), data=a)
    return g


def h5_error(path):
    net = make_net()
    with pytest.raises(NetError) as e:
        net.copy_from(path)
    assert_values(net, FILLER)
    return str(e.value)


def test_hdf5_data_must_be_a_group_of_groups(tmp_path):
    p = h5_model(str(tmp_path / "n.caffemodel.h5"), lambda f: write_layer(
        f.create_group("diff"), "ip1", W1, B1))
    assert h5_error(p) == "%s: not a caffemodel.h5 (no /data group)" % p
    p = h5_model(str(tmp_path / "a.caffemodel.h5"), lambda f: f.create_dataset("data", data=[1]))
    assert h5_error(p) == "%s: '/data' is a dataset, not a group" % p
    p = h5_model(str(tmp_path / "b.caffemodel.h5"),
                 lambda f: f.create_group("data").create_dataset("ip1", data=W1))
    assert h5_error(p) == "%s: '/data/ip1' is a dataset, not a group" % p
    p = h5_model(str(tmp_path / "c.caffemodel.h5"),
                 lambda f: write_layer(f.create_group("data"), "ip1", W1).create_group("1"))
    assert h5_error(p) == "%s: '/data/ip1/1' is a group, not a dataset" % p


def test_hdf5_without_layers_or_matching_layers_is_an_error(tmp_path):
    p = h5_model(str(tmp_path / "empty.caffemodel.h5"), lambda f: f.create_group("data"))
    assert h5_error(p).startswith("%s: holds no layers, so no weights to copy (" % p)
    p = h5_model(str(tmp_path / "other.caffemodel.h5"),
                 lambda f: write_layer(f.create_group("data"), "fc9", W1, B1))
    assert h5_error(p) == ("%s: gives no weights to this net: none of its 1 layers (fc9) is a "
                           "layer of the net with params (ip1, ip2); is it the model of another "
                           "net?" % p)


def test_hdf5_dtypes_and_shapes(tmp_path):
    p = h5_model(str(tmp_path / "s.caffemodel.h5"), lambda f: write_layer(
        f.create_group("data"), "ip1", np.array([b"ab"] * 6).reshape(2, 3), B1))
    assert h5_error(p) == ("%s: dataset '/data/ip1/0' has dtype |S2; a float or integer "
                           "dataset is needed" % p)
    p = h5_model(str(tmp_path / "t.caffemodel.h5"), lambda f: write_layer(
        f.create_group("data"), "ip1", W1.T.copy(), B1))
    assert h5_error(p) == ("%s: cannot load param 0 of layer 'ip1' from hdf5; shape mismatch. "
                           "Source shape is 3 2; target shape is 2 3 (6)" % p)
    # integer datasets are read (Caffe's H5T_INTEGER class), float64 too
    p = h5_model(str(tmp_path / "i.caffemodel.h5"), lambda f: (
        write_layer(f.create_group("data"), "ip1", W1.astype(np.int32), B1.astype(np.float64)),
        write_layer(f["data"], "ip2", W2.astype(np.int16), B2)))
    net = make_net()
    net.copy_from(p, strict=True)
    assert_values(net, {"ip1": (W1, B1), "ip2": (W2, B2)})


def test_hdf5_external_and_soft_links_are_refused(files, tmp_path):
    target = files["full_h5"]
    cases = {
        "data": lambda f: f.__setitem__("data", h5py.ExternalLink(target, "/data")),
        "layer": lambda f: f.create_group("data").__setitem__(
            "ip1", h5py.ExternalLink(target, "/data/ip1")),
        "blob": lambda f: write_layer(f.create_group("data"), "ip1", B1 * 0).__delitem__("0")
        or f["data/ip1"].__setitem__("0", h5py.ExternalLink(target, "/data/ip1/0")),
    }
    for what, build in cases.items():
        p = h5_model(str(tmp_path / ("%s.caffemodel.h5" % what)), build)
        msg = h5_error(p)
        assert msg.startswith(p + ": '/data") and "is an external link (to '/data" in msg, msg
        assert "in file '%s'); caffepy reads only objects stored in the file itself" % target \
            in msg
    # even under a layer name the net does not have (nothing of it is followed)
    p = h5_model(str(tmp_path / "ignored.caffemodel.h5"), lambda f: (
        write_layer(f.create_group("data"), "ip1", W1, B1),
        f["data"].__setitem__("zz", h5py.ExternalLink(target, "/data/ip2"))))
    assert "'/data/zz' is an external link" in h5_error(p)
    p = h5_model(str(tmp_path / "soft.caffemodel.h5"), lambda f: (
        write_layer(f.create_group("data"), "real", W1, B1),
        f["data"].__setitem__("ip1", h5py.SoftLink("/data/real"))))
    assert h5_error(p) == "%s: '/data/ip1' is a SoftLink, not a plain group or dataset" % p


def test_hdf5_values_in_external_files_are_refused(tmp_path):
    raw = tmp_path / "values.raw"
    raw.write_bytes(W1.tobytes())

    def build(f):
        g = f.create_group("data").create_group("ip1")
        g.create_dataset("0", shape=(2, 3), dtype="<f4", external=[(str(raw), 0, 24)])
        g.create_dataset("1", data=B1)
    p = h5_model(str(tmp_path / "ext.caffemodel.h5"), build)
    assert h5_error(p) == ("%s: dataset '/data/ip1/0' keeps its values in external files "
                           "(%s); caffepy reads only values stored in the file itself" % (p, raw))


def test_a_truncated_hdf5_model_names_the_file(files, tmp_path):
    with open(files["full_h5"], "rb") as f:
        raw = f.read()
    p = str(tmp_path / "cut.caffemodel.h5")
    with open(p, "wb") as f:
        f.write(raw[:len(raw) // 2])
    assert h5_error(p).startswith("%s: cannot open a .caffemodel.h5 as HDF5: " % p)


def test_hdf5_partial_model_is_logged(files, caplog):
    net = make_net()
    with caplog.at_level(logging.INFO, logger="caffepy"):
        net.copy_from(files["part_h5"])
    lines = [r.getMessage() for r in caplog.records]
    assert "Ignoring source layer fc_old" in lines
    assert "Target layer ip2 got no weights from %s" % files["part_h5"] in lines
    assert_values(net, {"ip1": (W1, B1), "ip2": FILLER["ip2"]})


# -- solver states -------------------------------------------------------------------------

def make_solver(tmp_path, fmt="BINARYPROTO", net=NET):
    p = parse_text('base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 snapshot_format: %s' % fmt,
                   caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(net, caffe_pb2.NetParameter()))
    p.snapshot_prefix = str(tmp_path / "s")
    return get_solver(p)


def solver_values(s):
    return (s.iter, s.current_step, [np.array(b.data) for b in s.net.learnable_params],
            [np.array(h) for h in s.history])


def assert_unchanged(before, s):
    after = solver_values(s)
    assert before[:2] == after[:2]
    for a, b in zip(before[2] + before[3], after[2] + after[3]):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def snapshot(tmp_path):
    """A binary snapshot after 2 steps (iter 2, non-zero history), and a fresh solver."""
    s = make_solver(tmp_path)
    s.step(2)
    model, state = s.snapshot()
    return s, model, state, make_solver(tmp_path)


def failed_restore(solver, state_file, error=SolverError):
    before = solver_values(solver)
    with pytest.raises(error) as e:
        solver.restore(state_file)
    assert_unchanged(before, solver)
    return str(e.value)


def edit_state(path, out, edit):
    st = caffe_pb2.SolverState()
    with open(path, "rb") as f:
        st.ParseFromString(f.read())
    edit(st)
    write_binary(st, out)
    return out


def test_a_state_without_learned_net_is_an_error(snapshot, tmp_path):
    s, model, state, fresh = snapshot
    missing = edit_state(state, str(tmp_path / "missing.solverstate"),
                         lambda st: st.ClearField("learned_net"))
    assert failed_restore(fresh, missing) == (
        "Cannot restore from '%s': its learned_net is missing, so it names no model file to "
        "restore the weights from" % missing)
    empty = edit_state(state, str(tmp_path / "empty.solverstate"),
                       lambda st: setattr(st, "learned_net", ""))
    assert "its learned_net is empty" in failed_restore(fresh, empty)
    fresh.restore(state)                       # the intact pair restores
    assert_unchanged(solver_values(s), fresh)


def test_a_history_blob_of_another_shape_is_an_error(snapshot, tmp_path):
    s, model, state, fresh = snapshot

    def transpose_first(st):
        st.history[0].shape.dim[:] = [3, 2]      # ip1's weight history, 6 values
    bad = edit_state(state, str(tmp_path / "t.solverstate"), transpose_first)
    assert failed_restore(fresh, bad) == (
        "Cannot restore history blob 0 (param 0 of layer 'ip1') from '%s': shape mismatch "
        "(source shape (3, 2), target shape (2, 3))" % bad)
    fewer = edit_state(state, str(tmp_path / "f.solverstate"), lambda st: st.history.pop())
    assert "holds 3, the SGD solver needs 4" in failed_restore(fresh, fewer)


def test_a_short_history_blob_names_the_state_and_the_blob(snapshot, tmp_path):
    s, model, state, fresh = snapshot
    bad = edit_state(state, str(tmp_path / "s.solverstate"), lambda st: st.history[2].data.pop())
    assert failed_restore(fresh, bad) == ("%s: history blob 2: BlobProto holds 1 data values but "
                                          "its shape 1 x 2 needs 2" % bad)


def test_a_model_that_does_not_fit_changes_nothing(snapshot, tmp_path):
    s, model, state, fresh = snapshot
    # ip1 fits, ip2 does not: nothing is written, iter and history stay
    model = bad_model(tmp_path)
    bad = edit_state(state, str(tmp_path / "b.solverstate"),
                     lambda st: setattr(st, "learned_net", model))
    msg = failed_restore(fresh, bad, NetError)
    assert msg.startswith("Cannot restore from '%s': %s: cannot copy param 0 weights from "
                          "layer 'ip2'; shape mismatch" % (bad, model))
    # a model that leaves a layer out: a snapshot always holds every layer with params
    part = make_net(PART_NET)
    part_model = str(tmp_path / "part.caffemodel")
    part.save(part_model)
    bad = edit_state(state, str(tmp_path / "p.solverstate"),
                     lambda st: setattr(st, "learned_net", part_model))
    assert failed_restore(fresh, bad, NetError) == (
        "Cannot restore from '%s': %s: 1 layer(s) with params got no weights from it (strict "
        "weights): ip2" % (bad, part_model))


def test_a_regularizer_state_that_does_not_fit_changes_nothing(snapshot, tmp_path):
    s, model, state, fresh = snapshot

    def add_entry(st):
        e = st.regularizer_state.add(key="0/L1/acc")
        e.value.shape.dim.append(1)
        e.value.data.append(1.0)
    bad = edit_state(state, str(tmp_path / "r.solverstate"), add_entry)
    assert "does not match the chain" in failed_restore(fresh, bad, CaffepyError)


def test_hdf5_states_are_checked(tmp_path):
    s = make_solver(tmp_path, "HDF5")
    s.step(2)
    model, state = s.snapshot()
    fresh = make_solver(tmp_path, "HDF5")

    def variant(name, edit):
        out = str(tmp_path / name)
        with open(state, "rb") as src, open(out, "wb") as dst:
            dst.write(src.read())
        with h5py.File(out, "r+") as f:
            edit(f)
        return out
    p = variant("a.solverstate.h5", lambda f: f.__delitem__("learned_net"))
    assert "its learned_net is missing" in failed_restore(fresh, p)
    p = variant("b.solverstate.h5", lambda f: (
        f["history"].__delitem__("1"),
        f["history"].create_dataset("1", data=np.array([b"x", b"y"]))))
    assert failed_restore(fresh, p) == ("%s: dataset '/history/1' has dtype |S1; a float or "
                                        "integer dataset is needed" % p)
    p = variant("c.solverstate.h5", lambda f: (
        f["history"].__delitem__("2"),
        f["history"].__setitem__("2", h5py.ExternalLink(state, "/history/2"))))
    assert failed_restore(fresh, p) == (
        "%s: '/history/2' is an external link (to '/history/2' in file '%s'); caffepy reads "
        "only objects stored in the file itself" % (p, state))
    p = variant("d.solverstate.h5", lambda f: (
        f["history"].__delitem__("0"), f["history"].create_dataset("0", data=np.zeros((3, 2)))))
    assert failed_restore(fresh, p) == (
        "Cannot restore history blob 0 (param 0 of layer 'ip1') from '%s': shape mismatch "
        "(source shape (3, 2), target shape (2, 3))" % p)
    p = variant("e.solverstate.h5", lambda f: f.__delitem__("history"))
    assert failed_restore(fresh, p) == "%s: no group '/history'" % p
    p = variant("f.solverstate.h5", lambda f: f["history"].move("3", "x"))
    assert failed_restore(fresh, p) == ("%s: the history group holds 0, 1, 2, x; a solver "
                                        "state holds the datasets 0 to 3" % p)
    fresh.restore(state)
    assert_unchanged(solver_values(s), fresh)


# -- prototxt --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,line,field,message", [
    ('name: "a"\nname: "b"\n', 2, "name", "caffe.NetParameter"),
    ('name: "a"\nlayer {\n  name: "c" type: "Convolution"\n  convolution_param { num_output: 1 }'
     '\n  convolution_param { num_output: 2 }\n}\n', 5, "convolution_param",
     "caffe.LayerParameter"),
    ('layer {\n  name: "ip" type: "InnerProduct"\n  inner_product_param {\n    num_output: 2\n'
     '    bias_term: false\n    num_output: 3\n  }\n}\n', 6, "num_output",
     "caffe.InnerProductParameter"),
    ('state { phase: TRAIN }\n\nstate { level: 1 }\n', 3, "state", "caffe.NetParameter"),
])
def test_a_non_repeated_field_given_twice_is_an_error(tmp_path, text, line, field, message):
    path = str(tmp_path / "net.prototxt")
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(ProtoError) as e:
        read_text(path, caffe_pb2.NetParameter())
    assert str(e.value).startswith("%s:%d:" % (path, line))
    assert str(e.value).endswith(": cannot parse NetParameter: non-repeated field '%s' of %s is "
                                 "given more than once (a field that is not repeated takes one "
                                 "value)" % (field, message))
    with pytest.raises(ProtoError, match="net.prototxt:%d:" % line):
        caffepy.Net(path, caffepy.TEST)
    with pytest.raises(ProtoError, match="<string>:%d:" % line):
        parse_text(text, caffe_pb2.NetParameter())


def test_a_solver_field_given_twice_is_an_error(tmp_path):
    path = str(tmp_path / "solver.prototxt")
    with open(path, "w") as f:
        f.write('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nbase_lr: 0.01\n')
    with pytest.raises(ProtoError) as e:
        read_solver_file(path)
    assert str(e.value) == ("%s:4:10: cannot parse SolverParameter: non-repeated field "
                            "'base_lr' of caffe.SolverParameter is given more than once (a field "
                            "that is not repeated takes one value)" % path)


def test_repeated_fields_still_take_many_entries():
    p = parse_text('input: "x" input_dim: 1 input_dim: 3\nlayer { name: "a" bottom: "x" '
                   'bottom: "y" include { phase: TRAIN } include { stage: "s" } '
                   'loss_weight: 1 loss_weight: 0.5 }\nlayer { name: "b" }',
                   caffe_pb2.NetParameter())
    assert list(p.input_dim) == [1, 3]
    assert [lp.name for lp in p.layer] == ["a", "b"]
    assert list(p.layer[0].bottom) == ["x", "y"]
    assert len(p.layer[0].include) == 2 and p.layer[0].include[1].stage == ["s"]
    assert list(p.layer[0].loss_weight) == [1.0, 0.5]


def test_a_prototxt_that_is_not_utf8_names_file_offset_and_line(tmp_path):
    path = str(tmp_path / "latin1.prototxt")
    with open(path, "wb") as f:
        f.write(b'name: "n"\nlayer { name: "caf\xe9" }\n')
    for read in (read_text, read_proto):
        with pytest.raises(ProtoError) as e:
            read(path, caffe_pb2.NetParameter())
        assert str(e.value) == ("%s: not a text NetParameter: byte 28 is not UTF-8 (byte 0xe9 at "
                                "byte offset 28, line 2; a binary file, or text in another "
                                "encoding?)" % path)
    with pytest.raises(ProtoError, match=r"^in\.txt: not a text NetParameter: byte 4 is not "
                                         r"UTF-8 \(byte 0xff at byte offset 4, line 1"):
        parse_text(b'x: "\xff"', caffe_pb2.NetParameter(), "in.txt")


# -- the command line ------------------------------------------------------------------------

CLI_NET = NET
CLI_SOLVER = 'net: "net.prototxt"\nbase_lr: 0.0\nlr_policy: "fixed"\nmax_iter: 1\n' \
             'snapshot_after_train: false\n'


@pytest.fixture
def clidir(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(CLI_NET)
    (tmp_path / "solver.prototxt").write_text(CLI_SOLVER)
    return files


def test_cli_test_warns_about_layers_without_weights(clidir, capsys):
    rc, _, err = run_cli(capsys, "test", "-model", "net.prototxt", "-weights", "part.caffemodel",
                         "-iterations", "1")
    assert rc == 0, err
    m = messages(err)
    assert "Target layer ip2 got no weights from part.caffemodel" in m
    assert "Layer ip2 got no weights from part.caffemodel: it is scored with its initial " \
           "(filler) values" in m
    assert any(line.startswith("W") and "Layer ip2 got no weights" in line
               for line in err.splitlines())
    assert "Batch 0, loss = 28.125" in m                    # y = 7.5: ip1 loaded, ip2 filler
    # two files that cover the net between them: no warning
    os.rename("full.caffemodel", "full2.caffemodel")
    rc, _, err = run_cli(capsys, "test", "-model", "net.prototxt", "-weights",
                         "part.caffemodel,full2.caffemodel", "-iterations", "1",
                         "--strict_weights")
    assert rc == 0, err
    assert not any("it is scored with" in x for x in messages(err))
    assert "Batch 0, loss = 57.7812" in messages(err)   # y = 2*6 - 1.5 + 0.25 = 10.75


def test_cli_strict_weights_is_fatal(clidir, capsys):
    rc, _, err = run_cli(capsys, "test", "-model", "net.prototxt", "-weights", "part.caffemodel",
                         "-iterations", "1", "--strict_weights")
    assert rc != 0
    assert "1 layer(s) with params got no weights from part.caffemodel (strict weights): ip2" \
        in err
    assert "Batch 0" not in err
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-weights",
                         "part.caffemodel", "-strict_weights")
    assert rc != 0
    assert "1 layer(s) with params got no weights from part.caffemodel (strict weights): ip2" \
        in err
    assert "Starting Optimization" not in err
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt", "-weights",
                         "full.caffemodel", "-strict_weights")
    assert rc == 0, err


def test_cli_flags_list_strict_weights():
    assert "strict_weights" in cli.COMMANDS["test"].flags
    assert "strict_weights" in cli.COMMANDS["train"].flags
    flags, _ = cli.parse_flags(["test", "--strict_weights"])
    assert flags.strict_weights is True
    assert cli.parse_flags([])[0].strict_weights is False


# -- HDF5 files whose group structure is damaged --------------------------------------------

_H5_SIGNATURES = {b"HEAP": "(bad local heap signature)",
                  b"SNOD": "(bad symbol table node signature)",
                  b"TREE": "(wrong B-tree signature)"}


def damaged_copies(path, out_dir):
    """For each signature of a group structure in the HDF5 file ``path`` (local heap, symbol
    table node, B-tree node): (the copy with that signature overwritten, HDF5's complaint)."""
    with open(path, "rb") as f:
        raw = f.read()
    out = []
    for sig, complaint in _H5_SIGNATURES.items():
        k = raw.find(sig)
        while k >= 0:
            bad = bytearray(raw)
            bad[k:k + 4] = b"XXXX"
            p = os.path.join(str(out_dir), "%s%d_%s" % (sig.decode(), k, os.path.basename(path)))
            with open(p, "wb") as f:
                f.write(bytes(bad))
            out.append((p, complaint))
            k = raw.find(sig, k + 1)
    return out


def test_a_damaged_hdf5_group_structure_is_a_net_error_naming_file_and_group(files, tmp_path):
    """h5py's RuntimeError of a damaged heap / symbol table / B-tree becomes a NetError
    naming the file and the group being read; the net keeps its weights. The only damage
    that goes unnoticed is in the heap of an empty group (no names to look up there)."""
    damaged = damaged_copies(files["full_h5"], tmp_path)
    assert len(damaged) >= 9
    objects = set()
    for p, complaint in damaged:
        net = make_net()
        try:
            net.copy_from(p)
        except NetError as e:
            msg = str(e)
            head = "%s: cannot read '/" % p
            assert msg.startswith(head), msg
            assert "' (a damaged HDF5 file?): RuntimeError: " in msg, msg
            assert msg.endswith(complaint), msg
            objects.add(msg[len(head) - 1:msg.index("' (a damaged")])
            assert_values(net, FILLER)
        else:
            assert_values(net, {"ip1": (W1, B1), "ip2": (W2, B2)})
    # the root's structures fail the lookup of /data, each layer group's its own listing
    assert {"/data", "/data/ip1", "/data/ip2"} <= objects
    # Net(..., weights=) goes the same way
    p, complaint = next(d for d in damaged if "SNOD" in os.path.basename(d[0]))
    with pytest.raises(NetError, match="^%s: cannot read '/data" % p):
        caffepy.Net(parse_text(NET, caffe_pb2.NetParameter()), caffepy.TEST, weights=p)


def test_a_damaged_hdf5_solver_state_is_a_solver_error_naming_the_file(tmp_path):
    s = make_solver(tmp_path, fmt="HDF5")
    s.step(2)
    model, state = s.snapshot()
    assert state.endswith(".solverstate.h5")
    damaged = damaged_copies(state, tmp_path)
    assert len(damaged) >= 3
    objects = set()
    for p, complaint in damaged:
        fresh = make_solver(tmp_path, fmt="HDF5")
        msg = failed_restore(fresh, p)
        head = "%s: cannot read '/" % p
        assert msg.startswith(head) and msg.endswith(complaint), msg
        objects.add(msg[len(head) - 1:msg.index("' (a damaged")])
    assert {"/", "/history"} <= objects
    fresh.restore(state)                       # the intact pair restores
    assert_unchanged(solver_values(s), fresh)
