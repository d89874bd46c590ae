"""Where the data layers' batches come from: Datum databases (Data), image lists (ImageData)
and arrays handed over from Python (MemoryData). The HDF5 file lists of HDF5Data are in
``caffepy.data.hdf5``, the R-CNN window files of WindowData in ``caffepy.data.window``.

The prefetched sources (``DatumSource``, ``ImageListSource``, ``window.WindowSampler``) have
``load(batch)``, which fills ``batch.data`` and ``batch.label`` (reallocating them only when
the shape changes), and ``close()``; ``caffepy.data.prefetch`` runs them in a background thread.
They hold no layer: errors are made by the ``error(msg, *args)`` callable they are given.
"""
import numpy as np

from ..size_limits import BLOB_COPIES, BLOB_ITEMSIZE, check_bytes
from .datum import datum_to_array, parse_datum
from .image import read_image
from ..errors import DataError


def dims_str(shape):
    """A shape as the data layers' messages print it: ``3 x 32 x 32`` (or ``(scalar)``)."""
    return " x ".join(str(d) for d in shape) if len(shape) else "(scalar)"


def ensure(arr, shape):
    """``arr`` if it already has ``shape``, else a new float32 array of that shape."""
    if arr is None or arr.shape != shape:
        return np.empty(shape, np.float32)
    return arr


def check_batch_shape(error, what, first_what, shape, first_shape, crop):
    """The items of a batch must have the first item's shape (or, when cropped, its channels)."""
    if shape != first_shape and (not crop or shape[0] != first_shape[0]):
        raise error("%s is %s but %s is %s: the items of a batch must have the same size%s",
                    what, dims_str(shape), first_what, dims_str(first_shape),
                    "" if crop else " (or be cropped to one size with transform_param.crop_size)")


