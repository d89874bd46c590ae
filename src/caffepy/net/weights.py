"""Weight I/O of a Net: Caffe's CopyTrainedLayersFrom (binary NetParameter and HDF5),
ShareTrainedLayersWith, ToProto / ToHDF5 (written atomically through caffepy.atomic)."""
import logging
import os

import numpy as np

from .. import backend
from ..atomic import atomic_path
from ..errors import NetError
from ..regularizers.masks import net_connectivity_masks
from ..proto import caffe_pb2
from ..proto.blobproto import BlobValues
from ..proto.caffemodel import net_weights_chunks, read_net_weights
from ..proto.files import write_serialized

log = logging.getLogger("caffepy")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class NetWeights:
    """Mixed into Net: loading, sharing and saving the layers' param blobs, by layer name."""

    # -- loading ---------------------------------------------------------------------------
    def copy_trained_layers_from(self, source):
        """Copy weights by layer name from a NetParameter, a .caffemodel or a .caffemodel.h5.
        Layers the source has and the net lacks are ignored (logged); a layer the net has
        and the source lacks keeps its weights."""
        if isinstance(source, caffe_pb2.NetParameter):
            self._copy_from_layers(((lp.name, lp.blobs) for lp in source.layer), "<NetParameter>")
        else:
            path = str(source)
            if not os.path.exists(path):
                raise NetError("Cannot copy weights: file '%s' does not exist" % path)
            if _is_hdf5(path):
                self._copy_from_hdf5(path)
            else:
                param, blobs = read_net_weights(path)
                self._copy_from_layers(((lp.name, b) for lp, b in zip(param.layer, blobs)), path)
        self._after_weights_loaded()

    copy_from = copy_trained_layers_from

    def load_hdf5(self, path):
        """Copy weights from a .caffemodel.h5 (the HDF5 half of copy_trained_layers_from)."""
        self._copy_from_hdf5(path)
        self._after_weights_loaded()

    def _after_weights_loaded(self):
        """Runs once after every weight load into this net, whatever its source: a binary
        .caffemodel, a .caffemodel.h5, a NetParameter, ``Net(..., weights=...)``, the solver's
        ``--weights`` and its restore from a snapshot (all of them go through
        :meth:`copy_trained_layers_from` or :meth:`load_hdf5`).

        This is where state derived from the weights is rebuilt: the loaded values are final
        when it runs, and it runs before any forward pass sees them. Params shared with
        another net (``share_with``) are not a load: the owning net's load runs this there.

        Structured sparsity: every Convolution/Deconvolution/InnerProduct layer whose
        ``connectivity_mode`` is not CONNECTED gets its weights' connectivity mask (weights
        with |w| < 1e-4 are zeroed first; see regularizers/masks.py), which ``Blob.update``
        applies to the diff so the masked weights stay exactly zero while fine-tuning."""
        for param_id, mask in net_connectivity_masks(self).items():
            self.learnable_params[param_id].mask = mask

    def _receivers(self, sources, first):
        """For each ``(name, source)`` pair whose name is a layer of this net:
        ``(name, source, layer index, param blobs)``; the others are skipped (logged as Caffe
        logs them). ``first``: the first layer of that name (the linear search of
        CopyTrainedLayersFrom(proto) and ShareTrainedLayersWith), else the last (HDF5)."""
        for name, source in sources:
            if name not in self.layer_names_index:
                log.info("Ignoring source layer %s", name)
                continue
            tid = self.layer_names.index(name) if first else self.layer_names_index[name]
            yield name, source, tid, self.layers[tid].blobs

    def _copy_from_layers(self, layers, source):
        """Copy from ``(layer name, blobs)`` pairs; each blob a BlobProto or a BlobValues."""
        xp = backend.xp()
        for name, blobs, _, targets in self._receivers(layers, first=True):
            if len(targets) != len(blobs):
                raise NetError("%s: incompatible number of blobs for layer '%s' (source has %d, "
                               "net has %d)" % (source, name, len(blobs), len(targets)))
            for j, (t, blob) in enumerate(zip(targets, blobs)):
                bv = BlobValues.of(blob)
                if not bv.shape_equals(t.shape):
                    raise NetError("%s: cannot copy param %d weights from layer '%s'; shape "
                                   "mismatch. Source param shape is %s; target param shape is %s. "
                                   "To learn this layer's parameters from scratch rather than "
                                   "copying from a saved net, rename the layer."
                                   % (source, j, name, " ".join(map(str, bv.shape)),
                                      " ".join(map(str, t.shape))))
                t.data[...] = xp.asarray(bv.to_array().reshape(t.shape))
                # Blob::FromProto(proto, reshape=false) also copies a stored diff.
                if bv.double_diff.size or bv.diff.size:
                    t.diff[...] = xp.asarray(bv.to_array(return_diff=True).reshape(t.shape))

    def _copy_from_hdf5(self, path):
        import h5py
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise NetError("%s: not a caffemodel.h5 (no /data group)" % path)
            data = f["data"]
            groups = ((name, data[name]) for name in data)
            for name, grp, tid, targets in self._receivers(groups, first=False):
                if len(grp) > len(targets):
                    raise NetError("%s: incompatible number of blobs for layer '%s'" % (path, name))
                for j, t in enumerate(targets):
                    key = str(j)
                    if key not in grp:
                        if self.param_owners[self.param_id_vecs[tid][j]] != -1:
                            continue
                        raise NetError("%s: incompatible number of blobs for layer '%s' "
                                       "(param %d missing)" % (path, name, j))
                    arr = np.asarray(grp[key], dtype=np.float32)
                    # hdf5_load_nd_dataset(..., reshape=false): the dims must equal the shape.
                    if tuple(arr.shape) != tuple(t.shape):
                        raise NetError("%s: cannot load param %d of layer '%s' from hdf5; shape "
                                       "mismatch. Source shape is %s; target shape is %s"
                                       % (path, j, name, " ".join(map(str, arr.shape)),
                                          t.shape_string()))
                    t.data[...] = backend.xp().asarray(arr)

    # -- sharing ---------------------------------------------------------------------------
    def share_trained_layers_with(self, other):
        """Use ``other``'s param memory for the layers of the same name (test nets share the
        train net's weights this way)."""
        layers = zip(other.layer_names, other.layers)
        for name, src_layer, _, targets in self._receivers(layers, first=True):
            if len(targets) != len(src_layer.blobs):
                raise NetError("Incompatible number of blobs for layer '%s'" % name)
            for t, s in zip(targets, src_layer.blobs):
                if t.shape != s.shape:
                    raise NetError("Cannot share param weights from layer '%s'; shape mismatch. "
                                   "Source param shape is %s; target param shape is %s"
                                   % (name, s.shape_string(), t.shape_string()))
                t.share_data(s)

    share_with = share_trained_layers_with

    # -- saving ----------------------------------------------------------------------------
    def _weights_chunks(self, write_diff):
        """Net::ToProto, serialized (see caffepy.proto.caffemodel)."""
        to_numpy = backend.to_numpy
        return net_weights_chunks(self.name, (
            (layer.layer_param, [(to_numpy(b.data), to_numpy(b.diff) if write_diff else None)
                                 for b in layer.blobs])
            for layer in self.layers))

    def to_proto(self, write_diff=False):
        """Net::ToProto: a NetParameter with the net's name and its layers, each holding its
        param blobs (and their diffs if ``write_diff``)."""
        return caffe_pb2.NetParameter.FromString(self._weights_chunks(write_diff).tobytes())

    def save(self, path, write_diff=False):
        """Write a binary .caffemodel (atomically)."""
        write_serialized(self._weights_chunks(write_diff), path)

    def save_hdf5(self, path, write_diff=False):
        """Write the HDF5 form (/data/{layer}/{j}, owners only; /diff for all), atomically."""
        import h5py
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for i, layer in enumerate(self.layers):
                name = self.layer_names[i]
                gd = data.create_group(name)
                gf = diff.create_group(name) if write_diff else None
                for j, b in enumerate(layer.blobs):
                    if self.param_owners[self.param_id_vecs[i][j]] == -1:
                        gd.create_dataset(str(j), data=backend.to_numpy(b.data))
                    if write_diff:
                        gf.create_dataset(str(j), data=backend.to_numpy(b.diff))


def _is_hdf5(path):
    with open(path, "rb") as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
