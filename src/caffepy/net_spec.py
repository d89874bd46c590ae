"""Python net specification (pycaffe's ``caffe.net_spec``).

Write nets in Python in a functional style, as with pycaffe::

    from caffepy import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data, n.label = L.Data(source='train_lmdb', backend=P.Data.LMDB, batch_size=64,
                             ntop=2, transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ...
    text = str(n.to_proto())

``layers`` and ``params`` are pseudo-modules: ``layers.<Type>(*bottoms, **kwargs)`` makes a
layer of that type and returns its Top (a tuple of Tops if ``ntop`` > 1, the Function itself
if ``ntop`` = 0); ``params.<Type>.<NAME>`` is the enum value ``<Type>Parameter.<NAME>``.

Keyword arguments: ``ntop`` (number of tops, default 1) and ``in_place`` (tops = bottoms)
are special; a name ending in "param" (``param``, ``transform_param``, ...) is set on the
LayerParameter; any other goes into the type's ``<type>_param`` when the type has one and
the name is a field of it, otherwise onto the LayerParameter (``loss_weight``, ``include``,
...). Dicts become sub-messages, lists repeated fields, and a single value given to a
repeated field is wrapped in a list.

Names: ``NetSpec`` attribute names name the tops, and a layer is named after its first top.
Unnamed tops (and layers without tops) get ``{Type}{k}`` with k counted per type.
``to_proto`` lists the layers in dependency order (depth first from the named tops, in
the order they were assigned), as pycaffe does.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Callable, Dict, List, Tuple, Union

from google.protobuf.message import Message

from .proto import caffe_pb2

__all__ = ["layers", "params", "NetSpec", "to_proto", "Top", "Function", "param_name_dict",
           "assign_proto", "Layers", "Parameters"]


def param_name_dict() -> Dict[str, str]:
    """Map layer type names to the prefix of their parameter field: for every
    ``<x>_param`` field of LayerParameter whose message type is ``<Type>Parameter``,
    ``<Type>`` -> ``<x>`` (e.g. "Convolution" -> "convolution", "TanH" -> "tanh")."""
    names = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if not f.name.endswith("_param") or f.message_type is None:
            continue
        type_name = f.message_type.name
        if type_name.endswith("Parameter"):
            type_name = type_name[:-len("Parameter")]
        names[type_name] = f.name[:-len("_param")]
    return names


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter holding all the layers needed to compute ``tops``
    (intermediate blobs and layers are auto-named)."""
    layers_: Dict[Function, caffe_pb2.LayerParameter] = OrderedDict()
    autonames: Counter[str] = Counter()
    for top in tops:
        top.fn._to_proto(layers_, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers_.values())
    return net


def _field_error(proto, name):
    return AttributeError("%s has no field named '%s'" % (proto.DESCRIPTOR.name, name))


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Assign a Python value to field ``name`` of a protobuf message, recursively.

    Lists become repeated fields (of sub-messages when the items are dicts), dicts become
    sub-messages, and other values are assigned directly. A repeated field given a single
    value gets a one-element list (``kernel_size=3`` -> ``kernel_size: 3``).
    """
    if name not in proto.DESCRIPTOR.fields_by_name:
        raise _field_error(proto, name)
    field = getattr(proto, name)
    is_repeated_field = hasattr(field, "extend")
    if is_repeated_field and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if len(val) and isinstance(val[0], dict):
            for item in val:
                proto_item = field.add()
                for k, v in item.items():
                    assign_proto(proto_item, k, v)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    elif isinstance(val, Message) and isinstance(field, Message):
        field.CopyFrom(val)
    else:
        setattr(proto, name, val)


class Top:
    """A Top is one output blob of a layer (one of possibly several)."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter holding all the layers needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers_, names, autonames):
        return self.fn._to_proto(layers_, names, autonames)

    def __repr__(self) -> str:
        return "<Top %d of %s>" % (self.n, self.fn.type_name)


