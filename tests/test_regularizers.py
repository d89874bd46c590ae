"""The regularizer plug-in API (context, selection, from_proto, state), weight decay with the
SSL fork's ParamSpec extensions, the L1/L2/ElasticNet built-ins, connectivity masks and the
sparsity log block."""
import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffepy
from caffepy.errors import RegularizerError, SolverError
from caffepy.gradient_check import check_regularizer
from caffepy.proto import array_to_blobproto, caffe_pb2, parse_text, write_binary
from caffepy.regularizers import (ElasticNet, GroupLasso, L1Regularizer, L2Regularizer,
                                  RegularizeContext, Regularizer, SSLGroupLasso, WeightDecay,
                                  apply_weight_decay, chain_state_dict, learnable_param_info,
                                  load_chain_state_dict, load_decay_proto, masks,
                                  parse_param_str, regularizers_penalty, run_regularizers,
                                  solver_regularizers, sparsity, weight_decay_penalty)

from caffepy.gradient_check import ArrayBlob

f32 = np.float32


def B(w):
    """A minimal float32 blob over ``w`` (data and a zero diff)."""
    return ArrayBlob(np.array(w, dtype=np.float32))


def ctx(spec=None, name="ip1", blob_index=0, decay_mult=1.0, group=1):
    if isinstance(spec, str):
        spec = parse_text(spec, caffe_pb2.ParamSpec())
    return RegularizeContext(layer_name=name, blob_index=blob_index, param_spec=spec,
                             decay_mult=decay_mult, conv_group=group)


def rp(text):
    return parse_text(text, caffe_pb2.RegularizerParameter())


NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 breadth_decay_mult: 1 kernel_shape_decay_mult: 1
                block_group_lasso { xdimen: 9 ydimen: 2 } }
        param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 6 kernel_size: 3 group: 2
                            weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        param { name: "shared_w" decay_mult: 3 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "conv1" top: "ip2"
        param { name: "shared_w" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
"""


@pytest.fixture
def net():
    caffepy.set_random_seed(5)
    return caffepy.Net(NET, caffepy.TRAIN)


# -- param_str, from_proto, the registry ----------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("", {}),
    ("{'kind': 'block', 'xdimen': 9, 'ydimen': 1}", {"kind": "block", "xdimen": 9, "ydimen": 1}),
    ("kind: block, xdimen: 9, ydimen: 1", {"kind": "block", "xdimen": 9, "ydimen": 1}),
    ("kind: 'filter', coeff: 1e-3", {"kind": "filter", "coeff": 1e-3}),
    ("flag: true, other: False, sizes: [1, 2], name: a b", {"flag": True, "other": False,
                                                           "sizes": [1, 2], "name": "a b"}),
])
def test_param_str_forms(text, want):
    assert parse_param_str(text, "X") == want


@pytest.mark.parametrize("text,why", [
    ("kind filter", "'kind filter' is not 'key: value'"),
    ("{'kind': }", "not a Python dict literal"),
    ("[1, 2]", "'\\[1, 2\\]' is not 'key: value'"),
    ("a: 1, a: 2", "key 'a' given twice"),
    ("{1: 2}", "key 1 is not a name"),
])
def test_bad_param_str_names_type_and_registered(text, why):
    with pytest.raises(RegularizerError) as e:
        Regularizer.from_proto(rp('type: "GroupLasso" param_str: "%s"' % text.replace('"', '\\"')))
    msg = str(e.value)
    assert msg.startswith("regularizer 'GroupLasso': cannot parse param_str \"%s\": " % text)
    assert re.search(why, msg)
    assert "registered regularizers: " in msg and "GroupLasso, L1, L2" in msg


def test_unknown_type_names_registered_ones():
    with pytest.raises(RegularizerError) as e:
        Regularizer.from_proto(rp('type: "Nope" coeff: 1'))
    msg = str(e.value)
    assert msg.startswith("Unknown regularizer 'Nope' (registered: ")
    for name in ("ElasticNet", "GroupLasso", "L1", "L2", "SSLGroupLasso", "WeightDecay"):
        assert name in msg
    assert isinstance(e.value, SolverError)
    with pytest.raises(RegularizerError, match="Unknown regularizer 'Nope'"):
        caffepy.regularizers.create_regularizer("Nope")


def test_from_proto_builds_and_selects():
    r = Regularizer.from_proto(rp('type: "GroupLasso" coeff: 0.01 '
                                  'param_str: "{\'kind\': \'block\', \'xdimen\': 9, '
                                  '\'ydimen\': 1}" layer: "conv1" layer: "conv2" blob_index: 0'))
    assert isinstance(r, GroupLasso)
    assert (r.kind, r.xdimen, r.ydimen, r.coeff) == ("block", 9, 1, pytest.approx(0.01))
    assert r.layers == ("conv1", "conv2") and r.blob_indices == (0,)
    r = Regularizer.from_proto(rp('type: "GroupLasso" coeff: 2 param_str: "kind: channel"'))
    assert (r.kind, r.coeff, r.layers, r.blob_indices) == ("channel", 2.0, None, None)
    assert r.effective_blob_indices() == (0,)           # group kinds: weights only
    r = Regularizer.from_proto(rp('type: "ElasticNet" param_str: "l1: 1e-4, l2: 5e-4"'))
    assert isinstance(r, ElasticNet) and (r.l1, r.l2, r.coeff) == (1e-4, 5e-4, 1.0)
    r = Regularizer.from_proto(rp('type: "L1" coeff: 0.5 blob_index: 1'))
    assert isinstance(r, L1Regularizer) and r.coeff == 0.5 and r.blob_indices == (1,)
    assert r.effective_blob_indices() == (1,)
    r = Regularizer.from_proto(rp('type: "L2" coeff: 0.5'))
    assert r.effective_blob_indices() is None            # plain penalties: every blob
    # a subclass builds itself whatever the type says
    r = GroupLasso.from_proto(rp('type: "anything" coeff: 3'))
    assert type(r) is GroupLasso and r.coeff == 3.0
    with pytest.raises(RegularizerError, match="coeff is set both as a field and in param_str"):
        Regularizer.from_proto(rp('type: "L1" coeff: 1 param_str: "coeff: 2"'))
    with pytest.raises(RegularizerError, match=r"regularizer 'GroupLasso': bad arguments "
                                               r"\(coeff not set, param_str \"kindd: filter\"\): "
                                               r".*kindd"):
        Regularizer.from_proto(rp('type: "GroupLasso" param_str: "kindd: filter"'))
    with pytest.raises(RegularizerError, match=r"regularizer 'L1': bad arguments \(coeff not set, "
                                               r"param_str \"\"\): .*coeff"):
        Regularizer.from_proto(rp('type: "L1"'))


def test_solver_regularizers_from_prototxt():
    p = parse_text('breadth_decay: 0.001 regularizer { type: "L1" coeff: 1e-5 layer: "ip1" } '
                   'regularizer { type: "GroupLasso" coeff: 0.01 param_str: "kind: depth" }',
                   caffe_pb2.SolverParameter())
    chain = solver_regularizers(p)
    assert [type(r) for r in chain] == [SSLGroupLasso, L1Regularizer, GroupLasso]
    assert chain[0].breadth_decay == pytest.approx(0.001) and chain[1].layers == ("ip1",)
    assert solver_regularizers(caffe_pb2.SolverParameter()) == []


def test_context_fields_and_defaults():
    c = RegularizeContext(param_index=1)
    assert c.blob_index == 1 and c.conv_group == 1 and c.history == []
    assert c.decay_mult == 1.0 and c.lr_mult == 1.0 and c.xp is np
    c.update(blob_index=0, rate=0.5)
    assert (c.param_index, c.rate) == (0, 0.5)
    with pytest.raises(TypeError, match="no field"):
        RegularizeContext(layer_nam="x")


def test_param_info_and_context_from_a_net(net):
    infos = learnable_param_info(net)
    got = [(i.layer_name, i.layer_type, i.blob_index, i.conv_group) for i in infos]
    assert got == [("conv1", "Convolution", 0, 2), ("conv1", "Convolution", 1, 2),
                   ("ip1", "InnerProduct", 0, 1), ("ip1", "InnerProduct", 1, 1),
                   ("ip2", "InnerProduct", 1, 1)]                 # ip2's weights are ip1's
    assert infos[0].param_spec.breadth_decay_mult == 1.0
    assert infos[3].param_spec is None and infos[4].param_spec is None
    assert infos[0].layer is net.layers[net.layer_names.index("conv1")]
    hist = [np.zeros(3)]
    c = RegularizeContext.for_param(net, 2, rate=0.1, history=hist, iter=7)
    assert (c.layer_name, c.blob_index, c.param_index, c.decay_mult, c.lr_mult) == \
        ("ip1", 0, 0, 3.0, 1.0)
    assert c.history is hist and c.iter == 7 and c.net is net
    assert c.layer is net.layers[net.layer_names.index("ip1")] and c.layer_type == "InnerProduct"
    c = RegularizeContext.for_param(net, 1)
    assert (c.lr_mult, c.decay_mult, c.conv_group) == (2.0, 0.0, 2)


def test_setup_checks_selected_layers(net):
    with pytest.raises(RegularizerError, match="regularizer 'L1': layer 'conv9' is not a layer "
                                               "with parameters in net 'tiny' \\(layers with "
                                               "parameters: conv1, ip1, ip2\\)"):
        L1Regularizer(0.1, layers=["conv9"]).setup(net)
    with pytest.raises(RegularizerError, match="layer 'ip1' has 2 param blob.s., no blob_index 2"):
        L1Regularizer(0.1, layers=["ip1"], blob_indices=[2]).setup(net)
    L1Regularizer(0.1, layers=["ip1"]).setup(net)
    bad = NET.replace("xdimen: 9 ydimen: 2", "xdimen: 4 ydimen: 4")
    caffepy.set_random_seed(5)
    bad_net = caffepy.Net(bad, caffepy.TRAIN)
    with pytest.raises(RegularizerError, match="layer 'conv1' param 0: block group lasso "
                                               r"\(xdimen 4, ydimen 4\) does not tile the 6x18"):
        SSLGroupLasso(block_group_decay=0.1).setup(bad_net)
    SSLGroupLasso(breadth_decay=0.1).setup(bad_net)       # blocks unused: nothing to check


def test_chain_runs_selected_members_and_sums_penalties(net):
    chain = [L2Regularizer(0.5, layers=["ip1"]), GroupLasso(0.25, kind="depth")]
    for pid, blob in enumerate(net.learnable_params):
        blob.diff[...] = 0
        c = RegularizeContext.for_param(net, pid)
        run_regularizers(chain, pid, blob, c)
        w = blob.data.astype(np.float64)
        want = np.zeros_like(w)
        pen = 0.0
        if c.layer_name == "ip1":
            want += 0.5 * 3 * w                         # decay_mult 3 on ip1's weights
            pen += 0.25 * 3 * (w * w).sum() if c.blob_index == 0 else 0.25 * (w * w).sum()
            if c.blob_index == 1:
                want = 0.5 * w
        if c.blob_index == 0:
            n = np.sqrt((w * w).sum())
            want += 0.25 * w / n
            pen += 0.25 * n
        np.testing.assert_allclose(blob.diff, want, rtol=1e-5, atol=1e-12)
        assert regularizers_penalty(chain, pid, blob, c) == pytest.approx(pen, rel=1e-5)


# -- state ----------------------------------------------------------------------------------------

class RunningNorm(Regularizer):
    """Keeps a running mean of each param's squared weights (state to snapshot)."""

    def __init__(self, coeff=0.0):
        super().__init__(coeff)
        self.avg = {}

    def regularize(self, param_id, blob, ctx):
        a = self.avg.setdefault(param_id, np.zeros(blob.shape, np.float32))
        a *= 0.5
        a += 0.5 * blob.data * blob.data

    def state_dict(self):
        return {"avg%d" % k: v.copy() for k, v in self.avg.items()}

    def load_state_dict(self, state):
        self.avg = {int(k[3:]): np.array(v, np.float32) for k, v in state.items()}


def test_state_dict_round_trip():
    r = RunningNorm()
    b0, b1 = B([[1.0, 2.0]]), B([3.0])
    for _ in range(3):
        r.regularize(0, b0, ctx())
        r.regularize(1, b1, ctx())
    chain = [GroupLasso(0.1), r]
    state = chain_state_dict(chain)
    assert sorted(state) == ["1/Regularizer/avg0", "1/Regularizer/avg1"]
    np.testing.assert_allclose(state["1/Regularizer/avg0"], [[0.875, 3.5]])
    fresh = [GroupLasso(0.1), RunningNorm()]
    load_chain_state_dict(fresh, state)
    np.testing.assert_array_equal(fresh[1].avg[0], r.avg[0])
    np.testing.assert_array_equal(fresh[1].avg[1], [7.875])
    with pytest.raises(RegularizerError, match="regularizer state '1/Regularizer/avg0' does not "
                                               "match the chain \\(GroupLasso\\)"):
        load_chain_state_dict([GroupLasso(0.1)], state)
    with pytest.raises(RegularizerError, match="regularizer 'GroupLasso' keeps no state, but was "
                                               "given x"):
        GroupLasso(0.1).load_state_dict({"x": np.zeros(1)})
    assert GroupLasso(0.1).state_dict() == {}


# -- weight decay ------------------------------------------------------------------------------

def test_weight_decay_is_bit_identical_to_the_solver_formula():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 5)).astype(np.float32)
    g = rng.normal(size=(7, 5)).astype(np.float32)
    lam = f32(f32(5e-4) * f32(1.0))
    for rtype in ("L2", "L1"):
        b = B(w)
        b.diff[...] = g
        WeightDecay(5e-4, rtype).regularize(0, b, ctx())
        want = g + lam * (w if rtype == "L2" else np.sign(w))
        np.testing.assert_array_equal(b.diff, want)
        d = g.ravel().copy()
        apply_weight_decay(rtype, lam, w.ravel(), d)
        np.testing.assert_array_equal(d.reshape(w.shape), want)


