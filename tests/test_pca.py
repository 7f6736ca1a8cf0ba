"""PCA on the implicit operator vs a dense float64 SVD of the materialized matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import gpulin
from gpulin.implicit import GeneScaling, StandardizedOperator
from gpulin.pca import orthonormalize, pca

from conftest import make_counts


def dense_reference(S) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    dense = S.toarray().astype(np.float64)
    mu = dense.mean(axis=0)
    sd = dense.std(axis=0)
    sd[sd == 0] = 1.0
    A = (dense - mu) / sd
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    return A, U, s, Vt


def noise_floor(n: int, g: int) -> float:
    """Largest singular value of an n x g matrix of unit-variance noise (Marchenko-Pastur edge)."""
    return np.sqrt(n) + np.sqrt(g)


def check_against_dense(res, s, Vt, floor, k):
    above = int(np.sum(s[:k] > 1.5 * floor))
    assert above >= 3, "test data should have a clear signal"
    np.testing.assert_allclose(res.singular_values[:above], s[:above], rtol=1e-3)
    cos = np.linalg.svd(Vt[:above] @ res.components[:above].T, compute_uv=False)
    assert cos.min() >= 0.999
    # Component by component (sign included: svd_flip convention on the loadings).
    ref = Vt[:above] * np.sign(Vt[:above][np.arange(above), np.argmax(np.abs(Vt[:above]), axis=1)])[:, None]
    assert np.all(np.sum(ref * res.components[:above], axis=1) >= 0.999)


@pytest.fixture(scope="module")
def low_rank():
    X = make_counts(n=500, g=700, rank=8, seed=4, depth=0.5)
    S = gpulin.sctop_transform(X)
    return S, dense_reference(S)


@pytest.mark.parametrize("solver", ["randomized", "gram"])
@pytest.mark.parametrize("dense_tiles", [False, True])
def test_pca_matches_dense_svd(low_rank, solver, dense_tiles):
    S, (A, U, s, Vt) = low_rank
    op = StandardizedOperator(S, GeneScaling.fit(S), dense_tiles=dense_tiles, tile_bytes=40_000)
    res = pca(op, 20, solver=solver, seed=0)
    assert res.solver == solver
    check_against_dense(res, s, Vt, noise_floor(*A.shape), 20)
    # Scores are A @ components.T.
    np.testing.assert_allclose(res.scores, A @ res.components.T, atol=2e-4 * np.abs(A @ res.components.T).max())
    # Explained variance ratio uses the total variance of the standardized matrix (ddof=1).
    total = A.var(axis=0, ddof=1).sum()
    np.testing.assert_allclose(res.explained_variance_ratio, res.singular_values**2 / (A.shape[0] - 1) / total)


def test_cells_side_gram_when_fewer_cells_than_genes():
    X = make_counts(n=150, g=900, rank=6, seed=5, depth=0.5)
    S = gpulin.sctop_transform(X)
    A, U, s, Vt = dense_reference(S)
    res = pca(StandardizedOperator(S, GeneScaling.fit(S)), 149, solver="gram")
    np.testing.assert_allclose(res.singular_values[:100], s[:100], rtol=1e-4)
    np.testing.assert_allclose(res.scores, A @ res.components.T, atol=1e-3)


def test_pca_on_baron_above_noise_floor(baron_human):
    S = gpulin.sctop_transform(baron_human.X[:800])
    A, U, s, Vt = dense_reference(S)
    op = StandardizedOperator(S, GeneScaling.fit(S))
    for solver in ("randomized", "gram"):
        check_against_dense(pca(op, 30, solver=solver), s, Vt, noise_floor(*A.shape), 30)


def test_determinism_and_seed(low_rank):
    S, _ = low_rank
    op = StandardizedOperator(S, GeneScaling.fit(S))
    a = pca(op, 10, solver="randomized", seed=3)
    b = pca(op, 10, solver="randomized", seed=3)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.components, b.components)
    c = pca(op, 10, solver="randomized", seed=4)
    # A different seed gives the same leading components up to rounding.
    np.testing.assert_allclose(np.abs(np.sum(a.components[:5] * c.components[:5], axis=1)), 1.0, atol=1e-4)


def test_whitening_matches_sklearn_semantics(low_rank):
    S, (A, U, s, Vt) = low_rank
    est = gpulin.LinearEmbedding(n_components=10, whiten=True, device="cpu")
    Z = est.fit_transform(make_counts(n=500, g=700, rank=8, seed=4, depth=0.5))
    np.testing.assert_allclose(Z.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    from sklearn.decomposition import PCA

    ref = PCA(10, whiten=True, svd_solver="full").fit_transform(A)
    np.testing.assert_allclose(np.abs(np.sum(ref[:, :5] * Z[:, :5], axis=0)) / (len(Z) - 1), 1.0, rtol=1e-3, atol=1e-3)


def test_orthonormalize_rank_deficient_falls_back_to_qr():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((200, 3)).astype(np.float32) @ rng.standard_normal((3, 8)).astype(np.float32)
    Q = orthonormalize(Y, np)
    np.testing.assert_allclose(Q.T @ Q, np.eye(8), atol=1e-5)
    Yw = rng.standard_normal((300, 12)).astype(np.float32)
    Qw = orthonormalize(Yw, np)
    np.testing.assert_allclose(Qw.T @ Qw, np.eye(12), atol=1e-5)
    # Same span.
    np.testing.assert_allclose(Qw @ (Qw.T @ Yw), Yw, atol=1e-4)


@pytest.mark.parametrize("sketch_gram", [True, False], ids=["gram-rounds", "product-rounds"])
@pytest.mark.parametrize("shape", [(240, 400), (500, 150)], ids=["fewer-cells", "fewer-genes"])
def test_sklearn_solver_reproduces_sklearn_randomized_pca(shape, sketch_gram, monkeypatch):
    """Same subspace, singular values and fit_transform scores as scikit-learn's randomized PCA,
    with the power rounds run as products over the matrix or on the sketch-side Gram matrix."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    import gpulin.pca as pca_module

    calls = []
    real = pca_module._sketch_gram_is_cheaper
    monkeypatch.setattr(pca_module, "_sketch_gram_is_cheaper", lambda *a: calls.append(real(*a)) or sketch_gram)
    n, g = shape
    S = gpulin.sctop_transform(make_counts(n, g, seed=5), batch_size=97)
    op = StandardizedOperator(S, GeneScaling.fit(S))
    k = 30
    res = pca(op, k, solver="sklearn", seed=3)
    ref = PCA(k, svd_solver="randomized", random_state=3)
    scores = ref.fit_transform(StandardScaler().fit_transform(S.toarray().astype(np.float64)))
    np.testing.assert_allclose(res.singular_values, ref.singular_values_, rtol=1e-5)
    cos = np.abs(np.sum(res.components * ref.components_, axis=1))
    assert cos.min() > 1 - 1e-5
    np.testing.assert_allclose(np.abs(np.asarray(res.scores)), np.abs(scores), atol=1e-4 * np.abs(scores).max())
    assert calls == [True]  # the cost rule picks the Gram rounds at this size
    # The exact solution differs in the trailing components: the test is not vacuous.
    exact = pca(op, k, solver="gram")
    assert np.abs(exact.singular_values / ref.singular_values_ - 1).max() > 1e-3