class Function:
    """A Function is a layer: its type, its parameters and its inputs (Tops of other
    layers)."""

    def __init__(self, type_name: str, inputs: Tuple[Top, ...], params: Dict[str, Any]) -> None:
        self.type_name = type_name
        for index, input_ in enumerate(inputs):
            if not isinstance(input_, Top):
                raise TypeError("%s input %d is not a Top (type is %s)"
                                % (type_name, index, type(input_)))
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.get("ntop", 1)
        # delete them so that they are not processed again as layer parameters
        if "ntop" in self.params:
            del self.params["ntop"]
        self.in_place = self.params.get("in_place", False)
        if "in_place" in self.params:
            del self.params["in_place"]
        self.tops: Tuple[Top, ...] = tuple(Top(self, n) for n in range(self.ntop))

    def __repr__(self) -> str:
        return "<Function %s>" % self.type_name

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers_, names, autonames):
        if self in layers_:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers_, names, autonames)
            bottom_names.append(layers_[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)

        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)

        for k, v in self.params.items():
            # special case to handle generic *params
            if k.endswith("param"):
                self._assign(layer, k, v)
            else:
                typed = self._typed_param(layer)
                if typed is not None and k in typed.DESCRIPTOR.fields_by_name:
                    assign_proto(typed, k, v)
                else:
                    self._assign(layer, k, v)

        layers_[self] = layer

    def _typed_param(self, layer):
        """The layer's ``<type>_param`` message, or None if the type has none."""
        prefix = _param_names.get(self.type_name)
        if prefix is None or prefix + "_param" not in layer.DESCRIPTOR.fields_by_name:
            return None
        return getattr(layer, prefix + "_param")

    def _assign(self, layer, k, v):
        try:
            assign_proto(layer, k, v)
        except AttributeError:
            if k not in layer.DESCRIPTOR.fields_by_name:
                where = ("LayerParameter" if self.type_name not in _param_names else
                         "LayerParameter or %s_param" % _param_names[self.type_name])
                raise AttributeError("layer '%s' of type %s: '%s' is not a field of %s"
                                     % (layer.name, self.type_name, k, where)) from None
            raise


class _MissingTop(AttributeError, KeyError):
    """A NetSpec name that was never assigned (an AttributeError and a KeyError)."""

    def __str__(self):
        return AttributeError.__str__(self)


class NetSpec:
    """A NetSpec holds Tops assigned as attributes (or items); ``to_proto()`` makes a
    NetParameter with all the layers needed to produce them, named by the attributes."""

    tops: Dict[str, Top]

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Top) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top:
        if name == "tops":          # during unpickling/copying, before __init__ ran
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise _MissingTop("NetSpec has no top named '%s'" % name) from None

    def __setitem__(self, key: str, value: Top) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Top:
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tops

    def keys(self) -> List[str]:
        return list(self.tops.keys())

    def vals(self) -> List[Top]:
        return list(self.tops.values())

    def update(self, name: str, value: Any) -> None:
        self.tops[name].update(value)  # type: ignore[attr-defined]  # pycaffe's, as it is

    def to_proto(self) -> caffe_pb2.NetParameter:
        names: Dict[Any, str] = {v: k for k, v in self.tops.items()}
        autonames: Counter[str] = Counter()
        layers_: Dict[Function, caffe_pb2.LayerParameter] = OrderedDict()
        for name, top in self.tops.items():
            top._to_proto(layers_, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers_.values())
        return net


class Layers:
    """A pseudo-module whose attributes make layers: ``Layers().Convolution(bottom,
    kernel_size=3)`` is a Top for a 3x3 convolution of ``bottom``."""

    def __getattr__(self, name: str) -> Callable[..., Union[Top, Tuple[Top, ...], Function]]:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any) -> Union[Top, Tuple[Top, ...], Function]:
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            elif fn.ntop == 1:
                return fn.tops[0]
            else:
                return fn.tops
        layer_fn.__name__ = name
        layer_fn.__qualname__ = "layers." + name
        return layer_fn


class Parameters:
    """A pseudo-module of the constants used in layer parameters:
    ``Parameters().Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        class Param:
            def __getattr__(self, param_name: str) -> Any:
                return getattr(getattr(caffe_pb2, name + "Parameter"), param_name)

            def __repr__(self):
                return "<params.%s>" % name
        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
