"""Tests of the vision layers (caffepy.layers.vision): Convolution, Deconvolution, Im2col,
Pooling, SPP, LRN, Crop. Gradient checks on small random inputs, values against direct
(loop) transcriptions of Caffe's formulas, and the user errors Caffe CHECKs."""
import itertools

import numpy as np
import pytest

from caffepy import Blob, LayerError, caffe_pb2
from caffepy.gradient_check import check_layer
from caffepy.layer import create_layer
from caffepy.proto import parse_text
from helpers import bwd, fwd, make

FLT_MAX = float(np.finfo(np.float32).max)


def rnd(*shape, seed=0, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def distinct(shape, seed=0, spacing=0.05):
    """An array of distinct values at least ``spacing`` apart (no near-ties for max pooling)."""
    count = int(np.prod(shape))
    vals = (np.arange(count) - count / 2.0) * spacing
    return np.random.default_rng(seed).permutation(vals).astype(np.float32).reshape(shape)


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


# -- reference convolution (direct formula, float64) -----------------------------------------

def ref_conv(x, w, b, stride, pad, dil, group):
    """y[n,o,p] = Σ_{c,k} W[o,c,k]·x[n, g·C/G + c, p·s − pad + k·d] + b[o] (zeros outside)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    D = len(sp)
    O = w.shape[0]
    ks = w.shape[2:]
    out = [(sp[i] + 2 * pad[i] - (dil[i] * (ks[i] - 1) + 1)) // stride[i] + 1 for i in range(D)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    y = np.zeros((N, O) + tuple(out))
    Cg, Og = C // group, O // group
    for g in range(group):
        for k in itertools.product(*[range(kk) for kk in ks]):
            sl = tuple(slice(k[i] * dil[i], k[i] * dil[i] + (out[i] - 1) * stride[i] + 1, stride[i])
                       for i in range(D))
            patch = xp[(slice(None), slice(g * Cg, (g + 1) * Cg)) + sl]      # N, Cg, out...
            wk = w[(slice(g * Og, (g + 1) * Og), slice(None)) + k]           # Og, Cg
            y[:, g * Og:(g + 1) * Og] += np.einsum("oc,nc...->no...", wk, patch)
    if b is not None:
        y += b.reshape((1, O) + (1,) * D)
    return y


CONV_CASES = [
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 3", (1, 6, 5, 5), (1, 1), (1, 1), (1, 1), 3),
    ("num_output: 2 kernel_size: 3 pad: 2 dilation: 2", (2, 2, 7, 6), (1, 1), (2, 2), (2, 2), 1),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
     (2, 2, 5, 7), (1, 2), (1, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 pad: 0 pad: 1",
     (1, 2, 7, 5), (2, 1), (0, 1), (1, 1), 1),
]


@pytest.mark.parametrize("params,shape,stride,pad,dil,group", CONV_CASES)
def test_conv_values(params, shape, stride, pad, dil, group):
    x = rnd(*shape)
    layer, bottom, top = make('type: "Convolution" convolution_param { %s %s }'
                              % (params, FILLERS), [x])
    y = fwd(layer, bottom, top)[0]
    w, b = layer.blobs[0].data, layer.blobs[1].data
    close(y, ref_conv(x, w, b, stride, pad, dil, group))


def test_conv_3d_values_and_gradient():
    x = rnd(2, 2, 4, 5, 3)
    text = ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
            'kernel_size: 2 kernel_size: 2 pad: 1 pad: 0 pad: 1 stride: 1 stride: 2 stride: 1 %s }'
            % FILLERS)
    layer, bottom, top = make(text, [x])
    y = fwd(layer, bottom, top)[0]
    assert y.shape == (2, 2, 4, 2, 4)
    close(y, ref_conv(x, layer.blobs[0].data, layer.blobs[1].data,
                      (1, 2, 1), (1, 0, 1), (1, 1, 1), 1))
    check_layer(text, [rnd(1, 2, 3, 4, 3, seed=1)])


def test_conv_axis_batches_leading_axes():
    # axis 2: the first two axes both act as the batch
    x = rnd(2, 3, 2, 5, 5)
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 3 '
                              'kernel_size: 3 axis: 2 %s }' % FILLERS, [x])
    y = fwd(layer, bottom, top)[0]
    assert y.shape == (2, 3, 3, 3, 3)
    ref = ref_conv(x.reshape(6, 2, 5, 5), layer.blobs[0].data, layer.blobs[1].data,
                   (1, 1), (0, 0), (1, 1), 1)
    close(y.reshape(6, 3, 3, 3), ref)


def test_conv_hand_value():
    # 1 channel 3x3 input, 2x2 kernel of ones, bias 0.5: sums of 2x2 blocks + 0.5
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 1 '
                              'kernel_size: 2 weight_filler { type: "constant" value: 1 } '
                              'bias_filler { type: "constant" value: 0.5 } }', [x])
    y = fwd(layer, bottom, top)[0]
    np.testing.assert_array_equal(y[0, 0], [[8.5, 12.5], [20.5, 24.5]])


def test_conv_default_fillers_are_zero():
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 '
                              'kernel_size: 1 }', [rnd(1, 2, 2, 2)])
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()


@pytest.mark.parametrize("params", [
    "num_output: 3 kernel_size: 3 pad: 1 stride: 2",
    "num_output: 4 kernel_size: 2 group: 2",
    "num_output: 2 kernel_size: 2 dilation: 2 pad: 1 bias_term: false",
    "num_output: 2 kernel_h: 1 kernel_w: 3 pad_w: 1",
])
def test_conv_gradient(params):
    check_layer('type: "Convolution" convolution_param { %s %s }' % (params, FILLERS),
                [rnd(2, 4, 5, 5, seed=3)])


@pytest.mark.parametrize("params", [
    "num_output: 3 kernel_size: 3 pad: 1",
    "num_output: 4 kernel_size: 3 group: 2",
    "num_output: 2 kernel_size: 3 dilation: 2 pad: 1",
    "num_output: 2 kernel_h: 3 kernel_w: 1 pad_h: 2",
])
def test_conv_data_gradient_paths_agree(params, monkeypatch):
    # stride 1: the data gradient may be computed as a convolution of the top diff
    # (im2col + matmul) instead of matmul + col2im; both must give the same numbers
    from caffepy.layers import vision
    text = 'type: "Convolution" convolution_param { %s %s }' % (params, FILLERS)
    x = rnd(2, 4, 6, 5, seed=2)
    results = []
    for full in (False, True):
        monkeypatch.setattr(vision.ConvolutionLayer, "_full_is_cheaper", lambda self: full)
        layer, bottom, top = make(text, [x])
        assert (layer._full is not None) == full
        y = fwd(layer, bottom, top)[0]
        bwd(layer, bottom, top, [rnd(*y.shape, seed=3)])
        results.append(bottom[0].diff.copy())
        check_layer(text, [x[:1]])
    close(results[0], results[1])


def test_conv_two_bottoms_share_weights():
    x0, x1 = rnd(2, 2, 4, 4, seed=1), rnd(2, 2, 4, 4, seed=2)
    text = ('type: "Convolution" top: "a" top: "b" convolution_param { num_output: 3 '
            'kernel_size: 3 pad: 1 %s }' % FILLERS)
    layer, bottom, top = make(text, [x0, x1], ntop=2)
    y0, y1 = fwd(layer, bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    close(y0, ref_conv(x0, w, b, (1, 1), (1, 1), (1, 1), 1))
    close(y1, ref_conv(x1, w, b, (1, 1), (1, 1), (1, 1), 1))
    # the weight gradient is the sum of both bottoms' gradients
    d0, d1 = rnd(*y0.shape, seed=5), rnd(*y1.shape, seed=6)
    bwd(layer, bottom, top, [d0, d1])
    both = layer.blobs[0].diff.copy()
    bwd(layer, bottom, top, [d0, np.zeros_like(d1)])
    only0 = layer.blobs[0].diff.copy()
    bwd(layer, bottom, top, [np.zeros_like(d0), d1])
    close(both, only0 + layer.blobs[0].diff)
    check_layer(text, [x0, x1])


def test_conv_param_diffs_accumulate_and_respect_propagate():
    text = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 %s }' % FILLERS
    layer, bottom, top = make(text, [rnd(2, 2, 3, 3)])
    fwd(layer, bottom, top)
    d = rnd(*top[0].shape, seed=4)
    bwd(layer, bottom, top, [d])
    once = [b.diff.copy() for b in layer.blobs]
    top[0].diff[...] = d
    layer.backward(top, [True], bottom)
    close(layer.blobs[0].diff, 2 * once[0])
    close(layer.blobs[1].diff, 2 * once[1])
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    close(layer.blobs[0].diff, 2 * once[0])


@pytest.mark.parametrize("kind,shape,geometry,out_shape", [
    # 0 input channels: a 3x3 window over 5x5 gives 3x3 positions
    ("Convolution", (2, 0, 5, 5), "kernel_size: 3", (2, 3, 3, 3)),
    # an empty spatial axis, padded: height (0 + 2 - 1) + 1 = 2, width (4 + 2 - 1) + 1 = 6
    ("Convolution", (2, 2, 0, 4), "kernel_size: 1 pad: 1", (2, 3, 2, 6)),
    # Deconvolution from 0 channels: 5x5 grows to (5 - 1) + 3 = 7x7
    ("Deconvolution", (2, 0, 5, 5), "kernel_size: 3", (2, 3, 7, 7)),
])
def test_conv_on_zero_size_input_is_the_bias(kind, shape, geometry, out_shape):
    # Caffe's columns of an input with no values are all zero: the top is the bias, the bias
    # gradient the top diff summed over images and positions, the weights get nothing
    layer, bottom, top = make('type: "%s" convolution_param { num_output: 3 %s %s }'
                              % (kind, geometry, FILLERS), [np.zeros(shape, np.float32)])
    layer.blobs[1].data[...] = [0.5, -1.0, 2.0]
    (y,) = fwd(layer, bottom, top)
    assert y.shape == out_shape
    want = np.empty(out_shape, np.float32)
    want[:, 0], want[:, 1], want[:, 2] = 0.5, -1.0, 2.0
    np.testing.assert_array_equal(y, want)
    # top diff n·1000 + o·100 + p at image n, output o, position p (P positions):
    # bias diff o = sum over n in {0, 1} and p < P = 2·P·(100·o) + P·1000 + 2·P(P−1)/2
    P = out_shape[2] * out_shape[3]
    dy = (np.arange(2)[:, None, None] * 1000 + np.arange(3)[None, :, None] * 100
          + np.arange(P)[None, None, :]).astype(np.float32).reshape(out_shape)
    w_before = layer.blobs[0].data.copy()
    layer.blobs[0].diff[...] = 0.25
    layer.blobs[1].diff[...] = 1.0
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    want_db = [1 + 2 * P * 100 * o + P * 1000 + P * (P - 1) for o in range(3)]
    np.testing.assert_array_equal(layer.blobs[1].diff, np.float32(want_db))
    assert (layer.blobs[0].diff == 0.25).all()
    np.testing.assert_array_equal(layer.blobs[0].data, w_before)
    assert bottom[0].diff.shape == shape
    # without a bias term the top is zero
    layer, bottom, top = make('type: "%s" convolution_param { num_output: 3 %s bias_term: false '
                              '}' % (kind, geometry), [np.zeros(shape, np.float32)])
    top[0].data[...] = 7
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, np.zeros(out_shape, np.float32))


def test_conv_reshape_to_new_batch():
    text = ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 %s }'
            % FILLERS)
    layer, bottom, top = make(text, [rnd(2, 2, 5, 5)])
    fwd(layer, bottom, top)
    x = rnd(3, 2, 6, 4, seed=9)
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    y = fwd(layer, bottom, top)[0]
    close(y, ref_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (1, 1), (1, 1), 1))


def test_conv_preloaded_blob_shape_checked():
    lp = parse_text('type: "Convolution" name: "c" convolution_param { num_output: 2 '
                    'kernel_size: 3 }', caffe_pb2.LayerParameter())
    layer = create_layer(lp)
    layer.blobs.add_blob(2, 3, 2, 2)
    layer.blobs.add_blob(2)
    b = Blob(1, 3, 5, 5)
    with pytest.raises(LayerError, match="Incorrect weight shape"):
        layer.setup([b], [Blob()])


@pytest.mark.parametrize("params,msg", [
    ("num_output: 2", "kernel_size must be specified"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", "not both"),
    ("num_output: 2 kernel_size: 3 stride: 0", "nonzero"),
    ("num_output: 3 kernel_size: 3 group: 2", "group"),
    ("kernel_size: 3", "num_output"),
    ("num_output: 2 kernel_size: 9", "empty"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3", "once per spatial"),
])
def test_conv_errors(params, msg):
    with pytest.raises(LayerError, match=msg):
        make('type: "Convolution" convolution_param { %s }' % params, [rnd(1, 4, 5, 5)])


def test_conv_bottom_shape_mismatch():
    with pytest.raises(LayerError, match="shape mismatch"):
        make('type: "Convolution" top: "a" top: "b" convolution_param { num_output: 2 '
             'kernel_size: 1 }', [rnd(1, 2, 3, 3), rnd(1, 2, 4, 3)], ntop=2)


# -- Deconvolution ------------------------------------------------------------------------------

@pytest.mark.parametrize("params,size", [
    ("kernel_size: 3 stride: 2 pad: 1", 7),
    ("kernel_size: 2 stride: 2 group: 2", 8),
    ("kernel_size: 3 dilation: 2", 7),
])
def test_deconv_is_conv_transpose(params, size):
    # <conv(x), y> == <x, deconv(y)> for the same weight blob (no bias)
    x = rnd(2, 4, size, size, seed=1)
    conv, cb, ct = make('type: "Convolution" convolution_param { num_output: 6 bias_term: false '
                        '%s %s }' % (params, FILLERS), [x])
    yc = fwd(conv, cb, ct)[0]
    y = rnd(*yc.shape, seed=2)
    deconv, db, dt = make('type: "Deconvolution" convolution_param { num_output: 4 '
                          'bias_term: false %s }' % params, [y])
    assert deconv.blobs[0].shape == conv.blobs[0].shape
    deconv.blobs[0].data[...] = conv.blobs[0].data
    xd = fwd(deconv, db, dt)[0]
    assert xd.shape == x.shape
    close(np.vdot(yc.astype(np.float64), y), np.vdot(x.astype(np.float64), xd), rtol=1e-4)


def test_deconv_output_size_and_bias():
    layer, bottom, top = make('type: "Deconvolution" convolution_param { num_output: 2 '
                              'kernel_size: 4 stride: 2 pad: 1 bias_filler { type: "constant" '
                              'value: 3 } }', [rnd(1, 3, 5, 5)])
    y = fwd(layer, bottom, top)[0]
    assert y.shape == (1, 2, 10, 10)                  # 2·(5−1) + 4 − 2
    np.testing.assert_array_equal(y, 3.0)             # zero weights: the bias only


@pytest.mark.parametrize("params", [
    "num_output: 3 kernel_size: 3 stride: 2 pad: 1",
    "num_output: 4 kernel_size: 2 stride: 2 group: 2",
])
def test_deconv_gradient(params):
    check_layer('type: "Deconvolution" convolution_param { %s %s }' % (params, FILLERS),
                [rnd(2, 4, 3, 3, seed=4)])


# -- Im2col ---------------------------------------------------------------------------------

def test_im2col_matches_convolution():
    x = rnd(2, 3, 5, 6)
    conv_params = "kernel_size: 3 pad: 1 stride: 2 dilation: 1"
    layer, bottom, top = make('type: "Im2col" convolution_param { %s }' % conv_params, [x])
    col = fwd(layer, bottom, top)[0]
    assert col.shape == (2, 27, 3, 3)
    conv, cb, ct = make('type: "Convolution" convolution_param { num_output: 2 bias_term: false '
                        '%s %s }' % (conv_params, FILLERS), [x])
    y = fwd(conv, cb, ct)[0]
    w = conv.blobs[0].data.reshape(2, 27)
    close(y, np.einsum("ok,nkhw->nohw", w, col))


def test_im2col_hand_value():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    layer, bottom, top = make('type: "Im2col" convolution_param { kernel_size: 2 pad: 1 '
                              'stride: 2 }', [x])
    col = fwd(layer, bottom, top)[0]
    # 2x2 windows at (-1,-1), (-1,1), (1,-1), (1,1): each window sees one pixel
    assert col.shape == (1, 4, 2, 2)
    expect = np.zeros((4, 2, 2), np.float32)
    expect[3, 0, 0], expect[2, 0, 1], expect[1, 1, 0], expect[0, 1, 1] = 0, 1, 2, 3
    np.testing.assert_array_equal(col[0], expect)


def test_im2col_gradient():
    check_layer('type: "Im2col" convolution_param { kernel_size: 2 pad: 1 stride: 1 }',
                [rnd(1, 2, 3, 3)])


# -- Pooling --------------------------------------------------------------------------------

def ref_pool(x, k, s, p, method, ceil=True):
    """Literal transcription of Caffe's PoolingLayer::Forward_cpu (MAX also returns the mask)."""
    N, C, H, W = x.shape
    kh, kw = k
    sh, sw = s
    ph, pw = p
    rnd_ = np.ceil if ceil else np.floor
    OH = int(rnd_((H + 2 * ph - kh) / sh)) + 1
    OW = int(rnd_((W + 2 * pw - kw) / sw)) + 1
    if ph or pw:                      # either pad turns on the rule for both axes
        if (OH - 1) * sh >= H + ph:
            OH -= 1
        if (OW - 1) * sw >= W + pw:
            OW -= 1
    y = np.zeros((N, C, OH, OW), np.float32)
    mask = -np.ones((N, C, OH, OW), np.float32)
    for n, c, i, j in itertools.product(range(N), range(C), range(OH), range(OW)):
        hs, ws = i * sh - ph, j * sw - pw
        if method == "MAX":
            he, we = min(hs + kh, H), min(ws + kw, W)
            hs, ws = max(hs, 0), max(ws, 0)
            best = -FLT_MAX
            for h in range(hs, he):
                for w in range(ws, we):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, i, j] = x[n, c, h, w], h * W + w
            y[n, c, i, j] = best
        else:
            he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            y[n, c, i, j] = x[n, c, hs:he, ws:we].sum() / size
    return y, mask


