"""HDF5 files as a data source (Caffe's HDF5Data reading).

A text file lists .h5 files, one name per whitespace-separated token. Each file holds one
dataset per top of the layer, named after the top, with the same number of rows (axis 0); a
file is read whole, as float32. Rows are served in order, or, with ``shuffle``, the files in a
random order and the rows of each file in a random order, drawn again at every pass (Caffe's
permutations of files and rows, from caffepy's seeded random stream).
"""
import os

import numpy as np

from .. import backend
from .sources import dims_str, read_text


def load_h5py(error):
    """The h5py module (imported when first needed: it is slow to import)."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise error("needs the h5py package (pip install h5py)") from None
    return h5py


class HDF5ListSource:
    """The rows of the HDF5 files listed in ``source``, datasets ``names``, file after file,
    wrapping around at the end of the last file."""

    def __init__(self, source, names, shuffle, error):
        self._error = error
        self._h5py = load_h5py(error)
        self.source = source
        self.names = list(names)
        self.shuffle = bool(shuffle)
        self.filenames = read_text(source, "source file", error).split()
        if not self.filenames:
            raise error("must have at least 1 HDF5 filename listed in '%s'", source)
        self.file_permutation = np.arange(len(self.filenames))
        if self.shuffle:
            self.file_permutation = backend.rng().permutation(len(self.filenames))
        self.current_file = 0
        self.row_shapes = None
        self._load(self.filenames[self.file_permutation[0]])
        self.row_shapes = [arr.shape[1:] for arr in self.file_data]
        self.current_row = 0

    def _load(self, filename):
        h5py, error = self._h5py, self._error
        if not os.path.isfile(filename):
            raise error("failed opening HDF5 file '%s' (listed in '%s'): no such file",
                        filename, self.source)
        try:
            f = h5py.File(filename, "r")
        except OSError as e:
            raise error("failed opening HDF5 file '%s' (listed in '%s'): %s",
                        filename, self.source, e) from None
        arrays = []
        with f:
            for name in self.names:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise error("HDF5 file '%s' has no dataset '%s' (the dataset read into "
                                "top '%s'; it has: %s)", filename, name, name,
                                ", ".join(sorted(f.keys())) or "nothing")
                ds = f[name]
                if ds.dtype.kind not in "fiu":
                    raise error("dataset '%s' in '%s' has unsupported type %s (need float or "
                                "integer data)", name, filename, ds.dtype)
                if ds.ndim < 1:
                    raise error("dataset '%s' in '%s' must have at least 1 axis", name, filename)
                arrays.append(np.asarray(ds[()], dtype=np.float32))
        num = arrays[0].shape[0]
        for name, arr in zip(self.names, arrays):
            if arr.shape[0] != num:
                raise error("datasets in '%s' must have the same number of rows: '%s' has %d, "
                            "'%s' has %d", filename, self.names[0], num, name, arr.shape[0])
        if num == 0:
            raise error("HDF5 file '%s' has no rows", filename)
        if self.row_shapes is not None:
            for name, arr, shp in zip(self.names, arrays, self.row_shapes):
                if arr.shape[1:] != shp:
                    raise error("dataset '%s' in '%s' has rows of shape %s, but the first file "
                                "had %s: every file must have the same row shape", name,
                                filename, dims_str(arr.shape[1:]), dims_str(shp))
        self.file_data = arrays
        self.current_filename = filename
        self.data_permutation = np.arange(num)
        if self.shuffle:
            self.data_permutation = backend.rng().permutation(num)

    def _next_file(self):
        """Caffe's Next() at the end of the current file's rows."""
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    backend.rng().shuffle(self.file_permutation)
            self._load(self.filenames[self.file_permutation[self.current_file]])
        self.current_row = 0
        if self.shuffle:
            backend.rng().shuffle(self.data_permutation)

    def read_batch(self, outs):
        """Fill the arrays ``outs`` (one per dataset, NumPy or CuPy, rows on axis 0) with the
        next ``len(outs[0])`` rows."""
        b = outs[0].shape[0]
        filled = 0
        while filled < b:
            cur = self.current_row
            rows = self.file_data[0].shape[0]
            k = min(b - filled, rows - cur)
            sel = self.data_permutation[cur:cur + k] if self.shuffle else slice(cur, cur + k)
            for out, arr in zip(outs, self.file_data):
                out[filled:filled + k] = backend.array_module(out).asarray(arr[sel])
            filled += k
            self.current_row += k
            if self.current_row == rows:
                self._next_file()
