"""ANOVA F-test gene selection on the implicit transformed matrix (scikit-learn ``f_classif``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import Backend, to_host
from .implicit import SparsePlusRowConstant, cpu_workers


def f_classif(S: SparsePlusRowConstant, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-way ANOVA F statistic and p-value of every gene of ``S`` across the classes ``codes``.

    Computed from class sums ``S^T Y`` (``Y`` the cells' one-hot class indicator, kept sparse: one
    sparse product per row block, ``O(nnz)``) and per-gene sums of squares, all float64, without
    materializing ``S``; the formulas are those of ``sklearn.feature_selection.f_classif``.

    Parameters
    ----------
    S : SparsePlusRowConstant, shape (n_cells, n_genes)
    codes : numpy.ndarray of int, shape (n_cells,)
        Class index of every cell (0..K-1).

    Returns
    -------
    F, pvalues : numpy.ndarray, shape (n_genes,)
        NaN where the within-class variance is zero and the between-class variance is too (a
        constant gene); inf where only the within-class variance is zero.
    """
    from scipy import special

    codes = np.asarray(codes)
    n = S.shape[0]
    if codes.shape != (n,):
        raise ValueError(f"codes has shape {codes.shape}, expected ({n},).")
    K = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    present = counts > 0
    class_sums = np.asarray(to_host(_class_sums(S, codes, K))).T[:, present]  # (G, K')
    counts = counts[present]
    k = int(present.sum())
    s1, s2 = (np.asarray(to_host(a)) for a in S.column_sums())
    sstot = s2 - s1**2 / n
    ssbn = (class_sums**2 / counts[None, :]).sum(axis=1) - s1**2 / n
    sswn = sstot - ssbn
    dfbn, dfwn = k - 1, n - k
    msb = ssbn / dfbn
    msw = sswn / dfwn
    # Rounding can leave tiny negative sums of squares for constant genes.
    eps = 1e-12 * np.maximum(np.abs(s2), 1e-300)
    msw = np.where(np.abs(sswn) <= eps, 0.0, msw)
    msb = np.where(np.abs(ssbn) <= eps, 0.0, msb)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = msb / msw
    F = np.where((msw == 0) & (msb == 0), np.nan, F)
    pvalues = special.fdtrc(dfbn, dfwn, F)
    return F, pvalues


def _class_sums(S: SparsePlusRowConstant, codes: np.ndarray, K: int) -> Any:
    """``Y^T S`` (float64, (K, n_genes), on ``S``'s device) for the one-hot ``Y`` of ``codes``:
    per row block its class sums (:func:`group_sums`), plus the classes' sums of ``c``."""
    xp = S.backend.xp
    out = xp.zeros((K, S.n_genes), dtype=xp.float64)
    for start, stop, blk, _ in S.iter_blocks():
        if blk.nnz:
            out += group_sums(blk, codes[start:stop], np.ones(stop - start), K, S.backend)
    c = np.asarray(to_host(S.c), dtype=np.float64)
    out += xp.asarray(np.bincount(codes, weights=c, minlength=K))[:, None]
    return out


def group_sums(X: Any, codes: np.ndarray, weights: np.ndarray, n_groups: int, backend: Backend) -> Any:
    """``W @ X`` for ``W[codes[i], i] = weights[i]``: the rows of a CSR ``X`` (on ``backend``)
    summed by group with weights, dense float64 (n_groups, n_cols) on ``backend``.

    On the host a compiled pass (:func:`gpulin._cpu_kernels.group_row_sums`, SciPy's product to
    the last bit); on a GPU the sparse indicator product.
    """
    if not backend.is_gpu:
        from ._cpu_kernels import group_row_sums

        return group_row_sums(X, codes, weights, n_groups, cpu_workers())
    xp, sparse = backend.xp, backend.sparse
    W = sparse.csr_matrix((xp.asarray(np.asarray(weights, dtype=np.float64)), (xp.asarray(codes), xp.arange(X.shape[0]))),
                          shape=(n_groups, X.shape[0]))
    return (W @ X.astype(xp.float64)).toarray()


def select_k_best(F: np.ndarray, k: int) -> np.ndarray:
    """Indices (sorted ascending) of the ``k`` largest F values, NaN last (``SelectKBest``)."""
    F = np.asarray(F, dtype=np.float64)
    k = int(min(k, F.shape[0]))
    scores = np.where(np.isnan(F), np.finfo(np.float64).min, F)
    return np.sort(np.argsort(scores, kind="mergesort")[F.shape[0] - k :])


__all__: list[Any] = ["f_classif", "select_k_best"]
