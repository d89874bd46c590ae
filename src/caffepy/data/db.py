"""Key-value databases of Datum records (LMDB, LevelDB) and Datum <-> array conversion.

Caffe's ``db::DB``/``db::Cursor`` in Python: a database is opened read-only, a cursor walks
the records in key order (bytewise, as both LMDB and LevelDB sort them), and
``WrappingCursor`` restarts from the first record at the end, as the Data layer does.
Reading lives in these small classes so that a prefetching thread can drive them.
"""
import os
import threading

import numpy as np

from ..proto import caffe_pb2
from ..errors import DataError  # noqa: F401


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


# -- databases -----------------------------------------------------------------------

_OPEN_ENVS = {}                 # realpath -> [lmdb.Environment, number of LMDBDatabase users]
_ENV_LOCK = threading.Lock()

class LMDBDatabase:
    """A read-only LMDB environment (opened with lock=False, like Caffe's MDB_RDONLY|MDB_NOTLS)."""

    def __init__(self, source, error=_default_error):
        try:
            import lmdb
        except ImportError:  # pragma: no cover - lmdb is a dependency
            raise error("backend LMDB needs the 'lmdb' package (pip install lmdb)") from None
        if not os.path.exists(source):
            raise error("cannot open LMDB '%s': no such file or directory", source)
        self.source = source
        self._txn = None
        self.env = None
        self._path = os.path.realpath(source)
        with _ENV_LOCK:
            entry = _OPEN_ENVS.get(self._path)
            if entry is None:
                # One environment per file and process (LMDB forbids opening it twice): a train
                # and a test net reading the same database share it, each with its own cursor.
                try:
                    env = lmdb.open(source, readonly=True, lock=False,
                                    subdir=os.path.isdir(source), readahead=False, create=False)
                except lmdb.Error as e:
                    raise error("cannot open LMDB '%s': %s", source, e) from None
                entry = _OPEN_ENVS[self._path] = [env, 0]
            entry[1] += 1
            self.env = entry[0]

    def cursor(self):
        if self._txn is None:
            self._txn = self.env.begin(write=False, buffers=False)
        return _LMDBCursor(self._txn.cursor())

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        if self.env is not None:
            with _ENV_LOCK:
                entry = _OPEN_ENVS.get(self._path)
                if entry is not None and entry[0] is self.env:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del _OPEN_ENVS[self._path]
                        self.env.close()
            self.env = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _LMDBCursor:
    def __init__(self, cur):
        self._cur = cur
        self._valid = cur.first()

    def seek_to_first(self):
        self._valid = self._cur.first()

    def next(self):
        self._valid = self._cur.next()

    def valid(self):
        return self._valid

    def key(self):
        return self._cur.key()

    def value(self):
        return self._cur.value()


class LevelDBDatabase:
    """A read-only LevelDB (needs the optional ``plyvel`` package)."""

    def __init__(self, source, error=_default_error):
        try:
            import plyvel
        except ImportError:
            hint = ""
            if os.path.exists(os.path.join(source, "data.mdb")):
                hint = " ('%s' holds an LMDB: set data_param { backend: LMDB })" % source
            raise error("data_param.backend is LEVELDB (Caffe's default), which needs the optional "
                        "'leveldb' extra (the plyvel package): pip install 'caffepy[leveldb]'%s",
                        hint) from None
        if not os.path.isdir(source):
            raise error("cannot open LevelDB '%s': no such directory", source)
        try:
            self.db = plyvel.DB(source, create_if_missing=False)
        except Exception as e:
            raise error("cannot open LevelDB '%s': %s", source, e) from None
        self.source = source

    def cursor(self):
        return _LevelDBCursor(self.db)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


class _LevelDBCursor:
    def __init__(self, db):
        self._db = db
        self.seek_to_first()

    def seek_to_first(self):
        self._it = self._db.iterator()
        self._advance()

    def _advance(self):
        try:
            self._kv = next(self._it)
        except StopIteration:
            self._kv = None

    def next(self):
        self._advance()

    def valid(self):
        return self._kv is not None

    def key(self):
        return self._kv[0]

    def value(self):
        return self._kv[1]


def open_db(source, backend=caffe_pb2.DataParameter.LMDB, error=_default_error):
    """Open ``source`` read-only. ``backend`` is a DataParameter.DB value or 'lmdb'/'leveldb'."""
    if isinstance(backend, str):
        backend = {"lmdb": caffe_pb2.DataParameter.LMDB,
                   "leveldb": caffe_pb2.DataParameter.LEVELDB}.get(backend.lower(), backend)
    if backend == caffe_pb2.DataParameter.LMDB:
        return LMDBDatabase(source, error)
    if backend == caffe_pb2.DataParameter.LEVELDB:
        return LevelDBDatabase(source, error)
    raise error("unknown database backend %r", backend)