def test_paramspec_regularization_type_overrides_the_solver():
    w = [[1.0, -2.0], [0.0, 4.0]]
    b = B(w)
    WeightDecay(0.5, "L2").regularize(0, b, ctx('regularization_type: "L1"', decay_mult=2))
    assert b.diff.tolist() == [[1.0, -1.0], [0.0, 1.0]]
    assert WeightDecay(0.5, "L2").penalty(0, b, ctx('regularization_type: "L1"')) == 3.5
    assert WeightDecay(0.5, "L2").penalty(0, b, ctx()) == pytest.approx(0.25 * 21)
    with pytest.raises(RegularizerError, match="layer 'ip1' param 0: unknown regularization_type "
                                               "'L3'"):
        WeightDecay(0.5).regularize(0, b, ctx('regularization_type: "L3"'))
    with pytest.raises(SolverError, match="Unknown regularization type: 'L7'"):
        WeightDecay(0.5, "L7")
    p = parse_text('weight_decay: 0.25 regularization_type: "L1"', caffe_pb2.SolverParameter())
    wd = WeightDecay.from_solver_param(p)
    assert (wd.weight_decay, wd.regularization_type) == (0.25, "L1")


def write_blob(path, arr, legacy=False):
    bp = caffe_pb2.BlobProto()
    if legacy:
        bp.num, bp.channels, bp.height, bp.width = (1, 1) + tuple(np.shape(arr))
        bp.data.extend(np.ravel(arr).tolist())
    else:
        array_to_blobproto(np.asarray(arr, np.float32), bp=bp)
    write_binary(bp, str(path))


