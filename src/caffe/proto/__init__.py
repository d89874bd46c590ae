"""``caffe.proto``: pycaffe's package of the schema, ``caffe.proto.caffe_pb2``.

``caffe_pb2`` is caffepy's own ``caffepy.proto.caffe_pb2`` (the same module object); caffepy's
proto file helpers (``read_text``, ``write_binary``, ...) are in :mod:`caffepy.proto`.
"""
from . import caffe_pb2  # noqa: F401

__all__ = ["caffe_pb2"]
