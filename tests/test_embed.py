"""gpulin.embed and LinearEmbedding: outputs, alignment, input safety, memory, bad input, devices."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import gpulin
from gpulin import GPUUnavailableError, LinearEmbedding

from conftest import make_counts


def make_adata(n=300, g=400, seed=0) -> ad.AnnData:
    X = make_counts(n=n, g=g, seed=seed)
    return ad.AnnData(
        X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=[f"g{j}" for j in range(g)])
    )


def test_embed_writes_results_and_leaves_x_untouched():
    a = make_adata()
    before = a.X.copy()
    assert gpulin.embed(a, device="cpu", n_components=12) is None
    emb = a.obsm["X_gpulin"]
    assert emb.shape == (300, 12) and emb.dtype == np.float32 and isinstance(emb, np.ndarray)
    assert a.varm["X_gpulin_loadings"].shape == (400, 12)
    info = a.uns["X_gpulin"]
    assert info["method"] == "sctop" and info["device"] == "cpu"
    assert info["params"]["n_components"] == 12
    assert set(info["timings"]) >= {"transform", "standardize", "pca", "total"}
    ratio = info["variance_ratio"]
    assert ratio.shape == (12,) and np.all(ratio > 0) and ratio.sum() < 1 and np.all(np.diff(ratio[:5]) <= 1e-9)
    assert (a.X != before).nnz == 0 and a.X.dtype == before.dtype


def test_embed_copy_layer_and_key():
    a = make_adata()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(a.shape, dtype=np.float32)  # X holds something else
    b = gpulin.embed(a, device="cpu", layer="counts", n_components=5, key_added="X_s", copy=True, method="lognorm")
    assert "X_s" in b.obsm and "X_s" not in a.obsm
    assert b.uns["X_s"]["method"] == "lognorm"


def test_embed_matches_materialized_pipeline():
    """embed == dense transform -> StandardScaler -> exact PCA (up to sign, leading components)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    a = make_adata(n=400, g=300, seed=2)
    gpulin.embed(a, device="cpu", n_components=4, solver="gram")
    dense = gpulin.sctop_transform(a.X, dense=True).astype(np.float64)
    ref = PCA(4, svd_solver="full").fit_transform(StandardScaler().fit_transform(dense))
    ours = a.obsm["X_gpulin"]
    corr = np.abs(np.sum(ours * ref, axis=0)) / (np.linalg.norm(ours, axis=0) * np.linalg.norm(ref, axis=0))
    assert corr.min() > 0.9999


def test_linear_embedding_aligns_query_genes_by_name():
    a = make_adata(n=400, g=300, seed=3)
    ref, query = a[:300].copy(), a[300:].copy()
    est = LinearEmbedding(n_components=8, device="cpu").fit(ref)
    base = est.transform(query)
    # Permuted genes give the same embedding.
    perm = np.random.default_rng(0).permutation(query.n_vars)
    np.testing.assert_allclose(est.transform(query[:, perm].copy()), base, rtol=1e-5, atol=1e-5)
    # Extra genes are ignored; missing genes count as zero.
    extra = ad.concat([query, ad.AnnData(sp.csr_matrix(np.ones((100, 5), np.float32)),
                                          var=pd.DataFrame(index=[f"x{i}" for i in range(5)]),
                                          obs=query.obs)], axis=1)
    np.testing.assert_allclose(est.transform(extra), base, rtol=1e-5, atol=1e-5)
    missing = query[:, 10:].copy()
    zeroed = query.copy()
    lil = query.X.tolil()
    lil[:, :10] = 0
    zeroed.X = sp.csr_matrix(lil)
    np.testing.assert_allclose(est.transform(missing), est.transform(zeroed), rtol=1e-5, atol=1e-5)
    # Transform of the training cells equals the fit scores.
    np.testing.assert_allclose(est.transform(ref), est.fit_transform(ref), rtol=1e-4, atol=1e-4)


def test_too_little_gene_overlap_names_the_numbers():
    a = make_adata(n=100, g=200)
    est = LinearEmbedding(n_components=3, device="cpu").fit(a)
    b = a[:, :50].copy()
    with pytest.raises(ValueError, match=r"Only 50 of the 200 reference genes \(25.0%\)"):
        est.transform(b)
    with pytest.raises(ValueError, match="The query has 50 genes but the reference has 200"):
        est.transform(b.X)


