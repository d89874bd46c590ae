"""Caffe's schema (caffe_pb2, generated from caffe.proto) and its file formats."""
from . import caffe_pb2  # noqa: F401
