"""Moved to caffepy.solver.lr_policies; this name keeps ``from caffepy.lr_policies import ...``
working."""
from .solver.lr_policies import *  # noqa: F401,F403
from .solver.lr_policies import (SolverError, check_lr_policy, get_learning_rate,  # noqa: F401
                                 lr_policy_names, register_lr_policy)
