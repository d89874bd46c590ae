"""caffe.coord_map: the coordinate maps of Caffe's test_coord_map scenarios (conv -> pool ->
deconv nets), with the numbers worked out by hand, plus the per-layer rules, crop() and the
errors. Through ``import caffe``, as pycaffe code uses it."""
import numpy as np
import pytest

import caffe
import caffepy
from caffe import layers as L
from caffe import params as P
from caffe.coord_map import (AxisMismatchException, CropError, UndefinedMapException,
                             UnconnectedTopsError, compose, conv_params, coord_map,
                             coord_map_from_to, crop, inverse)


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """data (2x1x100x100) -> conv -> max pool -> deconv (kernel twice its stride), and an
    auxiliary input."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [2 * s for s in dstride] if isinstance(dstride, list) else 2 * dstride
    # Deconvolution's settings are a convolution_param (net_spec, as pycaffe's, only files
    # keyword arguments under a <type>_param of the type's own name)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(
        num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad))
    return n


def assert_map(result, axis, a, b):
    ax_r, a_r, b_r = result
    assert ax_r == axis
    np.testing.assert_array_equal(np.broadcast_to(a_r, np.shape(a)), a)
    np.testing.assert_array_equal(np.broadcast_to(b_r, np.shape(b)), b)


def test_module_identity():
    assert caffe.coord_map is caffepy.coord_map
    assert caffe.coord_map.crop is crop


# ---- Caffe's scenarios -------------------------------------------------------------------

def test_conv_pool_deconv():
    # conv 3x3: y = x - 1; pool 2/2: y = x/2 - 1/4; deconv 4/2: y = 2x + 3/2 -> identity
    n = coord_net_spec()
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0], [0.0])
    # pool 4/4: y = x/4 - 3/8; deconv 8/4: y = 4x + 7/2 -> data = deconv - 1
    n = coord_net_spec(pool=4, dstride=4)
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0], [-1.0])


def test_pass_through_and_1x1_conv():
    n = coord_net_spec()
    expected = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    n.relu_in_place = L.ReLU(n.conv1x1, in_place=True)
    for top in (n.relu, n.conv1x1, n.relu_in_place):
        assert_map(coord_map_from_to(top, n.data), expected[0], expected[1], expected[2])


@pytest.mark.parametrize("pad", [0, 1, 7, 10])
def test_padding(pad):
    # conv padding shifts by -pad, deconv padding by +pad; both cancel
    n = coord_net_spec(pad=pad)
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0], [-pad])
    n = coord_net_spec(dpad=pad)
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0], [pad])
    n = coord_net_spec(pad=pad, dpad=pad)
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0], [0.0])


def test_multi_bottom_conv_maps_each_pair_alike():
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10,
                                            kernel_size=5, stride=2, pad=0)
    # conv 5x5 stride 2: y = x/2 - 1, so x = 2y + 2
    assert_map(coord_map_from_to(n.conv_data, n.data), 1, [2.0], [2.0])
    assert_map(coord_map_from_to(n.conv_aux, n.aux), 1, [2.0], [2.0])
    # top i of a multi-bottom convolution comes from bottom i only
    with pytest.raises(UnconnectedTopsError):
        coord_map_from_to(n.conv_aux, n.data)


def test_rect_is_its_isotropic_parts():
    n3x3 = coord_net_spec(ks=3, stride=1, pad=0)
    n5x5 = coord_net_spec(ks=5, stride=2, pad=10)
    n3x5 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    # 5x5 stride 2 pad 10: y = x/2 + 4, then pool/deconv y = x + 1 -> data = 2 * deconv - 10
    assert_map(coord_map_from_to(n3x3.deconv, n3x3.data), 1, [1.0], [0.0])
    assert_map(coord_map_from_to(n5x5.deconv, n5x5.data), 1, [2.0], [-10.0])
    assert_map(coord_map_from_to(n3x5.deconv, n3x5.data), 1, [1.0, 2.0], [0.0, -10.0])


def test_nd_conv():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1],
                           pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    assert_map(coord_map_from_to(n.deconv, n.data), 1, [1.0, 1.0, 1.0], [0.0, -1.0, -2.0])


@pytest.mark.parametrize("offset", [0, 3, 10])
def test_crop_of_crop(offset):
    n = coord_net_spec()
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    assert_map(coord_map_from_to(n.crop, n.data), 1, [1.0], [offset])
    # the same given as crop_param
    n.crop2 = L.Crop(n.deconv, n.data, crop_param=dict(axis=2, offset=[offset, offset]))
    assert_map(coord_map_from_to(n.crop2, n.data), 1, [1.0], [offset, offset])


def test_crop_helper_makes_the_crop_layer():
    n = coord_net_spec()
    n.crop = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [0]
    n = coord_net_spec(pool=4, dstride=4)
    n.crop = crop(n.deconv, n.data)
    assert list(n.to_proto().layer[-1].crop_param.offset) == [1]


def test_crop_helper_net_runs_and_aligns():
    """crop(data, conv) for a 3x3 valid convolution crops 1 pixel: with a centre-tap kernel
    the convolution's output equals the cropped input, pixel for pixel."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 12, 10]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3)
    n.crop = crop(n.data, n.conv)
    assert list(n.to_proto().layer[-1].crop_param.offset) == [1]
    net = caffe.Net(n.to_proto(), caffe.TEST)
    w, bias = net.params["conv"]
    w.data[...] = 0
    w.data[0, 0, 1, 1] = 1
    bias.data[...] = 0
    x = np.random.default_rng(3).random((2, 1, 12, 10), dtype=np.float32)
    out = net.forward(data=x)
    assert out["crop"].shape == (2, 1, 10, 8)
    np.testing.assert_array_equal(out["crop"], x[:, :, 1:11, 1:9])
    np.testing.assert_array_equal(net.blobs["conv"].data, out["crop"])


