"""The Layer base class, the layer registry and the loss-weight mechanics.

A layer is written like this (built-in and user layers alike)::

    @register_layer("MyLoss")
    class MyLoss(caffepy.LossLayer):
        def reshape(self, bottom, top):
            top[0].reshape(())                       # a scalar loss
        def forward_impl(self, bottom, top):
            top[0].data[...] = ...
        def backward_impl(self, top, propagate_down, bottom):
            bottom[0].diff[...] = ... * top[0].diff  # top diff holds the loss weight

The framework methods ``setup``, ``forward`` and ``backward`` wrap those hooks exactly
as Caffe's Layer::SetUp/Forward/Backward do: ``setup`` = check blob counts ->
``layer_setup`` -> ``reshape`` -> set loss weights (writing each non-zero loss weight
into that top's diff); ``forward`` = ``reshape`` -> ``forward_impl`` -> returns
Σ dot(top.data, top.diff) over the tops with a loss weight.
"""
from __future__ import annotations

import logging
from typing import (TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Type,
                    TypeVar, Union, overload)

import numpy as np

from . import backend
from .blob import Blob
from .errors import LayerError  # noqa: F401
from .registry import Registry

if TYPE_CHECKING:    # for the annotations only: nothing here is imported at run time
    from numpy.typing import ArrayLike, DTypeLike

    from .proto import caffe_pb2

_f32 = np.float32
log = logging.getLogger("caffepy")

#: A layer's bottom or top blobs, in order (a list in a Net).
BlobVec = Sequence[Blob]
LayerClass = TypeVar("LayerClass", bound="Type[Layer]")


class BlobList(list):
    """A layer's learnable blobs; ``add_blob(*shape)`` as in pycaffe's Python layers."""

    def add_blob(self, *shape: int) -> Blob:
        b = Blob(*shape)
        self.append(b)
        return b


_LAYERS = Registry("unknown layer type '%s' (known types: %s)", LayerError,
                   name_attr="type_name")


@overload
def register_layer(type_name: str) -> Callable[[LayerClass], LayerClass]: ...
@overload
def register_layer(type_name: str, cls: LayerClass) -> LayerClass: ...


def register_layer(type_name: str, cls: Optional[LayerClass] = None) -> Any:
    """Register a Layer class under a Caffe type name (usable as a decorator)."""
    return _LAYERS.register(type_name, cls)


def layer_type_list() -> List[str]:
    return _LAYERS.names()


def get_layer_class(type_name: str) -> Type[Layer]:
    return _LAYERS.get(type_name)


def create_layer(layer_param: caffe_pb2.LayerParameter, phase: Optional[int] = None) -> Layer:
    # LayerRegistry::CreateLayer logs this (lower-case "layer") before building the layer.
    log.info("Creating layer %s", layer_param.name)
    cls = _LAYERS.lookup(layer_param.type, "Layer '%s': unknown layer type '%%s' (known "
                         "types: %%s)" % layer_param.name.replace("%", "%%"))
    return cls(layer_param, phase)


def build_layer(layer_param: Union[caffe_pb2.LayerParameter, str],
                bottom_arrays: Sequence[ArrayLike] = (), ntop: Optional[int] = None,
                phase: Optional[int] = None) -> Tuple[Layer, List[Blob], List[Blob]]:
    """A layer outside any net, for tests and experiments: build it from a LayerParameter (or
    its prototxt text), put each array of ``bottom_arrays`` in a fresh bottom Blob, and set it
    up. ``ntop`` defaults to the number of tops the param names (at least 1).
    Returns ``(layer, bottom, top)``."""
    import numpy as np
    from .proto import caffe_pb2
    from .proto import parse_text
    param = (parse_text(layer_param, caffe_pb2.LayerParameter())
             if isinstance(layer_param, str) else layer_param)
    bottom = []
    for a in bottom_arrays:
        a = np.asarray(a, dtype=np.float32)
        b = Blob(a.shape)
        b.data[...] = backend.xp().asarray(a)
        bottom.append(b)
    ntop = max(len(param.top), 1) if ntop is None else ntop
    top = [Blob() for _ in range(ntop)]
    layer = create_layer(param, phase)
    layer.setup(bottom, top)
    return layer, bottom, top


