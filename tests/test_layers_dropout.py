"""Dropout's ratio range as Caffe's release builds run it: ratio 0 is the identity in TRAIN
(scale 1, nothing dropped); ratio 1 and ratios outside [0, 1) are refused."""
import numpy as np
import pytest

import caffepy
from caffepy.layer import LayerError, build_layer
from caffepy.proto import caffe_pb2

X = np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -0.5]], np.float32)
DY = np.array([[0.5, 1.0, -1.0], [2.0, -3.0, 0.125]], np.float32)


def run_dropout(ratio, phase, in_place=False):
    layer, bottom, top = build_layer(
        'name: "drop" type: "Dropout" bottom: "x" top: "%s" '
        'dropout_param { dropout_ratio: %s }' % ("x" if in_place else "y", ratio), [X],
        phase=phase)
    if in_place:
        top = bottom
        layer.reshape(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = DY
    layer.backward(top, [True], bottom)
    return layer, y, bottom[0].diff.copy()


@pytest.mark.parametrize("in_place", [False, True])
def test_ratio_zero_is_the_identity_in_train(in_place):
    caffepy.set_random_seed(5)
    layer, y, dx = run_dropout(0, caffe_pb2.TRAIN, in_place)
    assert layer.ratio == 0 and layer.scale == 1.0
    np.testing.assert_array_equal(y, X)
    np.testing.assert_array_equal(dx, DY)


def test_ratio_zero_in_a_training_net_changes_nothing():
    net_text = """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 2
                    weight_filler { type: "constant" value: 0.5 } } }
        %s
        layer { name: "out" type: "Power" bottom: "ip" top: "out" power_param { power: 2 } }
    """
    drop = ('layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" '
            'dropout_param { dropout_ratio: 0 } }')
    with_drop = caffepy.Net(net_text % drop, caffepy.TRAIN)
    without = caffepy.Net(net_text % "", caffepy.TRAIN)
    out = with_drop.forward(x=X)["out"]
    # ip = 0.5 · row sums = (-0.125, 1.25) for both outputs; out = ip²
    expected = np.array([[0.015625, 0.015625], [1.5625, 1.5625]], np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(without.forward(x=X)["out"], expected)


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1"])
def test_ratios_outside_zero_one_are_refused(ratio):
    with pytest.raises(LayerError, match=r"Layer 'drop' \(Dropout\): dropout_ratio must be in "
                                         r"\[0, 1\), got %s" % ratio.replace(".", r"\.")):
        run_dropout(ratio, caffe_pb2.TRAIN)


def test_a_positive_ratio_still_drops_and_scales():
    caffepy.set_random_seed(5)
    x = np.full((20, 20), 3.0, np.float32)
    layer, bottom, top = build_layer('name: "drop" type: "Dropout" bottom: "x" top: "y" '
                                     'dropout_param { dropout_ratio: 0.5 }', [x],
                                     phase=caffe_pb2.TRAIN)
    layer.forward(bottom, top)
    kept = top[0].data != 0
    assert 100 < kept.sum() < 300                    # about half of the 400 units
    np.testing.assert_array_equal(top[0].data, np.where(kept, 6.0, 0.0))   # scale 1/(1-0.5)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.where(kept, 2.0, 0.0))
