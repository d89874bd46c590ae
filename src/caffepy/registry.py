"""The name -> plug-in tables behind ``register_update_rule``, ``register_lr_policy`` and
``register_solver``."""
from ..errors import SolverError


class Registry:
    """Named plug-ins.  ``unknown`` is the SolverError message for a missing name, with two
    ``%s``: the name asked for and the registered names.  With ``name_attr``, registering
    also sets that attribute of the object to its name."""

    def __init__(self, unknown, name_attr=None):
        self._items = {}
        self._unknown = unknown
        self._name_attr = name_attr

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; without ``obj``, a decorator."""
        def deco(o):
            self._items[name] = o
            if self._name_attr is not None:
                setattr(o, self._name_attr, name)
            return o
        return deco(obj) if obj is not None else deco

    def names(self):
        return sorted(self._items)

    def get(self, name):
        """The object registered as ``name``, or None."""
        return self._items.get(name)

    def lookup(self, name):
        """The object registered as ``name``; SolverError naming the known ones if none is."""
        obj = self._items.get(name)
        if obj is None:
            raise SolverError(self._unknown % (name, ", ".join(self.names())))
        return obj
