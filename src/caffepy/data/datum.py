"""Datum <-> array: the one codec for Caffe's Datum records (the values of LMDB/LevelDB).

A Datum {channels, height, width, data, label, float_data, encoded} holds one C×H×W item:

* raw: ``data`` holds the C×H×W planar uint8 pixels. It takes priority over ``float_data``
  when both are set, as in Caffe's DataTransformer;
* float: ``float_data`` holds the C×H×W values (float32 in the record);
* encoded: ``data`` holds an image file (PNG, JPEG, ...), decoded with Pillow into C×H×W uint8
  planes in OpenCV's BGR order (``caffepy.data.image``); channels/height/width are unused.

The databases (``caffepy.data.db``), the data layers (through the DataTransformer), the
dataset tools and pycaffe's ``caffe.io`` all read and write Datums through these functions.
"""
import numpy as np

from ..errors import DataError
from ..proto import caffe_pb2
from .image import decode_image as _decode_image


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


def key_str(key):
    """A record key for messages: quoted text (bytes decoded as UTF-8; bytes that are not
    UTF-8 as a bytes literal, b'\\xff...', so the key can be found again), "?" if unknown."""
    if key is None:
        return "?"
    if isinstance(key, bytes):
        try:
            return repr(key.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(key)
    return repr(key)


def _where(key):
    return "encoded Datum" if key is None else "record %s" % key_str(key)


# -- decoding ----------------------------------------------------------------------------

def parse_datum(value, key=None, error=_default_error):
    """A serialized Datum (a database value) -> caffe_pb2.Datum; errors name the key."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:
        raise error("record %s is not a valid Datum: %s", key_str(key), e) from None
    return datum


def decode_image(data, force_color=False, force_gray=False, error=_default_error, key=None):
    """Decode an encoded Datum's image bytes to a C×H×W uint8 array, as Caffe's DataTransformer
    does: force_color -> 3 channels (BGR), force_gray -> 1, neither -> OpenCV's
    IMREAD_ANYCOLOR (3 channels for a colour image, 1 for a grey one)."""
    if force_color and force_gray:
        raise error("transform_param: cannot set both force_color and force_gray")
    mode = "color" if force_color else "gray" if force_gray else "native"
    return _decode_image(data, mode, error, _where(key))


def datum_values(datum, float_dtype=np.float32):
    """A raw Datum's values, flat: its uint8 ``data`` if it has any (a read-only view of the
    bytes), else its ``float_data`` as ``float_dtype``. Shapes are not checked."""
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8)
    return np.asarray(datum.float_data, dtype=float_dtype)


def datum_to_array(datum, force_color=False, force_gray=False, error=_default_error, key=None,
                   float_dtype=np.float32, allow_empty=False):
    """The Datum's item as a C×H×W array.

    Encoded: the decoded uint8 image (see decode_image). Raw: uint8 ``data`` (a read-only view
    of the record's bytes), else ``float_data`` as ``float_dtype``. The number of values must be
    channels × height × width, and channels positive unless ``allow_empty``; otherwise
    ``error`` (DataError by default) is raised naming the record ``key``.
    """
    if datum.encoded:
        return decode_image(datum.data, force_color, force_gray, error, key)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 and not allow_empty:
        raise error("record %s: Datum channels must be positive (got %d)", key_str(key), c)
    vals = datum_values(datum, float_dtype)
    n = c * h * w
    if vals.size != n:
        if len(datum.data):
            what = "data holds %d bytes" % vals.size
        else:
            what = "float_data holds %d values" % vals.size
        raise error("record %s: Datum %s but channels x height x width = %d x %d x %d = %d",
                    key_str(key), what, c, h, w, n)
    return vals.reshape(c, h, w)


# -- encoding ----------------------------------------------------------------------------

def array_to_datum(arr, label=None, datum=None):
    """A Datum holding the C×H×W array ``arr``: uint8 arrays as raw ``data`` bytes, any other
    dtype as float32 ``float_data`` (pycaffe's caffe.io.array_to_datum). ``label`` is set when
    given. ``datum``, when given, is cleared and filled (reused across records)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError("Incorrect array shape: a Datum holds a C x H x W array, got shape %s"
                        % (arr.shape,))
    datum = caffe_pb2.Datum() if datum is None else datum
    datum.Clear()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data[:] = np.ascontiguousarray(arr, dtype=np.float32).ravel()
    if label is not None:
        datum.label = int(label)
    return datum


def encoded_datum(data, label=None, datum=None):
    """A Datum holding the image file bytes ``data`` (encoded: true), and ``label`` if given.
    ``datum``, when given, is cleared and filled."""
    datum = caffe_pb2.Datum() if datum is None else datum
    datum.Clear()
    datum.data = bytes(data)
    datum.encoded = True
    if label is not None:
        datum.label = int(label)
    return datum
