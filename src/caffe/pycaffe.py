"""``caffe.pycaffe``: the Net and solver classes under pycaffe's module name.

pycaffe's ``pycaffe`` module adds Python methods (``forward``, ``blobs``, ``params``, ...) to
the compiled ``Net``; caffepy's :class:`caffepy.Net` has them itself, so this module only
gives the same names: ``Net``, the solver classes, ``NCCL`` and ``Timer``.
"""
from caffepy import (Net, Solver, SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: F401
                     RMSPropSolver, AdaDeltaSolver, AdamSolver)

from ._caffe import NCCL, Timer  # noqa: F401

__all__ = ["Net", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "NCCL", "Timer"]
