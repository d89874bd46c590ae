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
    pool = nodes['"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"']
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
    assert '"p\\n(Pooling AVE)\\nkernel size: 3\\nstride: 1\\npad: 0"' in _nodes(g)


def test_missing_pydot_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(ImportError, match="pip install pydot") as info:
        draw.get_pydot_graph(_net(), "LR")
    assert isinstance(info.value, caffepy.ToolError)
    assert "\n" not in str(info.value)


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


# -- learning-rate multipliers (display_lrm) ---------------------------------------------

LRM_NET = """
name: "lrm"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
        param { lr_mult: 0.5 } convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "frozen" type: "Convolution" bottom: "deconv" top: "frozen"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "frozen" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "ip_w0" type: "InnerProduct" bottom: "ip" top: "ip_w0"
        param { lr_mult: 0 } param { lr_mult: 3.25 } inner_product_param { num_output: 3 } }
"""


def test_display_lrm_labels_hold_the_multipliers():
    net = parse_text(LRM_NET, caffe_pb2.NetParameter())
    nodes = _nodes(draw.get_pydot_graph(net, "LR", display_lrm=True))
    # two params given; one given (the bias takes ParamSpec's default 1.0); none given
    assert '"conv\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 0\\nlr mult: 1.0, 2.0"' \
        in nodes
    assert ('"deconv\\n(Deconvolution)\\nkernel size: 2\\nstride: 2\\npad: 0\\n'
            'lr mult: 0.5, 1.0"') in nodes
    assert '"ip\\n(InnerProduct)\\nlr mult: 1.0, 1.0"' in nodes
    # one zero multiplier is still shown, printed with one decimal; both zero: not shown
    assert '"ip_w0\\n(InnerProduct)\\nlr mult: 0.0, 3.2"' in nodes      # "%.1f" % 3.25
    assert '"frozen\\n(Convolution)\\nkernel size: 1\\nstride: 1\\npad: 0"' in nodes
    # layers without parameters never get the part
    assert '"pool\\n(Pooling AVE)\\nkernel size: 2\\nstride: 2\\npad: 0"' in nodes
    assert '"relu\\n(ReLU)"' in nodes
    # without display_lrm the labels have no multipliers; TB joins the parts with spaces
    plain = _nodes(draw.get_pydot_graph(net, "LR"))
    assert '"conv\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 0"' in plain
    assert not any("lr mult" in name for name in plain)
    tb = _nodes(draw.get_pydot_graph(net, "TB", display_lrm=True))
    assert '"ip (InnerProduct) lr mult: 1.0, 1.0"' in tb


def test_get_layer_lr_mult_values_and_errors():
    net = parse_text(LRM_NET, caffe_pb2.NetParameter())
    layers = {layer.name: layer for layer in net.layer}
    assert draw.get_layer_lr_mult(layers["conv"]) == (1.0, 2.0)
    assert draw.get_layer_lr_mult(layers["deconv"]) == (0.5, 1.0)
    assert draw.get_layer_lr_mult(layers["ip"]) == (1.0, 1.0)
    assert draw.get_layer_lr_mult(layers["ip_w0"]) == (0.0, 3.25)
    with pytest.raises(ValueError, match="Pooling layers do not have a learning rate"):
        draw.get_layer_lr_mult(layers["pool"])
    three = layers["conv"]
    three.param.add(lr_mult=4)
    with pytest.raises(ValueError, match="conv has 3 param entries"):
        draw.get_layer_lr_mult(three)


def test_draw_net_to_file_five_positional_arguments(tmp_path):
    """python/draw_net.py calls draw_net_to_file(net, file, rankdir, phase, display_lrm)."""
    net = parse_text(LRM_NET, caffe_pb2.NetParameter())
    out = tmp_path / "lrm.raw"
    draw.draw_net_to_file(net, str(out), "TB", None, True)
    text = out.read_text()
    assert "digraph lrm" in text and "rankdir=TB" in text
    assert '"conv (Convolution) kernel size: 3 stride: 1 pad: 0 lr mult: 1.0, 2.0"' in text
    assert draw.draw_net(net, "LR", "raw", caffepy.TEST, True) == \
        draw.get_pydot_graph(net, "LR", phase=caffepy.TEST, display_lrm=True).to_string().encode()


