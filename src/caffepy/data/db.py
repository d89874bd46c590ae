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
import struct
import threading

from ..proto import caffe_pb2
from ..errors import DataError  # noqa: F401
# The Datum codec lives in caffepy.data.datum; these names stay importable from here.
from .datum import (array_to_datum, datum_to_array, decode_image, encoded_datum,  # noqa: F401
                    key_str, parse_datum)


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


# -- databases -----------------------------------------------------------------------

_OPEN_ENVS = {}                 # realpath -> [lmdb.Environment, number of LMDBDatabase users]
_ENV_LOCK = threading.Lock()


def _data_file(source):
    """The data file of an LMDB: ``source/data.mdb`` for a directory, else ``source``."""
    return os.path.join(source, "data.mdb") if os.path.isdir(source) else source


class LMDBDatabase:
    """A read-only LMDB.

    caffepy reads LMDB data files itself (``_LMDBFile``): with ``os.pread``, never a memory
    map, checking every page before it is used, so a truncated or damaged file is a
    DataError naming the database (and the key after which reading failed), never the SIGBUS
    or the failed assertion (SIGABRT) that the lmdb library gives on such files. A file in a
    layout it does not read (another LMDB data version, a DUPSORT database) is opened with
    the lmdb package (lock=False, like Caffe's MDB_RDONLY|MDB_NOTLS) after a size check, its
    errors turned into DataErrors too.
    """

    def __init__(self, source, error=_default_error):
        if not os.path.exists(source):
            raise error("cannot open LMDB '%s': no such file or directory", source)
        self.source = source
        self._error = error
        self._txn = None
        self.env = None
        self._file = None
        self._path = os.path.realpath(source)
        data = _data_file(source)
        if not os.path.isfile(data):
            raise error("cannot open LMDB '%s': no data file '%s'", source, data)
        try:
            self._file = _LMDBFile(data, self._fail)
            return
        except _Unsupported:
            pass
        except OSError as e:
            raise error("cannot open LMDB '%s': %s", source, e.strerror or e) from None
        self._open_env()

    def _fail(self, msg):
        return self._error("LMDB '%s': %s", self.source, msg)

    def _open_env(self):
        try:
            import lmdb
        except ImportError:  # pragma: no cover - lmdb is a dependency
            raise self._error("backend LMDB needs the 'lmdb' package (pip install lmdb)") from None
        self._lmdb = lmdb
        source, error = self.source, self._error
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
                try:
                    _check_env(env, _data_file(source), self._fail)
                except BaseException:
                    env.close()
                    raise
                entry = _OPEN_ENVS[self._path] = [env, 0]
            entry[1] += 1
            self.env = entry[0]

    def cursor(self):
        if self._file is not None:
            return _FileCursor(self._file)
        if self._txn is None:
            self._txn = self.env.begin(write=False, buffers=False)
        return _LMDBCursor(self._txn.cursor(), self, self._lmdb.Error)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
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


