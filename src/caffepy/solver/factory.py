"""``get_solver`` and pycaffe's solver classes.

A solver type is an update rule registered in updaters.py (``register_update_rule``); the
pycaffe names ``SGDSolver`` ... ``AdamSolver`` are thin Solver subclasses that only name
their rule, so ``SGDSolver(path)`` forces SGD whatever the file's ``type`` says, and
``get_solver(path)`` builds the class of the file's ``type`` (``type(s) is AdamSolver``).
A rule registered later gets its class, ``<Name>Solver``, the first time it is asked for.
``register_solver`` still takes a whole Solver subclass for a type name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Type, Union

from .. import security
from ..errors import SolverError
from . import config
from .solver import Solver
from ..registry import Registry
from .updaters import find_update_rule, update_rule_names

if TYPE_CHECKING:
    import os

    from ..proto import caffe_pb2

_CLASSES = Registry("Unknown solver type: '%s' (known types: %s)", SolverError,
                    name_attr="type_name")


def register_solver(type_name: str, cls: Optional[Type[Solver]] = None) -> Any:
    """Register a Solver subclass under a ``type`` name (without ``cls``, a decorator); it
    sets the class's ``type_name``."""
    return _CLASSES.register(type_name, cls)


def solver_type_list() -> List[str]:
    return sorted(set(_CLASSES.names()) | set(update_rule_names()))


def solver_class(type_name: str) -> Type[Solver]:
    """The Solver subclass for the solver type ``type_name``."""
    cls = _CLASSES.get(type_name)
    if cls is None:
        if find_update_rule(type_name) is None:
            raise SolverError("Unknown solver type: '%s' (known types: %s)"
                              % (type_name, ", ".join(solver_type_list())))
        cls = _rule_solver(type_name)
    return cls


def _rule_solver(type_name):
    """A Solver subclass ``<type_name>Solver`` that trains with the update rule registered
    as ``type_name`` (looked up when a solver is built)."""
    cls = type(type_name + "Solver", (Solver,), {
        "__module__": __name__,
        "__doc__": "pycaffe's %sSolver: a Solver with the \"%s\" update rule, whatever the "
                   "solver file's type says." % (type_name, type_name)})
    return register_solver(type_name, cls)


SGDSolver = _rule_solver("SGD")
NesterovSolver = _rule_solver("Nesterov")
AdaGradSolver = _rule_solver("AdaGrad")
RMSPropSolver = _rule_solver("RMSProp")
AdaDeltaSolver = _rule_solver("AdaDelta")
AdamSolver = _rule_solver("Adam")


def get_solver(source: Union[str, "os.PathLike[str]", "caffe_pb2.SolverParameter"],
               allow_python_layers: Optional[bool] = None, **kwargs: Any) -> Solver:
    """The solver class named by the file's ``type`` (default "SGD"), built from a path or
    a SolverParameter.  Keyword arguments go to the solver (sigint_effect, sighup_effect).
    ``allow_python_layers=False`` refuses Python layers in its nets (caffepy.security)."""
    param = config.solver_param(source)
    with security.policy(allow_python_layers=allow_python_layers):
        return solver_class(param.type)(param, **kwargs)
