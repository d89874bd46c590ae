"""BlobProto <-> array: the one codec for Caffe's serialized blobs.

Inside caffepy a BlobProto reads as Caffe's ``Blob::FromProto`` reads it: the legacy 4-D shape
(num, channels, height, width) if any of those fields is set, otherwise ``shape.dim``; the
values from ``double_data``/``double_diff`` when present, otherwise ``data``/``diff``; float32.
pycaffe's ``caffe.io`` (``caffepy.io``) reads the same shape but the single-precision fields
first, as float64; both go through :func:`blobproto_to_array`.
"""
import numpy as np
from google.protobuf.message import DecodeError

from . import caffe_pb2
from ..errors import ProtoError
from .files import parse_binary, read_binary, write_serialized
from .wire import LEN, VARINT, Chunks, WireError, encode_varint, field_key, scan

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
    field, vals = _values(bp, return_diff, prefer_double)
    return _shaped(np.asarray(vals, dtype=dtype), blobproto_shape(bp), field)


class BlobValues:
    """A BlobProto as :meth:`Blob::FromProto <blobproto_to_array>` reads it, taken either from
    a parsed message (:meth:`from_proto`) or straight from serialized bytes
    (:meth:`from_bytes`: the value runs are NumPy views of those bytes, not copies).

    ``legacy``: the (num, channels, height, width) tuple when any of those fields is set,
    else None; ``dims``: shape.dim; ``data``, ``diff``, ``double_data``, ``double_diff``:
    1-D arrays (float32, float32, float64, float64)."""

    __slots__ = ("legacy", "dims", "data", "diff", "double_data", "double_diff")

    def __init__(self, legacy, dims, data, diff, double_data, double_diff):
        self.legacy = legacy
        self.dims = dims
        self.data, self.diff = data, diff
        self.double_data, self.double_diff = double_data, double_diff

    @classmethod
    def from_proto(cls, bp):
        legacy = (bp.num, bp.channels, bp.height, bp.width) if blobproto_is_legacy(bp) else None
        return cls(legacy, tuple(int(d) for d in bp.shape.dim),
                   np.asarray(bp.data, dtype=np.float32), np.asarray(bp.diff, dtype=np.float32),
                   np.asarray(bp.double_data, dtype=np.float64),
                   np.asarray(bp.double_diff, dtype=np.float64))

    @classmethod
    def of(cls, blob):
        """``blob`` itself if it is a BlobValues, else the BlobProto message read."""
        return blob if isinstance(blob, cls) else cls.from_proto(blob)

    @classmethod
    def from_bytes(cls, buf, start=0, end=None):
        """Read the serialized BlobProto at ``buf[start:end]``. Raises WireError for anything
        but the usual form (each value field once, packed; no groups), which protobuf's parser
        then reads instead."""
        legacy = [None, 0, 0, 0, 0]           # [set?, num, channels, height, width]
        runs = {}
        shape = None
        for number, wire_type, value, _, _ in scan(buf, start, end):
            if 1 <= number <= 4:
                if wire_type != VARINT:
                    raise WireError("BlobProto field %d is not a varint" % number)
                value &= 0xFFFFFFFF                      # int32, as protobuf truncates it
                legacy[0] = True
                legacy[number] = value - (1 << 32) if value >= 1 << 31 else value
            elif number in _RUN_FIELDS:
                if wire_type != LEN or number in runs:
                    raise WireError("BlobProto field %d is not one packed run" % number)
                dtype = _RUN_FIELDS[number]
                lo, hi = value
                if (hi - lo) % dtype.itemsize:
                    raise WireError("BlobProto field %d: a partial value" % number)
                runs[number] = np.frombuffer(buf, dtype=dtype, count=(hi - lo) // dtype.itemsize,
                                             offset=lo)
            elif number == 7:
                if wire_type != LEN:
                    raise WireError("BlobProto shape is not a message")
                if shape is None:
                    shape = caffe_pb2.BlobShape()
                try:
                    shape.MergeFromString(bytes(buf[value[0]:value[1]]))
                except (DecodeError, RuntimeError, ValueError) as e:
                    raise WireError("BlobProto shape: %s" % e) from None
        empty32, empty64 = np.zeros(0, np.float32), np.zeros(0, np.float64)
        return cls(tuple(legacy[1:]) if legacy[0] else None,
                   tuple(int(d) for d in shape.dim) if shape is not None else (),
                   runs.get(5, empty32), runs.get(6, empty32),
                   runs.get(8, empty64), runs.get(9, empty64))

    @property
    def shape(self):
        return self.legacy if self.legacy is not None else self.dims

    def shape_equals(self, shape):
        """Caffe's Blob::ShapeEquals (see :func:`blobproto_shape_equals`)."""
        shape = tuple(int(d) for d in shape)
        if self.legacy is not None:
            return len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == self.legacy
        return shape == self.dims

    def to_array(self, return_diff=False, dtype=np.float32, prefer_double=True):
        """The values as an array of the blob's shape (see :func:`blobproto_to_array`); a view
        of the serialized bytes when the stored precision is ``dtype``."""
        kind = "diff" if return_diff else "data"
        single, double = getattr(self, kind), getattr(self, "double_" + kind)
        first, second = (double, single) if prefer_double else (single, double)
        vals = first if first.size or not second.size else second
        field = "double_" + kind if vals is double else kind
        return _shaped(np.asarray(vals, dtype=dtype), self.shape, field)


_RUN_FIELDS = {5: np.dtype("<f4"), 6: np.dtype("<f4"), 8: np.dtype("<f8"), 9: np.dtype("<f8")}


def _shaped(arr, shape, field):
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if arr.size != count:
        raise ProtoError("BlobProto holds %d %s values but its shape %s needs %d"
                         % (arr.size, field, " x ".join(map(str, shape)) or "()", count))
    return arr.reshape(shape)


def blobproto_chunks(data, diff=None, legacy=False):
    """The serialized BlobProto of ``data`` (and ``diff``) as :class:`~.wire.Chunks`: the
    bytes protobuf writes for a BlobProto with ``shape.dim`` = data's shape (or, ``legacy``,
    the 4-D num/channels/height/width fields) and float32 ``data``/``diff``, the value runs
    taken straight from the arrays' memory (bit for bit, NaN payloads included)."""
    arr = np.asarray(data)
    out = Chunks()
    if legacy:
        num, channels, height, width = arr.shape
        out.add(caffe_pb2.BlobProto(num=num, channels=channels, height=height,
                                    width=width).SerializeToString())
    out.add_packed(5, np.ascontiguousarray(arr, dtype="<f4"))
    if diff is not None:
        out.add_packed(6, np.ascontiguousarray(diff, dtype="<f4"))
    if not legacy:
        dims = b"".join(encode_varint(int(d)) for d in arr.shape)
        shape = Chunks()
        if dims:
            shape.add(field_key(1, LEN) + encode_varint(len(dims)) + dims)
        out.add_message(7, shape)
    return out


def array_to_blobproto(arr, diff=None, bp=None):
    """A BlobProto with ``shape.dim`` = arr.shape and float ``data`` (and ``diff`` if given; its
    shape is not checked, as in pycaffe). ``bp``, when given, is cleared and filled."""
    bp = caffe_pb2.BlobProto() if bp is None else bp
    bp.Clear()
    bp.MergeFromString(blobproto_chunks(arr, diff).tobytes())
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
    write_serialized(blobproto_chunks(arr, legacy=True), path)
