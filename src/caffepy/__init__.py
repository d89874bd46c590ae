"""caffepy: Caffe's training engine rebuilt in Python (pycaffe-compatible names)."""
__version__ = "0.1.0"

import logging as _logging

# A library configures no logging of its own: Caffe's log lines go to the "caffepy" logger and
# appear once the application (or the caffepy CLI) sets up a handler.
_logging.getLogger("caffepy").addHandler(_logging.NullHandler())

from .errors import *  # noqa: F401,F403  (CaffepyError and its subclasses)
from .proto import caffe_pb2  # noqa: F401
from .backend import set_mode_cpu, set_mode_gpu, set_device, set_random_seed  # noqa: F401
from .blob import Blob  # noqa: F401
from .layer import Layer, LossLayer, NeuronLayer, register_layer, layer_type_list, LayerError  # noqa: F401
from . import layers  # noqa: F401  (registers the built-in layer types)

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

from .net import Net, NetError  # noqa: E402,F401
from . import gradient_check, fillers  # noqa: E402,F401
from .fillers import register_filler  # noqa: E402,F401
from .solver import (Solver, SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,  # noqa: E402,F401
                     AdaDeltaSolver, AdamSolver, get_solver, SolverError)
from .regularizers import Regularizer, register_regularizer  # noqa: E402,F401
from . import io, net_spec  # noqa: E402,F401
from .net_spec import params, NetSpec, to_proto  # noqa: E402,F401
from .classifier import Classifier  # noqa: E402,F401
from . import draw  # noqa: E402,F401