def test_decay_proto_multiplies_each_weight(tmp_path):
    write_blob(tmp_path / "d.binaryproto", [[0, 1], [2, 3]])
    spec = 'decay_proto: "%s"' % (tmp_path / "d.binaryproto")
    w = [[1.0, -2.0], [3.0, 0.0]]
    b = B(w)
    WeightDecay(0.1, "L2").regularize(0, b, ctx(spec))
    np.testing.assert_allclose(b.diff, [[0, -0.2], [0.6, 0]], rtol=1e-7)
    assert WeightDecay(0.1, "L2").penalty(0, b, ctx(spec)) == pytest.approx(0.05 * 22, rel=1e-6)
    b = B(w)
    WeightDecay(0.1, "L1").regularize(0, b, ctx(spec))
    np.testing.assert_allclose(b.diff, [[0, -0.1], [0.2, 0]], rtol=1e-7)
    assert WeightDecay(0.1, "L1").penalty(0, b, ctx(spec)) == pytest.approx(0.8, rel=1e-6)
    res = check_regularizer(WeightDecay(0.1, "L2"), shape=(2, 2), param_spec=spec)
    assert res.passed
    np.testing.assert_allclose(weight_decay_penalty("L2", 0.1, np.ones(4), np.arange(4.0)), 0.3)
    # a legacy 4-D BlobProto (1 x 1 x 2 x 2) fits a 2 x 2 param, as Blob::ShapeEquals
    write_blob(tmp_path / "legacy.binaryproto", [[0, 1], [2, 3]], legacy=True)
    np.testing.assert_array_equal(load_decay_proto(str(tmp_path / "legacy.binaryproto"), (2, 2)),
                                  [[0, 1], [2, 3]])


