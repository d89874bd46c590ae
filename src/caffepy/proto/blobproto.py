"""BlobProto <-> array: the one codec for Caffe's serialized blobs.

Inside caffepy a BlobProto reads as Caffe's ``Blob::FromProto`` reads it: the legacy 4-D shape
(num, channels, height, width) if any of those fields is set, otherwise ``shape.dim``; the
values from ``double_data``/``double_diff`` when present, otherwise ``data``/``diff``; float32.
pycaffe's ``caffe.io`` (``caffepy.io``) reads the same shape but the single-precision fields
first, as float64; both go through :func:`blobproto_to_array`.
"""
import numpy as np

from . import caffe_pb2
from ..errors import ProtoError
from .files import parse_binary, read_binary, write_binary

_LEGACY_FIELDS = ("num", "channels", "height", "width")


def blobproto_is_legacy(bp):
    """Whether the BlobProto gives its shape in the legacy num/channels/height/width fields
    (any one of them set)."""
    return any(bp.HasField(f) for f in _LEGACY_FIELDS)


def blobproto_shape(bp):
    """The blob's shape: legacy (num, channels, height, width) if any is set, else shape.dim."""
    if blobproto_is_legacy(bp):
        return (bp.num, bp.channels, bp.height, bp.width)
    return tuple(int(d) for d in bp.shape.dim)


def blobproto_shape_equals(shape, bp):
    """Caffe's Blob::ShapeEquals: whether a blob of ``shape`` matches the BlobProto. A legacy
    4-D proto matches a blob of at most 4 axes padded with leading 1s (a bias of shape (N,)
    matches 1 x 1 x 1 x N); otherwise shape.dim must equal the shape."""
    shape = tuple(int(d) for d in shape)
    if blobproto_is_legacy(bp):
        return len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == blobproto_shape(bp)
    return shape == blobproto_shape(bp)


def _values(bp, return_diff, prefer_double):
    """(name, values) of the field to read: the preferred precision when it holds values,
    otherwise the other one."""
    kind = "diff" if return_diff else "data"
    single, double = getattr(bp, kind), getattr(bp, "double_" + kind)
    first, second = (double, single) if prefer_double else (single, double)
    vals = first if len(first) or not len(second) else second
    return ("double_" + kind if vals is double else kind), vals


def blobproto_to_array(bp, return_diff=False, dtype=np.float32, prefer_double=True):
    """The BlobProto's data (or its diff if ``return_diff``) as an array of its shape.

    ``prefer_double`` reads ``double_data``/``double_diff`` when they hold values (Caffe's
    Blob::FromProto); otherwise ``data``/``diff`` are read first (pycaffe). Raises ProtoError
    when the number of values does not match the shape.
    """
    shape = blobproto_shape(bp)
    field, vals = _values(bp, return_diff, prefer_double)
    arr = np.asarray(vals, dtype=dtype)
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if arr.size != count:
        raise ProtoError("BlobProto holds %d %s values but its shape %s needs %d"
                         % (arr.size, field, " x ".join(map(str, shape)) or "()", count))
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None, bp=None):
    """A BlobProto with ``shape.dim`` = arr.shape and float ``data`` (and ``diff`` if given; its
    shape is not checked, as in pycaffe). ``bp``, when given, is cleared and filled."""
    bp = caffe_pb2.BlobProto() if bp is None else bp
    bp.Clear()
    arr = np.asarray(arr)
    bp.shape.dim.extend(int(d) for d in arr.shape)
    bp.data[:] = np.ascontiguousarray(arr, dtype=np.float32).ravel()
    if diff is not None:
        bp.diff[:] = np.ascontiguousarray(diff, dtype=np.float32).ravel()
    return bp


def set_blobproto(bp, data, diff=None):
    """Fill ``bp`` (cleared first) with ``data``'s shape and float values, and ``diff``."""
    return array_to_blobproto(data, diff, bp)


def arrays_to_blobprotovector(arrays):
    """A BlobProtoVector holding one BlobProto (shape.dim, data) per array."""
    vec = caffe_pb2.BlobProtoVector()
    for arr in arrays:
        array_to_blobproto(arr, bp=vec.blobs.add())
    return vec


def blobprotovector_to_arrays(data, dtype=np.float32, prefer_double=True,
                              filename="<BlobProtoVector bytes>"):
    """Parse serialized BlobProtoVector bytes into a list of arrays (see blobproto_to_array)."""
    vec = parse_binary(data, caffe_pb2.BlobProtoVector(), filename)
    return [blobproto_to_array(bp, dtype=dtype, prefer_double=prefer_double) for bp in vec.blobs]


def read_mean_binaryproto(path):
    """A mean file (binaryproto) as a float32 array of its stored shape."""
    bp = read_binary(path, caffe_pb2.BlobProto())
    return blobproto_to_array(bp)


def write_mean_binaryproto(arr, path):
    """Write a C×H×W (or 1×C×H×W) mean as compute_image_mean does: legacy 4-D fields."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ProtoError("a mean file holds a C x H x W (or 1 x C x H x W) array; got shape %s "
                         "for '%s'" % (arr.shape, path))
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = arr.shape
    bp.data[:] = arr.ravel()
    write_binary(bp, path)
