"""Caffe's layer types, one class per type, grouped by family.

Importing this package registers every built-in type with the layer registry.
"""
from . import (data, conv, pooling, neuron, common, normalization, loss, recurrent,  # noqa: F401
               python_layer, vision)


def __getattr__(name):
    # pycaffe's net_spec pseudo-module: caffepy.layers.Convolution(...) == caffe.layers.Convolution
    if name[:1].isupper():
        from ..net_spec import layers as _ns_layers
        return getattr(_ns_layers, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
