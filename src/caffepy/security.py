"""What a net definition may do to the machine it runs on (see docs/security.md).

A prototxt is code: a ``Python`` layer imports and runs any module on ``sys.path``, and an
``HDF5Output`` layer writes a file wherever its ``file_name`` points. Two settings bound that:

* **Python layers** are allowed by default (Caffe's behaviour). ``Net(...,
  allow_python_layers=False)``, ``get_solver(..., allow_python_layers=False)``,
  ``caffepy train/test/time --no_python_layers`` or the environment variable
  ``CAFFEPY_SAFE=1`` refuse them: building a net with a Python layer then raises a
  :class:`~caffepy.errors.NetError` naming the layer and its module, before anything is
  imported.
* **HDF5Output** writes only under the current working directory. Further folders are
  allowed with ``CAFFEPY_HDF5_OUTPUT_DIRS`` (folders separated by ``os.pathsep``) or
  ``policy(hdf5_output_dirs=[...])``; with ``CAFFEPY_SAFE=1`` those extra folders are
  ignored. The check resolves symlinks, so a link inside the working directory that points
  outside it is refused too.

:func:`policy` sets either for the code in its ``with`` block (per thread and task, through
a context variable); an explicit argument always wins over the environment.
"""
import contextlib
import contextvars
import os

SAFE_ENV = "CAFFEPY_SAFE"
HDF5_OUTPUT_DIRS_ENV = "CAFFEPY_HDF5_OUTPUT_DIRS"

_allow_python_layers = contextvars.ContextVar("caffepy_allow_python_layers", default=None)
_hdf5_output_dirs = contextvars.ContextVar("caffepy_hdf5_output_dirs", default=None)


def safe_mode_from_env():
    """Whether ``CAFFEPY_SAFE`` asks for safe mode (set to anything but "", 0, false, no, off)."""
    return os.environ.get(SAFE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def python_layers_allowed():
    """Whether a net built now may hold a Python layer."""
    value = _allow_python_layers.get()
    if value is None:
        return not safe_mode_from_env()
    return value


def hdf5_output_dirs():
    """The folders an HDF5Output layer built now may write under (absolute, resolved)."""
    dirs = _hdf5_output_dirs.get()
    if dirs is None:
        dirs = []
        if not safe_mode_from_env():
            dirs = [d for d in os.environ.get(HDF5_OUTPUT_DIRS_ENV, "").split(os.pathsep) if d]
    return [os.path.realpath(os.getcwd())] + [os.path.realpath(d) for d in dirs]


def check_output_path(path):
    """None when ``path`` lies under an allowed folder, else the message saying why not."""
    real = os.path.realpath(path)
    dirs = hdf5_output_dirs()
    for d in dirs:
        if real == d or real.startswith(d.rstrip(os.sep) + os.sep):
            return None
    how = ("CAFFEPY_SAFE is set, so only the working directory is allowed"
           if safe_mode_from_env() and _hdf5_output_dirs.get() is None else
           "allow a folder with %s=<folder> (several separated by '%s') or "
           "caffepy.security.policy(hdf5_output_dirs=[...])" % (HDF5_OUTPUT_DIRS_ENV,
                                                                 os.pathsep))
    return ("'%s' resolves to '%s', outside the folders HDF5Output may write under (%s); %s"
            % (path, real, ", ".join("'%s'" % d for d in dirs), how))


@contextlib.contextmanager
def policy(allow_python_layers=None, hdf5_output_dirs=None):
    """Set what nets built inside the block may do; ``None`` leaves a setting as it is."""
    tokens = []
    if allow_python_layers is not None:
        tokens.append((_allow_python_layers, _allow_python_layers.set(bool(allow_python_layers))))
    if hdf5_output_dirs is not None:
        tokens.append((_hdf5_output_dirs, _hdf5_output_dirs.set(
            [os.fspath(d) for d in hdf5_output_dirs])))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


__all__ = ["SAFE_ENV", "HDF5_OUTPUT_DIRS_ENV", "safe_mode_from_env", "python_layers_allowed",
           "hdf5_output_dirs", "check_output_path", "policy"]
