"""pycaffe's view of a Net: name -> blob/param/layer dictionaries, inputs and outputs, the
underscored index calls (``_forward``, ``_top_ids``, ``_inputs`` ...), and
``forward(**inputs)`` / ``backward(**diffs)`` / ``forward_all`` on whole arrays.

Names, arguments, return values and checks follow pycaffe (pycaffe.py and the Net class of
_caffe.cpp); where pycaffe raises a bare ``Exception`` or ``RuntimeError``, caffepy raises a
:class:`~caffepy.errors.NetError` whose message names the blob, layer or sizes.
"""
from __future__ import annotations

import collections
import itertools
import numbers
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Tuple)

import numpy as np

from .. import backend
from ..errors import NetError
from .build import AUTOMATIC_TOP

if TYPE_CHECKING:
    from ..blob import Blob
    from ..layer import Layer

Arrays = Dict[str, Any]


class InputArrayError(NetError, RuntimeError):
    """Arrays that ``set_input_arrays`` cannot serve (pycaffe raises RuntimeError for these)."""


class BlobLossWeights(collections.OrderedDict):
    """pycaffe's ``Net.blob_loss_weights``: blob name -> loss weight, in blob order.

    An integer key is a blob id (Caffe's ``blob_loss_weights()[id]``), so code that indexes
    the weights by ``blob_names.index(name)`` reads the same numbers."""

    def __init__(self, names: Iterable[str], weights: List[float]):
        super().__init__(zip(names, weights))
        self._by_id = list(weights)

    def __getitem__(self, key):
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            return self._by_id[key]
        return super().__getitem__(key)


