"""scTOP and lognorm transforms: parity with the reference implementations, sparse form, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpulin
from gpulin import EmptyCellsWarning
from gpulin.transforms import transform_implicit

from conftest import make_counts

sctop = pytest.importorskip("sctop")


def reference_sctop(X) -> np.ndarray:
    """``sctop.process`` on a cells x genes matrix (it takes genes x cells)."""
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sctop divides 0 by 0 for empty cells
        return sctop.process(dense.T.astype(np.float32)).to_numpy().T


def test_sctop_matches_reference_on_baron_human(baron_human):
    ours = gpulin.sctop_transform(baron_human.X, dense=True)
    ref = reference_sctop(baron_human.X)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    # The remaining ~8e-6 is sctop's own float32 norm accumulation (we accumulate in float64).
    assert np.abs(ours - ref).max() <= 1e-5


def test_sctop_ties_empty_cells_and_explicit_zeros():
    rng = np.random.default_rng(1)
    Y = rng.poisson(0.4, size=(60, 250)).astype(np.float32)  # many ties among 1s and 2s
    Y[4] = 0  # empty cell
    Y[9, :] = 3  # a cell with no zero gene at all
    X = sp.csr_matrix(Y)
    # An explicitly stored zero must behave like an absent one: insert one by hand.
    data, indices, indptr = list(X.data), list(X.indices), X.indptr.copy()
    row = 5
    insert_at = indptr[row + 1]
    gene = int(np.flatnonzero(Y[row] == 0)[0])
    data.insert(insert_at, 0.0)
    indices.insert(insert_at, gene)
    indptr[row + 1 :] += 1
    X = sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices), indptr), shape=Y.shape)
    assert X.nnz == sp.csr_matrix(Y).nnz + 1
    with pytest.warns(EmptyCellsWarning, match="2 of 60 cells"):  # the empty and the constant cell
        ours = gpulin.sctop_transform(X, dense=True, batch_size=7)
    ref = reference_sctop(Y)
    ok = np.isfinite(ref).all(axis=1)  # sctop gives NaN for both
    assert np.flatnonzero(~ok).tolist() == [4, 9]
    assert np.abs(ours[ok] - ref[ok]).max() <= 1e-5
    assert np.all(ours[[4, 9]] == 0)
    np.testing.assert_allclose(np.linalg.norm(ours[ok], axis=1), 1.0, rtol=1e-5)


def test_sparse_form_is_sparse_plus_one_constant_per_cell(counts):
    S = gpulin.sctop_transform(counts)
    assert S.nnz == counts.nnz  # same pattern as the counts
    dense = S.toarray()
    for i in range(5):
        zeros = counts[i].toarray().ravel() == 0
        assert np.allclose(dense[i, zeros], S.c[i])
    # The index arrays of the counts are shared, not copied.
    assert np.shares_memory(S.blocks[0].indices, counts.indices)
    # S @ V with a matrix or a vector, as the dense product
    V = np.random.default_rng(0).standard_normal((counts.shape[1], 3))
    np.testing.assert_allclose(S @ V, dense.astype(np.float64) @ V, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(S @ V[:, 0], (S @ V)[:, 0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"S @ V needs V of shape"):
        S @ V[:-1]


@pytest.mark.parametrize("batch_size", [None, 1, 17, 1000])
def test_batch_size_does_not_change_the_result(counts, batch_size):
    base = gpulin.sctop_transform(counts, dense=True)
    np.testing.assert_array_equal(gpulin.sctop_transform(counts, dense=True, batch_size=batch_size), base)


def test_input_formats_agree_and_input_is_not_modified(counts):
    before = counts.copy()
    base = gpulin.sctop_transform(counts, dense=True)
    np.testing.assert_array_equal(gpulin.sctop_transform(counts.toarray(), dense=True), base)
    np.testing.assert_array_equal(gpulin.sctop_transform(counts.tocsc(), dense=True), base)
    np.testing.assert_array_equal(gpulin.sctop_transform(counts.astype(np.float64), dense=True), base)
    assert (counts != before).nnz == 0 and counts.dtype == before.dtype
    small = counts.toarray()
    if small.max() < 2048:  # counts exact in float16 (no sparse format holds float16: dense only)
        np.testing.assert_array_equal(gpulin.sctop_transform(small.astype(np.float16), dense=True), base)


@pytest.mark.parametrize("method", ["sctop", "lognorm"])
def test_host_blocks_share_the_input_index_arrays(counts, method):
    """Row blocks of a canonical host CSR input point into its index arrays: no copy of the
    pattern (SciPy's constructor would copy every block's slice), and the input stays as it was."""
    X = sp.csr_matrix(counts)
    before = X.indices.copy(), X.indptr.copy(), X.data.copy()
    S = transform_implicit(X, method, device="cpu", batch_size=7)
    assert len(S.blocks) > 2
    for blk in S.blocks:
        assert np.shares_memory(blk.indices, X.indices)
        assert not np.shares_memory(blk.data, X.data)
    np.testing.assert_array_equal(X.indices, before[0])
    np.testing.assert_array_equal(X.indptr, before[1])
    np.testing.assert_array_equal(X.data, before[2])
    np.testing.assert_allclose(S.toarray(), transform_implicit(X, method, device="cpu").toarray(), rtol=1e-6, atol=1e-7)


def test_duplicate_entries_are_summed_on_a_copy(counts):
    coo = counts.tocoo()
    dup = sp.csr_matrix(
        (np.r_[coo.data / 2, coo.data / 2], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])), shape=counts.shape
    )
    dup.has_canonical_format = False
    np.testing.assert_allclose(
        gpulin.sctop_transform(counts, dense=True), gpulin.sctop_transform(dup, dense=True), atol=1e-7
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    g=st.integers(2, 40),
    lam=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_sctop_matches_reference_on_random_counts(n, g, lam, seed):
    Y = np.random.default_rng(seed).poisson(lam, size=(n, g)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyCellsWarning)
        ours = gpulin.sctop_transform(sp.csr_matrix(Y), dense=True)
    ref = reference_sctop(Y)
    ok = np.isfinite(ref).all(axis=1)
    assert np.abs(ours[ok] - ref[ok]).max(initial=0) <= 1e-5
    assert np.all(ours[~ok] == 0)


def test_lognorm_matches_scanpy(counts):
    sc = pytest.importorskip("scanpy")
    import anndata as ad

    a = ad.AnnData(counts.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    ours = gpulin.lognorm_transform(counts, target_sum=1e4, dense=True)
    np.testing.assert_allclose(ours, a.X.toarray(), rtol=1e-5, atol=1e-6)
    S = gpulin.lognorm_transform(counts)
    assert np.all(S.c == 0)


def test_bad_input_gives_clear_errors(counts):
    neg = counts.copy()
    neg.data[0] = -1
    with pytest.raises(ValueError, match="negative"):
        gpulin.sctop_transform(neg)
    nan = counts.copy()
    nan.data[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        gpulin.sctop_transform(nan)
    with pytest.raises(ValueError, match="at least one cell"):
        gpulin.sctop_transform(sp.csr_matrix((0, 10)))
    with pytest.raises(ValueError, match="2-dimensional"):
        gpulin.sctop_transform(np.ones(5))
    with pytest.raises(ValueError, match="Unknown method"):
        transform_implicit(counts, "tfidf")
    with pytest.raises(ValueError, match="Unknown device"):
        gpulin.sctop_transform(counts, device="tpu")
    frac = counts.copy()
    frac.data = frac.data + 0.5
    with pytest.warns(UserWarning, match="non-integer"):
        gpulin.lognorm_transform(frac)


def test_dense_float_matrix_with_many_ties_per_cell():
    X = make_counts(n=40, g=2000, depth=0.05, seed=3)
    ref = reference_sctop(X)
    ok = np.isfinite(ref).all(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyCellsWarning)
        ours = gpulin.sctop_transform(X, dense=True)
    assert np.abs(ours[ok] - ref[ok]).max() <= 1e-5


def test_take_rows_in_any_order_across_blocks(monkeypatch):
    """take_rows gathers rows from several source blocks in the order given (repeats included),
    re-blocks them like a fresh transform (each output block gathered on its own), and checks
    its input."""
    import gpulin.transforms as transforms_module

    plan = transforms_module.plan_row_blocks
    monkeypatch.setattr(transforms_module, "plan_row_blocks", lambda indptr, g, backend, bs: plan(indptr, g, backend, 50))
    X = make_counts(300, 50, seed=4)
    S = gpulin.sctop_transform(X, batch_size=37)  # 9 source blocks
    dense = S.toarray()
    rows = np.random.default_rng(1).permutation(300)[:200]
    rows = np.concatenate([rows, rows[:5]])
    T = S.take_rows(rows)
    assert T.shape == (205, 50) and list(T.row_starts) == [0, 50, 100, 150, 200, 205]
    np.testing.assert_array_equal(T.toarray(), dense[rows])
    np.testing.assert_array_equal(np.asarray(T.c), np.asarray(S.c)[rows])
    np.testing.assert_array_equal(S.take_rows(np.arange(300)).toarray(), dense)
    with pytest.raises(IndexError, match="out of range"):
        S.take_rows([0, 300])
    with pytest.raises(ValueError, match="at least one row"):
        S.take_rows([])