@pytest.mark.parametrize("with_genes", [False, True])
def test_threaded_sparse_products_match_materialized_operator(with_genes):
    """CPU products split over threads (row chunks; transposed blocks for A.T @ U) equal the
    dense standardized matrix's products, for any number of threads."""
    S = gpulin.sctop_transform(make_counts(700, 260, seed=11), batch_size=150)
    genes = np.sort(np.random.default_rng(0).choice(260, 90, replace=False)) if with_genes else None
    scaling = GeneScaling.fit(S)
    dense = StandardizedOperator(S, scaling, genes, dense_tiles=True)
    A = np.concatenate([dense.tile(blk, cb) for _, _, blk, cb in dense._tiles()]).astype(np.float64)
    rng = np.random.default_rng(1)
    V = rng.standard_normal((A.shape[1], 7)).astype(np.float32)
    U = rng.standard_normal((A.shape[0], 7)).astype(np.float32)
    results = []
    for workers in (1, 3):
        op = StandardizedOperator(S, scaling, genes, dense_tiles=False)
        op.workers = workers
        mm, rm = op.matmat(V), op.rmatmat(U)
        np.testing.assert_allclose(mm, A @ V, rtol=1e-4, atol=1e-4 * np.abs(A @ V).max())
        np.testing.assert_allclose(rm, A.T @ U, rtol=1e-4, atol=1e-4 * np.abs(A.T @ U).max())
        results.append((mm, rm))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)


