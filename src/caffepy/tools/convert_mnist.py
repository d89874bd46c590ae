"""Caffe's ``convert_mnist_data``: MNIST -> an LMDB (or LevelDB) of Datum records.

Each record is a Datum {channels 1, height 28, width 28, data = the 784 raw uint8 pixels,
label}, stored under the key ``%08d`` (the item index), committed every 1000 records --
byte for byte what ``examples/mnist/convert_mnist_data.cpp`` writes.

Inputs: the original idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``;
``.gz`` is read too) or an ``.npz`` holding ``{split}_images`` (N×28×28 uint8) and
``{split}_labels`` such as the bundled 5,000-digit sample (``caffepy.datasets.MNIST_5K``).

    caffepy convert_mnist train-images-idx3-ubyte train-labels-idx1-ubyte mnist_train_lmdb
    caffepy convert_mnist --bundled --split train examples/mnist/mnist_train_lmdb
    caffepy convert_mnist --npz my_mnist.npz --split test mnist_test_lmdb
"""
import gzip
import logging
import os
import shutil

import numpy as np

from ..data.datum import array_to_datum
from ..proto import caffe_pb2
from . import ToolError, dbio

log = logging.getLogger("caffepy")

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
COMMIT_EVERY = 1000


# -- reading ---------------------------------------------------------------------------

def _read_bytes(path):
    if not os.path.isfile(path):
        raise ToolError("cannot open '%s': no such file" % path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return f.read()


def _header(buf, n_ints, path, magic, what):
    if len(buf) < 4:
        raise ToolError("'%s' is too short to be an MNIST idx file" % path)
    got = int(np.frombuffer(buf, dtype=">u4", count=1)[0])
    if got != magic:
        raise ToolError("Incorrect %s file magic in '%s': %d (an MNIST %s file starts "
                        "with %d)" % (what, path, got, what, magic))
    if len(buf) < 4 * n_ints:
        raise ToolError("'%s' is too short to be an MNIST idx file" % path)
    return [int(v) for v in np.frombuffer(buf, dtype=">u4", count=n_ints)]


def read_idx_images(path):
    """An idx3 image file -> uint8 array (N, rows, cols)."""
    buf = _read_bytes(path)
    _, num, rows, cols = _header(buf, 4, path, IMAGE_MAGIC, "image")
    need = 16 + num * rows * cols
    if len(buf) < need:
        raise ToolError("'%s' is truncated: the header announces %d images of %dx%d (%d bytes), "
                        "the file has %d" % (path, num, rows, cols, need, len(buf)))
    return np.frombuffer(buf, dtype=np.uint8, count=num * rows * cols,
                         offset=16).reshape(num, rows, cols)


def read_idx_labels(path):
    """An idx1 label file -> uint8 array (N,)."""
    buf = _read_bytes(path)
    _, num = _header(buf, 2, path, LABEL_MAGIC, "label")
    if len(buf) < 8 + num:
        raise ToolError("'%s' is truncated: the header announces %d labels, the file has %d"
                        % (path, num, len(buf) - 8))
    return np.frombuffer(buf, dtype=np.uint8, count=num, offset=8)


def load_npz_split(path, split):
    """``{split}_images`` and ``{split}_labels`` from an .npz (e.g. the bundled MNIST sample)."""
    if split not in ("train", "test"):
        raise ToolError("--split must be 'train' or 'test' (got '%s')" % split)
    if not os.path.isfile(path):
        raise ToolError("cannot open '%s': no such file" % path)
    with np.load(path) as f:
        ki, kl = split + "_images", split + "_labels"
        missing = [k for k in (ki, kl) if k not in f.files]
        if missing:
            raise ToolError("'%s' has no array %s (it holds: %s)"
                            % (path, " or ".join(missing), ", ".join(f.files)))
        images, labels = f[ki], f[kl]
    return images, labels


def _check_arrays(images, labels):
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ToolError("MNIST images must be N x rows x cols (got shape %s)" % (images.shape,))
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255
                            or not np.all(images == np.round(images))):
            raise ToolError("MNIST images must be uint8 pixel values 0..255 (got %s values)"
                            % images.dtype)
        images = images.astype(np.uint8)
    if len(images) != len(labels):
        raise ToolError("the number of images (%d) and labels (%d) differ"
                        % (len(images), len(labels)))
    return images, labels


# -- writing ---------------------------------------------------------------------------

