"""gpulin's device branches end to end on the strict CuPy / cupyx stand-in (tests/strict_device.py).

The "cuda" backend here is ``get_backend("cpu")`` with the stand-in's ``xp``, ``sparse`` and
``special``: device arrays and sparse matrices refuse implicit conversion to NumPy/SciPy and host
operands, the CUDA kernels of :mod:`gpulin._gpu_kernels` are replaced by twins that compute the
same on the stand-in's arrays, and ``get_backend("cuda")`` (``backend_of``) returns the stand-in.
Every public entry point runs with host counts and with counts already "on the GPU"; results must
come back as NumPy where the API says so and equal the CPU run's.

Tolerances. The transforms take the same float32 keys and float64 normal scores on both sides
(the host through gpulin's compiled kernels, the device through the generic NumPy code): they
agree to about one float32 ulp (``rtol=1e-6``, ``atol=1e-7``; measured: bit-identical). Fits
multiply float32 matrices in different orders (compiled sparse kernels vs SciPy products and dense
tiles), which moves the scores by ~1e-6 relative; the PCA and the models carry that to at most
~2e-5 of the largest score on the leading components (measured 1.6e-5 with the randomized
solver), explained variances to ~3e-7 relative, probabilities to ~3e-6: hence ``RTOL=1e-5``
(variances, loadings' cosines), ``SCORES_ATOL=1e-4`` of the largest score and
``PROBA_ATOL=2e-5``. Only the well separated leading components are compared (the trailing
ones of a randomized solver rotate within near-equal eigenvalues). Labels and the metrics
computed from them must be identical.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import gpulin
import gpulin._backend as backend_module
import gpulin.implicit as implicit_module
import gpulin.transforms as transforms_module
import strict_device
from gpulin.datasets import synthetic_atlas
from gpulin.selection import f_classif, group_sums
from strict_device import DeviceArray, DeviceCSC, DeviceCSR

RTOL = 1e-5  # fitted quantities (variances, loadings): float32 products carried through the fits
SCORES_ATOL = 1e-4  # ... scores, relative to their largest magnitude
PROBA_ATOL = 2e-5
T_RTOL, T_ATOL = 1e-6, 1e-7  # transformed values (float32, of order 0.01-10): about one float32 ulp


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> gpulin._backend.Backend:
    """The stand-in "cuda" backend, with the CUDA kernels replaced by their stand-in twins (the
    modules that call them import them by name) and ``get_backend("cuda")`` (the CUDA probe)
    returning it. The other CuPy-only calls gpulin makes (``xp.cuda.runtime.memGetInfo``,
    ``xp.cuda.get_current_stream().synchronize``, ``xp.get_default_memory_pool()``) are fakes
    in the stand-in's namespace."""
    stand_in = dataclasses.replace(
        gpulin.get_backend("cpu"), name="cuda", xp=strict_device.xp, sparse=strict_device.sparse,
        special=strict_device.special,
    )
    monkeypatch.setattr(backend_module, "_cuda_probe", lambda: (stand_in, ""))
    monkeypatch.setattr(transforms_module, "csr_row_sums", strict_device.csr_row_sums)
    monkeypatch.setattr(implicit_module, "csr_rows_to_dense", strict_device.csr_rows_to_dense)
    return stand_in


@pytest.fixture(scope="module")
def atlas() -> Any:
    """600 cells x 400 genes (5.4% stored), 6 cell types."""
    return synthetic_atlas(n_cells=600, n_genes=400, n_types=6, n_conditions=1, n_species=1, seed=3, n_jobs=1)


class DeviceAnnData:
    """The parts of an AnnData gpulin reads and writes, around counts on the device (anndata
    accepts only real CuPy / cupyx arrays)."""

    def __init__(self, X: Any, obs: pd.DataFrame, var_names: Any) -> None:
        self.X = X
        self.obs = obs
        self.var_names = pd.Index(var_names)
        self.var = pd.DataFrame(index=self.var_names)
        self.obs_names = obs.index
        self.layers: dict[str, Any] = {}
        self.obsm: dict[str, Any] = {}
        self.varm: dict[str, Any] = {}
        self.uns: dict[str, Any] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape

    @property
    def n_vars(self) -> int:
        return self.X.shape[1]

    def __getitem__(self, rows: np.ndarray) -> "DeviceAnnData":
        """The cells of a boolean mask (the row selection happens on the device)."""
        take = np.flatnonzero(rows)
        return DeviceAnnData(self.X[strict_device.xp.asarray(take)], self.obs.iloc[take], self.var_names)


