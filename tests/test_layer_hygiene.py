"""Hot-path hygiene of the layers (DESIGN.md principles 3 and 4): float32 throughout, and
forward/backward write into buffers made at reshape (or on first use), not per iteration."""
import tracemalloc

import numpy as np
import pytest

import caffepy
from caffepy import backend
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text

BATCH, C, H, W = 32, 8, 24, 24
CLASSES = 10

# A small LeNet-like net through the layers that matter for training speed. "bn" feeds
# several layers (Split is inserted); Scale, Dropout and the second ReLU work in place.
NET = """
name: "hygiene"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: %(n)d dim: %(c)d dim: %(h)d dim: %(w)d } shape { dim: %(n)d } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
                      bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "bn" top: "relu" }
layer { name: "lrelu" type: "ReLU" bottom: "bn" top: "lrelu" relu_param { negative_slope: 0.1 } }
layer { name: "sig" type: "Sigmoid" bottom: "bn" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "bn" top: "tanh" }
layer { name: "drop" type: "Dropout" bottom: "relu" top: "relu"
        dropout_param { dropout_ratio: 0.3 } }
layer { name: "slice" type: "Slice" bottom: "relu" top: "s1" top: "s2"
        slice_param { slice_point: 3 } }
layer { name: "concat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
layer { name: "emax" type: "Eltwise" bottom: "cat" bottom: "sig" bottom: "lrelu" top: "emax"
        eltwise_param { operation: MAX } }
layer { name: "esum" type: "Eltwise" bottom: "emax" bottom: "tanh" top: "esum"
        eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "softmax" type: "Softmax" bottom: "esum" top: "sm" }
layer { name: "eprod" type: "Eltwise" bottom: "sm" bottom: "esum" top: "eprod"
        eltwise_param { operation: PROD } }
layer { name: "ip1" type: "InnerProduct" bottom: "eprod" top: "ip1"
        inner_product_param { num_output: 20 weight_filler { type: "xavier" }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: %(k)d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" top: "acc_per_class"
        include { phase: TRAIN } }
""" % {"n": BATCH, "c": C, "h": H, "w": W, "k": CLASSES}

HOT_TYPES = {"InnerProduct", "ReLU", "Sigmoid", "TanH", "Dropout", "Softmax", "SoftmaxWithLoss",
             "Eltwise", "Concat", "Slice", "Split", "BatchNorm", "Scale", "Accuracy"}

# Host float64 state that is deliberate: Dropout draws its uniforms from caffepy's float64
# host stream (so a seed keeps giving the masks it always gave); only the float32 mask
# reaches the arrays the net computes with.
FLOAT64_ALLOWED = {("Dropout", "_uniform")}