POOL_CASES = [
    # (kernel, stride, pad, ceil, input HxW)
    ((3, 3), (2, 2), (0, 0), True, (6, 6)),     # ceil, last window clipped
    ((3, 3), (2, 2), (1, 1), True, (6, 6)),
    ((2, 2), (2, 2), (1, 1), True, (5, 5)),     # last window dropped
    ((2, 3), (1, 2), (0, 1), True, (5, 7)),
    ((3, 3), (2, 2), (0, 0), False, (6, 6)),    # FLOOR
    ((3, 3), (1, 1), (1, 1), True, (4, 5)),
    ((2, 2), (3, 3), (0, 0), True, (7, 8)),     # stride > kernel: pixels no window sees
    ((4, 4), (4, 4), (0, 0), True, (4, 4)),     # one window = global
    ((2, 1), (2, 3), (1, 0), True, (5, 5)),     # pad_h only: the drop rule also cuts W
]


def _pool_text(method, k, s, p, ceil):
    return ('type: "Pooling" pooling_param { pool: %s kernel_h: %d kernel_w: %d stride_h: %d '
            'stride_w: %d pad_h: %d pad_w: %d round_mode: %s }'
            % (method, k[0], k[1], s[0], s[1], p[0], p[1], "CEIL" if ceil else "FLOOR"))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,ceil,hw", POOL_CASES)