def read_text(path, what, error):
    """The text of a list file; a file that cannot be read is ``error``'s "failed to open"."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise error("failed to open %s '%s': %s", what, path, e.strerror or e) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # a DataError whatever ``error`` makes, with the layer ``error`` names
        err = error("%s '%s' is not UTF-8 text: byte 0x%02x at byte offset %d (line %d) "
                    "cannot be decoded", what, path, raw[e.start], e.start,
                    raw.count(b"\n", 0, e.start) + 1)
        raise (err if isinstance(err, DataError) else DataError(str(err))) from None


def _key(key):
    return key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key


def _fill_batch(batch, transformer, items, labels, first_shape, error, first_what):
    """Transform ``items`` into ``batch.data`` (shaped after the first item, ``first_what``)
    and copy the labels into ``batch.label``. A new batch shape is checked against the size
    limits (caffepy.size_limits) before it is allocated."""
    n = len(items)
    shape = (n,) + transformer.infer_shape(first_shape)
    if batch.data is None or batch.data.shape != shape:
        count = 1
        for d in shape:
            count *= d
        check_bytes(count * BLOB_ITEMSIZE * BLOB_COPIES, "a batch of shape %s (its first item "
                    "is %s) in the layer's top (float32 data and diff)"
                    % (dims_str(shape), first_what), lambda msg: error("%s", msg))
    batch.data = ensure(batch.data, shape)
    transformer.transform_items(items, out=batch.data)
    batch.label = ensure(batch.label, (n,))
    batch.label[:] = labels


# -- Datum databases (Data) --------------------------------------------------------------

def database_error(error, source):
    """``error`` with the database ``source`` named (for the errors of its records)."""
    def db_error(msg, *args):
        return error("%s (database '%s')", msg % args if args else msg, source)
    return db_error


def decode_record(transformer, key, value, error):
    """A database record's Datum and C×H×W item; ``error`` names the record's problems."""
    datum = parse_datum(value, key, error)
    return datum, datum_to_array(datum, transformer.force_color, transformer.force_gray, error,
                                 key)


class DatumSource:
    """Loads batches of Datums from a wrapping database cursor: decode, then transform.

    Each batch takes its shape from its first Datum (Caffe: "reshape according to the first
    datum of each batch"); the other Datums of the batch must match it (or be cropped to it).

    ``share`` = (count, rank) keeps only the records at running offsets rank, rank+count, ...
    (Caffe's DataLayer Skip() with solver_count/solver_rank; caffepy.distributed).
    """
    share = None
    offset = 0

    def __init__(self, db, cursor, batch_size, transformer, error):
        self.db = db
        self.cursor = cursor
        self.batch_size = int(batch_size)
        self.transformer = transformer
        self._error = database_error(error, getattr(db, "source", "?"))

    def load(self, batch):
        t, error = self.transformer, self._error
        items, labels = [], []
        first_key = first_shape = None
        for i in range(self.batch_size):
            if self.share is not None:
                count, rank = self.share
                while self.offset % count != rank:
                    self.cursor.next()
                    self.offset += 1
            key, value = self.cursor.read()
            self.offset += 1
            datum, item = decode_record(t, key, value, error)
            if i == 0:
                first_key, first_shape = key, item.shape
            else:
                check_batch_shape(error, "record %r" % _key(key), "the first record of its "
                                  "batch (%r)" % _key(first_key), item.shape, first_shape,
                                  t.crop_size)
            items.append(item)
            labels.append(datum.label)
        _fill_batch(batch, t, items, labels, first_shape, error, "record %r" % _key(first_key))

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


# -- image lists (ImageData) -------------------------------------------------------------

def parse_image_list(source, error):
    """Caffe's ImageData list: one "path label" per line, split at the last space.

    Returns a list of (path, label, line number). Blank lines are skipped."""
    text = read_text(source, "the image list", error)
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line.strip():
            continue
        pos = line.rfind(" ")
        if pos < 0:
            raise error("line %d of '%s' has no label: '%s' (each line is 'path label', split "
                        "at the last space)", lineno, source, line)
        path, label = line[:pos], line[pos + 1:]
        try:
            label = int(label)
        except ValueError:
            raise error("line %d of '%s': the label '%s' is not an integer (each line is "
                        "'path label', split at the last space)", lineno, source, label) from None
        if not path.strip():
            raise error("line %d of '%s' has no image path", lineno, source)
        lines.append((path, label, lineno))
    if not lines:
        raise error("the image list '%s' is empty", source)
    return lines


class ImageListSource:
    """Loads batches of images named in a list file; wraps at the end (and reshuffles)."""

    def __init__(self, lines, source, root_folder, batch_size, new_height, new_width, is_color,
                 transformer, shuffle_rng, start, error):
        self.lines = lines
        self.source = source
        self.root = root_folder
        self.batch_size = int(batch_size)
        self.new_height, self.new_width = int(new_height), int(new_width)
        self.is_color = bool(is_color)
        self.transformer = transformer
        self.rng = shuffle_rng
        self.pos = int(start)
        self._error = error

    def read(self, index):
        path, _, lineno = self.lines[index]
        full = self.root + path
        return read_image(full, self.is_color, self.new_height, self.new_width, self._error,
                          where="image '%s' (line %d of '%s')" % (full, lineno, self.source))

    def load(self, batch):
        t = self.transformer
        items, labels = [], []
        first = None
        for i in range(self.batch_size):
            img = self.read(self.pos)
            path, label, lineno = self.lines[self.pos]
            if i == 0:
                first = (path, lineno, img.shape)
            else:
                check_batch_shape(self._error, "image '%s' (line %d)" % (self.root + path, lineno),
                                  "the first image of its batch ('%s', line %d)"
                                  % (self.root + first[0], first[1]), img.shape, first[2],
                                  t.crop_size)
            items.append(img)
            labels.append(label)
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.rng is not None:
                    self.rng.shuffle(self.lines)
        _fill_batch(batch, t, items, labels, first[2], self._error,
                    "image '%s' (line %d)" % (self.root + first[0], first[1]))

    def close(self):
        pass


# -- arrays (MemoryData) -----------------------------------------------------------------

class ArraySource:
    """N items (float32 data N×C×H×W and N labels) served batch by batch, wrapping around."""

    def __init__(self):
        self.data = None
        self.labels = None
        self.n = 0
        self.pos = 0

    def set(self, data, labels):
        """Serve ``data`` and ``labels`` (float32 arrays of N items) from the first item on."""
        self.data, self.labels = data, labels
        self.n = int(labels.shape[0])
        self.pos = 0

    def next(self, batch_size):
        """Views of the next ``batch_size`` items and labels, and whether the reading wrapped
        around to the first item after them."""
        pos = self.pos
        data = self.data[pos:pos + batch_size]
        labels = self.labels[pos:pos + batch_size]
        self.pos = (pos + batch_size) % self.n
        return data, labels, self.pos == 0