def test_decay_proto_errors_name_file_layer_and_shapes(tmp_path, net):
    path = tmp_path / "d.binaryproto"
    write_blob(path, np.ones((3, 4)))
    with pytest.raises(RegularizerError) as e:
        load_decay_proto(str(path), (10, 500), "ip2", 0)
    assert str(e.value) == ("layer 'ip2' param 0: decay_proto '%s' has shape 3 4 (12) but the "
                            "param has shape 10 500 (5000)" % path)
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(RegularizerError) as e:
        WeightDecay(0.1).regularize(0, B(np.ones((10, 5))),
                                    ctx('decay_proto: "%s"' % missing, name="ip2"))
    msg = str(e.value)
    assert msg.startswith("layer 'ip2' param 0: cannot read decay_proto '%s' (expected a "
                          "BlobProto of the param's shape 10 5 (50)): " % missing)
    assert "No such file or directory" in msg
    # setup(net) reads every decay_proto before training starts
    caffepy.set_random_seed(5)
    n2 = caffepy.Net(NET.replace('param { lr_mult: 2 decay_mult: 0 }',
                                 'param { lr_mult: 2 decay_mult: 0 decay_proto: "%s" }' % path),
                     caffepy.TRAIN)
    with pytest.raises(RegularizerError, match="layer 'conv1' param 1: decay_proto '.*' has shape "
                                               r"3 4 \(12\) but the param has shape 6 \(6\)"):
        WeightDecay(0.1).setup(n2)


# -- L1 / L2 / ElasticNet ------------------------------------------------------------------------

def test_plain_penalties_numbers_and_gradients():
    w = [[1.0, -2.0], [0.0, 3.0]]
    b = B(w)
    L1Regularizer(0.5).regularize(0, b, ctx(decay_mult=2))
    assert b.diff.tolist() == [[1.0, -1.0], [0.0, 1.0]]
    assert L1Regularizer(0.5).penalty(0, b, ctx(decay_mult=2)) == 6.0
    b = B(w)
    L2Regularizer(0.5).regularize(0, b, ctx())
    assert b.diff.tolist() == [[0.5, -1.0], [0.0, 1.5]]
    assert L2Regularizer(0.5).penalty(0, b, ctx()) == 3.5
    b = B(w)
    e = ElasticNet(l1=0.5, l2=0.25, coeff=2)
    e.regularize(0, b, ctx())
    np.testing.assert_allclose(b.diff, [[1.5, -2.0], [0.0, 2.5]])
    assert e.penalty(0, b, ctx()) == pytest.approx(1.0 * 6 + 0.25 * 14)
    for r in (L1Regularizer(0.3), L2Regularizer(0.3), ElasticNet(0.2, 0.7)):
        assert check_regularizer(r, shape=(4, 5), decay_mult=1.5).passed


# -- connectivity masks --------------------------------------------------------------------------

def test_eltwise_mask_zeroes_small_weights_first():
    w = np.array([[0.5, 5e-5, 0.0], [-2e-4, -9e-5, 1.0], [f32(1e-4), -f32(1e-4),
                                                          np.nextafter(f32(1e-4), f32(1))]],
                 dtype=np.float32)
    m = masks.connectivity_mask(w, "DISCONNECTED_ELTWISE")
    assert m.dtype == np.float32
    assert m.tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]
    # float32(1e-4) is below the double 1e-4 the fork compares with
    assert w[:2].tolist() == [[0.5, 0.0, 0.0], [f32(-2e-4), 0.0, 1.0]]
    assert w[2, 0] == 0 and w[2, 1] == 0 and w[2, 2] != 0
    assert masks.connectivity_mask(w, masks.CONNECTED) is None


