"""Net::Init's building steps (caffepy/net/build.py): the INFO log of construction, who sets
param_propagate_down, and the lr/decay merge of shared params."""
import logging

import pytest

import caffepy
from caffepy.net import NetError
from caffepy.proto import caffe_pb2, parse_text


def net_from(text):
    p = parse_text(text, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    return caffepy.Net(p)


INPLACE = """
name: "inplace"
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_construction_lines_are_info_as_in_caffe(caplog):
    with caplog.at_level(logging.DEBUG, logger="caffepy"):
        net_from(INPLACE)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    other = [r.getMessage() for r in caplog.records if r.levelno != logging.INFO]
    assert info[0].startswith("Initializing net from parameters: \nname: \"inplace\"")
    # Data memory counts every top, the in-place one too (as Caffe): in 6 + 8, ip 8, relu 8,
    # loss 1 floats -> 56, 88, 120, 124 bytes.
    for line in ("Creating layer in", "Creating Layer in", "in -> x", "in -> t",
                 "Setting up in", "Top shape: 2 3 (6)", "Top shape: 2 4 (8)",
                 "Memory required for data: 56",
                 "ip <- x", "ip -> y", "Memory required for data: 88", "relu -> y (in-place)",
                 "Memory required for data: 120",
                 "Top shape: (1)", "    with loss weight 1", "Memory required for data: 124",
                 "loss needs backward computation.", "ip needs backward computation.",
                 "in does not need backward computation.",
                 "This network produces output loss", "Network initialization done."):
        assert line in info, line
    assert info[-1] == "Network initialization done."
    assert not any("Creating" in m or "->" in m or "Top shape" in m or "Memory" in m
                   for m in other)


@pytest.mark.parametrize("type_,param", [("Flatten", ""),
                                         ("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }")])
def test_flatten_and_reshape_in_place_are_refused_naming_the_blob(type_, param):
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
    layer { name: "view" type: "%s" bottom: "x" top: "x" %s }
    """ % (type_, param)
    with pytest.raises(NetError) as e:
        net_from(text)
    assert str(e.value) == ("Layer 'view' (%s) does not allow in-place computation: top 0 'x' "
                            "is its bottom 0; give the top its own name" % type_)


def test_flatten_axis_after_end_axis_is_a_net_error():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
    layer { name: "fl" type: "Flatten" bottom: "x" top: "f"
            flatten_param { axis: 2 end_axis: 0 } }
    """
    with pytest.raises(NetError, match=r"Layer 'fl' \(Flatten\): flatten_param axis 2 comes after "
                                       r"end_axis 0 \(axes 2 > 0 \+ 1\) for bottom 'x' of shape "
                                       r"\(2, 3, 4\)"):
        net_from(text)


def test_param_propagate_down_is_sized_by_setup_then_set_by_the_net():
    net = net_from("""
    layer { name: "in" type: "Input" top: "x" top: "t"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            param { lr_mult: 0 } param { lr_mult: 2 } inner_product_param { num_output: 1 } }
    layer { name: "scale" type: "Scale" bottom: "y" top: "z" param { lr_mult: 0 } }
    layer { name: "prelu" type: "PReLU" bottom: "x" top: "p" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "loss" }
    layer { name: "loss2" type: "EuclideanLoss" bottom: "p" bottom: "x" top: "loss2" }
    """)
    layers = net.layer_dict
    assert layers["ip"].param_propagate_down == [False, True]
    assert layers["scale"].param_propagate_down == [False]
    assert layers["prelu"].param_propagate_down == [True]
    # A layer set up outside a net keeps the default: every param propagates.
    layer, _, _ = caffepy.layer.build_layer(
        'name: "s" type: "Scale" scale_param { bias_term: true }', [[[1.0, 2.0]]])
    assert layer.param_propagate_down == [True, True]


SHARED = """
force_backward: true
layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" %s }
        inner_product_param { num_output: 4 bias_term: false } }
layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "yb" param { name: "w" %s }
        inner_product_param { num_output: 4 bias_term: false } }
"""


def test_sharer_sets_multipliers_the_owner_left_unset():
    net = net_from(SHARED % ("", "lr_mult: 3 decay_mult: 0.5"))
    assert net.param_owners == [-1, 0] and net.learnable_param_ids == [0, 0]
    assert net.params_lr == [3.0] and net.params_weight_decay == [0.5]
    assert net.has_params_lr == [True] and net.has_params_decay == [True]


def test_sharer_multipliers_must_match_the_owners():
    with pytest.raises(NetError, match="Shared param 'w' has mismatched lr_mult "
                                       r"\(layer 'ip_b'\)"):
        net_from(SHARED % ("lr_mult: 1", "lr_mult: 2"))
    with pytest.raises(NetError, match="Shared param 'w' has mismatched decay_mult "
                                       r"\(layer 'ip_b'\)"):
        net_from(SHARED % ("decay_mult: 1", "decay_mult: 0"))


def test_permissive_sharing_needs_equal_counts_only():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "c"
            input_param { shape { dim: 2 dim: 6 } shape { dim: 2 dim: 3 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" }
            inner_product_param { num_output: 2 bias_term: false } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "c" top: "yb" param { name: "w" %s }
            inner_product_param { num_output: %d bias_term: false } }
    """
    # ip_a's weights are 2 x 6; ip_b's are 4 x 3 (same count) or 5 x 3.
    net = net_from(text % ("share_mode: PERMISSIVE", 4))
    wa, wb = net.params["ip_a"][0], net.params["ip_b"][0]
    assert wb.shape == (4, 3) and wb.shares_data_with(wa)
    with pytest.raises(NetError, match=r"Cannot share param 'w' owned by layer 'ip_a' with layer "
                                       r"'ip_b'; count mismatch. Owner layer param shape is 2 6 "
                                       r"\(12\); sharing layer shape is 5 3 \(15\)"):
        net_from(text % ("share_mode: PERMISSIVE", 5))
    with pytest.raises(NetError, match=r"shape mismatch. Owner layer param shape is 2 6 \(12\); "
                                       r"sharing layer expects shape 4 3 \(12\)"):
        net_from(text % ("", 4))
