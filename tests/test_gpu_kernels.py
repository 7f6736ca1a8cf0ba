"""The CUDA kernels (gpulin._gpu_kernels) against their CPU twins, and the fused operator pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import gpulin
from gpulin._gpu_kernels import csr_rows_to_dense
from gpulin.implicit import GeneScaling, StandardizedOperator

from conftest import make_counts


def awkward_csr() -> sp.csr_matrix:
    """Empty rows, a full row, a duplicate entry, unsorted indices."""
    X = sp.random(50, 37, density=0.2, random_state=0, format="csr", dtype=np.float32)
    X = sp.lil_matrix(X)
    X[3, :] = 0
    X[7, :] = np.arange(1, 38)
    X = X.tocsr()
    X.data[:] += 1.0
    coo = X.tocoo()
    rows, cols, vals = [*coo.row, 10], [*coo.col, 5], [*coo.data, 2.5]  # duplicate (10, 5)
    Y = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=X.shape)
    Y.has_canonical_format = False
    Y.indices[Y.indptr[20]:Y.indptr[21]] = Y.indices[Y.indptr[20]:Y.indptr[21]][::-1].copy()
    Y.data[Y.indptr[20]:Y.indptr[21]] = Y.data[Y.indptr[20]:Y.indptr[21]][::-1].copy()
    return Y


@pytest.mark.parametrize("start,stop", [(0, 50), (0, 1), (3, 4), (5, 33), (49, 50), (12, 12)])
def test_cpu_twin_is_the_row_slice(start, stop):
    X = awkward_csr()
    out = csr_rows_to_dense(X, start, stop)
    assert out.dtype == np.float32 and out.shape == (stop - start, 37)
    np.testing.assert_array_equal(out, X.toarray()[start:stop])


def test_index_arrays_reach_the_kernels_as_int32_or_not_at_all():
    from gpulin._gpu_kernels import _int32_index

    a32 = np.arange(5, dtype=np.int32)
    assert _int32_index(a32, 4) is a32
    a64 = np.arange(5, dtype=np.int64)
    assert _int32_index(a64, 4).dtype == np.int32
    with pytest.raises(ValueError, match="2\\^31"):
        _int32_index(a64, 2**31)  # would wrap around: an error, never a silent truncation


def test_row_range_is_checked():
    with pytest.raises(ValueError, match="outside"):
        csr_rows_to_dense(awkward_csr(), 10, 51)


@pytest.mark.gpu
@pytest.mark.parametrize("start,stop", [(0, 50), (3, 4), (5, 33), (12, 12)])
def test_gpu_scatter_matches_cpu_twin(start, stop):
    import cupy as cp
    import cupyx.scipy.sparse as cusp

    X = awkward_csr()
    Xg = cusp.csr_matrix((cp.asarray(X.data), cp.asarray(X.indices), cp.asarray(X.indptr)), shape=X.shape)
    np.testing.assert_allclose(cp.asnumpy(csr_rows_to_dense(Xg, start, stop)), csr_rows_to_dense(X, start, stop),
                               rtol=1e-7)


@pytest.mark.parametrize("dense_tiles", [True, False], ids=["dense-tiles", "sparse"])
@pytest.mark.parametrize("with_genes", [False, True])
def test_fused_pass_equals_matmat_then_rmatmat(dense_tiles, with_genes):
    S = gpulin.sctop_transform(make_counts(300, 120, seed=4), batch_size=70)
    genes = np.sort(np.random.default_rng(2).choice(120, 50, replace=False)) if with_genes else None
    op = StandardizedOperator(S, GeneScaling.fit(S), genes, dense_tiles=dense_tiles, tile_bytes=4 * 120 * 32)
    V = np.random.default_rng(3).standard_normal((op.shape[1], 6)).astype(np.float32)
    Y, AtY = op.matmat_rmatmat(V)
    Y_ref = op.matmat(V)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-5, atol=1e-5 * np.abs(Y_ref).max())
    ref = op.rmatmat(Y_ref)
    assert AtY.dtype == np.float64 and AtY.shape == (op.shape[1], 6)
    np.testing.assert_allclose(AtY, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.gpu
def test_fused_pass_cpu_and_gpu_agree():
    import cupy as cp

    X = make_counts(400, 150, seed=9)
    V = np.random.default_rng(3).standard_normal((150, 8)).astype(np.float32)
    out = {}
    for device in ("cpu", "cuda"):
        S = gpulin.transforms.transform_implicit(X, "sctop", device=device, batch_size=90)
        op = StandardizedOperator(S, GeneScaling.fit(S), dense_tiles=True, tile_bytes=4 * 150 * 40)
        Y, AtY = op.matmat_rmatmat(cp.asarray(V) if device == "cuda" else V)
        out[device] = (gpulin._backend.to_host(Y), gpulin._backend.to_host(AtY))
    for a, b in zip(out["cuda"], out["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_row_sums_cpu_twin():
    from gpulin._gpu_kernels import csr_row_sums

    X = awkward_csr()
    np.testing.assert_allclose(csr_row_sums(X.data, X.indptr), np.asarray(X.astype(np.float64).sum(axis=1)).ravel(), rtol=1e-12)
    assert csr_row_sums(np.zeros(0, np.float32), np.zeros(4, np.int32)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_gpu_row_sums_match_cpu_twin(dtype):
    import cupy as cp

    from gpulin._gpu_kernels import csr_row_sums

    X = awkward_csr()
    vals = (X.data > 1.5) if dtype is bool else X.data.astype(dtype)
    got = cp.asnumpy(csr_row_sums(cp.asarray(vals), cp.asarray(X.indptr)))
    np.testing.assert_allclose(got, csr_row_sums(vals, X.indptr), rtol=1e-12)