def test_sklearn_draw_is_kept_read_only_and_equals_random_state(monkeypatch):
    """The cached Gaussian draw of solver='sklearn' is RandomState(seed).normal in float32, shared
    between fits (read-only) only when small; a large draw is made afresh."""
    from gpulin import pca as pca_module

    ref = np.random.RandomState(3).normal(size=(50, 20)).astype(np.float32)
    a = pca_module._sklearn_gaussian_draw(3, 50, 20)
    np.testing.assert_array_equal(a, ref)
    assert a is pca_module._sklearn_gaussian_draw(3, 50, 20) and not a.flags.writeable
    assert not np.array_equal(a, pca_module._sklearn_gaussian_draw(4, 50, 20))
    monkeypatch.setattr(pca_module, "_CACHED_DRAW_MAX_VALUES", 100)
    b = pca_module._sklearn_gaussian_draw(3, 50, 20)
    np.testing.assert_array_equal(b, ref)
    assert b is not a and b.flags.writeable


def test_sklearn_solver_gram_rounds_with_a_rank_deficient_sketch():
    """l = n cells: the sketch is rank-deficient (centred data has rank n - 1); the Gram rounds fall
    back to a product for the last step and still match scikit-learn."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    S = gpulin.sctop_transform(make_counts(40, 400, seed=6))
    op = StandardizedOperator(S, GeneScaling.fit(S))
    res = pca(op, 30, solver="sklearn", seed=1)
    ref = PCA(30, svd_solver="randomized", random_state=1).fit(StandardScaler().fit_transform(S.toarray().astype(np.float64)))
    np.testing.assert_allclose(res.singular_values, ref.singular_values_, rtol=1e-4)
    cos = np.abs(np.sum(res.components * ref.components_, axis=1))
    assert cos.min() > 1 - 1e-4


@pytest.mark.parametrize("shape", [(240, 400), (500, 150)], ids=["fewer-cells", "fewer-genes"])
def test_gram_rounds_basis_is_orthonormal_without_forming_it(shape):
    """The Gram rounds hand back the basis ``Q = M Qs R^-1`` unformed (its products with small
    matrices are one pass each): Q is orthonormal, and ``M.T Q`` matches a product with the data.
    With l = n cells (a rank-deficient sketch) they fall back to an explicit orthonormal Q."""
    import gpulin.pca as pca_module

    n, g = shape
    S = gpulin.sctop_transform(make_counts(n, g, seed=5))
    op = StandardizedOperator(S, GeneScaling.fit(S))
    transpose = n < g
    omega = np.random.RandomState(0).normal(size=(min(n, g), 40))
    basis, MtQ = pca_module._rounds_on_sketch_gram(op, omega, transpose, 4)
    assert basis.from_data and len(basis.W) == 2
    Q = basis.times(np.eye(40), np).astype(np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(40), atol=1e-5)
    direct = op.matmat(Q.astype(np.float32)) if transpose else op.rmatmat(Q.astype(np.float32))
    np.testing.assert_allclose(MtQ.matrix(), direct, atol=1e-4 * np.abs(direct).max())
    np.testing.assert_allclose(MtQ.gram(), MtQ.matrix().T @ MtQ.matrix(), rtol=1e-10, atol=1e-10)
    B = np.random.RandomState(2).normal(size=(40, 7))
    np.testing.assert_allclose(basis.times(B, np), Q @ B, atol=1e-5 * np.abs(Q @ B).max())

    S = gpulin.sctop_transform(make_counts(40, 400, seed=6))
    op = StandardizedOperator(S, GeneScaling.fit(S))
    basis, MtQ = pca_module._rounds_on_sketch_gram(op, np.random.RandomState(1).normal(size=(40, 40)), True, 4)
    assert not basis.from_data and basis.W == () and MtQ is None
    Q = basis.data
    np.testing.assert_allclose(Q.T.astype(np.float64) @ Q, np.eye(40), atol=1e-5)


def test_gram_rounds_form_the_sketch_when_its_factor_is_ill_conditioned():
    """A steep, low-noise spectrum: R from the float32 Gram matrix would leave the basis far from
    orthonormal (0.2 off, found in review), so the sketch is formed and factored instead; the
    loadings of solver="sklearn" stay orthonormal and match a dense SVD on the signal."""
    import gpulin.pca as pca_module
    from strict_device import DenseOperator

    rng = np.random.default_rng(0)
    n, g = 150, 400
    sv = np.array([300, 100, 30, 10, 5, 3, 2, 1.5])
    U = np.linalg.qr(rng.standard_normal((n, 8)))[0]
    V = np.linalg.qr(rng.standard_normal((g, 8)))[0]
    A = (U * sv * np.sqrt(n * g) / 10) @ V.T + 0.1 * rng.standard_normal((n, g))
    A = (A - A.mean(0)).astype(np.float32)
    op = DenseOperator(A, gpulin.get_backend("cpu"))
    basis, MtQ = pca_module._rounds_on_sketch_gram(op, np.random.RandomState(1).normal(size=(n, 20)), True, 7)
    assert not basis.from_data and MtQ is not None
    Q = basis.times(np.eye(20), np).astype(np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(20), atol=1e-6)
    res = pca(op, 10, solver="sklearn", seed=0)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(10), atol=1e-6)
    exact = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(res.singular_values[:8], exact[:8], rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(240, 400), (500, 150)], ids=["fewer-cells", "fewer-genes"])
def test_sklearn_solver_cpu_and_gpu_agree(shape):
    """solver='sklearn' (Gram rounds at this size) gives the same components on CPU and GPU."""
    X = make_counts(*shape, seed=5)
    out = {}
    for device in ("cpu", "cuda"):
        S = gpulin.transforms.transform_implicit(X, "sctop", device=device)
        op = StandardizedOperator(S, GeneScaling.fit(S))
        out[device] = pca(op, 30, solver="sklearn", seed=3)
        out[device + "-lean"] = pca(op, 30, solver="sklearn", seed=3, loadings=False)
    np.testing.assert_allclose(out["cuda"].singular_values, out["cpu"].singular_values, rtol=1e-5)
    cos = np.abs(np.sum(out["cuda"].components * out["cpu"].components, axis=1))
    assert cos.min() > 1 - 1e-5
    # without the loadings (fewer cells than genes): the deferred product under the scores' signs
    lean, full = out["cuda-lean"], out["cpu"]
    signs = np.sign(np.sum(lean.scores.get() * np.asarray(full.scores), axis=0))
    B = np.random.default_rng(0).normal(size=(30, 3))
    expected = full.components.T @ B
    np.testing.assert_allclose(lean.components_t_times(signs[:, None] * B), expected, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("small_qr_size", [None, 0], ids=["host-householder", "cholesky-qr"])
@pytest.mark.parametrize("dense_tiles", [True, False], ids=["tiles", "sparse"])
def test_krylov_on_rank_deficient_data(small_qr_size, dense_tiles, monkeypatch):
    """Only 6 distinct cells: A has rank <= 5, so the Krylov space is exhausted after its first
    block and every later block is rounding noise (redundant with the first). The Rayleigh-Ritz
    step drops what is redundant; the result still matches the dense SVD on the non-zero singular
    values, and the loadings stay orthonormal."""
    import gpulin.pca as pca_module

    if small_qr_size is not None:  # the path large (and GPU) bases take
        monkeypatch.setattr(pca_module, "SMALL_QR_SIZE", small_qr_size)
    base = make_counts(n=6, g=300, rank=6, seed=8, depth=2.0).toarray()
    S = gpulin.sctop_transform(np.repeat(base, 40, axis=0))
    A, U, s, Vt = dense_reference(S)
    op = StandardizedOperator(S, GeneScaling.fit(S), dense_tiles=dense_tiles)
    res = pca(op, 12, solver="randomized", seed=0)
    np.testing.assert_allclose(res.singular_values[:5], s[:5], rtol=1e-4)
    assert np.all(res.singular_values[5:] < 1e-3 * s[0])
    cos = np.abs(np.sum(res.components[:5] * Vt[:5], axis=1))
    assert cos.min() > 0.999
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(12), atol=1e-4)


def test_ritz_vectors_of_a_slightly_non_orthonormal_basis():
    """K^T K close to I (a float32 basis): the generalized solver's pairs, C^T M C = I, equal the
    Ritz pairs of an exactly orthonormalized basis of the same span."""
    from gpulin.pca import _ritz_vectors

    rng = np.random.default_rng(1)
    A = rng.standard_normal((80, 30))
    K = np.linalg.qr(rng.standard_normal((30, 12)))[0] + 1e-4 * rng.standard_normal((30, 12))
    Y = A @ K
    lam, C = _ritz_vectors(Y.T @ Y, K.T @ K, 5)
    np.testing.assert_allclose(C.T @ (K.T @ K) @ C, np.eye(5), atol=1e-10)
    Q = np.linalg.qr(K)[0]
    ref = np.linalg.eigvalsh((A @ Q).T @ (A @ Q))[::-1][:5]
    np.testing.assert_allclose(lam, ref, rtol=1e-10)
    assert np.all(np.diff(lam) <= 0)


def test_ritz_vectors_whiten_a_redundant_basis():
    """K^T K singular (a repeated column): the redundant direction is dropped, C^T M C = I."""
    from gpulin.pca import _ritz_vectors

    rng = np.random.default_rng(0)
    A = rng.standard_normal((60, 20))
    K = np.linalg.qr(rng.standard_normal((20, 6)))[0]
    K = np.hstack([K, K[:, :1]])
    Y = A @ K
    lam, C = _ritz_vectors(Y.T @ Y, K.T @ K, 3)
    np.testing.assert_allclose(C.T @ (K.T @ K) @ C, np.eye(3), atol=1e-8)
    # Same as the Ritz values on the orthonormal part alone.
    ref = np.linalg.eigvalsh((A @ K[:, :6]).T @ (A @ K[:, :6]))[::-1][:3]
    np.testing.assert_allclose(lam, ref, rtol=1e-8)


@pytest.mark.parametrize("n_iter", [1, 3])
def test_block_krylov_makes_2q_plus_1_products(low_rank, n_iter):
    """q fused passes (A Z and A^T A Z from one pass) and one last A Z; the scores need no pass."""
    S, _ = low_rank
    op = StandardizedOperator(S, GeneScaling.fit(S), dense_tiles=True)
    calls = {"matmat": 0, "rmatmat": 0, "matmat_rmatmat": 0}
    for name in calls:
        real = getattr(op, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(op, name, counted)
    res = pca(op, 10, solver="randomized", n_iter=n_iter, seed=0)
    assert res.n_iter == n_iter
    assert calls == {"matmat": 1, "rmatmat": 0, "matmat_rmatmat": n_iter}
    # The scores are A @ components.T.
    direct = StandardizedOperator(S, GeneScaling.fit(S)).matmat(res.components.T.astype(np.float32))
    np.testing.assert_allclose(res.scores, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())


@pytest.mark.parametrize("dense_tiles", [False, True], ids=["sparse", "tiles"])
def test_block_krylov_generic_path_equals_compiled_path(low_rank, dense_tiles):
    """The generic array-namespace products (what CuPy runs) and the compiled CPU kernels give the
    same block Krylov PCA: same draw, same Krylov basis up to float32 rounding."""
    S, _ = low_rank
    sc = GeneScaling.fit(S)
    fast = StandardizedOperator(S, sc, dense_tiles=dense_tiles)
    generic = StandardizedOperator(S, sc, dense_tiles=dense_tiles)
    generic.cpu_kernels = False
    a = pca(fast, 8, solver="randomized", seed=5)
    b = pca(generic, 8, solver="randomized", seed=5)
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(a.components * b.components, axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-3 * np.abs(b.scores).max())


def test_default_randomized_pca_captures_at_least_scikit_learns_variance():
    """The block Krylov defaults were chosen against an exact PCA (benchmarks/pca_accuracy.py): on
    a flat single-cell spectrum they capture at least the variance of scikit-learn's randomized PCA
    (what the authors' pipeline runs), where 3 iterations captured less."""
    from sklearn.decomposition import PCA

    from gpulin.datasets import synthetic_atlas
    from gpulin.transforms import sctop_transform

    adata = synthetic_atlas(n_cells=1500, n_genes=1200, seed=3)
    Z = sctop_transform(adata.X, dense=True).astype(np.float64)
    Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1.0)
    k = 100
    optimal = np.sum(np.linalg.svd(Z, compute_uv=False)[:k] ** 2)

    def captured(components):
        V = components / np.linalg.norm(components, axis=1, keepdims=True)
        return np.sum((Z @ V.T) ** 2) / optimal

    S = sctop_transform(adata.X)
    op = StandardizedOperator(S, GeneScaling.fit(S))
    ours = captured(pca(op, k, solver="randomized", seed=0).components)
    reference = captured(PCA(k, svd_solver="randomized", random_state=0).fit(Z).components_)
    assert ours >= reference - 1e-4, (ours, reference)
    fewer = captured(pca(op, k, solver="randomized", n_iter=3, n_oversamples=20, seed=0).components)
    assert ours > fewer


