"""ONNX export (caffepy.export): every exported graph is run by onnxruntime and its outputs
compared with caffepy's own forward (within 1e-5), on the example nets and layer by layer;
pooling shapes where Caffe's rounding differs from the naive formulas are checked against
hand-computed sizes and values; refused layers are all named in one error."""
import logging
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX export tests need the onnx package "
                                          "(pip install 'caffepy[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime "
                                                "(pip install 'caffepy[onnx]')")

import caffepy  # noqa: E402
from caffepy.backend import to_numpy  # noqa: E402
from caffepy.export import ExportError, export_onnx, load_for_export, to_onnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


@pytest.fixture(autouse=True)
def _quiet():
    logger = logging.getLogger("caffepy")
    old = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(old)


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _fill_inputs(net, rng, gen=None):
    feeds = {}
    for name in net.inputs:
        shape = net.blobs[name].data.shape
        value = gen(name, shape, rng) if gen else rng.standard_normal(shape)
        net.blobs[name].data[...] = np.asarray(value, dtype=np.float32)
        feeds[name] = np.array(to_numpy(net.blobs[name].data), dtype=np.float32)
    return feeds


def _compare(net, feeds, outputs=None, opset=13, path=None):
    """Export ``net`` after its forward; onnxruntime's outputs must equal caffepy's blobs."""
    net.forward()
    model = to_onnx(net, path, outputs=outputs, opset=opset)
    sess = _session(model)
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: np.asarray(feeds[n], dtype=np.float32) for n in names})
    result = {}
    for info, value in zip(sess.get_outputs(), got):
        want = to_numpy(net.blobs[info.name].data)
        assert value.shape == want.shape, info.name
        scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        np.testing.assert_allclose(value, want, rtol=TOL, atol=TOL * scale, err_msg=info.name)
        result[info.name] = value
    return model, result


def _net_text(inputs, body):
    lines = ['name: "t"']
    for name, shape in inputs.items():
        lines.append('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }'
                     % (name, name, " ".join("dim: %d" % d for d in shape)))
    return "\n".join(lines) + "\n" + body


def _layer_roundtrip(inputs, body, outputs=None, gen=None, prep=None, seed=0):
    net = caffepy.Net(_net_text(inputs, body),
                      caffepy.TEST)
    if prep:
        prep(net)
    feeds = _fill_inputs(net, np.random.default_rng(seed), gen)
    return net, _compare(net, feeds, outputs)


G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'

