"""Key-value databases of Datum records (LMDB, LevelDB).

Caffe's ``db::DB``/``db::Cursor`` in Python: a database is opened read-only, a cursor walks
the records in key order (bytewise, as both LMDB and LevelDB sort them), and
``WrappingCursor`` restarts from the first record at the end, as the Data layer does.
Reading lives in these small classes so that a prefetching thread can drive them.

Writing (Caffe's ``db::GetDB(backend)->Open(path, NEW)``): ``new_writer`` makes an
``LMDBWriter`` or a ``LevelDBWriter`` whose ``write(items)`` puts a list of (key, value) bytes
in one transaction (one Caffe ``Commit``); ``write_db`` writes Datum records through them. The
dataset tools (``caffepy.tools``) write through the same writers.
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


_BACKENDS = {"lmdb": "lmdb", "leveldb": "leveldb",
             caffe_pb2.DataParameter.LMDB: "lmdb", caffe_pb2.DataParameter.LEVELDB: "leveldb"}


def backend_name(backend, error=_default_error):
    """'lmdb' or 'leveldb' for a DataParameter.DB value or a name in any case."""
    name = _BACKENDS.get(backend.lower() if isinstance(backend, str) else backend)
    if name is None:
        raise error("unknown database backend %r (use lmdb or leveldb)", backend)
    return name


def open_db(source, backend=caffe_pb2.DataParameter.LMDB, error=_default_error):
    """Open ``source`` read-only. ``backend`` is a DataParameter.DB value or 'lmdb'/'leveldb'."""
    if backend_name(backend, error) == "lmdb":
        return LMDBDatabase(source, error)
    return LevelDBDatabase(source, error)


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


# -- writing -------------------------------------------------------------------------

class LMDBWriter:
    """A new LMDB at ``path``. Each ``write(items)`` is one transaction; one that does not fit
    doubles the map size and runs again, as Caffe's LMDB does."""

    def __init__(self, path, map_size=1 << 28, error=_default_error):
        import lmdb
        self._lmdb = lmdb
        self.path = path
        self.map_size = int(map_size)
        try:
            self.env = lmdb.open(path, map_size=self.map_size, subdir=True, lock=True)
        except lmdb.Error as e:
            raise error("cannot create LMDB '%s': %s", path, e) from None

    def write(self, items):
        """Put a list of (key bytes, value bytes) in one transaction."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None


class LevelDBWriter:
    """A new LevelDB at ``path`` (needs the optional 'leveldb' extra, plyvel); each
    ``write(items)`` is one write batch. ``what`` names the request in the missing-package
    error."""

    def __init__(self, path, error=_default_error, what="writing a LevelDB"):
        try:
            import plyvel
        except ImportError:
            raise error("%s needs the optional plyvel package (the 'leveldb' extra: pip install "
                        "'caffepy[leveldb]'); the lmdb backend needs nothing extra",
                        what) from None
        self.path = path
        try:
            self.db = plyvel.DB(path, create_if_missing=True, error_if_exists=True,
                                write_buffer_size=256 << 20)
        except plyvel.Error as e:
            raise error("cannot create LevelDB '%s': %s", path, e) from None

    def write(self, items):
        """Put a list of (key bytes, value bytes) in one write batch."""
        with self.db.write_batch() as wb:
            for k, v in items:
                wb.put(k, v)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


def new_writer(path, backend="lmdb", error=_default_error, what=None):
    """A writer for a new database of ``backend`` ('lmdb', 'leveldb' or a DataParameter.DB
    value) at ``path``."""
    if backend_name(backend, error) == "lmdb":
        return LMDBWriter(path, error=error)
    return LevelDBWriter(path, error, what or "writing a LevelDB")


def _record(key, value):
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        value = value.SerializeToString()
    return key, bytes(value)


def _write_all(writer, records, commit_every=1000):
    """Write ``records`` (an iterable of (key, Datum or bytes); str keys are UTF-8 encoded)
    through ``writer``, one transaction per ``commit_every`` records, then close it."""
    try:
        batch = []
        for key, value in records:
            batch.append(_record(key, value))
            if len(batch) == commit_every:
                writer.write(batch)
                batch = []
        if batch:
            writer.write(batch)
    finally:
        writer.close()


def write_db(path, records, backend="lmdb"):
    """Write Datum records ((key, Datum or bytes) pairs) to a new database of the given
    backend ('lmdb' or 'leveldb') at ``path``."""
    _write_all(new_writer(path, backend), records)


def write_lmdb(path, records, map_size=1 << 28):
    """Write Datum records to a new LMDB at ``path`` (its map grows as needed)."""
    _write_all(LMDBWriter(path, map_size), records)


def write_leveldb(path, records):
    """Write Datum records to a new LevelDB at ``path`` (needs the optional 'leveldb' extra,
    plyvel)."""
    _write_all(LevelDBWriter(path), records)