def test_bad_input_errors():
    a = make_adata(n=50, g=40)
    with pytest.raises(ValueError, match=r"n_components=41 is out of range.*min\(50, 40\) = 40"):
        gpulin.embed(a, device="cpu", n_components=41)
    with pytest.raises(ValueError, match="Unknown method"):
        gpulin.embed(a, device="cpu", method="pearson")
    with pytest.raises(ValueError, match="Unknown device"):
        gpulin.embed(a, device="gpu0")
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        gpulin.embed(a, device="cpu", layer="counts")
    with pytest.raises(TypeError, match="needs an AnnData"):
        gpulin.embed(a.X, device="cpu")
    bad = a.copy()
    bad.X.data[0] = -3
    with pytest.raises(ValueError, match="negative"):
        gpulin.embed(bad, device="cpu", n_components=5)
    with pytest.raises(ValueError, match="batch_size"):
        gpulin.embed(a, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match=r"shape \(0, 40\): it needs at least one cell"):
        gpulin.embed(a[:0].copy(), device="cpu")
    with pytest.raises(ValueError, match=r"shape \(50, 0\): it needs at least one cell and one gene"):
        gpulin.LinearEmbedding(n_components=5, device="cpu").fit(a[:, :0].copy())
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LinearEmbedding().transform(a)
    # switches and keys checked before any work, and nothing written on failure
    for kw, match in ((dict(scale="no"), "scale must be True or False"), (dict(whiten=None), "whiten must be"),
                      (dict(copy="yes"), "copy must be"), (dict(key_added=None), "key_added must be a non-empty str"),
                      (dict(key_added=""), "key_added")):
        with pytest.raises(ValueError, match=match):
            gpulin.embed(a, device="cpu", n_components=5, **kw)
    assert len(a.obsm) == 0 and len(a.uns) == 0
    complex_counts = a.copy()
    complex_counts.X = complex_counts.X.astype(np.complex64)
    with pytest.raises(TypeError, match="real numbers"):
        gpulin.embed(complex_counts, device="cpu", n_components=5)


def test_adata_raw_is_read_as_counts_and_genes_and_sctop_ignores_target_sum():
    a = make_adata(n=60, g=50)
    b = a.copy()
    b.raw = a.copy()
    b = b[:, :30].copy()  # raw keeps all 50 genes
    est = LinearEmbedding(n_components=5, device="cpu").fit(b.raw)
    assert list(est.var_names_) == list(a.var_names)
    np.testing.assert_allclose(est.transform(b.raw), LinearEmbedding(n_components=5, device="cpu").fit_transform(a),
                               atol=1e-5)
    with pytest.raises(TypeError, match="adata.raw"):
        LinearEmbedding(n_components=5, device="cpu").fit(b.raw, layer="counts")
    gpulin.embed(a, device="cpu", n_components=5, target_sum=7.0)  # not a parameter of sctop: not recorded
    assert a.uns["X_gpulin"]["params"]["target_sum"] is None


def test_cuda_without_gpu_raises_a_clear_error():
    if gpulin.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(GPUUnavailableError, match="device='cuda' was requested but"):
        gpulin.embed(make_adata(50, 40), device="cuda", n_components=2)
    assert gpulin.get_backend("auto").name == "cpu"


def test_deterministic_for_a_seed():
    a, b = make_adata(seed=1), make_adata(seed=1)
    gpulin.embed(a, device="cpu", n_components=10, solver="randomized", seed=7)
    gpulin.embed(b, device="cpu", n_components=10, solver="randomized", seed=7)
    np.testing.assert_array_equal(a.obsm["X_gpulin"], b.obsm["X_gpulin"])