def test_cli_display_lrm_flag(tmp_path):
    src = tmp_path / "net.prototxt"
    src.write_text(LRM_NET)
    out = tmp_path / "net.raw"
    assert draw.main([str(src), str(out), "--display_lrm"]) == 0
    assert "lr mult: 0.5, 1.0" in out.read_text()
    assert draw.main([str(src), str(tmp_path / "plain.raw")]) == 0
    assert "lr mult" not in (tmp_path / "plain.raw").read_text()


# -- every example model draws ------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _example_nets():
    found = []
    for top in ("models", "examples"):
        found += sorted(p for p in (REPO / top).rglob("*.prototxt") if "solver" not in p.name)
    return found


def test_every_example_model_draws():
    from caffepy.net import load_net_param
    paths = _example_nets()
    assert len(paths) >= 10
    rendered = set()                    # Graphviz renders one net per directory (layout is slow)
    for path in paths:
        net = load_net_param(str(path))
        graph = draw.get_pydot_graph(net, "LR")
        names = {n.get_name() for n in graph.get_nodes()}
        for layer in net.layer:            # every layer's blobs are nodes of the graph
            for blob in list(layer.bottom) + list(layer.top):
                assert blob in names, (path, blob)
        n_edges = sum(len(layer.bottom) + len(layer.top) for layer in net.layer)
        assert len(graph.get_edges()) == n_edges, path
        raw = draw.draw_net(net, "LR", "raw", None, True)
        assert raw.startswith(b"digraph"), path
        if shutil.which("dot") is not None and path.parent not in rendered:
            rendered.add(path.parent)
            assert draw.draw_net(net, "LR")[:4] == b"\x89PNG", path


# -- missing Graphviz / no RuntimeWarning ---------------------------------------------------

def test_missing_dot_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))            # no 'dot' anywhere on the PATH
    with pytest.raises(caffepy.ToolError, match="needs Graphviz's 'dot'") as info:
        draw.draw_net(_net(), "LR", "png")
    assert "\n" not in str(info.value) and "apt-get install graphviz" in str(info.value)
    out = tmp_path / "net.png"
    with pytest.raises(caffepy.ToolError):
        draw.draw_net_to_file(_net(), str(out))
    assert not out.exists()                              # nothing half-written
    draw.draw_net_to_file(_net(), str(tmp_path / "net.raw"))   # the dot source needs no dot
    assert (tmp_path / "net.raw").read_text().startswith("digraph drawme")


def test_cli_missing_dot_prints_one_line(tmp_path):
    import os
    import subprocess
    src = tmp_path / "net.prototxt"
    src.write_text(NET)
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "caffepy.draw", str(src), str(tmp_path / "n.png")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("draw: error: ") and "graphviz" in lines[0]


@needs_dot
def test_unknown_format_is_a_one_line_error(tmp_path):
    with pytest.raises(caffepy.ToolError, match="could not render format 'nosuchformat'"):
        draw.draw_net_to_file(_net(), str(tmp_path / "net.nosuchformat"))


def test_module_runs_without_runpy_warning():
    import subprocess
    r = subprocess.run([sys.executable, "-W", "error", "-m", "caffepy.draw", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    assert "--display_lrm" in r.stdout and "input_net_proto_file" in r.stdout


def test_cli_missing_pydot_prints_one_line(tmp_path):
    import subprocess
    src = tmp_path / "net.prototxt"
    src.write_text(NET)
    code = ("import sys; sys.modules['pydot'] = None\n"
            "from caffepy.draw import main\n"
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "n.png")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "draw: error: caffepy.draw needs pydot: pip install pydot (or pip install "
        "'caffepy[draw]'); rendering images also needs Graphviz's 'dot' (e.g. apt-get "
        "install graphviz)"]
