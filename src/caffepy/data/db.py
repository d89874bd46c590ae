"""Key-value databases of Datum records (LMDB, LevelDB).

Caffe's ``db::DB``/``db::Cursor`` in Python: a database is opened read-only, a cursor walks
the records in key order (bytewise, as both LMDB and LevelDB sort them), and
``WrappingCursor`` restarts from the first record at the end, as the Data layer does.
Reading lives in these small classes so that a prefetching thread can drive them.
"""
import os
import threading

from ..proto import caffe_pb2
from ..errors import DataError  # noqa: F401
# The Datum codec lives in caffepy.data.datum; these names stay importable from here.
from .datum import (array_to_datum, datum_to_array, decode_image, encoded_datum,  # noqa: F401
                    parse_datum)


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
