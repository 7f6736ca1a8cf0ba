"""PCA of an implicit standardized matrix: randomized block Krylov SVD or exact Gram + eigh.

The operator only needs ``matmat`` (A @ V), ``rmatmat`` (A.T @ U), ``gram`` (A.T @ A) and
``total_variance``; see :class:`gpulin.implicit.StandardizedOperator`. Large products run on the
operator's device in float32; every small dense factorization (l x l, with l = n_components +
oversamples) runs on the host in float64, so CPU and GPU take the same decisions on them. Two
choices differ by device and leave the spans equal up to rounding: small host bases (at most
:data:`SMALL_QR_SIZE` entries) are orthonormalized by Householder QR where the GPU uses
CholeskyQR, and the ``solver="sklearn"`` Gram rounds normalize with LU on the host and with QR
on the GPU (tested: ``tests/test_pca.py``, CPU/GPU agreement, ``gpu`` marker).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from . import _host_rows
from ._backend import to_host
from .cell_gram import split_rare_genes


@dataclass
class PCAResult:
    """Result of :func:`pca`.

    Attributes
    ----------
    scores : array, shape (n_cells, k), float32, on the operator's device
        Principal component scores ``A @ components.T`` (= ``U * S``; not whitened).
    components : numpy.ndarray, shape (k, n_genes), float64, or None
        Loadings (rows orthonormal), sign-fixed like scikit-learn's ``svd_flip`` with
        ``u_based_decision=False`` (largest-magnitude loading of each component is positive).
        None when ``pca(..., loadings=False)`` skipped them (``solver="sklearn"`` on fewer cells
        than genes): the scores' signs are then not flipped, and
        :meth:`components_t_times` applies the loadings with one pass over the data (the
        result then holds a reference to the operator's data and does not pickle).
    singular_values : numpy.ndarray, shape (k,)
    explained_variance : numpy.ndarray, shape (k,)
        ``singular_values**2 / (n_cells - 1)``.
    explained_variance_ratio : numpy.ndarray, shape (k,)
    solver : str
        ``"randomized"``, ``"gram"`` or ``"sklearn"``.

    Notes
    -----
    With ``solver="sklearn"`` the scores are the in-subspace scores ``U * S`` that scikit-learn's
    ``PCA.fit_transform`` returns (for the other solvers they are ``A @ components.T``, as
    ``transform`` gives), and ``singular_values`` are the Ritz values, as scikit-learn reports.
    """

    scores: Any
    components: np.ndarray | None
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    solver: str
    n_iter: int
    n_oversamples: int
    #: ``components.T @ B`` for a host ``B`` (k, m) without the loadings (``loadings=False``):
    #: one product with the data, valid while the operator's data are alive.
    _deferred_loadings: Callable[[np.ndarray], np.ndarray] | None = None

    def components_t_times(self, B: np.ndarray) -> np.ndarray:
        """``components.T @ B`` (n_genes, m), float64 on the host, for ``B`` of shape (k, m).

        With ``loadings=False`` (``components`` is None) this is one product with the data and
        ``m`` columns instead of the ``k``-column product that forms the loadings; the loadings'
        signs are then not flipped (``B``'s rows pair with the scores' columns as returned).
        """
        B = np.asarray(B, dtype=np.float64)
        if self.components is not None:
            return self.components.T @ B
        if self._deferred_loadings is None:
            raise ValueError("This PCAResult has neither loadings nor a deferred product.")
        return self._deferred_loadings(B)


def _gram64(Y: Any, xp: Any, right: Any | None = None, *, float32_products: bool = False) -> np.ndarray:
    """``Y.T @ Y`` (or ``Y.T @ right``) in float64 (host), accumulated over row blocks.

    By default each block is converted to float64 before its product. With
    ``float32_products=True`` the blocks (8,192 rows on the host, 65,536 on a GPU, where each block
    costs kernel launches) are multiplied in float32 and only accumulated in float64: the rounding
    still does not grow with the number of rows, at the speed of float32 GEMM and without float64
    copies (Krylov Gram matrices, and CholeskyQR of well-conditioned float32 blocks).
    """
    block_rows = (8192 if xp is np else 1 << 16) if float32_products else 1 << 16

    def rows(a: int, b: int) -> Any:  # sum over the row blocks of [a, b), float64 on Y's device
        acc = xp.zeros((Y.shape[1], Y.shape[1] if right is None else right.shape[1]), dtype=xp.float64)
        for s in range(a, b, block_rows):
            Yb = Y[s : min(s + block_rows, b)]
            Rb = Yb if right is None else right[s : min(s + block_rows, b)]
            if float32_products:
                acc += (Yb.T @ Rb).astype(xp.float64)
            else:
                Yb = Yb.astype(xp.float64)
                acc += Yb.T @ (Yb if right is None else Rb.astype(xp.float64))
        return acc

    if xp is np:  # row ranges in threads, one BLAS thread each (gpulin._host_rows)
        return _host_rows.sum_rows(rows, Y.shape[0])
    return np.asarray(to_host(rows(0, Y.shape[0])))


def _gram32(Y: Any, xp: Any, right: Any | None = None) -> np.ndarray:
    """:func:`_gram64` with float32 block products (accumulated in float64)."""
    return _gram64(Y, xp, right, float32_products=True)


def _times_small(Y: Any, B: np.ndarray, xp: Any) -> Any:
    """``Y @ B`` for a tall ``Y`` on its device and a small host ``B`` (host: row ranges in threads)."""
    if xp is np:
        return _host_rows.matmul_into(np.empty((Y.shape[0], B.shape[1]), dtype=np.result_type(Y, B)), Y, B)
    return Y @ xp.asarray(B)


#: On the host, bases of at most this many entries are orthonormalized by one Householder QR:
#: for small matrices CholeskyQR2's four extra calls cost more than the factorization itself.
SMALL_QR_SIZE = 1 << 20


def _upper_inverse(R: np.ndarray) -> np.ndarray:
    """``R^-1`` of an upper triangular host matrix."""
    return scipy.linalg.solve_triangular(R, np.eye(R.shape[0]), lower=False)


def _well_conditioned(R: Any, rtol: float) -> bool:
    d = np.abs(np.diag(np.asarray(to_host(R))))
    return bool(d.size and d.min() > rtol * d.max())


def _cholesky_factor(Y: Any, xp: Any, rtol: float, gram: Any = _gram64) -> np.ndarray | None:
    """Upper ``R`` (float64, host) with ``Y.T Y = R.T R`` from ``gram(Y, xp)``, or None when ``Y``
    is too ill-conditioned for it (Cholesky fails, or the diagonal spans more than ``1 / rtol``)."""
    try:
        R = np.linalg.cholesky(gram(Y, xp)).T
    except np.linalg.LinAlgError:
        return None
    return R if _well_conditioned(R, rtol) else None


def _cholesky_qr(
    Y: Any, xp: Any, passes: int, rtol: float = 1e-6, gram: Any = _gram64
) -> tuple[Any, np.ndarray] | None:
    """``passes`` rounds of CholeskyQR: ``(Q, R)`` with ``Y = Q R`` (Q in ``Y``'s dtype on its
    device, R float64 on the host), or None when ``Y`` is too ill-conditioned for it
    (:func:`_cholesky_factor`). ``gram(Q, xp)`` forms the Gram matrices (float64 on the host)."""
    Q, R = Y, None
    for _ in range(passes):
        Rk = _cholesky_factor(Q, xp, rtol, gram)
        if Rk is None:
            return None
        Q = _times_small(Q, _upper_inverse(Rk).astype(Q.dtype), xp)
        R = Rk if R is None else Rk @ R
    assert R is not None, "passes >= 1"
    return Q, R


def _qr(Y: Any, xp: Any, passes: int, gram: Any = _gram64) -> tuple[Any, np.ndarray]:
    """Reduced QR of a tall ``Y``: ``(Q, R)`` with ``Y = Q R``, Q in ``Y``'s dtype on its device and
    R float64 on the host.

    Small host matrices (``Y.size <= SMALL_QR_SIZE``) take Householder QR in float64; others
    ``passes`` rounds of CholeskyQR (GEMMs only; Gram matrices from ``gram``), and Householder in
    float64 when the Gram matrix is not numerically positive definite (rank-deficient or very
    ill-conditioned ``Y``).
    """
    if xp is np and Y.size <= SMALL_QR_SIZE:
        Q, R = np.linalg.qr(np.asarray(Y, dtype=np.float64))
        return Q.astype(Y.dtype, copy=False), R
    qr = _cholesky_qr(Y, xp, passes, gram=gram)
    if qr is None:
        Q, R = xp.linalg.qr(Y.astype(xp.float64))
        return Q.astype(Y.dtype, copy=False), np.asarray(to_host(R))
    return qr


def orthonormalize(Y: Any, xp: Any, passes: int = 2) -> Any:
    """Orthonormal basis (float32) of the columns of a tall ``Y`` (see :func:`_qr`).

    Two CholeskyQR passes (CholeskyQR2; Gram in float64 on the host-side l x l matrix) by
    default. ``passes=1`` (plain CholeskyQR) is enough between power iterations, where only the
    span and a sane conditioning matter (scikit-learn uses an LU factor there).
    """
    return _qr(Y, xp, passes)[0].astype(xp.float32, copy=False)


def _orthonormalize_product(op: Any, Z: Any, xp: Any, passes: int) -> tuple[Any, Any]:
    """``Q = orth(A @ Z)`` (float32) and ``A.T @ Q`` (float64) from one fused pass over ``op``.

    ``A.T @ Q = (A.T @ Y) R^-1`` for ``Y = A Z = Q R``, so the orthonormalization is applied to
    both products as the same right factor: the span and the numbers are those of orthonormalizing
    ``Y`` first and then multiplying, with one pass over the data instead of two (on a GPU each pass
    densifies every row tile). An ill-conditioned ``R`` (rank-deficient ``Y``, where ``R^-1`` would
    amplify rounding) takes a second pass for ``A.T @ Q`` instead.
    """
    Y, AtY = op.matmat_rmatmat(Z)
    Q, R = _qr(Y, xp, passes)
    Q = Q.astype(xp.float32, copy=False)
    if not _well_conditioned(R, rtol=1e-6):
        return Q, op.rmatmat(Q)
    return Q, AtY @ xp.asarray(_upper_inverse(R))


def _products_context(op: Any) -> Any:
    """The operator's context for a run of products (single-threaded BLAS around the compiled CPU
    kernels, see ``StandardizedOperator.products_context``); a no-op for other operators."""
    ctx = getattr(op, "products_context", None)
    return ctx() if ctx is not None else contextlib.nullcontext()


def _top_eigh(C: Any, k: int, xp: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs (descending, float64, host) of the symmetric ``C`` (on its device).

    On the host only the wanted pairs are computed (LAPACK ``syevr``); on a GPU the full
    decomposition (cuSOLVER) is faster than a host round trip (5,000 x 5,000: ~3 s on the host).
    """
    m = C.shape[0]
    if xp is np:
        evals, evecs = scipy.linalg.eigh(np.asarray(C), subset_by_index=[m - k, m - 1])
    else:
        evals, evecs = (np.asarray(to_host(a)) for a in xp.linalg.eigh(C))
        evals, evecs = evals[m - k:], evecs[:, m - k:]
    return evals[::-1], evecs[:, ::-1]


