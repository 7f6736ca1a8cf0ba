"""Backend switch: one code path over NumPy/SciPy (CPU) or CuPy/cupyx (CUDA).

Every computation in gpulin receives a :class:`Backend` and writes its algorithm against
``backend.xp`` (``numpy`` or ``cupy``) and ``backend.sparse`` (``scipy.sparse`` or
``cupyx.scipy.sparse``). Nothing here imports CuPy at module import time; the CUDA probe runs
once, on first use, and is cached.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import scipy.sparse
import scipy.special

Device = Literal["cpu", "cuda", "auto"]
DEVICES = ("cpu", "cuda", "auto")


class GPUUnavailableError(RuntimeError):
    """Raised when ``device="cuda"`` is requested but no usable GPU is present."""


@dataclass(frozen=True)
class Backend:
    """The array namespace and sparse module of one device.

    Attributes
    ----------
    name : {"cpu", "cuda"}
        The resolved device.
    xp : module
        ``numpy`` or ``cupy``.
    sparse : module
        ``scipy.sparse`` or ``cupyx.scipy.sparse``.
    special : module
        ``scipy.special`` or ``cupyx.scipy.special`` (for ``ndtri``).
    """

    name: str
    xp: ModuleType
    sparse: ModuleType
    special: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cuda"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Modules do not pickle: a backend pickles as its device name (fitted estimators hold one).
        return _unpickle_backend, (self.name,)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move a dense array to this device (no copy when already there with that dtype)."""
        if self.is_gpu:
            return self.xp.asarray(a, dtype=dtype)
        return np.asarray(to_host(a), dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU); call before reading a timer."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def free_memory_bytes(self) -> int | None:
        """Free device memory in bytes (GPU: driver free + CuPy pool free); None on CPU."""
        if not self.is_gpu:
            return None
        free, _total = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        return int(free + pool.free_bytes())


CPU = Backend("cpu", np, scipy.sparse, scipy.special)


@functools.lru_cache(maxsize=1)
def _cuda_probe() -> tuple[Backend | None, str]:
    """Try to set up the CUDA backend once. Returns (backend or None, reason if None)."""
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return None, (
            f"CuPy is not importable ({type(exc).__name__}: {exc}). Install gpulin with the extra "
            "matching your CUDA driver: pip install 'gpulin[cuda12]' or 'gpulin[cuda13]'."
        )
    try:
        available = bool(cupy.is_available())
    except Exception as exc:
        return None, f"CuPy is installed but cupy.is_available() failed ({exc}); check the NVIDIA driver."
    if not available:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            why = "no CUDA device is visible" if n == 0 else f"{n} device(s) visible but unusable"
        except Exception as exc:
            why = f"the CUDA driver cannot be initialised ({exc})"
        return None, (
            f"CuPy is installed but {why}. Check `nvidia-smi`, CUDA_VISIBLE_DEVICES and that the "
            "CuPy wheel matches the driver's CUDA major version; or use device='cpu'."
        )
    import cupyx.scipy.sparse as cusparse
    import cupyx.scipy.special as cuspecial

    return Backend("cuda", cupy, cusparse, cuspecial), ""


def cuda_available() -> bool:
    """True when CuPy imports and sees a usable CUDA device (probed once, then cached)."""
    return _cuda_probe()[0] is not None


def get_backend(device: str | Backend = "auto") -> Backend:
    """Resolve ``device`` to a :class:`Backend`.

    Parameters
    ----------
    device : {"cpu", "cuda", "auto"} or Backend
        ``"auto"`` picks CUDA when available, otherwise CPU.

    Raises
    ------
    ValueError
        Unknown device name.
    GPUUnavailableError
        ``device="cuda"`` without a usable GPU; the message says why and how to fix it.
    """
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise ValueError(f"Unknown device {device!r}; expected one of {DEVICES}.")
    device = device.lower()
    if device == "cpu":
        return CPU
    backend, reason = _cuda_probe()
    if backend is not None:
        return backend
    if device == "auto":
        return CPU
    raise GPUUnavailableError(f"device='cuda' was requested but {reason}")


def is_gpu_array(a: Any) -> bool:
    """True for CuPy dense arrays and cupyx sparse matrices (without importing CuPy)."""
    mod = type(a).__module__
    return mod.startswith("cupy") or mod.startswith("cupyx")


def backend_of(a: Any) -> Backend:
    """The backend on which ``a`` lives (CUDA for CuPy / cupyx objects, else CPU)."""
    return get_backend("cuda") if is_gpu_array(a) else CPU