def write_mnist_db(images, labels, db_path, backend="lmdb", commit_every=COMMIT_EVERY,
                   progress=True):
    """Write MNIST ``images`` (N×rows×cols uint8) and ``labels`` to a new database at ``db_path``.

    Returns the number of records written.  ``db_path`` must not exist (Caffe's db::NEW);
    a partly written database is removed if writing fails.
    """
    images, labels = _check_arrays(images, labels)
    writer = dbio.new_db(db_path, backend, tool="convert_mnist_data")
    num, rows, cols = images.shape
    log.info("A total of %d items.", num)
    log.info("Rows: %d Cols: %d", rows, cols)
    bar = dbio.progress_bar(num, os.path.basename(os.path.normpath(db_path)), progress)
    count = 0
    try:
        datum = caffe_pb2.Datum()
        batch = []
        for item_id in range(num):
            array_to_datum(images[item_id][None], labels[item_id], datum)
            batch.append((b"%08d" % item_id, datum.SerializeToString()))
            count += 1
            if count % commit_every == 0:
                writer.write(batch)
                batch = []
                if bar is not None:
                    bar.update(commit_every)
        if batch:
            writer.write(batch)
            if bar is not None:
                bar.update(len(batch))
        writer.close()
    except BaseException:
        dbio.discard(writer)
        raise
    finally:
        if bar is not None:
            bar.close()
    log.info("Processed %d files.", count)
    return count


def convert_mnist_data(image_file, label_file, db_path, backend="lmdb", progress=True):
    """convert_mnist_data.cpp: the idx image/label files -> a Datum database."""
    images = read_idx_images(image_file)
    labels = read_idx_labels(label_file)
    if len(images) != len(labels):
        raise ToolError("'%s' holds %d images but '%s' holds %d labels"
                        % (image_file, len(images), label_file, len(labels)))
    return write_mnist_db(images, labels, db_path, backend, progress=progress)


def convert_mnist_npz(npz_path, split, db_path, backend="lmdb", progress=True):
    """An .npz with ``{split}_images``/``{split}_labels`` -> a Datum database."""
    images, labels = load_npz_split(npz_path, split)
    return write_mnist_db(images, labels, db_path, backend, progress=progress)


def bundled_npz():
    from ..datasets import MNIST_5K
    return MNIST_5K


# -- examples/mnist/create_mnist.sh ---------------------------------------------------------

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find_idx_files(data_dir, split):
    """(images, labels) paths of the original MNIST files in ``data_dir`` (plain or .gz),
    or None when they are not there (Caffe's data/mnist/get_mnist.sh puts them there)."""
    found = []
    for name in IDX_FILES[split]:
        for cand in (name, name + ".gz"):
            p = os.path.join(data_dir, cand)
            if os.path.isfile(p):
                found.append(p)
                break
        else:
            return None
    return tuple(found)


def create_mnist(example_dir="examples/mnist", data_dir="data/mnist", backend="lmdb",
                 overwrite=True, bundled=False, progress=True):
    """examples/mnist/create_mnist.sh: ``{example_dir}/mnist_{train,test}_{backend}``.

    The source is the original idx files in ``data_dir`` when they are there (and ``bundled``
    is false), else the bundled 5,000-digit sample (4,000 train / 1,000 test).
    ``overwrite`` removes existing databases first (as the shell script's ``rm -rf`` does);
    otherwise an existing database is kept.  Returns {split: db_path}.
    """
    backend = backend.lower()
    log.info("Creating %s...", backend)
    out = {}
    for split in ("train", "test"):
        db = os.path.join(example_dir, "mnist_%s_%s" % (split, backend))
        out[split] = db
        if os.path.lexists(db):
            if not overwrite:
                log.info("%s exists; keeping it", db)
                continue
            if os.path.isdir(db) and not os.path.islink(db):
                shutil.rmtree(db)
            else:
                os.remove(db)
        idx = None if bundled else find_idx_files(data_dir, split)
        if idx is not None:
            log.info("Converting %s and %s", idx[0], idx[1])
            convert_mnist_data(idx[0], idx[1], db, backend, progress=progress)
        else:
            log.info("Converting the bundled MNIST sample (%s split; the full data set is "
                     "used instead when %s holds the original idx files)", split, data_dir)
            convert_mnist_npz(bundled_npz(), split, db, backend, progress=progress)
    log.info("Done.")
    return out