def test_pool_values_and_gradient(method, k, s, p, ceil, hw):
    x = distinct((2, 2) + hw, seed=sum(hw))
    text = _pool_text(method, k, s, p, ceil)
    ntop = 2 if method == "MAX" else 1
    layer, bottom, top = make(text, [x], ntop=ntop)
    out = fwd(layer, bottom, top)
    y, mask = ref_pool(x, k, s, p, method, ceil)
    close(out[0], y)
    if method == "MAX":
        np.testing.assert_array_equal(out[1], mask)
    check_layer(text, [x], top_count=1)


def test_pool_large_kernel():
    # more than 254 kernel positions: the argmax code needs a wider integer type
    x = distinct((1, 2, 18, 17), seed=5)
    for method in ("MAX", "AVE"):
        text = ('type: "Pooling" pooling_param { pool: %s kernel_size: 16 stride: 1 pad: 1 }'
                % method)
        layer, bottom, top = make(text, [x], ntop=2 if method == "MAX" else 1)
        out = fwd(layer, bottom, top)
        y, mask = ref_pool(x, (16, 16), (1, 1), (1, 1), method)
        close(out[0], y)
        if method == "MAX":
            np.testing.assert_array_equal(out[1], mask)
            dy = rnd(*y.shape, seed=1)
            bwd(layer, bottom, top, [dy, np.zeros_like(dy)])
            expect = np.zeros(x.shape, np.float64)
            for n, c, i, j in itertools.product(range(1), range(2), range(y.shape[2]),
                                                range(y.shape[3])):
                expect[n, c].flat[int(mask[n, c, i, j])] += dy[n, c, i, j]
            close(bottom[0].diff, expect)