def test_crop_helper_upsampled_net_shape():
    # 100 -> conv 3: 98 -> pool 4/4: 25 -> deconv 8/4: 104, cropped at 1 to 100
    n = coord_net_spec(pool=4, dstride=4)
    n.crop = crop(n.deconv, n.data)
    net = caffe.Net(n.to_proto(), caffe.TEST)
    assert net.blobs["deconv"].data.shape == (2, 10, 104, 104)
    assert net.blobs["crop"].data.shape == (2, 10, 100, 100)
    net.blobs["data"].data[...] = 1
    net.forward()
    np.testing.assert_array_equal(net.blobs["crop"].data,
                                  net.blobs["deconv"].data[:, :, 1:101, 1:101])


def test_catch_unconnected():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="no common input"):
        coord_map_from_to(n.ip, n.data)
    with pytest.raises(caffepy.CaffepyError):
        coord_map_from_to(n.ip, n.data)


def test_catch_scale_mismatch():
    n = coord_net_spec(pool=3, dstride=2)    # pool 3x, deconv 2x: scale 2/3
    # conv y = x - 1, pool y = x/3 - 1/3, deconv y = 2x + 3/2: deconv = 2/3 data + 1/6
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1
    np.testing.assert_allclose(a, [1.5], rtol=1e-15)
    np.testing.assert_allclose(b, [-0.25], rtol=1e-15)
    with pytest.raises(AssertionError, match="scales differ"):
        crop(n.deconv, n.data)
    with pytest.raises(CropError):
        crop(n.deconv, n.data)


def test_catch_negative_crop():
    n = coord_net_spec(dpad=10)     # deconv output smaller than its input
    with pytest.raises(AssertionError, match="negative"):
        crop(n.deconv, n.data)


def test_catch_fractional_crop():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=2)   # centre at +1/2
    assert_map(coord_map_from_to(n.data, n.conv), 1, [1.0], [-0.5])
    with pytest.raises(CropError, match="whole number"):
        crop(n.data, n.conv)


# ---- the per-layer rules -----------------------------------------------------------------

def _fn(top):
    return top.fn


