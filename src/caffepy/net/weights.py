"""Weight I/O of a Net: Caffe's CopyTrainedLayersFrom (binary NetParameter and HDF5),
ShareTrainedLayersWith, ToProto / ToHDF5 (written atomically through caffepy.atomic)."""
import contextlib
import logging
import os


from .. import backend
from ..atomic import atomic_path
from ..errors import NetError, ProtoError
from ..h5files import check_links, h5_child, h5_names, h5_numbers, h5_reading, read_h5
from ..regularizers.masks import net_connectivity_masks
from ..proto import caffe_pb2
from ..proto.blobproto import BlobValues
from ..proto.caffemodel import net_weights_chunks, read_net_weights
from ..proto.files import is_text_proto, write_serialized

log = logging.getLogger("caffepy")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class NetWeights:
    """Mixed into Net: loading, sharing and saving the layers' param blobs, by layer name."""

    # -- loading ---------------------------------------------------------------------------
    def copy_trained_layers_from(self, source, strict=False):
        """Copy weights by layer name from a NetParameter, a .caffemodel or a .caffemodel.h5.

        Layers the source has and the net lacks are ignored ("Ignoring source layer X"); a
        layer with params that the source lacks keeps its weights ("Target layer X got no
        weights from F", logged for each). ``strict``: such a layer is an error instead.
        A source that gives no weights at all to a net with params (an empty file, a file
        with no layers, none of whose layer names is a layer of the net with params) is an
        error. Everything is checked before anything is written: a failed copy changes
        nothing in the net."""
        self.prepare_weights(source, strict).apply()

    copy_from = copy_trained_layers_from

    def load_hdf5(self, path, strict=False):
        """Copy weights from a .caffemodel.h5 (the HDF5 half of copy_trained_layers_from)."""
        self._finish_plan(self._plan_hdf5(str(path)), strict).apply()

    def prepare_weights(self, source, strict=False):
        """The checks of :meth:`copy_trained_layers_from` without the copy: a
        :class:`WeightsCopy` whose ``apply()`` writes the weights. Raises as the copy does,
        with nothing in the net changed."""
        if isinstance(source, caffe_pb2.NetParameter):
            plan = self._plan_layers([(lp.name, lp.blobs) for lp in source.layer],
                                     "<NetParameter>")
        else:
            path = os.fspath(source)
            if not os.path.isfile(path):
                raise NetError("Cannot copy weights: file '%s' does not exist" % path)
            if _is_hdf5(path):
                plan = self._plan_hdf5(path)
            else:
                try:
                    param, blobs = read_net_weights(path)
                except ProtoError as e:
                    if _looks_like_text(path):
                        raise ProtoError("%s (the file is text: a prototxt? weights come from a "
                                         "binary .caffemodel or a .caffemodel.h5)" % e) from None
                    raise
                plan = self._plan_layers([(lp.name, b) for lp, b in zip(param.layer, blobs)],
                                         path)
        return self._finish_plan(plan, strict)

    def layers_without_weights(self):
        """Names of the layers with params that no weight load into this net has written (a
        load: :meth:`copy_trained_layers_from`, ``Net(..., weights=...)``, the solver's
        weights and its restore); such a layer holds its filler values. A layer whose params
        are all shared with layers that got weights counts as loaded."""
        filled = getattr(self, "_weights_filled", ())
        return [self.layer_names[i] for i in self._layers_with_params()
                if any(self._param_owner(p) not in filled for p in self.param_id_vecs[i])]

    def check_weights_loaded(self, sources=()):
        """Raise NetError naming the layers with params that no weight load has written
        (:meth:`layers_without_weights`): the strict form of loading several files, where each
        may cover part of the net. ``sources``: the files loaded, for the message."""
        missing = self.layers_without_weights()
        if missing:
            raise NetError("%d layer(s) with params got no weights from %s (strict weights): %s"
                           % (len(missing), ", ".join(map(str, sources)) or "any weight file",
                              ", ".join(missing)))

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

    def _param_owner(self, net_param_id):
        owner = self.param_owners[net_param_id]
        return net_param_id if owner == -1 else owner

    def _layers_with_params(self):
        return [i for i, ids in enumerate(self.param_id_vecs) if ids]

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

    def _plan_layers(self, layers, source):
        """The copy from ``(layer name, blobs)`` pairs; each blob a BlobProto or a
        BlobValues. Checks counts, shapes and value counts; writes nothing."""
        plan = WeightsCopy(self, source, [n for n, _ in layers])
        for name, blobs, tid, targets in self._receivers(layers, first=True):
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
                try:
                    data = bv.to_array().reshape(t.shape)
                    # Blob::FromProto(proto, reshape=false) also copies a stored diff.
                    diff = (bv.to_array(return_diff=True).reshape(t.shape)
                            if bv.double_diff.size or bv.diff.size else None)
                except ProtoError as e:
                    raise ProtoError("%s: layer '%s' param %d: %s" % (source, name, j, e)) from None
                plan.add(tid, j, t, data, diff)
        return plan

    def _plan_hdf5(self, path):
        """The copy from a .caffemodel.h5 (CopyTrainedLayersFromHDF5): /data/<layer>/<j>.
        Every h5py call runs under h5_reading (a damaged file: NetError naming the file and
        the object)."""
        with read_h5(path, NetError, "a .caffemodel.h5") as f:
            with h5_reading(path, NetError, "/data"):
                has_data = f.get("data", getlink=True) is not None
            if not has_data:
                raise NetError("%s: not a caffemodel.h5 (no /data group)" % path)
            data = h5_child(f, "data", path, NetError, "group")
            check_links(data, path, NetError)
            names = h5_names(data, path, NetError)
            plan = WeightsCopy(self, path, names)
            groups = [(name, None) for name in names]
            for name, _, tid, targets in self._receivers(groups, first=False):
                grp = h5_child(data, name, path, NetError, "group")
                check_links(grp, path, NetError)
                keys = h5_names(grp, path, NetError)
                if len(keys) > len(targets):
                    raise NetError("%s: incompatible number of blobs for layer '%s' (source has "
                                   "%d, net has %d)" % (path, name, len(keys), len(targets)))
                for j, t in enumerate(targets):
                    key = str(j)
                    if key not in keys:
                        if self.param_owners[self.param_id_vecs[tid][j]] != -1:
                            continue
                        raise NetError("%s: incompatible number of blobs for layer '%s' "
                                       "(param %d missing)" % (path, name, j))
                    dset = h5_child(grp, key, path, NetError, "dataset")
                    with h5_reading(path, NetError, "/data/%s/%s" % (name, key)):
                        shape = tuple(dset.shape)
                    # hdf5_load_nd_dataset(..., reshape=false): the dims must equal the shape.
                    if shape != tuple(t.shape):
                        raise NetError("%s: cannot load param %d of layer '%s' from hdf5; shape "
                                       "mismatch. Source shape is %s; target shape is %s"
                                       % (path, j, name, " ".join(map(str, shape)),
                                          t.shape_string()))
                    plan.add(tid, j, t, h5_numbers(dset, path, NetError), None)
        return plan

    def _finish_plan(self, plan, strict):
        """The checks of a whole copy: a source with no layers, or one that gives no weights
        to a net with params, is an error; the layers with params it leaves untouched are
        logged (an error with ``strict``)."""
        source = plan.source
        if not plan.source_layers:
            size = os.path.getsize(source) if os.path.isfile(str(source)) else None
            raise NetError("%s: holds no layers, so no weights to copy (%s)"
                           % (source, _empty_source_detail(source, size)))
        with_params = self._layers_with_params()
        untouched = [self.layer_names[i] for i in with_params
                     if any(self._param_owner(p) not in plan.filled
                            for p in self.param_id_vecs[i])]
        if with_params and not plan.filled:
            raise NetError("%s: gives no weights to this net: none of its %d layers (%s) is a "
                           "layer of the net with params (%s); is it the model of another net?"
                           % (source, len(plan.source_layers), _names(plan.source_layers),
                              _names([self.layer_names[i] for i in with_params])))
        if untouched and strict:
            raise NetError("%s: %d layer(s) with params got no weights from it (strict "
                           "weights): %s" % (source, len(untouched), ", ".join(untouched)))
        plan.untouched = untouched
        return plan

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
        """Write a binary .caffemodel (atomically). A file that cannot be written (a folder
        that does not exist, no permission, a full disk) raises NetError naming it."""
        with _writing(path):
            write_serialized(self._weights_chunks(write_diff), path)

    def save_hdf5(self, path, write_diff=False):
        """Write the HDF5 form (/data/{layer}/{j}, owners only; /diff for all), atomically;
        a file that cannot be written raises NetError naming it."""
        with _writing(path):
            self._write_hdf5(path, write_diff)

    def _write_hdf5(self, path, write_diff):
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


