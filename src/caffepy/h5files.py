"""Reading caffepy's own HDF5 files (.caffemodel.h5, .solverstate.h5) with checks.

Caffe writes these files with plain groups and datasets only. A file that holds anything else
is refused with an error naming the file and the object: an external link (an object stored
in another file, which a file from elsewhere could point at any path on this machine), a soft
link, a dataset whose values live in external raw files or a virtual dataset (values taken
from other files), a group where a dataset belongs or the reverse, and a dataset that is not
of the float or integer class (the classes Caffe's hdf5_load_nd_dataset accepts).

A file whose structure is damaged (an overwritten local heap, symbol table or B-tree node)
makes HDF5 fail while a group is listed or an object opened or read; h5py raises that as a
RuntimeError, OSError, KeyError, ValueError or TypeError. Every h5py call here runs under
:func:`h5_reading`, which turns those into ``error`` naming the file and the object.
"""
import contextlib

import numpy as np

from .errors import CaffepyError

# what h5py raises for a failed HDF5 call (RuntimeError where HDF5's error has no closer class)
H5_ERRORS = (RuntimeError, OSError, KeyError, ValueError, TypeError, IndexError)


@contextlib.contextmanager
def h5_reading(where, error, obj):
    """Runs a read of the object ``obj`` (its path in the file) of the HDF5 file ``where``:
    an h5py error raises ``error`` naming both; caffepy's own errors pass unchanged."""
    try:
        yield
    except CaffepyError:
        raise
    except H5_ERRORS as e:
        raise error("%s: cannot read '%s' (a damaged HDF5 file?): %s: %s"
                    % (where, obj, type(e).__name__, e)) from None


def _name(obj, fallback="?"):
    """The path of an h5py object, for messages (``fallback`` where HDF5 cannot tell it)."""
    try:
        return obj.name or fallback
    except H5_ERRORS:
        return fallback


def open_h5(path, error, what):
    """``path`` opened read-only with h5py; a file h5py cannot open raises ``error`` naming
    it (``what``: the kind of file, for the message)."""
    import h5py
    try:
        return h5py.File(path, "r")
    except H5_ERRORS as e:
        raise error("%s: cannot open %s as HDF5: %s" % (path, what, e)) from None


@contextlib.contextmanager
def read_h5(path, error, what):
    """:func:`open_h5` as a context: yields the open file and closes it; a failure of the
    close raises ``error`` too. Errors of the body pass unchanged (each h5py call in it runs
    under :func:`h5_reading`), whatever the close then meets."""
    f = open_h5(path, error, what)
    try:
        yield f
    except BaseException:
        try:
            f.close()
        except H5_ERRORS:
            pass
        raise
    with h5_reading(path, error, "/"):
        f.close()


def h5_names(group, where, error):
    """The names of the entries of ``group`` (a list, in HDF5's order)."""
    with h5_reading(where, error, _name(group)):
        return list(group)


def h5_child(parent, name, where, error, kind=None):
    """The object ``name`` of the group ``parent``, reached through a plain (hard) link;
    ``kind`` "group" or "dataset" requires that kind. ``where`` names the file in messages.
    A missing name raises ``error`` too."""
    import h5py
    full = "%s/%s" % (_name(parent).rstrip("/"), name)
    with h5_reading(where, error, full):
        link = parent.get(name, getlink=True)
    if link is None:
        raise error("%s: no %s '%s'" % (where, kind or "object", full))
    if isinstance(link, h5py.ExternalLink):
        raise error("%s: '%s' is an external link (to '%s' in file '%s'); caffepy reads only "
                    "objects stored in the file itself" % (where, full, link.path, link.filename))
    if not isinstance(link, h5py.HardLink):
        raise error("%s: '%s' is a %s, not a plain %s" % (where, full, type(link).__name__,
                                                          kind or "group or dataset"))
    with h5_reading(where, error, full):
        obj = parent[name]
    if kind == "group" and not isinstance(obj, h5py.Group):
        raise error("%s: '%s' is a dataset, not a group" % (where, full))
    if kind == "dataset" and not isinstance(obj, h5py.Dataset):
        raise error("%s: '%s' is a group, not a dataset" % (where, full))
    return obj


def check_links(group, where, error):
    """Every entry of ``group`` is a plain (hard) link: refuses external and soft links before
    any of them is followed."""
    import h5py
    for name in h5_names(group, where, error):
        with h5_reading(where, error, "%s/%s" % (_name(group).rstrip("/"), name)):
            link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            h5_child(group, name, where, error)      # raises, naming the link


def h5_numbers(dset, where, error, dtype=np.float32):
    """The values of the dataset ``dset`` as a ``dtype`` array of its shape. Refuses a
    dataset that is not of the float or integer class, one stored in external raw files and a
    virtual dataset."""
    with h5_reading(where, error, _name(dset)):
        return _h5_numbers(dset, where, error, dtype)


def _h5_numbers(dset, where, error, dtype):
    if dset.is_virtual:
        raise error("%s: dataset '%s' is a virtual dataset (its values come from other "
                    "files); caffepy reads only values stored in the file itself"
                    % (where, dset.name))
    if dset.external:
        raise error("%s: dataset '%s' keeps its values in external files (%s); caffepy "
                    "reads only values stored in the file itself"
                    % (where, dset.name, ", ".join(str(e[0]) for e in dset.external)))
    if dset.dtype.kind not in "fiu":
        raise error("%s: dataset '%s' has dtype %s; a float or integer dataset is needed"
                    % (where, dset.name, dset.dtype))
    try:
        return np.asarray(dset[()], dtype=dtype)
    except (OSError, ValueError, TypeError) as e:
        raise error("%s: cannot read dataset '%s': %s" % (where, dset.name, e)) from None
