"""Blob: an N-D float32 array pair (data, diff), Caffe's unit of storage.

Like Caffe, a Blob keeps its buffers while a reshape fits in its capacity, so
forward/backward can write into preallocated memory. Storage is a flat buffer; the
``data``/``diff`` accessors hand out shaped views of it, so the storage choice
lives in this one class.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from . import backend
from .size_limits import check_blob, shape_error
from .errors import NetError

MAX_BLOB_AXES = 32


class _Memory:
    """One flat float32 buffer, shareable between blobs (Caffe's SyncedMemory)."""
    __slots__ = ("array",)

    def __init__(self, size, xp):
        self.array = xp.zeros(max(size, 1), dtype=xp.float32)


class Blob:
    def __init__(self, *shape: Any):
        """``Blob(2, 3)``, ``Blob((2, 3))``; ``Blob()`` has no shape yet, ``Blob(())`` is a scalar."""
        explicit = len(shape) == 1 and isinstance(shape[0], (tuple, list))
        if explicit:
            shape = tuple(shape[0])
        self._shape: Tuple[int, ...] = ()
        self._count = 0
        self._capacity = 0             # Caffe's capacity_: grows only; ShareData/ShareDiff keep it
        self._data_mem: Any = None
        self._diff_mem: Any = None
        self._data_view: Any = None
        self._diff_view: Any = None
        # connectivity mask (structured sparsity): multiplies the diff in update(); None = none
        self.mask: Any = None
        if shape or explicit:          # Blob(()) is a scalar blob with count 1, as in Caffe
            self.reshape(shape)

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape: Any) -> None:
        """``reshape(2, 3)`` or ``reshape((2, 3))`` (pycaffe's ``blob.reshape(*shape)``): the
        memory is kept while the new count fits in the capacity."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        # Shape errors are BlobSizeErrors (ValueErrors): the net builder names layer and blob.
        if len(shape) > MAX_BLOB_AXES:
            raise shape_error("blob shape %s has more than %d axes" % (shape, MAX_BLOB_AXES),
                              shape, self)
        for d in shape:
            if d < 0:
                raise shape_error("blob dimensions must be non-negative, got %s" % (shape,),
                                  shape, self)
        count = 1
        for d in shape:
            count *= d
        # Caffe's Blob::Reshape: new (zeroed, unshared) memory only when count > capacity_.
        # capacity_ is the blob's own: sharing another blob's memory does not change it, so
        # a sharer growing past its own capacity gets fresh memory even if the shared buffer
        # is big enough. (The size checks only guard what would be undefined behaviour in Caffe.)
        grow = (self._data_mem is None or count > self._capacity
                or count > self._data_mem.array.size or count > self._diff_mem.array.size)
        if grow:
            check_blob(shape, count, self)     # within memory and the limits; blob unchanged
        self._shape = shape
        self._count = count
        if grow:
            xp = backend.xp()
            self._capacity = count
            self._data_mem = _Memory(count, xp)
            self._diff_mem = _Memory(count, xp)
        self._make_views()

    def reshape_like(self, other: "Blob") -> None:
        self.reshape(other.shape)

    def _make_views(self):
        n = self._count
        self._data_view = self._data_mem.array[:n].reshape(self._shape)
        self._diff_view = self._diff_mem.array[:n].reshape(self._shape)

    @property
    def shape(self) -> Tuple[int, ...]:
        """The dimensions, a tuple (pycaffe's ``blob.shape``)."""
        return self._shape

    @property
    def count(self) -> int:
        """The number of values (the product of the dimensions)."""
        return self._count

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    def canonical_axis(self, axis: int) -> int:
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise IndexError("axis %d out of range for %d-D blob with shape %s" % (axis, n, self._shape))
        return axis + n if axis < 0 else axis

    def count_range(self, start: int, end: Optional[int] = None) -> int:
        end = len(self._shape) if end is None else end
        c = 1
        for d in self._shape[start:end]:
            c *= d
        return c

    def _legacy(self, i):
        # Caffe's LegacyShape(i) for i in 0..3: the i-th axis, or 1 past the last axis.
        if len(self._shape) > 4:
            raise ValueError("legacy num/channels/height/width accessor on a %d-D blob"
                             % len(self._shape))
        return self._shape[i] if i < len(self._shape) else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    # -- data ----------------------------------------------------------------
    @property
    def data(self) -> Any:
        """The values, a writable float32 array of ``shape`` over the blob's memory (as
        pycaffe's ``blob.data``): write into it, ``blob.data[...] = x`` (NumPy's broadcasting
        rules apply). ``blob.data = x`` copies too, but only an ``x`` of exactly ``shape``."""
        return self._data_view

    @data.setter
    def data(self, value):
        self._assign(self._data_view, value, "data")

    @property
    def diff(self) -> Any:
        """The gradient, a writable float32 array of ``shape`` (pycaffe's ``blob.diff``)."""
        return self._diff_view

    @diff.setter
    def diff(self, value):
        self._assign(self._diff_view, value, "diff")

    def _assign(self, view, value, field):
        shape = getattr(value, "shape", None)
        if shape is None:
            shape = backend.to_numpy(value).shape if isinstance(value, (list, tuple)) else ()
        if tuple(shape) != self._shape:
            raise NetError("blob.%s = array of shape %s: the blob's shape is %s; assign "
                           "an array of that shape, write a part with blob.%s[...] = x, or "
                           "reshape the blob first (blob.reshape(*shape), then net.reshape())"
                           % (field, tuple(shape), self._shape, field))
        view[...] = value

    @property
    def _gpu_data_ptr(self) -> int:
        """pycaffe: the device address of the data (GPU mode only)."""
        return self._device_ptr(self._data_mem.array, "_gpu_data_ptr")

    @property
    def _gpu_diff_ptr(self) -> int:
        """pycaffe: the device address of the diff (GPU mode only)."""
        return self._device_ptr(self._diff_mem.array, "_gpu_diff_ptr")

    @staticmethod
    def _device_ptr(array, what):
        ptr = getattr(getattr(array, "data", None), "ptr", None)
        if not isinstance(ptr, int):
            raise backend.DeviceError("Blob.%s: this blob lives in host memory (the net was "
                                      "built in CPU mode)" % what)
        return ptr

    @property
    def flat_data(self) -> Any:
        return self._data_mem.array[:self._count]

    @property
    def flat_diff(self) -> Any:
        return self._diff_mem.array[:self._count]

    def share_data(self, other: "Blob") -> None:
        """Use ``other``'s data memory (the counts must be equal)."""
        if other.count != self._count:
            raise ValueError("share_data: count %d != %d" % (other.count, self._count))
        self._data_mem = other._data_mem
        self._make_views()

    def share_diff(self, other: "Blob") -> None:
        if other.count != self._count:
            raise ValueError("share_diff: count %d != %d" % (other.count, self._count))
        self._diff_mem = other._diff_mem
        self._make_views()

    def shares_data_with(self, other: "Blob") -> bool:
        return self._data_mem is other._data_mem

    def update(self) -> None:
        """data -= diff (Caffe's Blob::Update); with a connectivity mask, the diff is
        multiplied by the mask first, so masked weights never move."""
        diff = self.flat_diff
        if self.mask is not None:
            diff *= self.mask.reshape(-1)
        d = self.flat_data
        d -= diff

    def asum_data(self) -> float:
        return float(abs(self.flat_data).sum())

    def asum_diff(self) -> float:
        return float(abs(self.flat_diff).sum())

    def sumsq_data(self) -> float:
        d = self.flat_data
        return float((d * d).sum())

    def sumsq_diff(self) -> float:
        d = self.flat_diff
        return float((d * d).sum())

    def scale_diff(self, factor: float) -> None:
        d = self.flat_diff
        d *= factor

    def __repr__(self) -> str:
        return "Blob(%s)" % (", ".join(str(d) for d in self._shape))

    def shape_string(self) -> str:
        # Blob::shape_string: each dim followed by a space, then "(count)"; a scalar is "(1)".
        return "".join("%d " % d for d in self._shape) + "(%d)" % self._count