class WrappingCursor:
    """Reads records in key order forever: at the end it restarts from the first record."""

    def __init__(self, db, error=_default_error):
        self.db = db
        self._error = error
        self._cursor = db.cursor()
        if not self._cursor.valid():
            raise error("database '%s' is empty", getattr(db, "source", "?"))

    def key(self):
        return self._cursor.key()

    def value(self):
        """The current record's value (does not advance)."""
        return self._cursor.value()

    def next(self):
        """Advance one record; returns True when it wrapped around to the first record."""
        self._cursor.next()
        if not self._cursor.valid():
            self._cursor.seek_to_first()
            return True
        return False

    def skip(self, n):
        for _ in range(int(n)):
            self.next()

    def read(self):
        """The current (key, value), then advance (Caffe's value() followed by Next())."""
        kv = (self._cursor.key(), self._cursor.value())
        self.next()
        return kv


# -- Datum ---------------------------------------------------------------------------

def parse_datum(value, key=None, error=_default_error):
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:
        raise error("record %s is not a valid Datum: %s", _key_str(key), e) from None
    return datum


def _key_str(key):
    if key is None:
        return "?"
    if isinstance(key, bytes):
        return repr(key.decode("utf-8", errors="replace"))
    return repr(key)


def decode_image(data, force_color=False, force_gray=False, error=_default_error, key=None):
    """Decode a Datum's PNG/JPEG bytes to a C×H×W uint8 array, as Caffe's DataTransformer does:
    force_color -> 3 channels (BGR), force_gray -> 1, neither -> OpenCV's IMREAD_ANYCOLOR
    (3 channels for a colour image, 1 for a grey one). See ``caffepy.data.image``."""
    from .image import decode_image as _decode
    if force_color and force_gray:
        raise error("transform_param: cannot set both force_color and force_gray")
    mode = "color" if force_color else "gray" if force_gray else "native"
    return _decode(data, mode, error, "record %s" % _key_str(key))


def datum_to_array(datum, force_color=False, force_gray=False, error=_default_error, key=None):
    """The Datum's values as a C×H×W array: uint8 for raw/encoded ``data``, else float32.

    Raw uint8 ``data`` takes priority over ``float_data``, as in Caffe.
    """
    if datum.encoded:
        return decode_image(datum.data, force_color, force_gray, error, key)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0:
        raise error("record %s: Datum channels must be positive (got %d)", _key_str(key), c)
    n = c * h * w
    if len(datum.data):
        if len(datum.data) != n:
            raise error("record %s: Datum data holds %d bytes but channels x height x width = "
                        "%d x %d x %d = %d", _key_str(key), len(datum.data), c, h, w, n)
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise error("record %s: Datum float_data holds %d values but channels x height x width = "
                    "%d x %d x %d = %d", _key_str(key), len(datum.float_data), c, h, w, n)
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def array_to_datum(arr, label=None):
    """A Datum from a C×H×W array: uint8 arrays go to ``data``, others to ``float_data``
    (pycaffe's caffe.io.array_to_datum)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape: a Datum holds a C x H x W array, got %s"
                         % (arr.shape,))
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def write_lmdb(path, records, map_size=1 << 30):
    """Write ``records`` (an iterable of (key, Datum or bytes)) to a new LMDB at ``path``."""
    import lmdb
    env = lmdb.open(path, map_size=map_size)
    try:
        with env.begin(write=True) as txn:
            for key, value in records:
                if isinstance(key, str):
                    key = key.encode("utf-8")
                if not isinstance(value, (bytes, bytearray)):
                    value = value.SerializeToString()
                txn.put(key, value)
    finally:
        env.close()


def write_leveldb(path, records):
    """Write ``records`` (an iterable of (key, Datum or bytes)) to a new LevelDB at ``path``
    (needs the optional 'leveldb' extra, plyvel)."""
    try:
        import plyvel
    except ImportError:
        raise DataError("writing a LevelDB needs the optional 'leveldb' extra (the plyvel "
                        "package): pip install 'caffepy[leveldb]'") from None
    db = plyvel.DB(path, create_if_missing=True, error_if_exists=True)
    try:
        with db.write_batch() as wb:
            for key, value in records:
                if isinstance(key, str):
                    key = key.encode("utf-8")
                if not isinstance(value, (bytes, bytearray)):
                    value = value.SerializeToString()
                wb.put(key, bytes(value))
    finally:
        db.close()


def write_db(path, records, backend="lmdb"):
    """Write Datum records to a new database of the given backend ('lmdb' or 'leveldb')."""
    b = backend.lower() if isinstance(backend, str) else backend
    if b in ("lmdb", caffe_pb2.DataParameter.LMDB):
        return write_lmdb(path, records)
    if b in ("leveldb", caffe_pb2.DataParameter.LEVELDB):
        return write_leveldb(path, records)
    raise DataError("unknown database backend %r (use lmdb or leveldb)" % (backend,))
