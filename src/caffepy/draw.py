"""pycaffe's ``caffe.draw``: draw a NetParameter as a graph with pydot / Graphviz.

* ``get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None)`` -> ``pydot.Dot``
* ``draw_net(caffe_net, rankdir, ext='png', phase=None)`` -> the rendered image bytes
* ``draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None)`` (format from the extension)

``caffe_net`` is a ``caffe_pb2.NetParameter``; ``phase`` (``caffepy.TRAIN``/``TEST``) keeps only
the layers whose include/exclude *phase* rules admit it (None draws every layer). Layers are
"record" nodes labelled with name and type (plus kernel size, stride and pad for convolution and
pooling), coloured convolution/deconvolution #FF5050, pooling #FF9900, inner product #CC33FF,
others #6495ED; an in-place layer with one bottom and one top (ReLU, Dropout, ...) is drawn in
the light-green neuron style. Blobs are grey octagons. Edges out of a layer are labelled
"Batch N" for Data, num_output for Convolution/Deconvolution/InnerProduct.

pydot is optional (``pip install pydot``); rendering images also needs Graphviz's ``dot``.

Command line (python/draw_net.py)::

    python -m caffepy.draw INPUT_NET OUTPUT_IMAGE [--rankdir LR] [--phase TRAIN|TEST|ALL]
"""
import errno

from .proto import caffe_pb2

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "get_edge_label",
           "get_layer_label", "choose_color_by_layertype", "get_pooling_types_dict", "main"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}


def _pydot():
    try:
        import pydot
    except ImportError:
        raise ImportError("caffepy.draw needs pydot: pip install pydot "
                          "(rendering images also needs Graphviz's 'dot' program, e.g. "
                          "apt-get install graphviz)") from None
    return pydot


def get_pooling_types_dict():
    """Get dictionary mapping pooling type number to type name."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: k for k, v in desc.values_by_name.items()}


def get_edge_label(layer):
    """Define edge label based on layer type."""
    if layer.type == "Data":
        edge_label = "Batch " + str(layer.data_param.batch_size)
    elif layer.type in ("Convolution", "Deconvolution"):
        edge_label = str(layer.convolution_param.num_output)
    elif layer.type == "InnerProduct":
        edge_label = str(layer.inner_product_param.num_output)
    else:
        edge_label = '""'
    return edge_label


def _conv_geometry(p):
    """(kernel, stride, pad) of a ConvolutionParameter: the first repeated value, else the
    _h field when set, else Caffe's defaults (pycaffe prints only the repeated fields)."""
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


def get_layer_label(layer, rankdir):
    """Define node label based on layer type.

    rankdir 'TB' or 'BT' separates the label's parts with spaces, others with newlines.
    """
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    if layer.type in ("Convolution", "Deconvolution"):
        kernel, stride, pad = _conv_geometry(layer.convolution_param)
        node_label = '"%s%s(%s)%skernel size: %d%sstride: %d%spad: %d"' % (
            layer.name, separator, layer.type, separator, kernel, separator, stride,
            separator, pad)
    elif layer.type == "Pooling":
        kernel, stride, pad = _pool_geometry(layer.pooling_param)
        node_label = '"%s%s(%s %s)%skernel size: %d%sstride: %d%spad: %d"' % (
            layer.name, separator, get_pooling_types_dict()[layer.pooling_param.pool],
            layer.type, separator, kernel, separator, stride, separator, pad)
    else:
        node_label = '"%s%s(%s)"' % (layer.name, separator, layer.type)
    return node_label