class WeightsCopy:
    """A weight copy into a net, checked and not yet written: :meth:`apply` writes it.
    ``untouched``: the net's layers with params that it gives no weights."""

    def __init__(self, net, source, source_layers):
        self.net = net
        self.source = source
        self.source_layers = source_layers
        self.writes = []          # (target blob, data array, diff array or None)
        self.filled = set()       # the owner param ids written
        self.untouched = []

    def add(self, layer_id, j, target, data, diff):
        self.writes.append((target, data, diff))
        self.filled.add(self.net._param_owner(self.net.param_id_vecs[layer_id][j]))

    def apply(self):
        """Write the weights, log the layers that got none, run the net's after-load step."""
        net = self.net
        xp = backend.xp()
        for target, data, diff in self.writes:
            target.data[...] = xp.asarray(data)
            if diff is not None:
                target.diff[...] = xp.asarray(diff)
        for name in self.untouched:
            log.info("Target layer %s got no weights from %s", name, self.source)
        if not hasattr(net, "_weights_filled"):
            net._weights_filled = set()
        net._weights_filled |= self.filled
        net._after_weights_loaded()


def _names(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (", ... (%d more)" % (len(names) - limit) if len(names) > limit else "")


def _empty_source_detail(source, size):
    if size == 0:
        return "the file is empty: 0 bytes"
    if size is None:
        return "a NetParameter without layers"
    if _looks_like_text(source):
        return ("%d bytes of text: a prototxt? weights come from a binary .caffemodel or a "
                ".caffemodel.h5" % size)
    return ("%d bytes that parse as a NetParameter without layers: a truncated file, or not "
            "a .caffemodel" % size)


def _looks_like_text(path):
    """Whether the file's first 4 KiB are UTF-8 text without control bytes (a prototxt)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:         # not just a character cut at the 4 KiB mark
            return False
    return bool(head) and is_text_proto(head[:len(head) - 3] if len(head) == 4096 else head)


@contextlib.contextmanager
def _writing(path):
    """Runs a write of the weights file ``path``: an OSError raises NetError naming the file
    and the reason (caffepy.atomic names the target, never its temporary file); the OSError
    stays as the cause, so the snapshot writer can tell the reason."""
    try:
        yield
    except OSError as e:
        reason = e.strerror if e.errno is not None and e.strerror else str(e)
        raise NetError("Cannot save weights to '%s': %s" % (os.fspath(path), reason)) from e


def _is_hdf5(path):
    with open(path, "rb") as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