def _check_env(env, data_file, fail):
    """An environment opened by the lmdb package must describe a file that holds all its
    pages (a memory map of a shorter file dies with SIGBUS when read past its end)."""
    info, stat = env.info(), env.stat()
    psize, last = stat["psize"], info["last_pgno"]
    if psize < _MIN_PSIZE or psize > _MAX_PSIZE or psize & (psize - 1):
        raise fail("damaged: a page size of %d bytes" % psize)
    if stat["depth"] > _MAX_DEPTH:
        raise fail("damaged: a tree depth of %d" % stat["depth"])
    if stat["entries"] > (last + 1) * (psize // _NODE_SIZE):
        raise fail("damaged: %d entries cannot fit in %d pages" % (stat["entries"], last + 1))
    size = os.path.getsize(data_file)
    if (last + 1) * psize > size:
        raise fail("the file is truncated or damaged: its last page is %d with %d-byte pages, "
                   "so it must hold at least %d bytes, but it holds %d"
                   % (last, psize, (last + 1) * psize, size))


class _LMDBCursor:
    """A cursor of the lmdb package; its errors become DataErrors naming the database and the
    last key read, and the file's size is checked again before it returns to the first key."""

    def __init__(self, cur, db, lmdb_error):
        self._cur = cur
        self._db = db
        self._lmdb_error = lmdb_error
        self._key = None
        self._valid = self._call(cur.first)

    def _call(self, fn):
        try:
            return fn()
        except self._lmdb_error as e:
            after = "" if self._key is None else " after key %s" % key_str(self._key)
            raise self._db._fail("reading failed%s: %s" % (after, e)) from None

    def seek_to_first(self):
        db = self._db
        _check_env(db.env, _data_file(db.source), db._fail)
        self._valid = self._call(self._cur.first)

    def next(self):
        self._key = self.key()
        self._valid = self._call(self._cur.next)

    def valid(self):
        return self._valid

    def key(self):
        return self._call(self._cur.key)

    def value(self):
        return self._call(self._cur.value)


# -- LMDB data files, read by caffepy ----------------------------------------------------

# The on-disk layout of an LMDB 0.9 data file (64-bit builds: 8-byte page numbers).
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2, _P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
_P_TYPES = _P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META | _P_LEAF2 | _P_SUBP
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_PAGE_HEADER = struct.Struct("<QHHHH")      # pgno, pad, flags, lower, upper (16 bytes)
_PAGE_HEADER_SIZE = 16
_NODE = struct.Struct("<HHHH")              # lo, hi, flags, ksize (8 bytes, then key, data)
_NODE_SIZE = 8
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")   # MDB_meta after the page header
_MAGIC, _DATA_VERSION = 0xBEEFC0DE, 1
_INVALID_PGNO = (1 << 64) - 1
_MIN_PSIZE, _MAX_PSIZE = 512, 1 << 16
_MAX_DEPTH = 64


class _Unsupported(Exception):
    """A valid LMDB file in a layout this reader does not read (left to the lmdb package)."""


class _LMDBFile:
    """Read-only access to an LMDB data file with ``os.pread`` (never a memory map, so a file
    cut short gives an error, not SIGBUS), every page checked before it is used: its number,
    its type, and every offset and length in it inside the page or the file. ``fail(msg)``
    makes the error (it names the database)."""

    def __init__(self, path, fail):
        self.path = path
        self._fail = fail
        self.context = ""          # where the reading is, for the messages (set by a cursor)
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self._read_meta()
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def fail(self, msg):
        return self._fail(msg + self.context)

    def file_size(self):
        return os.fstat(self.fd).st_size

    def _meta_at(self, offset):
        raw = os.pread(self.fd, _PAGE_HEADER_SIZE + _META.size, offset)
        if len(raw) < _PAGE_HEADER_SIZE + _META.size:
            return None
        _, _, flags, _, _ = _PAGE_HEADER.unpack_from(raw, 0)
        m = _META.unpack_from(raw, _PAGE_HEADER_SIZE)
        if m[0] != _MAGIC or not flags & _P_META:
            return None
        return m

    def _read_meta(self):
        size = self.file_size()
        m0 = self._meta_at(0)
        if m0 is None:
            raise self.fail("not an LMDB data file (no valid meta page at its start; the file "
                            "holds %d bytes)" % size)
        if m0[1] != _DATA_VERSION:
            raise _Unsupported("LMDB data version %d" % m0[1])
        psize = m0[4]
        if psize < _MIN_PSIZE or psize > _MAX_PSIZE or psize & (psize - 1):
            raise self.fail("the meta page gives a page size of %d bytes (need a power of two "
                            "from %d to %d)" % (psize, _MIN_PSIZE, _MAX_PSIZE))
        m1 = self._meta_at(psize)
        metas = [m for m in (m0, m1) if m is not None and m[1] == _DATA_VERSION]
        meta = max(metas, key=lambda m: m[-1])          # the newest commit (mm_txnid)
        (_, _, _, _, _, _, _, _, _, _, _, _,
         main_pad, main_flags, depth, branch, leaf, overflow, entries, root, last_pgno,
         txnid) = meta
        if main_flags & 0x04:                           # MDB_DUPSORT: not a Datum database
            raise _Unsupported("a DUPSORT database")
        self.psize = psize
        self.last_pgno = last_pgno
        self.depth = depth
        self.entries = entries
        self.root = root
        need = (last_pgno + 1) * psize
        if last_pgno < 1 or need > size:
            raise self.fail("the file is truncated or damaged: its last page is %d with %d-byte "
                            "pages, so it must hold at least %d bytes, but it holds %d"
                            % (last_pgno, psize, need, size))
        if root == _INVALID_PGNO:
            if entries or depth:
                raise self.fail("the meta page is damaged: no root page but %d entries, "
                                "depth %d" % (entries, depth))
            return
        if not 2 <= root <= last_pgno:
            raise self.fail("the meta page is damaged: root page %d outside pages 2..%d"
                            % (root, last_pgno))
        if not 1 <= depth <= _MAX_DEPTH:
            raise self.fail("the meta page is damaged: tree depth %d" % depth)
        if entries > last_pgno * (psize // _NODE_SIZE):
            raise self.fail("the meta page is damaged: %d entries cannot fit in %d pages"
                            % (entries, last_pgno + 1))

    def page(self, pgno, leaf):
        """Page ``pgno`` (bytes) after checking it is the branch or leaf page the tree says
        it is; returns (page bytes, node offsets)."""
        psize = self.psize
        if not 2 <= pgno <= self.last_pgno:
            raise self.fail("page %d is outside pages 2..%d" % (pgno, self.last_pgno))
        raw = os.pread(self.fd, psize, pgno * psize)
        if len(raw) < psize:
            raise self.fail("the file ends inside page %d (it holds %d bytes now, %d needed)"
                            % (pgno, self.file_size(), (pgno + 1) * psize))
        number, _, flags, lower, upper = _PAGE_HEADER.unpack_from(raw, 0)
        want = _P_LEAF if leaf else _P_BRANCH
        if number != pgno or flags & _P_TYPES != want:
            raise self.fail("page %d is damaged (it reads as page %d with flags 0x%x; a %s page "
                            "was expected)" % (pgno, number, flags, "leaf" if leaf else "branch"))
        if lower < _PAGE_HEADER_SIZE or lower & 1 or upper > psize or lower > upper:
            raise self.fail("page %d is damaged (free space bounds %d..%d)" % (pgno, lower, upper))
        n = (lower - _PAGE_HEADER_SIZE) >> 1
        if n == 0 and not leaf:
            raise self.fail("branch page %d is damaged (no entries)" % pgno)
        offsets = struct.unpack_from("<%dH" % n, raw, _PAGE_HEADER_SIZE)
        for off in offsets:
            if off < upper or off + _NODE_SIZE > psize:
                raise self.fail("page %d is damaged (an entry at offset %d, outside %d..%d)"
                                % (pgno, off, upper, psize - _NODE_SIZE))
        return raw, offsets

    def child(self, raw, off, pgno):
        """The page number a branch node points to."""
        lo, hi, fl, _ = _NODE.unpack_from(raw, off)
        return lo | hi << 16 | fl << 32

    def node(self, raw, off, pgno):
        """(key, value) of the leaf node at ``off`` of page ``pgno``."""
        lo, hi, flags, ksize = _NODE.unpack_from(raw, off)
        dsize = lo | hi << 16
        kstart = off + _NODE_SIZE
        dstart = kstart + ksize
        if flags & (_F_SUBDATA | _F_DUPDATA):
            raise self.fail("page %d holds a sub-database or duplicate values, which a Datum "
                            "database does not have" % pgno)
        if not flags & _F_BIGDATA:
            if dstart + dsize > self.psize:
                raise self.fail("page %d is damaged (an entry of %d + %d bytes at offset %d "
                                "runs past the page)" % (pgno, ksize, dsize, off))
            return raw[kstart:dstart], raw[dstart:dstart + dsize]
        if dstart + 8 > self.psize:
            raise self.fail("page %d is damaged (an entry at offset %d runs past the page)"
                            % (pgno, off))
        key = raw[kstart:dstart]
        opg = struct.unpack_from("<Q", raw, dstart)[0]
        if not 2 <= opg <= self.last_pgno:
            raise self.fail("page %d is damaged (the value of key %s is on page %d, outside "
                            "pages 2..%d)" % (pgno, key_str(key), opg, self.last_pgno))
        head = os.pread(self.fd, _PAGE_HEADER_SIZE, opg * self.psize)
        if len(head) < _PAGE_HEADER_SIZE:
            raise self.fail("the file ends inside page %d" % opg)
        number, _, oflags, _, _ = _PAGE_HEADER.unpack_from(head, 0)
        npages = struct.unpack_from("<I", head, 12)[0]
        if (number != opg or oflags & _P_TYPES != _P_OVERFLOW or npages < 1
                or opg + npages - 1 > self.last_pgno
                or dsize > npages * self.psize - _PAGE_HEADER_SIZE):
            raise self.fail("page %d (the value of key %s, %d bytes) is damaged"
                            % (opg, key_str(key), dsize))
        value = os.pread(self.fd, dsize, opg * self.psize + _PAGE_HEADER_SIZE)
        if len(value) < dsize:
            raise self.fail("the file ends inside the value of key %s" % key_str(key))
        return key, value


class _FileCursor:
    """Walks the B-tree of an ``_LMDBFile`` in key order: a stack of (page, offsets, index)
    from the root to the current leaf."""

    def __init__(self, f):
        self._f = f
        self.seek_to_first()

    def _descend(self, pgno, level):
        f = self._f
        while True:
            if level > f.depth or len(self._stack) >= _MAX_DEPTH:
                raise f.fail("the tree is deeper than the meta page's depth %d" % f.depth)
            leaf = level == f.depth
            raw, offs = f.page(pgno, leaf)
            self._stack.append([pgno, raw, offs, 0])
            if leaf:
                return
            pgno = f.child(raw, offs[0], pgno)
            level += 1

    def _settle(self):
        """Move up and right past exhausted pages until the top leaf entry exists (or the end)."""
        f = self._f
        stack = self._stack
        while stack and stack[-1][3] >= len(stack[-1][2]):
            stack.pop()
            if not stack:
                break
            top = stack[-1]
            top[3] += 1
            if top[3] < len(top[2]):
                self._descend(f.child(top[1], top[2][top[3]], top[0]), len(stack) + 1)
        self._kv = None
        if stack:
            pgno, raw, offs, i = stack[-1]
            self._kv = f.node(raw, offs[i], pgno)

    def seek_to_first(self):
        f = self._f
        self._stack = []
        self._kv = None
        f.context = " (reading the first record)"
        if f.root != _INVALID_PGNO:
            self._descend(f.root, 1)
            self._settle()

    def next(self):
        if self._stack:
            self._f.context = " (reading the record after key %s)" % key_str(self._kv[0])
            self._stack[-1][3] += 1
            self._settle()

    def valid(self):
        return self._kv is not None

    def key(self):
        return self._kv[0]

    def value(self):
        return self._kv[1]


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
        self._error = error

    def cursor(self):
        return _LevelDBCursor(self.db, self)

    def _fail(self, msg):
        return self._error("LevelDB '%s': %s", self.source, msg)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


class _LevelDBCursor:
    """A plyvel iterator; its errors (a damaged table file, a checksum mismatch) become
    DataErrors naming the database and the last key read."""

    def __init__(self, db, owner=None):
        self._db = db
        self._owner = owner
        self._kv = None
        self.seek_to_first()

    def seek_to_first(self):
        self._kv = None
        self._it = self._call(self._db.iterator)
        self._advance()

    def _call(self, fn):
        try:
            return fn()
        except StopIteration:
            raise
        except Exception as e:
            if self._owner is None:
                raise
            after = " after key %s" % key_str(self._kv[0]) if self._kv else ""
            raise self._owner._fail("reading failed%s: %s: %s"
                                    % (after, type(e).__name__, e)) from None

    def _advance(self):
        try:
            self._kv = self._call(lambda: next(self._it))
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