def _unpickle_backend(name: str) -> Backend:
    """The backend of a pickled estimator: its device here, or the CPU with a warning when it was
    fitted on a GPU and none is usable here (its fitted arrays are host arrays)."""
    if name == "cuda" and not cuda_available():
        from ._warnings import warn_user

        warn_user(
            f"This object was fitted on a CUDA GPU, but none is usable here ({_cuda_probe()[1]}); "
            "it will compute on the CPU.",
            RuntimeWarning,
        )
        return CPU
    return get_backend(name)


def resolve_backend(device: str | Backend, X: Any) -> Backend:
    """The backend to compute on: ``device``; for ``"auto"`` the GPU when ``X`` already lives there,
    otherwise CUDA when available (``get_backend("auto")``)."""
    if isinstance(device, str) and device.lower() == "auto" and is_gpu_array(X):
        return backend_of(X)
    return get_backend(device)


def to_host(a: Any) -> Any:
    """Copy a CuPy array or cupyx sparse matrix to NumPy / SciPy; other inputs pass through."""
    if is_gpu_array(a):
        return a.get()
    return a


def to_device(a: Any, backend: Backend) -> Any:
    """Move a dense or sparse array to ``backend`` (no copy when it is already there)."""
    if backend.is_gpu:
        if is_gpu_array(a):
            return a
        if scipy.sparse.issparse(a):
            return backend.sparse.csr_matrix(a.tocsr()) if a.format != "csc" else backend.sparse.csc_matrix(a)
        return backend.xp.asarray(a)
    return to_host(a)


class DeviceMemoryError(MemoryError):
    """A step ran out of memory on its device; the message names the step, its size and what to change."""


#: Status names with which cuBLAS, cuSPARSE and cuSOLVER report a failed allocation (CuPy raises
#: them as ``CUBLASError`` etc., not as ``OutOfMemoryError``).
_LIBRARY_ALLOCATION_FAILURES = ("ALLOC_FAILED", "INSUFFICIENT_RESOURCES", "OUT_OF_MEMORY", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means "out of memory": NumPy's and CuPy's ``MemoryError`` (CuPy's
    ``OutOfMemoryError`` is one), or a CUDA library's allocation failure."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__module__.startswith("cupy") and any(s in str(exc) for s in _LIBRARY_ALLOCATION_FAILURES)


def _release(*errors: BaseException | None, cupy: Any = None) -> None:
    """Clear the locals of the finished frames in the tracebacks of ``errors`` (running frames are
    skipped), then free the cached blocks of ``cupy`` (default: CuPy, when it is in use)."""
    for err in errors:
        if err is not None and err.__traceback__ is not None:
            traceback.clear_frames(err.__traceback__)
    cupy = cupy if cupy is not None else sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()


def releases_memory(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for public entry points: when a :class:`DeviceMemoryError` leaves ``fn``, the
    frames it passed through (``fn``'s and those below, all returned by then) have their locals
    cleared, and CuPy's cached blocks are freed, so the transformed matrix and the other
    intermediates are released while the caller handles the error (:func:`memory_guard` can only
    clear the frames below the one that runs it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeviceMemoryError as exc:
            _release(exc, exc.__cause__)  # this frame is running: clear_frames skips it
            raise

    return wrapper


@contextlib.contextmanager
def memory_guard(backend: Backend, step: str, remedy: str) -> Iterator[None]:
    """Re-raise running out of memory inside the block as a :class:`DeviceMemoryError`.

    The message reads ``"Out of {device} memory {step}. {remedy}"`` (``host`` for a host allocation
    that fails during a GPU run): ``step`` says what failed and
    how big it was (cells, nonzeros, the batch size in use), ``remedy`` what to change. Before
    re-raising, the locals of the frames that failed are cleared and CuPy's cached blocks are
    released, so that memory is free again while the error is handled (a retry with a smaller
    ``batch_size`` then has it). A :class:`DeviceMemoryError` from a nested, more specific guard
    passes through unchanged, and so does every other exception.
    """
    try:
        yield
    except DeviceMemoryError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        _release(exc, cupy=backend.xp if backend.is_gpu else None)  # the failed step's temporaries
        # a host allocation failing during a GPU run is the host's memory, not the GPU's
        where = backend.name if not backend.is_gpu or type(exc).__module__.startswith("cupy") else "host"
        raise DeviceMemoryError(f"Out of {where} memory {step}. {remedy}") from exc
