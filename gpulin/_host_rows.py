"""Dense host work on tall float32 matrices, split over row ranges in Python threads.

Between the compiled sparse products of the randomized PCA, BLAS runs on one thread (OpenBLAS's
worker threads keep spinning after a multithreaded call and take the cores from the next kernel;
:func:`gpulin._cpu_kernels.single_threaded_blas`). The tall-skinny GEMMs in between (Gram matrices
of 20,000 x 230 blocks, Gram-Schmidt updates, CholeskyQR solves) then ran on one core of two. Here
each of ``cpu_workers()`` Python threads calls a single-threaded BLAS on its own rows (NumPy
releases the GIL in GEMM), so they use every core and leave no spinning threads behind. Row ranges
are fixed by the row count and the thread count, and partial sums are added in range order, so
results are deterministic for a given thread count.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

#: Below this many rows one thread does it all (thread hand-off costs more than it saves).
MIN_ROWS_PER_THREAD = 2048
#: ... or, for :func:`matmul_into`, below this many multiply-adds per thread (~0.2 ms of one core):
#: a square-by-tall product such as ``H @ Q`` (1,713 x 1,713 by 230) has few rows but much work
#: per row, and took 49 ms on two threads against 97 ms on one.
MIN_MULADDS_PER_THREAD = 1 << 22

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The shared pool, grown (replaced) when more workers are asked for than it has."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpulin-rows")
            _POOL_SIZE = workers
        return _POOL


def row_ranges(n_rows: int, workers: int, min_rows: int = MIN_ROWS_PER_THREAD) -> list[tuple[int, int]]:
    """``workers`` (or fewer, at least ``min_rows`` rows each) contiguous ``(start, stop)`` ranges
    covering ``range(n_rows)``."""
    parts = max(1, min(int(workers), n_rows // max(1, min_rows)))
    edges = np.linspace(0, n_rows, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def map_rows(
    fn: Callable[[int, int], Any], n_rows: int, workers: int | None = None, min_rows: int = MIN_ROWS_PER_THREAD
) -> list[Any]:
    """``[fn(start, stop) for each row range]``, the ranges run concurrently with one BLAS thread each.

    ``fn`` must only read shared inputs and write disjoint rows of shared outputs.
    """
    from ._cpu_kernels import single_threaded_blas
    from .implicit import cpu_workers

    ranges = row_ranges(n_rows, cpu_workers() if workers is None else workers, min_rows)
    with single_threaded_blas():
        if len(ranges) == 1:
            return [fn(*ranges[0])]
        futures = [_pool(len(ranges)).submit(fn, a, b) for a, b in ranges]
        return [f.result() for f in futures]


def matmul_into(out: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``out = A @ B`` for a tall ``A`` (rows x p) and a small ``B`` (p x q), by row ranges."""

    def part(a: int, b: int) -> None:
        np.matmul(A[a:b], B, out=out[a:b])

    per_row = max(1, A.shape[1] * B.shape[1])
    map_rows(part, A.shape[0], min_rows=min(MIN_ROWS_PER_THREAD, -(-MIN_MULADDS_PER_THREAD // per_row)))
    return out


def sum_rows(fn: Callable[[int, int], Any], n_rows: int) -> Any:
    """``sum(fn(start, stop) for each row range)`` (partial results added in range order), the
    ranges run as in :func:`map_rows`: e.g. a Gram matrix from the row blocks of each range."""
    parts = map_rows(fn, n_rows)
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total
