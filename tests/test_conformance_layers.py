"""Every layer case under tests/conformance/layers (and ../shared's newer ones): forward,
backward, extra passes. A layer type caffepy does not register is a failure, never a skip.
"""
import os


import numpy as np
import pytest

import caffepy
from caffepy import backend
from caffepy.proto import caffe_pb2
from helpers import LAYER_CASES, assert_close, copy_case, load_meta, put

CASES = sorted(LAYER_CASES)


@pytest.mark.conformance
@pytest.mark.parametrize("case", CASES)
def test_layer_case(case, tmp_path, monkeypatch):
    src = LAYER_CASES[case]
    meta = load_meta(src)
    work = copy_case(src, tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(work)
    data = dict(np.load(os.path.join(work, "data.npz")))
    tol = meta["tolerance"]
    phase = caffe_pb2.TRAIN if meta["phase"] == "TRAIN" else caffe_pb2.TEST
    backend.set_random_seed(1701)
    net = caffepy.Net(os.path.join(work, "net.prototxt"), phase)
    try:
        layer = net.layer_by_name(meta["layer_name"])
        if "memory_data" in data:
            net.set_input_arrays(data["memory_data"], data["memory_labels"])

        def set_inputs():
            for i, srcname in enumerate(meta["bottom_sources"]):
                if srcname == "parameter":
                    put(net.layer_by_name("input_b%d" % i).blobs[0].data, data["bottom_%d" % i])
                else:
                    put(net.blobs[meta["bottoms"][i]].data, data["bottom_%d" % i])

        set_inputs()
        for j in range(meta["num_params"]):
            assert layer.blobs[j].shape == data["param_%d" % j].shape or \
                layer.blobs[j].count == data["param_%d" % j].size, "param %d shape" % j
            put(layer.blobs[j].data, data["param_%d" % j].reshape(layer.blobs[j].shape))
        net.forward_prefilled()
        for k, top in enumerate(meta["tops"]):
            if "top_%d" % k in data:
                assert_close(net.blobs[top].data, data["top_%d" % k], tol, "%s top %d (%s)" % (case, k, top))
        for j in range(meta["num_params"]):
            key = "param_after_%d" % j
            if key in data:
                assert_close(layer.blobs[j].data, data[key], tol, "%s param %d after forward" % (case, j))
        if meta["backward"]:
            net.clear_param_diffs()
            for j in range(len(layer.blobs)):
                layer.blobs[j].diff[...] = 0
            for k, top in enumerate(meta["tops"]):
                if "top_diff_%d" % k in data:
                    put(net.blobs[top].diff, data["top_diff_%d" % k].reshape(net.blobs[top].shape))
            net.backward_from_to(len(net.layers) - 1, 0)
            for i in meta["grad_bottoms"]:
                if meta["bottom_sources"][i] == "parameter":
                    got = net.layer_by_name("input_b%d" % i).blobs[0].diff
                else:
                    got = net.blobs[meta["bottoms"][i]].diff
                assert_close(got, data["bottom_diff_%d" % i], tol, "%s bottom diff %d" % (case, i))
            for j in range(meta["num_params"]):
                key = "param_diff_%d" % j
                if key in data:
                    assert_close(layer.blobs[j].diff, data[key], tol, "%s param diff %d" % (case, j))
        for m in range(1, meta.get("forward_passes", 1)):
            set_inputs()
            net.forward_prefilled()
            for k, top in enumerate(meta["tops"]):
                key = "top_%d_pass%d" % (k, m)
                if key in data:
                    assert_close(net.blobs[top].data, data[key], tol, "%s top %d pass %d" % (case, k, m))
            for j in range(meta["num_params"]):
                key = "param_after_%d_pass%d" % (j, m)
                if key in data:
                    assert_close(layer.blobs[j].data, data[key], tol,
                                 "%s param %d after pass %d" % (case, j, m))
    finally:
        for l in net.layers:
            close = getattr(l, "close", None)
            if close:
                close()
