"""Independent tasks (the splits of an evaluation protocol) side by side in Python threads, one core each.

A per-split classifier fit of a few thousand cells is a chain of small steps (a dense Gram matrix
of ~1,500 x 20,000, power rounds of 1,500 x 1,500 by 230 products, LU, QR, ``eigh``, some hundred
L-BFGS iterations on 220 features) that use two cores poorly, and the two multithreaded OpenBLAS
libraries loaded (NumPy's and SciPy's) leave worker threads spinning after each call, which slows
the next step when it runs in the other library. Fitting the splits themselves in parallel, each in
its own thread with one BLAS thread and one Numba thread (:func:`gpulin.implicit.thread_workers`),
keeps every core busy with no thread handing work to another. NumPy, SciPy and the compiled
kernels release the GIL in all heavy steps.

Each task computes what it computes alone on one core, so results do not depend on which tasks
run together, and are deterministic for a given number of workers (the evaluation tests compare
them with one split at a time).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ._validation import check_int
from .implicit import cpu_workers, thread_workers

T = TypeVar("T")
R = TypeVar("R")


#: By default splits run side by side only for datasets of at most this many cells: their fits are
#: chains of small dense steps (measured on 1,500-2,100 cells), and each concurrent split holds its
#: own copy of its training cells. Larger fits are long sparse passes that already use every core.
SIDE_BY_SIDE_MAX_CELLS = 10_000


def task_workers(n_jobs: int | None, n_tasks: int, on_gpu: bool, n_cells: int = 0) -> int:
    """Tasks to run at once, at most ``n_tasks``: on a GPU one (its kernels already fill it); on
    the host ``n_jobs`` when given (>= 1), else one per CPU core gpulin uses
    (:func:`gpulin.implicit.cpu_workers`) for datasets of at most :data:`SIDE_BY_SIDE_MAX_CELLS`
    cells and one at a time for larger ones."""
    check_int("n_jobs", n_jobs, 1, allow_none=True)
    if on_gpu:
        return 1
    if n_jobs is None:
        n_jobs = 1 if n_cells > SIDE_BY_SIDE_MAX_CELLS else cpu_workers()
    return max(1, min(int(n_jobs), int(n_tasks)))


def map_tasks(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for each item, results in order; with ``workers > 1`` the items run in that many
    threads, each with one BLAS thread and one thread for gpulin's compiled kernels.

    With one worker the items run in the calling thread with its usual thread counts.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    from ._cpu_kernels import single_threaded_blas

    def one_core(item: T) -> R:
        with thread_workers(1):
            return fn(item)

    # The BLAS thread count is process-wide: one for the whole run (every task's calls included).
    with single_threaded_blas(), concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="gpulin-task") as pool:
        yield from pool.map(one_core, items)


__all__ = ["SIDE_BY_SIDE_MAX_CELLS", "map_tasks", "task_workers"]
