"""caffepy.draw (pycaffe's caffe.draw): graph structure via pydot, no Graphviz needed except
for the rendering tests, which skip when 'dot' is absent."""
import shutil
import sys

import pytest

import caffepy
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text

pydot = pytest.importorskip("pydot")
from caffepy import draw  # noqa: E402

NET = """
name: "drawme"
layer { name: "mnist" type: "Data" top: "data" top: "label"
        include { phase: TRAIN } data_param { source: "x" batch_size: 64 } }
layer { name: "mnist" type: "Data" top: "data" top: "label"
        include { phase: TEST } data_param { source: "y" batch_size: 100 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 10 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def _net():
    return parse_text(NET, caffe_pb2.NetParameter())


def _nodes(graph):
    return {n.get_name(): n for n in graph.get_nodes()}


def _edges(graph):
    return {(e.get_source(), e.get_destination()): e.get_label() for e in graph.get_edges()}


def test_layer_nodes_labels_and_colours():
    g = draw.get_pydot_graph(_net(), "LR")
    assert g.get_name() == "drawme" and g.get_rankdir() == "LR"
    nodes = _nodes(g)
    conv = nodes['"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 1"']
    assert conv.get_shape() == "record" and conv.get_fillcolor() == "#FF5050"
    pool = nodes['"pool1\\n(MAX Pooling)\\nkernel size: 2\\nstride: 2\\npad: 0"']
    assert pool.get_fillcolor() == "#FF9900"
    assert nodes['"ip1\\n(InnerProduct)"'].get_fillcolor() == "#CC33FF"
    assert nodes['"loss\\n(SoftmaxWithLoss)"'].get_fillcolor() == "#6495ED"
    assert nodes['"mnist\\n(Data)"'].get_fillcolor() == "#6495ED"
    relu = nodes['"relu1\\n(ReLU)"']                  # in-place: neuron style
    assert relu.get_shape() == "record" and relu.get_fillcolor() == "#90EE90"
    for blob in ("data", "label", "conv1", "pool1", "ip1", "accuracy", "loss"):
        assert nodes[blob].get_shape() == "octagon", blob
    # the module-level default style is not mutated by colouring
    assert draw.LAYER_STYLE_DEFAULT["fillcolor"] == "#6495ED"


def test_edges_and_labels():
    edges = _edges(draw.get_pydot_graph(_net(), "LR"))
    conv = '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 1"'
    assert edges[('"mnist\\n(Data)"', "data")] in ("Batch 100", '"Batch 100"')  # last wins
    assert edges[("data", conv)] == '""'
    assert edges[(conv, "conv1")] == "20"
    assert edges[('"ip1\\n(InnerProduct)"', "ip1")] == "10"
    assert edges[("pool1", '"relu1\\n(ReLU)"')] == '""'
    assert edges[('"relu1\\n(ReLU)"', "pool1")] == '""'
    assert edges[('"loss\\n(SoftmaxWithLoss)"', "loss")] == '""'
    assert edges[("label", '"loss\\n(SoftmaxWithLoss)"')] == '""'
    unlabelled = _edges(draw.get_pydot_graph(_net(), "LR", label_edges=False))
    assert set(unlabelled.values()) == {'""'}


def test_phase_filter_and_rankdir():
    train = draw.get_pydot_graph(_net(), "TB", phase=caffepy.TRAIN)
    nodes = _nodes(train)
    assert '"accuracy (Accuracy)"' not in nodes and "accuracy" not in nodes
    assert '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"' in nodes   # TB: spaces
    assert _edges(train)[('"mnist (Data)"', "data")] in ("Batch 64", '"Batch 64"')
    test = draw.get_pydot_graph(_net(), "TB", phase=caffepy.TEST)
    assert '"accuracy (Accuracy)"' in _nodes(test)
    assert _edges(test)[('"mnist (Data)"', "data")] in ("Batch 100", '"Batch 100"')
    # include and exclude together is an error, as in pycaffe
    net = _net()
    net.layer[2].include.add(phase=caffe_pb2.TRAIN)
    net.layer[2].exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(ValueError, match="conv1 has both include and exclude"):
        draw.get_pydot_graph(net, "LR", phase=caffepy.TRAIN)
    s = draw.get_pydot_graph(_net(), "BT").to_string()
    assert "rankdir=BT" in s and "digraph drawme" in s


def test_unnamed_net_and_pooling_geometry_fallback():
    net = parse_text('layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                     'pooling_param { pool: AVE kernel_h: 3 kernel_w: 3 stride_h: 1 '
                     'stride_w: 1 } }', caffe_pb2.NetParameter())
    g = draw.get_pydot_graph(net, "LR")
    assert g.get_name() == "Net"
    assert '"p\\n(AVE Pooling)\\nkernel size: 3\\nstride: 1\\npad: 0"' in _nodes(g)


def test_missing_pydot_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(ImportError, match="pip install pydot"):
        draw.get_pydot_graph(_net(), "LR")


def test_cli_raw_output(tmp_path, capsys):
    src = tmp_path / "net.prototxt"
    src.write_text(NET)
    out = tmp_path / "net.raw"
    assert draw.main([str(src), str(out), "--phase", "TRAIN", "--rankdir", "TB"]) == 0
    text = out.read_text()
    assert "digraph drawme" in text and "rankdir=TB" in text and "Accuracy" not in text
    assert "Drawing net to" in capsys.readouterr().out


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' not installed")


@needs_dot
def test_draw_net_to_file_png_and_svg(tmp_path):
    png = tmp_path / "net.png"
    draw.draw_net_to_file(_net(), str(png), phase=caffepy.TEST)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = draw.draw_net(_net(), "TB", ext="svg")
    assert b"<svg" in svg and b"conv1" in svg


@needs_dot
def test_cli_module_renders(tmp_path):
    import subprocess
    src = tmp_path / "net.prototxt"
    src.write_text(NET)
    out = tmp_path / "net.png"
    r = subprocess.run([sys.executable, "-m", "caffepy.draw", str(src), str(out),
                        "--phase", "ALL"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
