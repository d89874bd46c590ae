"""Caffe's ``Python`` layer: a pycaffe-style layer class named in the prototxt.

``python_param { module: "m" layer: "Cls" param_str: "..." }`` imports ``m``,
instantiates ``Cls(layer_param)``, sets ``param_str`` and ``phase``, and then calls the
object's pycaffe hooks: ``setup(bottom, top)`` once, ``reshape(bottom, top)`` before
every forward, ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``.
Modules written for Caffe do ``import caffe``; when no real Caffe is importable that
name resolves to caffepy, so they run unchanged.
"""
import importlib
import sys

from ..layer import BlobList, Layer, register_layer


def ensure_caffe_alias():
    """Make ``import caffe`` give caffepy, unless a real Caffe is installed."""
    if "caffe" in sys.modules:
        return
    try:
        importlib.import_module("caffe")
    except ImportError:
        import caffepy
        sys.modules["caffe"] = caffepy


@register_layer("Python")
class PythonLayer(Layer):
    def __init__(self, layer_param, phase=None):
        super().__init__(layer_param, phase)
        pp = layer_param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        ensure_caffe_alias()
        try:
            module = importlib.import_module(pp.module)
        except ImportError as e:
            raise self.error("cannot import python_param.module '%s': %s (is its folder on "
                             "PYTHONPATH?)", pp.module, e) from None
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self.error("module '%s' has no class '%s'", pp.module, pp.layer)
        impl = cls(layer_param)
        if not isinstance(getattr(impl, "blobs", None), list):
            impl.blobs = BlobList()
        if len(self.blobs) and not len(impl.blobs):
            impl.blobs.extend(self.blobs)
        self.blobs = impl.blobs
        impl.param_str = pp.param_str
        impl.phase = self.phase
        self.impl = impl

    def layer_setup(self, bottom, top):
        self.impl.setup(bottom, top)
        if not isinstance(self.impl.blobs, BlobList):
            self.impl.blobs = BlobList(self.impl.blobs)
        self.blobs = self.impl.blobs

    def reshape(self, bottom, top):
        self.impl.reshape(bottom, top)

    def forward_impl(self, bottom, top):
        self.impl.forward(bottom, top)

    def backward_impl(self, top, propagate_down, bottom):
        self.impl.backward(top, propagate_down, bottom)