def test_pool_window_starting_past_the_image(caplog):
    # kernel < stride without padding: Caffe keeps a last window that starts outside the
    # image; MAX gives -FLT_MAX with mask -1, AVE gives 0 (divided by a negative size)
    x = rnd(1, 1, 5, 5, seed=3)
    for method in ("MAX", "AVE"):
        text = ('name: "p" type: "Pooling" pooling_param { pool: %s kernel_size: 1 stride: 3 }'
                % method)
        caplog.clear()
        with caplog.at_level("WARNING", logger="caffepy"):
            layer, bottom, top = make(text, [x], ntop=2 if method == "MAX" else 1)
            out = fwd(layer, bottom, top)
            fwd(layer, bottom, top)
        # said once (set-up and two forwards reshape alike), naming the layer and the geometry
        assert [r.getMessage() for r in caplog.records] == [
            "Layer 'p' (Pooling): the last row and the last column of windows start past the "
            "5x5 input (kernel 1x1, stride 3x3, pad 0x0, output 3x3 rounded up as in Caffe): "
            "those outputs cover no pixel; as in Caffe they are -FLT_MAX for MAX pooling and 0 "
            "divided by a window size of 0 or less (NaN or -0) for AVE"]
        y, mask = ref_pool(x, (1, 1), (3, 3), (0, 0), method)
        assert out[0].shape == (1, 1, 3, 3)
        np.testing.assert_array_equal(out[0], y)
        if method == "MAX":
            np.testing.assert_array_equal(out[1], mask)
            assert out[0][0, 0, 2, 2] == -FLT_MAX and out[1][0, 0, 2, 2] == -1
        bwd(layer, bottom, top, [np.ones_like(y)] * len(top))
        expect = np.zeros((5, 5), np.float32)
        expect[0:4:3, 0:4:3] = 1
        np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


