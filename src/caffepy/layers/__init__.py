"""Caffe's layer types, one class per type, grouped by family.

Importing this package registers every built-in type with the layer registry.
"""
from . import data, vision, neuron, common, normalization, loss, recurrent, python_layer  # noqa: F401
