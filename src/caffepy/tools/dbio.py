"""Writing new Datum databases for the tools (Caffe's ``db::GetDB(backend)->Open(path, NEW)``).

``new_db(path, backend, what)`` checks the backend name and that ``path`` does not exist yet
(Caffe's db::NEW fails on an existing LMDB directory or LevelDB), and returns a writer of
``caffepy.data.db`` (``LMDBWriter`` or ``LevelDBWriter``) whose ``write(items)`` puts a list of
(key bytes, value bytes) in one transaction (one Caffe ``Commit``). ``progress_bar`` makes an
optional tqdm bar.
"""
import os
import shutil

from ..data.db import LevelDBWriter, LMDBWriter, new_writer  # noqa: F401
from . import ToolError

BACKENDS = ("lmdb", "leveldb")


def check_backend(backend, what="--backend"):
    b = str(backend).lower()
    if b not in BACKENDS:
        raise ToolError("Unknown database backend '%s' for %s (use lmdb or leveldb)"
                        % (backend, what))
    return b


def new_db(path, backend="lmdb", what="--backend", tool="caffepy"):
    """A writer for a new database at ``path`` (which must not exist)."""
    backend = check_backend(backend, what)
    if os.path.lexists(path):
        raise ToolError("the output database '%s' already exists; remove it first or choose "
                        "another path (Caffe's %s does not overwrite either)" % (path, tool))
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ToolError("cannot create '%s': the directory '%s' does not exist" % (path, parent))
    return new_writer(path, backend, _tool_error,
                      "%s %s" % (what, backend) if what.startswith("-")
                      else "the leveldb backend (%s)" % what)


def _tool_error(msg, *args):
    return ToolError(msg % args if args else msg)


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
