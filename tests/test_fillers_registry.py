"""The filler registry: user fillers used from a prototxt, the built-ins behind the same
decorator, and the errors for an unknown type or a wrong shape."""
import numpy as np
import pytest

import caffepy
from caffepy import fillers
from caffepy.fillers import FillerError, fill_array
from caffepy.proto import caffe_pb2, parse_text

BUILTINS = ["bilinear", "constant", "gaussian", "msra", "positive_unitball", "uniform", "xavier"]


@pytest.fixture
def registry():
    """Leave the registry as it was (the tests below add and replace entries)."""
    table = fillers._FILLERS._items
    saved = dict(table)
    yield table
    table.clear()
    table.update(saved)


def test_builtins_are_registered_and_register_filler_is_exported():
    assert caffepy.register_filler is fillers.register_filler
    assert fillers.filler_type_list() == BUILTINS
    assert fillers.get_filler("xavier") is fillers.xavier_filler


def test_user_filler_from_a_prototxt(registry):
    @caffepy.register_filler("myfiller")
    def ramp(param, shape, rng):
        # value, value + step, value + 2·step, ... in C order (step = std)
        n = int(np.prod(shape))
        return (param.value + param.std * np.arange(n)).reshape(shape)

    net = caffepy.Net("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 2
                    weight_filler { type: "myfiller" value: 1 std: 0.5 }
                    bias_filler { type: "myfiller" value: -10 std: 2 } } }
        """, caffepy.TEST)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    np.testing.assert_array_equal(w, [[1.0, 1.5, 2.0], [2.5, 3.0, 3.5]])
    np.testing.assert_array_equal(b, [-10.0, -8.0])
    assert w.dtype == np.float32
    # y = x·Wᵀ + b with x = (1, 2, 3): 1 + 3 + 6 - 10 = 0 and 2.5 + 6 + 10.5 - 8 = 11
    out = net.forward(x=np.array([[1, 2, 3]], np.float32))
    np.testing.assert_array_equal(out["y"], [[0.0, 11.0]])
    assert "myfiller" in fillers.filler_type_list()


def test_user_filler_draws_from_the_seeded_stream(registry):
    fillers.register_filler("coin", lambda param, shape, rng: rng.integers(0, 2, size=shape))
    caffepy.set_random_seed(11)
    a = fill_array(parse_text('type: "coin"', caffe_pb2.FillerParameter()), (4, 5))
    expected = np.random.default_rng(11).integers(0, 2, size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(a, expected)
    assert a.dtype == np.float32


def test_registering_a_builtin_name_replaces_it(registry):
    fillers.register_filler("constant", lambda param, shape, rng: np.full(shape, 7.0))
    np.testing.assert_array_equal(fill_array(caffe_pb2.FillerParameter(), (2,)), [7.0, 7.0])


def test_unknown_type_names_the_type_and_the_registered_ones(registry):
    with pytest.raises(FillerError) as e:
        fill_array(caffe_pb2.FillerParameter(type="gausian"), (2,))
    assert str(e.value) == ("Unknown filler type 'gausian' (registered: bilinear, constant, "
                            "gaussian, msra, positive_unitball, uniform, xavier)")
    fillers.register_filler("myfiller", lambda param, shape, rng: np.zeros(shape))
    with pytest.raises(caffepy.NetError) as e:
        caffepy.Net("""
            layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
            layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                    inner_product_param { num_output: 2 weight_filler { type: "my_filler" } } }
            """, caffepy.TEST)
    msg = str(e.value)
    assert "Layer 'ip' (InnerProduct): weight_filler: Unknown filler type 'my_filler' " \
           "(registered: bilinear, constant, gaussian, msra, myfiller, positive_unitball, " \
           "uniform, xavier)" in msg


def test_a_filler_returning_the_wrong_shape_is_an_error(registry):
    fillers.register_filler("short", lambda param, shape, rng: np.zeros(3))
    with pytest.raises(FillerError, match=r"filler 'short' returned an array of shape \(3,\) "
                                          r"for a blob of shape \(2, 3\)"):
        fill_array(caffe_pb2.FillerParameter(type="short"), (2, 3))
