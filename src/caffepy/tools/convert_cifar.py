"""Caffe's ``convert_cifar_data``: the CIFAR-10 binary batches -> LMDBs (or LevelDBs) of Datums.

    caffepy convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER [--backend lmdb|leveldb]
    caffepy convert_cifar_data data/cifar10 examples/cifar10 lmdb      # Caffe's spelling

Reads ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin`` from INPUT_FOLDER
(the "CIFAR-10 binary version": records of 1 label byte + 3072 pixel bytes, the 32x32 R plane,
then G, then B) and writes ``OUTPUT_FOLDER/cifar10_train_{backend}`` and
``OUTPUT_FOLDER/cifar10_test_{backend}``.  Each record becomes a Datum {channels 3, height 32,
width 32, data = the 3072 pixel bytes in the file's order (RGB planes: Caffe does not reorder
them to BGR), label} under the key ``%05d``: the train keys run on across the five files
(00000..49999), the test keys are 00000..09999 -- byte for byte what
examples/cifar10/convert_cifar_data.cpp writes.

Differences from Caffe, on purpose: a batch file may hold any number of records (Caffe reads
exactly 10,000 and does not notice a short file); a missing file, a file whose size is not a
multiple of 3073 bytes, an empty file and an existing output database are errors reported
before anything is written; each batch file is one commit (Caffe commits each database once);
a failure while writing removes the partly written database.
"""
import logging
import os
import shutil

import numpy as np

from ..data.datum import array_to_datum
from ..proto import caffe_pb2
from . import ToolError
from .dbio import check_backend, discard, new_db, progress_bar

log = logging.getLogger("caffepy")

CIFAR_SIZE = 32
IMAGE_BYTES = 3 * CIFAR_SIZE * CIFAR_SIZE      # 3072
RECORD_BYTES = IMAGE_BYTES + 1                 # 3073
BATCH_SIZE = 10000                             # records per file of the real data set
TRAIN_FILES = tuple("data_batch_%d.bin" % i for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)


def _check_file(path):
    if not os.path.isfile(path):
        raise ToolError("the CIFAR-10 batch file '%s' is missing (the binary version, "
                        "cifar-10-binary.tar.gz, holds data_batch_1.bin .. data_batch_5.bin "
                        "and test_batch.bin)" % path)
    size = os.path.getsize(path)
    if size == 0 or size % RECORD_BYTES:
        raise ToolError("'%s' is not a CIFAR-10 binary batch file: its size (%d bytes) is not "
                        "a positive multiple of %d (1 label byte + %d pixel bytes per record)"
                        % (path, size, RECORD_BYTES, IMAGE_BYTES))
    return size // RECORD_BYTES


def read_batch(path):
    """A CIFAR-10 binary batch file -> (labels uint8 (N,), pixels uint8 (N, 3072))."""
    _check_file(path)
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return raw[:, 0], raw[:, 1:]


def batch_files(input_folder):
    """{"train": [paths], "test": [paths]}, every file checked (exists, size) up front."""
    if not os.path.isdir(input_folder):
        raise ToolError("the CIFAR-10 input folder '%s' does not exist" % input_folder)
    files = {"train": [os.path.join(input_folder, f) for f in TRAIN_FILES],
             "test": [os.path.join(input_folder, f) for f in TEST_FILES]}
    for paths in files.values():
        for p in paths:
            _check_file(p)
    return files


def _write_db(paths, db_path, backend, progress, what):
    total = sum(_check_file(p) for p in paths)
    writer = new_db(db_path, backend, tool="convert_cifar_data")
    bar = progress_bar(total, os.path.basename(os.path.normpath(db_path)), progress)
    count = 0
    try:
        datum = caffe_pb2.Datum()
        for fileid, path in enumerate(paths):
            if what == "Training":
                log.info("Training Batch %d", fileid + 1)
            labels, pixels = read_batch(path)
            items = []
            for i in range(len(labels)):
                array_to_datum(pixels[i].reshape(3, CIFAR_SIZE, CIFAR_SIZE), labels[i], datum)
                items.append((b"%05d" % count, datum.SerializeToString()))
                count += 1
            writer.write(items)            # one commit per batch file
            if bar is not None:
                bar.update(len(items))
        writer.close()
    except BaseException:
        discard(writer)
        raise
    finally:
        if bar is not None:
            bar.close()
    return count


def convert_cifar_data(input_folder, output_folder, backend="lmdb", progress=True):
    """convert_cifar_data.cpp: returns {"train": (db_path, n), "test": (db_path, n)}."""
    backend = check_backend(backend)
    files = batch_files(input_folder)
    if not os.path.isdir(output_folder):
        raise ToolError("the output folder '%s' does not exist" % output_folder)
    dbs = {split: os.path.join(output_folder, "cifar10_%s_%s" % (split, backend))
           for split in ("train", "test")}
    for db in dbs.values():
        if os.path.lexists(db):
            raise ToolError("the output database '%s' already exists; remove it first or "
                            "choose another folder (Caffe's convert_cifar_data does not "
                            "overwrite either)" % db)
    log.info("Writing Training data")
    n_train = _write_db(files["train"], dbs["train"], backend, progress, "Training")
    log.info("Writing Testing data")
    try:
        n_test = _write_db(files["test"], dbs["test"], backend, progress, "Testing")
    except BaseException:
        shutil.rmtree(dbs["train"], ignore_errors=True)
        raise
    log.info("Wrote %d training images to %s and %d test images to %s",
             n_train, dbs["train"], n_test, dbs["test"])
    return {"train": (dbs["train"], n_train), "test": (dbs["test"], n_test)}


# -- examples/cifar10/create_cifar10.sh ------------------------------------------------------

def find_data_folder(data_dir):
    """``data_dir``, or its ``cifar-10-batches-bin`` subfolder when the archive was unpacked
    there as it is (Caffe's get_cifar10.sh moves the files up one level)."""
    if not os.path.isfile(os.path.join(data_dir, TRAIN_FILES[0])):
        sub = os.path.join(data_dir, "cifar-10-batches-bin")
        if os.path.isfile(os.path.join(sub, TRAIN_FILES[0])):
            return sub
    return data_dir


def create_cifar10(example_dir="examples/cifar10", data_dir="data/cifar10", backend="lmdb",
                   progress=True):
    """examples/cifar10/create_cifar10.sh: remove the old databases, convert, then compute
    ``{example_dir}/mean.binaryproto`` from the train database.  Returns
    {"train": db, "test": db, "mean": mean_file}."""
    from .compute_image_mean import compute_image_mean
    backend = check_backend(backend)
    log.info("Creating %s...", backend)
    for split in ("train", "test"):
        db = os.path.join(example_dir, "cifar10_%s_%s" % (split, backend))
        if os.path.isdir(db) and not os.path.islink(db):
            shutil.rmtree(db)
        elif os.path.lexists(db):
            os.remove(db)
    out = convert_cifar_data(find_data_folder(data_dir), example_dir, backend, progress)
    log.info("Computing image mean...")
    mean_file = os.path.join(example_dir, "mean.binaryproto")
    compute_image_mean(out["train"][0], mean_file, backend=backend)
    log.info("Done.")
    return {"train": out["train"][0], "test": out["test"][0], "mean": mean_file}
