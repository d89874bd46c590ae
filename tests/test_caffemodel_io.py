"""Binary files interoperate with Caffe's: the conformance solver cases' init.caffemodel
files (written by Caffe) load into their nets, what caffepy writes reads back exactly, and the
layer params caffepy saves equal those of the caffemodels Caffe wrote."""
import os

import numpy as np
import pytest

import caffepy
from caffepy.proto import caffe_pb2
from caffepy.proto import blobproto_to_array, read_binary
from helpers import SOLVER_CASES, copy_case

CASES = [c for c in sorted(SOLVER_CASES)
         if os.path.exists(os.path.join(SOLVER_CASES[c], "init.caffemodel"))]


@pytest.mark.parametrize("case", CASES)
def test_init_caffemodel_loads_into_its_net(case, tmp_path, monkeypatch):
    work = copy_case(SOLVER_CASES[case], tmp_path)
    monkeypatch.chdir(work)
    net = caffepy.Net("net.prototxt", caffepy.TRAIN)
    try:
        net.copy_from("init.caffemodel")
        src = read_binary("init.caffemodel", caffe_pb2.NetParameter())
        copied = 0
        for layer in src.layer:
            if layer.name not in net.layer_names_index or not len(layer.blobs):
                continue
            target = net.layer_by_name(layer.name).blobs
            for j, bp in enumerate(layer.blobs):
                assert np.array_equal(target[j].data.ravel(), blobproto_to_array(bp).ravel())
                copied += 1
        assert copied > 0
        # and what caffepy writes back is the same numbers, bit for bit
        out = os.path.join(str(tmp_path), "resaved.caffemodel")
        net.save(out)
        again = caffepy.Net("net.prototxt", caffepy.TRAIN, weights=out)
        for name, blobs in net.params.items():
            for a, b in zip(blobs, again.params[name]):
                assert a.data.tobytes() == b.data.tobytes()
    finally:
        for l in net.layers:
            if hasattr(l, "close"):
                l.close()


@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_to_proto_layer_params_equal_caffes_snapshot(case, tmp_path, monkeypatch):
    # The expected/final.caffemodel of every solver reference case is Caffe's Net::ToProto
    # of the train net; apart from the blobs, caffepy's to_proto must give the same
    # LayerParameters (inherited phase, Split layers, loss weights, BatchNorm ParamSpecs).
    d = copy_case(SOLVER_CASES[case], tmp_path)
    monkeypatch.chdir(d)
    solver = caffepy.get_solver("solver.prototxt")
    act = solver.net.to_proto()
    exp = read_binary(os.path.join("expected", "final.caffemodel"), caffe_pb2.NetParameter())
    assert act.name == exp.name
    assert [lp.name for lp in act.layer] == [lp.name for lp in exp.layer]
    for la, le in zip(act.layer, exp.layer):
        assert len(la.blobs) == len(le.blobs), la.name
        del la.blobs[:]
        del le.blobs[:]
        assert la == le, "layer %s:\n%s\nexpected\n%s" % (la.name, la, le)