class _NumpyUnderAnotherName:
    """NumPy behind a different object, so that ``xp is np`` is False: runs the branches written
    for CuPy (device arrays, no host threads) with host arrays, on machines without a GPU."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("dense_tiles", [False, True], ids=["sparse", "tiles"])
def test_block_krylov_device_branches_equal_host_branches(low_rank, dense_tiles):
    """The block Krylov PCA through its ``xp is not np`` branches (what CuPy runs: stacked-block
    products, Gram-Schmidt, CholeskyQR, Gram matrices on the device) equals the host branches."""
    import dataclasses

    S, _ = low_rank
    sc = GeneScaling.fit(S)
    host = StandardizedOperator(S, sc, dense_tiles=dense_tiles)
    host.cpu_kernels = False
    device = StandardizedOperator(S, sc, dense_tiles=dense_tiles)
    device.cpu_kernels = False
    device.backend = dataclasses.replace(S.backend, xp=_NumpyUnderAnotherName())
    a = pca(host, 8, solver="randomized", seed=2)
    b = pca(device, 8, solver="randomized", seed=2)
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(a.components * b.components, axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-3 * np.abs(a.scores).max())


@pytest.mark.parametrize(
    "solver, shape, sketch_gram",
    [
        ("randomized", (300, 120), None),
        ("randomized", (120, 300), None),
        ("gram", (300, 120), None),
        ("gram", (120, 300), None),
        ("sklearn", (300, 120), True),
        ("sklearn", (120, 300), True),
        ("sklearn", (300, 120), False),
        ("sklearn", (120, 300), False),
    ],
)
def test_pca_device_branches_on_a_strict_cupy_stand_in(solver, shape, sketch_gram, monkeypatch):
    """Every PCA solver through its device branches with arrays that, like CuPy's, refuse implicit
    conversion to NumPy and mixing with host arrays (tests/strict_device.py): nothing on the way
    hands a device array to NumPy/SciPy/Numba or a host array to device arithmetic, and the
    results equal the host run's."""
    import dataclasses

    import gpulin.pca as pca_module
    from strict_device import DenseOperator, xp as strict_xp

    if sketch_gram is not None:
        monkeypatch.setattr(pca_module, "_sketch_gram_is_cheaper", lambda *a: sketch_gram)
    rng = np.random.default_rng(7)
    n, g = shape
    A = (rng.standard_normal((n, 6)) * [30, 20, 12, 8, 5, 3]) @ rng.standard_normal((6, g))
    A = (A + rng.standard_normal((n, g))).astype(np.float32)
    A -= A.mean(axis=0)
    backend = gpulin.get_backend("cpu")
    host = pca(DenseOperator(A, backend), 12, solver=solver, seed=3)
    device_backend = dataclasses.replace(backend, name="cuda", xp=strict_xp)
    dev = pca(DenseOperator(A, device_backend), 12, solver=solver, seed=3)
    assert type(dev.scores).__module__.startswith("cupy")  # scores stay on the device
    assert isinstance(dev.components, np.ndarray) and isinstance(dev.singular_values, np.ndarray)
    # The signal (6 components) agrees to float32 rounding. Past it (noise, where both runs are ~2%
    # off the exact singular values), scikit-learn's float32 power rounds normalized by LU (host)
    # or QR (device) differ by up to 1.3e-4.
    tol = 5e-4 if solver == "sklearn" else 1e-4
    np.testing.assert_allclose(dev.singular_values[:6], host.singular_values[:6], rtol=1e-5)
    np.testing.assert_allclose(dev.singular_values, host.singular_values, rtol=tol)
    cos = np.sum(dev.components * host.components, axis=1)
    np.testing.assert_allclose(np.abs(cos), 1.0, atol=tol)
    assert (cos[:6] > 0).all()  # the sign convention picks the same sign (a noise component may not)
    np.testing.assert_allclose(dev.scores.get() * np.sign(cos), host.scores, atol=2e-3 * np.abs(host.scores).max())


