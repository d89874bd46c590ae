"""Caffe's ``Python`` layer: a pycaffe-style layer class named in the prototxt.

``python_param { module: "m" layer: "Cls" param_str: "..." }`` imports ``m``,
instantiates ``Cls(layer_param)``, sets ``param_str`` and ``phase``, and then calls the
object's pycaffe hooks: ``setup(bottom, top)`` once, ``reshape(bottom, top)`` before
every forward, ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``.
Modules written for Caffe do ``import caffe``; when no real Caffe is importable that
name resolves to caffepy, so they run unchanged.

An exception raised inside those hooks comes out as a :class:`PythonLayerError` (a
``LayerError`` and a ``NetError``) naming the layer and its ``module.Class``, with the
original exception as its ``__cause__``. Importing runs the module's code, so a net built
with Python layers refused (caffepy.security) never gets here.
"""
import importlib
import sys

from ..errors import LayerError, NetError
from ..layer import BlobList, Layer, register_layer
from .. import security


class PythonLayerError(LayerError, NetError, RuntimeError):
    """An error raised by a Python layer's own code (import, construction, setup, reshape,
    forward or backward); ``__cause__`` holds the original exception. Also a RuntimeError,
    as pycaffe reports a failing Python layer."""


def ensure_caffe_alias():
    """Make ``import caffe`` give caffepy, unless a real Caffe is installed."""
    if "caffe" in sys.modules:
        return
    try:
        importlib.import_module("caffe")
    except ImportError:
        import caffepy
        sys.modules["caffe"] = caffepy


def refusal(layer_param, where=""):
    """The error for a Python layer in a net built with Python layers refused."""
    pp = layer_param.python_param
    return NetError("Layer '%s' (Python)%s: Python layers are refused (safe mode: "
                    "allow_python_layers=False, --no_python_layers or %s=1); it would import "
                    "and run module '%s' (class '%s'). Build the net with Python layers "
                    "allowed only if you trust the file."
                    % (layer_param.name, where, security.SAFE_ENV, pp.module, pp.layer))


def _describe(e):
    return "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__


@register_layer("Python")
class PythonLayer(Layer):
    def __init__(self, layer_param, phase=None):
        super().__init__(layer_param, phase)
        pp = layer_param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        if not security.python_layers_allowed():
            raise refusal(layer_param)
        self.impl_name = "%s.%s" % (pp.module, pp.layer)
        ensure_caffe_alias()
        try:
            module = importlib.import_module(pp.module)
        except ImportError as e:
            missing = getattr(e, "name", None)
            if missing and missing != pp.module and not pp.module.startswith(missing + "."):
                raise self._wrap(e, "python_param.module '%s' (class '%s') failed to import: "
                                 "it needs module '%s', which cannot be imported",
                                 pp.module, pp.layer, missing)
            raise self._wrap(e, "cannot import python_param.module '%s' (for class '%s'): %s "
                             "(is its folder on PYTHONPATH?)", pp.module, pp.layer, e)
        except Exception as e:
            raise self._wrap(e, "python_param.module '%s' (class '%s') raised while being "
                             "imported: %s", pp.module, pp.layer, _describe(e))
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self._wrap(None, "module '%s' (%s) has no class '%s' (python_param.layer)",
                             pp.module, getattr(module, "__file__", None) or "built in",
                             pp.layer)
        if not callable(cls):
            raise self._wrap(None, "python_param.layer '%s' in module '%s' is a %s, not a "
                             "class", pp.layer, pp.module, type(cls).__name__)
        try:
            impl = cls(layer_param)
        except Exception as e:
            raise self._hook_error(e, "__init__")
        if not isinstance(getattr(impl, "blobs", None), list):
            impl.blobs = BlobList()
        if len(self.blobs) and not len(impl.blobs):
            impl.blobs.extend(self.blobs)
        self.blobs = impl.blobs
        impl.param_str = pp.param_str
        impl.phase = self.phase
        self.impl = impl

    def _wrap(self, cause, msg, *args):
        err = PythonLayerError("Layer '%s' (Python): %s" % (self.name, msg % args))
        err.__cause__ = cause
        return err

    def _hook_error(self, e, hook):
        """The error for exception ``e`` raised by the user class's ``hook``."""
        if isinstance(e, PythonLayerError):
            return e                 # already names a Python layer (one inside another)
        err = PythonLayerError("Layer '%s' (Python %s): %s() raised %s"
                               % (self.name, self.impl_name, hook, _describe(e)))
        err.__cause__ = e
        return err

    def layer_setup(self, bottom, top):
        try:
            self.impl.setup(bottom, top)
        except Exception as e:
            raise self._hook_error(e, "setup")
        if not isinstance(self.impl.blobs, BlobList):
            self.impl.blobs = BlobList(self.impl.blobs)
        self.blobs = self.impl.blobs

    def reshape(self, bottom, top):
        try:
            self.impl.reshape(bottom, top)
        except Exception as e:
            raise self._hook_error(e, "reshape")

    def forward_impl(self, bottom, top):
        try:
            self.impl.forward(bottom, top)
        except Exception as e:
            raise self._hook_error(e, "forward")

    def backward_impl(self, top, propagate_down, bottom):
        try:
            self.impl.backward(top, propagate_down, bottom)
        except Exception as e:
            raise self._hook_error(e, "backward")
