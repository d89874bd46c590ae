"""caffepy: Caffe's training engine rebuilt in Python (pycaffe-compatible names)."""
__version__ = "0.1.0"

import importlib as _importlib
import logging as _logging

# A library configures no logging of its own: Caffe's log lines go to the "caffepy" logger and
# appear once the application (or the caffepy CLI) sets up a handler.
_logging.getLogger("caffepy").addHandler(_logging.NullHandler())

from .errors import *  # noqa: E402,F401,F403  (CaffepyError and its subclasses)
from .proto import caffe_pb2  # noqa: E402,F401
from .backend import set_mode_cpu, set_mode_gpu, set_device, set_random_seed  # noqa: E402,F401
from .blob import Blob  # noqa: E402,F401
from .layer import (Layer, LossLayer, NeuronLayer, register_layer,  # noqa: E402,F401
                    layer_type_list, LayerError)
from . import layers  # noqa: E402,F401  (registers the built-in layer types)

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

from .net import Net, NetError  # noqa: E402,F401
from . import fillers  # noqa: E402,F401
from .fillers import register_filler  # noqa: E402,F401
from .solver import (Solver, SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: E402,F401
                     RMSPropSolver, AdaDeltaSolver, AdamSolver, get_solver, SolverError)
from .regularizers import Regularizer, register_regularizer  # noqa: E402,F401

# pycaffe's helpers load on first use (a training run needs none of them):
# name -> (module, attribute of it, or None for the module itself)
_ON_FIRST_USE = {
    "io": (".io", None), "net_spec": (".net_spec", None), "draw": (".draw", None),
    "gradient_check": (".gradient_check", None), "classifier": (".classifier", None),
    "params": (".net_spec", "params"), "NetSpec": (".net_spec", "NetSpec"),
    "to_proto": (".net_spec", "to_proto"), "Classifier": (".classifier", "Classifier"),
    "detector": (".detector", None), "Detector": (".detector", "Detector"),
    "coord_map": (".coord_map", None),
}


def __getattr__(name):
    try:
        module, attr = _ON_FIRST_USE[name]
    except KeyError:
        raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None
    value = _importlib.import_module(module, __name__)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_ON_FIRST_USE))
