""".caffemodel files: a NetParameter whose layers carry their param blobs.

Writing (:func:`net_weights_chunks`) serializes each layer's settings with protobuf and adds
its blobs as packed float runs straight from the arrays (:mod:`.wire`); the bytes are the ones
protobuf writes for the NetParameter that Caffe's Net::ToProto builds.

Reading (:func:`read_net_weights`) parses everything but the blobs with protobuf (and
upgrades it as ReadNetParamsFromBinaryFileOrDie does) and reads each blob's values as a view
of the file's bytes (:class:`~.blobproto.BlobValues`). Files in an older form (V0/V1
``layers``, ``input`` fields, whose upgrades rebuild the layer list) or in any form the fast
reader does not expect are read by protobuf whole, with the same result.
"""
from google.protobuf.message import DecodeError

from . import caffe_pb2, upgrade
from .blobproto import BlobValues, blobproto_chunks
from .files import parse_binary, read_bytes
from .wire import LEN, Chunks, WireError, scan, splice

_LAYER = 100          # NetParameter.layer
_BLOBS = 7            # LayerParameter.blobs
_NEEDS_WHOLE = (2, 3)  # NetParameter.layers (V0/V1), NetParameter.input


def layer_chunks(layer_param, blobs):
    """The serialized LayerParameter ``layer_param`` with its ``blobs`` replaced by
    ``blobs``: (data, diff or None) array pairs."""
    if len(layer_param.blobs):
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(layer_param)
        del lp.blobs[:]
        layer_param = lp
    entries = Chunks()
    for data, diff in blobs:
        entries.add_message(_BLOBS, blobproto_chunks(data, diff))
    return splice(layer_param.SerializeToString(), {_BLOBS: entries})


def net_weights_chunks(name, layers):
    """Net::ToProto serialized: a NetParameter holding ``name`` and one layer per
    ``(layer_param, [(data, diff or None), ...])`` of ``layers``."""
    entries = Chunks()
    for layer_param, blobs in layers:
        entries.add_message(_LAYER, layer_chunks(layer_param, blobs))
    return splice(caffe_pb2.NetParameter(name=name).SerializeToString(), {_LAYER: entries})


def read_net_weights(path):
    """``(net_param, blobs)`` of the binary NetParameter at ``path``, upgraded:
    ``net_param.layer[i]`` without its blobs, ``blobs[i]`` its blobs, each a
    :class:`~.blobproto.BlobValues` or a ``caffe_pb2.BlobProto``
    (:meth:`BlobValues.of <.blobproto.BlobValues.of>` reads either)."""
    data = read_bytes(path, caffe_pb2.NetParameter())
    try:
        return _read_fast(data, path)
    except WireError:
        pass
    param = parse_binary(data, caffe_pb2.NetParameter(), filename=path)
    del data
    upgrade.upgrade_net_as_needed(param, path)
    return param, [list(lp.blobs) for lp in param.layer]


def _read_fast(data, path):
    rest = Chunks()          # the NetParameter without its blobs
    blobs = []
    for number, wire_type, value, start, end in scan(data):
        if number in _NEEDS_WHOLE:
            raise WireError("an older NetParameter form")
        if number != _LAYER:
            rest.add(data[start:end])
            continue
        if wire_type != LEN:
            raise WireError("layer is not a message")
        lo, hi = value
        settings = Chunks()
        layer_blobs = []
        pos = lo
        for n, wt, v, s, e in scan(data, lo, hi):
            if n == _BLOBS:
                if wt != LEN:
                    raise WireError("blobs entry is not a message")
                settings.add(data[pos:s])
                pos = e
                layer_blobs.append(BlobValues.from_bytes(data, *v))
        settings.add(data[pos:hi])
        rest.add_message(_LAYER, settings)
        blobs.append(layer_blobs)
    param = caffe_pb2.NetParameter()
    try:
        param.ParseFromString(rest.tobytes())
    except (DecodeError, RuntimeError, ValueError):
        raise WireError("layer settings") from None   # protobuf reads the whole file instead
    upgrade.upgrade_net_as_needed(param, path)
    if len(param.layer) != len(blobs):
        raise WireError("the upgrade changed the layer list")
    return param, blobs
