"""L2-penalized logistic regression (scikit-learn's objective) with L-BFGS in the array namespace.

One implementation runs on NumPy (CPU) or CuPy (GPU): the data term and its gradient are computed
with ``xp = backend.xp`` in float64 row blocks, and the L-BFGS iterate (``K x (p + 1)`` numbers)
stays on the same device in float64.

Objective (identical to ``sklearn.linear_model.LogisticRegression(penalty="l2", solver="lbfgs")``,
scikit-learn 1.9)::

    sum_i s_i * CE_i  +  ||W||_F^2 / (2 C)          (intercept not penalized)

with ``s_i`` the sample weight times the class weight of sample ``i``. For three or more classes
``CE`` is the multinomial (softmax) cross-entropy with ``W`` of shape ``(K, p)``; for two classes
scikit-learn fits a single binomial (sigmoid) model with ``coef_`` of shape ``(1, p)`` -- not a
2-class softmax, whose penalty would act as ``C`` doubled -- and so does this class. The optimizer
minimizes the objective divided by ``S = sum_i s_i`` and stops when ``max |gradient| <= tol`` on
that scale, the projected-gradient test of scikit-learn's L-BFGS-B, or when one iteration lowers
the objective by less than ``64 * eps`` relative (scikit-learn's ``ftol``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .._backend import Backend, backend_of, to_host
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
from .._warnings import warn_user

__all__ = ["LogisticRegression", "lbfgs"]

_FTOL = 64 * np.finfo(np.float64).eps
# float32 inputs are upcast once when the float64 copy stays below this size, else block by block
_UPCAST_ONCE_BYTES = 1 << 30


# --------------------------------------------------------------------------------------------
# L-BFGS with a strong-Wolfe line search, written against an array namespace
# --------------------------------------------------------------------------------------------


def _cubic_min(a_lo: float, f_lo: float, d_lo: float, a_hi: float, f_hi: float, d_hi: float) -> float | None:
    """Minimizer of the cubic interpolating (f, f') at two points (Nocedal & Wright eq. 3.59)."""
    if a_lo == a_hi:
        return None
    d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (a_lo - a_hi)
    disc = d1 * d1 - d_lo * d_hi
    if not np.isfinite(disc) or disc < 0:
        return None
    d2 = np.copysign(np.sqrt(disc), a_hi - a_lo)
    denom = d_hi - d_lo + 2.0 * d2
    if denom == 0 or not np.isfinite(denom):
        return None
    a = a_hi - (a_hi - a_lo) * (d_hi + d2 - d1) / denom
    return float(a) if np.isfinite(a) else None


def _line_search(
    phi: Callable[[float], tuple[float, float, Any]],
    f0: float,
    dphi0: float,
    a1: float,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    maxls: int = 50,
) -> tuple[float, float, Any] | None:
    """Strong-Wolfe line search (Nocedal & Wright, algorithms 3.5 and 3.6, cubic interpolation).

    ``phi(a)`` returns ``(f(x + a d), f'(x + a d) . d, gradient)``. Returns ``(a, f, gradient)``
    of a point satisfying the strong Wolfe conditions, or, when the evaluation budget runs out
    or the bracket collapses, the best point found that satisfies sufficient decrease (Armijo);
    None when no such point was found.
    """
    n_eval = 0
    a_prev, f_prev, d_prev, g_prev = 0.0, f0, dphi0, None
    a = a1
    best: tuple[float, float, Any] | None = None

    def zoom(lo, hi):  # lo, hi: (a, f, dphi, g); lo satisfies Armijo and has the lower f
        nonlocal n_eval
        while n_eval < maxls:
            a_lo, f_lo, d_lo, _ = lo
            a_hi, f_hi, d_hi, _ = hi
            width = abs(a_hi - a_lo)
            if width <= 1e-16 * max(abs(a_lo), abs(a_hi)):
                break
            left, right = min(a_lo, a_hi), max(a_lo, a_hi)
            a_j = _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi)
            if a_j is None or not (left + 0.1 * width <= a_j <= right - 0.1 * width):
                a_j = 0.5 * (a_lo + a_hi)
            f_j, d_j, g_j = phi(a_j)
            n_eval += 1
            if not np.isfinite(f_j) or f_j > f0 + c1 * a_j * dphi0 or f_j >= f_lo:
                hi = (a_j, f_j, d_j, g_j)
            else:
                if abs(d_j) <= -c2 * dphi0:
                    return a_j, f_j, g_j
                if d_j * (a_hi - a_lo) >= 0:
                    hi = lo
                lo = (a_j, f_j, d_j, g_j)
        a_lo, f_lo, _, g_lo = lo
        if a_lo > 0 and g_lo is not None and f_lo < f0:
            return a_lo, f_lo, g_lo
        return None

    while n_eval < maxls:
        f_a, d_a, g_a = phi(a)
        n_eval += 1
        if not np.isfinite(f_a) or not np.isfinite(d_a):
            # overflow far along the direction: shrink towards the last good point
            a = a_prev + 0.1 * (a - a_prev)
            continue
        if f_a > f0 + c1 * a * dphi0 or (a_prev > 0 and f_a >= f_prev):
            return zoom((a_prev, f_prev, d_prev, g_prev), (a, f_a, d_a, g_a))
        best = (a, f_a, g_a)
        if abs(d_a) <= -c2 * dphi0:
            return a, f_a, g_a
        if d_a >= 0:
            return zoom((a, f_a, d_a, g_a), (a_prev, f_prev, d_prev, g_prev))
        # still descending: extrapolate (cubic step, kept within [1.1 a, 4 a] beyond a)
        a_next = _cubic_min(a_prev, f_prev, d_prev, a, f_a, d_a)
        if a_next is None or not (a + 0.1 * (a - a_prev) <= a_next <= a + 4.0 * (a - a_prev)):
            a_next = a + 2.0 * (a - a_prev)
        a_prev, f_prev, d_prev, g_prev = a, f_a, d_a, g_a
        a = a_next
    return best


