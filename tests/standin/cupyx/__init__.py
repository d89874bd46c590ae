"""cupyx for the stand-in: scatter_add on its device arrays."""
import numpy as _np

import cupy as _cupy


def scatter_add(a, slices, value):
    if not isinstance(a, _cupy.ndarray):
        raise TypeError("scatter_add: a must be a device array")
    _np.add.at(a._a, _cupy._unwrap(slices, "scatter_add", allow_host=True),
               _cupy._unwrap(value, "scatter_add"))