def test_grpwise_mask_per_conv_group():
    w = np.array([[1, 0, 2],
                  [0, 0, 0],
                  [0, 3, 0],
                  [0, 4, 5e-5]], dtype=np.float32)
    m = masks.connectivity_mask(w.copy(), masks.DISCONNECTED_GRPWISE, conv_group=2)
    assert m.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 0]]
    m = masks.connectivity_mask(w.copy(), masks.DISCONNECTED_GRPWISE, conv_group=1)
    assert m.tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1]]
    w4 = w.reshape(4, 3, 1, 1).copy()
    assert masks.connectivity_mask(w4, 2, 2).shape == (4, 3, 1, 1)
    d = np.ones((4, 3), np.float32)
    masks.apply_mask(d, m)
    assert d.tolist() == m.tolist()


def test_log_lines_and_net_masks(net, caplog):
    assert masks.connectivity_message("conv1", "DISCONNECTED_ELTWISE") == \
        "all zero weights of conv1 are frozen"
    assert masks.connectivity_message("conv1", masks.DISCONNECTED_GRPWISE) == \
        "weights lying in all-zero groups of conv1 are frozen"
    assert masks.connectivity_message("conv1", 0) is None
    text = NET.replace('bottom: "data" top: "conv1"',
                       'bottom: "data" top: "conv1" connectivity_mode: DISCONNECTED_GRPWISE')
    text = text.replace('bottom: "conv1" top: "ip1"',
                        'bottom: "conv1" top: "ip1" connectivity_mode: DISCONNECTED_ELTWISE')
    caffepy.set_random_seed(5)
    n = caffepy.Net(text, caffepy.TRAIN)
    n.params["conv1"][0].data[0] = 0                  # filter 0 of conv group 0
    n.params["conv1"][0].data[3:, 1, 2, 2] = 0        # a column of conv group 1
    n.params["ip1"][0].data[...] = 0.5
    n.params["ip1"][0].data[0, :5] = 3e-5
    with caplog.at_level(logging.INFO, logger="caffepy"):
        got = masks.net_connectivity_masks(n)
    assert sorted(got) == [0, 2]
    assert "weights lying in all-zero groups of conv1 are frozen" in caplog.messages
    assert "all zero weights of ip1 are frozen" in caplog.messages
    m = got[0]
    assert (m[0] == 0).all() and (m[3:, 1, 2, 2] == 0).all()
    assert m.sum() == 6 * 2 * 9 - 18 - 3
    assert (n.params["ip1"][0].data[0, :5] == 0).all()
    assert got[2][0, :5].tolist() == [0] * 5 and got[2].sum() == got[2].size - 5


def test_zerout_in_place_with_scratch():
    w = np.array([5e-5, -5e-5, 2e-4, np.nan, -1.0], np.float32)
    masks.zerout(w, scratch=(np.empty(5, np.float32), np.empty(5, bool)))
    assert w[:3].tolist() == [0.0, 0.0, f32(2e-4)] and np.isnan(w[3]) and w[4] == -1


# -- sparsity statistics and their log block -------------------------------------------------------

def params_for_sparsity():
    w0 = np.array([[0, 0, 0, 0],
                   [1, 2e-5, 0, 0],
                   [3, 4, 0, 0],
                   [0, 0, 5, 0]], np.float32).reshape(4, 1, 2, 2)
    b0 = np.array([0, 0.3, 0, 1e-5], np.float32)
    w1 = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    b1 = np.array([0, 1, 2], np.float32)
    return [(w0, [(2, 2), (4, 1), (1, 4)]), (b0, []), (w1, [(2, 3)]), (b1, [])]


def test_sparsity_numbers_and_messages():
    stats = [sparsity.param_sparsity(a, s) for a, s in params_for_sparsity()]
    # w0: 16 weights, 12 of them < 1e-4 -> 75 %; column 3 zero -> 25 %; row 0 -> 25 %;
    # 2x2 blocks: top-right is zero -> 25 %; rows (4,1): 25 %; columns (1,4): 25 %
    assert stats[0] == sparsity.ParamSparsity(75, 25, 25, [(2, 2, 25), (4, 1, 25),
                                                               (1, 4, 25)])
    assert stats[1] == sparsity.ParamSparsity(75, 0, 50, [])
    assert stats[2] == sparsity.ParamSparsity(0, 0, 0, [(2, 3, 0)])
    assert stats[3] == sparsity.ParamSparsity(100 / 3, 0, 100 / 3, [])
    msgs = sparsity.sparsity_messages(stats)
    assert msgs == [
        "    Element Sparsity %: \n75\t75\t0\t33.3333\t",
        "     Column Sparsity %: \n25\t0\t0\t0\t",
        "        Row Sparsity %: \n25\t50\t0\t33.3333\t",
        "      Block Sparsity %: \n(2,2):25;(4,1):25;(1,4):25;\t\t(2,3):0;\t\t",
    ]
    assert sparsity.regularization_message(2.0312, 1.13846) == \
        "    Total regularization terms: 2.0312 loss+regular. : 3.16966"
    with pytest.raises(RegularizerError, match=r"block group lasso \(xdimen 3, ydimen 1\) does "
                                               "not tile the 3x4 weight matrix"):
        sparsity.param_sparsity(params_for_sparsity()[2][0], [(3, 1)])