def test_conv_params_and_maps():
    data = L.Input(shape=dict(dim=[1, 1, 9, 9]))
    conv = L.Convolution(data, num_output=1, kernel_size=3, stride=2, pad=1, dilation=2)
    axis, stride, extent, pad = conv_params(_fn(conv))
    assert axis == 1
    np.testing.assert_array_equal(stride, [2])
    np.testing.assert_array_equal(extent, [5])           # (3 - 1) * 2 + 1
    np.testing.assert_array_equal(pad, [1])
    assert_map(coord_map(_fn(conv)), 1, [0.5], [-0.5])    # (1 - 2) / 2
    hw = L.Convolution(data, num_output=1, kernel_h=3, kernel_w=5, stride_h=1, stride_w=2,
                       pad_h=0, pad_w=1)
    assert_map(coord_map(_fn(hw)), 1, [1.0, 0.5], [-1.0, -0.5])
    nested = L.Convolution(data, convolution_param=dict(num_output=1, kernel_size=[3, 5],
                                                        stride=[1, 2], pad=[0, 1], axis=1))
    assert_map(coord_map(_fn(nested)), 1, [1.0, 0.5], [-1.0, -0.5])
    deconv = L.Deconvolution(data, num_output=1, kernel_size=4, stride=2, pad=1)
    assert_map(coord_map(_fn(deconv)), 1, [2.0], [0.5])   # (4 - 1) / 2 - 1
    pool = L.Pooling(data, pooling_param=dict(pool=P.Pooling.AVE, kernel_size=3, stride=3))
    assert_map(coord_map(_fn(pool)), 1, [1 / 3], [-1 / 3])
    with pytest.raises(UndefinedMapException):
        coord_map(_fn(L.Pooling(data, pool=P.Pooling.MAX, global_pooling=True)))
    with pytest.raises(UndefinedMapException):
        coord_map(_fn(L.InnerProduct(data, num_output=2)))
    assert_map(coord_map(_fn(L.Crop(data, data, axis=3, offset=[2]))), 2, 1, [-2])
    assert_map(coord_map(_fn(L.Crop(data, data))), 1, 1, [0])    # Crop's defaults: axis 2, 0
    for type_name in ("ReLU", "Eltwise", "BatchNorm", "Scale", "Dropout", "Sigmoid"):
        assert coord_map(_fn(getattr(L, type_name)(data))) == (None, 1, 0)


def test_conv_then_matching_deconv_is_identity():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.down = L.Convolution(n.data, num_output=1, kernel_size=4, stride=2, pad=1)
    n.up = L.Deconvolution(n.down, num_output=1, kernel_size=4, stride=2, pad=1)
    assert_map(coord_map_from_to(n.up, n.data), 1, [1.0], [0.0])
    assert_map(coord_map_from_to(n.down, n.data), 1, [2.0], [0.5])   # x = 2y + 1/2
    assert_map(coord_map_from_to(n.data, n.down), 1, [0.5], [-0.25])


def test_compose_and_inverse():
    assert compose((None, 2, 1), (1, 3, 4)) == (1, 6, 9)    # 2 * (3x + 4) + 1
    assert compose((1, 2, 1), (None, 3, 4)) == (1, 6, 9)
    assert compose((None, 1, 0), (None, 1, 0)) == (None, 1, 0)
    assert inverse((1, 4.0, 2.0)) == (1, 0.25, -0.5)
    assert compose((1, 4.0, 2.0), inverse((1, 4.0, 2.0))) == (1, 1.0, 0.0)
    with pytest.raises(AxisMismatchException, match="axis 1 and axis 2"):
        compose((1, 1, 0), (2, 1, 0))
    assert issubclass(AxisMismatchException, caffepy.CaffepyError)


def test_axis_mismatch_through_a_net():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 8, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, axis=2)
    n.crop = L.Crop(n.conv, n.conv, axis=2)      # first cropped axis 2: map axis 1
    with pytest.raises(AxisMismatchException):
        coord_map_from_to(n.crop, n.data)