def test_degenerate_inputs_identical_cells_null_directions_and_whitening():
    """Identical cells: every gene is constant, so nothing has variance (sctop's s2 cancels terms
    of size c^2: the constant-gene test allows for it). Components past the rank: orthonormal
    loadings; whitening leaves them at zero instead of scaling rounding noise up."""
    rng = np.random.default_rng(0)
    row = rng.poisson(1.0, size=(1, 300)).astype(np.float32)
    for n in (1, 100):
        est = gpulin.LinearEmbedding("sctop", 1 if n == 1 else 5, device="cpu")
        Z = est.fit_transform(sp.csr_matrix(np.repeat(row, n, axis=0)))
        assert (est.var_ == 0).all() and est.explained_variance_ratio_.sum() == 0.0
        assert np.abs(Z).max() < 1e-6
    X = sp.csr_matrix(rng.poisson(1.0, size=(50, 200)).astype(np.float32))
    est = gpulin.LinearEmbedding("sctop", 50, solver="gram", whiten=True, device="cpu")
    Z = est.fit_transform(X)
    C = est.components_
    np.testing.assert_allclose(C @ C.T, np.eye(50), atol=1e-10)  # the 50th direction has no variance
    assert est.explained_variance_ratio_.sum() <= 1 + 1e-6
    np.testing.assert_allclose(Z[:, -1], 0.0)  # whitened to zero, not to noise of unit variance
    np.testing.assert_allclose(est.transform(X)[:, -1], 0.0)


