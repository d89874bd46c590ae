"""Snapshots and restore: Caffe's ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate`` pair
(binary protobuf), or ``.caffemodel.h5`` + ``.solverstate.h5`` (HDF5).

The solver state holds the iteration, the model file it goes with (``learned_net``), the
step counter of the "step"/"multistep" policies and the update rule's history blobs, plus
caffepy's one addition: the state of stateful regularizer plug-ins (``regularizer_state``,
SolverState field 1001, which Caffe ignores; an HDF5 state keeps it in a ``regularizers``
group).  Every file is written atomically (caffepy.atomic): a crash mid-snapshot leaves the
previous files.
"""
import logging
import os

import numpy as np

from .. import backend
from ..atomic import atomic_path, create_temp
from ..errors import CaffepyError, NetError, ProtoError, SolverError
from ..h5files import check_links, h5_child, h5_names, h5_numbers, h5_reading, read_h5
from ..proto import blobproto_to_array, caffe_pb2, read_binary
from ..proto.blobproto import blobproto_chunks
from ..proto.files import write_serialized
from ..proto.wire import Chunks, splice

log = logging.getLogger("caffepy")

# snapshot_format -> (model extension, state extension, how Caffe's log names the format)
_FORMATS = {
    caffe_pb2.SolverParameter.BINARYPROTO: (".caffemodel", ".solverstate", "binary proto file"),
    caffe_pb2.SolverParameter.HDF5: (".caffemodel.h5", ".solverstate.h5", "HDF5 file"),
}


def snapshot_filename(prefix, it, extension):
    return "%s_iter_%d%s" % (prefix, it, extension)


def check_snapshot_prefix(param, it):
    """Solver::CheckSnapshotWritePermissions: with ``snapshot`` set, a file can be created
    (and removed) at the snapshot prefix."""
    if not param.snapshot:
        return
    if not param.HasField("snapshot_prefix"):
        raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
    probe = snapshot_filename(param.snapshot_prefix, it, ".tempfile")
    try:
        # a new file of caffepy's temporary naming, created exclusively: whatever lies at
        # the probe's own name (a planted symlink) is neither followed nor truncated
        tmp, fd = create_temp(probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise SolverError("Cannot write to snapshot prefix '%s' (%s). Make sure that the "
                          "directory exists and is writeable."
                          % (param.snapshot_prefix, e.strerror or e)) from None


def write_snapshot(net, param, it, current_step, history, reg_state=None):
    """Write the model, then the solver state; return (model file, state file)."""
    model_ext, state_ext, kind = _FORMATS[param.snapshot_format]
    hdf5 = param.snapshot_format == caffe_pb2.SolverParameter.HDF5
    model_filename = current = snapshot_filename(param.snapshot_prefix, it, model_ext)
    try:
        log.info("Snapshotting to %s %s", kind, model_filename)
        if hdf5:
            net.save_hdf5(model_filename, param.snapshot_diff)
        else:
            net.save(model_filename, param.snapshot_diff)
        state_filename = current = snapshot_filename(param.snapshot_prefix, it, state_ext)
        log.info("Snapshotting solver state to %s %s", kind, state_filename)
        if hdf5:
            _write_state_hdf5(state_filename, it, model_filename, current_step, history,
                              reg_state)
        else:
            write_serialized(solver_state_chunks(it, model_filename, current_step, history,
                                                 reg_state), state_filename)
    except (OSError, NetError) as e:
        # Net.save raises NetError with the OSError as its cause; caffepy.atomic's OSError
        # names the file being written (``current`` where an error names none)
        cause = e if isinstance(e, OSError) else e.__cause__
        if not isinstance(cause, OSError):
            raise
        raise SolverError("Cannot write snapshot '%s': %s. Make sure that the directory "
                          "of snapshot_prefix '%s' exists and is writeable."
                          % (cause.filename or current, cause.strerror or cause,
                             param.snapshot_prefix)) from None
    return model_filename, state_filename


def solver_state(it, model_filename, current_step, history, reg_state=None):
    """The SolverState message Caffe writes (iter, learned_net, current_step, history), with
    the regularizers' state ({key: array}) when there is any."""
    return caffe_pb2.SolverState.FromString(
        solver_state_chunks(it, model_filename, current_step, history, reg_state).tobytes())


def solver_state_chunks(it, model_filename, current_step, history, reg_state=None):
    """:func:`solver_state` serialized (caffepy.proto.wire.Chunks): protobuf writes the
    small fields, the history blobs go in as packed float32 runs straight from the arrays."""
    head = caffe_pb2.SolverState(iter=it, learned_net=model_filename,
                                 current_step=current_step).SerializeToString()
    blobs = Chunks()
    for h in history:
        blobs.add_message(3, blobproto_chunks(backend.to_numpy(h)))
    entries = Chunks()
    for key, arr in sorted((reg_state or {}).items()):
        value = Chunks().add_message(2, blobproto_chunks(
            np.asarray(backend.to_numpy(arr), dtype=np.float32)))
        entries.add_message(1001, splice(
            caffe_pb2.RegularizerStateEntry(key=key).SerializeToString(), {2: value}))
    return splice(head, {3: blobs, 1001: entries})


def _write_state_hdf5(path, it, model_filename, current_step, history, reg_state=None):
    import h5py
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("iter", data=np.array([it], dtype=np.int32))
        _h5_save_string(f, "learned_net", model_filename)
        f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=backend.to_numpy(h).astype(np.float32))
        if reg_state:
            # keys hold '/', so each entry is a numbered dataset carrying its key
            r = f.create_group("regularizers")
            for i, (key, arr) in enumerate(sorted(reg_state.items())):
                d = r.create_dataset(str(i), data=np.asarray(backend.to_numpy(arr),
                                                             dtype=np.float32))
                d.attrs["key"] = key


