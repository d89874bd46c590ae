"""pycaffe's ``caffe.draw``: draw a NetParameter as a graph with pydot / Graphviz.

* ``get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False)``
  -> ``pydot.Dot``
* ``draw_net(caffe_net, rankdir, ext='png', phase=None, display_lrm=False)`` -> the rendered
  image bytes
* ``draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None, display_lrm=False)`` (format
  from the extension; ``.raw`` writes the dot source and needs no Graphviz)

``caffe_net`` is a ``caffe_pb2.NetParameter``; ``phase`` (``caffepy.TRAIN``/``TEST``) keeps only
the layers whose include/exclude *phase* rules admit it (None draws every layer). Layers are
"record" nodes labelled with name and type ("(Pooling MAX)" for pooling), plus kernel size,
stride and pad for Convolution, Deconvolution and Pooling and, with ``display_lrm``, the
learning-rate multipliers of Convolution, Deconvolution and InnerProduct ("lr mult: 1.0, 2.0",
shown unless both are zero). Colours: convolution/deconvolution #FF5050, pooling #FF9900, inner
product #CC33FF, others #6495ED; an in-place layer with one bottom and one top (ReLU, Dropout,
...) is drawn in the light-green neuron style. Blobs are grey octagons. Edges out of a layer are
labelled "Batch N" for Data, num_output for Convolution/Deconvolution/InnerProduct.

Two small departures from pycaffe's drawing, both cosmetic: a layer given ``kernel_h``/``stride_h``
/``pad_h`` instead of the square fields shows those sizes (pycaffe shows the defaults), and every
blob gets the octagon style (pycaffe leaves blobs that are only ever written unstyled).

pydot is optional (``pip install pydot``); rendering images also needs Graphviz's ``dot``
program. Without either, a :class:`caffepy.ToolError` says what to install.

Command line (pycaffe's python/draw_net.py)::

    python -m caffepy.draw INPUT_NET OUTPUT_IMAGE [--rankdir LR] [--phase TRAIN|TEST|ALL]
                                                  [--display_lrm]
"""
import os
import shutil
import subprocess

from .errors import CaffepyError, ToolError
from .proto import caffe_pb2

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "get_edge_label",
           "get_layer_label", "get_layer_lr_mult", "choose_color_by_layertype",
           "get_pooling_types_dict", "MissingDependencyError", "main"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

_LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


class MissingDependencyError(ToolError, ImportError):
    """pydot or Graphviz's ``dot`` is not installed; the one-line message says how to get it.
    Also an ImportError, so code that guarded ``import pydot`` keeps working."""


def _pydot():
    try:
        import pydot
    except ImportError:
        raise MissingDependencyError(
            "caffepy.draw needs pydot: pip install pydot (or pip install 'caffepy[draw]'); "
            "rendering images also needs Graphviz's 'dot' (e.g. apt-get install graphviz)"
        ) from None
    return pydot


