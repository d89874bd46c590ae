"""``caffe._caffe``: the names pycaffe's compiled module provides, for caffepy.

Most are caffepy's own objects (``Net``, ``Layer``, ``set_mode_gpu``, ``get_solver``, ...).
This module adds what pycaffe has and caffepy's core does not need:

- ``init_log(level=0, stderr=False)`` and ``log(message)``: logging through the ``caffepy``
  logger in glog's format (see :func:`caffepy.logging_setup.setup_logging`);
- ``Timer``: ``start()``, ``stop()`` and ``ms``, Caffe's timer (in GPU mode it waits for the
  device at start and stop, so that ``ms`` covers the queued kernels);
- the multi-solver settings ``solver_count``/``set_solver_count``, ``solver_rank``/
  ``set_solver_rank``, ``set_multiprocess``, ``has_nccl`` and the ``NCCL`` class. caffepy's
  several solvers are MPI processes (``mpiexec -n N``, docs/distributed.md): ``solver_count()``
  is the MPI world size and ``solver_rank()`` the rank (1 and 0 in a plain run); setting another
  count or rank than the world's raises :class:`NCCLUnavailableError`, a
  :class:`caffepy.CaffepyError`. caffepy has no NCCL: ``has_nccl()`` is False and an ``NCCL``
  object cannot be made.
"""
import logging
import time

from caffepy import (Layer, Net, SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: F401
                     RMSPropSolver, AdaDeltaSolver, AdamSolver, get_solver, layer_type_list,
                     set_device, set_mode_cpu, set_mode_gpu, set_random_seed, __version__)
from caffepy import backend as _backend
from caffepy import distributed as _distributed
from caffepy.errors import CaffepyError
from caffepy.logging_setup import setup_logging as _setup_logging

__all__ = ["init_log", "log", "has_nccl", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "Layer", "get_solver", "layer_type_list", "solver_count",
           "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
           "multiprocess", "Timer", "NCCL", "NCCLUnavailableError", "Net", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "__version__"]

_logger = logging.getLogger("caffepy")

_NO_NCCL = ("caffepy has no NCCL (caffe.has_nccl() is False); its solvers are the "
            "processes of an MPI launcher: mpiexec -n N caffepy train -solver S "
            "(docs/distributed.md)")


class NCCLUnavailableError(CaffepyError, RuntimeError):
    """A multi-GPU (NCCL) feature of pycaffe that caffepy does not have."""


def init_log(level=0, stderr=False):
    """Show caffepy's log lines (Caffe's glog lines) on stderr from glog level ``level`` up
    (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL). ``stderr`` is accepted for pycaffe's signature:
    the lines always go to stderr, and to no log file. Returns the
    :class:`caffepy.logging_setup.LoggingConfig`, whose ``restore()`` undoes it."""
    return _setup_logging(minloglevel=level, logtostderr=bool(stderr))


def log(message):
    """Log ``message`` at INFO level on the ``caffepy`` logger (Caffe's ``LOG(INFO)``)."""
    _logger.info("%s", message)


def has_nccl():
    """False: caffepy has no NCCL multi-GPU training."""
    return False


_state = {"multiprocess": False}


def _world():
    """(rank, size) of the MPI world this process was launched in ((0, 1) in a plain run)."""
    return _distributed.launched_world() or (0, 1)


def solver_count():
    """The number of solvers training together: the MPI world size under mpiexec, else 1."""
    return _distributed.solver_count()


def set_solver_count(count):
    """Accepts the MPI world size (1 in a plain run); any other count raises
    NCCLUnavailableError (caffepy's solvers are the processes mpiexec starts)."""
    count = int(count)
    if count != _world()[1]:
        raise NCCLUnavailableError("set_solver_count(%d): %s" % (count, _NO_NCCL))
    _distributed.set_solver_count(count)


def solver_rank():
    """This process's solver rank: its MPI rank under mpiexec, else 0."""
    return _distributed.solver_rank()


def set_solver_rank(rank):
    """Accepts this process's MPI rank (0 in a plain run); any other rank raises
    NCCLUnavailableError."""
    rank = int(rank)
    if rank != _world()[0]:
        raise NCCLUnavailableError("set_solver_rank(%d): %s" % (rank, _NO_NCCL))
    _distributed.set_solver_rank(rank)


def set_multiprocess(multiprocess):
    """Records Caffe's multiprocess flag (it changes nothing for a single solver)."""
    _state["multiprocess"] = bool(multiprocess)


def multiprocess():
    """The flag given to :func:`set_multiprocess` (False by default)."""
    return _state["multiprocess"]


class NCCL:
    """pycaffe's NCCL synchronizer of several solvers. caffepy has no NCCL: making one, and
    ``NCCL.new_uid()``, raise NCCLUnavailableError."""

    def __init__(self, solver, uid):
        raise NCCLUnavailableError("caffe.NCCL(solver, uid): %s" % _NO_NCCL)

    @staticmethod
    def new_uid():
        raise NCCLUnavailableError("caffe.NCCL.new_uid(): %s" % _NO_NCCL)


class Timer:
    """Caffe's Timer: ``start()``, ``stop()``, and ``ms``, the milliseconds between them.

    Reading ``ms`` while running stops the timer first; reading it before any ``start()``
    logs a warning and gives 0, as Caffe does. Starting a running timer or stopping a
    stopped one changes nothing.
    """

    def __init__(self):
        self._running = False
        self._has_run = False
        self._start = 0.0
        self._stop = 0.0

    @staticmethod
    def _sync():
        if _backend.mode() == _backend.GPU:
            _backend.xp().cuda.Device().synchronize()

    def start(self):
        if not self._running:
            self._sync()
            self._start = time.perf_counter()
            self._running = True
            self._has_run = True

    def stop(self):
        if self._running:
            self._sync()
            self._stop = time.perf_counter()
            self._running = False

    @property
    def running(self):
        return self._running

    @property
    def ms(self):
        if not self._has_run:
            _logger.warning("Timer has never been run before reading time.")
            return 0.0
        if self._running:
            self.stop()
        return (self._stop - self._start) * 1000.0

    def __repr__(self):
        return "<caffe.Timer %s>" % ("running" if self._running else
                                     "%.3f ms" % self.ms if self._has_run else "never run")
