"""pycaffe's view of a Net: name -> blob/param/layer dictionaries, inputs and outputs, and
``forward(**inputs)`` / ``backward(**diffs)`` / ``forward_all`` on whole arrays."""
import collections
import itertools

import numpy as np

from .. import backend
from ..errors import NetError
from .build import AUTOMATIC_TOP


class PycaffeAccessors:
    """Mixed into Net. The dictionaries are built once, on first use, as pycaffe does (the
    net's structure is fixed after Init)."""

    @property
    def blobs(self):
        """pycaffe: blob name -> Blob, in creation order (in-place tops add no entry)."""
        if "_blobs_dict" not in self.__dict__:
            self._blobs_dict = collections.OrderedDict(
                (n, self._blobs[i]) for i, n in enumerate(self.blob_names) if n != AUTOMATIC_TOP)
        return self._blobs_dict

    @property
    def layer_dict(self):
        if "_layer_dict" not in self.__dict__:
            self._layer_dict = collections.OrderedDict(zip(self.layer_names, self.layers))
        return self._layer_dict

    @property
    def params(self):
        """pycaffe: layer name -> list of param Blobs, for layers that have params."""
        if "_params_dict" not in self.__dict__:
            self._params_dict = collections.OrderedDict(
                (self.layer_names[i], list(l.blobs)) for i, l in enumerate(self.layers)
                if len(l.blobs))
        return self._params_dict

    @property
    def _layer_names(self):
        return list(self.layer_names)

    @property
    def _blob_names(self):
        return list(self.blob_names)

    @property
    def inputs(self):
        return [self.blob_names[i] for i in self.input_blob_indices]

    @property
    def outputs(self):
        return [self.blob_names[i] for i in self.output_blob_indices]

    @property
    def output_blobs(self):
        return [self._blobs[i] for i in self.output_blob_indices]

    @property
    def input_blobs(self):
        return [self._blobs[i] for i in self.input_blob_indices]

    def _blob_names_by_layer(self, id_vecs):
        return collections.OrderedDict((self.layer_names[i], [self.blob_names[b] for b in ids])
                                       for i, ids in enumerate(id_vecs))

    @property
    def top_names(self):
        return self._blob_names_by_layer(self.top_id_vecs)

    @property
    def bottom_names(self):
        return self._blob_names_by_layer(self.bottom_id_vecs)

    def blob_by_name(self, name):
        if name not in self.blob_names_index:
            raise KeyError("Unknown blob name '%s'" % name)
        return self._blobs[self.blob_names_index[name]]

    def layer_by_name(self, name):
        if name not in self.layer_names_index:
            raise KeyError("Unknown layer name '%s'" % name)
        return self.layers[self.layer_names_index[name]]

    # -- running on arrays -------------------------------------------------------------
    def _layer_index(self, name, default):
        return default if name is None else self.layer_names.index(name)

    def _fill(self, arrays, expected, field, mismatch, not_batch_sized):
        """Copy ``arrays`` (name -> batch-sized array) into the ``field`` ("data" or "diff") of
        the blobs named ``expected``; the two messages name what went wrong."""
        if set(arrays) != set(expected):
            raise NetError(mismatch % (sorted(arrays), expected))
        for name, arr in arrays.items():
            b = self.blob_by_name(name)
            if np.shape(arr)[0] != b.shape[0]:
                raise NetError(not_batch_sized % (name, np.shape(arr)[0], b.shape[0]))
            getattr(b, field)[...] = backend.xp().asarray(arr)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: copy kwargs into the inputs, run [start..end], return outputs."""
        start_ind = self._layer_index(start, 0)
        end_ind = self._layer_index(end, len(self.layers) - 1)
        outputs = set((self.top_names[end] if end is not None else self.outputs) + list(blobs or []))
        if kwargs:
            self._fill(kwargs, self.inputs, "data",
                       "Input blob arguments %s do not match net inputs %s",
                       "Input '%s' is not batch sized (%d vs %d)")
        self.forward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).data for o in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: copy kwargs into output diffs, run [start..end] backwards."""
        start_ind = self._layer_index(start, len(self.layers) - 1)
        end_ind = self._layer_index(end, 0)
        outputs = set((self.bottom_names[end] if end is not None else self.inputs)
                      + list(diffs or []))
        if kwargs:
            self._fill(kwargs, self.outputs, "diff",
                       "Top diff arguments %s do not match net outputs %s",
                       "Diff '%s' is not batch sized (%d vs %d)")
        self.backward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).diff for o in outputs}

    def _batches(self, arrays):
        """pycaffe's Net._batch: split ``arrays`` into batch-sized dicts, zero-padding the last."""
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        full, remainder = divmod(num, batch_size)
        for b in range(full):
            i = b * batch_size
            yield {name: a[i:i + batch_size] for name, a in arrays.items()}
        if remainder:
            yield {name: np.concatenate([a[-remainder:],
                                         np.zeros((batch_size - remainder,) + a.shape[1:],
                                                  dtype=np.float32)])
                   for name, a in arrays.items()}

    @staticmethod
    def _collect(store, results):
        for name, arr in results.items():
            arr = backend.to_numpy(arr)
            if arr.ndim == 0:
                store[name].append(arr.copy())
            else:
                store[name].extend(arr.copy())

    @staticmethod
    def _unpad(stores, kwargs):
        """The collected arrays, without the rows the last batch's zero padding added."""
        stores = [{k: np.asarray(v) for k, v in store.items()} for store in stores]
        pad = len(next(iter(stores[0].values()))) - len(next(iter(kwargs.values())))
        if pad > 0:
            stores = [{k: v[:-pad] for k, v in store.items()} for store in stores]
        return stores

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe: forward ``kwargs`` (whole data sets, any length) batch by batch; returns
        {output: array} with the padding of the last batch removed."""
        outs = {o: [] for o in set(self.outputs + list(blobs or []))}
        for batch in self._batches(kwargs):
            self._collect(outs, self.forward(blobs=blobs, **batch))
        return self._unpad([outs], kwargs)[0]

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe: forward the inputs and backward the output diffs given in ``kwargs``, batch
        by batch; returns ({output: array}, {input diff: array}) without the padding."""
        outs = {o: [] for o in set(self.outputs + list(blobs or []))}
        grads = {d: [] for d in set(self.inputs + list(diffs or []))}
        fwd = self._batches({k: kwargs[k] for k in self.inputs if k in kwargs})
        bwd = self._batches({k: kwargs[k] for k in self.outputs if k in kwargs}) \
            if any(k in kwargs for k in self.outputs) else iter(())
        for fb, bb in itertools.zip_longest(fwd, bwd, fillvalue={}):
            self._collect(outs, self.forward(blobs=blobs, **fb))
            self._collect(grads, self.backward(diffs=diffs, **bb))
        outs, grads = self._unpad([outs, grads], kwargs)
        return outs, grads

    def set_input_arrays(self, data, labels):
        layer = self.layers[0] if self.layers else None
        if layer is None or layer.type != "MemoryData":
            raise NetError("set_input_arrays needs the first layer to be MemoryData")
        layer.set_input_arrays(data, labels)
