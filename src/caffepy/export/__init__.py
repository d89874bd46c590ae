"""Exporting caffepy nets to other runtimes.

:func:`to_onnx` writes a built :class:`caffepy.Net` (TEST phase) as an ONNX model;
:func:`export_onnx` builds the net from a prototxt (a deploy net, or a train_val net whose TEST
phase is exported with its data layers turned into graph inputs) and weights first.
``onnx`` itself is needed only when exporting: ``pip install caffepy[onnx]``.
See docs/onnx.md for the layer table.
"""
from .onnx import (DEFAULT_OPSET, SUPPORTED_OPSETS, ExportError, export_onnx, load_for_export,
                   supported_layer_types, to_onnx)

__all__ = ["to_onnx", "export_onnx", "load_for_export", "supported_layer_types", "ExportError",
           "DEFAULT_OPSET", "SUPPORTED_OPSETS"]
