"""Writing new Datum databases for the tools (Caffe's ``db::GetDB(backend)->Open(path, NEW)``).

``new_db(path, backend, what)`` checks the backend name and that ``path`` does not exist yet
(Caffe's db::NEW fails on an existing LMDB directory or LevelDB), and returns a writer whose
``write(items)`` puts a list of (key bytes, value bytes) in one transaction (one Caffe
``Commit``).  ``progress_bar`` makes an optional tqdm bar.
"""
import os
import shutil

from . import ToolError

BACKENDS = ("lmdb", "leveldb")


def check_backend(backend, what="--backend"):
    b = str(backend).lower()
    if b not in BACKENDS:
        raise ToolError("Unknown database backend '%s' for %s (use lmdb or leveldb)"
                        % (backend, what))
    return b


class LMDBWriter:
    def __init__(self, path, map_size=1 << 28):
        import lmdb
        self._lmdb = lmdb
        self.path = path
        self.map_size = int(map_size)
        self.env = lmdb.open(path, map_size=self.map_size, subdir=True, lock=True)

    def write(self, items):
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:
                # Caffe's LMDB doubles the map size when a commit does not fit.
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None


class LevelDBWriter:
    def __init__(self, path, what="--backend leveldb"):
        try:
            import plyvel
        except ImportError:
            raise ToolError("%s needs the optional plyvel package (pip install plyvel); "
                            "the lmdb backend needs nothing extra" % what) from None
        self.path = path
        self.db = plyvel.DB(path, create_if_missing=True, error_if_exists=True,
                            write_buffer_size=256 << 20)

    def write(self, items):
        with self.db.write_batch() as wb:
            for k, v in items:
                wb.put(k, v)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


def new_db(path, backend="lmdb", what="--backend", tool="caffepy"):
    """A writer for a new database at ``path`` (which must not exist)."""
    backend = check_backend(backend, what)
    if os.path.lexists(path):
        raise ToolError("the output database '%s' already exists; remove it first or choose "
                        "another path (Caffe's %s does not overwrite either)" % (path, tool))
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ToolError("cannot create '%s': the directory '%s' does not exist" % (path, parent))
    if backend == "lmdb":
        return LMDBWriter(path)
    return LevelDBWriter(path, "%s %s" % (what, backend) if what.startswith("-")
                         else "the leveldb backend (%s)" % what)


def discard(writer):
    """Close ``writer`` and remove its partly written database (after a failure)."""
    try:
        writer.close()
    except Exception:
        pass
    shutil.rmtree(writer.path, ignore_errors=True)


def progress_bar(total, desc, enabled=True, unit="img"):
    """A tqdm bar on a terminal (None when tqdm is missing, disabled or stderr is not a tty)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False)
    if bar.disable:
        bar.close()
        return None
    return bar
