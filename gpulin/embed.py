"""``gpulin.embed`` and ``gpulin.LinearEmbedding``: transform -> standardize -> PCA, never densified."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from ._backend import CPU, Backend, is_gpu_array, memory_guard, releases_memory, resolve_backend, to_host
from ._validation import as_csr, check_batch_size, check_bool, check_int, check_n_components, check_number
from .implicit import GeneScaling, StandardizedOperator, cpu_workers
from .pca import PCAResult, pca, whitening_divisors
from .transforms import METHODS, median_library_size, transform_implicit
from ._warnings import warn_user


def get_matrix(adata: Any, layer: str | None) -> Any:
    """``adata.X`` or ``adata.layers[layer]``, with a clear error when absent; an on-disk matrix
    (backed AnnData) is read into memory (:func:`read_backed`)."""
    if layer is None:
        X = adata.X  # once: each access to a view's X slices the parent again
        if X is None:
            raise ValueError("adata.X is None; pass layer= to use a layer of counts.")
        return read_backed(X)
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found; available layers: {list(adata.layers.keys())}.")
    return read_backed(adata.layers[layer])


#: Dense on-disk matrices are read in row blocks of about this many bytes.
BACKED_BLOCK_BYTES = 64 << 20


def read_backed(X: Any) -> Any:
    """The in-memory matrix of an on-disk one (``anndata.read_h5ad(..., backed="r")``).

    Backed sparse matrices (anndata's ``CSRDataset`` / ``CSCDataset``) are read whole as SciPy
    CSR / CSC: every PCA iteration makes a pass over the counts, so they are read once rather
    than streamed from disk on each pass. Dense HDF5 / Zarr arrays are read in row blocks of
    about :data:`BACKED_BLOCK_BYTES` and kept as CSR, never as one dense array. Anything else is
    returned as is.
    """
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # anndata < 0.11 (pyproject allows >= 0.10): its backed classes are private
        from anndata._core.sparse_dataset import BaseCompressedSparseDataset as CSRDataset

        CSCDataset = CSRDataset
    if isinstance(X, (CSRDataset, CSCDataset)):
        return X.to_memory()
    if type(X).__module__.split(".")[0] in ("h5py", "zarr") and len(getattr(X, "shape", ())) == 2:
        n, g = X.shape
        rows = max(1, BACKED_BLOCK_BYTES // max(1, g * np.dtype(X.dtype).itemsize))
        blocks = [scipy.sparse.csr_matrix(X[s : s + rows]) for s in range(0, n, rows)]
        return scipy.sparse.vstack(blocks, format="csr") if blocks else scipy.sparse.csr_matrix((n, g), dtype=X.dtype)
    return X


class _Timer:
    """Wall-clock stage timer that synchronizes the device before each reading."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        self.backend.synchronize()
        now = time.perf_counter()
        self.seconds[stage] = now - self._t
        self._t = now


#: What to change when the PCA runs out of memory (:func:`gpulin._backend.memory_guard`).
_REMEDY_PCA = (
    "The randomized PCA keeps (n_iter + 1) x (n_components + n_oversamples) float32 values per cell "
    "and per gene: pass fewer n_components or a smaller n_iter, or use device='cpu'."
)
#: ... and when another step after the transform does.
_REMEDY_OTHER = "Pass a smaller batch_size (for example half of it), or use device='cpu'."


class LinearEmbedding(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Linear embedding estimator: ``fit`` on a reference, ``transform`` any query.

    A scikit-learn estimator (``get_params``, ``set_params``, ``clone``; a transformer step of a
    ``Pipeline`` on count matrices).

    transform (``sctop`` or ``lognorm``) -> per-gene standardization (reference means and
    scales) -> projection on the reference principal axes. Queries are aligned to the reference
    genes by ``var_names``: reference genes missing from the query count as zero, extra query
    genes are ignored, and the per-cell transform is computed over the aligned genes.

    Parameters
    ----------
    method : {"sctop", "lognorm"}
    n_components : int
    scale : bool
        Divide genes by their standard deviation (True) or only centre them (False, scanpy's
        default PCA on log-normalized data).
    whiten : bool
        Scores divided by ``sqrt(explained_variance_)`` (scikit-learn semantics).
    solver : {"auto", "randomized", "gram", "sklearn"}
        See :func:`gpulin.pca.pca`; ``"sklearn"`` gives the subspace of scikit-learn's randomized
        PCA with ``random_state=seed``, and its fit scores are the in-subspace scores, as
        scikit-learn's ``fit_transform`` returns (``transform`` gives ``A @ components.T``).
        On small problems the randomized default runs 8 iterations instead of 4 (within 0.53%
        of the exact variances of 50 components on PBMC 3k and Kang, where 4 left the trailing
        components 1-5% off); ``"gram"`` is exact (``benchmarks/pca_small_data.py``).
    n_oversamples, n_iter : int, optional
        Randomized SVD parameters (see :func:`gpulin.pca.pca`).
    target_sum : float or None
        ``lognorm`` library size (None: the median library size of the fitted cells, as scanpy's
        ``normalize_total``; ``target_sum_`` holds the value used, and queries use it too).
    min_gene_overlap : float
        Smallest fraction of reference genes a query must contain.
    mask_var : str or array of bool, optional
        Genes the PCA runs on (as scanpy's ``pca(mask_var=...)``): the name of a boolean
        ``var`` column (e.g. ``"highly_variable"``) or a boolean array over the genes. The
        per-cell transform still runs over all genes (as in the published pipeline, where genes
        are selected after the scTOP transform); the other genes get zero loadings. None: all
        genes.
    device : {"cpu", "cuda", "auto"}
    batch_size : int, optional
        Cells per row block (None: automatic).
    seed : int

    Attributes
    ----------
    var_names_ : numpy.ndarray of str, shape (n_genes,), or None (fitted on a matrix)
    mean_, scale_ : numpy.ndarray, shape (n_genes,)
    components_ : numpy.ndarray, shape (n_components, n_genes)
        Zero outside ``mask_var``.
    mask_var_ : numpy.ndarray of bool, shape (n_genes,)
        The genes the PCA ran on.
    explained_variance_, explained_variance_ratio_, singular_values_ : numpy.ndarray
    n_iter_, n_oversamples_ : int
        Iterations and oversamples the PCA used (``n_iter_`` is 0 for the exact solver).
    timings_ : dict of stage -> seconds of the last ``fit``
    """

    def __init__(
        self,
        method: str = "sctop",
        n_components: int = 50,
        *,
        scale: bool = True,
        whiten: bool = False,
        solver: str = "auto",
        n_oversamples: int | None = None,
        n_iter: int | None = None,
        target_sum: float | None = 1e4,
        min_gene_overlap: float = 0.5,
        mask_var: str | Any | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.method = method
        self.n_components = n_components
        self.scale = scale
        self.whiten = whiten
        self.solver = solver
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.target_sum = target_sum
        self.min_gene_overlap = min_gene_overlap
        self.mask_var = mask_var
        self.device = device
        self.batch_size = batch_size
        self.seed = seed

    @property
    def _n_features_out(self) -> int:
        """Output width, for ``get_feature_names_out`` ("linearembedding0", ...)."""
        return int(self.n_components_)

    # -- helpers --------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; expected one of {METHODS}.")
        check_batch_size(self.batch_size)
        check_number("min_gene_overlap", self.min_gene_overlap, 0.0, 1.0)
        check_int("n_iter", self.n_iter, 0, allow_none=True)
        check_int("n_oversamples", self.n_oversamples, 0, allow_none=True)
        check_int("seed", self.seed, 0)
        check_number("target_sum", self.target_sum, 0.0, low_open=True, allow_none=True)
        check_bool("scale", self.scale)
        check_bool("whiten", self.whiten)

    def _transform_counts(self, X: Any, backend: Backend, target_sum: float | None = None) -> Any:
        """The per-cell transform of counts ``X`` (lognorm: ``target_sum``, by default the fitted
        reference's ``target_sum_``)."""
        if target_sum is None and self.method == "lognorm":  # sctop has no library size to resolve
            target_sum = self.target_sum_
        return transform_implicit(X, self.method, device=backend, batch_size=self.batch_size, target_sum=target_sum)

    # -- fit ------------------------------------------------------------------------------------
    @releases_memory
    def fit(self, adata: Any, y: Any = None, *, layer: str | None = None) -> "LinearEmbedding":
        """Fit on the cells of ``adata`` (AnnData, or a cells x genes matrix of counts); ``y`` is
        ignored (scikit-learn's transformer signature)."""
        self._fit(adata, layer=layer)
        return self

    @releases_memory
    def fit_transform(self, adata: Any, y: Any = None, *, layer: str | None = None) -> np.ndarray:
        """Fit and return the training scores, (n_cells, n_components) float32 on the host (a
        DataFrame indexed by ``obs_names`` under ``set_output(transform="pandas")``)."""
        return self._cells_indexed(to_host(self._fit(adata, layer=layer)), adata)

    def _fit(self, adata: Any, *, layer: str | None) -> Any:
        self._check_params()
        X, var_names = _matrix_and_genes(adata, layer)
        backend = resolve_backend(self.device, X)
        # lognorm's library size, resolved on the reference (None: its median) and kept for queries;
        # fitted attributes are set together at the end (a failed re-fit leaves the last fit whole)
        target_sum = self.target_sum if self.method == "lognorm" else None  # sctop has no library size
        if self.method == "lognorm" and self.target_sum is None:
            target_sum = median_library_size(as_csr(X, backend if is_gpu_array(X) else CPU))
        timer = _Timer(backend)
        n, G = X.shape
        mask = gene_mask(adata, self.mask_var, G)
        try:
            k = check_n_components(self.n_components, n, int(mask.sum()))
        except ValueError as exc:
            if mask.all():
                raise
            raise ValueError(f"{exc} (n_genes counts the {int(mask.sum())} genes of mask_var)") from None
        S = self._transform_counts(X, backend, target_sum)  # its own guard names the row block
        timer.lap("transform")
        with memory_guard(backend, f"standardizing {n:,} cells x {G:,} genes", _REMEDY_OTHER):
            scaling = GeneScaling.fit(S, scale=self.scale)
            op = StandardizedOperator(S, scaling, None if mask.all() else np.flatnonzero(mask))
        timer.lap("standardize")
        with memory_guard(backend, f"in the PCA ({k} components of {n:,} cells)", _REMEDY_PCA):
            res: PCAResult = pca(
                op, k, solver=self.solver, n_oversamples=self.n_oversamples, n_iter=self.n_iter, seed=self.seed
            )
        timer.lap("pca")
        scores = self._finish_scores(res.scores, res.explained_variance, backend)
        self.backend_ = backend
        self.target_sum_ = target_sum
        self.var_names_ = None if var_names is None else np.asarray(var_names).astype(str)
        warn_duplicated_genes(self.var_names_)
        self.mean_ = np.asarray(to_host(scaling.mean))
        self.scale_ = np.asarray(to_host(scaling.scale))
        self.var_ = np.asarray(to_host(scaling.var))
        self.mask_var_ = mask
        components = res.components
        assert components is not None  # pca() forms the loadings unless told not to
        self.components_: np.ndarray = components
        if not mask.all():  # full-width loadings, zero outside the mask (scanpy's convention)
            self.components_ = np.zeros((components.shape[0], G), dtype=components.dtype)
            self.components_[:, mask] = components
        self.singular_values_ = res.singular_values
        self.explained_variance_ = res.explained_variance
        self.explained_variance_ratio_ = res.explained_variance_ratio
        self.solver_ = res.solver
        self.n_iter_ = res.n_iter
        self.n_oversamples_ = res.n_oversamples
        self.n_features_in_ = G
        self.n_components_ = k
        out = scores.astype(backend.xp.float32)
        host = to_host(out)
        timer.lap("to_host")
        self.timings_ = dict(timer.seconds)
        return host

    def _finish_scores(self, scores: Any, explained_variance: np.ndarray, backend: Backend) -> Any:
        if not self.whiten:
            return scores
        return scores / backend.xp.asarray(whitening_divisors(explained_variance).astype(np.float32))[None, :]

    # -- transform ------------------------------------------------------------------------------
    @releases_memory
    def transform(self, adata: Any, *, layer: str | None = None) -> np.ndarray:
        """Embed new cells with the fitted reference: (n_cells, n_components) float32 on the host.

        Under ``set_output(transform="pandas")`` an AnnData input gives a DataFrame indexed by its
        ``obs_names`` (scikit-learn alone would index it 0, 1, ...). Query genes are aligned to the
        reference by ``var_names`` (AnnData input) or must match the reference gene count (matrix
        input).
        """
        if not hasattr(self, "components_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This LinearEmbedding is not fitted yet; call fit() first.")
        X, var_names = _matrix_and_genes(adata, layer)
        backend = resolve_backend(self.device, X)
        xp = backend.xp
        X = self._align(X, var_names, backend)
        S = self._transform_counts(X, backend)
        scaling = GeneScaling(
            mean=xp.asarray(self.mean_), scale=xp.asarray(self.scale_), var=xp.asarray(self.var_), n_cells=0
        )
        with memory_guard(backend, f"projecting {X.shape[0]:,} query cells", _REMEDY_OTHER):
            op = StandardizedOperator(S, scaling)
            scores = op.matmat(xp.asarray(self.components_.T.astype(np.float32)))
            out = to_host(self._finish_scores(scores, self.explained_variance_, backend))
        return self._cells_indexed(out, adata)

    def _cells_indexed(self, scores: np.ndarray, adata: Any) -> Any:
        """``scores`` as a DataFrame indexed by the cells' ``obs_names`` when the transform output
        is set to pandas and ``adata`` is AnnData (scikit-learn's wrapper then keeps that index and
        sets the column names); else ``scores`` unchanged."""
        if _transform_output(self) != "pandas" or not is_anndata(adata):
            return scores
        return pd.DataFrame(scores, index=pd.Index(adata.obs_names, copy=True), columns=self.get_feature_names_out())

    def _align(self, X: Any, var_names: Any, backend: Backend) -> Any:
        return align_query(X, var_names, self.var_names_, self.n_features_in_, backend, float(self.min_gene_overlap))


def _transform_output(estimator: Any) -> str:
    """The container ``estimator``'s transform output is set to, its own ``set_output`` or
    scikit-learn's global ``transform_output`` ("default", "pandas" or "polars")."""
    try:
        from sklearn.utils._set_output import _get_output_config
    except ImportError:  # pragma: no cover - a scikit-learn that moved its private helper
        return str(getattr(estimator, "_sklearn_output_config", {}).get("transform", "default"))
    return str(_get_output_config("transform", estimator)["dense"])


def align_query(X: Any, genes: Any, ref_genes: np.ndarray | None, n_ref: int, backend: Backend, min_overlap: float) -> Any:
    """The query counts ``X`` with the reference's genes as columns: by name when both sides have
    gene names (:func:`align_genes`; as is when the names are the same), else by position (the
    gene counts must then agree)."""
    if genes is None or ref_genes is None:
        if X.shape[1] != n_ref:
            raise ValueError(
                f"The query has {X.shape[1]} genes but the reference has {n_ref}; pass AnnData on both sides "
                "(genes are then aligned by var_names) or a matrix with the reference's genes, in order."
            )
        return X
    q = np.asarray(genes).astype(str)
    if q.shape[0] == n_ref and np.array_equal(q, ref_genes):
        return X
    return align_genes(X, q, ref_genes, backend, min_overlap=min_overlap)


def gene_mask(adata: Any, mask_var: Any, n_genes: int) -> np.ndarray:
    """The boolean gene mask of ``mask_var`` (see :class:`LinearEmbedding`), checked."""
    if mask_var is None:
        return np.ones(n_genes, dtype=bool)
    if isinstance(mask_var, str):
        if not is_anndata(adata):
            raise TypeError(f"mask_var={mask_var!r} names a var column, which needs an AnnData input.")
        var = adata.var
        if mask_var not in var.columns:
            raise KeyError(f"mask_var={mask_var!r} is not a column of adata.var; columns: {list(var.columns)}.")
        values = var[mask_var].to_numpy()
        name = f"adata.var[{mask_var!r}]"
    else:
        values = np.asarray(to_host(mask_var))
        name = "mask_var"
    if values.dtype != bool:
        raise TypeError(f"{name} must be boolean (True for the genes to use), got dtype {values.dtype}.")
    if values.shape != (n_genes,):
        raise ValueError(f"{name} has shape {values.shape}; expected ({n_genes},), one entry per gene.")
    if not values.any():
        raise ValueError(f"{name} selects no gene.")
    return values.copy()


def _duplicated(genes: np.ndarray) -> np.ndarray:
    """The gene names that occur more than once (sorted)."""
    index = pd.Index(genes)
    if index.is_unique:  # a hash table: the common case without sorting strings
        return np.asarray(genes)[:0]
    return np.unique(np.asarray(genes)[index.duplicated()])


def check_unique_genes(genes: np.ndarray, whose: str, among: str = "") -> None:
    """A clear error when gene names repeat (which column would a query gene go to?)."""
    dup = _duplicated(genes)
    if dup.size:
        raise ValueError(
            f"{whose[0].upper() + whose[1:]} has {len(dup)} duplicated gene name(s){among} (e.g. "
            f"{', '.join(map(repr, dup[:3].tolist()))}); make them unique first (adata.var_names_make_unique())."
        )


def check_overlap(n_shared: int, n_ref: int, n_query: int, min_overlap: float, ref_name: str) -> None:
    """A clear error when fewer than ``min_overlap`` of the ``n_ref`` reference genes are shared."""
    if n_shared == 0 or n_shared < min_overlap * n_ref:
        raise ValueError(
            f"Only {n_shared} of the {n_ref} {ref_name} genes ({100 * n_shared / max(n_ref, 1):.1f}%) are present in "
            f"the query (which has {n_query} genes); at least {100 * min_overlap:.0f}% are required "
            "(min_gene_overlap). Check that both use the same gene identifiers (symbols vs Ensembl IDs, "
            "species: see gpulin.map_orthologs)."
        )


def warn_duplicated_genes(genes: np.ndarray | None) -> None:
    """A warning at fit time when reference gene names repeat: queries are aligned by name, which
    then fails (clearly) unless the query has the very same genes in the same order."""
    dup = _duplicated(genes) if genes is not None else np.empty(0)
    if dup.size:
        warn_user(
            f"The training data has {len(dup)} duplicated gene name(s) (e.g. {', '.join(map(repr, dup[:3].tolist()))}): "
            "queries with other genes or another gene order cannot be aligned to it by name. Make them "
            "unique first (adata.var_names_make_unique()).",
            UserWarning,
        )


def matched_genes(query_genes: np.ndarray, ref_genes: np.ndarray, *, min_overlap: float = 0.0,
                  name: str = "the query") -> tuple[np.ndarray, np.ndarray]:
    """``(qi, ri)``: the query genes ``query_genes[qi]`` are the reference genes ``ref_genes[ri]``
    (int64 positions, in the query's order), with the checks of :func:`align_genes`."""
    check_unique_genes(ref_genes, "the reference")
    target = pd.Index(ref_genes).get_indexer(query_genes)  # unique reference genes: -1 = not one
    qi = np.flatnonzero(target >= 0)
    check_unique_genes(query_genes[qi], name, among=" among the reference genes")
    check_overlap(len(qi), len(ref_genes), len(query_genes), min_overlap, "reference")
    return qi.astype(np.int64), target[qi].astype(np.int64)


def align_genes(X: Any, query_genes: np.ndarray, ref_genes: np.ndarray, backend: Backend, *, min_overlap: float = 0.0,
                name: str = "the query") -> Any:
    """Re-index the columns of counts ``X`` from ``query_genes`` to ``ref_genes`` (missing = 0).

    Returns a CSR matrix of shape (n_cells, len(ref_genes)) where ``X`` lives: counts on the host
    stay there (the transforms upload them to ``backend`` one row block at a time, so GPU memory
    stays bounded), counts already on the GPU stay on it. Duplicate query gene names are an error
    (ambiguous) when those genes are reference genes (and always in the reference), and so is an
    overlap below ``min_overlap`` of the reference. ``name``: what the counts are called in
    those errors.
    """
    where = backend if is_gpu_array(X) else CPU
    if len(query_genes) == len(ref_genes) and np.array_equal(query_genes, ref_genes):
        check_unique_genes(ref_genes, "the reference")
        return as_csr(X, where)  # already aligned (e.g. both sides cut to their shared genes)
    qi, ri = matched_genes(query_genes, ref_genes, min_overlap=min_overlap, name=name)
    csr = as_csr(X, where)
    if not where.is_gpu:  # compiled, in threads (CPU twin of the product below)
        from ._cpu_kernels import csr_take_columns

        pos = np.full(csr.shape[1], -1, dtype=np.int64)
        pos[qi] = ri
        return csr_take_columns(csr, pos, len(ref_genes), cpu_workers())
    xp = where.xp
    P = where.sparse.csr_matrix(
        (xp.ones(len(qi), dtype=csr.dtype), (xp.asarray(qi), xp.asarray(ri))), shape=(csr.shape[1], len(ref_genes))
    )
    out = (csr @ P).tocsr()
    out.sum_duplicates()
    return out


def _matrix_and_genes(adata: Any, layer: str | None) -> tuple[Any, Any]:
    """(matrix, var_names or None) from an AnnData, a pandas DataFrame (genes named by its string
    columns, matched by name as an AnnData's) or a bare matrix."""
    if is_anndata(adata):
        return get_matrix(adata, layer), np.asarray(adata.var_names)
    if _is_raw(adata):  # adata.raw: its X and var_names (it has no layers)
        if layer is not None:
            raise TypeError("layer= does not apply to adata.raw (it has no layers); pass adata with layer=, or adata.raw alone.")
        return adata.X, np.asarray(adata.var_names)
    if layer is not None:
        raise TypeError("layer= needs an AnnData input.")
    if isinstance(adata, pd.DataFrame):
        genes = adata.columns
        # string columns of any dtype (object, pandas' "string" / "str", categorical) name genes
        named = len(genes) > 0 and all(isinstance(g, str) for g in genes)
        if all(isinstance(dt, pd.SparseDtype) for dt in adata.dtypes) and adata.shape[1]:
            X = adata.sparse.to_coo().tocsr()
        else:
            X = adata.to_numpy()
        return X, (np.asarray(genes).astype(str) if named else None)
    if isinstance(adata, (list, tuple)):  # nested lists of counts, as scikit-learn accepts them
        try:
            adata = np.asarray(adata)
        except ValueError as exc:
            raise ValueError(f"Could not read the nested {type(adata).__name__} as a cells x genes matrix: {exc}") from None
        if adata.dtype.kind not in "biuf":
            raise TypeError(f"Expected numbers in the nested lists of a cells x genes matrix, got dtype {adata.dtype}.")
    if not (scipy.sparse.issparse(adata) or hasattr(adata, "shape")):
        raise TypeError(f"Expected an AnnData or a cells x genes matrix, got {type(adata).__name__}.")
    if len(adata.shape) != 2:
        raise ValueError(f"Expected a 2-dimensional cells x genes matrix, got shape {tuple(adata.shape)}"
                         + (" (one cell: X[None, :])." if len(adata.shape) == 1 else "."))
    return adata, None


def _is_raw(obj: Any) -> bool:
    """Whether ``obj`` is an AnnData's ``raw`` (X and var_names, no obs)."""
    return type(obj).__name__ == "Raw" and hasattr(obj, "X") and hasattr(obj, "var_names")


def is_anndata(obj: Any) -> bool:
    """Whether ``obj`` is an AnnData (or quacks like one: obs, var and var_names)."""
    return hasattr(obj, "obs") and hasattr(obj, "var_names") and not isinstance(obj, pd.DataFrame)


@releases_memory
def embed(
    adata: Any,
    *,
    device: str = "auto",
    method: str = "sctop",
    n_components: int = 50,
    layer: str | None = None,
    key_added: str = "X_gpulin",
    batch_size: int | None = None,
    seed: int = 0,
    copy: bool = False,
    scale: bool = True,
    whiten: bool = False,
    solver: str = "auto",
    target_sum: float | None = 1e4,
    n_iter: int | None = None,
    n_oversamples: int | None = None,
    mask_var: str | Any | None = None,
) -> Any:
    """Embed cells: per-cell transform -> gene standardization -> PCA, without densifying.

    Parameters
    ----------
    adata : anndata.AnnData
        Raw counts in ``X`` (or ``layers[layer]``): NumPy, SciPy sparse, CuPy or cupyx sparse
        (as rapids-singlecell leaves it; then the work stays on the GPU). ``X`` is never modified.
    device : {"cpu", "cuda", "auto"}
        ``auto``: the GPU when the data is on it or CUDA is available, else the CPU.
    method : {"sctop", "lognorm"}
    n_components : int
    layer : str, optional
    key_added : str
        Writes ``obsm[key_added]`` (float32, n_cells x n_components, host),
        ``varm[key_added + "_loadings"]`` (float32, n_genes x n_components) and ``uns[key_added]``
        (method, parameters, device, variance ratios, seconds per stage).
    batch_size : int, optional
        Cells per row block (None: automatic, from free GPU memory on CUDA).
    seed : int
    copy : bool
        Work on and return a copy of ``adata`` (else write into it and return None).
    scale : bool
        Standardize genes to unit variance (True; pipeline.md) or only centre them.
    whiten : bool
        Divide scores by the square root of the explained variance.
    solver : {"auto", "randomized", "gram", "sklearn"}
        PCA solver (see :class:`LinearEmbedding`).
    target_sum : float or None
        ``lognorm`` library size (None: the median library size of the cells, as scanpy's
        ``normalize_total``; ``uns[key_added]["params"]["target_sum"]`` records the value used).
    n_iter, n_oversamples : int, optional
        Iterations and extra directions of the randomized PCA (:func:`gpulin.pca.pca`; defaults
        4, or 8 on small problems, and 10). More iterations capture more variance where the
        spectrum decays slowly.
    mask_var : str or array of bool, optional
        Genes the PCA runs on: a boolean ``var`` column name (e.g. ``"highly_variable"``) or a
        boolean array over the genes (scanpy's ``pca(mask_var=...)``). The transform still runs
        over all genes; the loadings of the other genes are zero. None (default): all genes.

    Returns
    -------
    anndata.AnnData or None
    """
    if not (hasattr(adata, "obsm") and hasattr(adata, "uns")):
        raise TypeError(f"embed() needs an AnnData, got {type(adata).__name__}; use LinearEmbedding for matrices.")
    if not (isinstance(key_added, str) and key_added):
        raise ValueError(f"key_added must be a non-empty str (the obsm / varm / uns key), got {key_added!r}.")
    check_bool("copy", copy)
    if copy:
        if getattr(adata, "isbacked", False):
            raise ValueError(
                "copy=True needs an in-memory AnnData; this one is backed on disk. Call embed(adata) "
                "to write the results into it (its obsm/varm/uns live in memory; the file is not "
                "changed), or load it with adata.to_memory() first."
            )
        adata = adata.copy()
    elif getattr(adata, "isbacked", False) and getattr(adata, "is_view", False):
        # checked before the work: anndata cannot turn a view of a backed object into one that
        # takes results ("To copy an AnnData object in backed mode, pass a filename")
        raise ValueError(
            "embed() writes its results into adata, and this is a view of a backed AnnData, which "
            "anndata cannot write into. Load the subset first (adata[...].to_memory()), or use "
            "gpulin.LinearEmbedding(...).fit_transform(view), which returns the embedding."
        )
    t0 = time.perf_counter()
    est = LinearEmbedding(
        method,
        n_components,
        scale=scale,
        whiten=whiten,
        solver=solver,
        target_sum=target_sum,
        device=device,
        batch_size=batch_size,
        seed=seed,
        n_iter=n_iter,
        n_oversamples=n_oversamples,
        mask_var=mask_var,
    )
    scores = est.fit_transform(adata, layer=layer)
    adata.obsm[key_added] = scores
    adata.varm[key_added + "_loadings"] = est.components_.T.astype(np.float32)
    adata.uns[key_added] = {
        "method": method,
        "params": {
            "n_components": int(est.n_components_),
            "layer": layer,
            "batch_size": batch_size,
            "seed": seed,
            "scale": scale,
            "whiten": whiten,
            "solver": est.solver_,
            "n_iter": int(est.n_iter_),
            "n_oversamples": int(est.n_oversamples_),
            "target_sum": est.target_sum_,
            "mask_var": mask_var if isinstance(mask_var, str) or mask_var is None else "array",
            "n_genes_used": int(est.mask_var_.sum()),
        },
        "device": est.backend_.name,
        "variance": est.explained_variance_,
        "variance_ratio": est.explained_variance_ratio_,
        "singular_values": est.singular_values_,
        "timings": {**est.timings_, "total": time.perf_counter() - t0},
    }
    return adata if copy else None
