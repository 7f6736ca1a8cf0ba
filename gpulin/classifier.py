"""Cell-type classifiers: the published preset (scTOP -> ANOVA -> standardize -> whitened PCA ->
balanced logistic regression) and the scTOP basis projection, both on CPU or GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin

from ._backend import CPU, Backend, is_gpu_array, memory_guard, releases_memory, resolve_backend, to_host
from ._validation import check_batch_size, check_int, check_number
from .embed import _matrix_and_genes, align_genes, align_query, check_overlap, check_unique_genes, warn_duplicated_genes
from .implicit import GeneScaling, SparsePlusRowConstant, StandardizedOperator
from .models import LogisticRegression, RidgeClassifier
from .pca import pca, whitening_divisors
from .selection import f_classif, group_sums, select_k_best
from .transforms import METHODS, transform_implicit
from ._warnings import warn_user

UNASSIGNED = "unassigned"
#: What to change when a step after the transform runs out of memory (gpulin._backend.memory_guard).
_REMEDY = ("The PCA and the model keep a few dense (n_cells, n_components) float32 arrays on the "
           "device: pass fewer n_components, fit on fewer cells, or use device='cpu'.")

PRESETS: dict[str, dict[str, Any]] = {
    # pipeline.md section 2: Souza & Mehta (2026), including scikit-learn's randomized PCA
    # (random_state 0, 10 oversamples): its trailing components decide some published numbers.
    "souza-mehta-2026": dict(
        method="sctop", n_genes=20_000, scale=True, n_components=220, whiten=True, solver="sklearn",
        model="logistic", C=1.0, alpha=1.0, class_weight="balanced", max_iter=1000, tol=1e-4,
    ),
    # Cross-species transfer (benchmarks/README.md): 50 whitened components and a class-balanced
    # ridge head. Baron human->mouse / mouse->human macro F1 0.739 / 0.789 (the PCA is exact at
    # this size), against the published pipeline's 0.662 / 0.763; 0.732-0.740 / 0.769-0.794 over
    # four draws of a 4-iteration randomized PCA. A logistic head on those approximate 50
    # components gave 0.624-0.660 human->mouse: it leans on the trailing whitened components,
    # which are noise-level here.
    "cross-species": dict(
        method="sctop", n_genes=20_000, scale=True, n_components=50, whiten=True, solver="auto",
        model="ridge", C=1.0, alpha=1.0, class_weight="balanced", max_iter=1000, tol=1e-4,
    ),
    # A faster linear baseline from the same parts.
    "lognorm-ridge": dict(
        method="lognorm", n_genes=None, scale=True, n_components=100, whiten=True, solver="auto",
        model="ridge", C=1.0, alpha=1.0, class_weight="balanced", max_iter=1000, tol=1e-4,
    ),
}


def warn_uncalibrated_threshold(model: str, threshold: float | None) -> None:
    """A warning when an ``unassigned_threshold`` is applied to a ridge head's softmax scores."""
    if threshold is not None and model == "ridge":
        warn_user(
            f"unassigned_threshold={threshold} compares the top class probability, but a ridge head's "
            "probabilities are a softmax of its regression scores, not calibrated (top values near "
            "1 / n_classes), so most cells may come out 'unassigned'. Use model='logistic' for a "
            "threshold, or rank cells by novelty_score().",
            UserWarning,
        )


