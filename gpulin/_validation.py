"""Input checks shared by every entry point: clear errors instead of tracebacks from deep inside NumPy."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from ._backend import Backend, is_gpu_array, to_device
from ._warnings import warn_user


def as_csr(X: Any, backend: Backend, *, name: str = "X") -> Any:
    """Return ``X`` as a canonical CSR matrix on ``backend`` without modifying the input.

    Dense inputs are converted to CSR (the caller's dense matrix already exists; gpulin never
    creates one). A CSR input that is already canonical and on the right device is returned as is
    (no copy); duplicates are summed on a copy.

    Raises
    ------
    TypeError
        ``X`` is not an array or sparse matrix.
    ValueError
        ``X`` is not two-dimensional or has no cells or no genes.
    """
    if X is None:
        raise TypeError(f"{name} is None; expected a cells x genes matrix.")
    if backend.is_gpu:
        # cupyx sparse matrices hold only bool/float32/float64/complex values: integer (and
        # float16) counts become float32 (exact below 2^24) before they reach the device.
        dtype = getattr(X, "dtype", None)
        if dtype is not None and (np.dtype(dtype).kind in "iu" or np.dtype(dtype) == np.float16):
            X = X.astype(np.float32)
    if is_gpu_array(X):
        if backend.is_gpu:
            csr = X.tocsr() if backend.sparse.issparse(X) else backend.sparse.csr_matrix(X)
        else:
            csr = X.get()
            csr = csr.tocsr() if scipy.sparse.issparse(csr) else scipy.sparse.csr_matrix(np.asarray(csr))
    elif scipy.sparse.issparse(X):
        csr = X.tocsr()
        csr = to_device(csr, backend) if backend.is_gpu else csr
    else:
        try:
            arr = np.asarray(X)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be a NumPy/CuPy array or a sparse matrix, got {type(X).__name__}.") from exc
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-dimensional (cells x genes), got shape {arr.shape}.")
        if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:  # float16: no sparse format holds it
            arr = arr.astype(np.float32)
        csr = to_device(scipy.sparse.csr_matrix(arr), backend)
    if np.dtype(csr.dtype).kind not in "biuf":  # complex: no count is complex
        raise TypeError(f"{name} must hold real numbers (counts), got dtype {csr.dtype}.")
    n, g = csr.shape
    if n == 0 or g == 0:
        raise ValueError(f"{name} has shape {csr.shape}: it needs at least one cell and one gene.")
    if not _is_canonical(csr):
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def _is_canonical(csr: Any) -> bool:
    if hasattr(csr, "has_canonical_format"):
        return bool(csr.has_canonical_format)
    return True


#: Values per chunk of :func:`check_counts`'s generic path (its temporaries: 64M values at a time).
CHECK_CHUNK = 1 << 26


def check_counts(csr: Any, backend: Backend, *, name: str = "X", method: str = "sctop", columns: Any = None) -> None:
    """Check that a CSR matrix holds finite, non-negative (count-like) values (``columns``: a
    boolean mask over its columns, on ``backend``, to check only the values stored in those).

    Raises
    ------
    ValueError
        Non-finite or negative values (message gives how many and where the first one is).

    Warns
    -----
    UserWarning
        Non-integer values: ``method`` expects raw counts.
    """
    xp = backend.xp
    if columns is not None and tuple(columns.shape) != (csr.shape[1],):
        raise ValueError(f"columns must be a boolean mask of the {csr.shape[1]} columns, got shape {columns.shape}.")
    data = csr.data
    if data.size == 0:
        return
    floating = bool(xp.issubdtype(data.dtype, xp.floating))
    if floating and not backend.is_gpu and data.dtype in (np.float32, np.float64):
        from ._cpu_kernels import value_counts  # one pass; CPU twin of the three below
        from .implicit import cpu_workers

        n_bad, n_neg, n_frac = value_counts(data, cpu_workers(), csr.indices, columns)
        if n_neg and columns is not None:  # the minimum of the checked values, for the message
            data = data[columns[csr.indices]]
    else:  # in chunks, so the temporaries stay small next to counts on a GPU
        if columns is not None:
            data = data[columns[csr.indices]]
        n_bad = n_neg = n_frac = 0
        for s in range(0, data.size, CHECK_CHUNK):
            part = data[s : s + CHECK_CHUNK]
            n_neg += int((part < 0).sum())
            if floating:
                n_bad += int((~xp.isfinite(part)).sum())
                n_frac += int((part != xp.round(part)).sum())
    if n_bad:
        raise ValueError(
            f"{name} contains {n_bad} non-finite value(s) (NaN or inf); {method!r} expects raw counts."
        )
    if n_neg:
        raise ValueError(
            f"{name} contains {n_neg} negative value(s) (min {float(data.min())}); {method!r} expects raw, "
            "non-negative counts. Pass the counts layer (layer=...) rather than scaled or centred data."
        )
    if n_frac:
        warn_user(
            f"{name} has {n_frac} non-integer value(s); {method!r} is designed for raw counts "
            "(is this already normalized?). Continuing.",
            UserWarning,
        )


def check_n_components(n_components: int, n_cells: int, n_genes: int) -> int:
    """Validate ``n_components`` against the matrix shape and return it as int."""
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise TypeError(f"n_components must be an int, got {n_components!r}.")
    if n_cells == 0 or n_genes == 0:
        raise ValueError(f"X has shape ({n_cells}, {n_genes}): it needs at least one cell and one gene.")
    limit = min(n_cells, n_genes)
    if not 1 <= n_components <= limit:
        raise ValueError(
            f"n_components={n_components} is out of range: it must be between 1 and "
            f"min(n_cells, n_genes) = min({n_cells}, {n_genes}) = {limit}."
        )
    return int(n_components)


def check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    return int(batch_size)


def check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> None:
    """A clear error unless ``value`` is an int >= ``minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """A clear error unless ``value`` is a bool (``"no"``, None or 0 are not read as switches)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_number(name: str, value: Any, low: float, high: float = np.inf, *, low_open: bool = False,
                 allow_none: bool = False) -> None:
    """A clear error unless ``value`` is a finite real number in ``[low, high]`` (``(low, high]``
    when ``low_open``), or None when allowed."""
    if value is None and allow_none:
        return
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and np.isfinite(value) and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high == np.inf else ']'}"
        raise ValueError(f"{name} must be a number in {interval}" + (" or None" if allow_none else "") + f", got {value!r}.")