def _h5_save_string(f, name, s):
    """Caffe's hdf5_save_string (H5LTmake_dataset_string): a scalar dataset of a fixed-length
    NUL-terminated string whose size counts the terminator, which hdf5_load_string needs."""
    import h5py
    raw = s.encode("utf-8") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode("utf-8"), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype="S%d" % len(raw)), mtype=tid)


def read_solver_state(path):
    """(iter, learned_net or None, current_step, [float32 history arrays],
    {regularizer state key: array}) from a ``.solverstate`` or, for a name ending in ``.h5``,
    a ``.solverstate.h5``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SolverError("Cannot restore: solver state file '%s' does not exist" % path)
    if path.endswith(".h5"):
        return _read_state_hdf5(path)
    state = read_binary(path, caffe_pb2.SolverState())
    learned_net = state.learned_net if state.HasField("learned_net") else None
    history = [_blob_array(bp, path, "history blob %d" % i) for i, bp in enumerate(state.history)]
    reg_state = {e.key: _blob_array(e.value, path, "regularizer state '%s'" % e.key)
                 for e in state.regularizer_state}
    return state.iter, learned_net, state.current_step, history, reg_state


def _blob_array(bp, path, what):
    try:
        return blobproto_to_array(bp)
    except ProtoError as e:
        raise SolverError("%s: %s: %s" % (path, what, e)) from None


def _read_state_hdf5(path):
    """The solver state of a .solverstate.h5, every object checked (caffepy.h5files: plain
    groups and datasets of the file itself, numbers where numbers belong). Every h5py call
    runs under h5_reading (a damaged file: SolverError naming the file and the object)."""
    with read_h5(path, SolverError, "a solver state") as f:
        check_links(f, path, SolverError)
        top = h5_names(f, path, SolverError)
        it = _h5_int(f, "iter", path)
        learned_net = None
        if "learned_net" in top:
            learned_net = _h5_string(h5_child(f, "learned_net", path, SolverError,
                                              "dataset"), path)
        current_step = _h5_int(f, "current_step", path) if "current_step" in top else 0
        g = h5_child(f, "history", path, SolverError, "group")
        check_links(g, path, SolverError)
        present = h5_names(g, path, SolverError)
        names = [str(i) for i in range(len(present))]
        if sorted(present) != sorted(names):
            raise SolverError("%s: the history group holds %s; a solver state holds the "
                              "datasets 0 to %d" % (path, ", ".join(sorted(present)),
                                                    len(present) - 1))
        history = [h5_numbers(h5_child(g, n, path, SolverError, "dataset"), path,
                              SolverError) for n in names]
        reg_state = {}
        if "regularizers" in top:
            r = h5_child(f, "regularizers", path, SolverError, "group")
            check_links(r, path, SolverError)
            for name in h5_names(r, path, SolverError):
                d = h5_child(r, name, path, SolverError, "dataset")
                with h5_reading(path, SolverError, "/regularizers/%s" % name):
                    key = d.attrs.get("key")
                    if key is None:
                        raise SolverError("%s: regularizer state '%s' has no 'key' attribute"
                                          % (path, d.name))
                    key = key.decode("utf-8") if isinstance(key, bytes) else str(key)
                reg_state[key] = h5_numbers(d, path, SolverError)
    return it, learned_net, current_step, history, reg_state


def _h5_int(f, name, path):
    values = h5_numbers(h5_child(f, name, path, SolverError, "dataset"), path, SolverError,
                        dtype=np.int64).ravel()
    if values.size != 1:
        raise SolverError("%s: '/%s' holds %d values; a solver state holds one"
                          % (path, name, values.size))
    return int(values[0])


def _h5_string(dset, path):
    """hdf5_load_string: a string dataset (fixed length, NUL-terminated, or variable)."""
    with h5_reading(path, SolverError, "/learned_net"):
        kind, size = dset.dtype.kind, dset.size
        if kind not in "SOU" or size != 1:
            raise SolverError("%s: '%s' is not a string (dtype %s, %d values)"
                              % (path, dset.name, dset.dtype, size))
        v = dset[()]
        if isinstance(v, np.ndarray):
            v = v.ravel()[0]
        if isinstance(v, bytes):
            v = v.decode("utf-8")       # not UTF-8: a ValueError, named by h5_reading
    return str(v).rstrip("\0")


def check_learned_net(state_file, learned_net):
    """The model file of a snapshot pair: the state's ``learned_net`` as written (relative to
    the current directory, as in Caffe), else the file of that name beside the state (a run
    resumed from another directory). The model is written first and the state last, so a
    state whose model is missing is half a pair: an error, never a silent restart. A state
    naming no model (``learned_net`` None or empty) is returned as it is."""
    if not learned_net or os.path.isfile(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.fspath(state_file)), os.path.basename(learned_net))
    if beside != learned_net and os.path.isfile(beside):
        log.info("The learned_net '%s' of '%s' is not in the current directory; using '%s' "
                 "beside the state", learned_net, state_file, beside)
        return beside
    raise SolverError("Cannot restore from '%s': its model file (learned_net) '%s' does not "
                      "exist, relative to the current directory %s or beside the state; the "
                      "snapshot pair is incomplete (resume from a .solverstate whose "
                      ".caffemodel is present)" % (state_file, learned_net, os.getcwd()))


def check_learned_weights(net, state_file, learned_net):
    """The copy of the state's model ``learned_net`` into ``net``, checked and not yet
    written (:meth:`Net.prepare_weights <caffepy.net.weights.NetWeights.prepare_weights>`):
    its ``apply()`` writes it. A state that names no model (no learned_net, or an empty one)
    is an error: restoring the iteration and the history onto the net's initial weights
    would resume a different run. Strict: a snapshot holds every layer with params of the net
    it was taken from, so a layer that gets no weights means another net's snapshot."""
    if not learned_net:
        raise SolverError("Cannot restore from '%s': its learned_net is %s, so it names no "
                          "model file to restore the weights from"
                          % (state_file, "missing" if learned_net is None else "empty"))
    try:
        return net.prepare_weights(learned_net, strict=True)
    except CaffepyError as e:
        raise type(e)("Cannot restore from '%s': %s" % (state_file, e)) from None


