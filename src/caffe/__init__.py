"""``import caffe`` for pycaffe code: caffepy under Caffe's module names.

``caffe`` gives pycaffe's names, bound to caffepy's objects: ``caffe.Net is caffepy.Net``,
``caffe.io is caffepy.io``, ``caffe.proto.caffe_pb2 is caffepy.proto.caffe_pb2``, and so on.
Its submodules are pycaffe's (``io``, ``net_spec``, ``draw``, ``classifier``, ``detector``,
``coord_map``, ``pycaffe``, ``proto.caffe_pb2``), each the very caffepy module of that name.
``caffe.layers`` and ``caffe.params`` are net_spec's ``L`` and ``P``, as in pycaffe (the
package of caffepy's layer implementations stays ``caffepy.layers``). Any other public name of
caffepy is reachable through ``caffe`` too (``caffe.CaffepyError``, ``caffe.register_layer``).

A real pycaffe that comes earlier on ``sys.path`` (``PYTHONPATH`` comes before the installed
packages) is imported instead of this package: ``caffe.__file__`` tells which one loaded.
"""
import importlib as _importlib

import caffepy as _caffepy
from caffepy import Blob, Layer, Net, Solver, get_solver, layer_type_list  # noqa: F401
from caffepy import TRAIN, TEST  # noqa: F401
from caffepy import (set_mode_cpu, set_mode_gpu, set_device,  # noqa: F401
                     set_random_seed)

from .pycaffe import (SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: F401
                      RMSPropSolver, AdaDeltaSolver, AdamSolver, NCCL, Timer)
from ._caffe import (init_log, log, has_nccl, solver_count, set_solver_count,  # noqa: F401
                     solver_rank, set_solver_rank, set_multiprocess, NCCLUnavailableError)
from ._caffe import __version__  # noqa: F401
from . import proto  # noqa: F401

# Loaded on first use, as caffepy loads them: name -> (caffe submodule, attribute or None)
_ON_FIRST_USE = {
    "io": ("caffe.io", None), "draw": ("caffe.draw", None),
    "net_spec": ("caffe.net_spec", None), "classifier": ("caffe.classifier", None),
    "detector": ("caffe.detector", None), "coord_map": ("caffe.coord_map", None),
    "layers": ("caffe.net_spec", "layers"), "params": ("caffe.net_spec", "params"),
    "NetSpec": ("caffe.net_spec", "NetSpec"), "to_proto": ("caffe.net_spec", "to_proto"),
    "Classifier": ("caffe.classifier", "Classifier"), "Detector": ("caffe.detector", "Detector"),
}


def __getattr__(name):
    entry = _ON_FIRST_USE.get(name)
    if entry is None:
        if name.startswith("_"):
            raise AttributeError("module 'caffe' has no attribute %r" % name)
        try:
            value = getattr(_caffepy, name)
        except AttributeError:
            raise AttributeError("module 'caffe' has no attribute %r" % name) from None
    else:
        module_name, attr = entry
        try:
            value = _importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not e.name.startswith("caffepy."):
                raise
            raise AttributeError("caffe.%s needs %s, which this caffepy does not have"
                                 % (name, e.name)) from e
        if attr is not None:
            value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_ON_FIRST_USE)
                  | {n for n in dir(_caffepy) if not n.startswith("_")})
