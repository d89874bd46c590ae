"""BlobProto <-> array: the one codec for Caffe's serialized blobs (float32 inside caffepy)."""
import numpy as np

from . import caffe_pb2
from ..errors import ProtoError
from .files import read_binary, write_binary


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