class PycaffeAccessors:
    """Mixed into Net. The dictionaries are built once, on first use, as pycaffe does (the
    net's structure is fixed after Init)."""

    # the tables Net::Init fills (net.py), read here
    name: str
    layers: List["Layer"]
    layer_names: List[str]
    layer_names_index: Dict[str, int]
    _blobs: List["Blob"]
    blob_names: List[str]
    blob_names_index: Dict[str, int]
    _blob_loss_weights: List[float]
    bottom_id_vecs: List[List[int]]
    top_id_vecs: List[List[int]]
    input_blob_indices: List[int]
    output_blob_indices: List[int]
    forward_from_to: Callable[[int, int], float]
    backward_from_to: Callable[[int, int], None]

    def _cached(self, key, build):
        value = self.__dict__.get(key)
        if value is None:
            value = self.__dict__[key] = build()
        return value

    # -- dictionaries by name ---------------------------------------------------------
    @property
    def blobs(self) -> "collections.OrderedDict[str, Blob]":
        """pycaffe: blob name -> Blob, in creation order (in-place tops add no entry)."""
        return self._cached("_blobs_dict", lambda: collections.OrderedDict(
            (n, self._blobs[i]) for i, n in enumerate(self.blob_names) if n != AUTOMATIC_TOP))

    @property
    def blob_loss_weights(self) -> BlobLossWeights:
        """pycaffe: blob name -> the loss weight of that blob (0 for blobs that are no loss)."""
        return self._cached("_blob_loss_weights_dict",
                            lambda: BlobLossWeights(self.blob_names, self._blob_loss_weights))

    @property
    def layer_dict(self) -> "collections.OrderedDict[str, Layer]":
        """pycaffe: layer name -> Layer, bottom to top."""
        return self._cached("_layer_dict",
                            lambda: collections.OrderedDict(zip(self.layer_names, self.layers)))

    @property
    def params(self) -> "collections.OrderedDict[str, List[Blob]]":
        """pycaffe: layer name -> list of param Blobs, for layers that have params."""
        return self._cached("_params_dict", lambda: collections.OrderedDict(
            (self.layer_names[i], list(l.blobs)) for i, l in enumerate(self.layers)
            if len(l.blobs)))

    @property
    def _layer_names(self) -> List[str]:
        return list(self.layer_names)

    @property
    def _blob_names(self) -> List[str]:
        return list(self.blob_names)

    # -- inputs, outputs and the ids of each layer's blobs ------------------------------
    @property
    def _inputs(self) -> List[int]:
        """pycaffe: the blob ids of the net's inputs (Input layers' tops)."""
        return list(self.input_blob_indices)

    @property
    def _outputs(self) -> List[int]:
        """pycaffe: the blob ids of the net's outputs (tops nothing consumes), by name."""
        return list(self.output_blob_indices)

    def _bottom_ids(self, i: int) -> List[int]:
        """pycaffe: the blob ids of layer ``i``'s bottoms."""
        return list(self.bottom_id_vecs[self._checked_layer_id(i)])

    def _top_ids(self, i: int) -> List[int]:
        """pycaffe: the blob ids of layer ``i``'s tops."""
        return list(self.top_id_vecs[self._checked_layer_id(i)])

    def _checked_layer_id(self, i):
        n = len(self.layers)
        if not isinstance(i, numbers.Integral) or not -n <= i < n:
            raise IndexError("layer id %r outside the net's %d layers" % (i, n))
        return int(i)

    @property
    def inputs(self) -> List[str]:
        return [self.blob_names[i] for i in self.input_blob_indices]

    @property
    def outputs(self) -> List[str]:
        return [self.blob_names[i] for i in self.output_blob_indices]

    @property
    def output_blobs(self) -> List["Blob"]:
        return [self._blobs[i] for i in self.output_blob_indices]

    @property
    def input_blobs(self) -> List["Blob"]:
        return [self._blobs[i] for i in self.input_blob_indices]

    def _blob_names_by_layer(self, id_vecs):
        return collections.OrderedDict((self.layer_names[i], [self.blob_names[b] for b in ids])
                                       for i, ids in enumerate(id_vecs))

    @property
    def top_names(self) -> "collections.OrderedDict[str, List[str]]":
        """pycaffe: layer name -> the names of its tops."""
        return self._cached("_top_names", lambda: self._blob_names_by_layer(self.top_id_vecs))

    @property
    def bottom_names(self) -> "collections.OrderedDict[str, List[str]]":
        """pycaffe: layer name -> the names of its bottoms."""
        return self._cached("_bottom_names",
                            lambda: self._blob_names_by_layer(self.bottom_id_vecs))

    def blob_by_name(self, name: str) -> "Blob":
        if name not in self.blob_names_index:
            raise KeyError("Unknown blob name '%s'" % name)
        return self._blobs[self.blob_names_index[name]]

    def layer_by_name(self, name: str) -> "Layer":
        if name not in self.layer_names_index:
            raise KeyError("Unknown layer name '%s'" % name)
        return self.layers[self.layer_names_index[name]]

    # -- running by layer index (pycaffe's _forward / _backward) ----------------------
    def _forward(self, start: int, end: int) -> float:
        """pycaffe: Net::ForwardFromTo(start, end), both layer ids inclusive; the loss."""
        return self.forward_from_to(int(start), int(end))

    def _backward(self, start: int, end: int) -> None:
        """pycaffe: Net::BackwardFromTo(start, end), from layer ``start`` down to ``end``."""
        self.backward_from_to(int(start), int(end))

    # -- running on arrays -------------------------------------------------------------
    def _layer_index(self, name, default, what):
        if name is None:
            return default
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise NetError("%s=%r: net '%s' has no layer of that name (its layers: %s)"
                           % (what, name, self.name, ", ".join(self.layer_names))) from None

    def _check_blob_names(self, names, what):
        unknown = [n for n in names if n not in self.blob_names_index or n == AUTOMATIC_TOP]
        if unknown:
            raise NetError("%s: net '%s' has no blob named %s" % (
                what, self.name, ", ".join("'%s'" % n for n in unknown)))

    def _fill(self, arrays, expected, field, mismatch, not_batch_sized):
        """Copy ``arrays`` (name -> batch-sized array) into the ``field`` ("data" or "diff") of
        the blobs named ``expected``; the two messages name what went wrong."""
        if set(arrays) != set(expected):
            raise NetError(mismatch % (sorted(arrays), expected))
        xp = backend.xp()
        for name, arr in arrays.items():
            b = self.blob_by_name(name)
            shape = np.shape(arr)
            if not shape or shape[0] != b.shape[0]:
                raise NetError(not_batch_sized % (name, shape[0] if shape else 0, b.shape[0],
                                                  shape, b.shape))
            try:
                getattr(b, field)[...] = xp.asarray(arr)
            except ValueError:
                raise NetError("%s of blob '%s' has shape %s; an array of shape %s does not fit "
                               "(reshape the blob and call net.reshape() first)"
                               % (field, name, b.shape, shape)) from None

    def forward(self, blobs: Optional[Iterable[str]] = None, start: Optional[str] = None,
                end: Optional[str] = None, **kwargs: Any) -> Arrays:
        """pycaffe's Net.forward: copy ``kwargs`` (input name -> batch) into the inputs, run
        the layers ``start`` .. ``end`` (names, inclusive), and return {name: data array}
        for the outputs (the tops of ``end`` when given) and the blobs named in ``blobs``."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start, 0, "start")
        end_ind = self._layer_index(end, len(self.layers) - 1, "end")
        outputs = set((self.top_names[end] if end is not None else self.outputs) + blobs)
        self._check_blob_names(blobs, "forward(blobs=...)")
        if kwargs:
            self._fill(kwargs, self.inputs, "data",
                       "Input blob arguments %s do not match net inputs %s",
                       "Input '%s' is not batch sized (%d vs %d; shapes %s and %s)")
        self.forward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).data for o in outputs}

    def backward(self, diffs: Optional[Iterable[str]] = None, start: Optional[str] = None,
                 end: Optional[str] = None, **kwargs: Any) -> Arrays:
        """pycaffe's Net.backward: copy ``kwargs`` (output name -> diff batch) into the output
        diffs, run the layers ``start`` .. ``end`` backwards, and return {name: diff array}
        for the inputs (the bottoms of ``end`` when given) and the blobs named in ``diffs``."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start, len(self.layers) - 1, "start")
        end_ind = self._layer_index(end, 0, "end")
        outputs = set((self.bottom_names[end] if end is not None else self.inputs) + diffs)
        self._check_blob_names(diffs, "backward(diffs=...)")
        if kwargs:
            self._fill(kwargs, self.outputs, "diff",
                       "Top diff arguments %s do not match net outputs %s",
                       "Diff '%s' is not batch sized (%d vs %d; shapes %s and %s)")
        self.backward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).diff for o in outputs}

    # -- whole data sets, batch by batch ----------------------------------------------
    def _batch_size(self):
        return next(iter(self.blobs.values())).shape[0]

    def _batch(self, blobs: Mapping[str, Any]) -> Iterator[Arrays]:
        """pycaffe's Net._batch: split ``blobs`` (name -> array of any length, all of one
        length) into batch-sized dicts; the last one is padded with zeros. No arrays, no
        batches."""
        if not blobs:
            return
        arrays = {name: np.asarray(a) for name, a in blobs.items()}
        lengths = {name: len(a) for name, a in arrays.items()}
        num = next(iter(lengths.values()))
        if any(n != num for n in lengths.values()):
            raise NetError("the arrays to batch differ in length: %s" % lengths)
        batch_size = self._batch_size()
        full, remainder = divmod(num, batch_size)
        for b in range(full):
            i = b * batch_size
            yield {name: a[i:i + batch_size] for name, a in arrays.items()}
        if remainder:
            yield {name: np.concatenate([a[num - remainder:],
                                         np.zeros((batch_size - remainder,) + a.shape[1:],
                                                  dtype=a.dtype)])
                   for name, a in arrays.items()}

    @staticmethod
    def _collect(store, results):
        for name, arr in results.items():
            store[name].append(backend.to_numpy(arr).copy())

    def _stack(self, store, num):
        """The batches of ``store`` as one array per name, less the last batch's padding:
        ``num`` rows of batch-sized outputs (a scalar output, e.g. a loss, gives one value per
        batch)."""
        out = {}
        for name, parts in store.items():
            if not parts:
                out[name] = np.zeros(0, np.float32)
            elif parts[0].ndim == 0:
                out[name] = np.stack(parts)
            else:
                out[name] = np.concatenate(parts)[:num]
        return out

    def _num_items(self, kwargs, what):
        if not kwargs:
            raise NetError("%s needs whole arrays as keyword arguments (blob name=array); "
                           "for a net fed by its own data layers call forward()" % what)
        return len(next(iter(kwargs.values())))

    def forward_all(self, blobs: Optional[Iterable[str]] = None, **kwargs: Any) -> Arrays:
        """pycaffe: forward ``kwargs`` (whole data sets, any length) batch by batch; returns
        {output: array} with the padding of the last batch removed."""
        num = self._num_items(kwargs, "forward_all")
        blobs = list(blobs or [])
        outs: Dict[str, list] = {o: [] for o in set(self.outputs + blobs)}
        for batch in self._batch(kwargs):
            self._collect(outs, self.forward(blobs=blobs, **batch))
        return self._stack(outs, num)

    def forward_backward_all(self, blobs: Optional[Iterable[str]] = None,
                             diffs: Optional[Iterable[str]] = None,
                             **kwargs: Any) -> Tuple[Arrays, Arrays]:
        """pycaffe: forward the inputs and backward the output diffs given in ``kwargs``,
        batch by batch (a missing side runs on what the blobs hold); returns
        ({output: array}, {input diff: array}) without the padding."""
        num = self._num_items(kwargs, "forward_backward_all")
        blobs, diffs = list(blobs or []), list(diffs or [])
        outs: Dict[str, list] = {o: [] for o in set(self.outputs + blobs)}
        grads: Dict[str, list] = {d: [] for d in set(self.inputs + diffs)}
        fwd = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        bwd = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        no_batch: Arrays = {}
        for fb, bb in itertools.zip_longest(fwd, bwd, fillvalue=no_batch):
            self._collect(outs, self.forward(blobs=blobs, **fb))
            self._collect(grads, self.backward(diffs=diffs, **bb))
        return self._stack(outs, num), self._stack(grads, num)

    # -- MemoryData ------------------------------------------------------------------
    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe: serve ``data`` (float32 N x C x H x W, C-contiguous) and ``labels``
        (float32, N or N x 1 x 1 x 1) from the first layer, a MemoryData layer. N must be a
        multiple of its batch_size. The arrays are not copied: the layer reads them as they
        are at each forward, so keep them alive and unchanged while it does."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe's checks, then MemoryDataLayer::Reset: labels must be N x 1 x 1 x 1."""
        layer: Any = self.layers[0] if self.layers else None
        if layer is None or layer.type != "MemoryData":
            raise InputArrayError(
                "set_input_arrays may only be called if the first layer is a MemoryData layer "
                "(net '%s' starts with %s)" % (self.name, "no layer" if layer is None else
                                               "layer '%s' of type %s"
                                               % (self.layer_names[0], layer.type)))
        where = "layer '%s'" % self.layer_names[0]
        _check_input_array(data, "data array", where, layer.channels, layer.height, layer.width)
        _check_input_array(labels, "labels array", where, 1, 1, 1)
        if data.shape[0] != labels.shape[0]:
            raise InputArrayError("%s: data and labels must have the same first dimension "
                                  "(%d vs %d)" % (where, data.shape[0], labels.shape[0]))
        if data.shape[0] % layer.batch_size != 0:
            raise InputArrayError("%s: first dimensions of input arrays must be a multiple of "
                                  "batch size (%d items, batch_size %d)"
                                  % (where, data.shape[0], layer.batch_size))
        layer.reset(data, labels.reshape(labels.shape[0]), data.shape[0])


def _check_input_array(arr, name, where, channels, height, width):
    if not isinstance(arr, np.ndarray):
        raise InputArrayError("%s: %s must be a numpy array, not %s"
                              % (where, name, type(arr).__name__))
    if not arr.flags.c_contiguous:
        raise InputArrayError("%s: %s must be C contiguous (np.ascontiguousarray)" % (where, name))
    if arr.ndim != 4:
        raise InputArrayError("%s: %s must be 4-d, got shape %s" % (where, name, arr.shape))
    if arr.dtype != np.float32:
        raise InputArrayError("%s: %s must be float32, got %s" % (where, name, arr.dtype))
    for axis, want, what in ((1, channels, "number of channels"), (2, height, "height"),
                             (3, width, "width")):
        if arr.shape[axis] != want:
            raise InputArrayError("%s: %s has wrong %s (%d; the layer takes %d)"
                                  % (where, name, what, arr.shape[axis], want))
