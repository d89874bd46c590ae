"""Caffe's ``compute_image_mean``: the per-pixel mean of a Datum database, as a mean file.

    caffepy compute_image_mean [-backend lmdb] INPUT_DB [OUTPUT_FILE]

The mean file is one BlobProto {num 1, channels, height, width (the legacy fields), data =
the mean of every record's pixels, float}.  Records are read in key order; encoded records
are decoded first (in their native channels, DecodeDatumNative), raw ones contribute their
uint8 ``data`` or, when that is empty, their ``float_data``.  The sums are float32 added
record by record and divided by the record count in float32, as tools/compute_image_mean.cpp
does, so the file matches Caffe's to the bit.  The per-channel means are logged
("mean_value channel [c]: v").  Records of different sizes are an error naming the key.
"""
import logging

import numpy as np

from ..data.datum import datum_values, decode_image, parse_datum
from ..proto import write_mean_binaryproto
from . import ToolError
from .dbio import check_backend

log = logging.getLogger("caffepy")

LOG_EVERY = 10000


def _key(key):
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _record_values(value, key):
    """One record -> (shape (C, H, W), flat float32 values, was it encoded)."""
    datum = parse_datum(value, key, _tool_error)
    if datum.encoded:
        img = decode_image(datum.data, error=_tool_error, key=key)
        return img.shape, img.reshape(-1).astype(np.float32), True
    shape = (datum.channels, datum.height, datum.width)
    return shape, datum_values(datum).astype(np.float32), False


def _tool_error(msg, *args):
    return ToolError(msg % args if args else msg)


def compute_image_mean(db_path, output_file=None, backend="lmdb"):
    """compute_image_mean.cpp: returns the mean as a float32 array (1, C, H, W) and writes it
    to ``output_file`` (a binaryproto) when given."""
    from ..data.db import open_db
    backend = check_backend(backend)
    if backend == "leveldb":
        try:
            import plyvel  # noqa: F401
        except ImportError:
            raise ToolError("-backend leveldb needs the optional plyvel package (pip install "
                            "plyvel)") from None
    db = open_db(db_path, backend)
    try:
        cursor = db.cursor()
        if not cursor.valid():
            raise ToolError("the database '%s' is empty: no records to average" % db_path)
        shape, _, encoded = _record_values(cursor.value(), cursor.key())
        if encoded:
            log.info("Decoding Datum")
        first_key = _key(cursor.key())
        data_size = int(np.prod(shape))
        if data_size <= 0:
            raise ToolError("record '%s' has channels x height x width = %s: an empty image "
                            "(the records of a mean must be images)"
                            % (first_key, " x ".join(map(str, shape))))
        total = np.zeros(data_size, dtype=np.float32)
        log.info("Starting iteration")
        count = 0
        while cursor.valid():
            key = cursor.key()
            rshape, vals, _ = _record_values(cursor.value(), key)
            if vals.size != data_size:
                raise ToolError(
                    "record '%s' holds %d values (channels x height x width = %s) but the first "
                    "record '%s' holds %d (%s): all records must have the same size (Caffe: "
                    "Incorrect data field size %d)"
                    % (_key(key), vals.size, " x ".join(map(str, rshape)), first_key, data_size,
                       " x ".join(map(str, shape)), vals.size))
            total += vals
            count += 1
            if count % LOG_EVERY == 0:
                log.info("Processed %d files.", count)
            cursor.next()
    finally:
        db.close()
    if count % LOG_EVERY != 0:
        log.info("Processed %d files.", count)
    mean = (total / np.float32(count)).astype(np.float32)
    channels = shape[0]
    dim = int(shape[1]) * int(shape[2])
    if output_file:
        log.info("Write to %s", output_file)
        try:
            write_mean_binaryproto(mean.reshape(shape), output_file)
        except OSError as e:
            raise ToolError("cannot write '%s': %s (does its folder exist?)"
                            % (output_file, e.strerror or e)) from None
    log.info("Number of channels: %d", channels)
    for c in range(channels):
        # float mean_values[c] += data(...) one by one, then / dim (float arithmetic).
        s = np.cumsum(mean[c * dim:(c + 1) * dim], dtype=np.float32)[-1] if dim else \
            np.float32(0)
        log.info("mean_value channel [%d]: %s", c, "%g" % float(np.float32(s) / np.float32(dim))
                 if dim else "nan")
    return mean.reshape(1, *shape)