def _assign(classes: np.ndarray, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """The top-scoring class of each row, in the labels' own type; rows whose top score is below
    ``threshold`` are :data:`UNASSIGNED`: string labels stay a ``str`` array, other label types
    become an object array when (and only when) some row is unassigned."""
    labels = classes[scores.argmax(axis=1)]
    if threshold is None:
        return labels
    low = scores.max(axis=1) < threshold
    if not low.any():
        return labels
    if labels.dtype.kind == "U":
        return np.where(low, UNASSIGNED, labels)
    labels = labels.astype(object)
    labels[low] = UNASSIGNED
    return labels


def _training_classes(y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(y, return_inverse=True)`` of training labels, with clear errors for fewer than
    two classes and for a class named :data:`UNASSIGNED` (reserved for cells below a threshold:
    such a class could not be told apart from them, in predictions or in the metrics)."""
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{what} needs at least 2 cell types, got {len(classes)}: {classes.tolist()}.")
    if any(isinstance(c, str) and c == UNASSIGNED for c in classes.tolist()):
        raise ValueError(f"A cell type is named {UNASSIGNED!r}, the label gpulin reserves for cells below an "
                         "unassigned_threshold; rename that type (e.g. 'unassigned_type').")
    return classes, codes


def labels_of(adata: Any, labels: Any, what: str = "label") -> np.ndarray:
    """Cell labels as an array: ``adata.obs[labels]`` for a column name, else ``labels`` itself
    (array-like, one per cell), with clear errors for a missing column, a wrong length or missing
    labels (``what`` names them in the messages, e.g. "group"). String-like labels become ``str``;
    integer, float and bool labels keep their type, so predictions compare equal to them."""
    n = adata.shape[0] if hasattr(adata, "shape") else len(adata)  # nested lists of counts too
    if isinstance(labels, str):
        obs = getattr(adata, "obs", None)
        if obs is None:
            raise TypeError(f"labels={labels!r} names an obs column, which needs an AnnData; pass the labels themselves.")
        if labels not in obs:
            raise KeyError(f"{what.capitalize()} column {labels!r} not in adata.obs; columns: {list(obs.columns)}.")
        y, where = obs[labels], f"adata.obs[{labels!r}]"
    else:
        if isinstance(labels, pd.Series):
            y = _aligned_to_cells(labels, adata)
        elif isinstance(labels, (list, tuple)):
            y = pd.Series(list(labels))  # pandas infers the type; None / NaN stay missing
        else:
            y = pd.Series(np.asarray(to_host(labels)).ravel())
        where = f"the {what}s"
        if len(y) != n:
            raise ValueError(f"Got {len(y)} {what}s for {n} cells.")
    if y.isna().any():
        raise ValueError(f"{int(y.isna().sum())} cells have no {what} in {where}.")
    values = y.to_numpy()  # a categorical gives its categories' type
    if values.dtype.kind == "O" and pd.api.types.infer_dtype(values, skipna=False) in ("integer", "boolean", "floating"):
        values = pd.Series(values).infer_objects().to_numpy()  # Python ints / bools in an object column
    if values.dtype.kind in "biuf":
        return values
    return np.asarray(y.astype(str))


def _aligned_to_cells(labels: pd.Series, adata: Any) -> pd.Series:
    """A Series of labels in the order of ``adata``'s cells: by its index when that names the
    cells (``obs_names``, in any order), by position when it is a default 0..n-1 index; an index of
    other names is an error (silently using it by position would mislabel cells)."""
    names = getattr(adata, "obs_names", None)
    index = labels.index
    if names is None or index.equals(names) or index.equals(pd.RangeIndex(len(labels))):
        return labels.reset_index(drop=True)
    if len(index) == len(names) and index.is_unique and index.isin(names).all():
        return labels.reindex(names).reset_index(drop=True)
    missing = pd.Index(names).difference(index)
    raise ValueError(
        f"The labels' index does not match adata.obs_names ({len(missing)} cells have no entry, e.g. "
        f"{list(missing[:3])}); index the Series by obs_names, or pass labels.to_numpy() to use them by position."
    )


class _LabelScore(ClassifierMixin):
    """``score`` on cells and their labels given as an obs column name or as the labels."""

    def score(self, adata: Any, labels: Any, *, layer: str | None = None) -> float:
        """Accuracy on ``adata`` against ``labels`` (an obs column name, or the labels); cells
        predicted "unassigned" count as wrong."""
        return float(np.mean(self.predict(adata, layer=layer) == labels_of(adata, labels)))


class CellTypeClassifier(_LabelScore, BaseEstimator):
    """Linear cell-type classifier over an implicit (never densified) transformed matrix.

    A scikit-learn estimator: ``get_params`` / ``set_params`` / ``clone`` see the preset, the
    device and the overrides; ``fit(X, y)`` and ``score(X, y)`` take labels or an obs column name,
    so it also runs in ``cross_val_score`` or ``GridSearchCV`` on count matrices.

    Parameters
    ----------
    preset : {"souza-mehta-2026", "cross-species", "lognorm-ridge"}
        Defaults for every step; any step can be overridden by the keyword of the same name.
    device : {"cpu", "cuda", "auto"}
    method : {"sctop", "lognorm"}
        Per-cell transform (computed over all genes of the training matrix).
    n_genes : int or None
        ANOVA F-test selection of the top ``min(n_genes, G)`` genes (None: all genes).
    scale, n_components, whiten
        Standardization and PCA (``n_components`` is capped by the data's shape).
    solver : {"auto", "randomized", "gram", "sklearn"}
        PCA solver (:func:`gpulin.pca.pca`). The published preset uses ``"sklearn"`` (the same
        subspace as scikit-learn's randomized PCA with ``random_state=seed``) so that it reproduces
        the published numbers; ``"auto"`` (exact Gram + eigh when cheaper, else randomized block
        Krylov iteration) is faster on small data and more accurate.
    model : {"logistic", "ridge"}
    C, alpha, class_weight, max_iter, tol
        Logistic (C, max_iter, tol) or ridge (alpha) parameters; ``tol`` = 1e-4 is scikit-learn's
        default, which the published pipeline used.
    unassigned_threshold : float, optional
        Default for :meth:`predict`: cells whose top probability is below it are "unassigned".
        Meant for the logistic head, whose probabilities are calibrated by its loss; a ridge
        head's "probabilities" are a softmax of its regression scores (top values near
        1 / n_classes), so a threshold on them warns (rank cells by :meth:`novelty_score` instead).
    seed : int
        Seed of the PCA's random draw (default 0).
    batch_size : int, optional
        Cells per row block of the transform (None: automatic).
    min_gene_overlap : float
        Smallest fraction of the training genes a query must contain (default 0.5).

    Attributes
    ----------
    classes_ : numpy.ndarray
        The training labels, sorted.
    genes_ : numpy.ndarray of int or None
        The ANOVA-selected training genes (None: all).
    scaling_ : GeneScaling
        Per-gene means and scales of the training cells (host).
    components_ : numpy.ndarray of shape (n_components, n_selected_genes)
        PCA loadings (None when ``fit_transformed(..., loadings=False)`` skipped them: with
        ``solver="sklearn"`` on fewer cells than genes).
    explained_variance_ : numpy.ndarray of shape (n_components,)
    model_ : LogisticRegression or RidgeClassifier
        The head, fitted on the (whitened) scores.
    folded_coef_ : numpy.ndarray of shape (n_selected_genes, n_out)
        The head's weights on the standardized selected genes (loadings, whitening and ``coef_``
        multiplied out; n_out = n_classes, or 1 for two classes): predictions are one product of
        the query with it.
    """

    def __init__(self, preset: str = "souza-mehta-2026", *, device: str | Backend = "auto", **overrides: Any) -> None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; expected one of {list(PRESETS)}.")
        params = dict(PRESETS[preset])
        extra = {"seed": 0, "batch_size": None, "unassigned_threshold": None, "min_gene_overlap": 0.5}
        unknown = set(overrides) - set(params) - set(extra)
        if unknown:
            raise TypeError(f"Unknown parameter(s) {sorted(unknown)} for CellTypeClassifier.")
        params.update(extra)
        params.update(overrides)
        if params["method"] not in METHODS:
            raise ValueError(f"Unknown method {params['method']!r}; expected one of {METHODS}.")
        if params["model"] not in ("logistic", "ridge"):
            raise ValueError(f"Unknown model {params['model']!r}; expected 'logistic' or 'ridge'.")
        check_int("n_components", params["n_components"], 1)
        check_int("n_genes", params["n_genes"], 1, allow_none=True)
        check_number("C", params["C"], 0.0, low_open=True)
        check_number("alpha", params["alpha"], 0.0)
        check_int("max_iter", params["max_iter"], 1)
        check_number("tol", params["tol"], 0.0, low_open=True)
        check_number("unassigned_threshold", params["unassigned_threshold"], 0.0, 1.0, allow_none=True)
        check_number("min_gene_overlap", params["min_gene_overlap"], 0.0, 1.0)
        check_int("seed", params["seed"], 0)
        check_batch_size(params["batch_size"])
        self.preset = preset
        self.device = device
        self.params = params
        self._overrides = dict(overrides)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments: ``preset``, ``device`` and the overrides given."""
        return {"preset": self.preset, "device": self.device, **self._overrides}

    def set_params(self, **params: Any) -> "CellTypeClassifier":
        """Change constructor arguments (checked as the constructor checks them)."""
        merged = {**self.get_params(), **params}
        preset, device = merged.pop("preset"), merged.pop("device")
        CellTypeClassifier.__init__(self, preset, device=device, **merged)
        return self

    # -- public API ------------------------------------------------------------------------------
    @releases_memory
    def fit(self, adata: Any, labels: Any, *, layer: str | None = None) -> "CellTypeClassifier":
        """Fit on the cells of ``adata`` (AnnData, or a cells x genes count matrix).

        ``labels``: the name of an ``adata.obs`` column, or the labels (array-like, one per cell).
        """
        return self._fit(adata, labels, layer)

    def _fit(self, adata: Any, labels: Any, layer: str | None, loadings: bool = True) -> "CellTypeClassifier":
        y = labels_of(adata, labels)
        X, genes = _matrix_and_genes(adata, layer)
        self.backend_ = resolve_backend(self.device, X)
        S = self._transform(X)
        self.var_names_ = None if genes is None else np.asarray(genes).astype(str)
        warn_duplicated_genes(self.var_names_)
        return self.fit_transformed(S, y, loadings=loadings)

    @releases_memory
    def predict_proba(self, adata: Any, *, layer: str | None = None) -> np.ndarray:
        """Class probabilities (n_cells, n_classes); for ridge, a softmax of the decision values."""
        return self.predict_proba_transformed(self._query(adata, layer))

    @releases_memory
    def decision_function(self, adata: Any, *, layer: str | None = None) -> np.ndarray:
        """Decision values of the head (float64 on the host), as scikit-learn's linear classifiers.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_cells,)`` for two classes (the score of ``classes_[1]``), else
            ``(n_cells, n_classes)``: the logistic head's logits (``predict_proba`` is their
            softmax) or the ridge head's predicted one-hot targets.
        """
        S = self._query(adata, layer)
        with memory_guard(S.backend, f"predicting {S.shape[0]:,} cells", _REMEDY):
            z = np.asarray(to_host(self._decision_transformed(S)), dtype=np.float64)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, adata: Any, *, layer: str | None = None, unassigned_threshold: float | None = -np.inf) -> np.ndarray:
        """Predicted labels; cells below ``unassigned_threshold`` (top probability) are "unassigned".

        ``unassigned_threshold``: the constructor's when not given; None: no threshold.
        """
        return self._labels(self.predict_proba(adata, layer=layer), unassigned_threshold)

    def novelty_score(self, adata: Any, *, layer: str | None = None) -> np.ndarray:
        """1 - top class probability: higher for cells unlike any training type."""
        return 1.0 - self.predict_proba(adata, layer=layer).max(axis=1)

    # -- implicit-level API (used by gpulin.evaluate to transform once per dataset) ------------------
    def _transform(self, X: Any) -> SparsePlusRowConstant:
        return transform_implicit(X, self.params["method"], device=self.backend_, batch_size=self.params["batch_size"])

    @releases_memory
    def fit_transformed(self, S: SparsePlusRowConstant, y: Any, *, loadings: bool = True) -> "CellTypeClassifier":
        """Fit from an already transformed training matrix ``S`` and labels ``y``.

        ``loadings=False``: a classifier that will only predict (``gpulin.evaluate``) keeps the
        model's weights folded onto the genes (:attr:`folded_coef_`) and may skip the PCA
        loadings (``components_`` is then None and :meth:`embed_transformed` is unavailable);
        see ``gpulin.pca.pca(loadings=False)``. Predictions are the same.
        """
        self.backend_ = S.backend
        y = np.asarray(y)
        classes, codes = _training_classes(y, "Training")
        n, G = S.shape
        with memory_guard(self.backend_, f"fitting the classifier on {n:,} cells x {G:,} genes", _REMEDY):
            return self._fit_transformed(S, y, codes, loadings)

    def _fit_transformed(self, S: SparsePlusRowConstant, y: np.ndarray, codes: np.ndarray,
                         loadings: bool = True) -> "CellTypeClassifier":
        p = self.params
        n, G = S.shape
        if p["n_genes"] is not None and p["n_genes"] < G:
            F, _ = f_classif(S, codes)
            genes = select_k_best(F, p["n_genes"])
        else:
            genes = None
        self.genes_ = genes
        scaling = GeneScaling.fit(S, scale=p["scale"])
        self.scaling_ = scaling.on(CPU)  # host copy: the fitted classifier pickles and runs on either device
        op = StandardizedOperator(S, scaling, genes)
        k = int(min(p["n_components"], n - 1, op.shape[1]))
        res = pca(op, k, solver=p["solver"], seed=p["seed"], loadings=loadings)
        self.components_ = res.components
        self.explained_variance_ = res.explained_variance
        Z = self._whiten(res.scores, S.backend.xp)
        if p["model"] == "logistic":
            model = LogisticRegression(C=p["C"], class_weight=p["class_weight"], max_iter=p["max_iter"], tol=p["tol"],
                                       device=self.backend_)
        else:
            model = RidgeClassifier(alpha=p["alpha"], class_weight=p["class_weight"], device=self.backend_)
        model.fit(Z, y)
        self.model_ = model
        # Everything after the standardization is linear up to the link: the decision values
        # (A C^T / w) B^T + b (A the standardized cells, C the loadings, w the whitening divisors,
        # B the model's coef_) are A (C^T diag(1/w) B^T) + b, one product of the cells with this
        # genes x n_out matrix instead of one with the genes x n_components loadings.
        self.folded_coef_ = res.components_t_times(self._whitened_coef())
        self.classes_ = model.classes_
        self.n_genes_in_ = G
        return self

    def embed_transformed(self, S: SparsePlusRowConstant) -> Any:
        """Whitened PCA scores (device array) of transformed cells ``S`` over the training genes."""
        if self.components_ is None:
            raise ValueError("This classifier was fitted with loadings=False (it only predicts): refit it with "
                             "fit() or fit_transformed(S, y) to embed cells.")
        op = StandardizedOperator(S, self.scaling_.on(S.backend), self.genes_)
        xp = S.backend.xp
        return self._whiten(op.matmat(xp.asarray(self.components_.T.astype(np.float32))), xp)

    @releases_memory
    def predict_proba_transformed(self, S: SparsePlusRowConstant) -> np.ndarray:
        with memory_guard(S.backend, f"predicting {S.shape[0]:,} cells", _REMEDY):
            return self._predict_proba_transformed(S)

    def _predict_proba_transformed(self, S: SparsePlusRowConstant) -> np.ndarray:
        z = self._decision_transformed(S)
        if self.params["model"] == "logistic":
            return self.model_.proba_from_decision(z)
        z = np.asarray(to_host(z))
        if z.shape[1] == 1:  # ridge, two classes: the score of classes_[1]
            z = np.concatenate([-z, z], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def _decision_transformed(self, S: SparsePlusRowConstant) -> Any:
        """Decision values (float64 device array, (n_cells, n_out)) of transformed cells ``S``:
        one product with :attr:`folded_coef_` (equal to the model's ``decision_function`` of
        :meth:`embed_transformed` up to float32 rounding; tested)."""
        # sparse products even where the loadings' product would densify row tiles: with a few
        # columns, expanding the tile costs more than the product (Baron mouse, 1,886 cells x
        # 11,674 genes at 13% density, 13 columns: 27 ms with tiles)
        op = StandardizedOperator(S, self.scaling_.on(S.backend), self.genes_, dense_tiles=False)
        xp = S.backend.xp
        if not hasattr(self, "folded_coef_"):  # fitted (and pickled) before gpulin kept it, with loadings
            assert self.components_ is not None
            self.folded_coef_ = self.components_.T @ self._whitened_coef()
        z = op.matmat(xp.asarray(self.folded_coef_)).astype(xp.float64)
        z += xp.asarray(np.asarray(self.model_.intercept_, dtype=np.float64))[None, :]
        return z

    def predict_transformed(self, S: SparsePlusRowConstant, unassigned_threshold: float | None = -np.inf) -> np.ndarray:
        return self._labels(self.predict_proba_transformed(S), unassigned_threshold)

    # -- helpers -----------------------------------------------------------------------------------
    def _whitened_coef(self) -> np.ndarray:
        """The head's weights on the (unwhitened) PCA scores, float64 (n_components, n_out)."""
        coef = np.asarray(self.model_.coef_, dtype=np.float64).T
        if self.params["whiten"]:
            coef = coef / whitening_divisors(self.explained_variance_)[:, None]
        return coef

    def _whiten(self, scores: Any, xp: Any) -> Any:
        if not self.params["whiten"]:
            return scores
        return scores / xp.asarray(whitening_divisors(self.explained_variance_).astype(np.float32))[None, :]

    def _labels(self, proba: np.ndarray, threshold: float | None = -np.inf) -> np.ndarray:
        """Labels from probabilities; ``threshold``: -inf for the constructor's, None for none."""
        if threshold == -np.inf:
            threshold = self.params["unassigned_threshold"]
        else:
            check_number("unassigned_threshold", threshold, 0.0, 1.0, allow_none=True)
        warn_uncalibrated_threshold(self.params["model"], threshold)
        return _assign(np.asarray(self.classes_), proba, threshold)

    def _query(self, adata: Any, layer: str | None) -> SparsePlusRowConstant:
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This CellTypeClassifier is not fitted yet; call fit() first.")
        X, genes = _matrix_and_genes(adata, layer)
        X = align_query(X, genes, self.var_names_, self.n_genes_in_, self.backend_, self.params["min_gene_overlap"])
        return self._transform(X)


class ScTOPProjection(_LabelScore, BaseEstimator):
    """scTOP basis projection (pipeline.md section 3): order parameters on reference type centroids.

    Basis column for type t: the mean library-normalized profile of the reference cells of type
    t, scTOP-transformed. A query cell ``s`` (scTOP over the genes shared with the basis) gets
    order parameters ``a = (B^T B)^-1 B^T s``; it is predicted ``argmax a`` or "unassigned" when
    ``max a < unassigned_threshold``.

    Parameters
    ----------
    unassigned_threshold : float or None
        Cells whose top order parameter is below it are "unassigned" (None: never).
    min_gene_overlap : float
        Smallest fraction of the basis genes a query must contain (an AnnData query is matched by
        ``var_names``; a matrix query must have the basis genes, in order).
    device : {"cpu", "cuda", "auto"}
    """

    def __init__(self, unassigned_threshold: float | None = 0.1, *, min_gene_overlap: float = 0.5,
                 device: str | Backend = "auto") -> None:
        self.unassigned_threshold = unassigned_threshold
        self.min_gene_overlap = min_gene_overlap
        self.device = device

    @releases_memory
    def fit(self, adata: Any, labels: Any, *, layer: str | None = None) -> "ScTOPProjection":
        """Build the basis from ``adata`` (AnnData, or a cells x genes count matrix) and ``labels``
        (an obs column name, or the labels themselves)."""
        # checked here, not in __init__ (scikit-learn's convention: set_params may change them)
        check_number("unassigned_threshold", self.unassigned_threshold, -np.inf, allow_none=True)
        check_number("min_gene_overlap", self.min_gene_overlap, 0.0, 1.0)
        y = labels_of(adata, labels)
        X, genes = _matrix_and_genes(adata, layer)
        if genes is not None:
            check_unique_genes(np.asarray(genes).astype(str), "the reference")
        return self._fit_counts(X, y, genes)

    def _fit_counts(self, X: Any, y: np.ndarray, genes: Any, columns: np.ndarray | None = None) -> "ScTOPProjection":
        """The basis from counts ``X`` (cells x genes) restricted to their ``columns`` (positions,
        in the basis' order; None: all), without a copy of ``X`` cut to those columns: each
        cell's library size is summed over ``columns`` only (a 0/1 product), its profile over all
        genes, and the columns taken from the small types x genes profiles; only the values in
        ``columns`` are checked. For integer counts the basis is that of the cut matrix to the
        last bit (tested); non-integer values are summed in another order (rounding-level
        differences). ``genes``: the basis' gene names (of the columns), or None."""
        backend = resolve_backend(self.device, X)
        self.backend_ = backend
        from ._validation import as_csr, check_counts

        # The type profiles are computed where the counts live (host counts are not copied to the
        # GPU whole); only the small types x genes profiles go to the device for the transform.
        where = backend if is_gpu_array(X) else CPU
        csr = as_csr(X, where)
        on = None
        if columns is not None:  # 0/1 over the columns; integers are summed in float64 (exact below 2^53)
            on = np.zeros(csr.shape[1], dtype=csr.dtype if csr.dtype.kind == "f" else np.float64)
            on[columns] = 1
            on = where.xp.asarray(on)
        check_counts(csr, where, method="sctop", columns=None if on is None else on != 0)
        classes, codes = _training_classes(y, "A basis")
        n = len(y)
        with memory_guard(where, f"averaging the profiles of {n:,} reference cells", _REMEDY):
            lib = csr.sum(axis=1) if on is None else csr @ on
            lib = np.asarray(to_host(lib), dtype=np.float64).ravel()
            lib = np.where(lib > 0, lib, 1.0)
            # profiles = W @ X with W[t, i] = 1 / (lib_i n_t) for the cells i of type t
            weights = 1.0 / (lib * np.bincount(codes)[codes])
            profiles = group_sums(csr, codes, weights, len(classes), where)
            if columns is not None:
                profiles = profiles[:, where.xp.asarray(columns)]
            profiles = where.sparse.csr_matrix(profiles)
        S = transform_implicit(profiles, "sctop", device=backend, check=False)
        self.basis_ = pd.DataFrame(S.toarray().T.astype(np.float64), index=np.asarray(genes).astype(str) if genes is not None else None, columns=classes)
        self.classes_ = classes
        return self

    @releases_memory
    def order_parameters(self, adata: Any, *, layer: str | None = None) -> pd.DataFrame:
        """Order parameters (n_cells x n_types) of the query cells, over the shared genes."""
        a, _ = self._project(adata, layer, residual=False)
        index = adata.obs_names if hasattr(adata, "obs_names") else None
        return pd.DataFrame(a, index=index, columns=self.classes_)

    def _project(self, adata: Any, layer: str | None, residual: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Order parameters ``a`` (n_cells x n_types) and, with ``residual``, the share of each
        cell's squared norm outside the basis span, ``||s - B a||^2 / ||s||^2 = 1 - a.(B^T s) /
        ||s||^2`` (1 for a cell without counts: nothing of it is explained)."""
        if not hasattr(self, "basis_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This ScTOPProjection is not fitted yet; call fit() first.")
        X, genes = _matrix_and_genes(adata, layer)
        G = len(self.basis_)
        if genes is None or not isinstance(self.basis_.index[0], str):
            if X.shape[1] != G:
                raise ValueError(f"The query has {X.shape[1]} genes but the basis has {G}; pass AnnData on both "
                                 "sides (genes are then matched by var_names) or a matrix with the basis genes.")
            B, Xs = self.basis_.to_numpy(), X
        else:
            genes = np.asarray(genes).astype(str)
            query_genes = set(genes)
            shared = [g for g in self.basis_.index if g in query_genes]
            check_overlap(len(shared), G, len(genes), self.min_gene_overlap, "basis")
            B = self.basis_.loc[shared].to_numpy()
            Xs = align_genes(X, genes, np.asarray(shared), self.backend_)
        S = transform_implicit(Xs, "sctop", device=self.backend_)
        xp = self.backend_.xp
        BtB_inv = np.linalg.inv(B.T @ B)
        with memory_guard(self.backend_, f"projecting {S.shape[0]:,} query cells", _REMEDY):
            Bts = np.asarray(to_host(S.dot(xp.asarray(B))))
            a = Bts @ BtB_inv
            if not residual:
                return a, None
            norms = np.asarray(to_host(S.row_sq_norms()))
        # ||B a||^2 = ||Q^T s||^2 with B = Q R, Q^T s = R^-T (B^T s): conditioned as B, not B^T B
        R = scipy.linalg.qr(B, mode="r")[0][: B.shape[1]]  # (types x types) upper triangle
        explained = (scipy.linalg.solve_triangular(R.T, Bts.T, lower=True) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(norms > 0, 1.0 - explained / np.where(norms > 0, norms, 1.0), 1.0)
        return a, np.clip(share, 0.0, 1.0)

    def predict(self, adata: Any, *, layer: str | None = None, unassigned_threshold: float | None = -np.inf) -> np.ndarray:
        a = self.order_parameters(adata, layer=layer).to_numpy()
        thr = self.unassigned_threshold if unassigned_threshold == -np.inf else unassigned_threshold
        return _assign(np.asarray(self.classes_), a, thr)

    @releases_memory
    def novelty_score(self, adata: Any, *, layer: str | None = None, score: str = "order") -> np.ndarray:
        """Higher for cells unlike every basis type (n_cells,).

        ``score="order"``: the negative top order parameter. ``score="residual"``: the share of
        the cell's squared scTOP norm outside the span of the basis, in [0, 1]. On Baron (each
        type with >= 50 cells left out of the basis in turn, ``benchmarks/beyond_reference.py``)
        the top order parameter ranks the left-out types' cells better, hence the default.
        """
        if score not in ("order", "residual"):
            raise ValueError(f"score must be 'order' or 'residual', got {score!r}.")
        a, share = self._project(adata, layer, residual=score == "residual")
        if share is not None:
            return share
        return -a.max(axis=1)
