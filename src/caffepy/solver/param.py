"""``solver.param``: pycaffe's view of the solver's own SolverParameter.

pycaffe hands out a reference to the SolverParameter the solver runs with (not a copy): its
fields read the values in use, and ``base_lr`` can be set, which changes the learning rate
from the next update on. caffepy's view does the same; every field of the message can be read
(pycaffe exposes only ``max_iter``, ``display``, ``layer_wise_reduce`` and ``base_lr``), and
setting any field but ``base_lr`` raises AttributeError, as in pycaffe, because the solver
has already used them to build itself (history, nets, weight decay). To train with other
settings, edit a copy (``solver.param.copy()``) and build a new solver from it.
"""
from __future__ import annotations

from typing import Any

from ..proto import caffe_pb2
from ..proto.files import message_text

#: the fields pycaffe lets a script set on a running solver
SETTABLE_FIELDS = frozenset(["base_lr"])


class SolverParameterView:
    """The live SolverParameter of a solver (read any field; set ``base_lr``)."""

    __slots__ = ("_message",)

    def __init__(self, message: caffe_pb2.SolverParameter):
        object.__setattr__(self, "_message", message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SETTABLE_FIELDS:
            setattr(self._message, name, value)
            return
        if name in caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name:
            raise AttributeError(
                "solver.param.%s cannot be set on a running solver (as in pycaffe, only %s "
                "can); edit p = solver.param.copy() and build a new solver from it"
                % (name, ", ".join(sorted(SETTABLE_FIELDS))))
        raise AttributeError("SolverParameter has no field '%s'" % name)

    def __delattr__(self, name: str) -> None:
        raise AttributeError("solver.param.%s cannot be deleted" % name)

    def copy(self) -> caffe_pb2.SolverParameter:
        """A detached copy of the SolverParameter (a ``caffe_pb2.SolverParameter``)."""
        c = caffe_pb2.SolverParameter()
        c.CopyFrom(self._message)
        return c

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SolverParameterView):
            other = other._message
        return self._message == other

    __hash__ = None  # type: ignore[assignment]

    def __dir__(self):
        return sorted(set(dir(self._message)) | {"copy"})

    def __str__(self) -> str:
        return message_text(self._message)

    def __repr__(self) -> str:
        return "<solver.param: %s>" % " ".join(message_text(self._message).split())