def test_pool_window_past_the_image_ave_zero_size_is_nan(caplog):
    # a 3-pixel input, kernel 1, stride 3: the second window starts at the image's end, its
    # size is 0 and Caffe's AVE divides 0 by it; a window inside the image is not warned about
    x = rnd(1, 1, 3, 4, seed=4)
    with caplog.at_level("WARNING", logger="caffepy"):
        layer, bottom, top = make('name: "q" type: "Pooling" pooling_param { pool: AVE '
                                  'kernel_h: 1 kernel_w: 2 stride_h: 3 stride_w: 2 }', [x])
        y = fwd(layer, bottom, top)[0]
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y[0, 0, 0], [(x[0, 0, 0, 0] + x[0, 0, 0, 1]) / np.float32(2),
                                               (x[0, 0, 0, 2] + x[0, 0, 0, 3]) / np.float32(2)])
    assert np.isnan(y[0, 0, 1]).all()
    assert len(caplog.records) == 1
    assert "the last row of windows starts past the 3x4 input" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="caffepy"):
        make('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }', [x])
    assert not caplog.records


def test_pool_max_first_maximum_wins_ties():
    # all-equal windows: the mask is the first pixel of each clamped window (row-major)
    x = np.ones((1, 1, 5, 5), np.float32)
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 '
                              'stride: 2 pad: 1 }', [x], ntop=2)
    y, mask = fwd(layer, bottom, top)
    np.testing.assert_array_equal(y, 1.0)
    np.testing.assert_array_equal(mask[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])
    # a tie between two later pixels: the earlier one in row-major order wins
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 2] = x[0, 0, 2, 0] = 5
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 }',
                              [x], ntop=2)
    y, mask = fwd(layer, bottom, top)
    assert mask.ravel()[0] == 5 and y.ravel()[0] == 5
    bwd(layer, bottom, top, [np.full((1, 1, 1, 1), 2.0, np.float32), np.zeros((1, 1, 1, 1))])
    expect = np.zeros((3, 3), np.float32)
    expect[1, 2] = 2
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