def _history_owner(net, i):
    """Which param history blob ``i`` belongs to (solvers with two histories per param keep
    the second set after the first), as " (param j of layer 'name')"."""
    info = net.learnable_param_info() if net is not None else []
    if not info:
        return ""
    _, layer_name, blob_id, _ = info[i % len(info)]
    return " (param %d of layer '%s')" % (blob_id, layer_name)


def check_history(history, arrays, state_file, type_name, net=None):
    """The saved history blobs ``arrays`` fit the solver's ``history``: as many, and each of
    the same shape (a legacy 4-D num/channels/height/width blob matches the shape padded with
    leading 1s, as Blob::ShapeEquals has it). ``net``: the train net, to name the param each
    blob belongs to in the messages."""
    if len(arrays) != len(history):
        raise SolverError("Incorrect length of history blobs: '%s' holds %d, the %s solver "
                          "needs %d" % (state_file, len(arrays), type_name, len(history)))
    for i, (arr, h) in enumerate(zip(arrays, history)):
        src, dst = tuple(np.shape(arr)), tuple(h.shape)
        legacy = len(src) == 4 and len(dst) <= 4 and (1,) * (4 - len(dst)) + dst == src
        if src != dst and not legacy:
            raise SolverError("Cannot restore history blob %d%s from '%s': shape mismatch "
                              "(source shape %s, target shape %s)"
                              % (i, _history_owner(net, i), state_file, src, dst))
