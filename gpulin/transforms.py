"""Exact per-cell transforms in sparse form: ``sctop`` (rank -> normal scores) and ``lognorm``.

Neither transform ever builds a dense cells x genes matrix: each returns a
:class:`~gpulin.implicit.SparsePlusRowConstant` ``S = D + c 1^T`` whose sparse part ``D`` shares
the sparsity pattern (and, on the device where the counts live, the index arrays) of the input.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse

from ._backend import CPU, Backend, get_backend, is_gpu_array, memory_guard, releases_memory, to_host
from ._validation import as_csr, check_batch_size, check_counts, check_number
from ._gpu_kernels import csr_row_sums
from .implicit import SparsePlusRowConstant, _row_ids, cpu_workers
from ._warnings import warn_user

Method = Literal["sctop", "lognorm"]
METHODS = ("sctop", "lognorm")

#: Bytes of temporary memory per stored value of a block during the scTOP transform on a GPU (row
#: ids, keys, the int64 sort keys and permutation with the radix sort's double buffers, group
#: bookkeeping: about 90-130 counted in ``_sctop_block``); used to size blocks.
_SCTOP_BYTES_PER_NNZ = 128
_CPU_BLOCK_NNZ = 1 << 22
_INT32_MAX = 2**31 - 1


class EmptyCellsWarning(UserWarning):
    """Some cells have no counts (or, for scTOP, all genes equal); their profile is the zero vector."""


# ---------------------------------------------------------------------------------------------
# Row blocking
# ---------------------------------------------------------------------------------------------
def plan_row_blocks(indptr: np.ndarray, n_genes: int, backend: Backend, batch_size: int | None) -> np.ndarray:
    """Choose row-block boundaries so each block's temporary memory is bounded.

    Parameters
    ----------
    indptr : numpy.ndarray, shape (n_cells + 1,)
        CSR row pointer on the host.
    batch_size : int or None
        Cells per block. ``None``: about 4M stored values per block on CPU; on GPU as many as fit
        in a quarter of free memory at :data:`_SCTOP_BYTES_PER_NNZ` (and always fewer than 2^31 stored values).

    Returns
    -------
    numpy.ndarray of int64
        Block boundaries ``[0, ..., n_cells]``.
    """
    n = len(indptr) - 1
    if batch_size is not None:
        starts = np.arange(0, n, batch_size, dtype=np.int64)
        bounds = np.append(starts, n)
        nnz_per = np.diff(indptr[bounds])
        if nnz_per.size and nnz_per.max() > _INT32_MAX:
            raise ValueError(
                f"batch_size={batch_size} puts {int(nnz_per.max())} nonzeros in one block; blocks must "
                "hold fewer than 2^31. Use a smaller batch_size."
            )
        return bounds
    if backend.is_gpu:
        free = backend.free_memory_bytes() or (8 << 30)
        # a quarter of free memory for one block's temporaries (the output accumulates beside them)
        target = int(min(free // (4 * _SCTOP_BYTES_PER_NNZ), _INT32_MAX // 2))
    else:
        # ~4M values per block, fewer for small inputs so the sort's temporaries stay a fraction
        # of the input's own size.
        target = int(np.clip(int(indptr[-1]) // 8, 1 << 18, _CPU_BLOCK_NNZ))
    target = max(target, n_genes)  # a block holds at least one full cell
    edges = [0]
    # Greedy cut on the cumulative nonzero count.
    cuts = np.searchsorted(indptr, np.arange(target, int(indptr[-1]) + target, target), side="right") - 1
    for cut in cuts:
        cut = int(min(max(cut, edges[-1] + 1), n))
        if cut > edges[-1]:
            edges.append(cut)
    if edges[-1] != n:
        edges.append(n)
    return np.asarray(edges, dtype=np.int64)


def _block_view(X: Any, indptr_host: np.ndarray, start: int, stop: int, backend: Backend) -> Any:
    """CSR rows ``start:stop`` of ``X`` on ``backend``, sharing ``data``/``indices`` when possible."""
    p0, p1 = int(indptr_host[start]), int(indptr_host[stop])
    xp = backend.xp
    if backend.is_gpu:
        if is_gpu_array(X):
            indptr = (X.indptr[start : stop + 1] - p0).astype(xp.int32)
            data, indices = X.data[p0:p1], X.indices[p0:p1].astype(xp.int32, copy=False)
        else:  # host counts: this block only goes to the device (integers as float32: cupyx
            # sparse holds no integer values)
            indptr = xp.asarray((indptr_host[start : stop + 1] - p0).astype(np.int32))
            data = X.data[p0:p1]
            data = xp.asarray(data, dtype=np.float32 if data.dtype.kind in "iu" else data.dtype)
            indices = xp.asarray(X.indices[p0:p1].astype(np.int32, copy=False))
    else:
        data, indices = X.data[p0:p1], X.indices[p0:p1]
        indptr = (indptr_host[start : stop + 1] - p0).astype(indices.dtype)
        return _host_csr(data, indices, indptr, (stop - start, X.shape[1]))
    return backend.sparse.csr_matrix((data, indices, indptr), shape=(stop - start, X.shape[1]), copy=False)


def _host_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> Any:
    """A SciPy CSR matrix on these arrays, without copying any of them.

    ``scipy.sparse.csr_matrix((data, indices, indptr), copy=False)`` copies ``data`` and
    ``indices`` when they are views of less than half of a larger array ("pruning"), which every
    row block of a matrix is: the "shared" index arrays of the blocks were a full copy of the
    input's (0.5x the CSR size at 20k cells x 20k genes). The arrays come from a valid CSR matrix
    (slices of one, or new values on its pattern), so the format checks are not needed.
    """
    m = scipy.sparse.csr_matrix(shape, dtype=data.dtype)
    m.data, m.indices, m.indptr = data, indices, indptr
    return m


def _with_values(blk: Any, values: Any, backend: Backend) -> Any:
    """A CSR block with the pattern of ``blk`` (index arrays shared) and new values."""
    if not backend.is_gpu:
        return _host_csr(values, blk.indices, blk.indptr, blk.shape)
    return backend.sparse.csr_matrix((values, blk.indices, blk.indptr), shape=blk.shape, copy=False)


# ---------------------------------------------------------------------------------------------
# Per-block kernels (one implementation for numpy and cupy)
# ---------------------------------------------------------------------------------------------
def _sctop_block(blk: Any, n_genes: int, backend: Backend) -> tuple[Any, Any, int]:
    """scTOP transform of one CSR block in sparse form.

    Returns ``(d_values float32 (nnz,), c float64 (rows,), n_empty)``: the transformed cell is
    ``d`` at its stored positions and ``c`` everywhere else.

    Ranks are computed on the same float32 keys as ``sctop.process`` (``x / sum(x)`` in float32,
    then ``+ 1``: ``log2`` is strictly increasing there, so ranks and ties are those of
    ``log2(1 + x')``). A stored value whose key rounds to 1 (an explicit zero, or a count too
    small to be seen next to 1 in float32) joins its cell's zero group, exactly as in the dense
    computation.
    """
    xp, special = backend.xp, backend.special
    rows = blk.shape[0]
    nnz = int(blk.nnz)
    if nnz == 0:  # every cell empty: nothing to rank
        return xp.empty(0, dtype=xp.float32), xp.zeros(rows, dtype=xp.float64), rows
    G = float(n_genes)
    indptr = blk.indptr.astype(xp.int64)
    nnz_row = xp.diff(indptr)
    row = _row_ids(blk, xp)
    data32 = blk.data.astype(xp.float32)
    libsize = csr_row_sums(data32, blk.indptr).astype(xp.float32)
    libsize = xp.where(libsize == 0, xp.float32(1.0), libsize)
    key = data32 / libsize[row] + xp.float32(1.0)  # float32 arithmetic, as in sctop
    # Sort by (row, key) with one integer sort: positive float32 bit patterns are monotone.
    composite = (row << 31) | key.view(xp.int32).astype(xp.int64)
    order = xp.argsort(composite)
    sorted_key = composite[order]
    del composite
    new_group = xp.empty(nnz, dtype=bool)
    if nnz:
        new_group[0] = True
        new_group[1:] = sorted_key[1:] != sorted_key[:-1]
    group_start = xp.flatnonzero(new_group)
    group_id = xp.cumsum(new_group) - 1
    group_end = xp.empty_like(group_start)
    group_end[:-1] = group_start[1:] - 1
    if group_start.size:
        group_end[-1] = nnz - 1
    mid = 0.5 * (group_start[group_id] + group_end[group_id]).astype(xp.float64)
    del group_id, new_group
    srow = sorted_key >> 31
    is_zero = (sorted_key & 0x7FFFFFFF) == int(np.float32(1.0).view(np.int32))
    del sorted_key
    # Average 1-based rank among all G genes: the n_r - nnz_r zero genes come first.
    rank = (G - nnz_row[srow]).astype(xp.float64) + (mid - indptr[srow].astype(xp.float64)) + 1.0
    z = special.ndtri(rank / (G + 1.0))
    z = xp.where(is_zero, 0.0, z)
    # Sorting kept every cell's values in its own row segment: sums per cell follow indptr.
    n_zero_like = csr_row_sums(is_zero, blk.indptr)
    n0 = (G - nnz_row.astype(xp.float64)) + n_zero_like
    z0 = special.ndtri(((n0 + 1.0) / 2.0) / (G + 1.0))
    norm2 = csr_row_sums(z * z, blk.indptr) + n0 * z0 * z0
    empty = norm2 <= 0
    n_empty = int(empty.sum())
    inv_norm = xp.where(empty, 0.0, 1.0 / xp.sqrt(xp.where(empty, 1.0, norm2)))
    c = z0 * inv_norm
    vals_sorted = xp.where(is_zero, 0.0, z * inv_norm[srow] - c[srow])
    d = xp.empty(nnz, dtype=xp.float32)
    d[order] = vals_sorted.astype(xp.float32)
    return d, c, n_empty


def _lognorm_block(blk: Any, target_sum: float, backend: Backend) -> tuple[Any, Any, int]:
    """``log1p(x / sum(x) * target_sum)`` of one CSR block; ``c = 0``."""
    xp = backend.xp
    rows = blk.shape[0]
    if blk.nnz == 0:  # every cell empty
        return xp.empty(0, dtype=xp.float32), xp.zeros(rows, dtype=xp.float64), rows
    row = _row_ids(blk, xp)
    libsize = csr_row_sums(blk.data, blk.indptr)
    n_empty = int((libsize == 0).sum())
    factor = xp.where(libsize > 0, target_sum / xp.where(libsize > 0, libsize, 1.0), 0.0)
    vals = xp.log1p(blk.data.astype(xp.float64) * factor[row]).astype(xp.float32)
    return vals, xp.zeros(rows, dtype=xp.float64), n_empty


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
@releases_memory
def transform_implicit(
    X: Any,
    method: str = "sctop",
    *,
    device: str | Backend = "auto",
    batch_size: int | None = None,
    target_sum: float | None = 1e4,
    check: bool = True,
) -> SparsePlusRowConstant:
    """Apply a per-cell transform to counts ``X`` and return the implicit result on ``device``.

    Parameters
    ----------
    X : array or sparse matrix, shape (n_cells, n_genes)
        Raw counts (NumPy, SciPy sparse, CuPy or cupyx sparse). Never modified.
    method : {"sctop", "lognorm"}
    device : {"cpu", "cuda", "auto"}
    batch_size : int, optional
        Cells per row block (None: automatic, from free GPU memory on CUDA).
    target_sum : float or None
        ``lognorm`` library size after normalization (scanpy ``normalize_total``); None: the
        median library size of the cells with counts, as scanpy's ``target_sum=None``.
    check : bool
        Validate the values (finite, non-negative; warn when not integers).

    Returns
    -------
    SparsePlusRowConstant
        ``S = D + c 1^T`` with float32 ``D`` and float64 ``c``.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    backend = get_backend(device)
    batch_size = check_batch_size(batch_size)
    # Counts already on the GPU are used there; host counts stay on the host and each row block
    # is copied to the device in turn (device memory holds the result, not a copy of the input,
    # and an indptr beyond 2^31 never has to exist on the device).
    where = backend if is_gpu_array(X) else CPU
    csr = as_csr(X, where)
    if check:
        check_counts(csr, where, method=method)
    if method == "lognorm":
        check_number("target_sum", target_sum, 0.0, low_open=True, allow_none=True)
        if target_sum is None:
            target_sum = median_library_size(csr)
    scale_to = float(target_sum) if method == "lognorm" and target_sum is not None else 0.0  # sctop has none
    n, G = csr.shape
    indptr_host = np.asarray(to_host(csr.indptr), dtype=np.int64)
    bounds = plan_row_blocks(indptr_host, G, backend, batch_size)
    xp = backend.xp
    c_all = xp.empty(n, dtype=xp.float64)

    use_kernels = not backend.is_gpu
    if use_kernels:
        from . import _cpu_kernels

        ztab = _cpu_kernels.ztable(G) if method == "sctop" else None
        workers = cpu_workers()

    nnz_total = int(indptr_host[-1])
    keeps = (
        f" The transformed matrix stays on the device (about {8 * nnz_total / 2**30:.1f} GiB for "
        f"{nnz_total:,} nonzeros): if that does not fit, use device='cpu'." if backend.is_gpu else ""
    )

    def one(b: int) -> tuple[Any, int]:
        start, stop = int(bounds[b]), int(bounds[b + 1])
        step = (f"transforming cells {start}:{stop} ({int(indptr_host[stop] - indptr_host[start]):,} nonzeros, "
                f"batch_size={batch_size if batch_size is not None else f'None, i.e. {stop - start} cells here'})")
        with memory_guard(backend, step, "Pass a smaller batch_size (for example half of it)." + keeps):
            blk = _block_view(csr, indptr_host, start, stop, backend)
            if use_kernels and method == "sctop":
                # CPU twin of _sctop_block (tests/test_cpu_kernels.py): a sort per cell, in threads.
                vals, c, ne = _cpu_kernels.sctop_rows(blk.indptr, blk.data, G, workers, ztab)
            elif use_kernels:
                vals, ne = _cpu_kernels.lognorm_rows(blk.indptr, blk.data, scale_to, workers)
                c = np.zeros(stop - start, dtype=np.float64)
            elif method == "sctop":
                vals, c, ne = _sctop_block(blk, G, backend)
            else:
                vals, c, ne = _lognorm_block(blk, scale_to, backend)
            c_all[start:stop] = c
            return _with_values(blk, vals, backend), ne

    done = [one(b) for b in range(len(bounds) - 1)]
    blocks = [blk for blk, _ in done]
    n_empty = sum(ne for _, ne in done)
    if n_empty:
        warn_user(
            f"{n_empty} of {n} cells have no counts"
            + (" or the same count in every gene" if method == "sctop" else "")
            + f"; their {method} profile is set to the zero vector. Consider removing them "
            "(e.g. scanpy.pp.filter_cells(adata, min_counts=1)).",
            EmptyCellsWarning,
        )
    return SparsePlusRowConstant(blocks=blocks, row_starts=bounds, c=c_all, n_genes=G, backend=backend)


def sctop_transform(
    X: Any,
    *,
    device: str = "cpu",
    dense: bool = False,
    batch_size: int | None = None,
) -> SparsePlusRowConstant | np.ndarray:
    """The exact scTOP transform (rank -> normal scores -> unit norm per cell), never densified.

    Computes, per cell, what ``sctop.process`` computes (``pipeline.md`` section 1) over all genes
    of ``X``: library normalization, average ranks with ties, ``ndtri(rank / (G + 1))`` and
    division by the cell's L2 norm. Cells without counts map to the zero vector (``sctop``
    returns NaN for them).

    Parameters
    ----------
    X : array or sparse matrix, shape (n_cells, n_genes)
        Raw counts; cells are rows (``sctop.process`` takes genes x cells).
    device : {"cpu", "cuda", "auto"}
    dense : bool
        Return a NumPy float32 (n_cells, n_genes) array (small inputs and tests only).
    batch_size : int, optional
        Cells per row block.

    Returns
    -------
    SparsePlusRowConstant or numpy.ndarray
        The implicit result (``.toarray()`` materializes it) or, with ``dense=True``, the array.
    """
    S = transform_implicit(X, "sctop", device=device, batch_size=batch_size)
    return S.toarray() if dense else S


def median_library_size(csr: Any) -> float:
    """Median total count of the cells with counts (scanpy's ``normalize_total(target_sum=None)``);
    1.0 when no cell has counts."""
    totals = np.asarray(to_host(csr_row_sums(csr.data, csr.indptr)), dtype=np.float64)
    totals = totals[totals > 0]
    return float(np.median(totals)) if totals.size else 1.0


def lognorm_transform(
    X: Any,
    *,
    target_sum: float | None = 1e4,
    device: str = "cpu",
    dense: bool = False,
    batch_size: int | None = None,
) -> SparsePlusRowConstant | np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per cell (scanpy ``normalize_total`` + ``log1p``).

    Parameters
    ----------
    X : array or sparse matrix, shape (n_cells, n_genes)
        Raw counts (NumPy, SciPy sparse, CuPy or cupyx sparse). Never modified.
    target_sum : float or None
        Library size after scaling; None: the median library size of the cells with counts
        (scanpy's default).
    device : {"cpu", "cuda", "auto"}
    dense : bool
        Return a dense NumPy float32 array (small inputs and tests) instead of the implicit result.
    batch_size : int, optional
        Cells per row block (None: automatic).

    Returns
    -------
    SparsePlusRowConstant (``c = 0``) or numpy.ndarray of float32, shape (n_cells, n_genes)
    """
    S = transform_implicit(X, "lognorm", device=device, batch_size=batch_size, target_sum=target_sum)
    return S.toarray() if dense else S


__all__ = [
    "EmptyCellsWarning",
    "lognorm_transform",
    "plan_row_blocks",
    "sctop_transform",
    "transform_implicit",
]
