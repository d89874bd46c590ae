"""caffepy's one error hierarchy.

Every error caffepy raises for a user mistake is a :class:`CaffepyError`, so
``except caffepy.CaffepyError`` catches all of them; each message names the place (file and
line, layer, blob, flag). The subclasses also derive from the built-in exception that code
written before this hierarchy caught (``ValueError`` mostly), so that code keeps working.
"""


class CaffepyError(Exception):
    """Base of every error caffepy raises for bad input or a bad configuration."""


class ProtoError(CaffepyError, ValueError):
    """A prototxt or binary proto file that cannot be read; the message names the file."""


class NetError(CaffepyError, ValueError):
    """A net that cannot be built or loaded; the message names the layer, blob or file."""


class LayerError(CaffepyError):
    """A user mistake in a layer's configuration or inputs; the message names the layer."""


class FillerError(CaffepyError, ValueError):
    """A filler that cannot fill the blob it was given (unknown type, bad shape)."""


class SolverError(CaffepyError, ValueError):
    """A solver that cannot be built or run: bad SolverParameter, bad snapshot, bad state.

    The message says what is wrong in the terms of Caffe's solver prototxt.
    """


class RegularizerError(SolverError):
    """A regularizer that cannot be configured or applied (unknown type, sizes that do not fit)."""


class DivergenceError(SolverError):
    """Training that produced a NaN or Inf loss or gradient (with ``on_nan`` "stop"): the
    message names the iteration and the layer; ``iteration``, ``layer`` and ``snapshot``
    (the (model, state) files of the last finite weights, or None) say the same."""

    def __init__(self, message, iteration=None, layer=None, snapshot=None):
        super().__init__(message)
        self.iteration, self.layer, self.snapshot = iteration, layer, snapshot


class DataError(CaffepyError, ValueError):
    """A data source that cannot be read (missing file, bad record, missing package)."""


class TransformerError(DataError):
    """A pycaffe Transformer call with an unknown input name or settings that do not fit."""


class ToolError(CaffepyError, ValueError):
    """A user mistake in a tool invocation (bad file, existing output, bad flag value)."""


class CliError(CaffepyError):
    """A fatal command-line error (Caffe's CHECK/LOG(FATAL) in tools/caffe.cpp)."""


class FlagError(CliError):
    """A flag that gflags would reject (unknown flag, bad value, missing argument)."""


class DeviceError(CaffepyError, RuntimeError):
    """GPU mode or a GPU device this machine cannot provide (no CuPy, no CUDA device, no
    device of that id); the message says how to install the gpu extra."""


class GradientCheckError(CaffepyError, AssertionError):
    """An analytic gradient that disagrees with the numerical one."""


__all__ = ["CaffepyError", "ProtoError", "NetError", "LayerError", "FillerError", "SolverError",
           "DivergenceError", "RegularizerError", "DataError", "TransformerError", "ToolError",
           "CliError", "FlagError", "DeviceError", "GradientCheckError"]
