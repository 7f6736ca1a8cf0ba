"""A strict stand-in for CuPy on the host, to run gpulin's device branches (``xp is not np``) here.

Like CuPy arrays, :class:`DeviceArray` refuses implicit conversion to NumPy (``np.asarray``, and
so SciPy / LAPACK wrappers and Numba kernels, raise ``TypeError``) and refuses NumPy arrays as
operands of its arithmetic; results leave only through ``.get()`` (what ``gpulin._backend.to_host``
calls, since the class lives in a module whose name starts with "cupy"). :data:`xp` is the
matching array namespace: NumPy's functions on unwrapped arrays, with ``asarray``-like functions
accepting host arrays (a host-to-device copy) and every other function refusing them. As on a
GPU, reductions give 0-d device arrays (not host scalars), ``xp.empty`` / ``xp.empty_like`` hand
out memory that holds stale values (NaN, the largest integer, True: never zeros), and
``xp.bincount`` takes neither float nor empty input.

:data:`sparse` stands in for ``cupyx.scipy.sparse`` (:class:`DeviceCSR`, :class:`DeviceCSC`):
``.data``/``.indices``/``.indptr`` are :class:`DeviceArray` s, only bool/float32/float64/complex
values are held (integer data raise ``ValueError``, as in cupyx), and only what cupyx's matrices
offer is there (products with device operands, ``.T`` as CSC, row indexing, ``sum``, ``multiply``,
``astype``, ``get``, ...); NumPy/SciPy operands raise ``TypeError``. :data:`special` is
``cupyx.scipy.special``'s (SciPy's ufuncs on device arrays), and :func:`csr_row_sums` /
:func:`csr_rows_to_dense` compute what the CUDA kernels of :mod:`gpulin._gpu_kernels` compute.
``xp.cuda`` and ``xp.get_default_memory_pool`` are minimal fakes (free memory, stream
synchronization, the pool gpulin frees on running out of memory).

What it does not model: asynchrony, device memory and its exhaustion (``memGetInfo`` reports
:data:`FREE_BYTES`; :class:`OutOfMemoryError` is raised only where a test injects it), cupyx's
COO/DIA/BSR formats and its sparse arithmetic beyond products, ``multiply`` and ``sum``, the
rounding of cuSPARSE / cuBLAS / cuSOLVER (everything runs through NumPy/SciPy here), NumPy
functions that CuPy lacks (``xp`` offers all of NumPy's; the names gpulin uses all exist in CuPy),
the CUDA kernels themselves (their twins compute the same thing; ``tests/test_gpu_kernels.py``
checks the kernels on a GPU), and CuPy's acceptance of host index arrays in ``a[idx]`` (refused
here for dense arrays; accepted for sparse ones, as cupyx copies them over).

:class:`DenseOperator` is an operator over a dense matrix for the PCA's device branches alone.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import numpy as np
import scipy.sparse
import scipy.special
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
    if isinstance(x, np.generic):  # CuPy's reductions and scalar indexing give 0-d device arrays
        return DeviceArray(np.asarray(x))
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

    def __format__(self, spec: str) -> str:  # CuPy formats a copy on the host
        return format(self._a, spec)

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


def _poisoned(a: np.ndarray) -> DeviceArray:
    """An "uninitialized" array as CuPy's memory pool hands them out: holding what was stored there
    before (NaN, the largest integer, True), never the zeros a fresh host page holds."""
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    elif a.dtype.kind == "b":
        a.fill(True)
    return DeviceArray(a)


def _bincount(x: DeviceArray, weights: Any = None, minlength: int = 0) -> DeviceArray:
    """CuPy's ``bincount``: integer input only, and none that is empty (it takes the input's max)."""
    if x.dtype.kind not in "iub":
        raise TypeError("x must be int array")
    if x.size == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    return DeviceArray(np.bincount(_unwrap(x), weights=_unwrap(weights), minlength=minlength))


xp.empty = lambda *args, **kwargs: _poisoned(np.empty(*_unwrap(args), **_unwrap(kwargs)))
xp.empty_like = lambda a, *args, **kwargs: _poisoned(np.empty_like(_unwrap(a), *args, **kwargs))
xp.bincount = _bincount


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


# -- CuPy-only APIs gpulin calls on ``xp`` --------------------------------------------------------
#: What ``xp.cuda.runtime.memGetInfo()`` reports as free (a test may change it to size tiles/blocks).
FREE_BYTES = 8 << 30


class _Stream:
    def synchronize(self) -> None:  # the stand-in computes synchronously
        pass


class _MemoryPool:
    """CuPy's default memory pool: nothing cached here; counts the calls that free it."""

    def __init__(self) -> None:
        self.frees = 0

    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        self.frees += 1