@pytest.mark.parametrize("sketch_gram", [True, False], ids=["gram-rounds", "product-rounds"])
def test_sklearn_solver_without_loadings_applies_them_later(sketch_gram, monkeypatch):
    """loadings=False (fewer cells than genes): no components, the same scores up to each
    column's sign (svd_flip needs the loadings), and components_t_times(B) equals the loadings'
    product with B under those signs."""
    import gpulin.pca as pca_module

    monkeypatch.setattr(pca_module, "_sketch_gram_is_cheaper", lambda *a: sketch_gram)
    S = gpulin.sctop_transform(make_counts(240, 400, seed=6), batch_size=97)
    op = StandardizedOperator(S, GeneScaling.fit(S))
    full = pca(op, 20, solver="sklearn", seed=1)
    lean = pca(op, 20, solver="sklearn", seed=1, loadings=False)
    assert lean.components is None
    np.testing.assert_array_equal(lean.singular_values, full.singular_values)
    signs = np.sign(np.sum(np.asarray(full.scores) * np.asarray(lean.scores), axis=0))
    np.testing.assert_allclose(np.asarray(lean.scores) * signs, np.asarray(full.scores), atol=1e-5)
    B = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_allclose(lean.components_t_times(signs[:, None] * B), full.components.T @ B, atol=1e-5)
    np.testing.assert_allclose(full.components_t_times(B), full.components.T @ B)


