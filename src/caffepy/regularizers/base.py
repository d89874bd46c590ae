"""The regularizer plug-in API: ``Regularizer``, ``RegularizeContext``, the registry.

A regularizer adds the gradient of a penalty on the weights to ``blob.diff``. The solver runs,
for every learnable parameter, Caffe's 1/iter_size normalisation, then weight decay, then the
chain of regularizers in order, then the update rule; the penalties they report are summed
into the ``Total regularization terms`` log line.

Writing one::

    from caffepy.regularizers import Regularizer, register_regularizer

    @register_regularizer("Orthogonal")          # creatable by name and from the prototxt
    class Orthogonal(Regularizer):
        def __init__(self, coeff=1e-4, layers=None, blob_indices=None):
            super().__init__(coeff, layers, blob_indices)

        def regularize(self, param_id, blob, ctx):
            w = blob.data
            blob.diff[...] += ...                  # in place, with ctx.xp (numpy or cupy)

        def penalty(self, param_id, blob, ctx):
            return float(...)                      # the penalty on the current weights

The protocol (what a solver calls, see docs/custom-regularizer.md):

- ``setup(net)`` once, when the chain meets a net (validates layer names, sizes, files);
- per iteration and learnable param: ``if r.selects(ctx): r.regularize(param_id, blob, ctx)``
  (``run_regularizers`` does exactly this for a chain);
- on display iterations, before the update: ``r.penalty(param_id, blob, ctx)`` for the selected
  params (``regularizers_penalty``);
- once per iteration after ``net.update()``: ``r.after_update(solver)``;
- with a snapshot: ``state_dict()`` / ``load_state_dict(d)`` (``chain_state_dict`` /
  ``load_chain_state_dict`` for a chain).

``ctx`` (a ``RegularizeContext``) says where the call is: see its docstring.
"""
from __future__ import annotations

import ast
import re
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple, Type, TypeVar, Union, overload)

import numpy as np

from .. import backend
from ..errors import RegularizerError
from ..registry import Registry

if TYPE_CHECKING:    # for the annotations only: nothing here is imported at run time
    from numpy.typing import DTypeLike

    from ..blob import Blob
    from ..layer import Layer
    from ..net import Net
    from ..proto import caffe_pb2
    from ..solver import Solver

RegularizerClass = TypeVar("RegularizerClass", bound="Type[Regularizer]")

# a class that names itself (``name = "..."``) keeps that name when registered
_REGULARIZERS = Registry("Unknown regularizer '%s' (registered: %s)", RegularizerError,
                         name_attr="name",
                         keep_name=lambda c: getattr(c, "name", None) not in (None,
                                                                              Regularizer.name))


@overload
def register_regularizer(name: str) -> Callable[[RegularizerClass], RegularizerClass]: ...
@overload
def register_regularizer(name: str, cls: RegularizerClass) -> RegularizerClass: ...


def register_regularizer(name: str, cls: Optional[RegularizerClass] = None) -> Any:
    """Register a Regularizer class under ``name`` (usable as a decorator); the name is the
    ``type`` of a ``regularizer { ... }`` block in the solver prototxt."""
    return _REGULARIZERS.register(name, cls)


def regularizer_names() -> List[str]:
    return _REGULARIZERS.names()


def get_regularizer_class(name: str) -> Type[Regularizer]:
    return _REGULARIZERS.get(name)


def create_regularizer(name: str, *args: Any, **kwargs: Any) -> Regularizer:
    """Instantiate the regularizer registered as ``name``."""
    return _REGULARIZERS.lookup(name)(*args, **kwargs)


# -- param_str ---------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPEN, _CLOSE = "([{", ")]}"


def _split_top_level(text, sep):
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _param_value(text):
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(t)
    except (ValueError, SyntaxError):
        return t                      # a bare word: kind: filter