class Layer:
    # Blob-count constraints (Caffe's ExactNumBottomBlobs & co.); -1 = unconstrained.
    exact_num_bottom_blobs = -1
    min_bottom_blobs = -1
    max_bottom_blobs = -1
    exact_num_top_blobs = -1
    min_top_blobs = -1
    max_top_blobs = -1
    equal_num_bottom_top_blobs = False
    auto_top_blobs = False
    # LossLayer subclasses get loss_weight 1 on top 0 when none is given.
    is_loss = False
    type_name: Optional[str] = None

    def __init__(self, layer_param: caffe_pb2.LayerParameter,
                 phase: Optional[int] = None) -> None:
        from .proto import caffe_pb2
        self.layer_param = layer_param
        if phase is None:
            phase = layer_param.phase if layer_param.HasField("phase") else caffe_pb2.TRAIN
        self.phase: int = phase
        self.blobs: BlobList = BlobList()
        self.param_propagate_down: List[bool] = []
        self.loss_weights: List[float] = []
        # Blobs stored in the prototxt/caffemodel are loaded as the layer's initial params.
        if len(layer_param.blobs):
            from .proto import blobproto_to_array
            for bp in layer_param.blobs:
                arr = blobproto_to_array(bp)
                b = Blob(arr.shape)
                b.data[...] = backend.xp().asarray(arr)
                # Blob::FromProto also copies a stored diff (double_diff or diff) if present.
                if len(bp.double_diff) or len(bp.diff):
                    b.diff[...] = backend.xp().asarray(blobproto_to_array(bp, return_diff=True))
                self.blobs.append(b)

    # -- hooks a layer implements -----------------------------------------------
    def layer_setup(self, bottom: BlobVec, top: BlobVec) -> None:
        """One-time setup: read params, create and fill ``self.blobs``."""

    def reshape(self, bottom: BlobVec, top: BlobVec) -> None:
        raise NotImplementedError("Layer '%s' (%s) does not implement reshape"
                                  % (self.name, self.type))

    def forward_impl(self, bottom: BlobVec, top: BlobVec) -> None:
        raise NotImplementedError

    def backward_impl(self, top: BlobVec, propagate_down: Sequence[bool],
                      bottom: BlobVec) -> None:
        """Compute bottom diffs (overwrite) and param diffs (accumulate with +=)."""
        if any(propagate_down):
            raise LayerError("Layer '%s' (%s) has no backward pass (Caffe: NOT_IMPLEMENTED); "
                             "it cannot propagate a gradient to its bottoms"
                             % (self.name, self.type))

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    # -- conveniences ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.layer_param.name

    @property
    def type(self) -> str:
        return self.layer_param.type

    @property
    def xp(self) -> Any:
        return backend.xp()

    def scratch(self, name: str, shape: Sequence[int], dtype: Optional[DTypeLike] = None) -> Any:
        """A named scratch array (float32 unless told), kept across iterations and
        reallocated only when its shape, dtype or array module changes; its contents are
        undefined. Made where first needed, so inference-only nets do not pay for
        backward-only buffers."""
        xp = self.xp
        dtype = xp.float32 if dtype is None else dtype
        shape = tuple(shape)
        buffers = self.__dict__.setdefault("_scratch", {})
        a = buffers.get(name)
        if a is None or a.shape != shape or a.dtype != dtype or not isinstance(a, xp.ndarray):
            a = buffers[name] = xp.empty(shape, dtype=dtype)
        return a

    def canonical_axis(self, blob: Blob, axis: int, what: str = "axis") -> int:
        """Caffe's Blob::CanonicalAxisIndex (negative axes count from the end), with an error
        naming the layer. A 0-D blob accepts axis 0."""
        n = blob.num_axes
        if n == 0 and axis in (0, -1):
            return 0
        if not -n <= axis < n:
            raise self.error("%s %d is out of range for a bottom with %d axes (shape %s); it must "
                             "lie in [%d, %d]", what, axis, n, blob.shape, -n, n - 1)
        return axis + n if axis < 0 else axis

    def check_param_shape(self, j: int, expected: Sequence[int], what: str) -> None:
        """Check the shape of a preloaded param blob (from a prototxt or an old caffemodel).
        Legacy 4-D shapes with leading 1s and the right trailing dims are accepted and reshaped."""
        b = self.blobs[j]
        expected = tuple(int(d) for d in expected)
        if b.shape == expected:
            return
        if len(b.shape) == 4 and len(expected) <= 4 and b.shape == (1,) * (4 - len(expected)) + expected:
            b.reshape(expected)
            return
        raise self.error("Incorrect %s shape: expected shape %s; instead, shape was %s "
                         "(blobs[%d], preloaded from the prototxt or a caffemodel)",
                         what, expected, b.shape, j)

    def fill_param(self, filler_param: caffe_pb2.FillerParameter, blob: Blob,
                   what: str) -> None:
        """Fill a param blob from a FillerParameter; a bad filler is reported with the layer."""
        from .fillers import FillerError, fill
        try:
            fill(filler_param, blob)
        except FillerError as e:
            raise self.error("%s: %s", what, e) from None

    def error(self, msg: str, *args: Any) -> LayerError:
        return LayerError("Layer '%s' (%s): %s" % (self.name, self.type, msg % args if args else msg))

    def check(self, cond: Any, msg: str, *args: Any) -> None:
        if not cond:
            raise self.error(msg, *args)

    # -- which params get a gradient (Caffe's param_propagate_down_) -------------------
    # The list is the layer's: ``setup`` sizes it to the param blobs (True for each, as every
    # Caffe LayerSetUp does), the Net then sets each entry (lr_mult != 0, force_backward)
    # through set_param_propagate_down, and backward_impl reads it through param_propagate.
    def param_propagate(self, i: int) -> bool:
        """Whether backward accumulates a gradient into param blob ``i``."""
        return i < len(self.param_propagate_down) and self.param_propagate_down[i]

    def set_param_propagate_down(self, i: int, value: bool) -> None:
        self.param_propagate_down[i] = bool(value)

    def _size_param_propagate_down(self):
        n = len(self.blobs)
        del self.param_propagate_down[n:]
        self.param_propagate_down.extend([True] * (n - len(self.param_propagate_down)))

    # -- framework ------------------------------------------------------------
    def check_blob_counts(self, bottom: BlobVec, top: BlobVec) -> None:
        def chk(n, exact, lo, hi, what):
            if exact >= 0 and n != exact:
                raise self.error("takes %d %s blob(s) as input, got %d", exact, what, n)
            if lo >= 0 and n < lo:
                raise self.error("takes at least %d %s blob(s), got %d", lo, what, n)
            if hi >= 0 and n > hi:
                raise self.error("takes at most %d %s blob(s), got %d", hi, what, n)
        chk(len(bottom), self.exact_num_bottom_blobs, self.min_bottom_blobs,
            self.max_bottom_blobs, "bottom")
        chk(len(top), self.exact_num_top_blobs, self.min_top_blobs, self.max_top_blobs, "top")
        if self.equal_num_bottom_top_blobs and len(bottom) != len(top):
            raise self.error("needs as many tops as bottoms (%d bottoms, %d tops)",
                             len(bottom), len(top))

    def setup(self, bottom: BlobVec, top: BlobVec) -> None:
        self.check_blob_counts(bottom, top)
        if self.is_loss and len(self.layer_param.loss_weight) == 0:
            self.layer_param.loss_weight.append(1.0)
        self.layer_setup(bottom, top)
        # Like every Caffe LayerSetUp: params propagate unless the Net says otherwise.
        self._size_param_propagate_down()
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def set_loss_weights(self, top: BlobVec) -> None:
        lw = self.layer_param.loss_weight
        if len(lw):
            if len(lw) != len(top):
                raise self.error("loss_weight must be unspecified or given once per top "
                                 "(%d given, %d tops)", len(lw), len(top))
            self.loss_weights = [float(w) for w in lw]
            for w, t in zip(self.loss_weights, top):
                if w != 0:
                    t.diff[...] = w
        else:
            self.loss_weights = [0.0] * len(top)

    def loss(self, top_index: int) -> float:
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def forward(self, bottom: BlobVec, top: BlobVec) -> float:
        self.reshape(bottom, top)
        self.forward_impl(bottom, top)
        # Layer::Forward: Dtype loss += caffe_cpu_dot(...) -- a float32 sum over the tops.
        loss = 0.0
        for i, t in enumerate(top):
            if self.loss(i) != 0:
                loss = float(_f32(loss + float(self.xp.vdot(t.flat_data, t.flat_diff))))
        return loss

    def backward(self, top: BlobVec, propagate_down: Sequence[bool], bottom: BlobVec) -> None:
        self.backward_impl(top, propagate_down, bottom)

    def __repr__(self) -> str:
        return "<%s layer '%s'>" % (self.type, self.name)


class LossLayer(Layer):
    """Base of the loss layers: 2 bottoms (prediction, target), a scalar top 0 with default
    loss_weight 1. Override the blob counts for other arities, as Caffe's loss layers do."""
    is_loss = True
    # Caffe's LossLayer::AutoTopBlobs() is true: a loss layer given no top in the prototxt
    # gets an anonymous "(automatic)" top (which still carries its loss weight).
    auto_top_blobs = True
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def reshape(self, bottom: BlobVec, top: BlobVec) -> None:
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error("the data and label should have the same first dimension "
                             "(bottom '%s' %s vs %s)", "0", bottom[0].shape, bottom[1].shape)
        top[0].reshape(())


class NeuronLayer(Layer):
    """One bottom -> one top of the same shape; in-place allowed."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: BlobVec, top: BlobVec) -> None:
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)
