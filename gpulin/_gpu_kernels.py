"""CUDA kernels (CuPy ``RawKernel``) for the GPU hot spots, each with a CPU twin.

* :func:`csr_rows_to_dense`: rows ``start:stop`` of a CSR block as a dense float32 array, for
  the dense row tiles of :class:`gpulin.implicit.StandardizedOperator`. cupyx's
  ``csr_matrix.toarray`` took 14.9 ms for a 1 GiB tile (13,421 cells x 20,000 genes, 5.5%
  nonzeros) on an H100, against 1.0 ms for the GEMM that follows (benchmarks/gpu_profile.py);
  a zero fill plus one warp per row scattering its values runs at memory speed. The CPU twin is
  SciPy's ``toarray`` of the row slice; ``tests/test_gpu_kernels.py`` checks they agree.

* :func:`csr_row_sums`: per-row sums of values laid out by a CSR row pointer (library sizes and
  norms of the per-cell transforms), one warp per row instead of contended atomic additions.

Kernels compile on first use (NVRTC, cached by CuPy); importing this module needs no GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

_SCATTER_ROWS = r"""
extern "C" __global__ void scatter_rows(const int* __restrict__ indptr, const int* __restrict__ indices,
                                        const float* __restrict__ data, const long long row0,
                                        const long long n_rows, const long long n_cols,
                                        float* __restrict__ out) {
    // one warp per row: lanes stride over the row's stored values
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    const long long r = row0 + row;
    const long long stop = indptr[r + 1];  // 64-bit: p + 32 must not overflow near 2^31
    float* dst = out + row * n_cols;
    for (long long p = (long long)indptr[r] + lane; p < stop; p += 32) atomicAdd(dst + indices[p], data[p]);  // duplicates sum, as in SciPy
}
"""


#: Threads per block of the warp-per-row kernels.
THREADS = 256


def _warp_per_row(n_rows: int) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` launching one 32-thread warp per row."""
    return ((n_rows * 32 + THREADS - 1) // THREADS,), (THREADS,)


_ROW_SUMS = r"""
extern "C" __global__ void row_sums_{name}(const {ctype}* __restrict__ values, const int* __restrict__ indptr,
                                      const long long n_rows, double* __restrict__ out) {{
    // one warp per row, float64 accumulation, fixed order (deterministic)
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= n_rows) return;  // whole warps leave together
    double s = 0.0;
    const long long stop = indptr[row + 1];
    for (long long p = (long long)indptr[row] + lane; p < stop; p += 32) s += (double)values[p];
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) out[row] = s;
}}
"""


def _int32_index(a: Any, largest: int) -> Any:
    """The int32 index array the kernels take (``a`` itself when it is one); ``largest`` bounds its
    values. More than 2^31 - 1 stored values (or columns) is an error, never a silent wrap-around:
    gpulin's row blocks always hold fewer."""
    if a.dtype == np.int32:
        return a
    if largest > np.iinfo(np.int32).max:
        raise ValueError(f"a CSR block with index values up to {largest} does not fit the int32 kernels; "
                         "split it into row blocks of fewer than 2^31 stored values.")
    return a.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _row_sums_kernel(name: str) -> Any:
    import cupy as cp

    ctype = {"float32": "float", "float64": "double"}[name]
    return cp.RawKernel(_ROW_SUMS.format(name=name, ctype=ctype), f"row_sums_{name}")


def csr_row_sums(values: Any, indptr: Any) -> Any:
    """Per-row sums (float64, (n_rows,)) of ``values`` laid out by the CSR row pointer ``indptr``.

    ``values`` may be in any order within a row (e.g. sorted by value). On a GPU one warp sums
    each row: CuPy's ``bincount`` with weights took 22 ms for 159M values on an H100, its atomic
    additions serializing on the hundreds of values of one row. The CPU twin is NumPy's
    ``bincount`` over the row ids (``tests/test_gpu_kernels.py`` checks they agree).
    """
    n_rows = int(indptr.shape[0]) - 1
    if isinstance(values, np.ndarray):  # CPU twin
        ptr = np.asarray(indptr).astype(np.int64)
        counts = ptr[1:] - ptr[:-1]
        rows = np.repeat(np.arange(n_rows), counts)
        return np.bincount(rows, weights=values.astype(np.float64, copy=False), minlength=n_rows)
    import cupy as cp

    out = cp.zeros(n_rows, dtype=cp.float64)
    if n_rows == 0 or values.shape[0] == 0:
        return out
    if values.dtype not in (cp.float32, cp.float64):
        values = values.astype(cp.float32)
    indptr = indptr if indptr.dtype == np.int32 else _int32_index(indptr, int(indptr[-1]))  # (reads indptr[-1] only then)
    _row_sums_kernel(values.dtype.name)(*_warp_per_row(n_rows), (values, indptr, np.int64(n_rows), out))
    return out


@functools.lru_cache(maxsize=None)
def _scatter_rows_kernel() -> Any:
    import cupy as cp

    return cp.RawKernel(_SCATTER_ROWS, "scatter_rows")


def csr_rows_to_dense(blk: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of the CSR matrix ``blk`` as a dense float32 C-ordered array.

    Parameters
    ----------
    blk : scipy.sparse.csr_matrix or cupyx.scipy.sparse.csr_matrix, shape (n_rows, n_cols)
        Fewer than 2^31 stored values (as every gpulin row block).
    start, stop : int
        Row range, ``0 <= start <= stop <= n_rows``.

    Returns
    -------
    numpy.ndarray or cupy.ndarray, float32, shape (stop - start, n_cols)
        On ``blk``'s device; duplicate entries are summed (as SciPy does).
    """
    n_rows, n_cols = blk.shape
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(f"row range {start}:{stop} is outside 0:{n_rows}")
    if isinstance(blk.data, np.ndarray):  # CPU twin
        if blk.data.dtype == np.float32:
            from ._cpu_kernels import csr_rows_dense
            from .implicit import cpu_workers

            return csr_rows_dense(blk.indptr, blk.indices, blk.data, start, stop, n_cols, cpu_workers())
        part = blk if (start, stop) == (0, n_rows) else blk[start:stop]
        return part.toarray().astype(np.float32, copy=False)
    import cupy as cp

    out = cp.zeros((stop - start, n_cols), dtype=cp.float32)
    rows = stop - start
    if rows == 0 or blk.nnz == 0:
        return out
    indptr = _int32_index(blk.indptr, blk.nnz)
    indices = _int32_index(blk.indices, n_cols - 1)
    data = blk.data if blk.data.dtype == cp.float32 else blk.data.astype(cp.float32)
    _scatter_rows_kernel()(*_warp_per_row(rows), (indptr, indices, data, np.int64(start), np.int64(rows),
                                                  np.int64(n_cols), out))
    return out