def lbfgs(
    fun: Callable[[Any], tuple[float, Any]],
    x0: Any,
    xp: Any,
    *,
    max_iter: int = 1000,
    gtol: float = 1e-6,
    ftol: float = _FTOL,
    history: int = 10,
    maxls: int = 50,
) -> tuple[Any, float, Any, int, str]:
    """Minimize a smooth function with L-BFGS (two-loop recursion, strong-Wolfe line search).

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (f, g)``: value as a Python float and gradient as an ``xp`` array like ``x``.
    x0 : array
        Starting point (1-D float64 ``xp`` array).
    xp : module
        ``numpy`` or ``cupy``; the iterate and the curvature pairs stay in this namespace.
    max_iter : int
        Maximum number of iterations.
    gtol : float
        Stop when ``max |g| <= gtol``.
    ftol : float
        Stop when an iteration lowers ``f`` by at most ``ftol * max(|f_k|, |f_k+1|, 1)``.
    history : int
        Number of curvature pairs kept.
    maxls : int
        Maximum function evaluations per line search.

    Returns
    -------
    x, f, g : the final iterate, value and gradient.
    n_iter : int
        Iterations performed.
    status : {"gtol", "ftol", "max_iter", "line_search"}
        Why it stopped (``"line_search"``: no acceptable step along a steepest-descent direction).
    """
    x = x0
    f, g = fun(x)
    if float(xp.abs(g).max()) <= gtol:
        return x, f, g, 0, "gtol"
    pairs: list[tuple[Any, Any, float]] = []  # (s, y, 1 / y.s)
    gamma = 1.0
    status = "max_iter"
    n_iter = 0
    while n_iter < max_iter:
        # two-loop recursion: d = -H g
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * xp.dot(s, q)
            alphas.append(a)
            q -= a * y
        q *= gamma
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            b = rho * xp.dot(y, q)
            q += (a - b) * s
        d = -q
        dphi0 = float(xp.dot(g, d))
        if not pairs or not np.isfinite(dphi0) or dphi0 >= 0:
            pairs.clear()
            gamma = 1.0
            d = -g
            dphi0 = -float(xp.dot(g, g))
        # first step of a fresh memory: unit-length move (as L-BFGS-B), else the quasi-Newton step
        a1 = 1.0 if pairs else min(1.0, 1.0 / max(math.sqrt(-dphi0), 1e-300))

        def phi(a: float, x=x, d=d) -> tuple[float, float, Any]:
            f_a, g_a = fun(x + a * d)
            return f_a, float(xp.dot(g_a, d)), g_a

        found = _line_search(phi, f, dphi0, a1, maxls=maxls)
        if found is None:
            if pairs:  # retry once from steepest descent with an empty memory
                pairs.clear()
                gamma = 1.0
                continue
            status = "line_search"
            break
        a, f_new, g_new = found
        step = a * d
        x = x + step
        y = g_new - g
        sy = float(xp.dot(step, y))
        yy = float(xp.dot(y, y))
        if sy > np.finfo(np.float64).eps * yy and sy > 0:
            pairs.append((step, y, 1.0 / sy))
            if len(pairs) > history:
                pairs.pop(0)
            gamma = sy / yy
        f_old, f, g = f, f_new, g_new
        n_iter += 1
        if float(xp.abs(g).max()) <= gtol:
            status = "gtol"
            break
        if (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            status = "ftol"
            break
    return x, f, g, n_iter, status


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


class LogisticRegression(LinearClassifierBase):
    """L2-penalized (multinomial) logistic regression on CPU or GPU.

    Minimizes scikit-learn's objective ``sum_i s_i CE_i + ||W||^2 / (2 C)`` (intercept not
    penalized; ``s_i`` = sample weight x class weight) with L-BFGS implemented in the array
    namespace, so the same code runs on NumPy and CuPy. Three or more classes use the softmax
    (multinomial) model, ``coef_`` of shape ``(K, p)``; two classes use the binomial model of
    scikit-learn 1.9 (``coef_`` of shape ``(1, p)``, probabilities ``[1 - sigmoid, sigmoid]``), so
    predictions and probabilities match ``sklearn.linear_model.LogisticRegression(solver="lbfgs")``.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularization strength (> 0).
    class_weight : None, "balanced" or dict, default=None
        ``"balanced"``: ``w_c = S / (K * S_c)`` with sample-weighted class totals ``S_c``
        (``n / (K * n_c)`` without sample weights), as scikit-learn >= 1.7 defines it (earlier
        versions count classes without the sample weights). A dict maps labels to weights (default 1).
    max_iter : int, default=1000
        Maximum L-BFGS iterations; reaching it emits a ``ConvergenceWarning``.
    tol : float, default=1e-6
        Stop when the largest absolute gradient entry of the objective divided by
        ``sum_i s_i`` is ``<= tol`` (scikit-learn's criterion; its default is 1e-4, the tighter
        default here lands closer to the exact optimum at a small cost).
    fit_intercept : bool, default=True
        Fit an unpenalized intercept per class.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where to compute. ``"auto"``: on the GPU when ``X`` is a CuPy array, otherwise the
        default backend (CUDA when available, else CPU). Outputs always come back as NumPy.
    batch_size : int, optional
        Rows per block when evaluating the loss and scores (bounds the temporary memory to about
        ``batch_size * (p + 4K) * 8`` bytes). Default: automatic (about 256 MiB per block).
    history : int, default=10
        Number of L-BFGS curvature pairs (scikit-learn's L-BFGS-B uses 10).

    Attributes
    ----------
    classes_ : numpy.ndarray of shape (n_classes,)
        Sorted class labels (any orderable type).
    coef_ : numpy.ndarray of shape (1, n_features) or (n_classes, n_features)
        Weights (float64).
    intercept_ : numpy.ndarray of shape (1,) or (n_classes,)
        Intercepts (zeros when ``fit_intercept=False``).
    n_iter_ : numpy.ndarray of shape (1,)
        L-BFGS iterations performed.
    n_features_in_ : int
        Number of features seen in ``fit``.
    converged_ : bool
        Whether the gradient or objective tolerance was met.
    objective_ : float
        Final value of the objective divided by ``sum_i s_i``.
    """

    def __init__(
        self,
        C: float = 1.0,
        class_weight: None | str | dict = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        fit_intercept: bool = True,
        device: str | Backend = "auto",
        batch_size: int | None = None,
        history: int = 10,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.device = device
        self.batch_size = batch_size
        self.history = history

    def _check_params(self) -> None:
        if isinstance(self.C, bool) or not isinstance(self.C, (int, float, np.number)) or not (
            np.isfinite(self.C) and self.C > 0
        ):
            raise ValueError(f"C must be a positive finite number, got {self.C!r}.")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative int, got {self.max_iter!r}.")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.number)) or not self.tol >= 0:
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}.")
        if isinstance(self.history, bool) or not isinstance(self.history, (int, np.integer)) or self.history < 1:
            raise ValueError(f"history must be a positive int, got {self.history!r}.")

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticRegression:
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense NumPy or CuPy matrix (float32 or float64 kept; float32 is upcast to float64
            block by block, never as a whole unless the copy is small).
        y : array-like of shape (n_samples,)
            Class labels of any orderable type (strings, ints, pandas Categorical, ...).
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative per-sample weights (multiplied by the class weights).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Fewer than 2 classes, missing labels, non-finite ``X``, mismatched lengths, bad
            parameters.
        """
        self._check_params()
        backend = resolve_backend(self.device, X)
        X = check_X(X, backend)
        n, p = X.shape
        classes, codes = encode_labels(y, n)
        sw = check_sample_weight(sample_weight, n)
        cw = class_weight_vector(self.class_weight, classes, codes, sw)
        s = sw * cw[codes]
        total = float(s.sum())
        if not total > 0:
            raise ValueError("The total sample weight (sample_weight x class_weight) is zero.")
        k = classes.shape[0]
        n_out = 1 if k == 2 else k
        xp = backend.xp
        if X.dtype != xp.float64 and n * p * 8 <= _UPCAST_ONCE_BYTES:
            X = X.astype(xp.float64)
        bs = check_batch_size(self.batch_size, n, p, n_out)
        fun = _make_objective(
            backend, X, codes, s, n_out=n_out, C=float(self.C), fit_intercept=bool(self.fit_intercept),
            batch_size=bs, total=total,
        )
        n_par = n_out * (p + int(bool(self.fit_intercept)))
        x0 = xp.zeros(n_par, dtype=xp.float64)
        w, f, g, n_iter, status = lbfgs(
            fun, x0, xp, max_iter=int(self.max_iter), gtol=float(self.tol), history=int(self.history)
        )
        if status in ("max_iter", "line_search"):
            why = (
                f"reached max_iter={self.max_iter}"
                if status == "max_iter"
                else "stopped: the line search found no decrease (the gradient is at the precision floor?)"
            )
            warn_user(
                f"LogisticRegression (L-BFGS) {why} with max|gradient| = {float(xp.abs(g).max()):.3g} > "
                f"tol = {self.tol}. Increase max_iter or scale the data.",
                ConvergenceWarning,
            )
        W = to_host(w).reshape(n_out, -1)
        self.classes_ = classes
        self.n_features_in_ = p
        self.coef_ = np.ascontiguousarray(W[:, :p])
        self.intercept_ = W[:, p].copy() if self.fit_intercept else np.zeros(n_out)
        self.n_iter_ = np.array([n_iter], dtype=np.int32)
        self.converged_ = status in ("gtol", "ftol")
        self.objective_ = float(f)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``.

        Two classes: ``[1 - sigmoid(z), sigmoid(z)]``; more: ``softmax(z)``.

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_classes)
        """
        _, z = self._scores(X)
        return self.proba_from_decision(z)

    @staticmethod
    def proba_from_decision(z: Any) -> np.ndarray:
        """Probabilities (host, (n_samples, n_classes)) from float64 decision values ``z`` of shape
        (n_samples, 1) (two classes: ``[1 - sigmoid, sigmoid]``) or (n_samples, n_classes)
        (softmax); ``z`` (NumPy or CuPy) is overwritten."""
        xp = backend_of(z).xp
        if z.shape[1] == 1:
            p1 = 1.0 / (1.0 + xp.exp(-z[:, 0]))
            proba = xp.stack([1.0 - p1, p1], axis=1)
        else:
            z -= z.max(axis=1, keepdims=True)
            proba = xp.exp(z)
            proba /= proba.sum(axis=1, keepdims=True)
        return to_host(proba)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba` (computed stably)."""
        backend, z = self._scores(X)
        xp = backend.xp
        if z.shape[1] == 1:
            z1 = z[:, 0]
            out = xp.stack([-xp.logaddexp(0.0, z1), -xp.logaddexp(0.0, -z1)], axis=1)
        else:
            m = z.max(axis=1, keepdims=True)
            out = z - (m + xp.log(xp.exp(z - m).sum(axis=1, keepdims=True)))
        return to_host(out)


def _make_objective(
    backend: Backend,
    X: Any,
    codes: np.ndarray,
    s: np.ndarray,
    *,
    n_out: int,
    C: float,
    fit_intercept: bool,
    batch_size: int,
    total: float,
) -> Callable[[Any], tuple[float, Any]]:
    """Build ``fun(w) -> (f, grad)`` for the scaled objective ``(sum_i s_i CE_i + ||W||^2/(2C)) / S``.

    ``w`` is the flattened ``(n_out, p + fit_intercept)`` float64 parameter matrix, intercept in
    the last column. ``n_out == 1`` is the binomial model (class 1 positive).
    """
    xp = backend.xp
    n, p = X.shape
    p1 = p + int(fit_intercept)
    codes_d = backend.asarray(codes, dtype=xp.int64)
    s_d = backend.asarray(s, dtype=xp.float64)
    blocks = row_blocks(n, batch_size)
    lam = 1.0 / (C * total)
    if n_out == 1:
        y01 = (codes_d == 1).astype(xp.float64)

    def fun(w: Any) -> tuple[float, Any]:
        W = w.reshape(n_out, p1)
        coef_t = xp.ascontiguousarray(W[:, :p].T)
        grad = xp.zeros((n_out, p1), dtype=xp.float64)
        loss = xp.zeros((), dtype=xp.float64)
        for sl in blocks:
            Xb = X[sl].astype(xp.float64, copy=False)
            sb = s_d[sl]
            Z = Xb @ coef_t
            if fit_intercept:
                Z += W[:, p]
            if n_out == 1:
                z = Z[:, 0]
                yb = y01[sl]
                loss += xp.dot(sb, xp.logaddexp(0.0, z) - yb * z)
                # sigmoid(z) - y, computed without overflow
                R = ((0.5 * (1.0 + xp.tanh(0.5 * z)) - yb) * sb)[:, None]
            else:
                cb = codes_d[sl]
                m = Z.max(axis=1, keepdims=True)
                E = xp.exp(Z - m)
                se = E.sum(axis=1, keepdims=True)
                lse = m[:, 0] + xp.log(se[:, 0])
                z_true = xp.take_along_axis(Z, cb[:, None], axis=1)[:, 0]
                loss += xp.dot(sb, lse - z_true)
                R = E / se
                R[xp.arange(R.shape[0]), cb] -= 1.0
                R *= sb[:, None]
            grad[:, :p] += (Xb.T @ R).T  # (p x n)(n x K): the faster BLAS layout on CPU
            if fit_intercept:
                grad[:, p] += R.sum(axis=0)
        coef = W[:, :p]
        grad /= total
        grad[:, :p] += lam * coef
        f = float(loss) / total + 0.5 * lam * float((coef * coef).sum())
        return f, grad.ravel()

    return fun
