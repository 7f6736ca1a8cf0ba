"""A strict stand-in for CuPy on the host, to run gpulin's device branches (``xp is not np``) here.

Like CuPy arrays, :class:`DeviceArray` refuses implicit conversion to NumPy (``np.asarray``, and
so SciPy / LAPACK wrappers and Numba kernels, raise ``TypeError``) and refuses NumPy arrays as
operands of its arithmetic; results leave only through ``.get()`` (what ``gpulin._backend.to_host``
calls, since the class lives in a module whose name starts with "cupy"). :data:`xp` is the
matching array namespace: NumPy's functions on unwrapped arrays, with ``asarray``-like functions
accepting host arrays (a host-to-device copy) and every other function refusing them.

Only the dense parts are covered: an operator over a dense matrix (:class:`DenseOperator`) stands
in for the sparse one, whose device code is cupyx's.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_TRANSFERS = {"asarray", "array", "ascontiguousarray", "asfortranarray"}


def _unwrap(x: Any, allow_host: bool = False) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray) and not allow_host:
        raise TypeError("Unsupported type <class 'numpy.ndarray'> (a host array mixed with device arrays)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, allow_host) for v in x)
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class DeviceArray(NDArrayOperatorsMixin):
    """A NumPy array that behaves like a CuPy one at the host/device boundary."""

    __module__ = "cupy_strict_stand_in"  # gpulin._backend.is_gpu_array: a CuPy-like object

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # -- the boundary -------------------------------------------------------------------------
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (strict device array); use .get()")

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        result = getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs)
        if "out" in kwargs and method == "__call__":  # in-place (a -= b) or out=: the same buffers
            return _wrap_out(kwargs["out"], result)
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return _wrap(func(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    # -- ndarray surface used by gpulin -------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    flags = property(lambda self: self._a.flags)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_unwrap(key)] = _unwrap(value, allow_host=True)

    def __iter__(self) -> Any:
        return (DeviceArray(row) for row in self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    def astype(self, dtype: Any, copy: bool = True, **kwargs: Any) -> "DeviceArray":
        return DeviceArray(self._a.astype(dtype, copy=copy, **kwargs))

    def copy(self) -> "DeviceArray":
        return DeviceArray(self._a.copy())

    def item(self) -> Any:
        return self._a.item()

    def __getattr__(self, name: str) -> Any:  # reductions and shape methods: sum, max, reshape, ravel, ...
        if name.startswith("__"):  # no __array_interface__ / __array_struct__: no back door to NumPy
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **{kk: _unwrap(v) for kk, v in k.items()}))


def _wrap_out(outs: tuple, result: Any) -> Any:
    return DeviceArray(outs[0]) if len(outs) == 1 else tuple(DeviceArray(o) for o in outs)


class _Namespace(types.SimpleNamespace):
    """NumPy's functions (or a submodule's) on device arrays."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self._module = module

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            return _Namespace(attr)
        if not callable(attr) or isinstance(attr, type):  # dtypes (float32), constants
            return attr
        allow_host = name in _TRANSFERS

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrap(a, allow_host) for a in args)
            kwargs = {k: _unwrap(v, allow_host) for k, v in kwargs.items()}
            return _wrap(attr(*args, **kwargs))

        return call


#: The array namespace of :class:`DeviceArray` (``xp is not np``, as with CuPy).
xp = _Namespace(np)


class DenseOperator:
    """The operator interface of :class:`gpulin.implicit.StandardizedOperator` over a dense
    float32 matrix ``A``, on the host (``device=False``, NumPy arrays) or on the strict device."""

    def __init__(self, A: np.ndarray, backend: Any) -> None:
        self.A = np.ascontiguousarray(A, dtype=np.float32)
        self.backend = backend
        self.shape = A.shape
        self._dev = backend.xp is not np

    def _in(self, V: Any) -> np.ndarray:
        if self._dev and not isinstance(V, DeviceArray):
            raise TypeError(f"operator on the device got a {type(V).__name__}")
        if not self._dev and not isinstance(V, np.ndarray):
            raise TypeError(f"operator on the host got a {type(V).__name__}")
        return V._a if self._dev else V

    def _ret(self, a: np.ndarray, out: Any = None) -> Any:
        if out is not None:
            self._in(out)[...] = a
            return out
        return DeviceArray(a) if self._dev else a

    def matmat(self, V: Any, out: Any = None) -> Any:
        return self._ret((self.A @ self._in(V)).astype(np.float32), out)

    def rmatmat(self, U: Any) -> Any:
        return self._ret((self.A.T.astype(np.float64) @ self._in(U).astype(np.float64)))

    def matmat_rmatmat(self, Z: Any, out: Any = None) -> tuple[Any, Any]:
        Y = self.matmat(Z, out=out)
        return Y, self.rmatmat(Y)

    def gram(self) -> Any:
        A = self.A.astype(np.float64)
        return self._ret(A.T @ A)

    def gram_cells(self) -> Any:
        A = self.A.astype(np.float64)
        return self._ret(A @ A.T)

    def dense(self, max_bytes: int) -> Any:
        return self._ret(self.A.copy()) if self.A.nbytes <= max_bytes else None

    def total_variance(self) -> float:
        return float(self.A.astype(np.float64).var(axis=0, ddof=1).sum())

    def products_context(self) -> Any:
        return contextlib.nullcontext()