def parse_param_str(param_str, type_name="?"):
    """The keyword arguments a ``param_str`` holds, as a dict.

    Two forms: a Python dict literal, ``"{'kind': 'block', 'xdimen': 9}"``, or
    ``key: value`` pairs separated by commas, ``"kind: block, xdimen: 9, ydimen: 1"``, where a
    value is a Python literal (number, quoted string, list, tuple), ``true``/``false``, or
    else a bare word taken as a string. An empty string is ``{}``.
    """
    text = (param_str or "").strip()
    if not text:
        return {}

    def bad(why):
        return RegularizerError("regularizer '%s': cannot parse param_str \"%s\": %s (expected "
                                "\"{'key': value, ...}\" or \"key: value, key: value\"; "
                                "registered regularizers: %s)"
                                % (type_name, param_str, why,
                                   ", ".join(regularizer_names()) or "none"))
    if text.startswith("{"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise bad("not a Python dict literal (%s)" % (e.msg if hasattr(e, "msg") else e)) \
                from None
        if not isinstance(value, dict):
            raise bad("not a dict")
        for k in value:
            if not isinstance(k, str) or not _KEY.match(k):
                raise bad("key %r is not a name" % (k,))
        return dict(value)
    out = {}
    for item in _split_top_level(text, ","):
        if not item.strip():
            continue
        key, sep, val = item.partition(":")
        key = key.strip()
        if not sep or not _KEY.match(key) or not val.strip():
            raise bad("'%s' is not 'key: value'" % item.strip())
        if key in out:
            raise bad("key '%s' given twice" % key)
        out[key] = _param_value(val)
    return out


# -- the context --------------------------------------------------------------------------

class RegularizeContext:
    """Where a regularizer is called.

    ``solver``, ``net``: the solver and its train net (None outside a solver);
    ``param_id``: index into ``net.learnable_params``;
    ``layer``, ``layer_name``, ``layer_type``: the layer that owns the param;
    ``blob_index`` (alias ``param_index``): which blob of the layer (0 weights, 1 bias);
    ``param_spec``: the layer's ``param { }`` ParamSpec for that blob, or None;
    ``conv_group``: ``convolution_param.group`` when the layer has a convolution_param, else 1;
    ``history``: the solver's history arrays for the param (momentum, ...; may be empty);
    ``rate``: this iteration's learning rate; ``lr_mult``, ``decay_mult``: the param's
    multipliers; ``local_rate`` = rate·lr_mult; ``local_decay`` = weight_decay·decay_mult;
    ``iter``: the iteration; ``param``: the SolverParameter; ``xp``: numpy or cupy.
    """
    __slots__ = ("solver", "net", "param_id", "layer", "layer_name", "layer_type", "blob_index",
                 "param_index", "param_spec", "conv_group", "history", "rate", "lr_mult",
                 "decay_mult", "local_rate", "local_decay", "iter", "param", "xp")
    solver: Optional[Solver]
    net: Optional[Net]
    param_id: Optional[int]
    layer: Optional[Layer]
    layer_name: Optional[str]
    layer_type: Optional[str]
    blob_index: Optional[int]
    param_index: Optional[int]
    param_spec: Optional[caffe_pb2.ParamSpec]
    conv_group: int
    history: Sequence[Any]
    rate: Optional[float]
    lr_mult: Optional[float]
    decay_mult: Optional[float]
    local_rate: Optional[float]
    local_decay: Optional[float]
    iter: Optional[int]
    param: Any
    xp: Any

    def __init__(self, **kw: Any) -> None:
        unknown = set(kw) - set(self.__slots__)
        if unknown:
            raise TypeError("RegularizeContext has no field(s) %s" % ", ".join(sorted(unknown)))
        for k in self.__slots__:
            setattr(self, k, kw.get(k))
        if self.blob_index is None:
            self.blob_index = self.param_index
        if self.param_index is None:
            self.param_index = self.blob_index
        if self.conv_group is None:
            self.conv_group = 1
        if self.history is None:
            self.history = []
        if self.lr_mult is None:
            self.lr_mult = 1.0
        if self.decay_mult is None:
            self.decay_mult = 1.0
        if self.xp is None:
            self.xp = np

    def update(self, **kw: Any) -> RegularizeContext:
        """Set fields in place (a solver keeps one context per param and refreshes ``rate``,
        ``iter``, ``local_rate`` ... each iteration). Returns self."""
        for k, v in kw.items():
            if k not in self.__slots__:
                raise TypeError("RegularizeContext has no field '%s'" % k)
            setattr(self, k, v)
        if "blob_index" in kw and "param_index" not in kw:
            self.param_index = self.blob_index
        elif "param_index" in kw and "blob_index" not in kw:
            self.blob_index = self.param_index
        return self

    @classmethod
    def for_param(cls, net: Net, param_id: int, **kw: Any) -> RegularizeContext:
        """A context for learnable param ``param_id`` of ``net``: the layer facts come from
        ``learnable_param_info(net)``, ``decay_mult``/``lr_mult`` from the net; ``kw`` sets
        the rest (solver, rate, iter, param, history, local_decay ...)."""
        info = learnable_param_info(net)[param_id]
        fields = dict(net=net, param_id=param_id, layer=info.layer, layer_name=info.layer_name,
                      layer_type=info.layer_type, blob_index=info.blob_index,
                      param_spec=info.param_spec, conv_group=info.conv_group)
        lrs = getattr(net, "params_lr", None)
        decays = getattr(net, "params_weight_decay", None)
        if lrs is not None and param_id < len(lrs):
            fields["lr_mult"] = lrs[param_id]
        if decays is not None and param_id < len(decays):
            fields["decay_mult"] = decays[param_id]
        blob = net.learnable_params[param_id]
        fields["xp"] = backend.array_module(blob.data)
        fields.update(kw)
        return cls(**fields)

    def __repr__(self):
        return "RegularizeContext(param_id=%r, layer=%r, blob_index=%r)" % (
            self.param_id, self.layer_name, self.blob_index)


class ParamInfo:
    """Where learnable param ``param_id`` lives: its owner layer and that layer's ParamSpec."""
    __slots__ = ("param_id", "layer_index", "layer", "layer_name", "layer_type", "blob_index",
                 "param_spec", "conv_group")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def __repr__(self):
        return "ParamInfo(%d: %s[%d] %s)" % (self.param_id, self.layer_name, self.blob_index,
                                             self.layer_type)


def layer_conv_group(layer_param):
    """``convolution_param.group`` when the layer has a convolution_param, else 1."""
    if layer_param is not None and layer_param.HasField("convolution_param"):
        return int(layer_param.convolution_param.group)
    return 1


_INFO_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def learnable_param_info(net):
    """[ParamInfo] for ``net.learnable_params`` in order (layer order, weights then biases),
    from ``Net.learnable_param_info()`` (a param shared by name belongs to its owner, the first
    layer holding it), with the layer object, its type and its conv group. Cached per net."""
    try:
        cached = _INFO_CACHE.get(net)
    except TypeError:
        cached = None
    if cached is not None and len(cached) == len(net.learnable_params):
        return cached
    infos = []
    for k, (li, layer_name, blob_index, spec) in enumerate(net.learnable_param_info()):
        layer = net.layers[li]
        lp = getattr(layer, "layer_param", None)
        infos.append(ParamInfo(param_id=k, layer_index=li, layer=layer, layer_name=layer_name,
                               layer_type=lp.type if lp is not None else None,
                               blob_index=blob_index, param_spec=spec,
                               conv_group=layer_conv_group(lp)))
    try:
        _INFO_CACHE[net] = infos
    except TypeError:
        pass
    return infos


# -- the base class -----------------------------------------------------------------------

class Regularizer:
    """Base class of the regularizer plug-ins (see the module docstring).

    Selection: ``layers`` (layer names; None or empty = every layer) and ``blob_indices``
    (indices into a layer's blobs; None = every blob, except for classes with
    ``group_kind = True``, where None means the weights only, ``(0,)``).
    """
    name: str = "Regularizer"
    group_kind: bool = False
    layers: Optional[Tuple[str, ...]] = None
    blob_indices: Optional[Tuple[int, ...]] = None
    coeff: float = 0.0

    def __init__(self, coeff: float = 0.0, layers: Union[str, Iterable[str], None] = None,
                 blob_indices: Union[int, Sequence[int], None] = None) -> None:
        self.coeff = float(coeff)
        self.select(layers, blob_indices)

    # -- selection -----------------------------------------------------------------------
    def select(self, layers: Union[str, Iterable[str], None] = None,
               blob_indices: Union[int, Sequence[int], None] = None) -> Regularizer:
        """Restrict to ``layers`` (names) and ``blob_indices``; None keeps the default."""
        if isinstance(layers, str):
            layers = [layers]
        if isinstance(blob_indices, int):
            blob_indices = [blob_indices]
        self.layers = tuple(str(n) for n in layers) if layers else None
        self.blob_indices = (tuple(int(i) for i in blob_indices)
                             if blob_indices is not None and len(blob_indices) else None)
        return self

    def effective_blob_indices(self) -> Optional[Tuple[int, ...]]:
        bi = getattr(self, "blob_indices", None)
        if bi is None and getattr(self, "group_kind", False):
            return (0,)
        return bi

    def selects(self, ctx: RegularizeContext) -> bool:
        """Whether this regularizer applies to the param ``ctx`` describes."""
        layers = getattr(self, "layers", None)
        if layers and ctx.layer_name not in layers:
            return False
        bi = self.effective_blob_indices()
        return bi is None or ctx.blob_index in bi

    def selected_params(self, net: Net) -> List[ParamInfo]:
        """The ParamInfo of every learnable param of ``net`` this regularizer selects."""
        out = []
        for info in learnable_param_info(net):
            if info.layer_name is None:
                continue
            ctx = RegularizeContext(layer_name=info.layer_name, blob_index=info.blob_index)
            if self.selects(ctx):
                out.append(info)
        return out

    # -- the protocol --------------------------------------------------------------------
    def setup(self, net: Net) -> None:
        """Called once with the train net before training: check that the selected layers
        exist and hold the selected blobs (RegularizerError otherwise). Subclasses that
        override it call ``super().setup(net)``."""
        layers = getattr(self, "layers", None)
        if not layers:
            return
        with_params = {}
        for name, layer in zip(net.layer_names, net.layers):
            if len(layer.blobs):
                with_params[name] = len(layer.blobs)
        for name in layers:
            if name not in with_params:
                raise RegularizerError(
                    "regularizer '%s': layer '%s' is not a layer with parameters in net '%s' "
                    "(layers with parameters: %s)" % (self.name, name, getattr(net, "name", ""),
                                                      ", ".join(with_params) or "none"))
            bi = self.effective_blob_indices()
            if bi is not None and getattr(self, "blob_indices", None) is not None:
                for i in bi:
                    if i >= with_params[name]:
                        raise RegularizerError(
                            "regularizer '%s': layer '%s' has %d param blob(s), no blob_index %d"
                            % (self.name, name, with_params[name], i))

    def regularize(self, param_id: int, blob: Blob, ctx: RegularizeContext) -> None:
        """Add this penalty's gradient for learnable param ``param_id`` to ``blob.diff``."""
        raise NotImplementedError

    def penalty(self, param_id: int, blob: Blob, ctx: RegularizeContext) -> float:
        """The penalty's value on ``blob.data`` (the weights before the update), as a float.
        The default, 0.0, is for regularizers without a closed-form penalty."""
        return 0.0

    def after_update(self, solver: Solver) -> None:
        """Optional hook, once per iteration after ``net.update()``."""

    def state_dict(self) -> Dict[str, np.ndarray]:
        """{name: numpy array} of the state to save with a snapshot ({} = stateless)."""
        return {}

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise RegularizerError("regularizer '%s' keeps no state, but was given %s"
                                   % (self.name, ", ".join(sorted(state))))

    # -- construction from the solver prototxt ---------------------------------------------
    @classmethod
    def from_config(cls, **params: Any) -> Regularizer:
        """Build from the keyword arguments of a ``regularizer { }`` block (``coeff`` when the
        block sets it, plus the ``param_str`` keys). Override to map names."""
        return cls(**params)

    @classmethod
    def from_proto(cls, rp: caffe_pb2.RegularizerParameter) -> Regularizer:
        """Build from a ``RegularizerParameter`` (``regularizer { type coeff param_str layer
        blob_index }`` in the solver prototxt). On ``Regularizer`` itself the class is the one
        registered as ``rp.type``; on a subclass, that subclass."""
        type_name = rp.type
        klass = cls
        if cls is Regularizer:
            klass = _REGULARIZERS.lookup(type_name)
        params = parse_param_str(rp.param_str, type_name)
        if rp.HasField("coeff"):
            if "coeff" in params:
                raise RegularizerError("regularizer '%s': coeff is set both as a field and in "
                                       "param_str \"%s\"" % (type_name, rp.param_str))
            params["coeff"] = rp.coeff
        try:
            r = klass.from_config(**params)
        except TypeError as e:
            raise RegularizerError(
                "regularizer '%s': bad arguments (coeff %s, param_str \"%s\"): %s (registered "
                "regularizers: %s)" % (type_name, "%g" % rp.coeff if rp.HasField("coeff")
                                       else "not set", rp.param_str, e,
                                       ", ".join(regularizer_names()) or "none")) from None
        if len(rp.layer) or len(rp.blob_index):
            r.select(list(rp.layer) or getattr(r, "layers", None),
                     list(rp.blob_index) if len(rp.blob_index) else getattr(r, "blob_indices",
                                                                            None))
        return r

    # -- scratch memory ------------------------------------------------------------------
    def scratch(self, param_id: int, name: str, shape: Sequence[int], xp: Any,
                dtype: DTypeLike = np.float32) -> Any:
        """A work buffer kept per (param_id, name), reallocated only when the shape, dtype or
        array module changes (no per-iteration allocation)."""
        bufs = self.__dict__.get("_scratch_buffers")
        if bufs is None:
            bufs = self.__dict__["_scratch_buffers"] = {}
        key = (param_id, name)
        buf = bufs.get(key)
        if (buf is None or buf.shape != tuple(shape) or buf.dtype != dtype
                or not isinstance(buf, xp.ndarray)):
            buf = bufs[key] = xp.empty(shape, dtype=dtype)
        return buf

    def __repr__(self) -> str:
        return "<%s regularizer>" % self.name


# -- running a chain ----------------------------------------------------------------------

def _selected(r, ctx):
    sel = getattr(r, "selects", None)
    return sel is None or sel(ctx)


def setup_regularizers(regularizers: Iterable[Regularizer], net: Net) -> None:
    for r in regularizers:
        hook = getattr(r, "setup", None)
        if hook is not None:
            hook(net)


def run_regularizers(regularizers: Iterable[Regularizer], param_id: int, blob: Blob,
                     ctx: RegularizeContext) -> None:
    """Each selected regularizer of the chain adds its gradient, in order."""
    for r in regularizers:
        if _selected(r, ctx):
            r.regularize(param_id, blob, ctx)


def regularizers_penalty(regularizers: Iterable[Regularizer], param_id: int, blob: Blob,
                         ctx: RegularizeContext) -> float:
    """Σ of the selected regularizers' penalties on this param (a float)."""
    total = 0.0
    for r in regularizers:
        if _selected(r, ctx):
            pen = getattr(r, "penalty", None)
            if pen is not None:
                total += float(pen(param_id, blob, ctx))
    return total


def chain_state_dict(regularizers: Iterable[Regularizer]) -> Dict[str, np.ndarray]:
    """One flat {"<position>/<name>/<key>": array} for a chain (for a snapshot)."""
    out = {}
    for i, r in enumerate(regularizers):
        sd = getattr(r, "state_dict", None)
        for k, v in (sd() if sd is not None else {}).items():
            out["%d/%s/%s" % (i, getattr(r, "name", type(r).__name__), k)] = v
    return out


def load_chain_state_dict(regularizers: Sequence[Regularizer],
                          state: Dict[str, np.ndarray]) -> None:
    """Hand each regularizer of the chain its part of ``chain_state_dict``'s output."""
    parts: List[Dict[str, np.ndarray]] = [{} for _ in regularizers]
    for full, v in state.items():
        try:
            pos, name, key = full.split("/", 2)
            i = int(pos)
        except ValueError:
            raise RegularizerError("regularizer state key '%s' is not '<position>/<name>/<key>'"
                                   % full) from None
        if i >= len(regularizers) or getattr(regularizers[i], "name",
                                             type(regularizers[i]).__name__) != name:
            raise RegularizerError("regularizer state '%s' does not match the chain (%s)"
                                   % (full, ", ".join(getattr(r, "name", type(r).__name__)
                                                      for r in regularizers) or "empty"))
        parts[i][key] = v
    for r, part in zip(regularizers, parts):
        load = getattr(r, "load_state_dict", None)
        if load is not None:
            load(part)
        elif part:
            raise RegularizerError("regularizer %r cannot load state" % (r,))
