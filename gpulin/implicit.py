"""Implicit "sparse + one constant per cell" matrices and their standardized linear operator.

Both transforms of gpulin produce a cells x genes matrix of the form

    S = D + c 1^T

with ``D`` sparse (the pattern of the counts) and ``c`` one constant per cell (the value of the
cell's zero genes; ``c = 0`` for ``lognorm``). Standardizing genes gives

    A = (S - 1 mu^T) diag(1 / sigma)

which is dense, but every product with it costs one sparse product plus rank-one corrections:

    A v   = D (v / sigma) + c (1^T (v / sigma)) - 1 (mu^T (v / sigma))
    A^T u = (D^T u + 1 (c^T u) - mu (1^T u)) / sigma

The matrix is held as row blocks (one CSR per block, int32 indices on GPU) so that memory stays
bounded and more than 2^31 nonzeros work. Sums, means and Gram matrices accumulate in float64;
products run in float32.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ._backend import Backend, to_host
from ._gpu_kernels import csr_rows_to_dense

#: Matrices denser than this are multiplied as dense row tiles (GEMM beats sparse-times-dense
#: there). On an H100 at 5.5% nonzeros (200k x 20k synthetic cells, benchmarks/gpu_profile.py) a
#: 50-component embed took 0.54 s with dense tiles and 1.27 s with cuSPARSE products; the tile cost
#: does not depend on the density and cuSPARSE's grows with it, which puts the crossover near
#: 1.5% if cuSPARSE scales linearly (not measured at lower densities). On CPU it was measured: the
#: compiled sparse kernels (gpulin._cpu_kernels) and OpenBLAS GEMM on a cached dense tile take
#: about the same time for A @ V plus A.T @ U at ~10% nonzeros (1,500 Baron cells at 9.3%, 230
#: columns: 0.28 s sparse vs 0.27 s dense), and sparse wins below.
TILE_DENSITY = 0.01
TILE_DENSITY_CPU = 0.10
#: CPU ``A.T @ U`` sums at most this many cells in float32 before adding to the float64 total.
FLUSH_ROWS = 1 << 15


_THREAD_LOCAL = threading.local()


def cpu_workers() -> int:
    """Threads for CPU sparse products: the calling thread's :func:`thread_workers` setting, else
    ``GPULIN_NUM_THREADS``, else the usable cores (<= 16)."""
    local = getattr(_THREAD_LOCAL, "workers", None)
    if local is not None:
        return local
    env = os.environ.get("GPULIN_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"GPULIN_NUM_THREADS must be a positive integer, got {env!r}.") from None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


@contextlib.contextmanager
def thread_workers(n: int) -> Iterator[None]:
    """Within it, :func:`cpu_workers` returns ``n`` in the calling thread only (other threads keep
    theirs): for independent tasks run side by side, one core each (:mod:`gpulin._concurrent`)."""
    previous = getattr(_THREAD_LOCAL, "workers", None)
    _THREAD_LOCAL.workers = max(1, int(n))
    try:
        yield
    finally:
        _THREAD_LOCAL.workers = previous


@dataclass
class SparsePlusRowConstant:
    """A cells x genes matrix ``S = D + c 1^T`` stored as CSR row blocks.

    Attributes
    ----------
    blocks : list of CSR matrices
        ``D`` for rows ``row_starts[b]:row_starts[b + 1]``, float32 values, on ``backend``.
    row_starts : numpy.ndarray of int64, shape (n_blocks + 1,)
        Block boundaries on the host.
    c : array of float64, shape (n_cells,)
        Per-cell constant on ``backend``.
    n_genes : int
    backend : Backend
    """

    blocks: list[Any]
    row_starts: np.ndarray
    c: Any
    n_genes: int
    backend: Backend
    _col_stats: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.row_starts[-1]), self.n_genes

    @property
    def nnz(self) -> int:
        return int(sum(b.nnz for b in self.blocks))

    def iter_blocks(self) -> Iterator[tuple[int, int, Any, Any]]:
        """Yield ``(start, stop, D_block, c_block)`` for each row block."""
        for b, blk in enumerate(self.blocks):
            start, stop = int(self.row_starts[b]), int(self.row_starts[b + 1])
            yield start, stop, blk, self.c[start:stop]

    def column_sums(self) -> tuple[Any, Any]:
        """Per-gene sums of ``S`` and of ``S**2`` (float64, on device), cached.

        Uses ``sum_i (d_ig + c_i)^2 = sum_i d_ig^2 + 2 (D^T c)_g + sum_i c_i^2``; nothing dense.
        """
        if self._col_stats is None:
            xp = self.backend.xp
            s1 = xp.zeros(self.n_genes, dtype=xp.float64)
            s2 = xp.zeros(self.n_genes, dtype=xp.float64)
            if not self.backend.is_gpu:
                from ._cpu_kernels import column_sums  # CPU twin of the three bincounts below

                for _, _, blk, cb in self.iter_blocks():
                    a, b = column_sums(blk.indptr, blk.indices, blk.data, cb, self.n_genes, cpu_workers())
                    s1 += a
                    s2 += b
            else:
                for _, _, blk, cb in self.iter_blocks():
                    if blk.nnz == 0:  # (CuPy's bincount fails on empty input)
                        continue
                    d = blk.data.astype(xp.float64)
                    s1 += xp.bincount(blk.indices, weights=d, minlength=self.n_genes)
                    s2 += xp.bincount(blk.indices, weights=d * d, minlength=self.n_genes)
                    row = _row_ids(blk, xp)
                    s2 += 2.0 * xp.bincount(blk.indices, weights=d * cb[row], minlength=self.n_genes)
            s1 += self.c.sum()
            s2 += (self.c * self.c).sum()
            self._col_stats = (s1, s2)
        return self._col_stats

    def take_rows(self, rows: Any) -> "SparsePlusRowConstant":
        """The cells ``rows`` (an index array, any order, repeats allowed) as a new implicit matrix.

        Values are copied; nothing dense is formed. The result is blocked like a fresh transform,
        and each of its blocks is gathered on its own, so the temporaries (the rows taken from
        each source block, stacked, then put in order) are bounded by one output block rather
        than the whole selection.
        """
        from .transforms import plan_row_blocks

        xp = self.backend.xp
        rows = np.asarray(to_host(rows), dtype=np.int64).ravel()
        if rows.size == 0:
            raise ValueError("take_rows needs at least one row.")
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} cells")
        block_of = np.searchsorted(self.row_starts, rows, side="right") - 1
        local = rows - self.row_starts[block_of]
        lengths = np.empty(rows.size, dtype=np.int64)  # stored values of every selected row
        for b in np.unique(block_of):
            sel = block_of == b
            indptr_b = np.asarray(to_host(self.blocks[b].indptr), dtype=np.int64)
            lengths[sel] = indptr_b[local[sel] + 1] - indptr_b[local[sel]]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        bounds = plan_row_blocks(indptr, self.n_genes, self.backend, None)
        blocks = [self._gather_rows(block_of[a:b], local[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return SparsePlusRowConstant(
            blocks=blocks, row_starts=bounds, c=self.c[xp.asarray(rows)], n_genes=self.n_genes, backend=self.backend
        )

    def _gather_rows(self, block_of: np.ndarray, local: np.ndarray) -> Any:
        """One CSR block (in gpulin's block format) of the rows ``local`` of the source blocks ``block_of``, in order."""
        from .transforms import _block_view

        xp, sparse = self.backend.xp, self.backend.sparse
        order = np.argsort(block_of, kind="stable")
        sorted_blocks, sorted_local = block_of[order], local[order]
        pieces = [self.blocks[b][xp.asarray(sorted_local[sorted_blocks == b])] for b in np.unique(sorted_blocks)]
        M = sparse.vstack(pieces, format="csr") if len(pieces) > 1 else pieces[0]
        del pieces
        if not np.array_equal(order, np.arange(order.size)):
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            M = M[xp.asarray(inverse)]
        M = sparse.csr_matrix(M)
        indptr = np.asarray(to_host(M.indptr), dtype=np.int64)
        return _block_view(M, indptr, 0, M.shape[0], self.backend)

    def dot(self, V: Any) -> Any:
        """``S @ V = D V + c (1^T V)`` for dense V of shape (n_genes, k) or (n_genes,); float64
        (n_cells, k) or (n_cells,) on device. Also ``S @ V``."""
        xp = self.backend.xp
        V = xp.asarray(V, dtype=xp.float64)
        if V.ndim not in (1, 2) or V.shape[0] != self.n_genes:
            raise ValueError(f"S @ V needs V of shape ({self.n_genes},) or ({self.n_genes}, k) for S of shape "
                             f"{self.shape}, got {tuple(V.shape)}.")
        if V.ndim == 1:
            return self.dot(V[:, None])[:, 0]
        V = xp.ascontiguousarray(V)
        colsum = V.sum(axis=0)
        out = xp.empty((self.shape[0], V.shape[1]), dtype=xp.float64)
        for start, stop, blk, cb in self.iter_blocks():
            if self.backend.is_gpu:
                out[start:stop] = blk @ V + cb[:, None] * colsum[None, :]
            else:
                from ._cpu_kernels import csr_dot64  # CPU twin of the product above (SciPy's, bit for bit)

                out[start:stop] = csr_dot64(blk, V, cpu_workers()) + cb[:, None] * colsum[None, :]
        return out

    def __matmul__(self, V: Any) -> Any:
        return self.dot(V)

    def row_sq_norms(self) -> Any:
        """``||s_i||^2 = sum_j (D_ij + c_i)^2`` over the ``n_genes`` columns (float64 (n_cells,) on
        device): ``sum D_ij^2 + 2 c_i sum D_ij + n_genes c_i^2`` from the stored values."""
        xp = self.backend.xp
        out = xp.empty(self.shape[0], dtype=xp.float64)
        for start, stop, blk, cb in self.iter_blocks():
            b = blk.astype(xp.float64)
            c = xp.asarray(cb, dtype=xp.float64)
            d1 = xp.asarray(b.sum(axis=1)).ravel()
            d2 = xp.asarray(b.multiply(b).sum(axis=1)).ravel()
            out[start:stop] = d2 + 2.0 * c * d1 + float(self.n_genes) * c * c
        return out

    def toarray(self) -> np.ndarray:
        """Materialize ``S`` as a dense NumPy float32 array (small inputs and tests only)."""
        out = np.empty(self.shape, dtype=np.float32)
        for start, stop, blk, cb in self.iter_blocks():
            dense = to_host(blk.toarray()).astype(np.float64) + to_host(cb)[:, None]
            out[start:stop] = dense
        return out

    def nbytes(self) -> int:
        """Device bytes held by the blocks (values + indices + indptr) and ``c``."""
        total = int(self.c.nbytes)
        for blk in self.blocks:
            total += int(blk.data.nbytes + blk.indices.nbytes + blk.indptr.nbytes)
        return total


class _RowRange:
    """Rows ``start:stop`` of a CSR block, densified on demand (no CSR slice is made)."""

    __slots__ = ("blk", "start", "stop")

    def __init__(self, blk: Any, start: int, stop: int) -> None:
        self.blk, self.start, self.stop = blk, start, stop

    def toarray(self) -> Any:
        return csr_rows_to_dense(self.blk, self.start, self.stop)


def _row_ids(blk: Any, xp: Any) -> Any:
    """Row index (within the block) of each stored value of a CSR block (int64, (nnz,)).

    The running count of row starts at or before each position: O(nnz), and portable (CuPy
    before 14.1 takes no array of repeats in ``repeat``; its ``bincount`` fails on empty input).
    """
    nnz = int(blk.nnz)
    if blk.shape[0] <= 1 or nnz == 0:
        return xp.zeros(nnz, dtype=xp.int64)
    starts = blk.indptr[1:-1].astype(xp.int64)
    return xp.cumsum(xp.bincount(starts, minlength=nnz + 1)[:nnz])


@dataclass
class GeneScaling:
    """Per-gene centring and scaling (float64, on device).

    ``mean`` is the gene mean; ``scale`` the population standard deviation, 1 for genes whose
    variance is zero up to rounding (scikit-learn's ``StandardScaler`` rule).
    """

    mean: Any
    scale: Any
    var: Any
    n_cells: int

    @classmethod
    def fit(cls, S: SparsePlusRowConstant, *, center: bool = True, scale: bool = True) -> "GeneScaling":
        xp = S.backend.xp
        n = S.shape[0]
        s1, s2 = S.column_sums()
        mean = s1 / n
        var = xp.maximum(s2 / n - mean * mean, 0.0)
        eps = np.finfo(np.float64).eps
        # scikit-learn's constant-feature bound, widened by the rounding error of s2 / n: s2 is a
        # sum over the cells of d^2 + 2 d c + c^2 terms that cancel (sctop: d is close to -c),
        # whose magnitudes add up to at most 4 s2 + 6 sum(c^2) (|d c| <= (d^2 + c^2) / 2 and
        # d^2 <= 2 x^2 + 2 c^2), and a sum of n terms is off by at most n eps times that. With
        # identical cells, constant genes had kept variances of ~1e-17 and were scaled up to 1.
        sum_c2 = float((S.c * S.c).sum())
        bound = n * eps * var + (n * mean * eps) ** 2 + 8 * eps * (4.0 * s2 + 6.0 * sum_c2)
        constant = var <= bound
        var = xp.where(constant, 0.0, var)
        sd = xp.where(constant, 1.0, xp.sqrt(var)) if scale else xp.ones_like(mean)
        if not center:
            mean = xp.zeros_like(mean)
        return cls(mean=mean, scale=sd, var=var, n_cells=n)

    def subset(self, genes: Any) -> "GeneScaling":
        return GeneScaling(self.mean[genes], self.scale[genes], self.var[genes], self.n_cells)

    def on(self, backend: Backend) -> "GeneScaling":
        """The same scaling with its arrays on ``backend`` (host NumPy for the CPU): fitted
        estimators keep a host copy, so they pickle and run on either device."""
        move = backend.xp.asarray if backend.is_gpu else (lambda a: np.asarray(to_host(a)))
        return GeneScaling(move(self.mean), move(self.scale), move(self.var), self.n_cells)


class StandardizedOperator:
    """The implicit linear operator ``A = (S - 1 mu^T) diag(1/sigma)``, optionally on a gene subset.

    Parameters
    ----------
    S : SparsePlusRowConstant
    scaling : GeneScaling
        Gene means and scales over all genes of ``S``.
    genes : array of int, optional
        Column subset (e.g. ANOVA-selected genes); ``None`` means all genes.
    tile_bytes : int, optional
        Largest dense row tile used when blocks are denser than :data:`TILE_DENSITY` (default:
        64 MiB on CPU; on GPU 1 GiB or a sixteenth of free memory, whichever is smaller).
    """

    def __init__(
        self,
        S: SparsePlusRowConstant,
        scaling: GeneScaling,
        genes: Any | None = None,
        *,
        dense_tiles: bool | None = None,
        tile_bytes: int | None = None,
    ) -> None:
        self.S = S
        self.backend = S.backend
        xp = self.backend.xp
        self.genes = None if genes is None else xp.asarray(genes, dtype=xp.int64)
        n_genes = S.n_genes if self.genes is None else int(self.genes.shape[0])
        self.shape = (S.shape[0], n_genes)
        sc = scaling if self.genes is None else scaling.subset(self.genes)
        self.mean = sc.mean
        self.inv_scale = 1.0 / sc.scale
        self.var = sc.var
        self.scale = sc.scale
        density = S.nnz / max(1, S.shape[0] * S.n_genes)
        threshold = TILE_DENSITY if self.backend.is_gpu else TILE_DENSITY_CPU
        self.dense_tiles = (density >= threshold) if dense_tiles is None else bool(dense_tiles)
        self.workers = 1 if self.backend.is_gpu else cpu_workers()
        #: CPU sparse products use gpulin._cpu_kernels (their twin is the generic sparse path).
        self.cpu_kernels = not self.backend.is_gpu
        if tile_bytes is None:
            # GPU: large tiles (each tile costs a slice, a densification and a GEMM launch; at 1M
            # cells x 20k genes 64 MiB tiles would mean ~1,200 of them per pass).
            free = self.backend.free_memory_bytes() if self.backend.is_gpu else None
            tile_bytes = int(min(1 << 30, free // 16)) if free else 64 << 20
        self.tile_rows = max(1, int(tile_bytes // (4 * max(1, S.n_genes))))
        # A matrix that fits in one tile keeps its dense D between products (the memory of the one
        # tile that products allocate anyway) instead of re-expanding it on every pass.
        self._cached_tiles: list[tuple[int, int, Any, Any]] | None = None
        self._splits: dict[tuple[int, int], np.ndarray] = {}  # CPU gene-chunk starts per (block, n_chunks)
        self._gene_pos: np.ndarray | None = None  # CPU tiles: column of each gene (-1: not selected)
        self._cache_tiles = self.dense_tiles and S.shape[0] <= self.tile_rows
        if self.genes is not None:
            # Selection matrix P (G x G_sel) so that D P = D[:, genes] without copying D.
            self._select = self.backend.sparse.csr_matrix(
                (
                    xp.ones(n_genes, dtype=xp.float32),
                    (self.genes, xp.arange(n_genes, dtype=xp.int64)),
                ),
                shape=(S.n_genes, n_genes),
            )

    # -- dense row tiles ------------------------------------------------------------------------
    def _tiles(self) -> Iterator[tuple[int, int, "_RowRange", Any]]:
        for start, stop, blk, cb in self.S.iter_blocks():
            for s in range(0, stop - start, self.tile_rows):
                e = min(stop - start, s + self.tile_rows)
                yield start + s, start + e, _RowRange(blk, s, e), cb[s:e]

    def tile(self, rows: "_RowRange", cb: Any, out: Any | None = None) -> Any:
        """Dense standardized rows ``A[rows]`` (float32) of one row range of a block (into ``out``
        when given, a C-contiguous float32 array of that shape)."""
        xp = self.backend.xp
        if self.cpu_kernels:
            from ._cpu_kernels import standardized_rows  # CPU twin of the lines below

            blk = rows.blk
            return standardized_rows(
                blk.indptr, blk.indices, np.asarray(blk.data, dtype=np.float32), rows.start, rows.stop,
                np.asarray(cb, dtype=np.float32), self._gene_positions(), self.mean.astype(np.float32),
                self.inv_scale.astype(np.float32), self.workers, out=out,
            )
        dense = rows.toarray()
        if self.genes is not None:
            dense = dense[:, self.genes]
        dense += cb.astype(xp.float32)[:, None]
        dense -= self.mean.astype(xp.float32)[None, :]
        dense *= self.inv_scale.astype(xp.float32)[None, :]
        if out is not None:
            out[...] = dense
            return out
        return dense

    def _gene_positions(self) -> np.ndarray:
        """Column of each gene of ``S`` in ``A`` (int64, (S.n_genes,)), -1 for genes not selected (host)."""
        if self._gene_pos is None:
            G = self.S.n_genes
            if self.genes is None:
                self._gene_pos = np.arange(G, dtype=np.int64)
            else:
                self._gene_pos = np.full(G, -1, dtype=np.int64)
                self._gene_pos[np.asarray(to_host(self.genes))] = np.arange(self.shape[1], dtype=np.int64)
        return self._gene_pos

    # -- products -------------------------------------------------------------------------------
    def _blocks_for_products(self) -> Iterator[tuple[int, int, Any, Any]]:
        """Row blocks as used by products: dense float32 tiles of ``D`` or the CSR blocks."""
        if self.dense_tiles:
            if self._cached_tiles is not None:
                yield from self._cached_tiles
                return
            tiles = []
            for start, stop, blk, cb in self._tiles():
                tile = (start, stop, blk.toarray(), cb)
                if self._cache_tiles:
                    tiles.append(tile)
                yield tile
            if self._cache_tiles:
                self._cached_tiles = tiles
        else:
            yield from self.S.iter_blocks()

    def _row_splits(self, b: int, blk: Any, k: int) -> np.ndarray:
        """Gene-chunk starts per row of CPU block ``b`` for products with k columns (cached per chunking).

        One chunk (the plain CSR order) when the block's indices are not sorted within rows.
        """
        from ._cpu_kernels import gene_chunks, row_splits

        G = self.S.n_genes
        edges = gene_chunks(G, k) if blk.has_sorted_indices else np.array([0, G], dtype=np.int64)
        key = (b, len(edges))
        if key not in self._splits:
            self._splits[key] = row_splits(blk.indptr, blk.indices, edges, self.workers)
        return self._splits[key]

    def products_context(self) -> Any:
        """Context for a sequence of products interleaved with small dense linear algebra.

        With the compiled CPU sparse kernels, BLAS runs single-threaded inside it (spinning BLAS
        threads would take the cores from the kernels; :func:`gpulin._cpu_kernels.single_threaded_blas`).
        Otherwise (GPU, dense tiles) it changes nothing.
        """
        if self._cpu_sparse:
            from ._cpu_kernels import single_threaded_blas

            return single_threaded_blas()
        return contextlib.nullcontext()

    @property
    def _cpu_sparse(self) -> bool:
        """Sparse products through the compiled CPU kernels (``cpu_kernels=False``: the generic path)."""
        return self.cpu_kernels and not self.dense_tiles

    def matmat(self, V: Any, out: Any | None = None) -> Any:
        """``A @ V`` for V of shape (n_genes, k); returns float32 (n_cells, k) on device.

        ``D W + c (1^T W) - 1 (mu^T W)`` with ``W = V / sigma``; ``D W`` is a sparse product, or a
        GEMM on a dense row tile of ``D`` when the matrix is dense enough for that to be faster.
        ``out``: a C-contiguous float32 (n_cells, k) array on the device to write the result into.
        """
        Wfull, colsum, shift = self._scaled_right(V)
        out = self._output(out, Wfull.shape[1])
        if self._cpu_sparse:
            from ._cpu_kernels import csr_matmat  # CPU twin of the generic loop below

            W32 = np.ascontiguousarray(Wfull, dtype=np.float32)
            for b, (start, stop, blk, cb) in enumerate(self.S.iter_blocks()):
                csr_matmat(self._row_splits(b, blk, W32.shape[1]), blk.indices, blk.data, W32,
                           cb.astype(np.float32), colsum, shift, out[start:stop], self.workers)
            return out
        for start, stop, blk, cb in self._blocks_for_products():
            out[start:stop] = self._rows_times(blk, cb, Wfull, colsum, shift)
        return out

    def _output(self, out: Any | None, k: int) -> Any:
        xp = self.backend.xp
        if out is None:
            return xp.empty((self.shape[0], k), dtype=xp.float32)
        if out.shape != (self.shape[0], k) or out.dtype != xp.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {(self.shape[0], k)}, "
                             f"got {out.dtype} {out.shape}.")
        return out

    def _scaled_right(self, V: Any) -> tuple[Any, Any, Any]:
        """``W = V / sigma`` (float32, scattered to all genes of ``D``), ``1^T W`` and ``mu^T W``."""
        xp = self.backend.xp
        if self.cpu_kernels:
            from ._cpu_kernels import scaled_right  # CPU twin of the lines below

            W, colsum, shift = scaled_right(np.asarray(V), self.inv_scale, self.mean, self.workers)
            return (W if self.genes is None else self._select @ W), colsum, shift
        W64 = xp.asarray(V).astype(xp.float64) * self.inv_scale[:, None]
        W = W64.astype(xp.float32)
        colsum = W64.sum(axis=0).astype(xp.float32)
        shift = (self.mean @ W64).astype(xp.float32)
        return (W if self.genes is None else self._select @ W), colsum, shift

    def _rows_times(self, blk: Any, cb: Any, Wfull: Any, colsum: Any, shift: Any) -> Any:
        """``A[rows] @ V`` for one row block (CSR or dense tile of ``D``) from :meth:`_scaled_right`."""
        xp = self.backend.xp
        res = blk @ Wfull
        res += cb.astype(xp.float32)[:, None] * colsum[None, :]
        res -= shift[None, :]
        return res

    def matmat_rmatmat(self, V: Any, out: Any | None = None) -> tuple[Any, Any]:
        """``Y = A @ V`` (float32, (n_cells, k)) and ``A.T @ Y`` (float64, (n_genes, k)).

        With dense row tiles both products come from one pass: each tile of ``D`` is densified
        once for two GEMMs (on a GPU the densification costs about as much as the GEMMs). Sparse
        blocks take :meth:`matmat` then :meth:`rmatmat`. Each block Krylov iteration
        (:func:`gpulin.pca._block_krylov`) and each ``solver="sklearn"`` power round is one call.
        ``out``: where to write ``Y`` (as in :meth:`matmat`).
        """
        if not self.dense_tiles:
            Y = self.matmat(V, out=out)
            return Y, self.rmatmat(Y)
        Wfull, colsum, shift = self._scaled_right(V)
        k = Wfull.shape[1]
        Y = self._output(out, k)
        sums = self._transposed_sums(k)
        for start, stop, blk, cb in self._blocks_for_products():
            Yb = self._rows_times(blk, cb, Wfull, colsum, shift)
            Y[start:stop] = Yb
            self._add_transposed(sums, blk, cb, Yb)
        return Y, self._finish_rmatmat(*sums)

    def rmatmat(self, U: Any) -> Any:
        """``A.T @ U`` for U of shape (n_cells, k); returns float64 (n_genes, k) on device.

        ``(D^T U + 1 (c^T U) - mu (1^T U)) / sigma``, accumulated over row blocks in float64.
        """
        xp = self.backend.xp
        U = xp.asarray(U)
        k = U.shape[1]
        if self._cpu_sparse:
            # D_b^T U_b scattered into one float32 partial sum per thread (CPU twin of the generic
            # loop below); partials are added to the float64 total every FLUSH_ROWS cells.
            from ._cpu_kernels import csr_rmatmat_accumulate, finish_transposed, weighted_column_sums

            U32 = np.ascontiguousarray(U, dtype=np.float32)
            partials = np.zeros((self.workers, self.S.n_genes, k), dtype=np.float32)
            acc = None
            since_flush, last = 0, self.S.shape[0]
            for b, (start, stop, blk, _) in enumerate(self.S.iter_blocks()):
                csr_rmatmat_accumulate(self._row_splits(b, blk, k), blk.indices, blk.data, U32[start:stop], partials)
                since_flush += stop - start
                if since_flush >= FLUSH_ROWS and stop != last:
                    total = partials.sum(axis=0, dtype=np.float64)
                    acc = total if acc is None else np.add(acc, total, out=acc)
                    partials[...] = 0.0
                    since_flush = 0
            cu, usum = weighted_column_sums(U32, self.S.c, self.workers)
            # Last flush and _finish_rmatmat in one pass (its compiled twin).
            rows = np.arange(self.S.n_genes) if self.genes is None else self.genes
            return finish_transposed(partials, acc, rows, cu, usum, self.mean, self.inv_scale, self.workers)
        U32 = U.astype(xp.float32)
        sums = self._transposed_sums(k)
        for start, stop, blk, cb in self._blocks_for_products():
            self._add_transposed(sums, blk, cb, U32[start:stop])
        return self._finish_rmatmat(*sums)

    def _transposed_sums(self, k: int) -> tuple[Any, Any, Any]:
        """Zeroed float64 accumulators ``(D^T U (n_genes, k), c^T U (k,), 1^T U (k,))``."""
        xp = self.backend.xp
        return xp.zeros((self.S.n_genes, k), dtype=xp.float64), xp.zeros(k, dtype=xp.float64), xp.zeros(k, dtype=xp.float64)

    def _add_transposed(self, sums: tuple[Any, Any, Any], blk: Any, cb: Any, Ub: Any) -> None:
        """Add one row block's ``D_b^T U_b`` (float32 product), ``c_b^T U_b`` and ``1^T U_b`` to ``sums``."""
        xp = self.backend.xp
        acc, cu, usum = sums
        acc += (blk.T @ Ub).astype(xp.float64)
        U64 = Ub.astype(xp.float64)
        cu += cb @ U64
        usum += U64.sum(axis=0)

    def _finish_rmatmat(self, acc: Any, cu: Any, usum: Any) -> Any:
        """``(D^T U [selected genes] + 1 (c^T U) - mu (1^T U)) / sigma`` from ``D^T U``, ``c^T U``, ``1^T U``."""
        if self.genes is not None:
            acc = acc[self.genes]
        acc += cu[None, :]
        acc -= self.mean[:, None] * usum[None, :]
        acc *= self.inv_scale[:, None]
        return acc

    def gram(self) -> Any:
        """``A.T @ A`` (n_genes x n_genes, float64), accumulated over dense row tiles."""
        xp = self.backend.xp
        acc = xp.zeros((self.shape[1], self.shape[1]), dtype=xp.float64)
        for start, stop, blk, cb in self._tiles():
            t = self.tile(blk, cb)
            acc += (t.T @ t).astype(xp.float64)
        return acc

    def dense(self, max_bytes: int) -> Any | None:
        """The whole standardized matrix ``A`` as a dense float32 (n_cells, n_genes) array on device,
        or None when it would take more than ``max_bytes`` (for small matrices only: a per-split
        classifier fit of a few thousand cells, where dense GEMMs beat sparse passes)."""
        n, g = self.shape
        if n * g * 4 > max_bytes:
            return None
        if self.backend.is_gpu:
            out = self.backend.xp.empty((n, g), dtype=self.backend.xp.float32)
        else:
            from ._cpu_kernels import touched_empty

            out = touched_empty((n, g), np.float32)
        for start, stop, blk, cb in self._tiles():
            self.tile(blk, cb, out=out[start:stop])
        return out

    def gram_cells(self) -> Any:
        """``A @ A.T`` (n_cells x n_cells, float64) from pairs of dense row tiles (few cells only)."""
        xp = self.backend.xp
        n = self.shape[0]
        acc = xp.empty((n, n), dtype=xp.float64)
        tiles = list(self._tiles())
        for i, (s1, e1, blk1, cb1) in enumerate(tiles):
            t1 = self.tile(blk1, cb1)
            for s2, e2, blk2, cb2 in tiles[i:]:
                t2 = t1 if s2 == s1 else self.tile(blk2, cb2)
                prod = (t1 @ t2.T).astype(xp.float64)
                acc[s1:e1, s2:e2] = prod
                acc[s2:e2, s1:e1] = prod.T
        return acc

    def total_variance(self) -> float:
        """Sum over genes of the sample variance (ddof=1) of the standardized matrix."""
        n = self.shape[0]
        xp = self.backend.xp
        return float(xp.sum(self.var * self.inv_scale**2)) * n / max(n - 1, 1)