def _make_net():
    backend.set_random_seed(7)
    p = parse_text(NET, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    net = caffepy.Net(p)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal((BATCH, C, H, W)).astype(np.float32)
    net.blobs["label"].data[...] = rng.integers(0, CLASSES, BATCH)
    return net


def _step(net):
    net.clear_param_diffs()
    return net.forward_backward()


def _addr(a):
    return a.__array_interface__["data"][0]


def _blob_buffers(net):
    out = {}
    for i, tops in enumerate(net.top_vecs):
        for k, t in enumerate(tops):
            out[(net.layer_names[i], "top", k)] = (_addr(t.data), _addr(t.diff))
    return out


def _layer_arrays(layer, prefix=""):
    """(name, array) for every ndarray a layer keeps as state (incl. lists, tuples, dicts)."""
    def walk(name, v):
        if isinstance(v, np.ndarray):
            yield name, v
        elif isinstance(v, (list, tuple)):
            for j, x in enumerate(v):
                yield from walk("%s[%d]" % (name, j), x)
        elif isinstance(v, dict):
            for k, x in v.items():
                yield from walk("%s[%r]" % (name, k), x)
    for name, v in vars(layer).items():
        if name in ("layer_param", "blobs"):
            continue
        yield from walk(name, v)


@pytest.fixture(scope="module")
def net():
    return _make_net()


def test_net_covers_the_hot_layers(net):
    assert HOT_TYPES <= {layer.type for layer in net.layers}


def test_everything_stays_float32(net):
    for _ in range(2):
        loss = _step(net)
        assert np.isfinite(loss)
        for i, layer in enumerate(net.layers):
            name = net.layer_names[i]
            for what, blobs in (("bottom", net.bottom_vecs[i]), ("top", net.top_vecs[i]),
                                ("param", layer.blobs)):
                for k, b in enumerate(blobs):
                    assert b.data.dtype == np.float32, (name, what, k, "data", b.data.dtype)
                    assert b.diff.dtype == np.float32, (name, what, k, "diff", b.diff.dtype)
            for attr, a in _layer_arrays(layer):
                if (layer.type, attr.split("[")[0]) in FLOAT64_ALLOWED:
                    continue
                assert a.dtype != np.float64, (name, attr, "holds a float64 array")
    # the outputs themselves are float32 numbers, not float64 in disguise
    assert net.blobs["loss"].data.dtype == np.float32
    assert net.blobs["acc"].data.dtype == np.float32


def test_tops_and_work_buffers_are_reused_across_iterations(net):
    _step(net)
    tops1 = _blob_buffers(net)
    work1 = {(net.layer_names[i], attr): (_addr(a), a.shape)
             for i, layer in enumerate(net.layers) for attr, a in _layer_arrays(layer)}
    _step(net)
    _step(net)
    assert _blob_buffers(net) == tops1
    work2 = {(net.layer_names[i], attr): (_addr(a), a.shape)
             for i, layer in enumerate(net.layers) for attr, a in _layer_arrays(layer)}
    # every array a hot layer keeps (scratch, saved inputs, masks, x_norm) is the same
    # memory in the next iteration, except small per-channel / per-label results
    small = ("_lab", "_valid", "_norm", "_std")
    hot = {net.layer_names[i] for i, layer in enumerate(net.layers) if layer.type in HOT_TYPES}
    moved = [k for k, v in work1.items()
             if k[0] in hot and k in work2 and work2[k] != v and k[1] not in small]
    assert not moved, "reallocated per iteration: %s" % moved


def test_hot_layers_make_no_full_size_temporaries(net):
    """tracemalloc sees NumPy's data allocations: after warm-up, a hot layer's forward and
    backward may allocate small per-channel or per-label arrays, never a blob-sized one."""
    _step(net)
    _step(net)
    tracemalloc.start()
    try:
        for i, layer in enumerate(net.layers):
            if layer.type not in HOT_TYPES:
                continue
            bottom, top = net.bottom_vecs[i], net.top_vecs[i]
            biggest = max(b.count for b in list(bottom) + list(top)) * 4
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            layer.forward(bottom, top)
            if net.layer_need_backward[i]:
                layer.backward(top, net.bottom_need_backward[i], bottom)
            _, peak = tracemalloc.get_traced_memory()
            extra = peak - start
            # room for Python objects, per-channel/per-label arrays and NumPy's own
            # fixed-size iterator buffers (8192 elements each), but not for one blob
            assert extra < max(biggest // 4, 64 * 1024), (
                "%s (%s) allocated %d bytes in one forward/backward; its largest blob is "
                "%d bytes" % (net.layer_names[i], layer.type, extra, biggest))
    finally:
        tracemalloc.stop()


def test_reshape_to_a_new_batch_size_resizes_the_buffers():
    net = _make_net()
    _step(net)
    data, label = net.blobs["data"], net.blobs["label"]
    data.reshape((BATCH // 2, C, H, W))
    label.reshape((BATCH // 2,))
    rng = np.random.default_rng(1)
    data.data[...] = rng.standard_normal(data.shape).astype(np.float32)
    label.data[...] = rng.integers(0, CLASSES, BATCH // 2)
    net.reshape()
    loss = _step(net)
    assert np.isfinite(loss)
    assert net.blobs["ip2"].shape == (BATCH // 2, CLASSES)
    assert net.blobs["data"].diff.shape == (BATCH // 2, C, H, W)
    assert np.isfinite(net.blobs["data"].diff).all()
