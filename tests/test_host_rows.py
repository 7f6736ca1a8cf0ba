"""Row-range threading of the dense host work (gpulin._host_rows)."""

import numpy as np
import pytest

from gpulin import _host_rows


@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 5000, 20001])
def test_row_ranges_cover_rows_in_order(n):
    ranges = _host_rows.row_ranges(n, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:]))
    assert len(ranges) == max(1, min(3, n // _host_rows.MIN_ROWS_PER_THREAD))


@pytest.mark.parametrize("float32_products", [False, True])
@pytest.mark.parametrize("with_right", [False, True])
def test_host_gram_by_row_ranges_matches_float64_product(float32_products, with_right):
    """pca._gram64 on the host: row ranges in threads (sum_rows), blocks within each range."""
    from gpulin.pca import _gram64

    rng = np.random.default_rng(0)
    Y = rng.standard_normal((20000, 40), dtype=np.float32)
    R = rng.standard_normal((20000, 7), dtype=np.float32) if with_right else None
    got = _gram64(Y, np, R, float32_products=float32_products)
    Y64 = Y.astype(np.float64)
    want = Y64.T @ (Y64 if R is None else R.astype(np.float64))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 if float32_products else 1e-9)
    again = _gram64(Y, np, R, float32_products=float32_products)
    np.testing.assert_array_equal(got, again)  # deterministic for a given thread count


def test_sum_rows_adds_the_ranges_in_order():
    got = _host_rows.sum_rows(lambda a, b: np.array([b - a, a]), 10_000)
    ranges = _host_rows.row_ranges(10_000, 2)
    assert got[0] == 10_000 and got[1] == sum(a for a, _ in ranges)


def test_matmul_into_by_row_ranges():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((7000, 30), dtype=np.float32)
    B = rng.standard_normal((30, 12), dtype=np.float32)
    out = _host_rows.matmul_into(np.empty((7000, 12), np.float32), A, B)
    np.testing.assert_allclose(out, A @ B, rtol=1e-5, atol=1e-5)


def test_map_rows_returns_results_in_range_order():
    got = _host_rows.map_rows(lambda a, b: (a, b), 10_000, workers=4)
    assert got == _host_rows.row_ranges(10_000, 4)