class OutOfMemoryError(MemoryError):
    """``cupy.cuda.memory.OutOfMemoryError`` (a ``MemoryError`` from a module named cupy...)."""

    __module__ = "cupy_strict_stand_in.cuda.memory"


_POOL = _MemoryPool()
xp.cuda = types.SimpleNamespace(
    # FREE_BYTES is read at each call, so a test can monkeypatch it
    runtime=types.SimpleNamespace(memGetInfo=lambda: (FREE_BYTES, 80 << 30)),
    get_current_stream=_Stream,
    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
)
xp.get_default_memory_pool = lambda: _POOL


#: ``cupyx.scipy.special``: SciPy's ufuncs on device arrays (host arrays refused).
special = _Namespace(scipy.special)


# -- cupyx.scipy.sparse ---------------------------------------------------------------------------
def _check_sparse_dtype(dtype: Any) -> np.dtype:
    """cupyx's rule: sparse matrices hold bool, float32, float64, complex64 or complex128 only."""
    dtype = np.dtype(dtype)
    if dtype.char not in "?fdFD":
        raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
    return dtype


def _device_vector(x: Any, what: str) -> DeviceArray:
    if not isinstance(x, DeviceArray):
        raise TypeError(f"{what} must be a device array, got {type(x).__name__} (move it to the device first)")
    if x.ndim != 1:
        raise ValueError("data, indices, and indptr should be 1-D")
    return x


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, (int, np.integer)) for v in x)


