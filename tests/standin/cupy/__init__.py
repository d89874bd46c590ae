"""A strict, NumPy-backed stand-in for CuPy, to run caffepy's GPU code path without a GPU.

Only for the tests (``CAFFEPY_TEST_MODE=gpu CAFFEPY_CUPY_STANDIN=1``; tests/conftest.py puts
this folder first on ``sys.path``). The arrays live in host memory, so nothing here says
anything about speed or about the device's arithmetic. What it does check is CuPy's rules
about the host/device boundary, which code written against NumPy breaks most often:

* a device array never turns into a NumPy array implicitly: ``numpy.asarray(a)``, a NumPy
  function or ufunc given a device array and a NumPy array, or a device array mixed with a
  NumPy array in an operator raise TypeError, as CuPy does; ``a.get()`` / ``cupy.asnumpy(a)``
  are the way back to the host;
* CuPy's functions take device arrays and scalars, not NumPy arrays (except
  ``cupy.asarray``/``cupy.array``, the way onto the device, and ``a[:] = numpy_array``, which
  CuPy accepts for a whole-array copy);
* reductions return 0-d device arrays, not NumPy scalars.

NumPy functions and ufuncs applied to device arrays alone dispatch to this module, as CuPy's
``__array_ufunc__`` and ``__array_function__`` do. The module offers the functions caffepy
calls; an attribute it does not know raises AttributeError rather than falling back to NumPy
silently.
"""
import numpy as _np

__version__ = "14.2.0+numpy-standin"

# dtypes and constants, as CuPy re-exports them from NumPy
from numpy import (bool_, float16, float32, float64, int8, int16, int32, int64, uint8,  # noqa
                   uint16, uint32, uint64, newaxis, inf, nan, pi, e)

from . import cuda, random  # noqa: E402,F401


def _refuse(what):
    raise TypeError("Unsupported type <class 'numpy.ndarray'> (%s): a NumPy array cannot be "
                    "mixed with device arrays; move it with cupy.asarray() first" % what)


def _unwrap(x, what, allow_host=False):
    """The NumPy array behind a device array; scalars, dtypes, slices and other non-arrays
    pass; a NumPy array is refused unless ``allow_host``."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        if allow_host or x.ndim == 0:
            return x
        _refuse(what)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what, allow_host) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, what, allow_host) for k, v in x.items()}
    return x


def _wrap(x):
    """Device arrays for NumPy results (0-d ones too: CuPy's reductions give 0-d arrays)."""
    if isinstance(x, _np.ndarray):
        return _from(x)
    if isinstance(x, _np.generic):
        return _from(_np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _from(a):
    obj = ndarray.__new__(ndarray)
    obj._a = a if isinstance(a, _np.ndarray) else _np.asarray(a)
    return obj


def _call(fn, name, args, kwargs):
    return _wrap(fn(*_unwrap(args, name), **_unwrap(kwargs, name)))


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


def _binary(name):
    op = getattr(_np.ndarray, name)

    def method(self, other):
        if isinstance(other, _np.ndarray) and not isinstance(other, ndarray) and other.ndim:
            _refuse("operator %s" % name)
        return _wrap(op(self._a, _unwrap(other, name)))
    method.__name__ = name
    return method


def _inplace(name):
    op = getattr(_np.ndarray, name)

    def method(self, other):
        if isinstance(other, _np.ndarray) and other.ndim:
            _refuse("operator %s" % name)
        op(self._a, _unwrap(other, name))
        return self
    method.__name__ = name
    return method


class _MemoryPointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = int(ptr)


class ndarray:
    """A device array: a NumPy array that refuses to meet NumPy arrays (see the module)."""
    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = _np.empty(shape, dtype=dtype, order=order)

    # -- the host/device boundary ---------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    @property
    def data(self):
        """CuPy's MemoryPointer of the array: here only its ``ptr``, the address of the host
        memory that stands in for the device's."""
        return _MemoryPointer(self._a.ctypes.data)

    def get(self, stream=None, order="C", out=None):
        if out is not None:
            out[...] = self._a
            return out
        return _np.array(self._a, order=order, copy=True)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in inputs + tuple(kwargs.get("out", ())):
            if isinstance(x, _np.ndarray) and not isinstance(x, ndarray) and x.ndim:
                return NotImplemented
        fn = getattr(ufunc, method)
        out = kwargs.get("out")
        res = fn(*_unwrap(inputs, ufunc.__name__), **_unwrap(kwargs, ufunc.__name__))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func, types, args, kwargs):
        mine = globals().get(func.__name__)
        if mine is None or not callable(mine):
            return NotImplemented
        return mine(*args, **kwargs)

    # -- attributes -----------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: _from(self._a.T))
    base = property(lambda self: None if self._a.base is None else _wrap(self._a.base))
    device = property(lambda self: cuda.Device(0))

    def __getattr__(self, name):
        if name.startswith("__"):
            # never NumPy's __array_interface__ / __array_struct__: they would hand the host
            # memory to numpy.asarray behind __array__'s back
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            return _call(attr, name, args, kwargs)
        return method

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return "array(%r) (stand-in device array)" % (self._a,)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "indexing", allow_host=True)])

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray) and not isinstance(value, ndarray) and value.ndim:
            # CuPy copies a host array only into the whole array (a[:] = host)
            if not (key == slice(None) and value.shape == self._a.shape):
                _refuse("assignment of a NumPy array to a part of a device array")
            self._a[...] = value
            return
        self._a[_unwrap(key, "indexing", allow_host=True)] = _unwrap(value, "assignment")

    def __neg__(self):
        return _from(-self._a)

    def __pos__(self):
        return _from(+self._a)

    def __abs__(self):
        return _from(_np.absolute(self._a))       # (the builtin abs is this module's here)

    def __invert__(self):
        return _from(~self._a)

    def __copy__(self):
        return _from(self._a.copy())

    def __deepcopy__(self, memo):
        return _from(self._a.copy())

    def __reduce__(self):
        raise TypeError("a stand-in device array is not pickled (CuPy pickles through the "
                        "host; call .get() first)")


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
              "__rmod__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__and__",
              "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lt__", "__le__",
              "__gt__", "__ge__", "__eq__", "__ne__", "__lshift__", "__rshift__"):
    setattr(ndarray, _name, _binary(_name))
