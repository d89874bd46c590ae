"""caffepy.solver: Caffe's training loop.

``get_solver("solver.prototxt")`` builds the solver named by the file's ``type`` (the
deprecated ``solver_type`` enum is upgraded); ``SGDSolver(path)``, ``AdamSolver(path)`` and
friends force the update rule.  Both accept a path or a ``caffe_pb2.SolverParameter``.

Modules: ``solver`` (class Solver: the loop, top to bottom), ``updaters`` (the update rules,
a registry by ``type``), ``lr_policies`` (the learning-rate policies, a registry by
``lr_policy``), ``state`` (snapshot / restore, binary and HDF5), ``signals`` (SIGINT/SIGHUP),
``config`` (the solver prototxt and the nets it names), ``factory`` (``get_solver`` and the
pycaffe classes), ``param`` (``solver.param``, pycaffe's live view of the SolverParameter).
"""
from ..errors import SolverError
from ..regularizers import Regularizer, register_regularizer
from .config import read_solver_file
from .factory import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                      RMSPropSolver, SGDSolver, get_solver, register_solver, solver_class,
                      solver_type_list)
from .lr_policies import check_lr_policy, get_learning_rate, lr_policy_names, register_lr_policy
from .param import SolverParameterView
from .signals import SolverAction
from .solver import Solver
from .updaters import (AdaDeltaRule, AdaGradRule, AdamRule, NesterovRule, RMSPropRule, SGDRule,
                       UpdateRule, get_update_rule, register_update_rule, update_rule_names)

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver", "register_solver", "solver_class",
           "solver_type_list", "SolverError", "SolverAction", "read_solver_file",
           "Regularizer", "register_regularizer",
           "UpdateRule", "register_update_rule", "get_update_rule", "update_rule_names",
           "SGDRule", "NesterovRule", "AdaGradRule", "RMSPropRule", "AdaDeltaRule", "AdamRule",
           "register_lr_policy", "lr_policy_names", "get_learning_rate", "check_lr_policy",
           "SolverParameterView"]