class _DeviceCompressed:
    """A cupyx compressed sparse matrix: device arrays, SciPy's arithmetic on their buffers."""

    __module__ = "cupyx_strict_stand_in"  # gpulin._backend.is_gpu_array: a cupyx-like object
    __array_ufunc__ = None  # NumPy operators defer to this class, which refuses NumPy operands
    format = ""
    _host_class: Any = None

    def __init__(self, arg1: Any, shape: tuple[int, int] | None = None, dtype: Any = None, copy: bool = False) -> None:
        if isinstance(arg1, _DeviceCompressed):
            src = arg1.asformat(self.format)
            data, indices, indptr = src.data, src.indices, src.indptr
            copy = copy and src is arg1  # a format conversion made new arrays already
            shape = arg1.shape if shape is None else shape
        elif scipy.sparse.issparse(arg1):  # cupyx's host-to-device copy
            host = arg1.asformat(self.format)
            _check_sparse_dtype(host.dtype if dtype is None else dtype)
            data, indices, indptr = (DeviceArray(np.array(a)) for a in (host.data, host.indices, host.indptr))
            copy, shape = False, arg1.shape
        elif _is_shape(arg1):
            major = arg1[0] if self.format == "csr" else arg1[1]
            data = DeviceArray(np.zeros(0, dtype=dtype or np.float64))
            indices, indptr = DeviceArray(np.zeros(0, np.int32)), DeviceArray(np.zeros(major + 1, np.int32))
            shape = tuple(int(v) for v in arg1)
        elif isinstance(arg1, tuple) and len(arg1) == 2:  # (data, (row, col)): duplicates summed
            values, (row, col) = arg1
            values, row, col = (_device_vector(a, n) for a, n in ((values, "data"), (row, "row"), (col, "col")))
            host = scipy.sparse.coo_matrix((values._a, (row._a, col._a)), shape=shape).asformat(self.format)
            data, indices, indptr = DeviceArray(host.data), DeviceArray(host.indices), DeviceArray(host.indptr)
            shape = host.shape
        elif isinstance(arg1, tuple) and len(arg1) == 3:
            data, indices, indptr = (_device_vector(a, n) for a, n in zip(arg1, ("data", "indices", "indptr")))
            if len(data) != len(indices):
                raise ValueError("indices and data should have the same size")
        elif isinstance(arg1, DeviceArray):  # dense on the device
            host = self._host_class(arg1._a)
            data, indices, indptr = DeviceArray(host.data), DeviceArray(host.indices), DeviceArray(host.indptr)
            copy, shape = False, host.shape
        else:
            raise TypeError(f"Unsupported initializer {type(arg1).__name__} for a device sparse matrix")
        dtype = _check_sparse_dtype(data.dtype if dtype is None else dtype)
        self.data = data.astype(dtype, copy=copy)
        # cupyx keeps int32 indices while the values fit (every matrix of these tests)
        self.indices = indices.astype(np.int32, copy=copy)
        self.indptr = indptr.astype(np.int32, copy=copy)
        if shape is None:
            minor = int(self.indices._a.max()) + 1 if self.nnz else 0
            shape = (len(self.indptr) - 1, minor) if self.format == "csr" else (minor, len(self.indptr) - 1)
        self._shape = (int(shape[0]), int(shape[1]))
        major = self._shape[0] if self.format == "csr" else self._shape[1]
        if len(self.indptr) != major + 1:
            raise ValueError(f"index pointer size ({len(self.indptr)}) should be ({major + 1})")
        self._canonical: bool | None = None

    # -- SciPy views of the device buffers (the stand-in's arithmetic) -----------------------------
    def _host(self) -> Any:
        """A SciPy matrix over this matrix's buffers, without copying (nor SciPy's format checks)."""
        m = self._host_class(self._shape, dtype=self.dtype)
        m.data, m.indices, m.indptr = self.data._a, self.indices._a, self.indptr._a
        return m

    @staticmethod
    def _from_host(m: Any) -> "_DeviceCompressed":
        """A result computed on SciPy's side, as a device matrix (CSR unless it is CSC)."""
        m = m if m.format in ("csr", "csc") else m.tocsr()
        cls = DeviceCSR if m.format == "csr" else DeviceCSC
        return cls((DeviceArray(m.data), DeviceArray(m.indices), DeviceArray(m.indptr)), shape=m.shape)

    # -- attributes ---------------------------------------------------------------------------------
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = 2

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def has_canonical_format(self) -> bool:
        if self._canonical is None:  # cupyx checks the indices lazily, as SciPy does
            self._canonical = bool(self._host().has_canonical_format)
        return self._canonical

    @has_canonical_format.setter
    def has_canonical_format(self, value: bool) -> None:
        self._canonical = bool(value)

    @property
    def has_sorted_indices(self) -> bool:
        return bool(self._host().has_sorted_indices)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (strict device sparse matrix); use .get()")

    def __len__(self) -> int:
        raise TypeError("sparse matrix length is ambiguous; use getnnz() or shape[0]")

    def __repr__(self) -> str:
        return f"<{self.shape[0]}x{self.shape[1]} device {self.format} matrix of {self.dtype}, {self.nnz} stored>"

    # -- conversions --------------------------------------------------------------------------------
    def get(self) -> Any:
        """A SciPy copy on the host."""
        return self._host_class((self.data.get(), self.indices.get(), self.indptr.get()), shape=self._shape)

    def copy(self) -> "_DeviceCompressed":
        out = type(self)((self.data.copy(), self.indices.copy(), self.indptr.copy()), shape=self._shape)
        out._canonical = self._canonical
        return out

    def astype(self, dtype: Any) -> "_DeviceCompressed":
        _check_sparse_dtype(dtype)
        return type(self)((self.data.astype(dtype), self.indices.copy(), self.indptr.copy()), shape=self._shape)

    def toarray(self, order: str | None = None) -> DeviceArray:
        return DeviceArray(self._host().toarray(order=order or "C"))

    def asformat(self, fmt: str) -> "_DeviceCompressed":
        return self.tocsr() if fmt == "csr" else self.tocsc()

    def sum_duplicates(self) -> None:
        """Sort the indices and add duplicates, in place (as cupyx does before its products)."""
        if self.has_canonical_format:
            return
        m = self._host()
        m.sum_duplicates()
        self.data, self.indices, self.indptr = DeviceArray(m.data), DeviceArray(m.indices), DeviceArray(m.indptr)
        self._canonical = True

    # -- reductions and products ------------------------------------------------------------------
    def sum(self, axis: int | None = None, dtype: Any = None) -> DeviceArray:
        """Sums as cupyx computes them: a 0-d array, or a (1, n) / (m, 1) dense array for an axis."""
        return DeviceArray(np.asarray(self._host().sum(axis=axis, dtype=dtype)))

    def _product(self, other: Any) -> Any:
        """cupyx's ``self @ other``: a dense device result (F-ordered, from cuSPARSE) or a CSR one."""
        if isinstance(other, DeviceArray):
            if other.ndim not in (1, 2):
                raise ValueError("could not interpret dimensions")
            self.sum_duplicates()
            out = self._host() @ other._a  # dtypes promoted, as cupyx's _cast_common_type
            return DeviceArray(np.asfortranarray(out) if out.ndim == 2 else out)
        if isinstance(other, _DeviceCompressed):
            self.sum_duplicates()
            other.sum_duplicates()
            return self._from_host((self._host() @ other._host()).tocsr())
        raise TypeError(f"device sparse matrix @ {type(other).__name__}: operands must both be on the device")

    def __matmul__(self, other: Any) -> Any:
        if np.isscalar(other):
            raise ValueError("Scalar operands are not allowed, use '*' instead")
        return self._product(other)

    def __rmatmul__(self, other: Any) -> Any:
        if not isinstance(other, DeviceArray):
            raise TypeError(f"{type(other).__name__} @ device sparse matrix: operands must both be on the device")
        return (self.T @ other.T).T

    dot = _product

    def __getitem__(self, key: Any) -> Any:
        # cupyx copies a host index array to the device (cupy.asarray in IndexMixin._asindices)
        out = self._host()[_unwrap(key, allow_host=True)]
        return self._from_host(out) if scipy.sparse.issparse(out) else DeviceArray(np.asarray(out))