def on_device(X: sp.csr_matrix) -> DeviceCSR:
    """Host counts copied to the device (cupyx's ``csr_matrix(scipy_matrix)``)."""
    return strict_device.sparse.csr_matrix(X)


def counts_as(X: sp.csr_matrix, where: str) -> Any:
    return on_device(X) if where == "device" else X


def assert_device_implicit(S: Any) -> None:
    """An implicit matrix whose blocks and constants live on the stand-in device."""
    assert all(isinstance(b, DeviceCSR) for b in S.blocks)
    assert isinstance(S.c, DeviceArray)


# -- the stand-in itself ----------------------------------------------------------------------------
def test_the_sparse_stand_in_is_strict_like_cupyx():
    """Integer values are refused (cupyx holds bool/float/complex only), host operands are
    TypeErrors, ``.T`` is a CSC matrix on the same arrays, and results stay on the device."""
    rng = np.random.default_rng(0)
    A = sp.random(30, 20, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    D = on_device(A)
    assert isinstance(D.data, DeviceArray) and isinstance(D.indices, DeviceArray) and isinstance(D.indptr, DeviceArray)
    with pytest.raises(ValueError, match="Only bool, float32"):
        strict_device.sparse.csr_matrix(A.astype(np.int64))
    with pytest.raises(ValueError, match="Only bool, float32"):
        D.astype(np.int32)
    with pytest.raises(TypeError):
        strict_device.sparse.csr_matrix((A.data, A.indices, A.indptr), shape=A.shape)  # host arrays
    with pytest.raises(TypeError):
        D @ np.ones((20, 2), dtype=np.float32)
    with pytest.raises(TypeError):
        np.ones((3, 30), dtype=np.float32) @ D
    with pytest.raises(TypeError):
        D @ A.T
    with pytest.raises(TypeError):
        np.asarray(D)
    T = D.T
    assert isinstance(T, DeviceCSC) and T.shape == (20, 30) and T.data._a is D.data._a  # the same buffer
    V = strict_device.xp.asarray(rng.standard_normal((30, 3)))
    np.testing.assert_allclose((T @ V).get(), A.T @ V.get(), rtol=1e-6)
    W = strict_device.xp.asarray(rng.standard_normal((20, 3)).astype(np.float32))
    assert (D @ W).flags.f_contiguous  # as cuSPARSE's output
    np.testing.assert_allclose((D @ W).get(), A @ W.get(), rtol=1e-5)
    np.testing.assert_allclose((D @ D.T).get().toarray(), (A @ A.T).toarray(), rtol=1e-5)
    np.testing.assert_allclose(D.sum(axis=1).get(), np.asarray(A.sum(axis=1)), rtol=1e-6)
    np.testing.assert_array_equal(D[strict_device.xp.asarray(np.array([4, 1]))].get().toarray(), A[[4, 1]].toarray())
    np.testing.assert_array_equal(D[np.array([4, 1])].get().toarray(), A[[4, 1]].toarray())  # copied over, as cupyx
    np.testing.assert_allclose(D.multiply(D).get().toarray(), A.multiply(A).toarray())
    assert isinstance(D.get(), sp.csr_matrix) and D.get().dtype == np.float32


def test_the_dense_stand_in_behaves_like_cupy():
    """Reductions stay on the device (0-d arrays), ``empty`` memory is never zeros, and
    ``bincount`` refuses empty input, as CuPy's."""
    xp = strict_device.xp
    total = xp.asarray(np.arange(4.0)).sum()
    assert isinstance(total, DeviceArray) and total.ndim == 0 and float(total) == 6.0
    with pytest.raises(TypeError):
        np.ones(3) * total  # a host array beside a device scalar
    assert np.isnan(xp.empty(3).get()).all() and (xp.empty_like(xp.zeros(2, dtype=np.int32)).get() != 0).all()
    with pytest.raises(ValueError):
        xp.bincount(xp.zeros(0, dtype=np.int64), minlength=3)


# -- transforms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["host", "host-int", "device", "device-dense-int"])
@pytest.mark.parametrize("batch_size", [None, 97])
def test_transforms_on_the_device(dev, atlas, where, batch_size):
    """sctop and lognorm (fixed and median target sums) of host counts (copied block by block;
    integer counts as float32: cupyx holds no integers), of counts on the device, and of dense
    integer counts on the device (cast to float32) equal the CPU transforms."""
    X = atlas.X
    if where == "device-dense-int":
        Xd = strict_device.xp.asarray(X.toarray().astype(np.int32))  # a small dense test input only
    elif where == "host-int":
        Xd = X.astype(np.int32)
    else:
        Xd = counts_as(X, where)
    for method, kw in (("sctop", {}), ("lognorm", {"target_sum": 1e4}), ("lognorm", {"target_sum": None})):
        host = gpulin.transforms.transform_implicit(X, method, device="cpu", batch_size=batch_size, **kw)
        on_dev = gpulin.transforms.transform_implicit(Xd, method, device=dev, batch_size=batch_size, **kw)
        assert_device_implicit(on_dev)
        if batch_size is not None:
            assert len(on_dev.blocks) == -(-X.shape[0] // batch_size)
        np.testing.assert_allclose(on_dev.toarray(), host.toarray(), rtol=T_RTOL, atol=T_ATOL)
        np.testing.assert_allclose(on_dev.c.get(), host.c, rtol=1e-6, atol=1e-9)
    dense = gpulin.sctop_transform(Xd, device=dev, dense=True)
    assert isinstance(dense, np.ndarray)
    np.testing.assert_allclose(dense, gpulin.sctop_transform(X, device="cpu", dense=True), rtol=T_RTOL, atol=T_ATOL)
    dense = gpulin.lognorm_transform(Xd, device=dev, dense=True, target_sum=None)
    assert isinstance(dense, np.ndarray)
    np.testing.assert_allclose(dense, gpulin.lognorm_transform(X, device="cpu", dense=True, target_sum=None),
                               rtol=T_RTOL, atol=T_ATOL)


def test_implicit_matrix_methods_on_the_device(dev, atlas):
    """Column sums, ``dot`` and ``take_rows`` (repeats, any order) of a device implicit matrix."""
    X = atlas.X
    host = gpulin.sctop_transform(X, device="cpu", batch_size=150)
    on_dev = gpulin.sctop_transform(on_device(X), device=dev, batch_size=150)
    for a, b in zip(on_dev.column_sums(), host.column_sums()):
        np.testing.assert_allclose(a.get(), b, rtol=1e-6, atol=1e-6)
    V = np.random.default_rng(1).standard_normal((X.shape[1], 3))
    np.testing.assert_allclose(on_dev.dot(strict_device.xp.asarray(V)).get(), host.dot(V), rtol=T_RTOL, atol=T_ATOL)
    rows = np.random.default_rng(2).integers(0, X.shape[0], 250)
    taken = on_dev.take_rows(strict_device.xp.asarray(rows))
    assert_device_implicit(taken)
    np.testing.assert_allclose(taken.toarray(), host.take_rows(rows).toarray(), rtol=1e-6, atol=1e-7)


def _duplicated_unsorted(X: sp.csr_matrix) -> sp.csr_matrix:
    """``X`` stored with every value split over two entries and each row's genes in reverse order."""
    data, indices, indptr = [], [], [0]
    for r in range(X.shape[0]):
        a, b = X.indptr[r], X.indptr[r + 1]
        d, i = X.data[a:b][::-1], X.indices[a:b][::-1]
        data += [d / 2, d - d / 2]
        indices += [i, i]
        indptr.append(indptr[-1] + 2 * (b - a))
    M = sp.csr_matrix(X.shape, dtype=X.dtype)  # the arrays set as they are (no format checks)
    M.data, M.indices, M.indptr = np.concatenate(data), np.concatenate(indices), np.asarray(indptr, np.int32)
    return M


def test_transforms_of_awkward_device_counts(dev, atlas):
    """Device counts with empty cells (whole row blocks of them), explicit zeros, duplicate
    entries and unsorted indices (summed on a copy: the input is not modified), non-integer
    values (a warning) and negative values (an error)."""
    X = atlas.X[:200].tolil()
    X[40:80] = 0  # with batch_size=20, two blocks hold no value
    X = X.tocsr()
    X.data[::7] = 0.0  # explicit zeros
    messy = _duplicated_unsorted(X)
    assert not messy.has_canonical_format
    Xd = on_device(messy)
    before = Xd.get()
    for method in ("sctop", "lognorm"):
        with pytest.warns(gpulin.EmptyCellsWarning, match="40 of 200 cells"):
            host = gpulin.transforms.transform_implicit(X, method, device="cpu", batch_size=20)
        with pytest.warns(gpulin.EmptyCellsWarning, match="40 of 200 cells"):
            on_dev = gpulin.transforms.transform_implicit(Xd, method, device=dev, batch_size=20)
        np.testing.assert_allclose(on_dev.toarray(), host.toarray(), rtol=T_RTOL, atol=T_ATOL)
    after = Xd.get()
    np.testing.assert_array_equal(after.indices, before.indices)  # the input is not sorted in place
    np.testing.assert_array_equal(after.data, before.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpulin.EmptyCellsWarning)
        with pytest.warns(UserWarning, match="non-integer"):
            gpulin.sctop_transform(on_device(sp.csr_matrix(X * 0.5)), device=dev)
        with pytest.raises(ValueError, match="negative value"):
            gpulin.sctop_transform(on_device(sp.csr_matrix(X * -1.0)), device=dev)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_edge_cells_on_the_device(dev, dtype):
    """Cells with every gene counted (no zero genes), the same count in every gene (no ranking:
    the zero vector), one gene, ties, explicit zeros and tiny counts next to large ones (keys that
    round to 1 in float32), in float32 and float64 counts."""
    G = 12
    rows = [
        np.arange(1, G + 1),  # every gene counted
        np.full(G, 3),  # every gene the same: nothing to rank
        np.eye(G)[4] * 7,  # one gene
        np.r_[np.zeros(6), [2, 2, 2, 5, 5, 1]],  # ties
        np.r_[np.zeros(10), [1e-9, 1e6]],  # a value too small to be seen next to 1 in float32
        np.zeros(G),  # no counts
    ]
    X = sp.csr_matrix(np.array(rows, dtype=dtype))
    X.data[X.data == 2] = 0.0  # explicit zeros stored where the ties were
    X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=X.shape)  # (keep them stored)
    assert (X.data == 0).any()
    for method in ("sctop", "lognorm"):
        with warnings.catch_warnings(record=True) as host_warnings:
            warnings.simplefilter("always")
            host = gpulin.transforms.transform_implicit(X, method, device="cpu", check=False)
        with warnings.catch_warnings(record=True) as dev_warnings:
            warnings.simplefilter("always")
            on_dev = gpulin.transforms.transform_implicit(on_device(X), method, device=dev, check=False)
        assert [str(w.message) for w in dev_warnings] == [str(w.message) for w in host_warnings]
        np.testing.assert_allclose(on_dev.toarray(), host.toarray(), rtol=T_RTOL, atol=T_ATOL)


def test_as_csr_and_to_device(dev):
    """``as_csr`` / ``to_device`` onto the device: host CSR, CSC, dense and integer inputs become
    float (cupyx holds no integers) device CSR matrices; device matrices stay as they are."""
    from gpulin._backend import to_device
    from gpulin._validation import as_csr

    rng = np.random.default_rng(7)
    A = sp.random(20, 15, density=0.3, format="csr", dtype=np.float64, random_state=rng)
    A.data = np.ceil(A.data * 9)
    for X in (A, A.tocsc(), A.toarray(), A.astype(np.int32), A.toarray().astype(np.int64)):
        D = as_csr(X, dev)
        assert isinstance(D, DeviceCSR) and D.dtype.kind == "f"
        np.testing.assert_array_equal(D.get().toarray(), A.toarray())
    D = on_device(A)
    assert as_csr(D, dev) is D
    assert to_device(D, dev) is D
    assert isinstance(to_device(A.tocsc(), dev), DeviceCSC)
    assert isinstance(to_device(A.toarray(), dev), DeviceArray)


def test_running_out_of_device_memory(dev, atlas, monkeypatch):
    """CuPy's OutOfMemoryError inside a device step becomes a DeviceMemoryError naming the step
    and the device, after CuPy's cached blocks are freed."""

    def out_of_memory(*args: Any) -> None:
        raise strict_device.OutOfMemoryError("Out of memory allocating 1,024 bytes")

    monkeypatch.setattr(transforms_module, "csr_row_sums", out_of_memory)
    frees = strict_device._POOL.frees
    with pytest.raises(gpulin.DeviceMemoryError, match="Out of cuda memory transforming cells 0:"):
        gpulin.sctop_transform(on_device(atlas.X), device=dev)
    assert strict_device._POOL.frees > frees


# -- selection ------------------------------------------------------------------------------------------
def test_selection_on_the_device(dev, atlas):
    """The ANOVA F test and weighted group sums (a sparse indicator product on the device)."""
    X = atlas.X
    codes = pd.factorize(atlas.obs["cell_type"])[0]
    host = gpulin.sctop_transform(X, device="cpu", batch_size=200)
    on_dev = gpulin.sctop_transform(on_device(X), device=dev, batch_size=200)
    F_dev, p_dev = f_classif(on_dev, codes)
    F_host, p_host = f_classif(host, codes)
    assert isinstance(F_dev, np.ndarray) and isinstance(p_dev, np.ndarray)
    np.testing.assert_allclose(F_dev, F_host, rtol=1e-6)
    np.testing.assert_allclose(p_dev, p_host, rtol=1e-5, atol=1e-300)
    weights = np.random.default_rng(3).uniform(0.5, 2.0, X.shape[0])
    K = int(codes.max()) + 1
    sums = group_sums(on_device(X), codes, weights, K, dev)
    assert isinstance(sums, DeviceArray)
    np.testing.assert_allclose(sums.get(), group_sums(X, codes, weights, K, gpulin.get_backend("cpu")), rtol=1e-12)


# -- embedding ----------------------------------------------------------------------------------------------
def _compare_embeddings(scores_dev: np.ndarray, scores_host: np.ndarray, comps_dev: np.ndarray,
                        comps_host: np.ndarray, n_signal: int) -> None:
    """The leading (well separated) components agree, with the same signs (svd_flip)."""
    assert isinstance(scores_dev, np.ndarray) and isinstance(comps_dev, np.ndarray)
    k = n_signal
    cos = np.sum(comps_dev[:k] * comps_host[:k], axis=1) / (
        np.linalg.norm(comps_dev[:k], axis=1) * np.linalg.norm(comps_host[:k], axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=RTOL)
    atol = SCORES_ATOL * np.abs(scores_host[:, :k]).max()
    np.testing.assert_allclose(scores_dev[:, :k], scores_host[:, :k], atol=atol)


@pytest.mark.parametrize("method", ["sctop", "lognorm"])
@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("products", ["dense-tiles", "sparse"])
def test_embed_on_the_device(dev, atlas, monkeypatch, method, where, products):
    """``gpulin.embed`` with counts on the host (an AnnData) or on the device, its products as
    dense row tiles (several per block: little free memory) or as sparse products (cupyx's
    ``csr @ dense`` and ``csr.T @ dense``)."""
    monkeypatch.setattr(strict_device, "FREE_BYTES", 16 * 4 * atlas.n_vars * 128)  # tiles of 128 cells
    if products == "sparse":
        monkeypatch.setattr(implicit_module, "TILE_DENSITY", 1.0)
    # target_sum=None with sctop: LinearEmbedding read its unset target_sum_ (fixed in embed.py)
    kw = dict(method=method, n_components=8, solver="randomized", seed=0, target_sum=None)
    host = gpulin.embed(atlas, device="cpu", copy=True, **kw)
    if where == "device":
        target = DeviceAnnData(on_device(atlas.X), atlas.obs, atlas.var_names)
        gpulin.embed(target, device=dev, **kw)
    else:
        target = gpulin.embed(atlas, device=dev, copy=True, **kw)
    assert target.uns["X_gpulin"]["device"] == "cuda"
    np.testing.assert_allclose(target.uns["X_gpulin"]["variance_ratio"][:5], host.uns["X_gpulin"]["variance_ratio"][:5],
                               rtol=RTOL)
    assert target.uns["X_gpulin"]["params"]["target_sum"] == pytest.approx(host.uns["X_gpulin"]["params"]["target_sum"])
    _compare_embeddings(target.obsm["X_gpulin"], host.obsm["X_gpulin"], target.varm["X_gpulin_loadings"].T,
                        host.varm["X_gpulin_loadings"].T, n_signal=5)


@pytest.mark.parametrize("solver", ["gram", "sklearn"])
def test_linear_embedding_fit_transform_on_the_device(dev, atlas, solver):
    """``LinearEmbedding`` fitted on device counts (a gene mask: the selection product), then
    transforming host and device queries whose genes are in another order (aligned by name: a
    column-selection product on the device)."""
    n_ref = 400
    ref, query = atlas[:n_ref], atlas[n_ref:]
    mask = np.zeros(atlas.n_vars, dtype=bool)
    mask[::2] = True
    kw = dict(method="sctop", n_components=6, solver=solver, whiten=True, mask_var=mask)
    host = gpulin.LinearEmbedding(device="cpu", **kw)
    Z_host = host.fit_transform(ref)
    est = gpulin.LinearEmbedding(device=dev, **kw)
    Z = est.fit_transform(DeviceAnnData(on_device(ref.X), ref.obs, ref.var_names))
    assert isinstance(est.components_, np.ndarray) and isinstance(est.mean_, np.ndarray)
    np.testing.assert_allclose(est.mean_, host.mean_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(est.explained_variance_[:5], host.explained_variance_[:5], rtol=RTOL)
    _compare_embeddings(Z, Z_host, est.components_, host.components_, n_signal=5)
    order = np.random.default_rng(4).permutation(atlas.n_vars)
    shuffled = query[:, order]
    Q_host = host.transform(query)
    for q in (shuffled, DeviceAnnData(on_device(shuffled.X), shuffled.obs, shuffled.var_names)):
        Q = est.transform(q)
        assert isinstance(Q, np.ndarray) and Q.dtype == np.float32
        np.testing.assert_allclose(Q[:, :5], Q_host[:, :5], atol=SCORES_ATOL * np.abs(Q_host[:, :5]).max())


@pytest.mark.parametrize("solver, sketch_gram", [("gram", None), ("sklearn", True), ("sklearn", False),
                                                 ("randomized", None)])
def test_embedding_fewer_cells_than_genes_on_the_device(dev, atlas, monkeypatch, solver, sketch_gram):
    """150 cells x 400 genes: the cells' Gram matrix (pairs of dense tiles), scikit-learn's
    rounds on the cells' side (from its Gram matrix, or by products), and block Krylov."""
    import gpulin.pca as pca_module

    if sketch_gram is not None:
        monkeypatch.setattr(pca_module, "_sketch_gram_is_cheaper", lambda *a: sketch_gram)
    monkeypatch.setattr(strict_device, "FREE_BYTES", 16 * 4 * atlas.n_vars * 64)  # tiles of 64 cells
    X = atlas.X[:150]
    kw = dict(method="sctop", n_components=6, solver=solver, scale=False)
    host = gpulin.LinearEmbedding(device="cpu", **kw)
    Z_host = host.fit_transform(X)
    est = gpulin.LinearEmbedding(device=dev, **kw)
    Z = est.fit_transform(on_device(X))
    np.testing.assert_allclose(est.explained_variance_[:4], host.explained_variance_[:4], rtol=RTOL)
    _compare_embeddings(Z, Z_host, est.components_, host.components_, n_signal=4)


# -- classifiers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, params", [
    ("souza-mehta-2026", dict(n_genes=150, n_components=12)),  # ANOVA, sklearn PCA, logistic
    ("lognorm-ridge", dict(n_components=12)),  # lognorm, auto PCA, ridge
])
@pytest.mark.parametrize("where", ["host", "device"])
def test_cell_type_classifier_on_the_device(dev, atlas, preset, params, where):
    """fit / predict / predict_proba / novelty_score, and the decision values of the folded
    weights (one sparse product) against the model's on the embedded cells."""
    y = atlas.obs["cell_type"].to_numpy().astype(str)
    te = np.arange(0, atlas.n_obs, 3)  # every third cell is a query cell
    tr = np.setdiff1d(np.arange(atlas.n_obs), te)
    X = atlas.X
    host = gpulin.CellTypeClassifier(preset, device="cpu", **params).fit(X[tr], y[tr])
    clf = gpulin.CellTypeClassifier(preset, device=dev, **params).fit(counts_as(X[tr], where), y[tr])
    assert isinstance(clf.folded_coef_, np.ndarray) and isinstance(clf.scaling_.mean, np.ndarray)
    Xq = counts_as(X[te], where)
    proba = clf.predict_proba(Xq)
    assert isinstance(proba, np.ndarray)
    np.testing.assert_allclose(proba, host.predict_proba(X[te]), atol=PROBA_ATOL)
    np.testing.assert_array_equal(clf.predict(Xq), host.predict(X[te]))
    np.testing.assert_allclose(clf.novelty_score(Xq), host.novelty_score(X[te]), atol=PROBA_ATOL)
    # the folded product (sparse, on the device) equals the model on the embedded cells
    S = clf._transform(Xq)
    z = clf._decision_transformed(S)
    assert isinstance(z, DeviceArray)
    Z = clf.embed_transformed(S)
    assert isinstance(Z, DeviceArray)
    expected = Z.get().astype(np.float64) @ np.asarray(clf.model_.coef_).T + clf.model_.intercept_
    np.testing.assert_allclose(z.get(), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("model", ["logistic", "ridge"])
def test_two_class_classifier_on_the_device(dev, atlas, model):
    """Two classes: one decision column (the logistic link or the ridge softmax of +-z)."""
    y = atlas.obs["cell_type"].to_numpy().astype(str)
    keep = np.flatnonzero(np.isin(y, np.unique(y)[:2]))
    X, y = atlas.X[keep], y[keep]
    kw = dict(model=model, n_genes=100, n_components=5, solver="gram")
    host = gpulin.CellTypeClassifier(device="cpu", **kw).fit(X, y)
    clf = gpulin.CellTypeClassifier(device=dev, **kw).fit(on_device(X), y)
    assert clf.folded_coef_.shape[1] == 1
    np.testing.assert_allclose(clf.predict_proba(on_device(X)), host.predict_proba(X), atol=PROBA_ATOL)
    np.testing.assert_array_equal(clf.predict(X), host.predict(X))


def test_device_fitted_classifier_pickles_to_the_host(dev, atlas, monkeypatch):
    """A classifier fitted on the device keeps host arrays only: pickled and loaded where no GPU is
    usable, it predicts on the CPU (with a warning) as the device did."""
    import pickle

    y = atlas.obs["cell_type"].to_numpy().astype(str)
    clf = gpulin.CellTypeClassifier(device=dev, n_genes=150, n_components=8).fit(on_device(atlas.X), y)
    held = [k for k, v in vars(clf).items() if isinstance(v, (DeviceArray, DeviceCSR))]
    assert not held, f"device arrays kept by the fitted classifier: {held}"
    proba = clf.predict_proba(on_device(atlas.X))
    blob = pickle.dumps(clf)
    monkeypatch.setattr(backend_module, "_cuda_probe", lambda: (None, "no GPU here"))
    with pytest.warns(RuntimeWarning, match="fitted on a CUDA GPU"):
        loaded = pickle.loads(blob)
    assert loaded.backend_.name == "cpu"
    np.testing.assert_allclose(gpulin.CellTypeClassifier.predict_proba_transformed(
        loaded, gpulin.sctop_transform(atlas.X, device="cpu")), proba, atol=PROBA_ATOL)


def test_device_counts_computed_on_the_host(dev, atlas):
    """Counts on the device with ``device="cpu"`` are copied to the host (the same numbers as host
    counts), and ``device="auto"`` computes where they live."""
    Xd = on_device(atlas.X)
    S = gpulin.sctop_transform(Xd, device="cpu")
    assert isinstance(S.c, np.ndarray) and isinstance(S.blocks[0], sp.csr_matrix)
    np.testing.assert_array_equal(S.toarray(), gpulin.sctop_transform(atlas.X, device="cpu").toarray())
    host = gpulin.LinearEmbedding("lognorm", 5, target_sum=None, device="cpu")
    np.testing.assert_array_equal(host.fit_transform(Xd), host.fit_transform(atlas.X))
    auto = gpulin.LinearEmbedding("lognorm", 5, target_sum=None, device="auto").fit(Xd)
    assert auto.backend_ is dev
    y = atlas.obs["cell_type"].to_numpy().astype(str)
    proj = gpulin.ScTOPProjection(device="cpu").fit(Xd, y)
    np.testing.assert_array_equal(proj.basis_.to_numpy(), gpulin.ScTOPProjection(device="cpu").fit(atlas.X, y).basis_)


@pytest.mark.parametrize("where", ["host", "device"])
def test_sctop_projection_on_the_device(dev, atlas, where):
    """The basis (type profiles summed where the counts live) and the order parameters of a query
    given as a matrix and as an AnnData with its genes in another order."""
    y = atlas.obs["cell_type"].to_numpy().astype(str)
    ref, query = atlas[:400], atlas[400:]
    host = gpulin.ScTOPProjection(device="cpu").fit(ref.X, y[:400])
    proj = gpulin.ScTOPProjection(device=dev).fit(counts_as(ref.X, where), y[:400])
    np.testing.assert_allclose(proj.basis_.to_numpy(), host.basis_.to_numpy(), rtol=T_RTOL, atol=T_ATOL)
    a_host = host.order_parameters(query.X)
    a = proj.order_parameters(counts_as(query.X, where))
    assert isinstance(a, pd.DataFrame)
    np.testing.assert_allclose(a.to_numpy(), a_host.to_numpy(), rtol=T_RTOL, atol=T_ATOL)
    np.testing.assert_array_equal(proj.predict(counts_as(query.X, where)), host.predict(query.X))
    # by name: a basis fitted on an AnnData, a query AnnData with its genes shuffled
    named_host = gpulin.ScTOPProjection(device="cpu").fit(ref, y[:400])
    named = gpulin.ScTOPProjection(device=dev).fit(ref, y[:400])
    order = np.random.default_rng(5).permutation(atlas.n_vars)[:300]
    shuffled = query[:, order]
    q = DeviceAnnData(on_device(shuffled.X), shuffled.obs, shuffled.var_names) if where == "device" else shuffled
    np.testing.assert_allclose(named.order_parameters(q).to_numpy(), named_host.order_parameters(shuffled).to_numpy(),
                               rtol=T_RTOL, atol=T_ATOL)
    np.testing.assert_allclose(named.novelty_score(q), named_host.novelty_score(shuffled), rtol=T_RTOL, atol=T_ATOL)
    # the residual share: the query's squared norms summed on the device
    np.testing.assert_allclose(named.novelty_score(q, score="residual"),
                               named_host.novelty_score(shuffled, score="residual"), rtol=1e-6, atol=1e-9)


# -- evaluation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("approach, params", [
    ("pipeline", dict(n_components=10)),  # 300 cells x 400 genes: the loadings are deferred (loadings=False)
    ("pipeline", dict(n_components=10, n_genes=200, preset="cross-species")),
    ("projection", {}),
])
@pytest.mark.parametrize("reference_on_device", [False, True])
def test_evaluate_transfer_with_the_query_on_the_device(dev, atlas, approach, params, reference_on_device):
    """``evaluate(..., "transfer")`` with the query's counts on the device (genes in another
    order, aligned there; unlabelled cells left out by a row selection there), and the
    reference's too (its genes in another order and 50 of them missing from the query: the
    projection's library sizes and profiles over the shared columns on the device), gives the
    CPU run's metrics."""
    ref = atlas[:300]
    ref = ref[:, np.random.default_rng(7).permutation(atlas.n_vars)].copy()
    query = atlas[300:]
    order = np.random.default_rng(6).permutation(atlas.n_vars)[:350]
    query = query[:, order].copy()
    query.obs["cell_type"] = query.obs["cell_type"].astype(object)
    query.obs.iloc[::10, query.obs.columns.get_loc("cell_type")] = None  # unlabelled cells
    on_dev = DeviceAnnData(on_device(query.X), query.obs, query.var_names)
    ref_dev = DeviceAnnData(on_device(ref.X), ref.obs, ref.var_names) if reference_on_device else ref
    kw = dict(approach=approach, min_cells=5, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (small classes: sklearn's metrics warn)
        host = gpulin.evaluate(ref, "cell_type", "transfer", query=query, device="cpu", **kw)
        table = gpulin.evaluate(ref_dev, "cell_type", "transfer", query=on_dev, device=dev, **kw)
    assert host["n_unlabelled"].item() == 30
    metrics = ["accuracy", "macro_f1", "balanced_accuracy", "n_test", "n_unlabelled", "n_shared_genes"]
    pd.testing.assert_frame_equal(table[metrics], host[metrics])
    np.testing.assert_allclose(table["macro_auroc"], host["macro_auroc"], atol=1e-6)


@pytest.mark.parametrize("protocol, approach",
                         [("split5", "pipeline"), ("split5", "projection"), ("novel", "pipeline")])
def test_evaluate_protocols_with_the_counts_on_the_device(dev, atlas, protocol, approach):
    """The split protocols with the counts on the device: one transform, the rows of every split
    taken there (``take_rows``), or the projection fitted on each split's device counts."""
    data = atlas[:300]
    on_dev = DeviceAnnData(on_device(data.X), data.obs, data.var_names)
    kw = dict(approach=approach, min_cells=15, n_components=8, n_genes=150, solver="gram", n_splits=2)
    if protocol == "novel":
        kw.pop("n_splits")
    if approach == "projection":  # classifier parameters are the pipeline's
        for key in ("n_components", "n_genes", "solver"):
            kw.pop(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = gpulin.evaluate(data, "cell_type", protocol, device="cpu", n_jobs=1, **kw)
        table = gpulin.evaluate(on_dev, "cell_type", protocol, device=dev, **kw)
    numbers = [c for c in host.columns if c not in ("seconds", "transform_seconds")
               and pd.api.types.is_numeric_dtype(host[c])]
    pd.testing.assert_frame_equal(table[numbers], host[numbers], atol=1e-6)
