"""Splits fitted side by side (gpulin._concurrent): per-thread worker counts, concurrent kernel
launches, and evaluation results that do not depend on running splits at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpulin import evaluate, sctop_transform
from gpulin._concurrent import map_tasks, task_workers
from gpulin.implicit import GeneScaling, StandardizedOperator, cpu_workers, thread_workers

from conftest import make_counts
from test_classifier import labelled


def test_thread_workers_applies_to_the_calling_thread_only():
    outside = cpu_workers()
    seen = {}

    def other():
        seen["other"] = cpu_workers()

    with thread_workers(1):
        assert cpu_workers() == 1
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with thread_workers(3):
            assert cpu_workers() == 3
        assert cpu_workers() == 1
    assert cpu_workers() == outside and seen["other"] == outside


def test_map_tasks_keeps_order_runs_one_core_per_task_and_raises():
    from threadpoolctl import threadpool_info

    before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def task(i):
        return i, cpu_workers()

    out = list(map_tasks(task, range(7), workers=2))
    assert [i for i, _ in out] == list(range(7)) and all(w == 1 for _, w in out)
    assert list(map_tasks(task, [5], workers=2)) == [(5, cpu_workers())]  # one task: the calling thread

    def fails(i):
        if i == 3:
            raise KeyError("split 3")
        return i

    with pytest.raises(KeyError, match="split 3"):
        list(map_tasks(fails, range(5), workers=2))
    from threadpoolctl import threadpool_info

    # the BLAS limit of the run ends with it (also when a task failed)
    assert all(i["num_threads"] == before[i["filepath"]] for i in threadpool_info() if i["user_api"] == "blas")


def test_task_workers_defaults_and_checks():
    from gpulin._concurrent import SIDE_BY_SIDE_MAX_CELLS

    assert task_workers(None, 10, on_gpu=True) == task_workers(4, 10, on_gpu=True) == 1
    assert task_workers(None, 10, on_gpu=False) == min(cpu_workers(), 10)
    assert task_workers(None, 10, on_gpu=False, n_cells=SIDE_BY_SIDE_MAX_CELLS + 1) == 1  # large: one at a time
    assert task_workers(2, 10, on_gpu=False, n_cells=SIDE_BY_SIDE_MAX_CELLS + 1) == 2  # unless asked
    assert task_workers(4, 3, on_gpu=False) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs"):
            task_workers(bad, 5, on_gpu=False)


def test_kernels_launched_from_several_threads_match_one_at_a_time():
    """Compiled kernels (standardized tiles, sparse products) run concurrently from two threads,
    one core each, and give what they give alone."""
    S = sctop_transform(make_counts(400, 300, seed=2))
    op = StandardizedOperator(S, GeneScaling.fit(S))
    V = np.random.default_rng(0).standard_normal((300, 12)).astype(np.float32)

    def work(_):
        with thread_workers(1):
            op1 = StandardizedOperator(S, GeneScaling.fit(S))
            return op1.dense(1 << 30), op1.matmat(V), op1.rmatmat(op1.matmat(V))

    with thread_workers(1):
        alone = work(None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(work(None))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        for a, b in zip(r, alone):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(op.matmat(V), alone[1], rtol=1e-5, atol=1e-5)


def test_evaluate_splits_at_once_give_the_sequential_results():
    """n_jobs=2 (splits in two threads, one core each) is deterministic and matches fitting one
    split at a time on one core; n_jobs is checked before any work."""
    a = labelled(seed=4)
    kw = dict(device="cpu", min_cells=50, n_components=10, n_splits=4, progress=False)
    both = evaluate(a, "type", "split5", n_jobs=2, **kw)
    again = evaluate(a, "type", "split5", n_jobs=2, **kw)
    with thread_workers(1):
        one = evaluate(a, "type", "split5", n_jobs=1, **kw)
    cols = ["split", "n_train", "n_test", "accuracy", "macro_f1", "macro_auroc"]
    assert both[cols].equals(again[cols])
    assert list(both["split"]) == [f"seed{i}" for i in range(4)]
    np.testing.assert_allclose(both[cols[3:]].to_numpy(float), one[cols[3:]].to_numpy(float), atol=1e-12)
    novel = evaluate(a, "type", "novel", n_jobs=2, device="cpu", min_cells=50, n_components=10, progress=False)
    assert list(novel["held_out_type"]) == sorted(a.obs["type"].unique())
    with pytest.raises(ValueError, match="n_jobs"):
        evaluate(a, "type", "split5", n_jobs=0, device="cpu")


def test_cells_gram_from_dense_and_rare_genes_matches_the_dense_gram():
    """The per-split Gram matrix A A^T from the dense genes' SYRK plus the rare genes' sparse
    products and rank-4 terms equals the dense one (all genes, and a gene subset), and the split's
    A^T U equals the operator's; the compiled kernel equals its generic twin."""
    import scipy.sparse as sp

    from gpulin._cpu_kernels import add_sparse_cell_gram
    from gpulin.cell_gram import split_rare_genes

    S = sctop_transform(make_counts(300, 800, seed=1, depth=0.05))
    rng = np.random.default_rng(0)
    for genes in (None, np.sort(rng.choice(800, 500, replace=False))):
        op = StandardizedOperator(S, GeneScaling.fit(S), genes)
        split = split_rare_genes(op)
        assert split is not None and len(split.rare_cols) > 0.1 * op.shape[1] and len(split.dense_cols) > 0
        H = split.gram(1 << 30)
        A = op.dense(1 << 30).astype(np.float64)
        np.testing.assert_allclose(H, A @ A.T, atol=1e-6 * np.abs(A @ A.T).max())
        U = rng.standard_normal((300, 5)).astype(np.float32)
        ref = op.rmatmat(U)
        np.testing.assert_allclose(split.rmatmat(U), ref, atol=1e-5 * np.abs(ref).max())
    E = sp.random(50, 70, density=0.1, format="csr", random_state=1)
    left, right = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    H0 = rng.standard_normal((50, 50))
    got = add_sparse_cell_gram(H0.copy(), E, left, right, threads=2)
    np.testing.assert_allclose(got, H0 + (E @ E.T).toarray() + left @ right.T, rtol=1e-12, atol=1e-12)
    sym = add_sparse_cell_gram(np.zeros((50, 50)), E, np.zeros((50, 1)), np.zeros((50, 1)), threads=2)
    assert np.array_equal(sym, sym.T)
    # dense data (no rare genes) and GPU operators are not split
    S_dense = sctop_transform(make_counts(100, 60, seed=2, depth=5.0))
    assert split_rare_genes(StandardizedOperator(S_dense, GeneScaling.fit(S_dense))) is None


