"""Reading and writing Caffe's files: text prototxt, binary protobuf, BlobProto arrays.

Errors name the file, the line and the field, so a typo in a prototxt reads like a
compiler message rather than a traceback.
"""
import os

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from . import caffe_pb2
from ..errors import ProtoError  # noqa: F401


# -- text format --------------------------------------------------------------------

def parse_text(text, message, filename="<string>"):
    """Parse protobuf text into ``message``; errors say file:line:column and what is wrong."""
    try:
        text_format.Merge(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line = getattr(e, "GetLine", lambda: None)()
        col = getattr(e, "GetColumn", lambda: None)()
        msg = str(e)
        # ParseError's text starts with "line:col : " when it knows the place.
        if line is not None and msg.startswith("%s:%s" % (line, col)):
            msg = msg.split(":", 2)[2].strip()
        where = filename if line is None else "%s:%s:%s" % (filename, line, col)
        raise ProtoError("%s: cannot parse %s: %s" % (where, message.DESCRIPTOR.name, msg)) from None
    return message


def read_text(path, message):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ProtoError("cannot read %s file '%s': %s"
                         % (message.DESCRIPTOR.name, path, e.strerror or e)) from None
    return parse_text(text, message, filename=path)


def write_text(message, path):
    atomic_write(path, text_format.MessageToString(message).encode("utf-8"))


# -- binary format ------------------------------------------------------------------

def parse_binary(data, message, filename="<bytes>"):
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ProtoError("%s: not a valid binary %s (truncated or corrupt file?): %s"
                         % (filename, message.DESCRIPTOR.name, e)) from None
    return message


def read_binary(path, message):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProtoError("cannot read %s file '%s': %s"
                         % (message.DESCRIPTOR.name, path, e.strerror or e)) from None
    return parse_binary(data, message, filename=path)


def write_binary(message, path):
    atomic_write(path, message.SerializeToString())


def read_proto(path, message):
    """Binary or text, whichever the file holds (binary first, like Caffe's tools)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        message.ParseFromString(data)
        return message
    except Exception:
        message.Clear()
    return parse_text(data.decode("utf-8", errors="replace"), message, filename=path)


def atomic_write(path, data):
    """Write ``data`` (bytes) to ``path`` via a temporary file and a rename.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- BlobProto <-> array -------------------------------------------------------------

def blobproto_shape(bp):
    if bp.HasField("num") or bp.HasField("channels") or bp.HasField("height") or bp.HasField("width"):
        return (bp.num, bp.channels, bp.height, bp.width)
    return tuple(int(d) for d in bp.shape.dim)


def blobproto_to_array(bp, return_diff=False):
    """A float32 array with the BlobProto's shape (legacy 4-D fields take precedence)."""
    shape = blobproto_shape(bp)
    if return_diff:
        vals = bp.double_diff if len(bp.double_diff) else bp.diff
    else:
        vals = bp.double_data if len(bp.double_data) else bp.data
    arr = np.asarray(vals, dtype=np.float32)
    count = int(np.prod(shape)) if len(shape) else 1
    if arr.size != count:
        raise ProtoError("BlobProto holds %d values but its shape %s needs %d"
                         % (arr.size, shape, count))
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None, bp=None):
    bp = caffe_pb2.BlobProto() if bp is None else bp
    arr = np.asarray(arr)
    bp.shape.dim.extend(int(d) for d in arr.shape)
    bp.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        bp.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return bp


def set_blobproto(bp, data, diff=None):
    """Fill ``bp`` with shape and float data quickly (bulk copy via numpy)."""
    bp.Clear()
    bp.shape.dim.extend(int(d) for d in data.shape)
    bp.data[:] = np.ascontiguousarray(data, dtype=np.float32).ravel()
    if diff is not None:
        bp.diff[:] = np.ascontiguousarray(diff, dtype=np.float32).ravel()
    return bp


def read_mean_binaryproto(path):
    bp = read_binary(path, caffe_pb2.BlobProto())
    return blobproto_to_array(bp)


def write_mean_binaryproto(arr, path):
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = arr.shape
    bp.data[:] = arr.ravel()
    write_binary(bp, path)
