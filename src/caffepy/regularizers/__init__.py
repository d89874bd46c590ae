"""Regularisation: Caffe's weight decay and the plug-in chain of regularizers (see base.py)."""
from .base import (RegularizeContext, Regularizer, create_regularizer,  # noqa: F401
                   get_regularizer_class, register_regularizer, regularizer_names)
from .weight_decay import L1Regularizer, L2Regularizer, apply_weight_decay  # noqa: F401
