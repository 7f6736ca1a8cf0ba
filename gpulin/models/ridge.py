"""Ridge classifier (scikit-learn semantics) solved in closed form on CPU or GPU.

Targets are one-hot in {-1, +1} (a single column for two classes, like scikit-learn's
``LabelBinarizer(neg_label=-1)``), the loss is the weighted least squares
``sum_i s_i ||y_i - W x_i - b||^2 + alpha ||W||_F^2`` with the intercept handled by centering on
the weighted means. The small ``p x p`` Gram matrix (or the ``n x n`` kernel matrix when
``p > n``) is accumulated in float64 on the device in row blocks and factorized on the host
(Cholesky, eigen-decomposition as fallback).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from .._backend import Backend, to_host
from ._labels import (
    LinearClassifierBase,
    check_batch_size,
    check_sample_weight,
    check_X,
    class_weight_vector,
    encode_labels,
    resolve_backend,
    row_blocks,
)

__all__ = ["RidgeClassifier"]


def _solve_spd(A: np.ndarray, B: np.ndarray, alpha: float) -> np.ndarray:
    """Solve ``(A + alpha I) X = B`` for symmetric PSD ``A`` (host float64).

    Cholesky first; if the matrix is numerically singular, the eigen-decomposition gives the
    minimum-norm least-squares solution.
    """
    M = A.copy()
    M[np.diag_indices_from(M)] += alpha
    try:
        factor = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
        X = scipy.linalg.cho_solve(factor, B, check_finite=False)
        if np.all(np.isfinite(X)):
            return X
    except np.linalg.LinAlgError:
        pass
    evals, evecs = np.linalg.eigh(M)
    cutoff = max(evals.max(initial=0.0), 0.0) * M.shape[0] * np.finfo(np.float64).eps
    inv = np.where(evals > cutoff, 1.0 / np.where(evals > cutoff, evals, 1.0), 0.0)
    return evecs @ (inv[:, None] * (evecs.T @ B))


class RidgeClassifier(LinearClassifierBase):
    """Ridge regression on {-1, +1} class indicators, as ``sklearn.linear_model.RidgeClassifier``.

    Parameters
    ----------
    alpha : float, default=1.0
        L2 penalty (>= 0) on the coefficients (the intercept is not penalized).
    class_weight : None, "balanced" or dict, default=None
        Multiplies the sample weights per class. ``"balanced"``: ``n / (K * n_c)`` from the
        unweighted class counts (scikit-learn's ``compute_sample_weight``).
    fit_intercept : bool, default=True
        Center ``X`` and the targets on their weighted means and fit an intercept.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where to compute (``"auto"``: the GPU when ``X`` is a CuPy array, else the default
        backend). Outputs are NumPy arrays.
    batch_size : int, optional
        Rows per block when accumulating the Gram matrix and computing scores. Default: automatic.

    Attributes
    ----------
    classes_ : numpy.ndarray of shape (n_classes,)
    coef_ : numpy.ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : numpy.ndarray of shape (1,) or (n_classes,)
    n_features_in_ : int
    solver_ : {"gram", "kernel"}
        ``"gram"``: the ``p x p`` normal equations; ``"kernel"``: the ``n x n`` dual system, used
        when there are more features than samples.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        class_weight: None | str | dict = None,
        fit_intercept: bool = True,
        device: str | Backend = "auto",
        batch_size: int | None = None,
    ) -> None:
        self.alpha = alpha
        self.class_weight = class_weight
        self.fit_intercept = fit_intercept
        self.device = device
        self.batch_size = batch_size

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RidgeClassifier:
        """Fit the classifier in closed form.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense NumPy or CuPy matrix.
        y : array-like of shape (n_samples,)
            Class labels of any orderable type.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative per-sample weights.

        Returns
        -------
        self
        """
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not (
            np.isfinite(alpha) and alpha >= 0
        ):
            raise ValueError(f"alpha must be a non-negative finite number, got {alpha!r}.")
        alpha = float(alpha)
        backend = resolve_backend(self.device, X)
        xp = backend.xp
        X = check_X(X, backend)
        n, p = X.shape
        classes, codes = encode_labels(y, n)
        k = classes.shape[0]
        n_out = 1 if k == 2 else k
        s = check_sample_weight(sample_weight, n)
        if self.class_weight:
            s = s * class_weight_vector(self.class_weight, classes, codes, None)[codes]
        total = float(s.sum())
        if not total > 0:
            raise ValueError("The total sample weight (sample_weight x class_weight) is zero.")
        fit_intercept = bool(self.fit_intercept)

        # weighted target means: column c is +1 on class c, -1 elsewhere
        target_cls = np.array([1]) if n_out == 1 else np.arange(k)
        class_tot = np.bincount(codes, weights=s, minlength=k)
        y_mean = (2.0 * class_tot[target_cls] - total) / total if fit_intercept else np.zeros(n_out)

        s_d = backend.asarray(s, dtype=xp.float64)
        codes_d = backend.asarray(codes, dtype=xp.int64)
        target_d = backend.asarray(target_cls, dtype=xp.int64)
        bs = check_batch_size(self.batch_size, n, p, n_out)
        blocks = row_blocks(n, bs)

        mu = xp.zeros(p, dtype=xp.float64)
        if fit_intercept:
            for sl in blocks:
                mu += s_d[sl] @ X[sl].astype(xp.float64, copy=False)
            mu /= total

        def targets(sl: slice) -> Any:
            return xp.where(codes_d[sl][:, None] == target_d[None, :], 1.0, -1.0)

        if p <= n:
            self.solver_ = "gram"
            G = xp.zeros((p, p), dtype=xp.float64)
            B = xp.zeros((p, n_out), dtype=xp.float64)
            for sl in blocks:
                Xc = X[sl].astype(xp.float64, copy=True)
                Xc -= mu
                Xw = Xc * s_d[sl][:, None]
                G += Xc.T @ Xw
                # (X - mu)^T S (Y - ybar) = (X - mu)^T S Y, since the weighted column sums vanish
                B += Xw.T @ targets(sl)
            G_h, B_h = to_host(G), to_host(B)
            G_h = 0.5 * (G_h + G_h.T)
            coef_t = _solve_spd(G_h, B_h, alpha)  # p x n_out
        else:
            self.solver_ = "kernel"
            sq = xp.sqrt(s_d)
            A = (X.astype(xp.float64, copy=True) - mu) * sq[:, None]
            Yc = (xp.where(codes_d[:, None] == target_d[None, :], 1.0, -1.0) - backend.asarray(y_mean)) * sq[:, None]
            K_h = to_host(A @ A.T)
            K_h = 0.5 * (K_h + K_h.T)
            dual = _solve_spd(K_h, to_host(Yc), alpha)  # n x n_out
            coef_t = to_host(A.T @ backend.asarray(dual))

        coef = np.ascontiguousarray(coef_t.T)
        self.classes_ = classes
        self.n_features_in_ = p
        self.coef_ = coef
        self.intercept_ = y_mean - coef @ to_host(mu) if fit_intercept else np.zeros(n_out)
        return self