class DeviceCSR(_DeviceCompressed):
    """``cupyx.scipy.sparse.csr_matrix``."""

    __module__ = "cupyx_strict_stand_in"
    format = "csr"
    _host_class = scipy.sparse.csr_matrix

    def tocsr(self, copy: bool = False) -> "DeviceCSR":
        return self.copy() if copy else self

    def tocsc(self, copy: bool = False) -> "DeviceCSC":
        return self._from_host(self._host().tocsc())

    def transpose(self) -> "DeviceCSC":
        """The CSC matrix on the same arrays (as cupyx: no copy)."""
        out = DeviceCSC((self.data, self.indices, self.indptr), shape=self._shape[::-1])
        out._canonical = self._canonical
        return out

    T = property(transpose)

    def multiply(self, other: Any) -> "DeviceCSR":
        """Point-wise product with a scalar, a dense device array or a device CSR matrix."""
        if np.isscalar(other):
            return self._from_host(self._host().multiply(other).tocsr())
        if isinstance(other, DeviceArray):
            return self._from_host(scipy.sparse.csr_matrix(self._host().multiply(other._a)))
        if isinstance(other, DeviceCSR):
            return self._from_host(self._host().multiply(other._host()).tocsr())
        raise TypeError("expected scalar, dense matrix/vector or csr matrix")


