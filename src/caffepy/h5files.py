"""Reading caffepy's own HDF5 files (.caffemodel.h5, .solverstate.h5) with checks.

Caffe writes these files with plain groups and datasets only. A file that holds anything else
is refused with an error naming the file and the object: an external link (an object stored
in another file, which a file from elsewhere could point at any path on this machine), a soft
link, a dataset whose values live in external raw files or a virtual dataset (values taken
from other files), a group where a dataset belongs or the reverse, and a dataset that is not
of the float or integer class (the classes Caffe's hdf5_load_nd_dataset accepts).
"""
import numpy as np


def open_h5(path, error, what):
    """``path`` opened read-only with h5py; a file h5py cannot open raises ``error`` naming
    it (``what``: the kind of file, for the message)."""
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error("%s: cannot open %s as HDF5: %s" % (path, what, e)) from None


def h5_child(parent, name, where, error, kind=None):
    """The object ``name`` of the group ``parent``, reached through a plain (hard) link;
    ``kind`` "group" or "dataset" requires that kind. ``where`` names the file in messages.
    A missing name raises ``error`` too."""
    import h5py
    full = "%s/%s" % (parent.name.rstrip("/"), name)
    link = parent.get(name, getlink=True)
    if link is None:
        raise error("%s: no %s '%s'" % (where, kind or "object", full))
    if isinstance(link, h5py.ExternalLink):
        raise error("%s: '%s' is an external link (to '%s' in file '%s'); caffepy reads only "
                    "objects stored in the file itself" % (where, full, link.path, link.filename))
    if not isinstance(link, h5py.HardLink):
        raise error("%s: '%s' is a %s, not a plain %s" % (where, full, type(link).__name__,
                                                          kind or "group or dataset"))
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
    for name in group:
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            h5_child(group, name, where, error)      # raises, naming the link


def h5_numbers(dset, where, error, dtype=np.float32):
    """The values of the dataset ``dset`` as a ``dtype`` array of its shape. Refuses a
    dataset that is not of the float or integer class, one stored in external raw files and a
    virtual dataset."""
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