def choose_color_by_layertype(layertype):
    """Define colors for nodes based on the layer type."""
    color = "#6495ED"  # Default
    if layertype in ("Convolution", "Deconvolution"):
        color = "#FF5050"
    elif layertype == "Pooling":
        color = "#FF9900"
    elif layertype == "InnerProduct":
        color = "#CC33FF"
    return color


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


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None):
    """Create a data structure which represents the `caffe_net`.

    Parameters
    ----------
    caffe_net : caffe_pb2.NetParameter
    rankdir : {'LR', 'TB', 'BT'}
        Direction of graph layout.
    label_edges : boolean, optional
        Label the edges (default is True).
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.
        (the default is None)

    Returns
    -------
    pydot graph object
    """
    pydot = _pydot()
    pydot_graph = pydot.Dot(caffe_net.name if caffe_net.name else "Net",
                            graph_type="digraph", rankdir=rankdir)
    pydot_nodes = {}
    pydot_edges = []
    for layer in caffe_net.layer:
        if phase is not None and not _included(layer, phase):
            continue
        node_label = get_layer_label(layer, rankdir)
        node_name = "%s_%s" % (layer.name, layer.type)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            # We have an in-place neuron layer.
            pydot_nodes[node_name] = pydot.Node(node_label, **NEURON_LAYER_STYLE)
        else:
            layer_style = dict(LAYER_STYLE_DEFAULT)
            layer_style["fillcolor"] = choose_color_by_layertype(layer.type)
            pydot_nodes[node_name] = pydot.Node(node_label, **layer_style)
        for bottom_blob in layer.bottom:
            pydot_nodes[bottom_blob + "_blob"] = pydot.Node("%s" % bottom_blob, **BLOB_STYLE)
            pydot_edges.append({"src": bottom_blob + "_blob", "dst": node_name,
                                "label": '""'})
        for top_blob in layer.top:
            pydot_nodes[top_blob + "_blob"] = pydot.Node("%s" % top_blob, **BLOB_STYLE)
            edge_label = get_edge_label(layer) if label_edges else '""'
            pydot_edges.append({"src": node_name, "dst": top_blob + "_blob",
                                "label": edge_label})
    # Now, add the nodes and edges to the graph.
    for node in pydot_nodes.values():
        pydot_graph.add_node(node)
    for edge in pydot_edges:
        pydot_graph.add_edge(pydot.Edge(pydot_nodes[edge["src"]], pydot_nodes[edge["dst"]],
                                        label=edge["label"]))
    return pydot_graph


def draw_net(caffe_net, rankdir, ext="png", phase=None):
    """Draws a caffe net and returns the image string encoded using the given extension.

    Parameters
    ----------
    caffe_net : a caffe_pb2.NetParameter protocol buffer.
    ext : string, optional
        The image extension (the default is 'png').
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.

    Returns
    -------
    string :
        Postscript representation of the graph.
    """
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase)
    if ext == "raw":                     # the dot source itself; no Graphviz needed
        return graph.to_string().encode("utf-8")
    try:
        return graph.create(format=ext)
    except OSError as e:
        if getattr(e, "errno", None) == errno.ENOENT or isinstance(e, FileNotFoundError):
            raise RuntimeError("caffepy.draw: rendering needs Graphviz's 'dot' program on the "
                               "PATH (e.g. apt-get install graphviz): %s" % (e,)) from None
        raise


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None):
    """Draws a caffe net, and saves it to file using the format given as the file extension.
    Use '.raw' to output raw text that you can manually feed to graphviz to draw graphs.

    Parameters
    ----------
    caffe_net : a caffe_pb2.NetParameter protocol buffer.
    filename : string
        The path to a file where the networks visualization will be stored.
    rankdir : {'LR', 'TB', 'BT'}
        Direction of graph layout.
    phase : {caffe_pb2.Phase.TRAIN, caffe_pb2.Phase.TEST, None} optional
        Include layers from this network phase.  If None, include all layers.
    """
    filename = str(filename)
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase)
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
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    from .net import load_net_param
    net = load_net_param(args.input_net_proto_file)
    print("Drawing net to %s" % args.output_image_file)
    phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}[args.phase]
    draw_net_to_file(net, args.output_image_file, args.rankdir, phase)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