@pytest.mark.parametrize("sketch_gram", [True, False], ids=["gram-rounds", "product-rounds"])
def test_deferred_loadings_on_a_strict_cupy_stand_in(sketch_gram, monkeypatch):
    """pca(loadings=False) through the device branches (tests/strict_device.py): the deferred
    product comes back to the host and equals the host loadings' product under the signs."""
    import dataclasses

    import gpulin.pca as pca_module
    from strict_device import DenseOperator, xp as strict_xp

    monkeypatch.setattr(pca_module, "_sketch_gram_is_cheaper", lambda *a: sketch_gram)
    rng = np.random.default_rng(8)
    A = ((rng.standard_normal((120, 5)) * [30, 20, 12, 8, 5]) @ rng.standard_normal((5, 300))
         + rng.standard_normal((120, 300))).astype(np.float32)
    A -= A.mean(axis=0)
    backend = gpulin.get_backend("cpu")
    host = pca(DenseOperator(A, backend), 5, solver="sklearn", seed=3)
    device_backend = dataclasses.replace(backend, name="cuda", xp=strict_xp)
    dev = pca(DenseOperator(A, device_backend), 5, solver="sklearn", seed=3, loadings=False)
    assert dev.components is None
    signs = np.sign(np.sum(dev.scores.get() * np.asarray(host.scores), axis=0))
    B = rng.standard_normal((5, 2))
    got = dev.components_t_times(signs[:, None] * B)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, host.components.T @ B, atol=1e-4 * np.abs(host.components.T @ B).max())
