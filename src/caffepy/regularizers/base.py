"""Regularisation: Caffe's weight decay (``SGDSolver::Regularize``) and a plug-in chain.

Weight decay
------------
``apply_weight_decay`` is Caffe's Regularize step for one learnable parameter:
``local_decay = weight_decay * decay_mult``; if it is non-zero, "L2" adds
``local_decay * w`` to the diff and "L1" adds ``local_decay * sign(w)`` (sign(0) = 0).

Regularizer plug-ins
--------------------
After weight decay, the solver runs an ordered chain of ``Regularizer`` objects on every
learnable parameter (empty by default, so plain Caffe numbers are unchanged).  A
regularizer adds the gradient of its penalty to ``blob.diff``, in place::

    import caffepy
    from caffepy.regularizers import Regularizer, register_regularizer

    @register_regularizer("Orthogonal")            # optional: makes it creatable by name
    class Orthogonal(Regularizer):
        def __init__(self, coeff=1e-4):
            self.coeff = coeff

        def regularize(self, param_id, blob, ctx):
            if blob.data.ndim != 2 or ctx.decay_mult == 0:
                return                               # skip biases, frozen blobs ...
            w = blob.data
            blob.diff[...] += self.coeff * ...       # gradient of the penalty

    solver = caffepy.get_solver("solver.prototxt")
    solver.add_regularizer(Orthogonal(1e-4))         # or: add_regularizer("Orthogonal", coeff=...)

``ctx`` (a ``RegularizeContext``) tells the regularizer where it is: ``solver``, ``net``,
``param_id``, ``layer_name``/``param_index`` (which layer blob this is), ``rate`` (this
iteration's learning rate), ``lr_mult``, ``decay_mult``, ``local_rate`` (rate * lr_mult),
``local_decay`` (weight_decay * decay_mult), ``iter``, ``param`` (the SolverParameter) and
``xp`` (numpy or cupy).  Regularizers run after the 1/iter_size normalisation and weight
decay and before the update rule; they see the gradient Caffe would feed the update rule.
Use ``xp`` for array maths so the same code runs on GPU.  A regularizer that needs state
(e.g. a proximal step after the update) may also implement ``after_update(solver)``,
called once per iteration after the weights have been updated.
"""
from ..errors import RegularizerError

_REGISTRY = {}


def register_regularizer(name, cls=None):
    """Register a Regularizer class under ``name`` (usable as a decorator)."""
    def deco(c):
        _REGISTRY[name] = c
        if getattr(c, "name", None) in (None, Regularizer.name):
            c.name = name
        return c
    return deco(cls) if cls is not None else deco


def regularizer_names():
    return sorted(_REGISTRY)


def get_regularizer_class(name):
    return _REGISTRY.get(name)


def create_regularizer(name, *args, **kwargs):
    """Instantiate the regularizer registered as ``name``."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise RegularizerError("Unknown regularizer '%s' (registered: %s)"
                          % (name, ", ".join(regularizer_names()) or "none"))
    return cls(*args, **kwargs)


class RegularizeContext:
    """Where a regularizer is called: see the module docstring for the attributes."""
    __slots__ = ("solver", "net", "param_id", "layer_name", "param_index", "rate", "lr_mult",
                 "decay_mult", "local_rate", "local_decay", "iter", "param", "xp")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


class Regularizer:
    """Base class of the regularizer plug-ins (see the module docstring)."""
    name = "Regularizer"

    def regularize(self, param_id, blob, ctx):
        """Add this penalty's gradient for learnable param ``param_id`` to ``blob.diff``."""
        raise NotImplementedError

    def after_update(self, solver):
        """Optional hook, once per iteration after ``net.update()``."""

    def __repr__(self):
        return "<%s regularizer>" % self.name
