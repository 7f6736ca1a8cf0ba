"""Compiled CPU kernels (Numba) for the hot loops of the CPU backend.

Each kernel is the CPU twin of a generic implementation written against the array namespace (the
code CuPy runs on GPU); ``tests/test_cpu_kernels.py`` checks that every pair agrees. They exist
because they were measured to matter (2-core Intel Xeon with AVX-512, 20,000 x 20,000 synthetic
atlas, 21.8M nonzeros; ``benchmarks/README.md``):

* :func:`csr_matmat` / :func:`csr_rmatmat_accumulate` (``D @ W`` and ``D.T @ U``): SciPy's
  sparse-times-dense kernel is a scalar loop compiled for generic x86-64 (run on row chunks in
  threads before); the Numba loops are vectorized for the host CPU and run gene chunk by gene
  chunk so the rows of ``W`` (or of the partial sums) they touch stay in L2 (:data:`CHUNK_BYTES`).
  264 columns: 0.99 s -> 0.31 s and 0.93 s -> 0.27 s per product. Each sweep over the
  accumulator row takes two stored values (half its loads and stores) and may fuse
  multiply-adds: ``D @ W`` at 230 columns 0.285 s -> 0.245 s.
* :func:`sctop_rows`: the scTOP transform row by row (a small sort per cell instead of one
  global integer sort: a counting sort when the counts are small integers, and ``ndtri`` looked
  up in a table of the 2 G + 2 half-integer ranks instead of evaluated per stored value):
  bit-identical output, 1.1 s -> 0.35 s (comparison sort) -> 0.20 s (counting sort) -> 0.12 s
  on one thread (a histogram of the counts gives each group of equal counts its ranks: no sort,
  no per-cell allocation, one lookup per stored value; 2 threads 0.10 -> 0.066 s).
* :func:`lognorm_rows`: library sizes and ``log1p`` in one pass per cell.
* :func:`finish_transposed`: the last flush of the ``D.T @ U`` partial sums and the rank-one
  terms of the standardized operator in one pass (264 columns: 0.09 s -> 0.02-0.06 s).
* :func:`scaled_right`, :func:`weighted_column_sums`: the dense side of the products (``V / sigma``
  with ``1^T W`` and ``mu^T W``; ``c^T U`` and ``1^T U``) in one pass each, without float64
  copies (20k x 264: 27 -> 2.6 ms and 9.4 -> 1.5 ms).
* :func:`column_sums`, :func:`value_counts`: per-gene sums of ``S`` and ``S**2``, and the count
  checks, in one pass instead of several whole-array NumPy passes (0.4 s -> 0.02 s).
* :func:`standardized_rows`: dense standardized row tiles (per-split classifier fits densify their
  training block) in one pass per row instead of a densification, a column selection and three
  whole-tile passes; identical values.

Parallel loops run over a fixed number of row chunks cut at equal nonzero counts; every chunk
writes its own output rows or its own partial sum, and partial sums are added in chunk order, so
results are deterministic for a given thread count. Launches from several Python threads run
concurrently where Numba's threading layer allows it (:func:`_launch`).
Callers import this module (and with it Numba) only when a kernel is first needed; kernels are
compiled on first use and cached on disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

#: GNU OpenMP, Numba's threading layer here, reads this when Numba loads it (at the first parallel
#: launch). Left unset, its worker threads keep spinning after each parallel kernel, beside the
#: BLAS calls made next (LAPACK's many small synchronizing calls above all). On the 2-core Xeon
#: (benchmarks/omp_wait.py): the Kang stimulation protocol 1.68-1.85 s -> 1.28-1.44 s on a quiet
#: machine; with another process on one core, 7.2 s -> 1.5 s, and a 230 x 230 ``eigh`` right
#: after an embed 41 ms -> 8 ms (single calls took up to 0.8 s). Passive waiting costs a wake-up
#: per launch (microseconds). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import scipy.special  # noqa: E402
from numba import get_num_threads, njit, prange, set_num_threads  # noqa: E402
from numba import config as _numba_config  # noqa: E402

#: Kernel launches from several Python threads at once (independent evaluation splits fitted side
#: by side, :mod:`gpulin._concurrent`) are safe with Numba's OpenMP and TBB threading layers; its
#: fallback layer ("workqueue", used where neither is available) aborts the process when two
#: threads launch parallel kernels at once. Launches are serialized until the first one has shown
#: which layer Numba loaded.
_LAUNCH_LOCK = threading.Lock()
_CONCURRENT_LAUNCHES: bool | None = None  # None: not known yet


@contextlib.contextmanager
def _launch() -> Any:
    """Context of one kernel launch: serialized unless the threading layer is known to be thread-safe."""
    global _CONCURRENT_LAUNCHES
    if _CONCURRENT_LAUNCHES:
        yield
        return
    with _LAUNCH_LOCK:
        yield
        if _CONCURRENT_LAUNCHES is None:
            import numba

            try:
                _CONCURRENT_LAUNCHES = numba.threading_layer() in ("omp", "tbb")
            except ValueError:  # no parallel launch yet
                pass

__all__ = [
    "CHUNK_BYTES",
    "add_sparse_cell_gram",
    "chunk_bounds",
    "column_sums",
    "csr_dot64",
    "csr_rows_dense",
    "csr_take_columns",
    "csr_matmat",
    "csr_rmatmat_accumulate",
    "finish_transposed",
    "group_row_sums",
    "gene_chunks",
    "lognorm_rows",
    "row_splits",
    "scaled_right",
    "single_threaded_blas",
    "standardized_rows",
    "touched_empty",
    "sctop_rows",
    "use_threads",
    "value_counts",
    "weighted_column_sums",
    "ztable",
]


_BLAS_CONTROLLER = None


def single_threaded_blas() -> Any:
    """Context manager: BLAS (OpenBLAS, MKL) limited to one thread inside it.

    For code that alternates BLAS calls with the kernels here: after each call, a multithreaded
    OpenBLAS keeps its worker threads spinning for a while, and on a 2-core machine they take the
    cores from the kernel launched next (a 60-column ``D @ W`` went from 0.105 s to 0.158 s right
    after a small ``dgemm``). With one BLAS thread the 20k-cell embed took 1.72 s instead of
    2.25 s (50 components) and 5.71 s instead of 6.26 s (220).
    """
    return _single_threaded_blas()


#: Contexts of :func:`single_threaded_blas` open in any thread: the limit is process-wide, so it
#: is applied by the first and the original thread counts are restored by the last to exit (with
#: nested limits from several threads, each restoring what it saw would leave BLAS at one thread).
#: (OpenBLAS 0.3.31 may not show a count set from a worker thread to the main thread; gpulin's own
#: parallel runs take the limit in the calling thread, around their workers.)
_BLAS_USERS = 0
_BLAS_LIMITER: Any = None
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _single_threaded_blas() -> Any:
    global _BLAS_CONTROLLER, _BLAS_USERS, _BLAS_LIMITER
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            if _BLAS_CONTROLLER is None:
                from threadpoolctl import ThreadpoolController

                _BLAS_CONTROLLER = ThreadpoolController()
            _BLAS_LIMITER = _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                _BLAS_LIMITER.restore_original_limits()
                _BLAS_LIMITER = None


def touched_empty(shape: Any, dtype: Any) -> np.ndarray:
    """``np.empty`` with its memory mapped by the calling thread (zero-filled).

    A fresh large array's pages are mapped on first touch; when a parallel kernel touches them
    first, its threads fault at once, and on the 2-core Xeon that took 4x as long: a 2,142 x 7,102
    float32 standardized tile took 67 ms to write into new memory from two threads, 16 ms from
    one, and 18 ms with this fill (7 ms) first. For outputs of kernels that then write them.
    """
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def use_threads(n: int) -> int:
    """Set Numba's thread count for the calling thread to ``n`` (at most Numba's pool); return it."""
    n = max(1, min(int(n), int(getattr(_numba_config, "NUMBA_NUM_THREADS"))))
    if get_num_threads() != n:
        set_num_threads(n)
    return n


def chunk_bounds(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Row boundaries (int64, ``parts + 1`` entries, non-decreasing) of ``parts`` chunks of ~equal nonzeros."""
    n = len(indptr) - 1
    targets = np.linspace(0, int(indptr[-1]), parts + 1)
    bounds = np.searchsorted(np.asarray(indptr, dtype=np.int64), targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n
    return np.maximum.accumulate(np.minimum(bounds, n))


# ---------------------------------------------------------------------------------------------
# Gene chunks: D @ W and D.T @ U with the touched rows of W (or of the partial sums) in cache
# ---------------------------------------------------------------------------------------------
#: Both products read (``D @ W``) or update (``D.T @ U``) one row of a (genes x k) array per
#: stored value, at random genes: with 20,000 genes and k = 264 that array (21 MB) lives in L3.
#: The products therefore run over chunks of genes whose slice of that array fits in this many
#: bytes (L2), each chunk over all rows of the block. Measured on the 20k x 20k atlas (2-core
#: Xeon, 2 MiB L2 per core): k = 264, 0.54 s -> 0.31 s (``D @ W``) and 0.58 s -> 0.27 s
#: (``D.T @ U``); k = 60, 0.128 s -> 0.107 s.
CHUNK_BYTES = 512 << 10

#: The product loops may fuse ``acc + a * w`` into one fused multiply-add (one rounding instead of
#: two, so no less accurate); no other fast-math licence (no reassociation: results stay
#: deterministic and independent of vector width).
_FMA = {"contract"}


def gene_chunks(n_genes: int, k: int) -> np.ndarray:
    """Gene boundaries (int64, ``n_chunks + 1`` entries) of equal chunks of ``<= CHUNK_BYTES`` x k float32."""
    n_chunks = max(1, min(n_genes, -(-n_genes * k * 4 // CHUNK_BYTES)))
    return np.linspace(0, n_genes, n_chunks + 1).round().astype(np.int64)


@njit(parallel=True, cache=True, nogil=True)
def _row_splits(indptr, indices, edges, bounds, out):  # pragma: no cover - compiled
    nc = edges.shape[0] - 1
    for ch in prange(bounds.shape[0] - 1):
        for i in range(bounds[ch], bounds[ch + 1]):
            p = indptr[i]
            stop = indptr[i + 1]
            out[i, 0] = p
            for c in range(1, nc):
                e = edges[c]
                while p < stop and indices[p] < e:
                    p += 1
                out[i, c] = p
            out[i, nc] = stop


def row_splits(indptr: np.ndarray, indices: np.ndarray, edges: np.ndarray, threads: int) -> np.ndarray:
    """Where each gene chunk starts in each row of a CSR block: int32 (rows, n_chunks + 1).

    Row ``i``'s stored values of genes ``edges[c]:edges[c + 1]`` are ``splits[i, c]:splits[i, c + 1]``
    (positions in ``indices``). Needs sorted indices within rows unless there is one chunk
    (``edges = [0, n_genes]``), whose splits are ``indptr[:-1]`` and ``indptr[1:]``.
    """
    n = len(indptr) - 1
    out = np.empty((n, len(edges)), dtype=np.int32)
    use_threads(threads)
    with _launch():
        _row_splits(indptr, indices, np.asarray(edges, dtype=np.int64), chunk_bounds(indptr, max(1, threads)), out)
    return out


# ---------------------------------------------------------------------------------------------
# D @ W with the rank-one terms of the standardized operator fused in
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True, fastmath=_FMA)
def _matmat(splits, indices, data, W, row_const, colsum, shift, bounds, out):  # pragma: no cover - compiled
    k = W.shape[1]
    nc = splits.shape[1] - 1
    for ch in prange(bounds.shape[0] - 1):
        acc = np.empty(k, dtype=np.float32)
        lo, hi = bounds[ch], bounds[ch + 1]
        for i in range(lo, hi):
            ci = row_const[i]
            for t in range(k):
                out[i, t] = ci * colsum[t] - shift[t]
        for c in range(nc):
            for i in range(lo, hi):
                p0, p1 = splits[i, c], splits[i, c + 1]
                if p0 == p1:
                    continue
                for t in range(k):
                    acc[t] = 0.0
                # Two stored values per sweep over acc: half the loads and stores of acc.
                p = p0
                while p + 2 <= p1:
                    a0 = data[p]
                    a1 = data[p + 1]
                    r0 = W[indices[p]]
                    r1 = W[indices[p + 1]]
                    for t in range(k):
                        acc[t] += a0 * r0[t] + a1 * r1[t]
                    p += 2
                if p < p1:
                    a = data[p]
                    row = W[indices[p]]
                    for t in range(k):
                        acc[t] += a * row[t]
                for t in range(k):
                    out[i, t] += acc[t]


def csr_matmat(
    splits: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    W: np.ndarray,
    row_const: np.ndarray,
    colsum: np.ndarray,
    shift: np.ndarray,
    out: np.ndarray,
    threads: int,
) -> np.ndarray:
    """``out = D @ W + row_const colsum^T - 1 shift^T`` for a CSR block ``D`` (float32).

    Parameters
    ----------
    splits : int32 (rows, n_chunks + 1)
        Gene-chunk starts of each row of ``D`` (:func:`row_splits`).
    indices, data : CSR arrays of ``D`` (rows x G), ``data`` float32
    W : float32 (G, k), C-contiguous
    row_const : float32 (rows,)
    colsum, shift : float32 (k,)
    out : float32 (rows, k), C-contiguous; written in place and returned
    threads : int
    """
    use_threads(threads)
    bounds = _row_chunks(splits, threads)
    with _launch():
        _matmat(splits, indices, data, W, row_const, colsum, shift, bounds, out)
    return out


def _row_chunks(splits: np.ndarray, parts: int) -> np.ndarray:
    """Row chunks of ~equal nonzeros from the splits of a block (first and last column: the indptr)."""
    indptr = np.empty(splits.shape[0] + 1, dtype=np.int64)
    indptr[0] = splits[0, 0] if splits.shape[0] else 0
    indptr[1:] = splits[:, -1]
    return chunk_bounds(indptr, max(1, parts))


# ---------------------------------------------------------------------------------------------
# D.T @ U into per-chunk float32 partial sums
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True, fastmath=_FMA)
def _rmatmat(splits, indices, data, U, bounds, partials):  # pragma: no cover - compiled
    k = U.shape[1]
    nc = splits.shape[1] - 1
    for ch in prange(bounds.shape[0] - 1):
        P = partials[ch]
        for c in range(nc):
            for i in range(bounds[ch], bounds[ch + 1]):
                u = U[i]
                # Two stored values per sweep over u (one load of u for two updates).
                p = splits[i, c]
                p1 = splits[i, c + 1]
                while p + 2 <= p1:
                    a0 = data[p]
                    a1 = data[p + 1]
                    d0 = P[indices[p]]
                    d1 = P[indices[p + 1]]
                    for t in range(k):
                        ut = u[t]
                        d0[t] += a0 * ut
                        d1[t] += a1 * ut
                    p += 2
                if p < p1:
                    a = data[p]
                    dst = P[indices[p]]
                    for t in range(k):
                        dst[t] += a * u[t]


def csr_rmatmat_accumulate(
    splits: np.ndarray, indices: np.ndarray, data: np.ndarray, U: np.ndarray, partials: np.ndarray
) -> None:
    """Add ``D.T @ U`` into ``partials`` (float32, shape (threads, G, k)), one partial per thread.

    Chunk ``t`` of the rows (cut at equal nonzeros) adds into ``partials[t]``, gene chunk by gene
    chunk (``splits`` from :func:`row_splits`); the caller sums the partials (in float64, in
    order) and resets them before float32 sums grow long.
    """
    use_threads(partials.shape[0])
    bounds = _row_chunks(splits, partials.shape[0])
    with _launch():
        _rmatmat(splits, indices, data, U, bounds, partials)


@njit(parallel=True, cache=True, nogil=True)
def _finish_partials(partials, acc, add, rows, cu, usum, mean, inv_scale, out):  # pragma: no cover - compiled
    n_parts = partials.shape[0]
    k = partials.shape[2]
    for r in prange(rows.shape[0]):
        g = rows[r]
        mu = mean[r]
        sc = inv_scale[r]
        o = out[r]
        if add:
            a = acc[g]
            for t in range(k):
                o[t] = a[t] + cu[t] - mu * usum[t]
        else:
            for t in range(k):
                o[t] = cu[t] - mu * usum[t]
        for c in range(n_parts):
            P = partials[c, g]
            for t in range(k):
                o[t] += P[t]
        for t in range(k):
            o[t] *= sc


def finish_transposed(
    partials: np.ndarray,
    acc: np.ndarray | None,
    rows: np.ndarray,
    cu: np.ndarray,
    usum: np.ndarray,
    mean: np.ndarray,
    inv_scale: np.ndarray,
    threads: int,
) -> np.ndarray:
    """``A.T @ U`` (float64, (len(rows), k)) from the partial sums of :func:`csr_rmatmat_accumulate`.

    ``out[r] = (acc[g] + sum_t partials[t, g] + cu - mean[r] usum) * inv_scale[r]`` with
    ``g = rows[r]`` (``acc``: float64 (G, k) sums of earlier flushes, or None), in one pass: the
    CPU twin of ``StandardizedOperator._finish_rmatmat`` applied to the summed partials.
    """
    use_threads(threads)
    k = partials.shape[2]
    out = np.empty((rows.shape[0], k), dtype=np.float64)
    add = acc is not None
    acc_arr = acc if add else np.empty((1, k), dtype=np.float64)
    with _launch():
        _finish_partials(partials, acc_arr, add, np.asarray(rows, dtype=np.int64), np.asarray(cu, dtype=np.float64),
                         np.asarray(usum, dtype=np.float64), np.asarray(mean, dtype=np.float64),
                         np.asarray(inv_scale, dtype=np.float64), out)
    return out


# ---------------------------------------------------------------------------------------------
# The dense side of the standardized operator's products, one pass each
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _scaled_sums(V, scale, weight, bounds, write, W, partials):  # pragma: no cover - compiled
    k = V.shape[1]
    for ch in prange(bounds.shape[0] - 1):
        plain = partials[ch, 0]
        weighted = partials[ch, 1]
        for r in range(bounds[ch], bounds[ch + 1]):
            s = scale[r]
            u = weight[r]
            for t in range(k):
                w = np.float64(V[r, t]) * s
                if write:
                    W[r, t] = np.float32(w)
                plain[t] += w
                weighted[t] += u * w


def _scaled_column_sums(
    V: np.ndarray, scale: np.ndarray, weight: np.ndarray, threads: int, write: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``W = diag(scale) V`` (float32, if ``write``), ``1^T W`` and ``weight^T W`` (float64) in one
    pass over the rows of ``V``; per-chunk partial sums added in chunk order (deterministic)."""
    threads = use_threads(threads)
    n, k = V.shape
    parts = max(1, min(threads, n))
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    W = np.empty((n, k) if write else (1, 1), dtype=np.float32)
    partials = np.zeros((parts, 2, k), dtype=np.float64)
    with _launch():
        _scaled_sums(V, np.asarray(scale, dtype=np.float64), np.asarray(weight, dtype=np.float64), bounds, write, W,
                     partials)
    total = partials[0].copy()
    for t in range(1, parts):
        total += partials[t]
    return (W if write else None), total[0], total[1]


def scaled_right(V: np.ndarray, inv_scale: np.ndarray, mean: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W = V / sigma`` (float32, C order), ``1^T W`` and ``mu^T W`` (float32 (k,), summed in
    float64) in one pass over ``V`` (genes x k): the CPU twin of
    ``StandardizedOperator._scaled_right`` (one float64 copy of ``V`` and three passes over it).
    """
    W, colsum, shift = _scaled_column_sums(V, inv_scale, mean, threads, write=True)
    assert W is not None  # written: write=True
    return W, colsum.astype(np.float32), shift.astype(np.float32)


def weighted_column_sums(U: np.ndarray, c: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """``c^T U`` and ``1^T U`` (float64 (k,)) of a float32 ``U`` (cells x k) in one pass, without a
    float64 copy of ``U``."""
    _, usum, cu = _scaled_column_sums(U, np.ones(U.shape[0]), c, threads, write=False)
    return cu, usum


# ---------------------------------------------------------------------------------------------
# Per-gene sums of S = D + c 1^T and of S**2 (sparse part; the dense part is added by the caller)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _column_sums(indptr, indices, data, row_const, bounds, partials):  # pragma: no cover - compiled
    for ch in prange(bounds.shape[0] - 1):
        s1 = partials[ch, 0]
        s2 = partials[ch, 1]
        for i in range(bounds[ch], bounds[ch + 1]):
            ci = row_const[i]
            for p in range(indptr[i], indptr[i + 1]):
                d = np.float64(data[p])
                g = indices[p]
                s1[g] += d
                s2[g] += d * d + 2.0 * d * ci


def column_sums(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, row_const: np.ndarray, n_genes: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene ``sum_i d_ig`` and ``sum_i (d_ig^2 + 2 d_ig c_i)`` of one CSR block (float64, (G,) each)."""
    threads = use_threads(threads)
    bounds = chunk_bounds(indptr, threads)
    partials = np.zeros((threads, 2, n_genes), dtype=np.float64)
    with _launch():
        _column_sums(indptr, indices, data, np.asarray(row_const, dtype=np.float64), bounds, partials)
    total = partials[0].copy()
    for t in range(1, threads):
        total += partials[t]
    return total[0], total[1]


@njit(parallel=True, cache=True, nogil=True)
def _group_row_sums(indptr, indices, data, rows, starts, weights, out):  # pragma: no cover - compiled
    for t in prange(out.shape[0]):
        acc = out[t]
        for r in range(starts[t], starts[t + 1]):
            i = rows[r]
            w = weights[i]
            for p in range(indptr[i], indptr[i + 1]):
                acc[indices[p]] += w * np.float64(data[p])


def group_row_sums(X: Any, codes: np.ndarray, weights: np.ndarray, n_groups: int, threads: int) -> np.ndarray:
    """``W @ X`` for ``W[codes[i], i] = weights[i]`` (one nonzero per column): weighted sums of the
    rows of a host CSR ``X`` by group, dense float64 (n_groups, n_cols).

    The CPU twin of the sparse product ``W @ X``, equal to SciPy's to the last bit (each group's
    rows added in row order, as SciPy does; groups in threads, so the result does not depend on
    the thread count; tested): one pass over the stored values into the dense result instead of a
    sparse-times-sparse product, which counts, sorts and builds a CSR result (Baron mouse, 1,886
    cells x 14,877 genes, 13 types, on 2 threads: 9.2 -> 3.0 ms, medians of 9).
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (X.shape[0],):
        raise ValueError(f"codes has shape {codes.shape}; expected ({X.shape[0]},), one per row.")
    if codes.size and (codes.min() < 0 or codes.max() >= n_groups):
        raise ValueError(f"codes must lie in [0, {n_groups}); got [{codes.min()}, {codes.max()}].")
    use_threads(threads)
    rows = np.argsort(codes, kind="stable")  # each group's rows, in row order
    starts = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=n_groups), out=starts[1:])
    out = np.zeros((n_groups, X.shape[1]), dtype=np.float64)
    with _launch():
        _group_row_sums(np.asarray(X.indptr, dtype=np.int64), X.indices, X.data, rows, starts,
                        np.asarray(weights, dtype=np.float64), out)
    return out


# ---------------------------------------------------------------------------------------------
# scTOP, one cell at a time
# ---------------------------------------------------------------------------------------------
def ztable(n_genes: int) -> np.ndarray:
    """``ndtri(j / 2 / (G + 1))`` for ``j = 0 .. 2 G + 2`` (float64): every average rank is j / 2."""
    j = np.arange(2 * n_genes + 3, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return scipy.special.ndtri((j / 2.0) / (float(n_genes) + 1.0))


#: Counts below this have a bucket of their own in the per-cell histogram; larger ones (a few
#: values per cell) are sorted by comparison.
COUNT_BUCKETS = 256


@njit(cache=True, nogil=True)
def _sctop_row_sorted(data, p0, m, lib32, n_genes, ztab, d_out):  # pragma: no cover - compiled
    """One cell of any non-negative values (not all small integers): sort the keys, walk the groups
    of equal keys. Returns ``(c, empty)`` and writes the cell's stored values into ``d_out``."""
    one = np.float32(1.0)
    keys = np.empty(m, dtype=np.float32)
    for q in range(m):
        keys[q] = np.float32(np.float32(data[p0 + q]) / lib32) + one
    order = np.argsort(keys)
    # Walk the groups of equal keys in ascending order; twice the 1-based average rank of the
    # group [gs, ge] among all G genes (zeros first) is 2 (G - m) + gs + ge + 2.
    base = 2 * (n_genes - m) + 2
    n_zero_like = 0
    norm2 = 0.0
    zs = np.empty(m, dtype=np.float64)  # z of each sorted position (0 in the zero group)
    gs = 0
    while gs < m:
        key = keys[order[gs]]
        ge = gs
        while ge + 1 < m and keys[order[ge + 1]] == key:
            ge += 1
        if key == one:
            n_zero_like += ge - gs + 1
            z = 0.0
        else:
            z = ztab[base + gs + ge]
        for q in range(gs, ge + 1):
            zs[q] = z
            norm2 += z * z
        gs = ge + 1
    n0 = (n_genes - m) + n_zero_like
    z0 = ztab[n0 + 1]
    norm2 += n0 * z0 * z0
    inv = 1.0 / np.sqrt(norm2) if norm2 > 0 else 0.0
    c = z0 * inv
    for q in range(m):
        pos = p0 + order[q]
        d_out[pos] = np.float32(0.0) if keys[order[q]] == one else np.float32(zs[q] * inv - c)
    return c, norm2 <= 0


@njit(parallel=True, cache=True, nogil=True)
def _sctop(indptr, data, n_genes, ztab, bounds, d_out, c_out, empty_out):  # pragma: no cover - compiled
    """scTOP of the rows of each chunk. A cell of small non-negative integer counts (the usual
    case) needs no sort: a histogram of its counts gives every group of equal counts its rank
    range directly, counts at or above :data:`COUNT_BUCKETS` are sorted by comparison, and consecutive
    groups whose float32 keys ``x / lib + 1`` are equal are merged (as the sort-based walk of
    :func:`_sctop_row_sorted`, which other cells take, groups them). Each group's ``z`` is
    written back through the count's bucket (or the large count's slot): two passes over the
    stored values and no per-cell allocation."""
    one = np.float32(1.0)
    nb = COUNT_BUCKETS
    for ch in prange(bounds.shape[0] - 1):
        lo, hi = bounds[ch], bounds[ch + 1]
        longest = 0
        for i in range(lo, hi):
            longest = max(longest, indptr[i + 1] - indptr[i])
        cnt = np.zeros(nb, dtype=np.int64)  # zero between cells
        zval = np.empty(nb, dtype=np.float64)  # z of each small count (NaN: the zero group)
        dval = np.empty(nb, dtype=np.float32)  # the transformed value of each small count
        big_x = np.empty(longest, dtype=np.float64)  # the large counts, in storage order (to sort)
        big_k = np.empty(longest, dtype=np.float32)  # ... and as float32 (their keys' numerator)
        big_z = np.empty(longest, dtype=np.float64)
        big_d = np.empty(longest, dtype=np.float32)
        u_key = np.empty(nb + longest, dtype=np.float32)  # units in ascending order: small counts,
        u_n = np.empty(nb + longest, dtype=np.int64)  # then each large one (its rank in big_x)
        u_ref = np.empty(nb + longest, dtype=np.int64)  # small count x: x; large count j: -(j + 1)
        for i in range(lo, hi):
            p0 = indptr[i]
            m = indptr[i + 1] - p0
            # library size, histogram of the small counts and the large ones listed, in one pass;
            # anything but non-negative integers: the sort-based walk instead
            lib = 0.0
            n_big = 0
            top = -1
            integers = True
            for q in range(m):
                x = data[p0 + q]
                lib += np.float64(np.float32(x))
                if not (x >= 0 and x == np.floor(x)):
                    integers = False
                    break
                if x < nb:
                    b = np.int64(x)
                    cnt[b] += 1
                    top = max(top, b)
                else:
                    big_x[n_big] = x
                    big_k[n_big] = np.float32(x)  # directly, as the generic block (no float64 step)
                    n_big += 1
            if not integers:
                for b in range(nb):
                    cnt[b] = 0
                lib = 0.0
                for q in range(m):
                    lib += np.float64(np.float32(data[p0 + q]))
                lib32 = np.float32(lib)
                c, empty = _sctop_row_sorted(data, p0, m, lib32 if lib32 != 0 else one, n_genes, ztab, d_out)
                c_out[i] = c
                empty_out[i] = empty
                continue
            lib32 = np.float32(lib)
            if lib32 == 0:
                lib32 = one
            n_units = 0
            for b in range(top + 1):
                if cnt[b] > 0:
                    u_key[n_units] = np.float32(np.float32(b) / lib32) + one
                    u_n[n_units] = cnt[b]
                    u_ref[n_units] = b
                    n_units += 1
            if n_big > 0:
                big_order = np.argsort(big_x[:n_big])
                for r in range(n_big):
                    j = big_order[r]
                    u_key[n_units] = np.float32(big_k[j] / lib32) + one
                    u_n[n_units] = 1
                    u_ref[n_units] = -(j + 1)
                    n_units += 1
            # groups of consecutive units with equal keys; positions gs..ge in ascending order
            base = 2 * (n_genes - m) + 2
            n_zero_like = 0
            norm2 = 0.0
            ua = 0
            gs = 0
            while ua < n_units:
                key = u_key[ua]
                ub = ua
                size = u_n[ua]
                while ub + 1 < n_units and u_key[ub + 1] == key:
                    ub += 1
                    size += u_n[ub]
                ge = gs + size - 1
                if key == one:
                    n_zero_like += size
                    z = np.nan
                else:
                    z = ztab[base + gs + ge]
                    for _ in range(size):
                        norm2 += z * z
                for u in range(ua, ub + 1):
                    ref = u_ref[u]
                    if ref >= 0:
                        zval[ref] = z
                    else:
                        big_z[-ref - 1] = z
                gs = ge + 1
                ua = ub + 1
            n0 = (n_genes - m) + n_zero_like
            z0 = ztab[n0 + 1]
            norm2 += n0 * z0 * z0
            if norm2 <= 0:
                inv = 0.0
                empty_out[i] = True
            else:
                inv = 1.0 / np.sqrt(norm2)
                empty_out[i] = False
            c = z0 * inv
            c_out[i] = c
            for u in range(n_units):  # each unit's stored value, then one lookup per stored value
                ref = u_ref[u]
                z = zval[ref] if ref >= 0 else big_z[-ref - 1]
                d = np.float32(0.0) if np.isnan(z) else np.float32(z * inv - c)
                if ref >= 0:
                    dval[ref] = d
                else:
                    big_d[-ref - 1] = d
            jb = 0
            for q in range(m):
                x = data[p0 + q]
                if x < nb:
                    d_out[p0 + q] = dval[np.int64(x)]
                else:
                    d_out[p0 + q] = big_d[jb]
                    jb += 1
            for b in range(top + 1):
                cnt[b] = 0


def sctop_rows(
    indptr: np.ndarray, data: np.ndarray, n_genes: int, threads: int, ztab: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """scTOP transform of one CSR block: ``(d float32 (nnz,), c float64 (rows,), n_empty)``.

    Same arithmetic as the generic ``transforms._sctop_block`` (float32 keys ``x / sum(x) + 1``,
    average ranks over equal keys, stored values whose key is 1 join the zero group) with
    ``ndtri`` read from :func:`ztable`.
    """
    threads = use_threads(threads)
    rows = len(indptr) - 1
    ztab = ztable(n_genes) if ztab is None else ztab
    bounds = chunk_bounds(indptr, threads * 4)
    d = np.empty(int(indptr[-1]), dtype=np.float32)
    c = np.empty(rows, dtype=np.float64)
    empty = np.empty(rows, dtype=np.bool_)
    with _launch():
        _sctop(np.asarray(indptr, dtype=np.int64), data, np.int64(n_genes), ztab, bounds, d, c, empty)
    return d, c, int(empty.sum())


# ---------------------------------------------------------------------------------------------
# lognorm, one cell at a time
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _lognorm(indptr, data, target_sum, bounds, d_out, empty_out):  # pragma: no cover - compiled
    for ch in prange(bounds.shape[0] - 1):
        for i in range(bounds[ch], bounds[ch + 1]):
            lib = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                lib += np.float64(data[p])
            empty_out[i] = lib == 0
            factor = target_sum / lib if lib > 0 else 0.0
            for p in range(indptr[i], indptr[i + 1]):
                d_out[p] = np.float32(np.log1p(np.float64(data[p]) * factor))


def lognorm_rows(indptr: np.ndarray, data: np.ndarray, target_sum: float, threads: int) -> tuple[np.ndarray, int]:
    """``log1p(x / sum(x) * target_sum)`` of one CSR block: ``(values float32 (nnz,), n_empty)``.

    CPU twin of the generic ``transforms._lognorm_block`` (library sizes summed in float64).
    """
    threads = use_threads(threads)
    rows = len(indptr) - 1
    d = np.empty(int(indptr[-1]), dtype=np.float32)
    empty = np.empty(rows, dtype=np.bool_)
    with _launch():
        _lognorm(np.asarray(indptr, dtype=np.int64), data, float(target_sum), chunk_bounds(indptr, threads * 4), d, empty)
    return d, int(empty.sum())


# ---------------------------------------------------------------------------------------------
# Count validation in one pass
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _value_counts(data, indices, columns, masked, bounds, out):  # pragma: no cover - compiled
    for ch in prange(bounds.shape[0] - 1):
        n_bad = 0
        n_neg = 0
        n_frac = 0
        for p in range(bounds[ch], bounds[ch + 1]):
            if masked and not columns[indices[p]]:
                continue
            x = data[p]
            if not np.isfinite(x):
                n_bad += 1
            elif x < 0:
                n_neg += 1
            elif np.floor(x) != x:
                n_frac += 1
        out[ch, 0] = n_bad
        out[ch, 1] = n_neg
        out[ch, 2] = n_frac


def value_counts(data: np.ndarray, threads: int, indices: np.ndarray | None = None,
                 columns: np.ndarray | None = None) -> tuple[int, int, int]:
    """``(non-finite, negative, non-integer)`` counts of a float array (CPU twin of ``check_counts``);
    with ``indices`` (the column of each value) and a boolean ``columns`` mask, of the values in
    those columns only."""
    if columns is not None and (indices is None or indices.shape != data.shape):
        raise ValueError("value_counts(columns=...) needs the column index of every value (indices).")
    threads = use_threads(threads)
    parts = threads * 4
    bounds = np.linspace(0, data.size, parts + 1).astype(np.int64)
    out = np.zeros((parts, 3), dtype=np.int64)
    with _launch():
        if columns is None:  # every value (the mask and the indices are not read)
            _value_counts(data.ravel(), np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.bool_), False, bounds, out)
        else:
            _value_counts(data.ravel(), indices, np.asarray(columns, dtype=np.bool_), True, bounds, out)
    n_bad, n_neg, n_frac = (int(v) for v in out.sum(axis=0))
    return n_bad, n_neg, n_frac


# ---------------------------------------------------------------------------------------------
# Columns of a CSR matrix, re-indexed (query genes aligned to a reference's)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _count_kept(indptr, indices, pos, bounds, counts):  # pragma: no cover - compiled
    for t in prange(bounds.shape[0] - 1):
        for i in range(bounds[t], bounds[t + 1]):
            c = 0
            for p in range(indptr[i], indptr[i + 1]):
                if pos[indices[p]] >= 0:
                    c += 1
            counts[i] = c


#: Spacing of the chunks' spill slots in :func:`_take_columns`, in bytes: no two threads write one
#: cache line (adjacent slots made the take 5x slower on two threads), nor the first slot the
#: cache line of the output's end.
_SPILL_BYTES = 128


@njit(parallel=True, cache=True, nogil=True)
def _take_columns(indptr, indices, data, pos, out_indptr, bounds, key_bits, spill_stride, out_indices, out_data):  # pragma: no cover
    nnz = out_indptr[out_indptr.shape[0] - 1]
    for t in prange(bounds.shape[0] - 1):
        longest = 0
        for i in range(bounds[t], bounds[t + 1]):
            longest = max(longest, out_indptr[i + 1] - out_indptr[i])
        tmp_c = np.empty(longest, dtype=out_indices.dtype)
        tmp_v = np.empty(longest, dtype=out_data.dtype)
        count = np.empty(257, dtype=np.int64)
        spill = nnz + spill_stride * (t + 1)  # this chunk's slot past the output for the dropped values
        for i in range(bounds[t], bounds[t + 1]):
            a = out_indptr[i]
            q = a
            for p in range(indptr[i], indptr[i + 1]):
                # Branch-free: every value is written, a dropped one to the spill slot (a kept /
                # dropped branch on a gene pattern mispredicts: 3.4x slower on 4M Baron values).
                j = pos[indices[p]]
                keep = j >= 0
                w = q if keep else spill
                out_indices[w] = j
                out_data[w] = data[p]
                q += keep
            m = q - a
            if key_bits == 0 or m < 2:
                continue
            # LSD radix sort of the row by column, 8 bits a pass (stable: duplicates keep their order)
            src_c, src_v, dst_c, dst_v = out_indices[a:q], out_data[a:q], tmp_c[:m], tmp_v[:m]
            shift = 0
            in_tmp = False
            while shift < key_bits:
                for b in range(257):
                    count[b] = 0
                for k in range(m):
                    count[((src_c[k] >> shift) & 255) + 1] += 1
                for b in range(256):
                    count[b + 1] += count[b]
                for k in range(m):
                    b = (src_c[k] >> shift) & 255
                    dst_c[count[b]] = src_c[k]
                    dst_v[count[b]] = src_v[k]
                    count[b] += 1
                src_c, dst_c = dst_c, src_c
                src_v, dst_v = dst_v, src_v
                in_tmp = not in_tmp
                shift += 8
            if in_tmp:
                for k in range(m):
                    out_indices[a + k] = tmp_c[k]
                    out_data[a + k] = tmp_v[k]


def csr_take_columns(X: Any, pos: np.ndarray, n_out: int, threads: int) -> Any:
    """The columns of a host CSR ``X`` re-indexed through ``pos``: column ``g`` of ``X`` becomes
    column ``pos[g]`` of the result (``-1``: dropped), a CSR matrix of shape (n_rows, ``n_out``)
    with sorted indices (duplicates kept, in storage order); values keep their dtype. Columns nobody maps to are
    empty (genes missing from a query count as zero).

    Two passes in threads over row chunks (count; then copy, and radix-sort each row by column
    when the map reorders columns or ``X``'s rows are unsorted); the generic
    twin is ``X @ P`` with the 0/1 selection matrix ``P[g, pos[g]] = 1`` (tested equal). On the
    2-core Xeon, 100k synthetic cells (110M stored values) to 15k of their 20k genes in another
    order: 0.58 s against 3.64 s for ``X @ P`` (``benchmarks/align_genes.py``).
    """
    import scipy.sparse as sp

    pos = np.asarray(pos, dtype=np.int64)
    if pos.shape != (X.shape[1],):
        raise ValueError(f"pos has shape {pos.shape}; expected ({X.shape[1]},).")
    if pos.size and pos.max() >= n_out:
        raise ValueError(f"pos maps a column to {int(pos.max())}, outside the {n_out} output columns.")
    indptr = np.asarray(X.indptr, dtype=np.int64)
    threads = use_threads(threads)
    bounds = chunk_bounds(indptr, threads * 4)
    counts = np.empty(X.shape[0], dtype=np.int64)
    with _launch():
        _count_kept(indptr, X.indices, pos, bounds, counts)
    out_indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    nnz = int(out_indptr[-1])
    index_dtype = np.int32 if max(nnz, n_out) < 2**31 else np.int64
    # one spill slot per chunk past the end (see _take_columns); the matrix holds the first nnz
    spill_stride = -(-_SPILL_BYTES // min(np.dtype(index_dtype).itemsize, X.data.dtype.itemsize))
    spare = spill_stride * len(bounds)
    out_indices = touched_empty(nnz + spare, index_dtype)
    out_data = touched_empty(nnz + spare, X.data.dtype)
    kept = pos[pos >= 0]
    monotone = bool(np.all(np.diff(kept) > 0))
    sort = not (monotone and X.has_sorted_indices)
    key_bits = 8 * max(1, -(-int(max(n_out - 1, 1)).bit_length() // 8)) if sort else 0
    with _launch():
        _take_columns(indptr, X.indices, X.data, pos, out_indptr, bounds, np.int64(key_bits), np.int64(spill_stride),
                      out_indices, out_data)
    out = sp.csr_matrix((out_data[:nnz], out_indices[:nnz], out_indptr.astype(index_dtype)), shape=(X.shape[0], n_out),
                        copy=False)
    out.has_sorted_indices = bool(X.has_sorted_indices) or sort
    if out.has_sorted_indices and len(kept) == len(np.unique(kept)) and X.has_canonical_format:
        # no two columns land on one and X has no duplicate entries: so checks need no pass
        out.has_canonical_format = True
    return out


# ---------------------------------------------------------------------------------------------
# D @ V in float64 (the projection's order parameters), SciPy's product to the last bit
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _csr_dot64(indptr, indices, data, V, bounds, out):  # pragma: no cover - compiled
    k = V.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for i in range(bounds[t], bounds[t + 1]):
            row = out[i]
            for c in range(k):
                row[c] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                a = np.float64(data[p])
                v = V[indices[p]]
                for c in range(k):
                    row[c] += a * v[c]


def csr_dot64(X: Any, V: np.ndarray, threads: int) -> np.ndarray:
    """``X @ V`` (float64, (n_rows, k)) for a host CSR ``X`` and a float64 ``V`` (n_cols, k).

    The CPU twin of SciPy's ``X @ V``, to the last bit (each row's stored values added in storage
    order, the values widened to float64 first), with rows in threads and without SciPy's float64
    copy of a float32 ``X``: a Baron-sized query (1,886 x 11,674, 2.3M values) times 9 columns,
    SciPy 7.9 ms, this kernel 4.4 ms on 2 threads (medians of 20, 2-core Xeon).
    """
    V = np.ascontiguousarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != X.shape[1]:
        raise ValueError(f"V has shape {V.shape}; expected ({X.shape[1]}, k).")
    indptr = np.asarray(X.indptr, dtype=np.int64)
    threads = use_threads(threads)
    out = np.empty((X.shape[0], V.shape[1]), dtype=np.float64)
    with _launch():
        _csr_dot64(indptr, X.indices, X.data, V, chunk_bounds(indptr, threads * 4), out)
    return out


# ---------------------------------------------------------------------------------------------
# Dense rows of a CSR block (the D tiles of products on dense data)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _scatter_rows(indptr, indices, data, start, bounds, out):  # pragma: no cover - compiled
    for t in prange(bounds.shape[0] - 1):
        for r in range(bounds[t], bounds[t + 1]):
            i = start + r
            o = out[r]
            for p in range(indptr[i], indptr[i + 1]):
                o[indices[p]] += data[p]


def csr_rows_dense(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, start: int, stop: int, n_cols: int,
                   threads: int) -> np.ndarray:
    """Rows ``start:stop`` of a float32 CSR matrix as a dense float32 (stop - start, n_cols) array.

    The CPU twin of ``gpulin._gpu_kernels.csr_rows_to_dense``'s scatter kernel, in threads over
    row chunks, into memory mapped by the calling thread (:func:`touched_empty`); duplicates are
    summed in storage order, as SciPy's ``toarray`` does, so the values are identical to it.
    On the 2-core Xeon, 1,886 x 11,674 at 11% nonzeros in tiles: 53 ms with ``toarray``.
    """
    out = touched_empty((stop - start, n_cols), np.float32)
    if stop == start:
        return out
    threads = use_threads(threads)
    rows_ptr = np.asarray(indptr[start : stop + 1], dtype=np.int64)
    bounds = chunk_bounds(rows_ptr - rows_ptr[0], threads * 4)
    with _launch():
        _scatter_rows(np.asarray(indptr, dtype=np.int64), indices, data, np.int64(start), bounds, out)
    return out


# ---------------------------------------------------------------------------------------------
# Dense standardized rows (tiles) in one pass
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _standardized_rows(indptr, indices, data, start, row_const, pos, mean, inv_scale, out):  # pragma: no cover
    g = out.shape[1]
    for r in prange(out.shape[0]):
        i = start + r
        o = out[r]
        for j in range(g):
            o[j] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = pos[indices[p]]
            if j >= 0:
                o[j] += data[p]
        c = row_const[r]
        for j in range(g):
            o[j] = ((o[j] + c) - mean[j]) * inv_scale[j]


def standardized_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    start: int,
    stop: int,
    row_const: np.ndarray,
    pos: np.ndarray,
    mean: np.ndarray,
    inv_scale: np.ndarray,
    threads: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Dense standardized rows ``((D[start:stop, genes] + c) - mean) * inv_scale`` (float32), one pass per row.

    The CPU twin of ``StandardizedOperator.tile`` (densify the rows, select the genes, then three
    whole-tile float32 passes), with the same float32 operations in the same order, so the values
    are identical; duplicate stored values are summed, as SciPy's ``toarray`` does.

    Parameters
    ----------
    indptr, indices, data : CSR arrays of ``D``; ``data`` float32
    start, stop : rows of ``D``
    row_const : float32 (stop - start,), the per-cell constants ``c`` of those rows
    pos : int64 (n_genes of D,), the output column of each gene, or -1 for genes not selected
    mean, inv_scale : float32 (n_selected,)
    threads : int
    out : float32 (stop - start, n_selected), C-contiguous, optional
        Where to write (e.g. rows of a larger array); a new array when None.

    Returns
    -------
    numpy.ndarray, float32, shape (stop - start, n_selected)
    """
    use_threads(threads)
    if out is None:
        out = touched_empty((stop - start, mean.shape[0]), np.float32)
    with _launch():
        _standardized_rows(indptr, indices, data, np.int64(start), row_const, pos, mean, inv_scale, out)
    return out


# ---------------------------------------------------------------------------------------------
# Cells x cells Gram matrix of a sparse matrix (the rarely detected genes of a per-split fit)
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, nogil=True)
def _add_sparse_cell_gram(H, indptr, indices, vals, cptr, crows, cvals, left, right, bounds):  # pragma: no cover
    n = H.shape[1]
    r = left.shape[1]
    for t in prange(bounds.shape[0] - 1):
        o = np.empty(n, dtype=np.float64)
        for i in range(bounds[t], bounds[t + 1]):
            h = H[i]
            for j in range(n):
                acc = np.float64(h[j])
                for q in range(r):
                    acc += left[i, q] * right[j, q]
                o[j] = acc
            for p in range(indptr[i], indptr[i + 1]):
                g = indices[p]
                a = vals[p]
                for q in range(cptr[g], cptr[g + 1]):
                    o[crows[q]] += a * cvals[q]
            for j in range(n):
                h[j] = o[j]


def add_sparse_cell_gram(H: np.ndarray, E: Any, left: np.ndarray, right: np.ndarray, threads: int) -> np.ndarray:
    """``H += E @ E.T + left @ right.T`` in place, each row summed in float64.

    ``H`` (n_cells, n_cells) float32 or float64, C-contiguous; ``E`` sparse CSR (n_cells, n_genes);
    ``left``, ``right`` float64 (n_cells, r) (a low-rank correction). Each output row is one
    thread's: for every stored value ``E[i, g]`` the column ``g`` (from a CSC copy) is added to row
    ``i``, so ``E E^T`` costs the sum over genes of their squared nonzero counts, far below a dense
    GEMM for rarely detected genes. Rows ``i`` and ``j`` sum the genes they share in the same
    (sorted) order, so that part is exactly symmetric. The generic twin is
    ``H + (E @ E.T).toarray() + left @ right.T`` (tested equal).
    """
    import scipy.sparse as sp

    E = sp.csr_matrix(E, dtype=np.float64)
    E.sum_duplicates()
    C = E.tocsc()
    C.sort_indices()
    if not (H.flags.c_contiguous and H.shape == (E.shape[0], E.shape[0])):
        raise ValueError(f"H must be C-contiguous of shape {(E.shape[0], E.shape[0])}, got {H.shape}.")
    indptr = E.indptr.astype(np.int64)
    threads = use_threads(threads)
    with _launch():
        _add_sparse_cell_gram(H, indptr, E.indices, E.data, C.indptr.astype(np.int64), C.indices, C.data,
                              np.ascontiguousarray(left, dtype=np.float64), np.ascontiguousarray(right, dtype=np.float64),
                              chunk_bounds(indptr, threads * 4))
    return H
