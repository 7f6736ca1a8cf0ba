"""The compiled CPU kernels (gpulin._cpu_kernels) agree with their generic twins (the GPU code path)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import make_counts
import gpulin
from gpulin import _cpu_kernels as K
from gpulin._backend import CPU
from gpulin._validation import check_counts
from gpulin.implicit import GeneScaling, SparsePlusRowConstant, StandardizedOperator
from gpulin.transforms import _sctop_block, transform_implicit


@pytest.fixture(autouse=True)
def _quiet(recwarn):
    """The tricky inputs warn (empty cells, a non-integer value) by design."""


def _tricky_counts(dtype=np.float32) -> sp.csr_matrix:
    """Ties, empty cells, explicit zeros, a cell with all genes equal, and counts whose key rounds to 1."""
    X = make_counts(n=120, g=90, seed=3).tolil()
    X[5, :] = 0  # empty cell
    X[6, :] = 2  # every gene equal (transforms to zero)
    X[7, 3] = 1e-9  # key rounds to 1 next to a large library: joins the zero group
    X[7, 4] = 5e5
    # Counts past the counting-sort buckets, tied and untied, and distinct counts whose float32
    # keys are equal (2**25 and 2**25 + 1 next to a library of ~2**27).
    X[8, :10] = [300, 300, 2**25, 2**25 + 1, 256, 255, 1, 1, 7, 2**26]
    X[9, :6] = [0.5, 3, 3, 1000, 2, 1]  # one non-integer value: the cell takes the comparison sort
    X = X.tocsr().astype(dtype)
    X.data[::17] = 0  # explicit zeros stored in the matrix
    return X


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_sctop_rows_equal_generic_block(dtype):
    X = _tricky_counts(np.float64 if dtype is np.int64 else dtype)
    if dtype is np.int64:
        X.data = np.round(X.data).astype(np.int64)
    G = X.shape[1]
    d_gen, c_gen, empty_gen = _sctop_block(X, G, CPU)
    for threads in (1, 2, 3):
        d, c, n_empty = K.sctop_rows(X.indptr, X.data, G, threads)
        np.testing.assert_array_equal(d, d_gen)
        np.testing.assert_allclose(c, c_gen, rtol=1e-15, atol=0)
        assert n_empty == empty_gen


def test_sctop_table_holds_every_average_rank():
    G = 7
    tab = K.ztable(G)
    from scipy.special import ndtri

    ranks = np.arange(1, 2 * G + 1) / 2.0  # 0.5 .. G in halves
    np.testing.assert_array_equal(tab[(2 * ranks).astype(int)], ndtri(ranks / (G + 1)))


def _splits(D, n_chunks):
    edges = np.linspace(0, D.shape[1], n_chunks + 1).round().astype(np.int64)
    return K.row_splits(D.indptr, D.indices, edges, 2)


def _sparse_with_empty_rows(seed):
    D = sp.random(300, 200, density=0.1, format="lil", dtype=np.float32, random_state=seed)
    D[5, :] = 0
    D[17, :] = 0
    return D.tocsr()


@pytest.mark.parametrize("n_chunks", [1, 3, 200])
@pytest.mark.parametrize("k", [1, 7, 64, 150])
def test_csr_matmat_matches_scipy(k, n_chunks):
    rng = np.random.default_rng(k)
    D = _sparse_with_empty_rows(k)
    W = rng.standard_normal((200, k)).astype(np.float32)
    rc = rng.standard_normal(300).astype(np.float32)
    colsum = rng.standard_normal(k).astype(np.float32)
    shift = rng.standard_normal(k).astype(np.float32)
    expected = D @ W + rc[:, None] * colsum[None, :] - shift[None, :]
    for threads in (1, 2):
        out = np.empty((300, k), dtype=np.float32)
        K.csr_matmat(_splits(D, n_chunks), D.indices, D.data, W, rc, colsum, shift, out, threads)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_row_splits_cut_rows_at_gene_chunks():
    D = _sparse_with_empty_rows(0)
    edges = K.gene_chunks(200, 2000)  # 200 * 2000 * 4 bytes = 3 x CHUNK_BYTES: several chunks
    assert edges[0] == 0 and edges[-1] == 200 and len(edges) > 2
    splits = K.row_splits(D.indptr, D.indices, edges, 2)
    assert splits.shape == (300, len(edges)) and splits.dtype == np.int32
    np.testing.assert_array_equal(splits[:, 0], D.indptr[:-1])
    np.testing.assert_array_equal(splits[:, -1], D.indptr[1:])
    for i in (0, 5, 99):
        cols = D.indices[D.indptr[i] : D.indptr[i + 1]]
        for c in range(len(edges) - 1):
            seg = D.indices[splits[i, c] : splits[i, c + 1]]
            np.testing.assert_array_equal(seg, cols[(cols >= edges[c]) & (cols < edges[c + 1])])
    assert K.gene_chunks(200, 1).tolist() == [0, 200]


def test_unsorted_indices_use_one_chunk():
    """Rows whose indices are not sorted cannot be cut at gene boundaries: the operator falls back
    to one chunk (the plain CSR order) and gives the same products."""
    S = gpulin.sctop_transform(make_counts(200, 150, seed=2), batch_size=64)
    scaling = GeneScaling.fit(S)
    V = np.random.default_rng(0).standard_normal((150, 1000)).astype(np.float32)  # several chunks
    ref = StandardizedOperator(S, scaling, dense_tiles=False)
    expected = ref.matmat(V), ref.rmatmat(ref.matmat(V))
    assert any(n > 2 for _, n in ref._splits)
    for blk in S.blocks:  # reverse each row's stored values
        for i in range(blk.shape[0]):
            lo, hi = blk.indptr[i], blk.indptr[i + 1]
            blk.indices[lo:hi] = blk.indices[lo:hi][::-1].copy()
            blk.data[lo:hi] = blk.data[lo:hi][::-1].copy()
        blk.has_sorted_indices = False
    op = StandardizedOperator(S, scaling, dense_tiles=False)
    got = op.matmat(V), op.rmatmat(op.matmat(V))
    assert all(n == 2 for _, n in op._splits)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("n_chunks", [1, 4])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_csr_rmatmat_matches_scipy(parts, n_chunks):
    rng = np.random.default_rng(parts)
    D = _sparse_with_empty_rows(parts)
    U = rng.standard_normal((300, 33)).astype(np.float32)
    partials = np.zeros((parts, 200, 33), dtype=np.float32)
    splits = _splits(D, n_chunks)
    K.csr_rmatmat_accumulate(splits, D.indices, D.data, U, partials)
    K.csr_rmatmat_accumulate(splits, D.indices, D.data, U, partials)  # accumulates
    np.testing.assert_allclose(partials.sum(axis=0), 2 * (D.T @ U), rtol=1e-5, atol=1e-5)


def test_column_sums_match_generic():
    X = _tricky_counts()
    S = transform_implicit(X, "sctop", device="cpu", batch_size=37)
    s1, s2 = S.column_sums()
    dense = S.toarray().astype(np.float64)
    np.testing.assert_allclose(s1, dense.sum(axis=0), rtol=1e-6, atol=1e-6)  # dense is float32
    np.testing.assert_allclose(s2, (dense**2).sum(axis=0), rtol=1e-6, atol=1e-6)


def test_value_counts_match_numpy():
    data = np.array([0, 1, 2.5, -1, np.nan, np.inf, 3, -0.5, 1e9, 7.25], dtype=np.float32)
    for threads in (1, 2):
        n_bad, n_neg, n_frac = K.value_counts(data, threads)
        finite = np.isfinite(data)
        assert n_bad == int((~finite).sum())
        assert n_neg == int((data[finite] < 0).sum())
        good = data[finite & (data >= 0)]
        assert n_frac == int((good != np.round(good)).sum())
    with pytest.raises(ValueError, match="non-finite"):
        check_counts(sp.csr_matrix(data[None, :]), CPU)


@pytest.mark.parametrize("flush_rows", [None, 30], ids=["one-flush", "flush-every-30-cells"])
def test_operator_cpu_kernels_equal_generic_sparse_products(flush_rows, monkeypatch):
    """StandardizedOperator on CPU (compiled kernels) == the generic sparse path (what CuPy runs),
    with the partial sums of D^T U flushed once (finish_transposed alone) or every 30 cells
    (float64 flushes, then finish_transposed adding the last partials to them)."""
    import gpulin.implicit as implicit

    if flush_rows is not None:
        monkeypatch.setattr(implicit, "FLUSH_ROWS", flush_rows)
    X = _tricky_counts()
    S = transform_implicit(X, "sctop", device="cpu", batch_size=50)
    assert isinstance(S, SparsePlusRowConstant)
    sc = GeneScaling.fit(S)
    rng = np.random.default_rng(0)
    for genes in (None, np.arange(0, X.shape[1], 2)):
        fast = StandardizedOperator(S, sc, genes, dense_tiles=False)
        generic = StandardizedOperator(S, sc, genes, dense_tiles=False)
        generic.cpu_kernels = False
        assert fast._cpu_sparse and not generic._cpu_sparse
        V = rng.standard_normal((fast.shape[1], 130)).astype(np.float32)
        U = rng.standard_normal((fast.shape[0], 9)).astype(np.float32)
        np.testing.assert_allclose(fast.matmat(V), generic.matmat(V), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fast.rmatmat(U), generic.rmatmat(U), rtol=1e-5, atol=1e-5)


def test_row_ids_portable_form_equals_repeat():
    from gpulin.implicit import _row_ids

    X = _tricky_counts().tolil()
    X[0, :] = 0  # leading, middle and trailing empty rows
    X[-1, :] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    expected = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    np.testing.assert_array_equal(_row_ids(X, np), expected)
    assert _row_ids(X[:1], np).tolist() == [0] * X[:1].nnz
    assert _row_ids(sp.csr_matrix((4, 5), dtype=np.float32), np).size == 0


@pytest.mark.parametrize("block", ["_sctop_block", "_lognorm_block"])
def test_generic_blocks_take_blocks_without_stored_values(block):
    import gpulin.transforms as T

    empty = sp.csr_matrix((6, 10), dtype=np.float32)
    args = (10,) if block == "_sctop_block" else (1e4,)
    d, c, n_empty = getattr(T, block)(empty, *args, CPU)
    assert d.size == 0 and n_empty == 6 and not c.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_lognorm_rows_equal_generic_block(dtype):
    from gpulin.transforms import _lognorm_block

    X = _tricky_counts(np.float64)
    X.data = np.round(X.data).astype(dtype) if dtype is np.int32 else X.data.astype(dtype)
    vals_gen, c_gen, empty_gen = _lognorm_block(X, 1e4, CPU)
    for threads in (1, 2):
        vals, n_empty = K.lognorm_rows(X.indptr, X.data, 1e4, threads)
        np.testing.assert_allclose(vals, vals_gen, rtol=1e-7, atol=0)
        assert n_empty == empty_gen and not c_gen.any()


def test_kernels_can_be_called_from_several_python_threads():
    """Launches are serialized: concurrent callers (e.g. a thread pool of embeddings) get the
    serial result, whatever Numba threading layer is in use."""
    from concurrent.futures import ThreadPoolExecutor

    X = _tricky_counts()
    expected = K.sctop_rows(X.indptr, X.data, X.shape[1], 2)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: K.sctop_rows(X.indptr, X.data, X.shape[1], 2)[0], range(8)))
    for d in results:
        np.testing.assert_array_equal(d, expected)


def test_products_context_limits_blas_around_compiled_kernels():
    """Spinning BLAS threads would take the cores from the kernels: BLAS runs on one thread while
    the CPU sparse products run, and is left alone for dense tiles (whose products are BLAS)."""
    from threadpoolctl import threadpool_info

    S = gpulin.sctop_transform(make_counts(50, 40, seed=1))
    scaling = GeneScaling.fit(S)
    blas = lambda: [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]  # noqa: E731
    before = blas()
    with StandardizedOperator(S, scaling, dense_tiles=False).products_context():
        assert set(blas()) <= {1}
    assert blas() == before
    with StandardizedOperator(S, scaling, dense_tiles=True).products_context():
        assert blas() == before


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scaled_right_and_weighted_column_sums_match_numpy(order, threads):
    """The one-pass twins of StandardizedOperator._scaled_right and of rmatmat's c^T U, 1^T U."""
    rng = np.random.default_rng(threads)
    V = np.asarray(rng.standard_normal((97, 13)).astype(np.float32), order=order)
    inv_scale = rng.uniform(0.5, 2.0, 97)
    mean = rng.standard_normal(97)
    W, colsum, shift = K.scaled_right(V, inv_scale, mean, threads)
    W64 = V.astype(np.float64) * inv_scale[:, None]
    assert W.dtype == np.float32 and W.flags.c_contiguous
    np.testing.assert_array_equal(W, W64.astype(np.float32))
    np.testing.assert_allclose(colsum, W64.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(shift, mean @ W64, rtol=1e-6, atol=1e-6)
    U = np.asarray(rng.standard_normal((50, 7)).astype(np.float32), order=order)
    c = rng.standard_normal(50)
    cu, usum = K.weighted_column_sums(U, c, threads)
    np.testing.assert_allclose(cu, c @ U.astype(np.float64), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(usum, U.astype(np.float64).sum(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("select", [False, True], ids=["all genes", "gene subset"])
def test_standardized_tiles_equal_generic_tiles(select):
    """The one-pass compiled tile (densify, select genes, centre and scale) gives the same float32
    values as the generic tile: densify, select, then three whole-tile passes."""
    X = make_counts(700, 150, seed=4)
    S = transform_implicit(X, "sctop", device=CPU, batch_size=256)
    sc = GeneScaling.fit(S)
    genes = np.sort(np.random.default_rng(0).choice(150, 90, replace=False)) if select else None
    fast = StandardizedOperator(S, sc, genes, dense_tiles=True, tile_bytes=100 * 150 * 4)
    generic = StandardizedOperator(S, sc, genes, dense_tiles=True, tile_bytes=100 * 150 * 4)
    generic.cpu_kernels = False
    tiles_fast = [fast.tile(rows, cb) for _, _, rows, cb in fast._tiles()]
    tiles_generic = [generic.tile(rows, cb) for _, _, rows, cb in generic._tiles()]
    assert len(tiles_fast) > 2  # several tiles per block, several blocks
    for a, b in zip(tiles_fast, tiles_generic):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.dense(1 << 30), generic.dense(1 << 30))


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("reorder", [False, True])
def test_csr_take_columns_equals_the_selection_product(index_dtype, reorder):
    """Columns re-indexed (kept in order, or permuted; some dropped, some new and empty) equal
    the generic ``X @ P``: sorted rows, duplicates kept in storage order, empty rows, unsorted
    input rows, int32 or int64 indices; values keep their dtype."""
    rng = np.random.default_rng(3)
    X = sp.random(60, 300, density=0.2, format="csr", random_state=2, dtype=np.float32)
    X.data = np.round(X.data * 9 + 1).astype(np.float32)
    X = sp.lil_matrix(X)
    X[5, :] = 0  # an empty row
    X = X.tocsr()
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    cols = rng.permutation(300)[:200] if reorder else np.sort(rng.permutation(300)[:200])
    pos = np.full(300, -1, dtype=np.int64)
    pos[cols] = np.arange(200)
    n_out = 210  # ten new, empty columns
    P = sp.csr_matrix((np.ones(200, dtype=np.float32), (cols, np.arange(200))), shape=(300, n_out))
    expected = (X @ P).tocsr()
    expected.sort_indices()
    got = K.csr_take_columns(X, pos, n_out, threads=2)
    assert got.shape == (60, n_out) and got.dtype == np.float32 and got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.data, expected.data)
    # unsorted input rows, and a duplicated entry, come out sorted with the duplicate in place
    U = X.copy()
    for i in range(U.shape[0]):
        a, b = U.indptr[i], U.indptr[i + 1]
        U.indices[a:b], U.data[a:b] = U.indices[a:b][::-1].copy(), U.data[a:b][::-1].copy()
    U.has_sorted_indices = False
    got_u = K.csr_take_columns(U, pos, n_out, threads=2)
    assert got_u.has_sorted_indices
    np.testing.assert_array_equal(got_u.toarray(), expected.toarray())
    D = sp.csr_matrix((np.array([1.0, 2.0, 4.0], dtype=np.float32), np.array([cols[0], cols[0], cols[1]]),
                       np.array([0, 3])), shape=(1, 300))
    got_d = K.csr_take_columns(D, pos, n_out, threads=1)
    assert got_d.nnz == 3 and got_d.toarray()[0, 0] == 3.0 and got_d.toarray()[0, 1] == 4.0
    # canonical (sorted, no duplicates) is claimed only when it holds
    assert got.has_canonical_format and not got_d.has_canonical_format
    merge = pos.copy()
    merge[cols[1]] = 0  # two columns land on one
    got_m = K.csr_take_columns(X, merge, n_out, threads=1)
    assert got_m.has_sorted_indices and not got_m.has_canonical_format
    np.testing.assert_array_equal(got_m.toarray()[:, 0], X.toarray()[:, cols[0]] + X.toarray()[:, cols[1]])
    with pytest.raises(ValueError, match="pos has shape"):
        K.csr_take_columns(X, pos[:-1], n_out, threads=1)
    with pytest.raises(ValueError, match="outside the 150 output columns"):
        K.csr_take_columns(X, pos, 150, threads=1)


@pytest.mark.parametrize("threads", [1, 2])
def test_group_row_sums_equal_the_weighted_indicator_product(threads):
    rng = np.random.default_rng(3)
    X = sp.random(150, 70, density=0.2, format="csr", random_state=4, dtype=np.float32)
    X.data = np.round(X.data * 10)
    codes = rng.integers(0, 5, size=150)
    weights = rng.uniform(0.1, 2.0, size=150)
    W = sp.csr_matrix((weights, (codes, np.arange(150))), shape=(6, 150))  # group 5: no rows
    np.testing.assert_array_equal(K.group_row_sums(X, codes, weights, 6, threads), (W @ X).toarray())
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        K.group_row_sums(X, codes, weights, 4, threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_csr_dot64_equals_scipys_product_to_the_last_bit(threads, dtype):
    """The projection's float64 ``D @ V``, with unsorted rows, duplicate entries and empty rows,
    for a float32 or float64 ``D``: SciPy's product (which widens D's values first) bit for bit."""
    rng = np.random.default_rng(5)
    n, g = 300, 90
    rows, cols = [], []
    for i in range(n):
        k = 0 if i % 7 == 0 else int(rng.integers(1, 25))  # every 7th row empty
        cols.append(rng.integers(0, g, size=k))  # random order, repeats: unsorted, duplicates
        rows.append(np.full(k, i))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    X = sp.csr_matrix(((rng.random(len(rows)) * 37).astype(dtype), cols, indptr), shape=(n, g))
    assert not X.has_canonical_format
    V = rng.standard_normal((g, 7))
    np.testing.assert_array_equal(K.csr_dot64(X, V, threads), X @ V)
    with pytest.raises(ValueError, match="V has shape"):
        K.csr_dot64(X, V[:5], threads)


def test_sctop_rows_take_float32_keys_of_huge_integer_counts_directly():
    """Counts past 2**53 (int64): the key is the count's float32, as in the generic block, not
    the float32 of its float64 (which would round twice)."""
    data = np.array([2**60 + 2**36 + 1, 2**60 + 2**37, 1, 2**58 + 1, 2**40], dtype=np.int64)
    X = sp.csr_matrix((data, np.arange(5), [0, 5]), shape=(1, 8))
    d, c, _ = K.sctop_rows(X.indptr, X.data, 8, 1)
    d_gen, c_gen, _ = _sctop_block(X, 8, CPU)
    np.testing.assert_array_equal(d, d_gen)
    np.testing.assert_allclose(c, c_gen, rtol=1e-15)


@pytest.mark.parametrize("threads", [1, 2])
def test_value_counts_in_columns_count_only_those_columns(threads):
    """check_counts(columns=mask): the compiled count over the masked columns equals the generic
    one (values selected first); errors name the checked values only."""
    from gpulin._backend import CPU
    from gpulin._validation import check_counts

    rng = np.random.default_rng(8)
    X = sp.random(200, 60, density=0.3, format="csr", random_state=9, dtype=np.float64)
    X.data = np.round(X.data * 9)
    mask = rng.random(60) < 0.5
    bad_cols = np.flatnonzero(~mask)
    X = X.tolil()
    X[0, bad_cols[0]], X[1, bad_cols[1]], X[2, bad_cols[2]] = -3.0, np.nan, 0.5  # outside the mask
    X = X.tocsr()
    assert K.value_counts(X.data, threads, X.indices, mask) == (0, 0, 0)
    assert K.value_counts(X.data, threads) == (1, 1, 1)
    check_counts(X, CPU, columns=mask)  # nothing in the masked columns
    X = X.tolil()
    X[3, np.flatnonzero(mask)[0]] = -2.0
    X = X.tocsr()
    assert K.value_counts(X.data, threads, X.indices, mask) == (0, 1, 0)
    with pytest.raises(ValueError, match=r"1 negative value\(s\) \(min -2.0\)"):
        check_counts(X, CPU, columns=mask)
    with pytest.raises(ValueError, match="boolean mask of the 60 columns"):
        check_counts(X, CPU, columns=mask[:-1])
    with pytest.raises(ValueError, match="needs the column index"):
        K.value_counts(X.data, threads, None, mask)
