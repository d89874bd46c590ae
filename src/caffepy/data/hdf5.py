"""HDF5 files as a data source (Caffe's HDF5Data reading).

A text file lists .h5 files, one name per whitespace-separated token. Each file holds one
dataset per top of the layer, named after the top, with the same number of rows (axis 0).
Rows are served in order, or, with ``shuffle``, the files in a random order and the rows of
each file in a random order, drawn again at every pass (Caffe's permutations of files and
rows, from caffepy's seeded random stream).

Caffe reads a whole file into memory. caffepy does so for a file whose datasets take at most
``WHOLE_FILE_BYTES`` as float32 (and an eighth of the blob limit, caffepy.size_limits); a
larger file stays open and only the rows of each batch are read, so a file larger than memory,
or a dataset whose header claims more rows than it holds, costs one batch of memory. Datasets
are checked when a file is opened: present, numeric, at least one axis, the same number of
rows, and the same row shape in every file.
"""
import os

import numpy as np

from .. import backend
from ..size_limits import check_bytes, max_blob_bytes
from .sources import dims_str, read_text


def load_h5py(error):
    """The h5py module (imported when first needed: it is slow to import)."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise error("needs the h5py package (pip install h5py)") from None
    return h5py


WHOLE_FILE_BYTES = 256 << 20


class HDF5ListSource:
    """The rows of the HDF5 files listed in ``source``, datasets ``names``, file after file,
    wrapping around at the end of the last file.

    ``share`` = (count, rank) keeps only the rows at running offsets rank, rank+count, ...
    (Caffe's HDF5DataLayer Skip() with solver_count/solver_rank; caffepy.distributed)."""
    share = None
    offset = 0

    def __init__(self, source, names, shuffle, error):
        self._error = error
        self._h5py = load_h5py(error)
        self.source = source
        self.names = list(names)
        self.shuffle = bool(shuffle)
        self._file = None
        self.datasets = []
        self.arrays = None
        self.filenames = read_text(source, "source file", error).split()
        if not self.filenames:
            raise error("must have at least 1 HDF5 filename listed in '%s'", source)
        self.file_permutation = np.arange(len(self.filenames))
        if self.shuffle:
            self.file_permutation = backend.rng().permutation(len(self.filenames))
        self.current_file = 0
        self.row_shapes = None
        self._load(self.filenames[self.file_permutation[0]])
        self.row_shapes = [ds.shape[1:] for ds in self.datasets]
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
        try:
            datasets = self._check(f, filename)
        except BaseException:
            f.close()
            raise
        self.close()
        self._file = f
        self.current_filename = filename
        self.datasets = datasets
        self.rows = datasets[0].shape[0]
        nbytes = 0
        for ds in datasets:
            n = 4
            for d in ds.shape:
                n *= d
            nbytes += n
        self.arrays = None
        if nbytes <= min(WHOLE_FILE_BYTES, max_blob_bytes()[0] // 8):
            self.arrays = [self._read(name, ds, slice(None), "all rows")
                           for name, ds in zip(self.names, datasets)]
        # Rows in order need no index; with shuffle, a permutation of every row of the file
        # (as Caffe's), 8 bytes a row, checked against the limit first.
        self.data_permutation = None
        if self.shuffle:
            check_bytes(self.rows * 8, "shuffling HDF5 file '%s' (listed in '%s'): the "
                        "permutation of its %d rows (8 bytes a row)"
                        % (filename, self.source, self.rows), lambda msg: error("%s", msg))
            self.data_permutation = backend.rng().permutation(self.rows)

    def _check(self, f, filename):
        """The datasets of the open file ``f``, checked (nothing is read yet)."""
        h5py, error = self._h5py, self._error
        datasets = []
        for name in self.names:
            try:
                ds = f[name] if name in f else None
            except (OSError, KeyError, ValueError) as e:
                raise error("HDF5 file '%s': cannot open dataset '%s': %s", filename, name,
                            e) from None
            if not isinstance(ds, h5py.Dataset):
                raise error("HDF5 file '%s' has no dataset '%s' (the dataset read into "
                            "top '%s'; it has: %s)", filename, name, name,
                            ", ".join(sorted(f.keys())) or "nothing")
            if ds.dtype.kind not in "fiu":
                raise error("dataset '%s' in '%s' has unsupported type %s (need float or "
                            "integer data)", name, filename, ds.dtype)
            if ds.ndim < 1:
                raise error("dataset '%s' in '%s' must have at least 1 axis", name, filename)
            datasets.append(ds)
        num = datasets[0].shape[0]
        for name, ds in zip(self.names, datasets):
            if ds.shape[0] != num:
                raise error("datasets in '%s' must have the same number of rows: '%s' has %d, "
                            "'%s' has %d", filename, self.names[0], num, name, ds.shape[0])
        if num == 0:
            raise error("HDF5 file '%s' has no rows", filename)
        if self.row_shapes is not None:
            for name, ds, shp in zip(self.names, datasets, self.row_shapes):
                if ds.shape[1:] != shp:
                    raise error("dataset '%s' in '%s' has rows of shape %s, but the first file "
                                "had %s: every file must have the same row shape", name,
                                filename, dims_str(ds.shape[1:]), dims_str(shp))
        return datasets

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

    def _read(self, name, ds, sel, what):
        try:
            return np.asarray(ds[sel], dtype=np.float32)
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            raise self._error("HDF5 file '%s': cannot read %s of dataset '%s': %s",
                              self.current_filename, what, name, e) from None

    def _rows(self, i, cur, k, step=1):
        """Rows ``cur``, ``cur+step``, ... (``k`` of them) of the pass (of the permutation
        with shuffle) of dataset ``i``, float32."""
        end = cur + (k - 1) * step + 1
        if self.arrays is not None:
            arr = self.arrays[i]
            return (arr[self.data_permutation[cur:end:step]] if self.shuffle
                    else arr[cur:end:step])
        name, ds = self.names[i], self.datasets[i]
        what = "rows %d..%d" % (cur, end - 1) + (" (every %d-th)" % step if step > 1 else "")
        if not self.shuffle:
            return self._read(name, ds, slice(cur, end, step), what)
        sel = self.data_permutation[cur:end:step]
        order = np.argsort(sel, kind="stable")
        rows = self._read(name, ds, sel[order], what)       # h5py reads rows in increasing order
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def read_batch(self, outs):
        """Fill the arrays ``outs`` (one per dataset, NumPy or CuPy, rows on axis 0) with the
        next ``len(outs[0])`` rows."""
        b = outs[0].shape[0]
        filled = 0
        while filled < b:
            cur = self.current_row
            step = 1
            if self.share is not None:
                # skip to this solver's next row; rows of other solvers still count
                step, rank = self.share
                first = cur + (rank - self.offset) % step
                if first >= self.rows:
                    self.offset += self.rows - cur
                    self.current_row = self.rows
                    self._next_file()
                    continue
                k = min(b - filled, (self.rows - 1 - first) // step + 1)
                consumed = first + (k - 1) * step + 1 - cur
                cur = first
            else:
                k = min(b - filled, self.rows - cur)
                consumed = k
            for i, out in enumerate(outs):
                out[filled:filled + k] = backend.array_module(out).asarray(
                    self._rows(i, cur, k, step))
            filled += k
            self.current_row += consumed
            self.offset += consumed
            if self.current_row == self.rows:
                self._next_file()

    def close(self):
        """Close the current file (the next read opens it again only through _load)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
            self.datasets = []
            self.arrays = None
