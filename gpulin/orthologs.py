"""Rename genes across species through a one-to-one ortholog table."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ._warnings import warn_user

__all__ = ["map_orthologs", "ortholog_names"]


def _read_table(table: pd.DataFrame | str | os.PathLike, source_col: str, target_col: str) -> pd.DataFrame:
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Ortholog table not found: {path!r}.")
        sep = "\t" if path.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        missing = [c for c in (source_col, target_col) if c not in header]
        if missing:
            raise ValueError(f"Ortholog table has no column(s) {missing}; available columns: {list(map(str, header))}.")
        table = pd.read_csv(path, sep=sep, usecols=[source_col, target_col], dtype=str)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame or a CSV/TSV path, got {type(table).__name__}.")
    missing = [c for c in (source_col, target_col) if c not in table.columns]
    if missing:
        raise ValueError(
            f"Ortholog table has no column(s) {missing}; available columns: {list(map(str, table.columns))}."
        )
    if source_col == target_col:
        raise ValueError(f"source_col and target_col are the same column ({source_col!r}).")
    pairs = table[[source_col, target_col]].dropna().astype(str)
    pairs = pairs[(pairs[source_col].to_numpy() != "") & (pairs[target_col].to_numpy() != "")]
    return pairs.drop_duplicates()


def ortholog_names(
    var_names: Any,
    table: pd.DataFrame | str | os.PathLike,
    source_col: str,
    target_col: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The renaming of :func:`map_orthologs` without touching any data.

    Parameters
    ----------
    var_names : sequence of str
        Gene names in the source species.
    table, source_col, target_col
        As in :func:`map_orthologs` (a warning when fewer than 10% of the genes map).

    Returns
    -------
    targets : numpy.ndarray of object, shape (n_genes,)
        The target-species name of each gene (meaningful where ``keep``).
    keep : numpy.ndarray of bool, shape (n_genes,)
        The genes with an unambiguous one-to-one ortholog.
    stats : dict
        The counts of :func:`map_orthologs` (``uns["map_orthologs"]``).

    Raises
    ------
    ValueError
        Missing columns, or no gene maps.
    """
    pairs = _read_table(table, source_col, target_col)
    src, tgt = pairs[source_col], pairs[target_col]
    # one row per source name (the first); ambiguity is judged on all rows. A last sentinel entry
    # is what genes absent from the table (row -1) index.
    first = ~src.duplicated().to_numpy()
    src_amb = np.append(src.duplicated(keep=False).to_numpy()[first], False)
    tgt_amb = np.append(tgt.duplicated(keep=False).to_numpy()[first], False)
    tgt_first = np.append(tgt.to_numpy()[first], "").astype(object)

    genes = pd.Index(var_names).astype(str)
    row = pd.Index(src.to_numpy()[first]).get_indexer(genes)  # -1: not in the table
    in_table = row >= 0
    dup_gene = genes.duplicated(keep=False)
    is_amb_src = in_table & (src_amb[row] | dup_gene)
    targets = np.where(in_table, tgt_first[row], "").astype(object)
    is_amb_tgt = ~is_amb_src & in_table & tgt_amb[row]
    unmapped = ~in_table
    keep = ~is_amb_src & ~is_amb_tgt & ~unmapped

    stats = {
        "n_input_genes": int(len(genes)),
        "n_mapped": int(keep.sum()),
        "n_dropped_ambiguous_source": int(is_amb_src.sum()),
        "n_dropped_ambiguous_target": int(is_amb_tgt.sum()),
        "n_unmapped": int(unmapped.sum()),
    }
    if stats["n_mapped"] == 0:
        example = ", ".join(map(repr, list(genes[:3])))
        table_example = ", ".join(map(repr, list(src.iloc[:3])))
        raise ValueError(
            f"No gene maps through the ortholog table ({source_col!r} -> {target_col!r}): "
            f"{stats['n_unmapped']} of {stats['n_input_genes']} genes are absent from the table, "
            f"{stats['n_dropped_ambiguous_source'] + stats['n_dropped_ambiguous_target']} ambiguous. "
            f"Genes look like [{example}], table {source_col!r} like [{table_example}]: "
            "check the species direction and the gene identifier type (symbols vs Ensembl IDs)."
        )

    if stats["n_mapped"] < 0.1 * stats["n_input_genes"]:
        warn_user(
            f"Only {stats['n_mapped']} of {stats['n_input_genes']} genes map through the ortholog table "
            f"({source_col!r} -> {target_col!r}); check that source_col names the genes' species (are the "
            "columns swapped?) and the gene identifier type.",
            UserWarning,
        )
    return targets, keep, stats


def map_orthologs(
    adata: Any,
    table: pd.DataFrame | str | os.PathLike,
    source_col: str,
    target_col: str,
) -> Any:
    """Rename the genes of ``adata`` through a one-to-one ortholog table.

    The table's ``source_col`` holds gene names of ``adata``'s species (matched exactly against
    ``adata.var_names``) and ``target_col`` the names to map them to. Only unambiguous one-to-one
    pairs are used: rows with a missing name are ignored, repeated identical rows count once, and
    every row of a source gene listed with more than one target, or of a target listed with more
    than one source, is dropped (ambiguity is judged on the whole table). Genes of ``adata``
    without a usable pair are dropped.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes, genes named in the source species. Not modified.
    table : pandas.DataFrame or path
        The ortholog table, or a CSV (TSV for ``.tsv`` / ``.txt``) file holding it.
    source_col, target_col : str
        Columns of the source-species and target-species gene names.

    Returns
    -------
    anndata.AnnData
        A new object with the mapped genes only, in their original order, named in the target
        species (``var_names``); ``X``, layers, ``var``, ``varm`` are sliced by column (sparse
        stays sparse; ``obs`` and ``obsm`` are copied). ``var[source_col]`` keeps the original
        names, and ``uns["map_orthologs"]`` counts ``n_input_genes``, ``n_mapped``,
        ``n_dropped_ambiguous_source`` (genes whose name maps to more than one target, or that
        are in the table but occur more than once in ``var_names``), ``n_dropped_ambiguous_target`` (genes whose
        target is also the ortholog of another source gene) and ``n_unmapped`` (genes absent
        from the table); the four parts add up to ``n_input_genes``.

    Raises
    ------
    ValueError
        Missing columns, or no gene of ``adata`` maps.
    """
    targets, keep, stats = ortholog_names(adata.var_names, table, source_col, target_col)
    genes = pd.Index(adata.var_names).astype(str)
    idx = np.flatnonzero(keep)
    out = adata[:, idx].copy()
    old_names = genes[idx]
    out.var[source_col] = np.asarray(old_names, dtype=object)
    out.var_names = pd.Index(targets[idx].astype(str), name=adata.var_names.name)
    out.uns["map_orthologs"] = stats
    return out
