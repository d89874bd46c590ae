"""Regularisation: Caffe's weight decay, the SSL group lasso and the plug-in chain.

- base.py: the plug-in API (Regularizer, RegularizeContext, the registry, chain helpers);
- weight_decay.py: weight decay with ParamSpec regularization_type / decay_proto, and the
  L1, L2, ElasticNet plug-ins;
- group_lasso.py: the SSL fork's group lasso maths, SSLGroupLasso and GroupLasso;
- masks.py: connectivity masks (connectivity_mode);
- sparsity.py: the sparsity statistics, their log block and its parser.

See docs/custom-regularizer.md.
"""
from .base import (ParamInfo, RegularizeContext, Regularizer, chain_state_dict,  # noqa: F401
                   create_regularizer, get_regularizer_class, layer_conv_group,
                   learnable_param_info, load_chain_state_dict, parse_param_str,
                   register_regularizer, regularizer_names, regularizers_penalty,
                   run_regularizers, setup_regularizers)
from .weight_decay import (ElasticNet, L1Regularizer, L2Regularizer, WeightDecay,  # noqa: F401
                           apply_weight_decay, load_decay_proto, weight_decay_penalty)
from .group_lasso import (GroupLasso, GroupView, SSLGroupLasso, add_group_gradient,  # noqa: F401
                          group_norms, group_penalty, group_view, matrix_shape, ssl_terms)
from . import masks, sparsity  # noqa: F401,E402


def solver_regularizers(param):
    """The chain a SolverParameter configures, in order: SSLGroupLasso when any of
    ``breadth_decay``/``kernel_shape_decay``/``block_group_decay`` is non-zero, then one
    regularizer per ``regularizer { }`` block (``Regularizer.from_proto``). Weight decay is
    not in it (``WeightDecay.from_solver_param(param)`` runs before the chain)."""
    chain = []
    ssl = SSLGroupLasso.from_solver_param(param)
    if ssl.active:
        chain.append(ssl)
    for rp in param.regularizer:
        chain.append(Regularizer.from_proto(rp))
    return chain
