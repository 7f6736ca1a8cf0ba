"""Peak memory of a block of code in this process: host RSS sampled by a thread, and the CuPy pool.

``ru_maxrss`` cannot be reset between the tools of one process, and ``tracemalloc`` misses
allocations made inside Numba kernels, so the host peak is sampled from ``/proc/self/statm``
every ``interval`` seconds (a thread: NumPy, SciPy and the Numba kernels release the GIL while
they allocate and compute). The GPU peak is exact: the CuPy pool is emptied first and keeps every
block it hands out cached, so its size afterwards is the high-water mark of what was held at once
(an upper bound, when freed blocks could not be reused).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _release_free_heap() -> None:
    """Return the allocator's free pages to the OS (glibc ``malloc_trim``), so that memory freed by
    an earlier tool and reused by the next does not hide the next one's growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def rss_bytes() -> int:
    """Resident set size of this process (0 where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - non-Linux
        return 0


class PeakMemory:
    """Context manager: ``host_bytes`` (peak RSS above the level at entry) and ``gpu_bytes``
    (CuPy pool high-water mark, None without a GPU) of the code inside it."""

    def __init__(self, gpu: bool = False, interval: float = 0.005) -> None:
        self.gpu = gpu
        self.interval = interval
        self.host_bytes = 0
        self.gpu_bytes: int | None = None
        self._stop = threading.Event()
        self._pool: Any = None

    def __enter__(self) -> "PeakMemory":
        if self.gpu:
            import cupy as cp

            cp.cuda.Device().synchronize()
            self._pool = cp.get_default_memory_pool()
            self._pool.free_all_blocks()
            self._pool_base = self._pool.total_bytes()
        import gc

        gc.collect()
        _release_free_heap()
        self._base = rss_bytes()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        self.host_bytes = self._peak - self._base
        if self._pool is not None:
            import cupy as cp

            cp.cuda.Device().synchronize()
            self.gpu_bytes = int(self._pool.total_bytes() - self._pool_base)
