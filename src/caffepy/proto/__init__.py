"""Caffe's schema (caffe_pb2, generated from caffe.proto) and its file formats."""
from . import caffe_pb2  # noqa: F401
from ..errors import ProtoError  # noqa: F401
from .files import (atomic_write, parse_binary, parse_text, read_binary, read_proto,  # noqa: F401
                    read_text, write_binary, write_text)
from .blobproto import (array_to_blobproto, arrays_to_blobprotovector,  # noqa: F401
                        blobproto_is_legacy, blobproto_shape, blobproto_shape_equals,
                        blobproto_to_array, blobprotovector_to_arrays,
                        read_mean_binaryproto, set_blobproto, write_mean_binaryproto)
