"""Atomic file writes: every file caffepy saves (weights, solver states, prototxt, databases'
side files) goes through here, so a crash mid-write leaves the old file (or none), never a
truncated one.

How a file is written:

* the bytes go to a new temporary file in the target's folder, named
  ``.<name>.caffepy-<pid>-<random>.tmp`` and created with ``O_CREAT | O_EXCL | O_NOFOLLOW``:
  a file or symlink already lying at that name makes the creation fail (caffepy then picks
  another name), so a planted symlink is never followed and never written through;
* the temporary file is flushed to disk and renamed over the target with ``os.replace``. A
  rename replaces a symlink standing at the target's path by the new file; the file the
  symlink pointed to is left as it was;
* an OSError of the write (a folder that does not exist, no permission, a full disk) is
  raised again as an OSError of the same errno whose ``filename`` is the target, not the
  temporary file, and whose message says why (e.g. that the folder does not exist);
* an exception removes the temporary file. A process that is killed cannot, so the first
  write into a folder (per process) removes the temporary files of caffepy's naming that a
  dead caffepy process left there: those last modified before this process loaded caffepy
  whose writer is no longer running on this machine.
"""
import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import threading
import time

log = logging.getLogger("caffepy")

# When this process loaded caffepy: a leftover temporary file must be older than this.
_STARTED = time.time()

_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)

# caffepy's temporary names, and the naming of releases before this one (".<name>.tmp-<pid>")
_TEMP_NAME = re.compile(r"^\..+\.caffepy-(\d+)-[0-9a-f]{8}\.tmp$", re.S)
_OLD_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$", re.S)
_MAX_BASE = 200           # keeps the temporary name within NAME_MAX (255 bytes)

_cleaned = set()
_cleaned_lock = threading.Lock()


def temp_name(path):
    """A fresh temporary path beside ``path`` (not created)."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, ".%s.caffepy-%d-%s.tmp"
                        % (base[:_MAX_BASE], os.getpid(), secrets.token_hex(4)))


def create_temp(path):
    """Create a new, empty temporary file beside ``path``; returns (its path, open fd)."""
    for _ in range(64):
        tmp = temp_name(path)
        try:
            return tmp, os.open(tmp, _CREATE_FLAGS, 0o666)
        except FileExistsError:
            continue                 # a file or a planted symlink holds that name: another
    raise FileExistsError("cannot create a temporary file beside '%s': every name tried "
                          "was taken" % os.fspath(path))


def _pid_alive(pid):
    """Whether process ``pid`` runs on this machine (False where that cannot be asked)."""
    if os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                  # it exists but belongs to someone else
    return True


def clean_stale_temps(directory, older_than=None):
    """Remove the temporary files of caffepy's naming in ``directory`` that a dead process
    left: last modified before ``older_than`` (default: when this process loaded caffepy)
    and whose writer's pid is not running here. Returns the paths removed."""
    older_than = _STARTED if older_than is None else older_than
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    me = os.getpid()
    for name in names:
        if not name.startswith("."):
            continue
        m = _TEMP_NAME.match(name) or _OLD_TEMP_NAME.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        if pid == me or st.st_mtime >= older_than or _pid_alive(pid):
            continue
        try:
            os.unlink(full)          # unlinks a symlink itself, never its target
        except OSError:
            continue
        removed.append(full)
        log.info("Removed %s, a temporary file left by an interrupted write", full)
    return removed


def _clean_once(directory):
    with _cleaned_lock:
        if directory in _cleaned:
            return
        _cleaned.add(directory)
    clean_stale_temps(directory)


def _fsync_path(path):
    fd = os.open(path, _READ_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory):
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e, path):
    """The OSError ``e`` met while writing ``path``, as an OSError of the same errno naming
    ``path`` (not a temporary file) with the reason: a missing folder is named. An OSError
    without an errno is returned as it is."""
    if e.errno is None:
        return e
    directory = os.path.dirname(os.path.abspath(path))
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(directory):
        reason = "%s (%s)" % (reason, "'%s' is not a folder" % directory
                              if os.path.lexists(directory)
                              else "the folder '%s' does not exist" % directory)
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "%s (cannot create files in the folder '%s')" % (reason, directory)
    return OSError(e.errno, reason, path)


@contextlib.contextmanager
def _atomic(path):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _clean_once(directory)
    try:
        tmp, fd = create_temp(path)
    except OSError as e:
        raise write_error(e, path) from None
    try:
        yield tmp, fd
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename in (tmp, None):
            raise write_error(e, path) from None
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_path(path):
    """Yield the path of a new, empty temporary file beside ``path``; on success flush it and
    rename it over ``path``.

    Whatever the body writes to the temporary path (h5py files, several writes) becomes
    ``path`` in one rename; an exception removes the temporary file.
    """
    with _atomic(path) as (tmp, fd):
        os.close(fd)
        yield tmp


@contextlib.contextmanager
def atomic_open(path):
    """Yield a binary file object open on a new temporary file beside ``path`` (the
    descriptor the exclusive creation returned); on success it becomes ``path``."""
    with _atomic(path) as (tmp, fd):
        with os.fdopen(fd, "wb") as f:
            yield f


def atomic_write(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)