def test_blas_limit_is_taken_once_by_overlapping_contexts_of_several_threads(monkeypatch):
    """single_threaded_blas is process-wide: contexts of several threads that overlap share one
    limit, taken by the first to enter and undone by the last to leave, whatever the order (each
    restoring what it saw on entry left BLAS at one thread for good)."""
    import threading

    from gpulin import _cpu_kernels

    calls = []

    class Limiter:
        def restore_original_limits(self):
            calls.append("restore")

    class Controller:
        def limit(self, limits, user_api):
            calls.append(("limit", limits, user_api))
            return Limiter()

    monkeypatch.setattr(_cpu_kernels, "_BLAS_CONTROLLER", Controller())
    entered, release = threading.Event(), threading.Event()

    def hold():
        with _cpu_kernels.single_threaded_blas():
            entered.set()
            release.wait(60)

    worker = threading.Thread(target=hold, daemon=True)
    try:
        with _cpu_kernels.single_threaded_blas():
            worker.start()
            assert entered.wait(60)
        assert calls == [("limit", 1, "blas")]  # the main thread left first: the worker's limit stays
    finally:
        release.set()
        worker.join(60)
    assert calls == [("limit", 1, "blas"), "restore"]
    with _cpu_kernels.single_threaded_blas():
        with _cpu_kernels.single_threaded_blas():  # nested in one thread
            pass
    assert calls[2:] == [("limit", 1, "blas"), "restore"]


def test_blas_limit_restores_the_thread_count():
    from gpulin import _cpu_kernels
    from gpulin._cpu_kernels import single_threaded_blas

    with single_threaded_blas():  # makes sure the controller exists
        pass

    def blas_threads():
        return [lib.num_threads for lib in _cpu_kernels._BLAS_CONTROLLER.lib_controllers if lib.user_api == "blas"]

    before = blas_threads()
    with single_threaded_blas():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