for _name in ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
              "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__"):
    setattr(ndarray, _name, _inplace(_name))
ndarray.__hash__ = None


# -- onto and off the device -------------------------------------------------------------------

def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else _from(a._a.astype(dtype))
    return _from(_np.array(_unwrap(a, "asarray", allow_host=True), dtype=dtype, order=order,
                           copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    return _from(_np.array(_unwrap(a, "array", allow_host=True), dtype=dtype, copy=True,
                           order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        _refuse("ascontiguousarray")
    return _from(_np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    import builtins
    import sys
    return (sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args)
            else _np)


# -- everything else: NumPy's function of the same name, on device arrays only -------------------

_FUNCTIONS = (
    "empty", "zeros", "ones", "full", "arange", "linspace", "eye", "identity",
    "empty_like", "zeros_like", "ones_like", "full_like", "copyto", "copy",
    "add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power",
    "negative", "reciprocal", "maximum", "minimum", "fmax", "fmin", "abs", "absolute", "sign",
    "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "square", "tanh", "sinh", "cosh",
    "sin", "cos", "arctan", "floor", "ceil", "rint", "round", "around", "clip", "fabs",
    "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "signbit",
    "sum", "prod", "mean", "var", "std", "max", "min", "amax", "amin", "nanmax", "nanmin",
    "argmax", "argmin", "argsort", "sort", "cumsum", "cumprod", "all", "any", "count_nonzero",
    "dot", "vdot", "matmul", "inner", "outer", "tensordot", "einsum",
    "where", "nonzero", "flatnonzero", "take", "take_along_axis", "put", "bincount", "unique",
    "reshape", "ravel", "transpose", "swapaxes", "moveaxis", "rollaxis", "expand_dims",
    "squeeze", "broadcast_to", "concatenate", "stack", "vstack", "hstack", "split",
    "array_split", "tile", "repeat", "pad", "flip", "roll", "diag", "tril", "triu",
    "result_type", "can_cast", "shape", "ndim", "size", "isscalar", "may_share_memory",
    "shares_memory", "iinfo", "finfo", "float_power", "hypot", "arctan2", "logaddexp",
)


def _make(name):
    fn = getattr(_np, name)
    if isinstance(fn, _np.ufunc):
        return _UFunc(fn)

    def wrapper(*args, **kwargs):
        return _call(fn, name, args, kwargs)
    wrapper.__name__ = name
    wrapper.__doc__ = "NumPy's %s on the stand-in's device arrays." % name
    return wrapper


class _UFunc:
    """A ufunc on device arrays (out= a device array), with .at/.reduce like CuPy's."""

    def __init__(self, ufunc):
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        res = _call(self._u, self.__name__, args, kwargs)
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return res

    def __getattr__(self, method):
        fn = getattr(self._u, method)
        name = "%s.%s" % (self.__name__, method)

        def wrapper(*args, **kwargs):
            return _call(fn, name, args, kwargs)
        return wrapper


for _name in _FUNCTIONS:
    if hasattr(_np, _name):
        globals()[_name] = _make(_name)


class _Lib:
    class stride_tricks:
        @staticmethod
        def as_strided(x, shape=None, strides=None):
            if not isinstance(x, ndarray):
                _refuse("as_strided")
            return _from(_np.lib.stride_tricks.as_strided(x._a, shape, strides))


lib = _Lib()


dtype = _np.dtype
