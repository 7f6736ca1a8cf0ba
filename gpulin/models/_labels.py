"""Label encoding, class weights, input checks and the prediction base shared by the linear classifiers.

Labels always live on the host (NumPy): they are small (one entry per cell), may be strings or
pandas categoricals, and the encoded integer codes are moved to the device by the caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from .._backend import Backend, backend_of, is_gpu_array, resolve_backend, to_host

__all__ = [
    "encode_labels",
    "class_weight_vector",
    "check_sample_weight",
    "resolve_backend",
    "check_X",
    "check_n_features",
    "check_batch_size",
    "row_blocks",
    "LinearClassifierBase",
]


def _label_repr(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def encode_labels(y: Any, n_samples: int | None = None, *, name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Encode class labels as integer codes into their sorted unique values.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels of any hashable, orderable type: strings, integers, booleans, a pandas Series or
        Categorical, a CuPy array. A column vector ``(n_samples, 1)`` is flattened.
    n_samples : int, optional
        Expected number of labels (the number of rows of ``X``).
    name : str
        Name used in error messages.

    Returns
    -------
    classes : numpy.ndarray of shape (n_classes,)
        Sorted unique labels (``numpy.unique`` order, as scikit-learn's ``classes_``); for a
        categorical only the categories that occur.
    codes : numpy.ndarray of int64, shape (n_samples,)
        ``classes[codes]`` reproduces ``y``.

    Raises
    ------
    ValueError
        Missing labels (None/NaN), a length mismatch, continuous (non-integer float) labels,
        multi-column ``y``, or fewer than 2 classes.
    TypeError
        Labels of mixed, unorderable types.
    """
    if y is None:
        raise ValueError(f"{name} is None; expected one class label per sample.")
    if isinstance(y, (pd.Series, pd.Index)):
        y = y.to_numpy()
    elif isinstance(y, pd.Categorical):
        y = np.asarray(y)
    elif isinstance(y, pd.DataFrame):
        if y.shape[1] != 1:
            raise ValueError(
                f"{name} must be 1-dimensional (one label per sample), got a DataFrame with {y.shape[1]} columns."
            )
        y = y.iloc[:, 0].to_numpy()
    elif is_gpu_array(y):
        y = to_host(y)
    elif scipy.sparse.issparse(y):
        raise TypeError(f"{name} must be a 1-dimensional array of labels, not a sparse matrix.")
    elif isinstance(y, (list, tuple)):
        # np.asarray(["a", 1]) would silently turn 1 into "1": refuse mixed strings and numbers
        kinds = {isinstance(v, str) for v in y if v is not None and not (isinstance(v, float) and np.isnan(v))}
        if len(kinds) > 1:
            raise TypeError(f"{name} mixes string and non-string labels; use one type for all labels.")
        as_objects = np.asarray(y, dtype=object)
        # np.asarray(["a", nan]) would turn the missing label into the string "nan"
        y = as_objects if as_objects.ndim == 1 and pd.isna(as_objects).any() else np.asarray(y)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be 1-dimensional (one label per sample), got shape {y.shape}; "
            "multi-output / multilabel targets are not supported."
        )
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(
            f"X and {name} have inconsistent lengths: X has {n_samples} rows, {name} has {y.shape[0]} labels."
        )
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty.")

    if y.dtype.kind == "O":
        missing = np.asarray(pd.isna(y), dtype=bool)
    elif y.dtype.kind in "fc":
        missing = ~np.isfinite(y)
    else:
        missing = np.zeros(y.shape[0], dtype=bool)
    n_missing = int(missing.sum())
    if n_missing:
        where = np.flatnonzero(missing)[:5].tolist()
        raise ValueError(
            f"{name} contains {n_missing} missing label(s) (None/NaN/inf), first at position(s) {where}; "
            "drop those samples or fill their labels before fitting."
        )
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(
            f"{name} looks continuous (non-integer float values such as {_label_repr(y[y != np.round(y)])}); "
            "a classifier needs discrete class labels."
        )
    # hash-based factorization (fast for a million string labels), then sort the few uniques
    raw_codes, uniques = pd.factorize(y, use_na_sentinel=False)
    uniques = np.asarray(uniques)
    try:
        classes = np.unique(uniques)
        remap = np.searchsorted(classes, uniques)
    except TypeError as exc:
        types = sorted({type(v).__name__ for v in uniques})
        raise TypeError(
            f"{name} mixes label types that cannot be ordered ({', '.join(types)}); use one type for all labels."
        ) from exc
    if y.dtype.kind != "O" and classes.dtype != y.dtype:
        classes = classes.astype(y.dtype)
    codes = remap[raw_codes]
    codes = np.asarray(codes, dtype=np.int64).ravel()
    if classes.shape[0] < 2:
        raise ValueError(f"The classifier needs at least 2 classes, got 1: {_label_repr(classes)}.")
    return classes, codes


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validate per-sample weights: finite, non-negative, one per sample, not all zero.

    Returns
    -------
    numpy.ndarray of float64, shape (n_samples,)
        All ones when ``sample_weight`` is None; a scalar is broadcast.
    """
    if sample_weight is None:
        return np.ones(n_samples, dtype=np.float64)
    sw = np.asarray(to_host(sample_weight), dtype=np.float64)
    if sw.ndim == 0:
        sw = np.full(n_samples, float(sw))
    if sw.ndim != 1 or sw.shape[0] != n_samples:
        raise ValueError(f"sample_weight has shape {sw.shape}; expected ({n_samples},), one weight per sample.")
    if not np.all(np.isfinite(sw)):
        raise ValueError("sample_weight contains NaN or inf.")
    if np.any(sw < 0):
        raise ValueError("sample_weight contains negative values.")
    if not np.any(sw > 0):
        raise ValueError("sample_weight is zero for every sample.")
    return sw


def class_weight_vector(
    class_weight: None | str | dict, classes: np.ndarray, codes: np.ndarray, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Per-class weights with scikit-learn's ``compute_class_weight`` semantics.

    Parameters
    ----------
    class_weight : None, "balanced" or dict
        ``"balanced"``: ``w_c = S / (K * S_c)`` with ``S_c`` the (sample-weighted) count of class
        ``c`` and ``S`` the total. A dict maps labels to weights; classes absent from it get 1.
    classes, codes : numpy.ndarray
        Output of :func:`encode_labels`.
    sample_weight : numpy.ndarray, optional
        Per-sample weights used to count classes for ``"balanced"`` (None: plain counts).

    Returns
    -------
    numpy.ndarray of float64, shape (n_classes,)
    """
    k = classes.shape[0]
    if class_weight is None or (isinstance(class_weight, dict) and len(class_weight) == 0):
        return np.ones(k, dtype=np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {class_weight!r}.")
        counts = np.bincount(codes, weights=sample_weight, minlength=k).astype(np.float64)
        if np.any(counts <= 0):
            empty = classes[counts <= 0]
            raise ValueError(f"class_weight='balanced': class(es) {_label_repr(empty)} have zero total sample weight.")
        return counts.sum() / (k * counts)
    if isinstance(class_weight, dict):
        weights = np.ones(k, dtype=np.float64)
        unweighted = []
        lookup = {}
        for key, value in class_weight.items():
            lookup[key.item() if isinstance(key, np.generic) else key] = value
        for i, c in enumerate(classes):
            c = c.item() if isinstance(c, np.generic) else c
            if c in lookup:
                weights[i] = float(lookup[c])
            else:
                unweighted.append(c)
        if unweighted and k - len(unweighted) != len(class_weight):
            raise ValueError(
                f"class_weight has keys that are not classes ({_label_repr(np.array(list(lookup), dtype=object))}); "
                f"classes without a weight: {unweighted}."
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("class_weight values must be finite and non-negative.")
        return weights
    raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {type(class_weight).__name__}.")


def check_X(X: Any, backend: Backend, *, name: str = "X") -> Any:
    """Validate a dense feature matrix and move it to ``backend``.

    Float32 and float64 are kept; other numeric types become float64. The values must be finite.

    Raises
    ------
    TypeError
        Sparse, non-numeric input.
    ValueError
        Not 2-D, empty, or containing NaN / inf.
    """
    if X is None:
        raise TypeError(f"{name} is None; expected a samples x features matrix.")
    if scipy.sparse.issparse(X) or (is_gpu_array(X) and backend_of(X).sparse.issparse(X)):
        raise TypeError(
            f"{name} is a sparse matrix; the linear classifiers take dense features "
            "(e.g. PCA scores). Reduce the dimension first or densify with X.toarray()."
        )
    if isinstance(X, (pd.DataFrame, pd.Series)):
        X = X.to_numpy()
    xp = backend.xp
    if is_gpu_array(X) and not backend.is_gpu:
        X = to_host(X)
    if not is_gpu_array(X):
        X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {X.dtype}.")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32 if X.dtype == np.float16 else np.float64)
    X = backend.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional (samples x features), got shape {tuple(X.shape)}.")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(X.shape)}: it needs at least one sample and one feature.")
    # Cheap test first: a column sum in float64 is finite unless a value is NaN/inf.
    if not bool(xp.isfinite(X.sum(axis=0, dtype=xp.float64)).all()):
        n_bad = int((~xp.isfinite(X)).sum())
        if n_bad:
            raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf).")
    return X


