"""gpulin.map_orthologs: one-to-one renaming, ambiguity on both sides, counts, real Baron table."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from gpulin.orthologs import map_orthologs

DATA_DIR = Path(os.environ.get("GPULIN_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
BARON = DATA_DIR / "baron_pancreas"
TABLE = BARON / "orthologs_1to1_human2mouse.csv"
needs_baron = pytest.mark.skipif(
    not (TABLE.exists() and (BARON / "baron_human.h5ad").exists() and (BARON / "baron_mouse.h5ad").exists()),
    reason=f"Baron pancreas data not found under {BARON} (set GPULIN_DATA_DIR)",
)


@pytest.fixture()
def small():
    genes = ["G1", "AMB_S", "T1", "T2", "G5", "NOPE", "DUPROW", "G8"]
    rng = np.random.default_rng(0)
    X = scipy.sparse.random(6, len(genes), density=0.5, format="csr", random_state=1, dtype=np.float32)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"cell_type": list("aabbcc")}, index=[f"c{i}" for i in range(6)]),
        var=pd.DataFrame({"score": np.arange(len(genes), dtype=float)}, index=genes),
    )
    adata.layers["counts"] = X.copy() * 2
    adata.varm["loadings"] = rng.normal(size=(len(genes), 3))
    adata.uns["note"] = "keep me"
    table = pd.DataFrame(
        {
            "src": ["G1", "AMB_S", "AMB_S", "T1", "T2", "G5", "DUPROW", "DUPROW", None, "G8", "OTHER"],
            "dst": ["g1", "x", "y", "shared", "shared", "g5", "dup", "dup", "g9", np.nan, "g_other"],
            "extra": range(11),
        }
    )
    return adata, table


def test_small_table_counts_names_and_data(small):
    adata, table = small
    before = adata.copy()
    out = map_orthologs(adata, table, "src", "dst")
    # G1, G5, DUPROW map; AMB_S -> 2 targets; T1, T2 -> same target; NOPE absent; G8 has a NaN target
    assert list(out.var_names) == ["g1", "g5", "dup"]
    assert out.uns["map_orthologs"] == {
        "n_input_genes": 8,
        "n_mapped": 3,
        "n_dropped_ambiguous_source": 1,
        "n_dropped_ambiguous_target": 2,
        "n_unmapped": 2,
    }
    stats = out.uns["map_orthologs"]
    parts = ("n_mapped", "n_dropped_ambiguous_source", "n_dropped_ambiguous_target", "n_unmapped")
    assert sum(stats[k] for k in parts) == 8
    cols = [0, 4, 6]
    assert scipy.sparse.issparse(out.X)
    np.testing.assert_array_equal(out.X.toarray(), adata.X[:, cols].toarray())
    np.testing.assert_array_equal(out.layers["counts"].toarray(), adata.layers["counts"][:, cols].toarray())
    np.testing.assert_array_equal(out.varm["loadings"], adata.varm["loadings"][cols])
    assert list(out.var["src"]) == ["G1", "G5", "DUPROW"]
    np.testing.assert_array_equal(out.var["score"], [0.0, 4.0, 6.0])
    assert out.obs.equals(adata.obs)
    assert out.uns["note"] == "keep me"
    # the input is untouched
    assert list(adata.var_names) == list(before.var_names)
    np.testing.assert_array_equal(adata.X.toarray(), before.X.toarray())
    assert "map_orthologs" not in adata.uns and "src" not in adata.var


def test_dense_csv_path_and_duplicated_var_names(small, tmp_path):
    adata, table = small
    path = tmp_path / "orthologs.csv"
    table.to_csv(path, index=False)
    dense = ad.AnnData(X=adata.X.toarray(), var=adata.var.copy())
    out = map_orthologs(dense, path, "src", "dst")
    assert list(out.var_names) == ["g1", "g5", "dup"]
    assert isinstance(out.X, np.ndarray)
    tsv = tmp_path / "orthologs.tsv"
    table.to_csv(tsv, index=False, sep="\t")
    assert list(map_orthologs(dense, tsv, "src", "dst").var_names) == ["g1", "g5", "dup"]
    # a gene name that occurs twice in adata cannot be renamed one-to-one
    with pytest.warns(UserWarning, match="not unique"):  # anndata warns about the non-unique names
        dup = ad.AnnData(X=np.ones((2, 3), dtype=np.float32), var=pd.DataFrame(index=["G1", "G1", "G5"]))
    out = map_orthologs(dup, table, "src", "dst")
    assert list(out.var_names) == ["g5"]
    assert out.uns["map_orthologs"]["n_dropped_ambiguous_source"] == 2


def test_errors(small, tmp_path):
    adata, table = small
    with pytest.raises(ValueError, match="no column"):
        map_orthologs(adata, table, "human", "dst")
    with pytest.raises(ValueError, match="No gene maps through"):
        map_orthologs(adata, table, "dst", "src")  # wrong direction
    with pytest.raises(ValueError, match="No gene maps through"):  # no usable pair at all
        map_orthologs(adata, pd.DataFrame({"src": [None, ""], "dst": ["g1", "g2"]}), "src", "dst")
    with pytest.raises(FileNotFoundError):
        map_orthologs(adata, tmp_path / "missing.csv", "src", "dst")
    with pytest.raises(TypeError):
        map_orthologs(adata, {"src": ["G1"], "dst": ["g1"]}, "src", "dst")


@needs_baron
def test_baron_human_to_mouse_and_back():
    human = ad.read_h5ad(BARON / "baron_human.h5ad")
    mouse = ad.read_h5ad(BARON / "baron_mouse.h5ad")
    h2m = map_orthologs(human, TABLE, "human.gene.name", "gene.name")
    stats = h2m.uns["map_orthologs"]
    assert stats["n_input_genes"] == human.n_vars
    assert stats["n_mapped"] == h2m.n_vars == 14860
    assert stats["n_mapped"] + stats["n_unmapped"] + stats["n_dropped_ambiguous_source"] + stats[
        "n_dropped_ambiguous_target"
    ] == human.n_vars
    assert h2m.var_names.is_unique
    # pipeline.md section 4: 11674 one-to-one orthologs shared between the two datasets
    assert len(h2m.var_names.intersection(mouse.var_names)) == 11674
    assert h2m.n_obs == human.n_obs and scipy.sparse.issparse(h2m.X)
    gene = h2m.var["human.gene.name"].iloc[100]
    np.testing.assert_array_equal(
        h2m.X[:, 100].toarray(), human.X[:, human.var_names.get_loc(gene)].toarray()
    )
    m2h = map_orthologs(mouse, pd.read_csv(TABLE), "gene.name", "human.gene.name")
    assert len(m2h.var_names.intersection(human.var_names)) == 11674


@needs_baron
def test_swapped_columns_warn():
    mouse = ad.read_h5ad(BARON / "baron_mouse.h5ad")
    with pytest.warns(UserWarning, match=r"Only \d+ of 14877 genes map.*columns swapped"):
        map_orthologs(mouse, TABLE, "human.gene.name", "gene.name")


def test_ortholog_names_is_the_renaming_of_map_orthologs(small):
    from gpulin.orthologs import ortholog_names

    adata, table = small
    targets, keep, stats = ortholog_names(adata.var_names, table, "src", "dst")
    out = map_orthologs(adata, table, "src", "dst")
    assert list(targets[keep]) == list(out.var_names)
    assert stats == out.uns["map_orthologs"]
    assert keep.tolist() == [True, False, False, False, True, False, True, False]