@pytest.mark.parametrize("x,text", [(2.5711662, "2.57117"), (0.0, "0"), (0.3, "0.3"),
                                    (1e-5, "1e-05"), (100.0, "100"), (1234567.0, "1.23457e+06"),
                                    (f32(0.3), "0.3"), (float("nan"), "nan"), (-float("inf"),
                                                                                "-inf")])
def test_format_g_is_iostream_default(x, text):
    assert sparsity.format_g(x) == text


def test_sparsity_log_parses_back():
    stats = [sparsity.param_sparsity(a, s) for a, s in params_for_sparsity()]
    prefix = "I0406 10:22:04.045734  9801 solver.cpp:%d] "
    lines = [prefix % 243 + "Iteration 100, loss = 0.5", prefix % 106 + "Iteration 100, lr = 0.01"]
    for m in sparsity.sparsity_messages(stats):
        lines.append(prefix % 120 + m)
    lines.append(prefix % 260 + sparsity.regularization_message(0.25, 1.5))
    lines.append(prefix % 243 + "Iteration 200, loss = 0.4")
    lines.append(prefix % 260 + sparsity.regularization_message(0.125, 1.0))
    recs = sparsity.parse_sparsity_log("\n".join(lines) + "\n")
    assert len(recs) == 2
    r = recs[0]
    assert r["iteration"] == 100
    assert r["element"] == [75, 75, 0, 33.3333] and r["column"] == [25, 0, 0, 0]
    assert r["row"] == [25, 50, 0, 33.3333]
    assert r["block"] == [[(2, 2, 25.0), (4, 1, 25.0), (1, 4, 25.0)], [], [(2, 3, 0.0)], []]
    assert (r["regularization"], r["loss_plus_regular"]) == (0.25, 1.75)
    assert recs[1] == {"iteration": 200, "regularization": 0.125, "loss_plus_regular": 1.125}


def test_parser_reads_the_forks_own_log():
    log_text = (
        "I0406 10:22:04.045734  9801 sgd_solver.cpp:120]     Element Sparsity %: \n"
        "2.57117\t0\t2.67155\t0\t2.79722\t0\t2.5151\t0\t2.45067\t0\t5.63966\t0\t4.6737\t0\t"
        "3.21321\t0.3\t\n"
        "I0406 10:22:04.045882  9801 sgd_solver.cpp:130]      Column Sparsity %: \n"
        + "0\t" * 16 + "\n"
        "I0406 10:22:04.046241  9801 sgd_solver.cpp:139]         Row Sparsity %: \n"
        + "0\t" * 15 + "0.3\t\n"
        "I0406 10:22:04.049043  9801 sgd_solver.cpp:153]       Block Sparsity %: \n"
        "(121,1):0;\t\t(25,1):0;\t\t(9,1):0;\t\t(9,1):0;\t\t(9,1):0;\t\t\t\t\t\t\t\t\n"
        "I0406 10:22:04.097692  9801 solver.cpp:260]     Total regularization terms: 2.0312 "
        "loss+regular. : 3.16966\n")
    (r,) = sparsity.parse_sparsity_log(log_text)
    assert len(r["element"]) == len(r["column"]) == len(r["row"]) == len(r["block"]) == 16
    assert r["element"][:3] == [2.57117, 0, 2.67155] and r["row"][-1] == 0.3
    assert r["block"][0] == [(121, 1, 0.0)] and r["block"][2] == [(25, 1, 0.0)]
    assert r["block"][10:] == [[]] * 6
    assert (r["regularization"], r["loss_plus_regular"]) == (2.0312, 3.16966)
    # the train script's awk '{print $8 " " $11}' finds the two numbers
    fields = log_text.splitlines()[-1].split()
    assert (fields[7], fields[10]) == ("2.0312", "3.16966")