def get_pooling_types_dict():
    """Get dictionary mapping pooling type number to type name."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: k for k, v in desc.values_by_name.items()}


def get_edge_label(layer):
    """Define edge label based on layer type."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """The (weights, bias) learning-rate multipliers of a Convolution, Deconvolution or
    InnerProduct layer: 1.0 for each ``param`` not given (ParamSpec's default). Another layer
    type, or more than two ``param`` entries, raises ValueError."""
    if layer.type not in _LEARNING_LAYERS:
        raise ValueError("%s layers do not have a learning rate multiplier" % layer.type)
    if len(layer.param) > 2:
        raise ValueError("layer %s has %d param entries; a %s layer has at most 2 (weights, "
                         "bias)" % (layer.name, len(layer.param), layer.type))
    mults = [p.lr_mult for p in layer.param] + [1.0] * (2 - len(layer.param))
    return mults[0], mults[1]


def _conv_geometry(p):
    """(kernel, stride, pad) of a ConvolutionParameter: the first repeated value, else the
    _h field when set, else Caffe's defaults."""
    kernel = p.kernel_size[0] if len(p.kernel_size) else (p.kernel_h if p.HasField("kernel_h")
                                                            else 1)
    stride = p.stride[0] if len(p.stride) else (p.stride_h if p.HasField("stride_h") else 1)
    pad = p.pad[0] if len(p.pad) else (p.pad_h if p.HasField("pad_h") else 0)
    return kernel, stride, pad


def _pool_geometry(p):
    kernel = p.kernel_h if (not p.HasField("kernel_size") and p.HasField("kernel_h")) \
        else p.kernel_size
    stride = p.stride_h if (not p.HasField("stride") and p.HasField("stride_h")) else p.stride
    pad = p.pad_h if (not p.HasField("pad") and p.HasField("pad_h")) else p.pad
    return kernel, stride, pad


def get_layer_label(layer, rankdir, display_lrm=False):
    """Define node label based on layer type.

    The parts (name, "(type)", geometry, learning-rate multipliers) are joined with spaces for
    rankdir 'TB' or 'BT' and with newlines otherwise; the label is wrapped in double quotes so
    that Graphviz reads the colons literally.
    """
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        parts.append("(%s %s)" % (layer.type,
                                  get_pooling_types_dict()[layer.pooling_param.pool]))
    else:
        parts.append("(%s)" % layer.type)
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        geometry = (_pool_geometry(layer.pooling_param) if layer.type == "Pooling"
                    else _conv_geometry(layer.convolution_param))
        parts.append(sep.join(["kernel size: %d" % geometry[0], "stride: %d" % geometry[1],
                               "pad: %d" % geometry[2]]))
    if display_lrm and layer.type in _LEARNING_LAYERS:
        w_mult, b_mult = get_layer_lr_mult(layer)
        if w_mult or b_mult:
            parts.append("lr mult: %.1f, %.1f" % (w_mult, b_mult))
    return '"%s"' % sep.join(parts)


def choose_color_by_layertype(layertype):
    """Define colors for nodes based on the layer type."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _included(layer, phase):
    """pycaffe's phase rule: only the ``phase`` of include/exclude rules is looked at."""
    if len(layer.include) > 0 and len(layer.exclude) > 0:
        raise ValueError("layer " + layer.name + " has both include and exclude specified.")
    included = len(layer.include) == 0
    for rule in layer.include:
        included = included or rule.phase == phase
    for rule in layer.exclude:
        included = included and not rule.phase == phase
    return included


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """Create a pydot graph of ``caffe_net``.

    Parameters
    ----------
    caffe_net : caffe_pb2.NetParameter
    rankdir : {'LR', 'TB', 'BT'}
        Direction of graph layout.
    label_edges : boolean, optional
        Label the edges (default is True).
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.
    display_lrm : boolean, optional
        Show the learning-rate multipliers of Convolution, Deconvolution and InnerProduct
        layers (default False).

    Returns
    -------
    pydot graph object
    """
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name if caffe_net.name else "Net", graph_type="digraph",
                      rankdir=rankdir)
    nodes = {}
    edges = []
    for layer in caffe_net.layer:
        if phase is not None and not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node_name = "%s_%s" % (layer.name, layer.type)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            nodes[node_name] = pydot.Node(label, **NEURON_LAYER_STYLE)     # in-place neuron
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
            nodes[node_name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top, **BLOB_STYLE)
            edges.append((node_name, top + "_blob",
                          get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def _render(source, ext):
    """Run Graphviz's dot on the graph source; a missing dot or a format it does not know is a
    one-line error."""
    dot = shutil.which("dot")
    if dot is None:
        raise MissingDependencyError(
            "caffepy.draw: rendering '%s' needs Graphviz's 'dot' program on the PATH (install "
            "Graphviz, e.g. apt-get install graphviz or brew install graphviz); a '.raw' output "
            "file gets the dot source without it" % (ext,))
    try:
        proc = subprocess.run([dot, "-T" + ext], input=source.encode("utf-8"),
                              capture_output=True, check=False)
    except OSError as e:
        raise MissingDependencyError("caffepy.draw: could not run Graphviz's 'dot' (%s): %s"
                                     % (dot, e)) from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError("caffepy.draw: Graphviz's dot could not render format '%s': %s"
                        % (ext, msg[0] if msg else "exit status %d" % proc.returncode))
    return proc.stdout


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """Draws a caffe net and returns the image bytes encoded using the given extension
    (any Graphviz output format; 'raw' gives the dot source).

    Parameters
    ----------
    caffe_net : a caffe_pb2.NetParameter protocol buffer.
    rankdir : {'LR', 'TB', 'BT'}
    ext : string, optional
        The image extension (the default is 'png').
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.
    display_lrm : boolean, optional
        Show the learning-rate multipliers of the learning layers (default False).
    """
    source = get_pydot_graph(caffe_net, rankdir, phase=phase,
                             display_lrm=display_lrm).to_string()
    if ext == "raw":
        return source.encode("utf-8")
    return _render(source, ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draws a caffe net, and saves it to file using the format given as the file extension.
    Use '.raw' to output the dot source, which can be fed to Graphviz by hand.

    Parameters
    ----------
    caffe_net : a caffe_pb2.NetParameter protocol buffer.
    filename : string
        The path to a file where the networks visualization will be stored.
    rankdir : {'LR', 'TB', 'BT'}
        Direction of graph layout.
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.
    display_lrm : boolean, optional
        Show the learning-rate multipliers of the learning layers (default False).
    """
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)   # render before opening
    with open(filename, "wb") as fid:
        fid.write(data)


# -- python/draw_net.py ----------------------------------------------------------------

def _parse_args(argv=None):
    from argparse import ArgumentParser, ArgumentDefaultsHelpFormatter
    parser = ArgumentParser(prog="python -m caffepy.draw",
                            description="Draw a network graph using Graphviz.",
                            formatter_class=ArgumentDefaultsHelpFormatter)
    parser.add_argument("input_net_proto_file", help="Input network prototxt file")
    parser.add_argument("output_image_file", help="Output image file")
    parser.add_argument("--rankdir",
                        help=("One of TB (top-bottom, i.e., vertical), RL (right-left, i.e., "
                              "horizontal), and another valid dot option; see "
                              "http://www.graphviz.org/doc/info/attrs.html#k:rankdir"),
                        default="LR")
    parser.add_argument("--phase",
                        help=("Which network phase to draw: can be TRAIN, TEST, or ALL.  If "
                              "ALL, then all layers are drawn regardless of phase."),
                        default="ALL", choices=["TRAIN", "TEST", "ALL"])
    parser.add_argument("--display_lrm", action="store_true",
                        help=("Show the learning rate multipliers (when not both zero) of the "
                              "learning layers (Convolution, Deconvolution, InnerProduct)."))
    return parser.parse_args(argv)


def main(argv=None):
    """``python -m caffepy.draw``; a caffepy error (bad prototxt, no Graphviz) is one line on
    stderr and exit status 1."""
    import sys
    args = _parse_args(argv)
    phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}[args.phase]
    try:
        from .net import load_net_param
        net = load_net_param(args.input_net_proto_file)
        print("Drawing net to %s" % args.output_image_file)
        draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    except (CaffepyError, ValueError, OSError) as e:
        print("draw: error: %s" % (str(e).splitlines()[0] if str(e) else type(e).__name__),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