# (id, input shapes, layer text)
LAYER_CASES = [
    ("conv", {"x": (2, 3, 9, 8)},
     'layer { name: "l" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 4 kernel_size: 3 stride: 2 pad: 1 %s } }' % G),
    ("conv_group_dilation_rect", {"x": (2, 4, 11, 10)},
     'layer { name: "l" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 1 '
     'dilation: 2 group: 2 %s } }' % G),
    ("conv_nobias_3d", {"x": (1, 2, 5, 6, 7)},
     'layer { name: "l" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 2 bias_term: false weight_filler { type: "gaussian" std: 1 }'
     ' } }'),
    ("deconv", {"x": (2, 4, 5, 6)},
     'layer { name: "l" type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 %s } }' % G),
    ("deconv_dilation", {"x": (1, 3, 4, 4)},
     'layer { name: "l" type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 2 kernel_size: 3 stride: 3 dilation: 2 %s } }' % G),
    ("pool_max", {"x": (2, 3, 8, 8)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX '
     'kernel_size: 3 stride: 2 } }'),
    ("pool_ave_pad", {"x": (2, 3, 7, 6)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
     'kernel_size: 3 stride: 2 pad: 1 } }'),
    ("pool_floor_round", {"x": (1, 2, 8, 9)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
     'kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }'),
    ("pool_rect", {"x": (2, 3, 7, 8)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
     'kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 } }'),
    ("spp_max", {"x": (2, 3, 7, 9)},
     'layer { name: "l" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 } }'),
    ("spp_ave", {"x": (2, 2, 10, 6)},
     'layer { name: "l" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 '
     'pool: AVE } }'),
    ("spp_one_level", {"x": (2, 2, 5, 6)},
     'layer { name: "l" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 } }'),
    ("pool_global_max", {"x": (2, 3, 5, 4)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX '
     'global_pooling: true } }'),
    ("pool_global_ave", {"x": (2, 3, 5, 4)},
     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
     'global_pooling: true } }'),
    ("ip", {"x": (3, 2, 3, 2)},
     'layer { name: "l" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 5 %s } }' % G),
    ("ip_axis2_transpose", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 6 axis: 2 transpose: true %s } }' % G),
    ("ip_nobias", {"x": (4, 7)},
     'layer { name: "l" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 3 bias_term: false weight_filler { type: "gaussian" std: 1 } } }'),
    ("relu", {"x": (2, 3, 4)}, 'layer { name: "l" type: "ReLU" bottom: "x" top: "y" }'),
    ("leaky_relu", {"x": (2, 3, 4)},
     'layer { name: "l" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 } }'),
    ("prelu", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "PReLU" bottom: "x" top: "y" prelu_param { filler { '
     'type: "gaussian" std: 0.5 } } }'),
    ("prelu_shared_2d", {"x": (4, 3)},
     'layer { name: "l" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true '
     'filler { type: "constant" value: 0.3 } } }'),
    ("elu", {"x": (2, 3, 4)},
     'layer { name: "l" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.7 } }'),
    ("sigmoid", {"x": (2, 3, 4)}, 'layer { name: "l" type: "Sigmoid" bottom: "x" top: "y" }'),
    ("tanh", {"x": (2, 3, 4)}, 'layer { name: "l" type: "TanH" bottom: "x" top: "y" }'),
    ("clip", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.8 } }'),
    ("swish", {"x": (2, 3, 4)}, 'layer { name: "l" type: "Swish" bottom: "x" top: "y" }'),
    ("swish_beta", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.7 } }'),
    ("absval", {"x": (2, 3, 4)}, 'layer { name: "l" type: "AbsVal" bottom: "x" top: "y" }'),
    ("power", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 0.5 '
     'shift: 1.5 } }'),
    ("power_identity", {"x": (2, 3)}, 'layer { name: "l" type: "Power" bottom: "x" top: "y" }'),
    ("exp", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Exp" bottom: "x" top: "y" exp_param { scale: 0.5 shift: 0.3 } }'),
    ("exp_base2", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Exp" bottom: "x" top: "y" exp_param { base: 2 scale: 0.7 '
     'shift: -0.4 } }'),
    ("bnll", {"x": (2, 3, 4)}, 'layer { name: "l" type: "BNLL" bottom: "x" top: "y" }'),
    ("threshold", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Threshold" bottom: "x" top: "y" threshold_param { '
     'threshold: 0.2 } }'),
    ("lrn_across", {"x": (2, 7, 4, 5)},
     'layer { name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 '
     'alpha: 0.1 beta: 0.75 k: 2 } }'),
    ("lrn_within", {"x": (2, 3, 6, 5)},
     'layer { name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 '
     'alpha: 0.2 beta: 0.75 norm_region: WITHIN_CHANNEL } }'),
    ("softmax", {"x": (2, 5, 3)}, 'layer { name: "l" type: "Softmax" bottom: "x" top: "y" }'),
    ("softmax_axis", {"x": (2, 5, 3)},
     'layer { name: "l" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: -1 } }'),
    ("concat", {"x": (2, 3, 4), "x2": (2, 2, 4)},
     'layer { name: "l" type: "Concat" bottom: "x" bottom: "x2" top: "y" }'),
    ("concat_axis", {"x": (2, 3, 4), "x2": (2, 3, 1)},
     'layer { name: "l" type: "Concat" bottom: "x" bottom: "x2" top: "y" concat_param { '
     'axis: 2 } }'),
    ("slice_points", {"x": (2, 7, 3)},
     'layer { name: "l" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { '
     'slice_point: 2 slice_point: 3 } }'),
    ("slice_equal", {"x": (2, 3, 6)},
     'layer { name: "l" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: -1 } }'),
    ("split", {"x": (2, 3)},
     'layer { name: "l" type: "Split" bottom: "x" top: "a" top: "b" }\n'
     'layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { '
     'operation: PROD } }'),
    ("eltwise_sum_coeff", {"x": (2, 3, 4), "x2": (2, 3, 4), "x3": (2, 3, 4)},
     'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x2" bottom: "x3" top: "y" '
     'eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }'),
    ("eltwise_sum", {"x": (2, 3), "x2": (2, 3)},
     'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x2" top: "y" }'),
    ("eltwise_prod", {"x": (2, 3), "x2": (2, 3), "x3": (2, 3)},
     'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x2" bottom: "x3" top: "y" '
     'eltwise_param { operation: PROD } }'),
    ("eltwise_max", {"x": (2, 3), "x2": (2, 3), "x3": (2, 3)},
     'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x2" bottom: "x3" top: "y" '
     'eltwise_param { operation: MAX } }'),
    ("flatten", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 '
     'end_axis: 2 } }'),
    ("reshape", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 '
     'dim: -1 dim: 2 } } }'),
    ("crop", {"x": (2, 3, 8, 9), "x2": (2, 3, 5, 4)},
     'layer { name: "l" type: "Crop" bottom: "x" bottom: "x2" top: "y" crop_param { axis: 2 '
     'offset: 1 offset: 3 } }'),
    ("crop_one_offset", {"x": (2, 4, 6, 6), "x2": (2, 2, 3, 3)},
     'layer { name: "l" type: "Crop" bottom: "x" bottom: "x2" top: "y" crop_param { axis: 1 '
     'offset: 1 } }'),
    ("dropout", {"x": (2, 3)},
     'layer { name: "l" type: "Dropout" bottom: "x" top: "d" dropout_param { '
     'dropout_ratio: 0.3 } }\n'
     'layer { name: "m" type: "AbsVal" bottom: "d" top: "y" }'),
    ("tile", {"x": (2, 3, 2)},
     'layer { name: "l" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 } }'),
    ("reduction_sum", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Reduction" bottom: "x" top: "y" reduction_param { axis: 1 } }'),
    ("reduction_asum", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Reduction" bottom: "x" top: "y" reduction_param { '
     'operation: ASUM axis: 2 coeff: 0.5 } }'),
    ("reduction_sumsq_all", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Reduction" bottom: "x" top: "y" reduction_param { '
     'operation: SUMSQ axis: 0 } }'),
    ("reduction_mean", {"x": (2, 3, 4)},
     'layer { name: "l" type: "Reduction" bottom: "x" top: "y" reduction_param { '
     'operation: MEAN axis: -1 coeff: -2 } }'),
    ("scale", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
     'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }'),
    ("scale_axes", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "Scale" bottom: "x" top: "y" scale_param { axis: 2 '
     'num_axes: 1 filler { type: "gaussian" std: 1 } } }'),
    ("scale_two_bottoms", {"x": (2, 3, 4, 5), "x2": (2, 3)},
     'layer { name: "l" type: "Scale" bottom: "x" bottom: "x2" top: "y" scale_param { '
     'axis: 0 bias_term: true bias_filler { type: "gaussian" std: 1 } } }'),
    ("bias", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "Bias" bottom: "x" top: "y" bias_param { filler { '
     'type: "gaussian" std: 1 } } }'),
    ("bias_two_bottoms", {"x": (2, 3, 4), "x2": (3, 4)},
     'layer { name: "l" type: "Bias" bottom: "x" bottom: "x2" top: "y" }'),
    ("mvn", {"x": (2, 3, 4, 5)}, 'layer { name: "l" type: "MVN" bottom: "x" top: "y" }'),
    ("mvn_across_mean_only", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true '
     'normalize_variance: false } }'),
    ("mvn_across", {"x": (2, 3, 4, 5)},
     'layer { name: "l" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true '
     '} }'),
    ("batchnorm_batch_stats", {"x": (4, 3, 2, 5)},
     'layer { name: "l" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { '
     'use_global_stats: false } }'),
    ("parameter", {"x": (2, 3)},
     'layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } '
     '} param { lr_mult: 1 } }\n'
     'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "w" top: "y" }'),
]


@pytest.mark.parametrize("inputs,body", [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_matches_caffepy(inputs, body):
    def prep(net):
        rng = np.random.default_rng(1)
        if "Parameter" in body:
            net.params["p"][0].data[...] = rng.standard_normal((2, 3))
    net, (model, out) = _layer_roundtrip(inputs, body, prep=prep)
    assert out, "no outputs"
    # every top of the layer under test is an output
    tops = [net.blob_names[t] for t in net.top_id_vecs[-1]]
    assert set(tops) <= set(out) or body.count("layer {") > 1


def test_in_place_chain_keeps_caffe_names():
    # conv -> ReLU in place -> BatchNorm + Scale in place: the output carries the blob's name
    body = ('layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { '
            'num_output: 3 kernel_size: 3 %s } }\n'
            'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }\n'
            'layer { name: "s" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true'
            ' filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }'
            % G)

    def prep(net):
        mean, var, s = net.params["bn"]
        mean.data[...] = [0.5, -1.0, 2.0]
        var.data[...] = [4.0, 0.5, 9.0]
        s.data[...] = 2.0      # Caffe's scale factor: the stored statistics are sums
    net, (model, out) = _layer_roundtrip({"x": (2, 2, 6, 6)}, body, prep=prep)
    assert [o.name for o in model.graph.output] == ["c"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "BatchNormalization",
                                                     "Mul", "Add"]
    # by hand: BatchNorm uses mean/2 and var/2; the convolution is run again on its own
    conv = net.blobs["c"]
    net2 = caffepy.Net(_net_text({"x": (2, 2, 6, 6)}, body.split("\n")[0]), caffepy.TEST)
    net2.params["c"][0].data[...] = to_numpy(net.params["c"][0].data)
    net2.params["c"][1].data[...] = to_numpy(net.params["c"][1].data)
    net2.blobs["x"].data[...] = to_numpy(net.blobs["x"].data)
    net2.forward()
    pre = np.maximum(to_numpy(net2.blobs["c"].data), 0)
    gamma = to_numpy(net.params["s"][0].data)
    beta = to_numpy(net.params["s"][1].data)
    m, v = np.array([0.25, -0.5, 1.0]), np.array([2.0, 0.25, 4.5])
    want = ((pre - m[None, :, None, None]) / np.sqrt(v + 1e-5)[None, :, None, None]
            * gamma[None, :, None, None] + beta[None, :, None, None])
    np.testing.assert_allclose(out["c"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(conv.data), want, rtol=1e-4, atol=1e-5)


def test_batchnorm_zero_scale_factor():
    # Caffe: a scale factor of 0 means statistics of 0 (y = x / sqrt(eps))
    def prep(net):
        net.params["l"][0].data[...] = 3.0
        net.params["l"][1].data[...] = 3.0
        net.params["l"][2].data[...] = 0.0
    net, (model, out) = _layer_roundtrip(
        {"x": (2, 3)}, 'layer { name: "l" type: "BatchNorm" bottom: "x" top: "y" '
        'batch_norm_param { eps: 0.01 } }', prep=prep)
    np.testing.assert_allclose(out["y"], to_numpy(net.blobs["x"].data) / np.sqrt(0.01),
                               rtol=1e-5)


# -- pooling: Caffe's sizes where the naive formulas differ ---------------------------------

# (H, W, kernel, stride, pad, Caffe's pooled H and W)
POOL_SHAPES = [
    (8, 8, 3, 2, 0, 4, 4),    # ceil: (8-3)/2 -> 3, floor would give 3
    (6, 6, 3, 2, 1, 4, 4),    # ceil with padding: floor would give 3
    (4, 4, 2, 3, 1, 2, 2),    # ceil gives 3, the last window starts in the padding: dropped
    (7, 5, 3, 2, 1, 4, 3),    # ceil equal to floor on H, ceil > floor on W
    (5, 9, 4, 3, 2, 3, 4),    # pad 2: extra end padding beyond pad on W
    (13, 13, 3, 2, 0, 6, 6),  # CaffeNet's pool1 geometry
]


def _pool_net(pool, H, W, k, s, p):
    return _net_text({"x": (2, 3, H, W)},
                     'layer { name: "l" type: "Pooling" bottom: "x" top: "y" pooling_param { '
                     'pool: %s kernel_size: %d stride: %d pad: %d } }' % (pool, k, s, p))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("H,W,k,s,p,oh,ow", POOL_SHAPES)
def test_pooling_edge_shapes(pool, H, W, k, s, p, oh, ow):
    net = caffepy.Net(_pool_net(pool, H, W, k, s, p), caffepy.TEST)
    assert net.blobs["y"].data.shape == (2, 3, oh, ow)
    feeds = _fill_inputs(net, np.random.default_rng(3))
    model, out = _compare(net, feeds)
    assert out["y"].shape == (2, 3, oh, ow)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_drop_rule_from_the_other_axis(pool):
    # pad_h 1, pad_w 0: Caffe drops a last window starting in the padding on W too (its rule
    # looks at pad_h or pad_w). W = 5, kernel_w 1, stride_w 3: ceil gives 3 columns (0, 3, 6),
    # the one at 6 is dropped: 2. H = 6, kernel_h 3, stride_h 2, pad_h 1: 4 rows.
    net = caffepy.Net(_net_text({"x": (1, 2, 6, 5)},
                                'layer { name: "l" type: "Pooling" bottom: "x" top: "y" '
                                'pooling_param { pool: %s kernel_h: 3 kernel_w: 1 stride_h: 2 '
                                'stride_w: 3 pad_h: 1 pad_w: 0 } }' % pool), caffepy.TEST)
    assert net.blobs["y"].data.shape == (1, 2, 4, 2)
    feeds = _fill_inputs(net, np.random.default_rng(8))
    model, out = _compare(net, feeds)
    x = feeds["x"][0, 1]
    # the last row window starts at 3·2 - 1 = 5: row 5 and padded row 6 (divisor 2·1);
    # column window 1 is column 3
    want = x[5, 3] if pool == "MAX" else x[5, 3] / 2
    np.testing.assert_allclose(out["y"][0, 1, 3, 1], want, rtol=1e-6)


def test_spp_by_hand():
    # pyramid 2 on 4x4: level 0 one 4x4 window, level 1 four 2x2 windows, concatenated
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    net, (model, out) = _layer_roundtrip(
        {"x": (1, 1, 4, 4)}, 'layer { name: "l" type: "SPP" bottom: "x" top: "y" spp_param { '
        'pyramid_height: 2 } }', gen=lambda name, shape, rng: x)
    np.testing.assert_array_equal(out["y"], [[15, 5, 7, 13, 15]])


def test_pooling_ave_divisor_clamped_to_padded_extent():
    # H = W = 4, kernel 2, stride 3, pad 1: Caffe's windows start at -1 and 2 and cover rows
    # [-1, 1) and [2, 4); the divisor counts padded cells inside [-1, 5): 2 per axis, so 4.
    net = caffepy.Net(_pool_net("AVE", 4, 4, 2, 3, 1), caffepy.TEST)
    x = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2, 3, 4, 4)
    net.blobs["x"].data[...] = x
    model, out = _compare(net, {"x": x})
    p = x[0, 0]
    want = np.array([[p[0, 0] / 4, (p[0, 2] + p[0, 3]) / 4],
                     [(p[2, 0] + p[3, 0]) / 4, (p[2, 2] + p[2, 3] + p[3, 2] + p[3, 3]) / 4]])
    np.testing.assert_allclose(out["y"][0, 0], want, rtol=1e-6)


def test_pooling_ave_extra_end_padding_not_counted():
    # H = 6, kernel 3, stride 2, pad 1: 4 outputs (floor would give 3); the last window
    # starts at 5 and covers row 5 and one padded row (6); its divisor is 2 per axis, not 3.
    net = caffepy.Net(_pool_net("AVE", 6, 6, 3, 2, 1), caffepy.TEST)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.blobs["x"].data[...] = x
    model, out = _compare(net, {"x": x})
    assert out["y"].shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out["y"][1, 2, 3, 3], x[1, 2, 5, 5] / 4, rtol=1e-6)
    np.testing.assert_allclose(out["y"][1, 2, 0, 0], x[1, 2, :2, :2].sum() / 9, rtol=1e-5)


def test_pooling_max_ignores_padding():
    net = caffepy.Net(_pool_net("MAX", 4, 4, 2, 3, 1), caffepy.TEST)
    x = -np.ones((2, 3, 4, 4), dtype=np.float32) - np.arange(16).reshape(4, 4)
    net.blobs["x"].data[...] = x
    model, out = _compare(net, {"x": x})
    # window rows/cols [-1, 1): only x[0, 0] = -1 is real, and the padding does not win
    assert out["y"][0, 0, 0, 0] == -1.0
    assert out["y"][0, 0, 1, 1] == x[0, 0, 2:4, 2:4].max() == -11.0


# -- layers with special inputs ---------------------------------------------------------------

def test_log_layer():
    gen = lambda name, shape, rng: rng.uniform(0.1, 3.0, shape)  # noqa: E731
    for text in ('log_param { }', 'log_param { base: 10 scale: 2 shift: 0.5 }',
                 'log_param { base: 2 }'):
        net, (model, out) = _layer_roundtrip(
            {"x": (2, 3, 4)}, 'layer { name: "l" type: "Log" bottom: "x" top: "y" %s }' % text,
            gen=gen)
    x = to_numpy(net.blobs["x"].data)
    np.testing.assert_allclose(out["y"], np.log2(x), rtol=1e-5, atol=1e-6)


def test_embed_layer():
    gen = lambda name, shape, rng: rng.integers(0, 7, shape)  # noqa: E731
    net, (model, out) = _layer_roundtrip(
        {"x": (2, 5)}, 'layer { name: "l" type: "Embed" bottom: "x" top: "y" embed_param { '
        'input_dim: 7 num_output: 4 %s } }' % G, gen=gen)
    x = to_numpy(net.blobs["x"].data).astype(int)
    w, b = (to_numpy(p.data) for p in net.params["l"])
    np.testing.assert_allclose(out["y"], w[x] + b, rtol=1e-6)


def test_batch_reindex_layer():
    gen = lambda name, shape, rng: (rng.standard_normal(shape) if name == "x"  # noqa: E731
                                    else np.array([2, 0, 2, 1]))
    net, (model, out) = _layer_roundtrip(
        {"x": (3, 2, 2), "x2": (4,)},
        'layer { name: "l" type: "BatchReindex" bottom: "x" bottom: "x2" top: "y" }', gen=gen)
    x = to_numpy(net.blobs["x"].data)
    np.testing.assert_allclose(out["y"], x[[2, 0, 2, 1]])


@pytest.mark.parametrize("param,shape", [
    ("top_k: 2", (3, 2, 3)),
    ("top_k: 3 out_max_val: true", (3, 2, 3)),
    ("axis: 1 top_k: 2", (3, 4, 2)),
    ("axis: 2 out_max_val: true", (3, 4, 2)),
    ("", (3, 10)),
])
def test_argmax_layer_with_ties(param, shape):
    # values with ties: Caffe lists the larger index first among equal values
    gen = lambda name, shp, rng: rng.integers(0, 3, shp)  # noqa: E731
    net, (model, out) = _layer_roundtrip(
        {"x": shape}, 'layer { name: "l" type: "ArgMax" bottom: "x" top: "y" argmax_param { '
        '%s } }' % param, gen=gen)
    if param == "top_k: 2":
        x = to_numpy(net.blobs["x"].data).reshape(3, -1)
        for n in range(3):
            best = np.flatnonzero(x[n] == x[n].max())
            assert out["y"][n, 0, 0] == best[-1]


def test_lrn_across_by_hand():
    net, (model, out) = _layer_roundtrip(
        {"x": (1, 3, 1, 1)}, 'layer { name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { '
        'local_size: 3 alpha: 0.3 beta: 0.5 k: 1 } }',
        gen=lambda name, shape, rng: np.array([1.0, 2.0, 3.0]).reshape(shape))
    # channel 1 sees channels 0..2: 1 + 0.3/3 * (1 + 4 + 9) = 2.4
    np.testing.assert_allclose(out["y"][0, 1, 0, 0], 2.0 / np.sqrt(2.4), rtol=1e-6)


def test_eltwise_sum_by_hand():
    gen = lambda name, shape, rng: np.full(shape, {"x": 1.0, "x2": 2.0, "x3": 3.0}[name])  # noqa
    net, (model, out) = _layer_roundtrip(
        {"x": (1, 2), "x2": (1, 2), "x3": (1, 2)}, LAYER_CASES[
            [c[0] for c in LAYER_CASES].index("eltwise_sum_coeff")][2], gen=gen)
    np.testing.assert_allclose(out["y"], [[6.0, 6.0]])       # 1 - 0.5*2 + 2*3


# -- graph inputs, dropped layers, refusals -------------------------------------------------

def test_refused_layers_all_named_at_once():
    body = ('layer { name: "sp" type: "Filter" bottom: "x" bottom: "sel" top: "s" }\n'
            'layer { name: "st" type: "Pooling" bottom: "x" top: "p" top: "mask" pooling_param'
            ' { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "ok" type: "ReLU" bottom: "x" top: "r" }\n'
            'layer { name: "im" type: "Im2col" bottom: "x" top: "c" convolution_param { '
            'kernel_size: 2 } }\n')
    net = caffepy.Net(_net_text({"x": (1, 2, 4, 4), "sel": (1,)}, body), caffepy.TEST)
    with pytest.raises(ExportError) as e:
        to_onnx(net)
    msg = str(e.value)
    assert "3 layers" in msg
    for name in ("'sp' (Filter)", "'st' (Pooling)", "'im' (Im2col)"):
        assert name in msg
    assert "'ok'" not in msg
    assert "mask" in msg


def test_train_phase_net_refused():
    net = caffepy.Net(_net_text({"x": (1, 2)}, 'layer { name: "l" type: "ReLU" bottom: "x" '
                                               'top: "y" }'), caffepy.TRAIN)
    with pytest.raises(ExportError, match="TRAIN phase"):
        to_onnx(net)


def test_opset_range():
    net = caffepy.Net(os.path.join(ROOT, "examples/mnist/lenet.prototxt"), caffepy.TEST)
    with pytest.raises(ExportError, match="opset 12"):
        to_onnx(net, opset=12)
    feeds = _fill_inputs(net, np.random.default_rng(0))
    model, out = _compare(net, feeds, outputs=["ip2"], opset=17)
    assert model.opset_import[0].version == 17


def test_unknown_output_blob():
    net = caffepy.Net(os.path.join(ROOT, "examples/mnist/lenet.prototxt"), caffepy.TEST)
    with pytest.raises(ExportError, match="'nope'"):
        to_onnx(net, outputs=["nope"])


def _labels_too(name, shape, rng):
    return rng.integers(0, 10, shape) if name == "label" else rng.standard_normal(shape)


def _example_roundtrip(path, input_shapes=None, seed=0):
    """Every blob of the net (not only the outputs) must match."""
    net = load_for_export(os.path.join(ROOT, path), input_shapes=input_shapes)
    rng = np.random.default_rng(seed)
    for name, lay in zip(net.layer_names, net.layers):
        if lay.type == "BatchNorm":    # trained-like statistics (the fillers leave zeros)
            mean, var, factor = net.params[name]
            mean.data[...] = rng.standard_normal(mean.data.shape) * 0.1 * 3
            var.data[...] = rng.uniform(0.5, 2.0, var.data.shape) * 3
            factor.data[...] = 3.0
    feeds = _fill_inputs(net, rng, _labels_too)
    dropped = {net.blob_names[t] for i, lay in enumerate(net.layers)
               if lay.type == "Accuracy" or lay.type.endswith("Loss") for t in net.top_id_vecs[i]}
    blobs = [b for b in net.blobs if b not in net.inputs and "_split_" not in b
             and b not in dropped]
    model, out = _compare(net, feeds, outputs=blobs)
    assert set(out) == set(blobs)
    net.close()
    return net, model, out


def test_lenet_deploy(tmp_path):
    net, model, out = _example_roundtrip("examples/mnist/lenet.prototxt", {"data": [4, 1, 28, 28]})
    assert [i.name for i in model.graph.input] == ["data"]
    # the default outputs: Caffe's net outputs
    default = to_onnx(net)
    assert [o.name for o in default.graph.output] == ["prob"]
    dims = [d.dim_value for d in default.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [4, 10]
    np.testing.assert_allclose(out["prob"].sum(axis=1), np.ones(4), rtol=1e-5)


def test_cifar10_quick_deploy():
    _example_roundtrip("examples/cifar10/cifar10_quick.prototxt", {"data": [2, 3, 32, 32]})


def test_cifar10_full_deploy():
    # LRN (WITHIN_CHANNEL) and ceil-mode pooling with padding
    net, model, out = _example_roundtrip("examples/cifar10/cifar10_full.prototxt",
                                         {"data": [2, 3, 32, 32]})
    assert "AveragePool" in [n.op_type for n in model.graph.node]


def test_cifar10_full_bn_train_val_with_given_shapes():
    # the train_test net's TEST phase: Data layer -> graph input, losses and Accuracy left out
    net, model, out = _example_roundtrip("examples/cifar10/cifar10_full_sigmoid_train_test_bn"
                                         ".prototxt", {"data": [2, 3, 32, 32], "label": [2]})
    assert [i.name for i in model.graph.input] == ["data"]
    types = {lp.type for lp in net.layers}
    assert "BatchNorm" in types
    default = to_onnx(net)
    assert [o.name for o in default.graph.output] == ["ip1"]


def test_lenet_train_val_reads_shapes_from_its_source(tmp_path):
    # the Data layer's shapes come from the first record of its LMDB (no -input_shape)
    from caffepy.data.datum import array_to_datum
    from caffepy.data.db import write_lmdb
    rng = np.random.default_rng(7)
    db = str(tmp_path / "test_lmdb")
    write_lmdb(db, [(b"%08d" % i, array_to_datum(rng.integers(0, 256, (1, 28, 28),
                                                              dtype=np.uint8), i % 10))
                    for i in range(3)], map_size=1 << 20)
    with open(os.path.join(ROOT, "examples/mnist/lenet_train_test.prototxt")) as f:
        text = f.read()
    text = text.replace("examples/mnist/mnist_test_lmdb", db).replace(
        "examples/mnist/mnist_train_lmdb", str(tmp_path / "absent_train_lmdb"))
    net_path = tmp_path / "lenet_train_test.prototxt"
    net_path.write_text(text)
    out_path = tmp_path / "lenet.onnx"
    model = export_onnx(str(net_path), str(out_path))
    loaded = onnx.load(str(out_path))
    assert [i.name for i in loaded.graph.input] == ["data"]
    dims = [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [100, 1, 28, 28]          # the TEST layer's batch_size, the record's C, H, W
    assert [o.name for o in loaded.graph.output] == ["ip2"]
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    # the exported graph computes what the net does on the same input
    net = load_for_export(str(net_path))
    feeds = _fill_inputs(net, rng, _labels_too)
    _compare(net, feeds, outputs=["ip2", "pool2"])


def test_train_val_without_source_or_shapes_names_the_layer(tmp_path):
    with open(os.path.join(ROOT, "examples/cifar10/cifar10_quick_train_test.prototxt")) as f:
        text = f.read()
    text = text.replace("examples/cifar10/cifar10_test_lmdb", str(tmp_path / "absent_lmdb"))
    path = tmp_path / "quick.prototxt"
    path.write_text(text)
    with pytest.raises(ExportError) as e:
        load_for_export(str(path))
    msg = str(e.value)
    assert "'cifar' (Data)" in msg and "data, label" in msg and "-input_shape data=" in msg
    assert "absent_lmdb" in msg


def test_weights_and_command_line(tmp_path, capsys):
    from caffepy.cli import main
    model = os.path.join(ROOT, "examples/mnist/lenet.prototxt")
    weights = str(tmp_path / "w.caffemodel")
    src = caffepy.Net(model, caffepy.TEST)
    rng = np.random.default_rng(11)
    for blobs in src.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * 0.1
    src.save(weights)
    out_path = tmp_path / "lenet.onnx"
    rc = main(["export", "-model", model, "-weights", weights, "-onnx", str(out_path),
               "-input_shape", "data=3,1,28,28", "-output", "ip2", "-output=prob"])
    assert rc == 0, capsys.readouterr().err
    assert "ip2(3,10)" in capsys.readouterr().out
    net = caffepy.Net(model, caffepy.TEST, weights=weights)
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    x = np.random.default_rng(2).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    ip2, prob = sess.run(["ip2", "prob"], {"data": x})
    np.testing.assert_allclose(ip2, to_numpy(net.blobs["ip2"].data), rtol=TOL, atol=TOL * 10)
    np.testing.assert_allclose(prob, to_numpy(net.blobs["prob"].data), rtol=TOL, atol=TOL)
    # the file's weights, not the fillers': conv1's bias is in the graph
    bias = [t for t in onnx.load(str(out_path)).graph.initializer if t.name == "conv1/bias"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(bias[0]),
                                  to_numpy(src.params["conv1"][1].data))


def test_command_line_errors(tmp_path, capsys):
    from caffepy.cli import main
    assert main(["export", "-model", "x.prototxt"]) != 0
    assert "-onnx" in capsys.readouterr().err
    assert main(["export", "-model", os.path.join(ROOT, "examples/mnist/lenet.prototxt"),
                 "-onnx", str(tmp_path / "a.onnx"), "-input_shape", "data"]) != 0
    assert "BLOB=D,D" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.slow
def test_caffenet_deploy():
    _example_roundtrip("models/bvlc_reference_caffenet/deploy.prototxt",
                       {"data": [1, 3, 227, 227]})


def test_googlenet_deploy():
    # about a second: inception Concat, ceil-mode pooling, LRN, global-size AVE pooling
    net, model, out = _example_roundtrip("models/bvlc_googlenet/deploy.prototxt",
                                         {"data": [1, 3, 224, 224]})
    assert out["prob"].shape == (1, 1000)


def test_legacy_input_fields_and_batch_override(tmp_path):
    # a deploy net with the old input / input_dim fields; -input_shape changes its batch size
    text = ('name: "legacy"\ninput: "data"\ninput_dim: 10\ninput_dim: 2\ninput_dim: 5\n'
            'input_dim: 5\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
            'num_output: 2 kernel_size: 3 %s } }\n'
            'layer { name: "d" type: "Dropout" bottom: "c" top: "d" }\n' % G)
    path = tmp_path / "legacy.prototxt"
    path.write_text(text)
    net = load_for_export(str(path), input_shapes={"data": [3, 2, 5, 5]})
    assert net.blobs["data"].data.shape == (3, 2, 5, 5)
    feeds = _fill_inputs(net, np.random.default_rng(4))
    model, out = _compare(net, feeds)
    # Dropout is a wire: its top is an Identity of the convolution's output
    assert [o.name for o in model.graph.output] == ["d"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Identity"]
    np.testing.assert_allclose(out["d"], to_numpy(net.blobs["c"].data), rtol=TOL, atol=TOL)


def test_in_place_on_an_input_keeps_the_input_name():
    # the graph input keeps "x"; the final version of the blob is the output "x#2"
    net = caffepy.Net(_net_text({"x": (2, 3)},
                                'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                                'layer { name: "s" type: "TanH" bottom: "x" top: "x" }'),
                      caffepy.TEST)
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -0.1, 0.0]], dtype=np.float32)
    model = to_onnx(net)
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["x#2"]
    got, = _session(model).run(None, {"x": x})
    np.testing.assert_allclose(got, np.tanh(np.maximum(x, 0)), rtol=1e-6)


def test_pooling_window_wholly_outside_refused():
    # no padding, ceil rounding: H = 5, kernel 1, stride 3 gives windows at 0, 3 and 6
    net = caffepy.Net(_pool_net("MAX", 5, 5, 1, 3, 0), caffepy.TEST)
    with pytest.raises(ExportError, match="wholly outside"):
        to_onnx(net)


PY_DATA = '''
import numpy as np
import caffepy


class Source(caffepy.Layer):
    def setup(self, bottom, top):
        top[0].reshape(2, 3)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = 1.0

    def backward(self, top, propagate_down, bottom):
        pass
'''


def test_python_data_layer_becomes_an_input_when_shapes_are_given(tmp_path, monkeypatch):
    (tmp_path / "onnx_src_layer.py").write_text(PY_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = ('name: "py"\n'
            'layer { name: "src" type: "Python" top: "data" python_param { '
            'module: "onnx_src_layer" layer: "Source" } }\n'
            'layer { name: "l" type: "Sigmoid" bottom: "data" top: "y" }\n')
    path = tmp_path / "py.prototxt"
    path.write_text(text)
    net = caffepy.Net(str(path), caffepy.TEST)
    with pytest.raises(ExportError, match=r"'src' \(Python\).*-input_shape"):
        to_onnx(net)
    net = load_for_export(str(path), input_shapes={"data": [4, 3]})
    assert net.layers[0].type == "Input"
    feeds = _fill_inputs(net, np.random.default_rng(6))
    model, out = _compare(net, feeds)
    np.testing.assert_allclose(out["y"], 1 / (1 + np.exp(-feeds["data"])), rtol=1e-5)


def test_train_val_with_memory_and_dummy_data(tmp_path):
    # each phase its own data layers; the TEST ones become inputs with their own shapes
    text = '''name: "tv"
layer { name: "train_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 3 dim: 4 dim: 4 } shape { dim: 8 } }
  include { phase: TRAIN } }
layer { name: "test_data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 4 width: 4 }
  include { phase: TEST } }
layer { name: "aux" type: "DummyData" top: "aux"
  dummy_data_param { shape { dim: 2 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sum" type: "Eltwise" bottom: "ip" bottom: "aux" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "sum" bottom: "label" top: "acc"
  include { phase: TEST } }
'''
    path = tmp_path / "tv.prototxt"
    path.write_text(text)
    net = load_for_export(str(path))
    shapes = [net.blobs[n].data.shape for n in ("data", "label", "aux")]
    assert shapes == [(2, 3, 4, 4), (2,), (2, 5)]
    rng = np.random.default_rng(9)
    feeds = _fill_inputs(net, rng, lambda name, shape, r: (r.integers(0, 5, shape)
                                                           if name == "label"
                                                           else r.standard_normal(shape)))
    model, out = _compare(net, feeds)
    assert [i.name for i in model.graph.input] == ["data", "aux"]
    assert [o.name for o in model.graph.output] == ["sum"]
    w, b = (to_numpy(p.data) for p in net.params["ip"])
    want = feeds["data"].reshape(2, -1) @ w.T + b + feeds["aux"]
    np.testing.assert_allclose(out["sum"], want, rtol=1e-5, atol=1e-5)


def test_without_onnx_the_error_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)      # import onnx -> ImportError
    net = caffepy.Net(os.path.join(ROOT, "examples/mnist/lenet.prototxt"), caffepy.TEST)
    with pytest.raises(ExportError, match=r"pip install 'caffepy\[onnx\]'"):
        to_onnx(net)
