"""Tests of gpulin.datasets: the synthetic atlas generator and the shared-data loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import gpulin.datasets as ds
from gpulin.datasets import (
    data_dir,
    has_shared,
    load_orthologs,
    load_shared,
    shared_path,
    synthetic_atlas,
)

N_CELLS, N_GENES = 3000, 2000


@pytest.fixture(scope="module")
def atlas():
    return synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=0)


def _lognorm(adata) -> np.ndarray:
    """Dense log1p(CP10k) (small test matrices only)."""
    X = adata.X.toarray().astype(np.float64)
    X /= X.sum(axis=1, keepdims=True)
    return np.log1p(1e4 * X)


# ------------------------------------------------------------------------------ structure


def test_shape_format_dtypes(atlas):
    X = atlas.X
    assert atlas.shape == (N_CELLS, N_GENES)
    assert scipy.sparse.issparse(X) and X.format == "csr"
    assert X.dtype == np.float32
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int32
    X.check_format(full_check=True)
    assert X.has_canonical_format  # sorted, no duplicates


def test_counts_integer_positive(atlas):
    d = atlas.X.data
    assert np.all(d > 0)
    assert np.array_equal(d, np.round(d))
    assert d.max() < 1e6


def test_density_in_range(atlas):
    dens = atlas.X.nnz / (N_CELLS * N_GENES)
    lo, hi = atlas.uns["synthetic_atlas"]["density"]
    assert (lo, hi) == (0.03, 0.10)
    assert lo <= dens <= hi
    # tuned to the geometric mean of the range, within the pilot's Monte-Carlo error
    assert abs(dens / np.sqrt(lo * hi) - 1) < 0.1
    assert atlas.uns["synthetic_atlas"]["realized_density"] == pytest.approx(dens)


def test_custom_density_range():
    a = synthetic_atlas(n_cells=500, n_genes=1000, density=(0.15, 0.2), seed=3)
    assert 0.15 <= a.X.nnz / a.X.shape[0] / a.X.shape[1] <= 0.2


def test_no_empty_cells_and_obs_counts(atlas):
    sums = np.asarray(atlas.X.sum(axis=1)).ravel()
    assert sums.min() > 0
    assert np.array_equal(atlas.obs["n_counts"].to_numpy(), sums.astype(np.int64))
    assert np.array_equal(atlas.obs["n_genes"].to_numpy(), np.diff(atlas.X.indptr))


def test_library_sizes_vary_about_tenfold(atlas):
    n = atlas.obs["n_counts"].to_numpy()
    ratio = np.quantile(n, 0.975) / np.quantile(n, 0.025)
    assert 5 < ratio < 40


def test_obs_var_annotations(atlas):
    obs, var = atlas.obs, atlas.var
    assert list(atlas.obs_names[:3]) == ["cell_0", "cell_1", "cell_2"]
    assert atlas.obs_names[-1] == f"cell_{N_CELLS - 1}"
    assert list(atlas.var_names[:2]) == ["gene_00000", "gene_00001"]
    assert atlas.var_names.is_unique and atlas.obs_names.is_unique
    for col in ("cell_type", "condition", "species", "donor"):
        assert isinstance(obs[col].dtype, pd.CategoricalDtype), col
    assert list(obs["cell_type"].cat.categories) == [f"type_{i:02d}" for i in range(12)]
    assert list(obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert list(obs["species"].cat.categories) == ["human", "mouse"]
    assert obs["donor"].nunique() == 6
    # donors are nested in species
    for donor, sp in obs.groupby("donor", observed=True)["species"].unique().items():
        assert len(sp) == 1 and donor.startswith(sp[0])
    assert set(var["species_specific"].unique()) == {"both", "human", "mouse"}
    assert (var["species_specific"] == "both").mean() > 0.9
    assert var["baseline_fraction"].sum() == pytest.approx(1.0, rel=1e-4)
    assert (var["dispersion"] > 0).all()
    uns = atlas.uns["synthetic_atlas"]
    for key in ("n_cells", "n_genes", "n_types", "n_conditions", "n_species", "density", "seed",
                "chunk_size", "dtype", "library_size_median", "type_frequencies"):
        assert key in uns, key
    assert uns["seed"] == 0 and uns["n_types"] == 12 and uns["dtype"] == "float32"


def test_unbalanced_types(atlas):
    counts = atlas.obs["cell_type"].value_counts()
    assert counts["type_00"] > 4 * counts["type_11"]
    assert (counts > 0).all()
    # conditions and species roughly balanced
    for col in ("condition", "species"):
        frac = atlas.obs[col].value_counts(normalize=True)
        assert frac.min() > 0.4


def test_h5ad_round_trip(tmp_path):
    import anndata

    a = synthetic_atlas(n_cells=200, n_genes=500, seed=4)
    path = tmp_path / "atlas.h5ad"
    a.write_h5ad(path)
    b = anndata.read_h5ad(path)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert b.uns["synthetic_atlas"]["seed"] == 4


# ------------------------------------------------------------------------------ determinism


def test_deterministic_for_seed(atlas):
    again = synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=0)
    assert (again.X != atlas.X).nnz == 0
    pd.testing.assert_frame_equal(again.obs, atlas.obs)
    pd.testing.assert_frame_equal(again.var, atlas.var)


def test_different_seeds_differ(atlas):
    other = synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=1)
    assert (other.X != atlas.X).nnz > 0
    assert not other.obs["cell_type"].equals(atlas.obs["cell_type"])
    assert not np.array_equal(other.var["marker_of"], atlas.var["marker_of"])


def test_independent_of_chunk_size_and_threads(atlas):
    a = synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=0, chunk_size=257, n_jobs=1)
    b = synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=0, chunk_size=10**6, n_jobs=3)
    for x in (a, b):
        assert (x.X != atlas.X).nnz == 0
        pd.testing.assert_frame_equal(x.obs, atlas.obs)


def test_output_growth_path(monkeypatch, atlas):
    # reserve far too little so that the output arrays have to grow; same result
    monkeypatch.setattr(ds, "_CAPACITY_FACTOR", 0.01)
    a = synthetic_atlas(n_cells=N_CELLS, n_genes=N_GENES, seed=0)
    assert (a.X != atlas.X).nnz == 0


def test_dtype_option():
    a = synthetic_atlas(n_cells=300, n_genes=500, seed=2)
    b = synthetic_atlas(n_cells=300, n_genes=500, seed=2, dtype=np.int32)
    assert b.X.dtype == np.int32
    assert np.array_equal(a.X.data, b.X.data.astype(np.float32))


# ------------------------------------------------------------------------------ biology


def test_cell_types_separable(atlas):
    L = _lognorm(atlas)
    types = atlas.obs["cell_type"].to_numpy()
    marker_of = atlas.var["marker_of"].to_numpy()
    for t in atlas.obs["cell_type"].cat.categories:
        genes = marker_of == t
        assert genes.sum() >= 3
        inside = L[types == t][:, genes].mean()
        outside = L[types != t][:, genes].mean()
        assert inside > 1.5 * outside, (t, inside, outside)
    # per cell, the highest mean marker score names the type far above chance (majority class
    # ~0.32). With 2000 genes a cell has only ~110 non-zeros; with 20k genes this is ~0.99.
    cats = list(atlas.obs["cell_type"].cat.categories)
    score = np.stack([L[:, marker_of == t].mean(axis=1) for t in cats], axis=1)
    acc = (np.asarray(cats)[score.argmax(axis=1)] == types).mean()
    assert acc > 0.55, acc


def test_condition_effect(atlas):
    L = _lognorm(atlas)
    stim = (atlas.obs["condition"] == "stim").to_numpy()
    resp = (atlas.var["response_to"] == "stim").to_numpy()
    assert resp.sum() >= 3
    for t in ("type_00", "type_05"):
        in_t = (atlas.obs["cell_type"] == t).to_numpy()
        up = L[in_t & stim][:, resp].mean() - L[in_t & ~stim][:, resp].mean()
        assert up > 0.5, (t, up)
    # non-responders do not move much
    other = ~resp & (atlas.var["marker_of"] == "").to_numpy()
    shift = L[stim][:, other].mean() - L[~stim][:, other].mean()
    assert abs(shift) < 0.1


def test_species_specific_genes(atlas):
    X = atlas.X.tocsc()
    sp = atlas.obs["species"].to_numpy()
    for own, other in (("human", "mouse"), ("mouse", "human")):
        genes = np.flatnonzero((atlas.var["species_specific"] == own).to_numpy())
        assert genes.size > 0
        sub = X[:, genes]
        assert sub[sp == other].nnz == 0
        assert sub[sp == own].nnz > 0


def test_single_species_single_condition():
    a = synthetic_atlas(n_cells=400, n_genes=600, n_types=3, n_conditions=1, n_species=1, seed=5)
    assert list(a.obs["condition"].cat.categories) == ["ctrl"]
    assert list(a.obs["species"].cat.categories) == ["human"]
    assert (a.var["species_specific"] == "both").all()
    assert (a.var["response_to"] == "").all()
    assert a.obs["cell_type"].nunique() == 3


@pytest.mark.parametrize("path", ["thinning", "direct"])
@pytest.mark.parametrize("n_programs", [1, 3], ids=["one-program", "mixed-programs"])
def test_negative_binomial_moments(n_programs, path):
    """The compound-Poisson sampler reproduces NB means, variances and zero fractions, by
    thinning (library size below the number of genes: here padded with never-expressed genes)
    and gene by gene (deeper cells), with cells of several programs interleaved in a block
    (processed grouped by program and written back in cell order)."""
    from gpulin import _nb_sampler

    pad = 400 if path == "thinning" else 0  # library sizes are ~350 counts
    mu = np.concatenate(([0.01, 0.2, 1.0, 5.0, 40.0, 0.0, 300.0], np.zeros(pad)))
    r = np.concatenate(([0.5, 2.0, 3.0, 1.0, 10.0, 1.0, 2.0], np.ones(pad))).astype(np.float32)
    G = mu.size
    # program k scales the genes' means by a permutation of its own; library size = sum of mu
    scales = np.ones((3, G))
    scales[1, :7] = [2.0, 0.5, 1.0, 3.0, 0.25, 1.0, 0.1]
    scales[2] = 0.5
    scales = scales[:n_programs]
    mus = mu * scales
    q = mus / mus.sum(axis=1, keepdims=True)
    q_over_r = (q / r).astype(np.float32)
    prob, alias = _nb_sampler.alias_tables(q_over_r.astype(np.float64) * r)
    tab = _nb_sampler.packed_tables(q_over_r, prob, alias)
    n = 40_000
    combo = np.arange(n) % n_programs
    lib = mus.sum(axis=1)[combo]
    rng = np.random.default_rng(7)
    deep = np.array([_nb_sampler.direct(x, G) for x in lib])
    assert deep.all() == (path == "direct") and deep.any() == (path == "direct")
    n_cand = rng.poisson(lib).astype(np.int64)
    scratch = _nb_sampler.scratch_arrays(_nb_sampler.capacity(lib, n_cand, G), G)
    counts, cols, row_nnz, row_counts = _nb_sampler.sample_block(rng, tab, tab.view(np.int32), r, combo, lib, n_cand, scratch)
    indptr = np.concatenate(([0], np.cumsum(row_nnz)))
    X = scipy.sparse.csr_matrix((counts, cols, indptr), shape=(n, G))
    assert X.has_canonical_format  # genes ascending, no duplicates
    X = X.toarray()
    assert np.array_equal(X.sum(axis=1), row_counts) and (X[:, 5] == 0).all() and (X[:, 7:] == 0).all()
    X = X[:, :7]
    mus, r = mus[:, :7], r[:7]
    for k in range(n_programs):
        Xk, m = X[combo == k], mus[k]
        nk = Xk.shape[0]
        var = m + m**2 / r
        assert np.all(np.abs(Xk.mean(axis=0) - m) <= 4.5 * np.sqrt(var / nk))
        keep = m >= 0.1  # (sample variances of rarer counts are too noisy at this n)
        np.testing.assert_allclose(Xk.var(axis=0)[keep], var[keep], rtol=0.15)
        p0 = (r / (r + m)) ** r
        np.testing.assert_allclose((Xk == 0).mean(axis=0), p0, atol=0.012)
    assert not scratch[2].any() and not scratch[3].any()  # work arrays left zeroed for the next block


def test_alias_tables_are_exact():
    """The alias tables imply exactly the given gene distribution; zero-probability genes are never drawn."""
    from gpulin import _nb_sampler

    q = np.random.default_rng(0).gamma(0.3, 1.0, (4, 61))
    q[:, ::7] = 0.0
    q /= q.sum(axis=1, keepdims=True)
    prob, alias = _nb_sampler.alias_tables(q)
    G = q.shape[1]
    for k in range(q.shape[0]):
        implied = prob[k] / G
        np.add.at(implied, alias[k], (1.0 - prob[k]) / G)
        np.testing.assert_allclose(implied, q[k], atol=1e-15)
        assert implied[q[k] == 0].max() == 0.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="density"):
        synthetic_atlas(n_cells=10, n_genes=500, density=(0.2, 0.1))
    with pytest.raises(ValueError, match="density"):
        synthetic_atlas(n_cells=10, n_genes=500, density=(0.0, 0.1))
    with pytest.raises(ValueError, match="too small"):
        synthetic_atlas(n_cells=10, n_genes=30, n_types=12)
    with pytest.raises(ValueError, match="n_cells must be an int >= 1, got 0"):
        synthetic_atlas(n_cells=0)
    with pytest.raises(ValueError, match="dtype"):
        synthetic_atlas(n_cells=10, n_genes=500, dtype=object)
    for kw, match in ((dict(seed=-1), "seed must be an int >= 0"), (dict(n_cells=2.5), "n_cells must be an int"),
                      (dict(n_jobs=0), "n_jobs must be an int >= 1"), (dict(chunk_size=0), "chunk_size")):
        with pytest.raises(ValueError, match=match):
            synthetic_atlas(**{"n_cells": 10, "n_genes": 500, **kw})


# ------------------------------------------------------------------------------ loaders


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPULIN_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert shared_path("kang") == tmp_path / "kang_ifnb_muscat" / "kang_muscat_counts.h5ad"
    assert not has_shared("kang")


def test_data_dir_default(monkeypatch):
    monkeypatch.delenv("GPULIN_DATA_DIR", raising=False)
    repo_root = Path(ds.__file__).resolve().parent.parent
    assert data_dir() == (repo_root.parent / "shared" / "data").resolve()


def test_loaders_missing_data(monkeypatch, tmp_path):
    monkeypatch.setenv("GPULIN_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GPULIN_DATA_DIR"):
        load_shared("baron_human")
    with pytest.raises(FileNotFoundError, match="GPULIN_DATA_DIR"):
        load_orthologs()
    with pytest.raises(KeyError, match="unknown shared data set"):
        load_shared("no_such_data")


def _need(name: str) -> None:
    if not has_shared(name):
        pytest.skip(f"shared data {name!r} not found at {shared_path(name)} (set GPULIN_DATA_DIR)")


@pytest.mark.parametrize(
    "name, shape, label",
    [
        ("baron_human", (2142, 20125), "cell_type1"),
        ("baron_mouse", (1886, 14877), "cell_type1"),
        ("kang", (1556, 1267), "group_id"),
    ],
)
def test_load_shared_real(name, shape, label):
    _need(name)
    a = load_shared(name)
    assert a.shape == shape
    assert label in a.obs.columns


def test_load_orthologs_real():
    _need("orthologs")
    df = load_orthologs()
    assert {"human.gene.name", "gene.name"} <= set(df.columns)
    assert len(df) == 16597


def test_narrow_dtypes_that_cannot_hold_the_counts_are_refused():
    with pytest.raises(ValueError, match=r"dtype=int8 cannot hold the count \d+ exactly \(largest: 127\)"):
        synthetic_atlas(300, n_genes=2000, seed=0, dtype=np.int8)


def test_float16_counts_are_refused_clearly():
    with pytest.raises(ValueError, match="float16 is not supported by scipy.sparse"):
        synthetic_atlas(20, 30, dtype=np.float16)
