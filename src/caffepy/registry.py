"""Named plug-in tables: one mechanism behind ``register_layer``, ``register_filler``,
``register_regularizer``, ``register_update_rule``, ``register_lr_policy`` and
``register_solver``."""


class Registry:
    """Named plug-ins.  ``unknown`` is the message for a missing name, with two ``%s``: the
    name asked for and the registered names; ``error`` is the exception class raised with
    it.  With ``name_attr``, registering also sets that attribute of the object to its name
    (unless ``keep_name`` says the object already carries a name of its own)."""

    def __init__(self, unknown, error, name_attr=None, keep_name=None):
        self._items = {}
        self._unknown = unknown
        self._error = error
        self._name_attr = name_attr
        self._keep_name = keep_name

    def register(self, name, obj=None):
        """Register ``obj`` under ``name`` (replacing any earlier one); without ``obj``, a
        decorator."""
        def deco(o):
            self._items[name] = o
            if self._name_attr is not None and not (self._keep_name and self._keep_name(o)):
                setattr(o, self._name_attr, name)
            return o
        return deco(obj) if obj is not None else deco

    def names(self):
        return sorted(self._items)

    def get(self, name):
        """The object registered as ``name``, or None."""
        return self._items.get(name)

    def lookup(self, name, unknown=None):
        """The object registered as ``name``; ``error`` naming the known ones if none is
        (``unknown`` overrides the message, with the same two ``%s``)."""
        obj = self._items.get(name)
        if obj is None:
            raise self._error((unknown or self._unknown) % (name, ", ".join(self.names())
                                                             or "none"))
        return obj

    def __contains__(self, name):
        return name in self._items