def test_net_sparsity_uses_owner_block_specs(net):
    net.params["conv1"][0].data[...] = 1
    net.params["conv1"][0].data[0:2, 0] = 0          # a 2 x 9 block: channel 0 of filters 0-1
    stats = sparsity.net_sparsity(net)
    assert len(stats) == 5
    assert stats[0].blocks == [(9, 2, pytest.approx(100 / 6))]
    assert stats[0].element == pytest.approx(100 * 18 / 108)
    assert [s.blocks for s in stats[1:]] == [[], [], [], []]
    assert stats[1].element == 0                      # biases 0.1


# -- docs/custom-regularizer.md ------------------------------------------------------------------

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "custom-regularizer.md")


def doc_blocks(path):
    """[(kind, name, code)] of the page's marked blocks: ``<!-- test -->`` before a python
    block to run, ``<!-- test: file NAME -->`` before a block to save as NAME."""
    marker = re.compile(r"^<!--\s*test(?::\s*file\s+(\S+))?\s*-->\s*$")
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    for i, line in enumerate(lines):
        m = marker.match(line.strip())
        if not m:
            continue
        j = i + 1
        while not lines[j].strip():
            j += 1
        fence = re.match(r"^(`{3,})", lines[j]).group(1)
        k = j + 1
        while lines[k].rstrip() != fence:
            k += 1
        out.append(("file" if m.group(1) else "run", m.group(1), "\n".join(lines[j + 1:k])))
    return out


def test_custom_regularizer_doc_runs_and_its_plugin_matches_the_builtin(tmp_path):
    blocks = doc_blocks(DOC)
    runs = [b for b in blocks if b[0] == "run"]
    assert len(runs) >= 5 and any(b[1] == "ssl_net.prototxt" for b in blocks)
    plugin = runs[0][2]
    body = [ln for ln in plugin.split("\n")[plugin.split("\n").index("@register_regularizer("
                                                                    "\"MyGroupLasso\")"):]]
    assert len(body) <= 35, "the plug-in should stay about 30 lines (%d)" % len(body)
    script = ["import json, sys", "ns = {'__name__': '__main__'}"]
    for kind, name, code in blocks:
        if kind == "file":
            script.append("open(%r, 'w').write(%r)" % (name, code + "\n"))
        else:
            script.append("exec(compile(%r, 'custom-regularizer.md', 'exec'), ns)" % code)
    # the plug-in against the built-in, from this test as well as from the page
    script.append(textwrap.dedent('''
        from caffepy.regularizers import RegularizeContext, SSLGroupLasso
        import numpy as np, caffepy
        net = caffepy.Net("ssl_net.prototxt", caffepy.TRAIN)
        mine = ns["MyGroupLasso"](0.02, 0.01)
        ssl = SSLGroupLasso(breadth_decay=0.02, kernel_shape_decay=0.01)
        out = []
        for pid, blob in enumerate(net.learnable_params):
            ctx = RegularizeContext.for_param(net, pid)
            blob.diff[...] = 0
            mine.regularize(pid, blob, ctx)
            a = blob.diff.copy()
            blob.diff[...] = 0
            ssl.regularize(pid, blob, ctx)
            out.append([bool(np.array_equal(a, blob.diff)), float(np.abs(a).max()),
                        mine.penalty(pid, blob, ctx), ssl.penalty(pid, blob, ctx)])
        print("RESULT " + json.dumps(out))
    '''))
    (tmp_path / "run_doc.py").write_text("\n".join(script))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(caffepy.__file__))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "run_doc.py"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "same weights and penalties after 5 iterations" in proc.stdout
    assert "True 144 max relative error" in proc.stdout
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert len(result) == 4
    for same, biggest, p_mine, p_builtin in result:
        assert same
        assert p_mine == pytest.approx(p_builtin, rel=1e-6)
    assert result[0][1] > 0 and result[2][1] > 0              # conv1 and ip1 weights
    assert result[1][1] == 0 and result[3][1] == 0            # biases: no multipliers
