"""Caffe's ``extract_features``: run a net and store blobs' values, item by item, in databases.

    caffepy extract_features PRETRAINED.caffemodel FEATURE_NET.prototxt blob1[,blob2,...] \\
        db1[,db2,...] NUM_MINI_BATCHES DB_TYPE [CPU|GPU] [DEVICE_ID]

The net is built in the TEST phase and the weights are copied in; then it runs
NUM_MINI_BATCHES forward passes.  After each, every item n of each named blob becomes one
Datum {channels, height, width = the blob's legacy C, H, W (1 past its last axis, so an
N × D blob gives channels D, height 1, width 1), float_data = the item's values} stored in
that blob's database under the key ``%010d`` (the item's running index), committed every
1000 items -- what tools/extract_features.cpp writes.  Blob and database lists are
comma-separated and must have the same length.  DB_TYPE is lmdb or leveldb.
"""
import logging
import os

import numpy as np

from ..data.datum import array_to_datum
from ..monitor.progress import progress
from ..proto import caffe_pb2
from . import ToolError
from .dbio import check_backend, discard, new_db

log = logging.getLogger("caffepy")

COMMIT_EVERY = 1000


def _legacy_dims(shape):
    """(num, channels, height, width) as Blob::LegacyShape gives them."""
    if len(shape) > 4:
        return None
    s = tuple(shape) + (1,) * (4 - len(shape))
    return s


def extract_features(pretrained, net_proto, blob_names, db_names, num_mini_batches,
                     db_type="lmdb", commit_every=COMMIT_EVERY):
    """extract_features.cpp. ``blob_names``/``db_names`` are lists (or comma strings).

    Returns {blob name: number of items written}.
    """
    from .. import backend
    from ..net import Net
    if isinstance(blob_names, str):
        blob_names = blob_names.split(",")
    if isinstance(db_names, str):
        db_names = db_names.split(",")
    blob_names, db_names = list(blob_names), list(db_names)
    if len(blob_names) != len(db_names):
        raise ToolError("the number of blob names (%d: %s) and dataset names (%d: %s) must be "
                        "equal" % (len(blob_names), ",".join(blob_names), len(db_names),
                                   ",".join(db_names)))
    try:
        num_mini_batches = int(num_mini_batches)
    except (TypeError, ValueError):
        raise ToolError("NUM_MINI_BATCHES must be an integer (got '%s')"
                        % (num_mini_batches,)) from None
    if num_mini_batches < 0:
        raise ToolError("NUM_MINI_BATCHES must not be negative (got %d)" % num_mini_batches)
    db_type = check_backend(db_type, "DB_TYPE")
    if len(set(db_names)) != len(db_names):
        raise ToolError("a dataset name is given twice: %s" % ",".join(db_names))
    # Check the outputs before the (possibly slow) net construction.
    for name in db_names:
        if not name:
            raise ToolError("empty dataset name in '%s'" % ",".join(db_names))
        if os.path.lexists(name):
            raise ToolError("the output database '%s' already exists; remove it first or choose "
                            "another path (Caffe's extract_features does not overwrite either)"
                            % name)

    net = Net(net_proto, caffe_pb2.TEST)
    try:
        net.copy_trained_layers_from(pretrained)
        for name in blob_names:
            if name not in net.blob_names_index:
                raise ToolError("Unknown feature blob name %s in the network %s (its blobs: %s)"
                                % (name, net_proto, ", ".join(net.blobs)))
        return _run(net, blob_names, db_names, num_mini_batches, db_type, commit_every, backend)
    finally:
        for layer in net.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass


def _run(net, blob_names, db_names, num_mini_batches, db_type, commit_every, backend):
    writers = []
    try:
        for name in db_names:
            log.info("Opening dataset %s", name)
            writers.append(new_db(name, db_type, what="DB_TYPE", tool="extract_features"))
        log.info("Extracting Features")
        counts = [0] * len(blob_names)
        pending = [[] for _ in blob_names]
        datum = caffe_pb2.Datum()
        warned = set()
        for _ in progress(range(num_mini_batches), num_mini_batches, "Batch"):
            net.forward_prefilled()
            for i, name in enumerate(blob_names):
                blob = net.blob_by_name(name)
                values = np.asarray(backend.to_numpy(blob.data), dtype=np.float32)
                dims = _legacy_dims(values.shape)
                if dims is None:
                    num = values.shape[0]
                    dims = (num, values.size // max(num, 1), 1, 1)
                    if name not in warned:
                        warned.add(name)
                        log.warning("blob %s has %d axes (shape %s): Caffe's Datum holds at most "
                                    "C x H x W, so each item is stored as channels %d, height 1, "
                                    "width 1", name, values.ndim, values.shape, dims[1])
                num, c, h, w = dims
                if num == 0:
                    continue
                items = values.reshape(num, -1)
                for n in range(num):
                    array_to_datum(items[n].reshape(c, h, w), datum=datum)
                    pending[i].append((b"%010d" % counts[i], datum.SerializeToString()))
                    counts[i] += 1
                    if counts[i] % commit_every == 0:
                        writers[i].write(pending[i])
                        pending[i] = []
                        log.info("Extracted features of %d query images for feature blob %s",
                                 counts[i], name)
        for i, name in enumerate(blob_names):
            if pending[i] or counts[i] == 0:
                writers[i].write(pending[i])
            log.info("Extracted features of %d query images for feature blob %s", counts[i], name)
            writers[i].close()
    except BaseException:
        for w in writers:
            discard(w)
        raise
    log.info("Successfully extracted the features!")
    return dict(zip(blob_names, counts))