def test_pool_max_ties_overlapping_backward_sums():
    # overlapping windows that pick the same pixel add their diffs there
    x = np.zeros((1, 1, 3, 5), np.float32)
    x[0, 0, 1, 2] = 1.0
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 '
                              'stride: 2 }', [x])
    y = fwd(layer, bottom, top)[0]
    np.testing.assert_array_equal(y[0, 0], [[1, 1]])
    bwd(layer, bottom, top, [np.array([[[[0.5, 0.25]]]], np.float32)])
    assert bottom[0].diff[0, 0, 1, 2] == 0.75 and bottom[0].diff.sum() == 0.75


def test_pool_max_padding_never_wins():
    x = -np.ones((1, 1, 2, 2), np.float32) * 3
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 '
                              'stride: 1 pad: 1 }', [x])
    np.testing.assert_array_equal(fwd(layer, bottom, top)[0], -3.0)


def test_pool_ave_divisor_counts_padding():
    x = np.ones((1, 1, 4, 4), np.float32)
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 '
                              'stride: 2 pad: 1 }', [x])
    y = fwd(layer, bottom, top)[0]
    # OH = ceil((4+2-3)/2)+1 = 3; windows rows [-1,2), [1,4), [3,5) clipped at H+p = 5
    # divisors: 9 for full windows; the last row/col windows are 2 wide (3..5): 3·2, 2·2
    cnt = np.array([2, 3, 1], np.float32)    # pixels of each window inside the image
    div = np.array([3, 3, 2], np.float32)
    np.testing.assert_allclose(y[0, 0], np.outer(cnt, cnt) / np.outer(div, div), rtol=1e-6)


