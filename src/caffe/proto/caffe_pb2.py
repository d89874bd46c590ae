"""``caffe.proto.caffe_pb2``: caffepy's generated Caffe schema under pycaffe's name.

This module replaces itself with ``caffepy.proto.caffe_pb2`` in ``sys.modules``: one module
object, and ``caffe.proto`` is registered in protobuf's descriptor pool once only.
"""
import sys

from caffepy.proto import caffe_pb2 as _module

sys.modules[__name__] = _module