#: Components whose variance is below this fraction of the largest carry only rounding (the data
#: and the products are float32, the exact path's Gram matrix included: a null direction there
#: shows ~1e-7 of the top variance): whitening leaves them at zero instead of scaling rounding
#: noise up to unit variance.
WHITEN_RTOL = 1e-6


def whitening_divisors(explained_variance: np.ndarray) -> np.ndarray:
    """``sqrt(explained_variance)`` to divide scores by for whitening (scikit-learn's ``whiten``),
    ``inf`` (a zero score) for components without variance above :data:`WHITEN_RTOL` of the largest."""
    ev = np.asarray(explained_variance, dtype=np.float64)
    top = ev.max() if ev.size else 0.0
    return np.sqrt(np.where(ev > WHITEN_RTOL * top, ev, np.inf))


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """Signs (k,) making the largest-|.| entry of each loading row positive (``svd_flip``)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return signs


#: The exact path forms a (small side) x (small side) float64 matrix; never above this size.
GRAM_MAX_SIDE = 8192


def choose_solver(n_cells: int, n_genes: int, n_components: int, n_oversamples: int, n_iter: int) -> str:
    """Pick the exact Gram path when it costs fewer flops than randomized block Krylov.

    The Gram matrix is formed over the smaller side (genes x genes, or cells x cells for a few
    thousand cells), costing about ``n * G * m + 4 m^3`` flops with ``m = min(n, G)``, against
    ``2 (2 n_iter + 1) n G l`` for the block Krylov products.
    """
    m = min(n_cells, n_genes)
    if m > GRAM_MAX_SIDE:
        return "randomized"
    l = min(n_components + n_oversamples, m)
    gram_cost = n_cells * n_genes * m + 4 * m**3
    # Sparse / tiled products run at a fraction of GEMM speed (measured ~2x on CPU): weigh them.
    randomized_cost = 2 * 2 * (2 * n_iter + 1) * n_cells * n_genes * l
    return "gram" if gram_cost <= randomized_cost else "randomized"


#: Defaults of ``solver="randomized"`` (block Krylov): see :func:`pca`.
DEFAULT_KRYLOV_ITER = 4
DEFAULT_OVERSAMPLES = 10
#: ... and the iterations on small problems, where one product costs fewer than
#: :data:`SMALL_PRODUCT_WORK` multiply-adds (under ~15 ms on two cores): 4 iterations left the
#: trailing components of 50 off by 3-5% in variance on Kang (1,556 cells) and PBMC 3k, 8 by at
#: most 0.53%, for 0.1-0.35 s more (``benchmarks/pca_small_data.py``).
SMALL_PROBLEM_KRYLOV_ITER = 8
SMALL_PRODUCT_WORK = 1 << 28


def default_krylov_iter(op: Any, l: int) -> int:
    """Block Krylov iterations when ``n_iter`` is None: :data:`SMALL_PROBLEM_KRYLOV_ITER` when one
    product with ``l`` columns is small (stored values plus both sides, times ``l``), else
    :data:`DEFAULT_KRYLOV_ITER`."""
    n, G = op.shape
    S = getattr(op, "S", None)
    stored = S.nnz * (G / max(1, S.n_genes)) if S is not None else n * G
    return SMALL_PROBLEM_KRYLOV_ITER if (min(stored, n * G) + n + G) * l < SMALL_PRODUCT_WORK else DEFAULT_KRYLOV_ITER


def pca(
    op: Any,
    n_components: int,
    *,
    solver: str = "auto",
    n_oversamples: int | None = None,
    n_iter: int | None = None,
    seed: int = 0,
    loadings: bool = True,
) -> PCAResult:
    """Top principal components of the implicit matrix ``op`` (already centred and scaled).

    Parameters
    ----------
    op : StandardizedOperator
        Linear operator with ``shape``, ``matmat``, ``rmatmat``, ``gram``, ``total_variance``.
    n_components : int
        Number of components k (1 <= k <= min(shape)).
    solver : {"auto", "randomized", "gram", "sklearn"}
        ``"gram"`` accumulates ``A.T @ A`` (genes x genes, or ``A @ A.T`` for fewer cells) in
        float64 from float32 tile products and calls ``eigh``: exact up to that rounding (on an
        ill-conditioned 2,000 x 200 sctop matrix, components above 1e-3 of the top variance
        within 3e-6 relative, the trailing ones within 3e-3), for small problems.
        ``"randomized"``: randomized block Krylov iteration (Musco & Musco 2015) with ``n_iter`` iterations: ``2 n_iter + 1`` products with the data, every block kept,
        and a Rayleigh-Ritz step on the whole Krylov basis (:func:`_block_krylov`). It keeps
        ``(n_iter + 1) (k + n_oversamples)`` float32 columns per cell and per gene in memory.
        ``"sklearn"``: the subspace that ``sklearn.decomposition.PCA(svd_solver="randomized",
        random_state=seed)`` computes (same Gaussian draw from ``np.random.RandomState(seed)`` on
        the same side, same oversampling and iteration count, same final projection), up to
        float32 rounding: reproduces published pipelines that used scikit-learn, trailing
        components included.
    n_oversamples : int, optional
        Extra random directions; default 10 (as scikit-learn).
    n_iter : int, optional
        Krylov iterations; default 4 (9 products), and 8 on small problems
        (:func:`default_krylov_iter`: a product under ~2.7e8 multiply-adds, e.g. a few thousand
        cells at 50 components). The 4 was chosen against an exact eigendecomposition of
        the 20,000 x 20,000 benchmark matrix (sctop, 220 components; ``benchmarks/pca_accuracy.py``):
        the defaults capture more variance than scikit-learn's randomized PCA (7 power
        iterations, 15 products) and are closer on components 8 onwards, where 3 iterations
        captured less than scikit-learn; depth helps more than width there (3 iterations with 100
        oversamples captured less than 4 with 10).
        ``"sklearn"`` uses scikit-learn's rule: 7 power iterations when k < 10% of the smaller
        dimension, else 4.
    seed : int
        Seed of the Gaussian test matrix (drawn on the host, so CPU and GPU start alike).
    loadings : bool
        ``False``: callers that only need ``components.T @ B`` for a narrow ``B``
        (:meth:`PCAResult.components_t_times`, e.g. a classifier folding its weights onto the genes)
        may get ``components=None``: ``solver="sklearn"`` on fewer cells than genes then skips its
        last pass over the data (the loadings, a k-column product) and leaves the signs as the
        factorization gives them (svd_flip needs the loadings). Other solvers ignore it.

    Returns
    -------
    PCAResult
    """
    xp = op.backend.xp
    n, G = op.shape
    k = int(n_components)
    if solver == "sklearn":
        return _pca_sklearn(op, k, n_oversamples=10 if n_oversamples is None else n_oversamples,
                            n_iter=(7 if k < 0.1 * min(n, G) else 4) if n_iter is None else n_iter, seed=seed,
                            loadings=loadings)
    if n_oversamples is None:
        n_oversamples = DEFAULT_OVERSAMPLES
    if n_iter is None:
        n_iter = default_krylov_iter(op, min(k + n_oversamples, n, G))
    if solver == "auto":
        solver = choose_solver(n, G, k, n_oversamples, n_iter)
    if solver not in ("randomized", "gram"):
        raise ValueError(f"Unknown solver {solver!r}; expected 'auto', 'randomized', 'gram' or 'sklearn'.")
    if solver == "randomized" and k + n_oversamples >= min(n, G) and min(n, G) <= GRAM_MAX_SIDE:
        solver = "gram"
    total_var = op.total_variance()

    if solver == "gram" and G <= n:
        evals, evecs = _top_eigh(op.gram(), k, xp)
        sv = np.sqrt(np.maximum(evals, 0.0))
        components = evecs.T.copy()
        signs = _flip_signs(components)
        components *= signs[:, None]
        scores = op.matmat(xp.asarray(components.T.astype(np.float32)))
        used_iter = 0
    elif solver == "gram":
        evals, U = _top_eigh(op.gram_cells(), k, xp)
        sv = np.sqrt(np.maximum(evals, 0.0))
        safe = np.where(sv > 0, sv, 1.0)
        Ud = xp.asarray(U.astype(np.float32))
        components = np.asarray(to_host(op.rmatmat(Ud))).T / safe[:, None]
        # Directions without variance (k near the rank) come out as zero or rounding noise: one QR
        # gives them an orthonormal completion (and the others orthonormal to float64 rounding),
        # so the loadings are orthonormal, as an SVD's.
        Q, R = np.linalg.qr(components.T)
        d = np.sign(np.diag(R))
        components = (Q * np.where(d == 0, 1.0, d)).T
        signs = _flip_signs(components)
        components *= signs[:, None]
        scores = Ud * xp.asarray((sv * signs).astype(np.float32))
        used_iter = 0
    else:
        l = min(k + n_oversamples, n, G)
        K, Y, H, M = _block_krylov(op, l, n_iter, seed)
        _, C = _ritz_vectors(H, M, k)
        del H, M
        # V = K C (loadings) and A V = (A K) C = Y C (scores): the Rayleigh-Ritz step needs no
        # pass over the data. C is float64 with C^T (K^T K) C = I.
        C32 = C.astype(np.float32)
        components = np.asarray(to_host(_stacked_times(K, C32, xp, transposed=True)), dtype=np.float64)
        del K
        signs = _flip_signs(components)
        components *= signs[:, None]
        scores = _stacked_times(Y, C32 * signs.astype(np.float32), xp)
        del Y
        # Report ||A v_j|| (the Rayleigh quotient of the returned loadings, sqrt(lam) up to
        # rounding) so that explained variances, and whitened scores, describe the scores returned.
        sv = np.sqrt(_column_sumsq64(scores, xp))
        used_iter = n_iter
    explained_variance = sv**2 / max(n - 1, 1)
    ratio = explained_variance / total_var if total_var > 0 else np.zeros_like(explained_variance)
    return PCAResult(
        scores=scores,
        components=components,
        singular_values=sv,
        explained_variance=explained_variance,
        explained_variance_ratio=ratio,
        solver=solver,
        n_iter=used_iter,
        n_oversamples=int(n_oversamples),
    )


#: The sketch-side Gram shortcut of ``solver="sklearn"`` forms an (s x s) float64 matrix, s the
#: smaller side; never above this size.
SKETCH_GRAM_MAX_SIDE = 4096
#: Dense GEMM flops (Gram matrix from dense row tiles) are worth this many sparse-product flops.
DENSE_FLOP_ADVANTAGE = 8.0
#: ... and the Gram shortcut materializes the standardized matrix (float32) when it fits in this.
DENSE_SKETCH_BYTES = 256 << 20


def _sketch_gram_is_cheaper(op: Any, side: int, l: int, n_iter: int) -> bool:
    """Whether forming the sketch-side Gram matrix beats ``2 n_iter + 2`` passes over ``op``."""
    n, G = op.shape
    if side > SKETCH_GRAM_MAX_SIDE:
        return False
    S = getattr(op, "S", None)
    nnz = S.nnz * (G / max(1, S.n_genes)) if S is not None else n * G
    passes = (2 * n_iter + 2) * 2.0 * nnz * l
    return n * G * side <= DENSE_FLOP_ADVANTAGE * passes


def _small_dense_context(xp: Any) -> Any:
    """One BLAS thread on the host for rounds of small dense factorizations (a few thousand rows):
    on the 2-core Xeon a 1,267 x 230 QR took 14 ms on one thread and 24 ms on two, and a
    1,267 x 1,267 by 230 GEMM 12 ms and 15 ms. A no-op on a GPU."""
    if xp is not np:
        return contextlib.nullcontext()
    from ._cpu_kernels import single_threaded_blas

    return single_threaded_blas()


def _lu_span(P: np.ndarray) -> np.ndarray:
    """The permuted unit-lower factor of ``P = perm L U`` (partial pivoting): a basis of the span of
    ``P`` with entries of magnitude <= 1 (scikit-learn's ``power_iteration_normalizer="LU"``)."""
    return scipy.linalg.lu(P, permute_l=True, check_finite=False)[0]


@dataclass
class _SketchBasis:
    """The orthonormal basis ``Q`` (big side x l) of :func:`_rounds_on_sketch_gram`, applied as ``Q @ B``.

    ``from_data``: ``Q = M W`` with ``W = Qs R^-1`` is never formed; ``Q @ B = M (W B)`` is one
    tall product with the data (``data``: the dense standardized matrix, or an operator) when it
    is needed (the loadings or the scores, k <= l columns). Otherwise ``data`` is a formed tall
    float32 matrix ``Y`` and ``Q = Y W`` (``W = R^-1``, or no factor when ``Y`` is ``Q`` itself).
    ``W`` is kept as its factors (float64, host), applied right to left to ``B``: ``Qs (R^-1 B)``
    needs no (big side x l x l) product forming ``Qs R^-1``.
    """

    data: Any
    W: tuple[np.ndarray, ...]  # the factors of W, left to right
    transpose: bool  # M = A.T (cells are the sketched side)
    from_data: bool

    def times(self, B: np.ndarray, xp: Any) -> Any:
        """``Q @ B`` (big side x B's columns, float32 on the data's device) for a host ``B``."""
        for factor in reversed(self.W):
            B = factor @ B
        WB = B.astype(np.float32)
        if not self.from_data:
            return _times_small(self.data, WB, xp)
        V = xp.asarray(WB)
        if hasattr(self.data, "rmatmat"):  # an operator: M @ V is A.T @ V or A @ V
            return self.data.rmatmat(V) if self.transpose else self.data.matmat(V)
        return self.data.T @ V if self.transpose else self.data @ V


def _rounds_on_sketch_gram(op: Any, omega: np.ndarray, transpose: bool, n_iter: int) -> tuple[_SketchBasis, Any | None]:
    """scikit-learn's power rounds on ``H = M.T @ M`` (the sketched side's Gram matrix).

    ``n_iter`` rounds of ``M @`` then ``M.T @`` span ``H^n_iter Omega``; the last one is
    orthonormalized (``Qs``), and ``Y = M Qs`` is the sketch scikit-learn orthonormalizes, here
    through ``Y.T Y = Qs.T H Qs = R.T R``: ``Q = Y R^-1`` and ``M.T Q = H Qs R^-1`` follow from
    ``H`` with no pass over the data; ``Q`` is applied later in one product
    (:class:`_SketchBasis`). ``H`` comes from the dense standardized matrix when that fits in
    :data:`DENSE_SKETCH_BYTES` (float32 SYRK), else from pairs of dense row tiles (float64); the
    rounds multiply in float32, as scikit-learn does on float32 data (half the time of float64
    rounds, 1,492 x 1,492 by 230: 6.7 vs 15.8 ms on one core), and the l x l factors are float64.

    When ``R`` is too ill-conditioned for that (:data:`SKETCH_GRAM_RTOL`), ``Y`` is formed and
    factored as before this shortcut.

    Returns
    -------
    Q : :class:`_SketchBasis`
        The basis; explicit (a float32 orthonormal ``Q`` from a full QR of ``Y``) when ``Y`` is
        too ill-conditioned for one Cholesky pass (a rank-deficient sketch).
    MtQ : :class:`_FactoredProduct`
        ``M.T @ Q`` (small side x l, float64 on the host) as its factors, or None with an
        explicit ``Q``: the caller then computes it with a pass over the data.
    """
    xp = op.backend.xp
    split = split_rare_genes(op) if transpose else None
    H = split.gram(DENSE_SKETCH_BYTES) if split is not None else None
    if H is not None:  # cells' Gram from the dense genes' SYRK and the rare genes' sparse products
        T = split
    else:
        T = op.dense(DENSE_SKETCH_BYTES) if hasattr(op, "dense") else None
        if T is not None:
            H = T @ T.T if transpose else T.T @ T
        else:
            H = (op.gram_cells() if transpose else op.gram()).astype(xp.float32)
    Qs = xp.asarray(omega)
    with _small_dense_context(xp):
        for i in range(n_iter):
            # Between rounds only the span matters: scikit-learn's LU normalization (on the host;
            # 5x cheaper than Householder QR with Q formed explicitly). Householder QR on the last
            # round (and on a GPU), so that Qs is orthonormal and Y.T Y as conditioned as Y.
            HQs = _times_small(H, Qs, xp)  # host: row ranges in threads (2x on two cores)
            if xp is not np:
                Qs = xp.linalg.qr(HQs)[0]
            elif i < n_iter - 1:
                Qs = _lu_span(HQs)
            else:  # SciPy's float32 LAPACK (NumPy's qr works in float64: 2,142 x 230, 22 -> 8 ms)
                Qs = scipy.linalg.qr(HQs, mode="economic", overwrite_a=True, check_finite=False)[0]
        HQs = np.asarray(to_host(_times_small(H, Qs, xp)), dtype=np.float64)
    del H
    Qs64 = np.asarray(to_host(Qs), dtype=np.float64)
    data = T if T is not None else op
    QtHQ = Qs64.T @ HQs  # Qs^T H Qs, symmetric up to rounding
    try:
        R = np.linalg.cholesky((QtHQ + QtHQ.T) / 2).T
    except np.linalg.LinAlgError:
        R = None
    if R is not None and _well_conditioned(R, SKETCH_GRAM_RTOL):
        Rinv = _upper_inverse(R)
        return _SketchBasis(data, (Qs64, Rinv), transpose, True), _FactoredProduct(HQs, Rinv)
    # Too ill-conditioned for R from H: form the sketch Y = M Qs (one pass) and factor its own Gram
    # matrix (float64), or orthonormalize it outright when even that is too ill-conditioned.
    Y = _SketchBasis(data, (Qs64,), transpose, True).times(np.eye(Qs64.shape[1]), xp)
    R = _cholesky_factor(Y, xp, ONE_PASS_CHOLESKY_RTOL)
    if R is None:
        return _SketchBasis(orthonormalize(Y, xp), (), transpose, False), None
    Rinv = _upper_inverse(R)
    return _SketchBasis(Y, (Rinv,), transpose, False), _FactoredProduct(HQs, Rinv)


@dataclass
class _FactoredProduct:
    """``M.T @ Q = HQs R^-1`` of :func:`_rounds_on_sketch_gram` (small side x l, float64 on the
    host), kept as its factors: the fit needs only its Gram matrix and its product with an l x k
    matrix, each cheaper from the factors than forming it (a small side x l x l product)."""

    left: np.ndarray  # HQs, (small side, l)
    right: np.ndarray  # R^-1, (l, l) upper triangular

    def matrix(self) -> np.ndarray:
        """``HQs R^-1`` formed (float64, host)."""
        return self.left @ self.right

    def gram(self) -> np.ndarray:
        """``(HQs R^-1)^T (HQs R^-1)`` (l x l, float64)."""
        return self.right.T @ (self.left.T @ self.left) @ self.right

    def times(self, B: np.ndarray) -> np.ndarray:
        """``HQs R^-1 B`` (float64, host)."""
        return self.left @ (self.right @ B)


#: ``R`` comes from ``Qs^T H Qs`` with ``H`` in float32, so the basis ``M Qs R^-1`` it implies is
#: orthonormal only to about ``eps32 cond(R)^2`` (an H-derived ``R`` does not see the rounding of
#: the product that later forms ``M Qs``): measured ``|C C^T - I|`` of the loadings ~2.5e-9 times
#: the span of R's diagonal squared (span 80: 1.5e-5; 800: 1.5e-3), against ~5e-7 with ``Y``
#: formed. That shortcut is taken when the span is below ``1 / SKETCH_GRAM_RTOL`` (so the error
#: stays below ~2e-6); the per-split fits of the published protocol have spans of 8-11 (Baron
#: mouse, Kang, the transfers) and ~20 (Baron human). Steeper spectra form ``Y = M Qs``.
SKETCH_GRAM_RTOL = 1.0 / 30.0
#: One CholeskyQR pass of a formed float32 sketch ``Y`` (its Gram matrix in float64) when its R's
#: diagonal spans less than ``1 / ONE_PASS_CHOLESKY_RTOL``: ``Y R^-1`` is then orthonormal to about
#: float32 rounding.
ONE_PASS_CHOLESKY_RTOL = 1e-4


#: Draws of up to this many values are kept by :func:`_sklearn_gaussian_draw` (4 MB in float32).
_CACHED_DRAW_MAX_VALUES = 1 << 20


def _sklearn_gaussian_draw(seed: int, side: int, l: int) -> np.ndarray:
    """scikit-learn's ``Omega = RandomState(seed).normal(size=(side, l))`` as float32 (read-only when cached).

    The per-split fits of a cross-validation draw the same small ``Omega`` each time (same seed,
    same gene count or training-set size): legacy ``RandomState.normal`` takes ~4 ms for
    1,267 x 230 values, so small draws are computed once per process (:func:`_cached_draw`).
    """
    draw = _cached_draw if side * l <= _CACHED_DRAW_MAX_VALUES else _draw
    return draw(seed, side, l)


def _draw(seed: int, side: int, l: int) -> np.ndarray:
    return np.random.RandomState(seed).normal(size=(side, l)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _cached_draw(seed: int, side: int, l: int) -> np.ndarray:
    omega = _draw(seed, side, l)
    omega.flags.writeable = False  # shared between fits
    return omega


def _pca_sklearn(op: Any, k: int, *, n_oversamples: int, n_iter: int, seed: int, loadings: bool = True) -> PCAResult:
    """scikit-learn's ``randomized_svd`` (as ``PCA(svd_solver="randomized")`` calls it) on ``op``.

    scikit-learn sketches ``M = A`` when ``n >= G`` and ``M = A.T`` otherwise (``transpose="auto"``),
    drawing ``Omega ~ N(0, 1)`` of shape ``(M.shape[1], l)`` from ``RandomState(seed)``; it then
    applies ``n_iter`` rounds of ``M @``, ``M.T @`` (LU-normalized), orthonormalizes ``M @ Q`` and
    takes the SVD of ``Q.T @ M``. LU and CholeskyQR2 normalizations span the same column spaces,
    so the subspaces agree up to rounding.

    When the sketched side ``s = M.shape[1]`` is small (a few thousand cells, as in per-split
    classifier fits) the rounds are run on the Gram matrix ``H = M.T M`` (s x s, a float32 SYRK of
    the dense standardized matrix): ``n_iter`` rounds span ``H^n_iter Omega``, exactly the space of the two
    products per round, and ``Q.T M`` follows from ``H`` too, so the whole fit makes one pass
    over ``op`` besides forming ``H`` (chosen when that is cheaper, :func:`_sketch_gram_is_cheaper`).
    """
    xp = op.backend.xp
    n, G = op.shape
    l = min(k + n_oversamples, n, G)
    transpose = n < G
    side = n if transpose else G
    omega = _sklearn_gaussian_draw(seed, side, l)
    C = Bt = None
    if _sketch_gram_is_cheaper(op, side, l, n_iter):
        basis, MtQ = _rounds_on_sketch_gram(op, omega, transpose, n_iter)
        Q = basis.data if MtQ is None else None  # an explicit orthonormal Q
        C, Bt = (MtQ, None) if transpose else (None, MtQ)
    else:
        Q = xp.asarray(omega)
        with _products_context(op):
            if transpose:  # M = A.T: rounds of A.T @ then A @
                for _ in range(n_iter):
                    Q = orthonormalize(op.rmatmat(Q).astype(xp.float32), xp, passes=1)
                    Q = orthonormalize(op.matmat(Q), xp, passes=1)
                Q = orthonormalize(op.rmatmat(Q).astype(xp.float32), xp)
            else:  # M = A: A @ then A.T @ fused into one pass per round (_orthonormalize_product)
                for _ in range(n_iter):
                    Q, AtQ = _orthonormalize_product(op, Q, xp, passes=1)
                    Q = orthonormalize(AtQ.astype(xp.float32), xp, passes=1)
                Q, Bt = _orthonormalize_product(op, Q, xp, passes=2)
        basis = _SketchBasis(Q, (), transpose, False)
    if transpose:
        # Q spans genes; C = A Q = (Q^T M)^T, so SVD(B) = Uh s Vt gives C = Vt^T s Uh^T.
        if C is None:
            C = op.matmat(Q)
        evals, Uh = np.linalg.eigh(C.gram() if isinstance(C, _FactoredProduct) else _gram64(C, xp))
        evals, Uh = evals[::-1][:k], Uh[:, ::-1][:, :k]
        sv = np.sqrt(np.maximum(evals, 0.0))
        if isinstance(C, _FactoredProduct):
            scores = xp.asarray(C.times(Uh).astype(np.float32))
        else:
            scores = (C @ xp.asarray(Uh.astype(C.dtype))).astype(xp.float32)
        if not loadings:  # the loadings Q Uh are applied later, to a narrow right-hand side
            deferred = lambda B: np.asarray(to_host(basis.times(Uh @ B, xp)), dtype=np.float64)  # noqa: E731
            return _sklearn_result(scores, None, sv, n, op, n_iter, n_oversamples, deferred)
        components = np.asarray(to_host(basis.times(Uh, xp))).T.copy()
    else:
        # Q spans cells; Bt = A^T Q = B^T, B = Uh s Vt.
        if Bt is None:
            Bt = op.rmatmat(Q)
        factored = isinstance(Bt, _FactoredProduct)
        evals, Uh = np.linalg.eigh(Bt.gram() if factored else np.asarray(to_host(Bt.T @ Bt)))
        evals, Uh = evals[::-1][:k], Uh[:, ::-1][:, :k]
        sv = np.sqrt(np.maximum(evals, 0.0))
        safe = np.where(sv > 0, sv, 1.0)
        components = (Bt.times(Uh / safe) if factored else np.asarray(to_host(Bt @ xp.asarray(Uh / safe)))).T.copy()
        scores = basis.times(Uh * sv, xp)
    signs = _flip_signs(components)
    components *= signs[:, None]
    scores = scores * xp.asarray(signs.astype(np.float32))
    return _sklearn_result(scores, components, sv, n, op, n_iter, n_oversamples)


def _sklearn_result(scores: Any, components: np.ndarray | None, sv: np.ndarray, n: int, op: Any, n_iter: int,
                    n_oversamples: int, deferred: Callable[[np.ndarray], np.ndarray] | None = None) -> PCAResult:
    explained_variance = sv**2 / max(n - 1, 1)
    total_var = op.total_variance()
    ratio = explained_variance / total_var if total_var > 0 else np.zeros_like(explained_variance)
    return PCAResult(scores=scores, components=components, singular_values=sv, explained_variance=explained_variance,
                     explained_variance_ratio=ratio, solver="sklearn", n_iter=n_iter, n_oversamples=int(n_oversamples),
                     _deferred_loadings=deferred)


def _column_sumsq64(X: Any, xp: Any, block_rows: int = 1 << 15) -> np.ndarray:
    """Column sums of squares of a float32 ``X`` in float64 (host), over row blocks (bounded temporaries)."""
    acc = xp.zeros(X.shape[1], dtype=xp.float64)
    for s in range(0, X.shape[0], block_rows):
        Xb = X[s : s + block_rows].astype(xp.float64)
        acc += (Xb * Xb).sum(axis=0)
    return np.asarray(to_host(acc))


def _ritz_vectors(H: np.ndarray, M: np.ndarray, k: int, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs of the pencil ``(H, M)``: ``H c = lam M c``, ``c^T M c = 1`` (float64, host).

    ``M = K^T K`` is the Gram matrix of a float32 Krylov basis, orthonormal up to rounding (or
    redundant, where the Krylov space became numerically invariant). When ``M`` is safely positive
    definite the pencil goes to LAPACK's generalized solver; otherwise the eigenvectors of ``M``
    with eigenvalues below ``rtol`` times the largest are dropped and the rest whiten it (the first
    block alone is orthonormal, so at least ``l >= k`` directions remain).

    Returns
    -------
    lam : (k,) descending
    C : (m, k), with ``C^T M C = I``
    """
    m = M.shape[0]
    try:
        # SciPy's LAPACK, as the solver below: NumPy's OpenBLAS is another library whose worker
        # threads keep spinning after the call and slowed the solve by ~40% on two cores.
        d = np.diag(scipy.linalg.cholesky(M, lower=True, check_finite=False))
        if not d.min() > np.sqrt(rtol) * d.max():
            raise np.linalg.LinAlgError
        # LAPACK's generalized solver for the wanted pairs only (sygvx): half the time of forming
        # L^-1 H L^-T and calling eigh (1,056 x 1,056, 220 pairs: 0.17 s vs 0.36 s here).
        lam, C = scipy.linalg.eigh(H, M, subset_by_index=[m - k, m - 1], driver="gvx", check_finite=False)
        return lam[::-1], C[:, ::-1]
    except np.linalg.LinAlgError:
        mu, E = np.linalg.eigh(M)
        keep = mu > rtol * mu.max()
        T = E[:, keep] / np.sqrt(mu[keep])
    R = T.T @ H @ T
    r = R.shape[0]
    lam, W = scipy.linalg.eigh((R + R.T) / 2, subset_by_index=[r - k, r - 1])
    return lam[::-1], T @ W[:, ::-1]


def _stacked_times(X: Any, C: np.ndarray, xp: Any, *, transposed: bool = False) -> Any:
    """``[X_0, ..., X_q] @ C`` (float32, rows x c) for the stacked blocks ``X`` (q+1, rows, l) on
    the device and a host ``C`` ((q+1) l, c), or its transpose (c x rows, C-contiguous) with
    ``transposed=True``; host: row ranges in threads."""
    l = X.shape[2]
    blocks = [C[j * l : (j + 1) * l] for j in range(X.shape[0])]
    if xp is not np:
        out = X[0] @ xp.asarray(blocks[0])
        for j in range(1, X.shape[0]):
            out += X[j] @ xp.asarray(blocks[j])
        return xp.ascontiguousarray(out.T) if transposed else out
    out = np.empty((C.shape[1], X.shape[1]) if transposed else (X.shape[1], C.shape[1]), dtype=np.float32)

    def part(a: int, b: int) -> None:
        dst = out[:, a:b] if transposed else out[a:b]
        for j in range(X.shape[0]):
            prod = blocks[j].T @ X[j, a:b].T if transposed else X[j, a:b] @ blocks[j]
            if j == 0:
                dst[...] = prod
            else:
                dst += prod

    _host_rows.map_rows(part, X.shape[1])
    return out


def _block_krylov(op: Any, l: int, n_iter: int, seed: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """Randomized block Krylov iteration (Musco & Musco 2015) on the gene side of ``op``.

    Builds ``K = [Z_0, ..., Z_q]`` (``q = n_iter``), a basis of the block Krylov space
    ``[Omega, H Omega, ..., H^q Omega]`` of ``H = A^T A`` (``Omega``: genes x l, Gaussian, drawn on
    the host from ``seed``). ``A Z_j`` and ``A^T A Z_j`` come from one fused pass over the data
    (:meth:`StandardizedOperator.matmat_rmatmat`); ``A^T A Z_j`` is orthogonalized against the
    blocks so far (block Gram-Schmidt, float32) and orthonormalized (one CholeskyQR pass, Householder
    when that fails) into ``Z_{j+1}``.
    ``Y = A K`` is kept, so the Rayleigh-Ritz step (:func:`_ritz_vectors` on ``Y^T Y`` and
    ``K^T K``) needs no further pass: ``2 q + 1`` products in all, against ``2 q + 3`` for
    subspace iteration with ``q`` power iterations, and a far better subspace for the same
    products since every block is kept. The blocks are stored one after the other (``K[j]`` and
    ``Y[j]`` contiguous), so the products read and write them in place.

    Returns
    -------
    K : float32 (q + 1, G, l), on the operator's device: ``K[j] = Z_j``
    Y : float32 (q + 1, n, l), ``Y[j] = A @ Z_j``
    H, M : float64 (m, m), ``m = (q + 1) l``, host: ``Y^T Y`` and ``K^T K`` of the side-by-side blocks
    """
    xp = op.backend.xp
    n, G = op.shape
    q = int(n_iter)
    m = (q + 1) * l
    rng = np.random.default_rng(seed)
    K = xp.empty((q + 1, G, l), dtype=xp.float32)
    Y = xp.empty((q + 1, n, l), dtype=xp.float32)
    H = np.zeros((m, m), dtype=np.float64)

    def cols(j: int) -> slice:
        return slice(j * l, (j + 1) * l)

    def gram_column(out: np.ndarray, X: Any, j: int) -> None:
        """Column block j of the Gram matrix of the side-by-side blocks ``X[0], X[1], ...``
        (``X_i^T X_j`` for i <= j) and its mirror row block."""
        for i in range(j + 1):
            G = _gram32(X[i], xp, right=None if i == j else X[j])
            out[cols(i), cols(j)] = G
            out[cols(j), cols(i)] = G.T

    with _products_context(op):
        # Drawn in float32 directly (4x faster than float64 then a cast: 0.19 -> 0.05 s for 20k x 264),
        # orthonormalized with a float32 Gram matrix: a Gaussian block is well conditioned (and the
        # Rayleigh-Ritz step uses the exact K^T K): 52 -> 36 ms at 20k x 230.
        K[0] = _qr(xp.asarray(rng.standard_normal((G, l), dtype=np.float32)), xp, passes=1, gram=_gram32)[0]
        for j in range(q + 1):
            if j == q:
                op.matmat(K[j], out=Y[j])
            else:
                _, B = op.matmat_rmatmat(K[j], out=Y[j])  # B = A^T A Z_j
            # Column block j of H = Y^T Y. Its upper part, Y_i^T Y_j = K_i^T A^T A Z_j (i <= j), is
            # also the block Gram-Schmidt coefficient of B against K_i.
            gram_column(H, Y, j)
            if j == q:
                break
            B = B.astype(xp.float32, copy=False)
            B -= _stacked_times(K[: j + 1], H[: (j + 1) * l, cols(j)].astype(np.float32), xp)
            # One CholeskyQR pass with a float32 Gram matrix (float64 across row blocks): the blocks
            # need not be orthonormal to the last bit, as the Rayleigh-Ritz step uses the exact
            # K^T K; after the projection B is well conditioned, and Householder takes over when not.
            K[j + 1] = _qr(B, xp, passes=1, gram=_gram32)[0]
            del B
    # Outside the products context: these GEMMs may use every BLAS thread.
    M = np.empty((m, m), dtype=np.float64)
    for j in range(q + 1):
        gram_column(M, K, j)
    return K, Y, H, M