def test_pool_global():
    x = rnd(2, 3, 4, 5)
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
                              [x], ntop=2)
    y, mask = fwd(layer, bottom, top)
    close(y[:, :, 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(mask[:, :, 0, 0], x.reshape(2, 3, -1).argmax(axis=2))
    check_layer('type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
                [distinct((2, 2, 3, 3))])
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
                              [x])
    close(fwd(layer, bottom, top)[0][:, :, 0, 0], x.mean(axis=(2, 3)))
    check_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [x])


def test_pool_reshape_to_new_shape():
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 '
                              'stride: 2 }', [distinct((1, 2, 4, 4))])
    fwd(layer, bottom, top)
    x = distinct((3, 1, 6, 5), seed=4)
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    close(fwd(layer, bottom, top)[0], ref_pool(x, (2, 2), (2, 2), (0, 0), "MAX")[0])


@pytest.mark.parametrize("params,ntop,msg", [
    ("pool: MAX", 1, "kernel_size"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", 1, "not both"),
    ("pool: MAX kernel_h: 2", 1, "both kernel_h and kernel_w"),
    ("pool: MAX global_pooling: true kernel_size: 2", 1, "Global_pooling"),
    ("pool: MAX global_pooling: true stride: 2", 1, "only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 2 pad: 2", 1, "smaller than the kernel"),
    ("pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", 1, "pad is pad OR"),
    ("pool: AVE kernel_size: 2", 2, "mask"),
    ("pool: STOCHASTIC kernel_size: 2 pad: 1", 1, "Padding implemented only"),
])
def test_pool_errors(params, ntop, msg):
    with pytest.raises(LayerError, match=msg):
        make('type: "Pooling" pooling_param { %s }' % params, [rnd(1, 1, 4, 4)], ntop=ntop)


def test_pool_needs_4d():
    with pytest.raises(LayerError, match="4 axes"):
        make('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', [rnd(1, 1, 4, 4, 4)])


def test_pool_stochastic_is_gpu_only():
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 '
                              'stride: 2 }', [rnd(1, 1, 4, 4, lo=0.1)])
    with pytest.raises(LayerError, match="STOCHASTIC"):
        layer.forward(bottom, top)


def test_pool_stochastic_kernel():
    # the GPU algorithm, run on the host by lifting the CPU guard
    x = rnd(2, 2, 5, 5, lo=0.1, hi=1.0, seed=7)
    text = 'type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }'
    layer, bottom, top = make(text, [x], phase=caffe_pb2.TEST)
    layer._allow_cpu_stochastic = True
    y = fwd(layer, bottom, top)[0]
    ref_sum = ref_pool(x, (3, 3), (2, 2), (0, 0), "AVE")[0]     # mean over the clipped window
    ref_sq = ref_pool(x * x, (3, 3), (2, 2), (0, 0), "AVE")[0]
    close(y, ref_sq / ref_sum)
    layer, bottom, top = make(text, [x], phase=caffe_pb2.TRAIN)
    layer._allow_cpu_stochastic = True
    y = fwd(layer, bottom, top)[0]
    bwd(layer, bottom, top, [np.ones_like(y)])
    # every output is one of its window's values and its gradient goes to exactly that pixel
    for n, c, i, j in itertools.product(range(2), range(2), range(2), range(2)):
        win = x[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        assert y[n, c, i, j] in win
    assert np.isclose(bottom[0].diff.sum(), y.size)
    picked = bottom[0].diff > 0
    assert set(np.round(y.ravel(), 6)) <= set(np.round(x[picked], 6))
    # global window
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: STOCHASTIC '
                              'global_pooling: true }', [x], phase=caffe_pb2.TEST)
    layer._allow_cpu_stochastic = True
    y = fwd(layer, bottom, top)[0]
    close(y[:, :, 0, 0], (x * x).sum(axis=(2, 3)) / x.sum(axis=(2, 3)))


# -- SPP --------------------------------------------------------------------------------------

def ref_spp(x, height, method):
    N, C, H, W = x.shape
    outs = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        outs.append(ref_pool(x, (kh, kw), (kh, kw), (ph, pw), method)[0].reshape(N, -1))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_values_and_gradient(method):
    x = distinct((2, 2, 7, 6), seed=3)
    text = 'type: "SPP" spp_param { pyramid_height: 3 pool: %s }' % method
    layer, bottom, top = make(text, [x])
    y = fwd(layer, bottom, top)[0]
    assert y.shape == (2, 2 * (1 + 4 + 16))
    close(y, ref_spp(x, 3, method))
    check_layer(text, [distinct((1, 2, 6, 7), seed=1) if method == "MAX" else rnd(1, 2, 6, 7)])


def test_spp_single_level_is_4d():
    layer, bottom, top = make('type: "SPP" spp_param { pyramid_height: 1 }', [rnd(2, 3, 4, 4)])
    assert top[0].shape == (2, 3, 1, 1)


