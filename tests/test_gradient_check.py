"""The gradient checker itself: it passes a correct layer and catches a wrong one."""
import numpy as np
import pytest

import caffepy
from caffepy.blob import Blob
from caffepy.gradient_check import GradientChecker, GradientCheckError


class Square(caffepy.NeuronLayer):
    """y = x²; ``wrong`` makes the backward 10% off."""
    wrong = False

    def forward_impl(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 2

    def backward_impl(self, top, propagate_down, bottom):
        factor = 2.2 if self.wrong else 2.0
        bottom[0].diff[...] = factor * bottom[0].data * top[0].diff


def make(wrong):
    from caffepy.proto import caffe_pb2
    lp = caffe_pb2.LayerParameter(name="sq", type="Square")
    layer = Square(lp)
    layer.wrong = wrong
    x = Blob(2, 3)
    x.data[...] = np.random.default_rng(0).uniform(0.5, 1.5, (2, 3))
    top = [Blob()]
    layer.setup([x], top)
    return layer, [x], top


def test_correct_gradient_passes_all_modes():
    layer, bottom, top = make(False)
    checker = GradientChecker(1e-2, 1e-3)
    checker.check(layer, bottom, top)
    checker.check_exhaustive(layer, bottom, top)
    checker.check_eltwise(layer, bottom, top)


@pytest.mark.parametrize("mode", ["check", "check_exhaustive", "check_eltwise"])
def test_wrong_gradient_is_caught_with_location(mode):
    layer, bottom, top = make(True)
    with pytest.raises(GradientCheckError, match=r"layer 'sq' \(Square\): gradient of bottom 0 element"):
        getattr(GradientChecker(1e-2, 1e-3), mode)(layer, bottom, top)