def check_n_features(X: Any, n_features: int, estimator: str) -> None:
    """Raise the scikit-learn style error when ``X`` has the wrong number of columns."""
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but {estimator} is expecting {n_features} features as input.")


def row_blocks(n: int, batch_size: int) -> list[slice]:
    """Consecutive row slices of at most ``batch_size`` rows covering ``range(n)``."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def auto_batch_size(n_samples: int, n_features: int, n_outputs: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per block so that the float64 temporaries of one block stay within ``budget_bytes``."""
    per_row = 8 * (n_features + 4 * max(n_outputs, 1))
    return int(max(1024, min(n_samples, budget_bytes // per_row)))


def check_batch_size(batch_size: int | None, n_samples: int, n_features: int, n_outputs: int) -> int:
    """Validate a user ``batch_size`` (None: automatic)."""
    if batch_size is None:
        return auto_batch_size(n_samples, n_features, n_outputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    return int(batch_size)


class LinearClassifierBase(ClassifierMixin, BaseEstimator):
    """Prediction half shared by the linear classifiers: scores ``X @ coef_.T + intercept_``.

    Subclasses set ``classes_``, ``coef_`` (``(1, p)`` for two classes, else ``(K, p)``),
    ``intercept_`` and ``n_features_in_`` in ``fit``. Scores are computed on the estimator's
    device (``device="auto"``: where ``X`` lives if it is a CuPy array, else the default
    backend), in float64, in row blocks; results come back to the host as NumPy arrays.
    """

    device: str | Backend
    batch_size: int | None

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _scores(self, X: Any) -> tuple[Backend, Any]:
        """Validate ``X`` and return (backend, float64 scores of shape (n, n_outputs)) on device."""
        self._check_fitted()
        backend = resolve_backend(self.device, X)
        X = check_X(X, backend)
        check_n_features(X, self.n_features_in_, type(self).__name__)
        xp = backend.xp
        coef_t = backend.asarray(np.ascontiguousarray(self.coef_.T), dtype=xp.float64)
        intercept = backend.asarray(self.intercept_, dtype=xp.float64)
        n = X.shape[0]
        bs = check_batch_size(getattr(self, "batch_size", None), n, X.shape[1], coef_t.shape[1])
        out = xp.empty((n, coef_t.shape[1]), dtype=xp.float64)
        for sl in row_blocks(n, bs):
            out[sl] = X[sl].astype(xp.float64, copy=False) @ coef_t
        out += intercept
        return backend, out

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed scores ``X @ coef_.T + intercept_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NumPy or CuPy dense matrix.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_samples,)`` for two classes (score of ``classes_[1]``), else
            ``(n_samples, n_classes)``.
        """
        _, scores = self._scores(X)
        scores = to_host(scores)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (elements of ``classes_``) as a host NumPy array.

        Two classes: ``classes_[1]`` where the score is > 0; more: the arg-max class (first on ties).
        """
        backend, scores = self._scores(X)
        xp = backend.xp
        if scores.shape[1] == 1:
            idx = (scores[:, 0] > 0).astype(xp.int64)
        else:
            idx = xp.argmax(scores, axis=1)
        return self.classes_[to_host(idx)]