class DeviceCSC(_DeviceCompressed):
    """``cupyx.scipy.sparse.csc_matrix`` (what ``DeviceCSR.T`` returns; cupyx has no ``multiply`` for it)."""

    __module__ = "cupyx_strict_stand_in"
    format = "csc"
    _host_class = scipy.sparse.csc_matrix

    def tocsc(self, copy: bool = False) -> "DeviceCSC":
        return self.copy() if copy else self

    def tocsr(self, copy: bool = False) -> DeviceCSR:
        return self._from_host(self._host().tocsr())

    def transpose(self) -> DeviceCSR:
        out = DeviceCSR((self.data, self.indices, self.indptr), shape=self._shape[::-1])
        out._canonical = self._canonical
        return out

    T = property(transpose)


def _stack(how: Any, blocks: Any, format: str | None, dtype: Any) -> _DeviceCompressed:
    if not all(isinstance(b, _DeviceCompressed) for b in blocks):
        raise TypeError("every block must be a device sparse matrix")
    if format not in ("csr", "csc"):
        raise NotImplementedError("the stand-in has no COO matrices: pass format='csr' or 'csc'")
    return _DeviceCompressed._from_host(how([b._host() for b in blocks], format=format, dtype=dtype))


def _is_device_sparse(x: Any) -> bool:
    return isinstance(x, _DeviceCompressed)


#: ``cupyx.scipy.sparse`` (the parts gpulin uses, and their usual companions).
sparse = types.SimpleNamespace(
    csr_matrix=DeviceCSR,
    csc_matrix=DeviceCSC,
    spmatrix=_DeviceCompressed,
    issparse=_is_device_sparse,
    isspmatrix=_is_device_sparse,
    isspmatrix_csr=lambda x: isinstance(x, DeviceCSR),
    isspmatrix_csc=lambda x: isinstance(x, DeviceCSC),
    vstack=lambda blocks, format=None, dtype=None: _stack(scipy.sparse.vstack, blocks, format, dtype),
    hstack=lambda blocks, format=None, dtype=None: _stack(scipy.sparse.hstack, blocks, format, dtype),
)


# -- twins of gpulin's CUDA kernels (gpulin._gpu_kernels) ------------------------------------------
def _kernel_readable(*arrays: DeviceArray) -> None:
    """A ``RawKernel`` reads its arguments as plain C arrays: a strided view would be misread."""
    if not all(a.flags.c_contiguous for a in arrays):
        raise ValueError("a non-contiguous array passed to a CUDA kernel (it reads raw pointers)")


def csr_row_sums(values: Any, indptr: Any) -> Any:
    """``gpulin._gpu_kernels.csr_row_sums``: its CUDA kernel's result for device arrays (float64
    sums of float32/float64 values; other values cast to float32 first, as the kernel does), the
    original for host arrays. A host array beside a device one is a ``TypeError``, as a
    ``RawKernel`` launch with a NumPy argument is."""
    from gpulin import _gpu_kernels

    on_device = [isinstance(a, DeviceArray) for a in (values, indptr)]
    if not any(on_device):
        return _gpu_kernels.csr_row_sums(values, indptr)
    if not all(on_device):
        raise TypeError("Unsupported type <class 'numpy.ndarray'> (a host array passed to a CUDA kernel)")
    _kernel_readable(values, indptr)
    v = values._a if values.dtype in (np.float32, np.float64) else values._a.astype(np.float32)
    return DeviceArray(_gpu_kernels.csr_row_sums(v, indptr._a))


def csr_rows_to_dense(blk: Any, start: int, stop: int) -> Any:
    """``gpulin._gpu_kernels.csr_rows_to_dense``: rows ``start:stop`` of a device CSR block as a
    dense C-ordered float32 device array (duplicates summed); host blocks take the original."""
    from gpulin import _gpu_kernels

    if not isinstance(blk, _DeviceCompressed):
        return _gpu_kernels.csr_rows_to_dense(blk, start, stop)
    if not isinstance(blk, DeviceCSR):
        raise TypeError(f"the kernel reads CSR arrays, got a {blk.format} matrix")
    if not 0 <= start <= stop <= blk.shape[0]:
        raise ValueError(f"row range {start}:{stop} is outside 0:{blk.shape[0]}")
    _kernel_readable(blk.data, blk.indices, blk.indptr)
    return DeviceArray(np.ascontiguousarray(blk._host()[start:stop].toarray(), dtype=np.float32))