def test_spp_input_too_small():
    with pytest.raises(LayerError, match="too small"):
        make('type: "SPP" spp_param { pyramid_height: 3 }', [rnd(1, 1, 5, 5)])


# -- LRN --------------------------------------------------------------------------------------

def ref_lrn(x, n, alpha, beta, k, across):
    x = x.astype(np.float64)
    N, C, H, W = x.shape
    pre = (n - 1) // 2
    sq = x * x
    s = np.zeros_like(x)
    if across:
        for c in range(C):
            s[:, c] = sq[:, max(0, c - pre):min(C, c + pre + 1)].sum(axis=1)
        scale = k + alpha / n * s
    else:
        p = np.pad(sq, [(0, 0), (0, 0), (pre, pre), (pre, pre)])
        for i in range(n):
            for j in range(n):
                s += p[:, :, i:i + H, j:j + W]
        scale = 1 + alpha / (n * n) * s
    return x * scale ** -beta


@pytest.mark.parametrize("region,n", [("ACROSS_CHANNELS", 3), ("ACROSS_CHANNELS", 5),
                                      ("WITHIN_CHANNEL", 3)])
def test_lrn_values_and_gradient(region, n):
    x = rnd(2, 6, 4, 4, seed=2)
    text = ('type: "LRN" lrn_param { local_size: %d alpha: 0.7 beta: 0.75 k: 1.5 '
            'norm_region: %s }' % (n, region))
    layer, bottom, top = make(text, [x])
    close(fwd(layer, bottom, top)[0], ref_lrn(x, n, 0.7, 0.75, 1.5, region == "ACROSS_CHANNELS"))
    check_layer(text, [rnd(2, 4, 3, 3, seed=5)])


def test_lrn_in_place():
    x = rnd(2, 5, 3, 3, seed=8)
    text = 'type: "LRN" lrn_param { local_size: 3 alpha: 0.9 beta: 0.6 }'
    layer, bottom, top = make(text, [x])
    y = fwd(layer, bottom, top)[0]
    dy = rnd(*y.shape, seed=9)
    bwd(layer, bottom, top, [dy])
    dx = bottom[0].diff.copy()
    b = Blob(x.shape)
    b.data[...] = x
    layer2 = create_layer(parse_text(text, caffe_pb2.LayerParameter()))
    layer2.setup([b], [b])
    layer2.forward([b], [b])
    close(b.data, y)
    b.diff[...] = dy
    layer2.backward([b], [True], [b])
    close(b.diff, dx)


def test_lrn_even_size_rejected():
    with pytest.raises(LayerError, match="odd"):
        make('type: "LRN" lrn_param { local_size: 4 }', [rnd(1, 4, 2, 2)])


# -- Crop -------------------------------------------------------------------------------------

def test_crop_values_and_gradient():
    x, ref = rnd(2, 4, 6, 5), rnd(2, 2, 3, 5)
    text = 'type: "Crop" crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }'
    layer, bottom, top = make(text, [x, ref])
    y = fwd(layer, bottom, top)[0]
    np.testing.assert_array_equal(y, x[:, 1:3, 2:5, :])
    dy = rnd(*y.shape, seed=3)
    bottom[1].diff[...] = 7
    bwd(layer, bottom, top, [dy], [True, True])
    expect = np.zeros_like(x)
    expect[:, 1:3, 2:5, :] = dy
    np.testing.assert_array_equal(bottom[0].diff, expect)
    np.testing.assert_array_equal(bottom[1].diff, 7)      # bottom 1 only gives the shape
    check_layer(text, [x, ref], check_bottom=0)


def test_crop_default_axis_single_offset():
    x = rnd(1, 2, 7, 7)
    layer, bottom, top = make('type: "Crop" crop_param { offset: 2 }', [x, rnd(1, 1, 4, 4)])
    np.testing.assert_array_equal(fwd(layer, bottom, top)[0], x[:, :, 2:6, 2:6])


@pytest.mark.parametrize("params,ref_shape,msg", [
    ("offset: 4", (1, 2, 4, 4), "invalid crop parameters in dimension: 2"),
    ("axis: 1 offset: 1 offset: 1", (1, 2, 4, 4), "number of offset values"),
    ("", (1, 2, 4), "same number of axes"),
])
def test_crop_errors(params, ref_shape, msg):
    with pytest.raises(LayerError, match=msg):
        make('type: "Crop" crop_param { %s }' % params, [rnd(1, 2, 7, 7), rnd(*ref_shape)])
