"""Caffe's weight decay (``SGDSolver::Regularize``) and the L1/L2 penalties as plug-ins."""
import numpy as np

from .. import backend
from ..errors import SolverError
from .base import Regularizer, register_regularizer

f32 = np.float32


def apply_weight_decay(regularization_type, local_decay, data, diff, temp=None):
    """Caffe's Regularize for one param: flat float32 ``data``/``diff`` arrays, in place.

    ``temp`` is an optional work buffer (Caffe's ``temp_``) for the L1 sign.
    """
    local_decay = f32(local_decay)
    if not local_decay:
        return
    xp = backend.array_module(diff)
    if regularization_type == "L2":
        diff += local_decay * data                            # caffe_axpy
    elif regularization_type == "L1":
        if temp is None:
            temp = xp.empty_like(data)
        xp.sign(data, out=temp)                               # caffe_cpu_sign, sign(0)=0
        diff += local_decay * temp
    else:
        raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                          "\"L2\" or \"L1\")" % regularization_type)


@register_regularizer("L2")
class L2Regularizer(Regularizer):
    """An extra L2 penalty 0.5·coeff·decay_mult·||w||² (like weight_decay, own coefficient)."""

    def __init__(self, coeff):
        self.coeff = float(coeff)

    def regularize(self, param_id, blob, ctx):
        apply_weight_decay("L2", f32(f32(self.coeff) * f32(ctx.decay_mult)),
                           blob.flat_data, blob.flat_diff)


@register_regularizer("L1")
class L1Regularizer(Regularizer):
    """An extra L1 penalty coeff·decay_mult·|w| (like weight_decay "L1", own coefficient)."""

    def __init__(self, coeff):
        self.coeff = float(coeff)

    def regularize(self, param_id, blob, ctx):
        apply_weight_decay("L1", f32(f32(self.coeff) * f32(ctx.decay_mult)),
                           blob.flat_data, blob.flat_diff)