def test_no_densification_peak_memory():
    """20000 x 20000 sparse input: peak traced memory of embed stays under 3x the CSR size."""
    rng = np.random.default_rng(0)
    n = g = 20_000
    nnz_per_row = 600  # 3% density, 1.2e7 stored values
    indices = np.sort(rng.integers(0, g, size=(n, nnz_per_row)), axis=1)
    X = sp.csr_matrix(
        (rng.poisson(2.0, size=n * nnz_per_row).astype(np.float32) + 1, indices.ravel().astype(np.int32),
         np.arange(0, n * nnz_per_row + 1, nnz_per_row, dtype=np.int32)),
        shape=(n, g),
    )
    X.sum_duplicates()
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    a = ad.AnnData(X)
    tracemalloc.start()
    try:
        gpulin.embed(a, device="cpu", n_components=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert a.obsm["X_gpulin"].shape == (n, 10)
    assert peak < 3 * csr_bytes, f"peak {peak / 2**20:.0f} MiB vs CSR {csr_bytes / 2**20:.0f} MiB"


@pytest.mark.gpu
def test_cpu_and_gpu_agree_and_gpu_input_stays_on_gpu():
    import cupy as cp
    import cupyx.scipy.sparse as cusp

    a = make_adata(n=500, g=700, seed=4)
    cpu = gpulin.sctop_transform(a.X, dense=True)
    gpu = gpulin.sctop_transform(a.X, device="cuda", dense=True)
    np.testing.assert_allclose(gpu, cpu, atol=1e-6)
    np.testing.assert_allclose(
        gpulin.lognorm_transform(a.X, device="cuda", dense=True), gpulin.lognorm_transform(a.X, dense=True), atol=1e-5
    )
    b = a.copy()
    gpulin.embed(a, device="cpu", n_components=6, solver="randomized")
    b.X = cusp.csr_matrix(b.X)  # as rapids-singlecell leaves it
    gpulin.embed(b, device="auto", n_components=6, solver="randomized")
    assert b.uns["X_gpulin"]["device"] == "cuda" and isinstance(b.X, cusp.csr_matrix)
    x, y = a.obsm["X_gpulin"], b.obsm["X_gpulin"]
    np.testing.assert_allclose(np.abs(np.sum(x * y, 0)) / np.sum(x * x, 0), 1.0, atol=1e-3)
    assert isinstance(y, np.ndarray) and cp.get_default_memory_pool() is not None


@pytest.mark.gpu
def test_gpu_takes_integer_counts_and_empty_blocks():
    """cupyx sparse holds no integer values: int counts are cast on the way; all-empty blocks work."""
    X = make_adata(n=300, g=400, seed=5).X.tocsr()
    Xi = X.astype(np.int64)
    Xi[:40] = 0  # the first block (batch_size=40) has no stored values
    Xi.eliminate_zeros()
    for method in ("sctop", "lognorm"):
        with pytest.warns(UserWarning, match="no counts"):
            gpu = gpulin.transforms.transform_implicit(Xi, method, device="cuda", batch_size=40).toarray()
        with pytest.warns(UserWarning, match="no counts"):
            cpu = gpulin.transforms.transform_implicit(Xi, method, device="cpu", batch_size=40).toarray()
        np.testing.assert_allclose(gpu, cpu, atol=1e-6)


def test_embed_passes_pca_iterations_and_oversamples():
    from gpulin.datasets import synthetic_atlas

    adata = synthetic_atlas(n_cells=600, n_genes=400, seed=1)
    gpulin.embed(adata, device="cpu", n_components=8, solver="randomized", n_iter=2, n_oversamples=5)
    params = adata.uns["X_gpulin"]["params"]
    assert params["n_iter"] == 2 and params["n_oversamples"] == 5
    gpulin.embed(adata, device="cpu", n_components=8, solver="randomized")
    params = adata.uns["X_gpulin"]["params"]
    assert params["n_iter"] == 8 and params["n_oversamples"] == 10  # a small problem: 8 iterations


def test_default_krylov_iterations_follow_the_cost_of_a_product():
    from gpulin.pca import default_krylov_iter

    class Op:  # only what the rule reads
        def __init__(self, n, G, nnz):
            self.shape = (n, G)
            self.S = type("S", (), {"nnz": nnz, "n_genes": G})()

    assert default_krylov_iter(Op(2_700, 13_714, 2_300_000), 60) == 8  # PBMC 3k, 50 components
    assert default_krylov_iter(Op(20_000, 20_000, 21_800_000), 60) == 4  # the 20k benchmark atlas
    assert default_krylov_iter(Op(2_700, 13_714, 2_300_000), 230) == 4  # 220 components


@pytest.mark.parametrize("storage", ["csr", "csc", "dense"])
def test_backed_anndata_is_read_into_memory(tmp_path, storage, monkeypatch):
    """An AnnData opened with backed="r" embeds like the in-memory one (sparse datasets read
    whole, dense ones in row blocks into CSR); copy=True explains what to do instead."""
    import importlib

    embed_module = importlib.import_module("gpulin.embed")  # the module (gpulin.embed is the function)
    monkeypatch.setattr(embed_module, "BACKED_BLOCK_BYTES", 40 * 60 * 4)  # several row blocks
    a = make_adata(n=150, g=60)
    expected = gpulin.embed(a, device="cpu", n_components=5, copy=True).obsm["X_gpulin"]
    disk = a.copy()
    disk.X = {"csr": disk.X.tocsr(), "csc": disk.X.tocsc(), "dense": disk.X.toarray()}[storage]
    disk.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(ValueError, match="backed on disk"):
        gpulin.embed(backed, device="cpu", n_components=5, copy=True)
    with pytest.raises(ValueError, match="view of a backed AnnData"):  # before any work
        gpulin.embed(backed[:30], device="cpu", n_components=5)
    np.testing.assert_array_equal(
        gpulin.LinearEmbedding(n_components=5, device="cpu").fit_transform(backed[:30]),
        gpulin.LinearEmbedding(n_components=5, device="cpu").fit_transform(a[:30]))
    gpulin.embed(backed, device="cpu", n_components=5)
    np.testing.assert_array_equal(backed.obsm["X_gpulin"], expected)
    backed.file.close()


def test_gene_alignment_keeps_host_counts_on_the_host():
    """align_genes re-indexes host counts on the host even for a CUDA backend: the transforms then
    upload them one row block at a time (the whole matrix never sits on the GPU at once)."""
    import importlib

    import scipy.special

    from gpulin._backend import Backend

    embed_module = importlib.import_module("gpulin.embed")
    X = make_counts(n=20, g=6, seed=1)
    query = np.array([f"g{j}" for j in range(6)])
    ref = np.array(["g5", "g0", "new", "g3"])
    cuda_like = Backend("cuda", np, sp, scipy.special)  # never touched: X lives on the host
    out = embed_module.align_genes(X, query, ref, cuda_like)
    assert sp.issparse(out) and out.shape == (20, 4)
    dense = X.toarray()
    np.testing.assert_array_equal(out.toarray(), np.stack([dense[:, 5], dense[:, 0], np.zeros(20), dense[:, 3]], axis=1))
    # genes already in the reference's order: the counts as they are (no product), still checked
    same = embed_module.align_genes(X, query, query.copy(), cuda_like)
    np.testing.assert_array_equal(same.toarray(), dense)
    with pytest.raises(ValueError, match="duplicated"):
        embed_module.align_genes(X, np.array(["g0"] * 6), np.array(["g0"] * 6), cuda_like)


def test_mask_var_runs_the_pca_on_a_gene_subset():
    """mask_var (a var column or a boolean array): the transform over all genes, the PCA over the
    masked genes only (equal to a dense PCA of those standardized columns), zero loadings
    elsewhere, and queries projected the same way."""
    a = make_adata(n=300, g=80, seed=3)
    rng = np.random.default_rng(0)
    a.var["highly_variable"] = rng.random(80) < 0.5
    mask = a.var["highly_variable"].to_numpy()
    b = gpulin.embed(a, device="cpu", n_components=6, solver="gram", mask_var="highly_variable", copy=True)
    loadings = b.varm["X_gpulin_loadings"]
    assert np.all(loadings[~mask] == 0) and b.uns["X_gpulin"]["params"]["n_genes_used"] == mask.sum()
    dense = gpulin.sctop_transform(a.X, dense=True).astype(np.float64)[:, mask]
    dense = (dense - dense.mean(0)) / np.where(dense.std(0) > 0, dense.std(0), 1.0)
    sv = np.linalg.svd(dense, compute_uv=False)[:6]
    np.testing.assert_allclose(b.uns["X_gpulin"]["singular_values"], sv, rtol=1e-4)
    same = gpulin.embed(a, device="cpu", n_components=6, solver="gram", mask_var=mask, copy=True)
    np.testing.assert_array_equal(same.obsm["X_gpulin"], b.obsm["X_gpulin"])
    est = LinearEmbedding(n_components=6, solver="gram", mask_var="highly_variable", device="cpu").fit(a)
    np.testing.assert_allclose(est.transform(a), b.obsm["X_gpulin"], atol=1e-3 * np.abs(b.obsm["X_gpulin"]).max())
    with pytest.raises(KeyError, match="not a column of adata.var"):
        gpulin.embed(a, device="cpu", mask_var="hvg", copy=True)
    with pytest.raises(TypeError, match="must be boolean"):
        gpulin.embed(a, device="cpu", mask_var=np.arange(80), copy=True)
    with pytest.raises(ValueError, match=r"shape \(79,\)"):
        gpulin.embed(a, device="cpu", mask_var=mask[:79], copy=True)
    with pytest.raises(ValueError, match="selects no gene"):
        gpulin.embed(a, device="cpu", mask_var=np.zeros(80, bool), copy=True)
    with pytest.raises(ValueError, match=r"min\(300, 3\).*the 3 genes of mask_var"):
        gpulin.embed(a, device="cpu", n_components=6, mask_var=np.arange(80) < 3, copy=True)


def test_dataframe_genes_are_matched_by_name_and_vectors_get_a_clear_error():
    """A pandas DataFrame's string columns name its genes (matched by name, as an AnnData's);
    one cell as a 1-D vector and mask_var on a DataFrame give errors that say what to do."""
    counts = make_counts(60, 80, seed=21).toarray()
    df = pd.DataFrame(counts, columns=[f"g{i}" for i in range(80)])
    est = LinearEmbedding(n_components=5, device="cpu").fit(df)
    assert list(est.var_names_[:2]) == ["g0", "g1"]
    np.testing.assert_allclose(est.transform(df[df.columns[::-1]]), est.transform(df), atol=1e-5)
    sparse_df = pd.DataFrame.sparse.from_spmatrix(sp.csr_matrix(counts), columns=df.columns)
    np.testing.assert_allclose(est.transform(sparse_df), est.transform(df), atol=1e-5)
    # gene names in pandas' string dtype (pandas 3's default) or a categorical index: still names
    for columns in (pd.Index(df.columns[::-1], dtype="string"), pd.CategoricalIndex(df.columns[::-1])):
        np.testing.assert_allclose(est.transform(pd.DataFrame(counts[:, ::-1], columns=columns)),
                                   est.transform(df), atol=1e-5)
    with pytest.raises(ValueError, match=r"2-dimensional.*X\[None, :\]"):
        est.transform(counts[0])
    with pytest.raises(TypeError, match="needs an AnnData input"):
        LinearEmbedding(n_components=5, mask_var="hv", device="cpu").fit(df)


def test_a_failed_refit_leaves_the_last_fit_whole():
    Y = make_counts(40, 60, seed=22)
    est = LinearEmbedding("lognorm", 5, target_sum=None, device="cpu").fit(Y)
    Z0, target = est.transform(Y), est.target_sum_
    with pytest.raises(ValueError):
        est.fit(Y[:3] * 50)  # 3 cells cannot give 5 components
    assert est.target_sum_ == target
    np.testing.assert_array_equal(est.transform(Y), Z0)


def test_warnings_point_at_the_users_line():
    """Warnings raised deep inside gpulin (decorators, helpers) are attributed to the caller's line."""
    a = make_adata(n=60, g=50)
    X = a.X.tolil()
    X[3, :] = 0  # an empty cell
    a = ad.AnnData(sp.csr_matrix(X), obs=a.obs, var=a.var)
    dup = a.copy()
    dup.var_names = ["g0"] * 2 + list(a.var_names[2:])
    for data, category in ((a, gpulin.transforms.EmptyCellsWarning), (dup, UserWarning)):
        with pytest.warns(category) as record:
            gpulin.embed(data, device="cpu", n_components=5)
        assert {w.filename for w in record if issubclass(w.category, category)} == {__file__}
