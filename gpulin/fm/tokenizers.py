"""Tokenizers from an AnnData (or a cells x genes count matrix) to FM input tokens.

All tokenizers read the CSR rows directly (never densify the cells x genes matrix) and are
vectorised NumPy: one sort of the stored entries per chunk of cells, no Python loop over cells.
Only positive stored entries count as expressed.

Vocabulary mapping. The FM encoders have random weights, so a gene's identity does not change the
inference time. Gene ``j`` of the AnnData (its column position) gets the token id
``n_special + j % (vocab_size - n_special)`` (:func:`gene_token_ids`); ids below ``n_special`` are
the model's special tokens and id 0 is always padding.

Orders are computed on float32 values (the AnnData dtype of counts); exact ties are broken by the
gene's column index (ascending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from .._backend import CPU
from .._validation import as_csr, check_counts, check_int
from .configs import FMConfig

PAD_ID = 0
_VALUE_BITS = 31  # positive float32 bit patterns are < 2**31 and ordered like the values


@dataclass
class TokenBatch:
    """Tokens of a batch of cells, padded to a common length.

    Attributes
    ----------
    ids : ndarray of int64, shape (n_cells, seq_len)
        Token ids; 0 is padding.
    lengths : ndarray of int64, shape (n_cells,)
        Number of real (non-padding) tokens per cell.
    values : ndarray of float32, shape (n_cells, seq_len), or None
        Per-token value (scGPT: value bin; TranscriptFormer: clipped count; encoding benchmark:
        raw count or value bin); None for models without a value input.
    """

    ids: np.ndarray
    lengths: np.ndarray
    values: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def counts_matrix(data: Any, layer: str | None = None, *, check: bool = True) -> scipy.sparse.csr_matrix:
    """The raw-count matrix of an AnnData (``X`` or ``layers[layer]``) as canonical CSR.

    Parameters
    ----------
    data : AnnData or array or sparse matrix
        Cells x genes raw counts.
    layer : str, optional
        AnnData layer holding the counts (default ``X``).
    check : bool
        Check the values (False: rows of a matrix checked already, e.g. the batches of
        :func:`gpulin.fm.embed`, which would repeat its warnings once per batch).

    Returns
    -------
    scipy.sparse.csr_matrix
        No copy when the input already is canonical CSR.

    Raises
    ------
    ValueError
        Negative or non-finite values (non-integer values warn).
    """
    from ..embed import get_matrix, is_anndata

    if is_anndata(data):
        X = get_matrix(data, layer)  # backed AnnData read into memory; a missing layer named
    else:
        if layer is not None:
            raise ValueError("layer= needs an AnnData input.")
        X = data
    name = "X" if layer is None else f"layers[{layer!r}]"
    csr = as_csr(X, CPU, name=name)
    if check:
        check_counts(csr, CPU, name=name, method="tokenization")  # negative / NaN / inf: a clear error
    return csr


def gene_token_ids(n_genes: int, vocab_size: int, n_special: int) -> np.ndarray:
    """Vocabulary id of each gene (column position modulo the gene vocabulary).

    Parameters
    ----------
    n_genes : int
        Number of genes (columns).
    vocab_size : int
        Size of the model's token table, special tokens included.
    n_special : int
        Reserved ids at the start of the vocabulary.

    Returns
    -------
    ndarray of int64, shape (n_genes,)
    """
    if vocab_size <= n_special:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for genes after {n_special} specials.")
    return n_special + np.arange(n_genes, dtype=np.int64) % (vocab_size - n_special)


def expressed_per_cell(X: scipy.sparse.csr_matrix) -> np.ndarray:
    """Positive stored entries (expressed genes) per row of a CSR matrix, int64 (n_cells,)."""
    return np.bincount(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[X.data > 0], minlength=X.shape[0])


def _expressed(X: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and value of the positive stored entries, in CSR order, and counts per row."""
    n = X.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(X.indptr))
    vals = X.data
    pos = vals > 0
    if not pos.all():
        rows, cols, vals = rows[pos], X.indices[pos], vals[pos]
    else:
        cols = X.indices
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    return rows, cols.astype(np.int64, copy=False), vals, counts


def _row_starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _max_rows_per_chunk(n_genes: int) -> int:
    gene_bits = max(1, int(n_genes - 1).bit_length())
    row_bits = 63 - _VALUE_BITS - gene_bits
    if row_bits < 1:
        raise ValueError(f"Too many genes ({n_genes}) for the packed sort key.")
    return 1 << row_bits


def _pack(rows: np.ndarray, key31: np.ndarray | int, cols: np.ndarray, n_genes: int) -> np.ndarray:
    """Packed int64 sort key ``(row, key31, column)``; unique per entry, so sorting is deterministic.

    ``rows`` must be below :func:`_max_rows_per_chunk`; ``key31`` is a non-negative int64 < 2**31.
    """
    gene_bits = max(1, int(n_genes - 1).bit_length())
    return (rows << (_VALUE_BITS + gene_bits)) | (key31 << gene_bits) | cols


def _unpack(key: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`_pack`: (rows, key31, cols)."""
    gene_bits = max(1, int(n_genes - 1).bit_length())
    return (key >> (_VALUE_BITS + gene_bits), (key >> gene_bits) & ((1 << _VALUE_BITS) - 1),
            key & ((1 << gene_bits) - 1))


def _desc_key(values: np.ndarray) -> np.ndarray:
    """31-bit key whose ascending order is the descending order of positive ``values``."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return (1 << _VALUE_BITS) - 1 - bits


def _asc_key(values: np.ndarray) -> np.ndarray:
    """31-bit key whose ascending order is the ascending order of positive ``values``."""
    return np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)


def _key_value(key31: np.ndarray) -> np.ndarray:
    """The float32 value (as float64) encoded by :func:`_asc_key`."""
    return key31.astype(np.int32).view(np.float32).astype(np.float64)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# --------------------------------------------------------------------------------------------
# Geneformer rank-value encoding
# --------------------------------------------------------------------------------------------
def gene_nonzero_medians(data: Any, layer: str | None = None, target_sum: float = 1e4, *,
                         check: bool = True) -> np.ndarray:
    """Per-gene median of the nonzero library-size-normalised expression (Geneformer's dictionary).

    Parameters
    ----------
    data : AnnData or sparse matrix
        Raw counts, cells x genes.
    layer : str, optional
        AnnData layer with the counts.
    target_sum : float
        Each cell is scaled to this total before taking medians.
    check : bool
        Check the counts (False: checked already).

    Returns
    -------
    ndarray of float64, shape (n_genes,)
        Median over the cells expressing the gene; 1.0 for genes never expressed.
    """
    X = counts_matrix(data, layer, check=check)
    rows, cols, vals, _ = _expressed(X)
    lib = np.bincount(rows, weights=vals, minlength=X.shape[0])
    norm = vals / lib[rows] * target_sum
    n_genes = X.shape[1]
    s = norm[np.argsort((cols << 32) | _asc_key(norm))]  # by gene, then value
    per_gene = np.bincount(cols, minlength=n_genes)
    starts = _row_starts(per_gene)
    med = np.ones(n_genes, dtype=np.float64)
    has = per_gene > 0
    lo = starts[has] + (per_gene[has] - 1) // 2
    hi = starts[has] + per_gene[has] // 2
    med[has] = 0.5 * (s[lo] + s[hi])
    return med


def tokenize_geneformer(
    data: Any,
    *,
    max_tokens: int = 2048,
    gene_medians: np.ndarray | None = None,
    vocab_size: int = 25_426,
    n_special: int = 2,
    cls_eos: bool = False,
    layer: str | None = None,
    check: bool = True,
    target_sum: float = 1e4,
) -> TokenBatch:
    """Geneformer rank-value encoding.

    Counts are divided by the cell's library size (scaled to ``target_sum``) and by the gene's
    nonzero median; the expressed genes are ordered by that value, descending, and the first
    ``max_tokens`` are kept (``max_tokens - 2`` with ``<cls>``/``<eos>``, Geneformer V2). Cells
    are padded with 0 to the longest cell of the batch.

    Parameters
    ----------
    data : AnnData or sparse matrix
        Raw counts, cells x genes.
    max_tokens : int
        2048 (V1) or 4096 (V2).
    gene_medians : ndarray, optional
        Per-gene nonzero medians; computed from ``data`` when omitted
        (:func:`gene_nonzero_medians`).
    vocab_size, n_special : int
        Token table size and reserved ids (V1: pad 0, mask 1; V2 adds cls 2, eos 3).
    cls_eos : bool
        Prepend ``<cls>`` (id 2) and append ``<eos>`` (id 3).
    layer : str, optional
        AnnData layer with the counts.
    check : bool
        Check the counts (False: checked already).
    target_sum : float
        Library-size normalisation target (does not change the order).

    Returns
    -------
    TokenBatch
        ``values`` is None (the order carries the expression).
    """
    check_int("max_tokens", max_tokens, 3 if cls_eos else 1)
    X = counts_matrix(data, layer, check=check)
    n, n_genes = X.shape
    if gene_medians is None:
        gene_medians = gene_nonzero_medians(X, target_sum=target_sum, check=False)
    gene_medians = np.asarray(gene_medians, dtype=np.float64)
    if gene_medians.shape != (n_genes,):
        raise ValueError(f"gene_medians has shape {gene_medians.shape}, expected ({n_genes},).")
    bad = ~(np.isfinite(gene_medians) & (gene_medians > 0))
    if bad.any():
        raise ValueError(f"gene_medians must be positive and finite (they divide the expression); "
                         f"{int(bad.sum())} are not, e.g. gene {int(np.flatnonzero(bad)[0])}: "
                         f"{gene_medians[bad][0]}.")
    gids = gene_token_ids(n_genes, vocab_size, n_special)
    extra = 2 if cls_eos else 0
    k = max_tokens - extra
    rows, cols, vals, counts = _expressed(X)
    lengths = np.minimum(counts, k) + extra
    ids = np.zeros((n, max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
    lib = np.bincount(rows, weights=vals, minlength=n)
    starts = _row_starts(counts)
    step = _max_rows_per_chunk(n_genes)
    for a, b in _chunks(n, step):
        lo, hi = starts[a], starts[b - 1] + counts[b - 1]
        r, c, v = rows[lo:hi] - a, cols[lo:hi], vals[lo:hi]
        score = v / lib[r + a] * target_sum / gene_medians[c]
        rs, _, cs = _unpack(np.sort(_pack(r, _desc_key(score), c, n_genes)), n_genes)
        rank = np.arange(hi - lo, dtype=np.int64) - (starts[a:b] - lo)[rs]
        keep = rank < k
        ids[rs[keep] + a, rank[keep] + (1 if cls_eos else 0)] = gids[cs[keep]]
    if cls_eos:
        ids[:, 0] = 2
        ids[np.arange(n), lengths - 1] = 3
    return TokenBatch(ids=ids, lengths=lengths)


# --------------------------------------------------------------------------------------------
# per-cell value binning (scGPT)
# --------------------------------------------------------------------------------------------
def _quantile_edges(sorted_vals: np.ndarray, starts: np.ndarray, counts: np.ndarray, n_edges: int) -> np.ndarray:
    """Per-row ``np.quantile(row, np.linspace(0, 1, n_edges))`` (linear method) of sorted rows."""
    q = np.linspace(0, 1, n_edges)
    virtual = (counts[:, None] - 1) * q[None, :]
    prev = np.floor(virtual)
    gamma = virtual - prev
    prev = prev.astype(np.int64)
    last = np.maximum(counts - 1, 0)[:, None]
    prev = np.clip(prev, 0, last)
    nxt = np.minimum(prev + 1, last)
    a = sorted_vals[np.minimum(starts[:, None] + prev, len(sorted_vals) - 1)]
    b = sorted_vals[np.minimum(starts[:, None] + nxt, len(sorted_vals) - 1)]
    diff = b - a
    out = a + diff * gamma
    upper = gamma >= 0.5
    out[upper] = (b - diff * (1 - gamma))[upper]
    return out


def bin_values_per_cell(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    counts: np.ndarray,
    n_genes: int,
    n_bins: int = 51,
    select: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """scGPT per-cell value binning of expressed entries.

    For each cell the ``n_bins - 1`` edges are the quantiles ``linspace(0, 1, n_bins - 1)`` of its
    expressed values, and a value gets ``np.digitize(value, edges)`` in ``1 .. n_bins - 1`` (bin 0
    is reserved for zero): scGPT's ``binning`` with ``side="one"``, where ties all go to the
    highest bin they span. With ``rng``, scGPT's default ``side="both"``: a value with ``R``
    edges below it and ``L`` edges at or below it gets ``ceil(R + u (L - R))``, ``u ~ U[0, 1)``
    from ``rng``, which spreads count data's many ties over their bins. Values are compared in
    float32 (exact for counts).

    Parameters
    ----------
    rows, cols, vals : ndarray
        Expressed entries in CSR order (rows starting at 0, ascending).
    counts : ndarray
        Expressed entries per row.
    n_genes : int
        Number of columns.
    n_bins : int
        Bins including the zero bin (51 for scGPT).
    select : ndarray of bool, optional
        Only these entries are digitised (the edges still use all expressed values); the others
        get 0.
    rng : Generator, optional
        Random source of ``side="both"`` (None: ``side="one"``).

    Returns
    -------
    ndarray of int64
        Bin of each entry, aligned with ``vals``.
    """
    n_edges = n_bins - 1
    out = np.zeros(len(vals), dtype=np.int64)
    starts = _row_starts(counts)
    n = len(counts)
    step = _max_rows_per_chunk(n_genes)
    for a, b in _chunks(n, step):
        lo, hi = starts[a], starts[b - 1] + counts[b - 1]
        if hi == lo:
            continue
        r, c = rows[lo:hi] - a, cols[lo:hi]
        v = np.asarray(vals[lo:hi], dtype=np.float32).astype(np.float64)
        _, vk, _ = _unpack(np.sort(_pack(r, _asc_key(v), c, n_genes)), n_genes)
        edges = _quantile_edges(_key_value(vk), starts[a:b] - lo, counts[a:b], n_edges)
        # digitize: number of edges <= value, in blocks to bound memory (block x n_edges)
        idx = np.arange(hi - lo) if select is None else np.flatnonzero(select[lo:hi])
        blk = max(1, 4_000_000 // n_edges)
        for s in range(0, len(idx), blk):
            i = idx[s: s + blk]
            left = (edges[r[i]] <= v[i, None]).sum(axis=1)
            if rng is None:
                out[lo + i] = left
            else:
                right = (edges[r[i]] < v[i, None]).sum(axis=1)
                out[lo + i] = np.maximum(np.ceil(right + rng.random(len(i)) * (left - right)), 1).astype(np.int64)  # u = 0: bin 1, not 0
    return out


def tokenize_expressed(
    data: Any,
    *,
    max_genes: int = 1024,
    n_bins: int | None = None,
    cls: bool = False,
    vocab_size: int = 23_829,
    n_special: int = 2,
    pad_value: float = 0.0,
    rng: np.random.Generator | int | None = 0,
    layer: str | None = None,
    check: bool = True,
    scgpt_ties: bool = False,
) -> TokenBatch:
    """Expressed genes with their values, at most ``max_genes`` per cell, in gene order.

    Used by scGPT (``max_genes=1199, n_bins=51, cls=True``) and by the encoding-benchmark
    encoders. Cells with more expressed genes than ``max_genes`` keep a uniform random subset
    (without replacement; scGPT's sampling), drawn from ``rng``.

    Parameters
    ----------
    data : AnnData or sparse matrix
        Raw counts, cells x genes.
    max_genes : int
        Gene tokens per cell at most (the ``<cls>`` token is extra).
    n_bins : int, optional
        Replace values by per-cell quantile bins (:func:`bin_values_per_cell`, computed over all
        expressed genes of the cell before subsetting). None keeps the raw counts.
    cls : bool
        Prepend ``<cls>`` (id 1) with value 0.
    vocab_size, n_special : int
        Token table size and reserved ids (pad 0, cls 1, ...).
    pad_value : float
        Value at padding positions.
    rng : Generator or int or None
        Random source for the subsetting.
    layer : str, optional
        AnnData layer with the counts.
    check : bool
        Check the counts (False: checked already).
    scgpt_ties : bool
        Bin tied values as scGPT does (``side="both"``: each value drawn uniformly among the bins
        its ties span, from ``rng``) instead of all into the highest of them.

    Returns
    -------
    TokenBatch
    """
    check_int("max_genes", max_genes, 1)
    X = counts_matrix(data, layer, check=check)
    n, n_genes = X.shape
    rng = np.random.default_rng(rng)
    gids = gene_token_ids(n_genes, vocab_size, n_special)
    rows, cols, vals, counts = _expressed(X)
    starts = _row_starts(counts)
    rank = np.arange(len(rows), dtype=np.int64) - starts[rows]
    keep = rank < max_genes
    if (counts > max_genes).any():
        # uniform subset without replacement: the max_genes smallest random keys of the row
        over = (counts > max_genes)[rows]
        step = _max_rows_per_chunk(n_genes)
        for a, b in _chunks(n, step):
            lo, hi = starts[a], starts[b - 1] + counts[b - 1]
            sub = np.flatnonzero(over[lo:hi]) + lo
            if len(sub) == 0:
                continue
            r, c = rows[sub] - a, cols[sub]
            key = np.sort(_pack(r, rng.integers(0, 1 << _VALUE_BITS, len(sub)), c, n_genes))
            rs, _, cs = _unpack(key, n_genes)
            rk = np.arange(len(sub)) - _row_starts(np.bincount(r, minlength=b - a))[rs]
            # back to CSR positions: (row, col) codes of ``sub`` are sorted (canonical CSR)
            chosen = np.searchsorted(_pack(r, 0, c, n_genes), _pack(rs, 0, cs, n_genes)[rk < max_genes])
            keep[sub] = False
            keep[sub[chosen]] = True
        # positions are re-counted among kept entries (gene order is preserved)
        kept_rows = rows[keep]
        kept_counts = np.bincount(kept_rows, minlength=n)
        pos = np.arange(len(kept_rows), dtype=np.int64) - _row_starts(kept_counts)[kept_rows]
    else:
        kept_rows, pos = rows, rank
    values = (bin_values_per_cell(rows, cols, vals, counts, n_genes, n_bins, select=keep,
                                  rng=rng if scgpt_ties else None) if n_bins else vals)
    off = 1 if cls else 0
    lengths = np.minimum(counts, max_genes) + off
    T = max(int(lengths.max(initial=0)), 1)
    ids = np.zeros((n, T), dtype=np.int64)
    vals_out = np.full((n, T), pad_value, dtype=np.float32)
    ids[kept_rows, pos + off] = gids[cols[keep]]
    vals_out[kept_rows, pos + off] = values[keep]
    if cls:
        ids[:, 0] = 1
        vals_out[:, 0] = 0.0
    return TokenBatch(ids=ids, lengths=lengths, values=vals_out)


def tokenize_scgpt(
    data: Any,
    *,
    max_tokens: int = 1200,
    n_bins: int = 51,
    vocab_size: int = 60_697,
    n_special: int = 3,
    rng: np.random.Generator | int | None = 0,
    layer: str | None = None,
    check: bool = True,
) -> TokenBatch:
    """scGPT input: ``<cls>`` then up to ``max_tokens - 1`` expressed genes with 51-bin values.

    Values are per-cell quantile bins 1..50 of the expressed genes (0 is reserved for zero;
    :func:`bin_values_per_cell`, ties spread over their bins at random as scGPT's default
    ``side="both"``); the ``<cls>`` token (id 1) has value 0; padding (id 0) has
    value -2 (scGPT's ``pad_value``). See :func:`tokenize_expressed`.

    Returns
    -------
    TokenBatch
    """
    check_int("max_tokens", max_tokens, 2)  # <cls> and at least one gene
    return tokenize_expressed(
        data, max_genes=max_tokens - 1, n_bins=n_bins, cls=True, vocab_size=vocab_size,
        n_special=n_special, pad_value=-2.0, rng=rng, layer=layer, check=check, scgpt_ties=True,
    )


# --------------------------------------------------------------------------------------------
# TranscriptFormer count tokens
# --------------------------------------------------------------------------------------------
def tokenize_transcriptformer(
    data: Any,
    *,
    max_tokens: int = 2048,
    clip: float = 30.0,
    vocab_size: int = 23_829,
    n_special: int = 4,
    pad_to_max: bool = True,
    layer: str | None = None,
    check: bool = True,
) -> TokenBatch:
    """TranscriptFormer input: expressed genes (AnnData gene order) with counts clipped at ``clip``.

    Zeros are dropped and the expressed genes kept in their column order; cells with more than
    ``max_tokens`` expressed genes keep the first ``max_tokens``. Every cell is padded to
    ``max_tokens`` (``pad_to_max``), as TranscriptFormer does. Special ids: pad 0, start 1, end 2,
    cell 3.

    Returns
    -------
    TokenBatch
        ``values`` holds the clipped counts (0 at padding).
    """
    check_int("max_tokens", max_tokens, 1)
    X = counts_matrix(data, layer, check=check)
    n, n_genes = X.shape
    gids = gene_token_ids(n_genes, vocab_size, n_special)
    rows, cols, vals, counts = _expressed(X)
    rank = np.arange(len(rows), dtype=np.int64) - _row_starts(counts)[rows]
    keep = rank < max_tokens
    lengths = np.minimum(counts, max_tokens)
    T = max_tokens if pad_to_max else max(int(lengths.max(initial=0)), 1)
    ids = np.zeros((n, T), dtype=np.int64)
    values = np.zeros((n, T), dtype=np.float32)
    ids[rows[keep], rank[keep]] = gids[cols[keep]]
    values[rows[keep], rank[keep]] = np.minimum(vals[keep], clip)
    return TokenBatch(ids=ids, lengths=lengths, values=values)


# --------------------------------------------------------------------------------------------
# UCE expression-weighted sampling
# --------------------------------------------------------------------------------------------
def synthetic_chromosomes(n_genes: int, n_chromosomes: int = 24) -> np.ndarray:
    """Deterministic synthetic chromosome of each gene (a multiplicative hash of its position).

    Gene ``j`` lies on chromosome ``((j * 2654435761) mod 2**32) mod n_chromosomes`` at genomic
    position ``j``. Real positions only change which genes share a chromosome, not the cost.

    Returns
    -------
    ndarray of int64, shape (n_genes,)
    """
    j = np.arange(n_genes, dtype=np.uint64)
    return ((j * np.uint64(2654435761)) % np.uint64(1 << 32) % np.uint64(n_chromosomes)).astype(np.int64)


def tokenize_uce(
    data: Any,
    *,
    n_sample: int = 1024,
    max_tokens: int = 1536,
    vocab_size: int = 145_469,
    n_chromosomes: int = 24,
    rng: np.random.Generator | int | None = 0,
    layer: str | None = None,
    check: bool = True,
) -> TokenBatch:
    """UCE input: 1024 genes sampled by expression, grouped by chromosome, ``<cls>`` first.

    Per cell, ``n_sample`` genes are drawn with replacement with probability proportional to
    ``log1p(count)`` (UCE's weights ``log1p(counts) / sum(log1p(counts))``). The chromosomes
    present are visited in a random per-cell order (UCE shuffles them); each group is
    ``<chr_start_c>, genes by position..., <chr_end>``. Special ids: pad 0, cls 1, chr_end 2,
    chr_start ``3 + c``; genes from ``3 + n_chromosomes`` (:func:`synthetic_chromosomes`).
    Cells are padded to the batch maximum (at most ``1 + n_sample + 2 * n_chromosomes``).
    Same ``rng`` seed, same tokens.

    Returns
    -------
    TokenBatch
        ``values`` is None.
    """
    check_int("n_sample", n_sample, 1)
    check_int("max_tokens", max_tokens, 1)
    X = counts_matrix(data, layer, check=check)
    n, n_genes = X.shape
    rng = np.random.default_rng(rng)
    n_special = 3 + n_chromosomes
    gids = gene_token_ids(n_genes, vocab_size, n_special)
    chrom = synthetic_chromosomes(n_genes, n_chromosomes)
    if 1 + n_sample + 2 * n_chromosomes > max_tokens:
        raise ValueError("n_sample + chromosome tokens exceed max_tokens.")
    rows, cols, vals, counts = _expressed(X)
    starts = _row_starts(counts)
    w = np.log1p(np.asarray(vals, dtype=np.float64))
    cw = np.cumsum(w)
    before = np.zeros(n)
    nz = counts > 0
    before[nz] = (cw[starts[nz]] - w[starts[nz]])
    total = np.bincount(rows, weights=w, minlength=n)
    key = rows + (cw - before[rows]) / total[rows]  # row r occupies (r, r + 1]
    u = rng.random((n, n_sample))
    idx = np.searchsorted(key, (np.arange(n)[:, None] + u).ravel(), side="right").reshape(n, n_sample)
    idx = np.clip(idx, starts[:, None], np.maximum(starts + counts - 1, starts)[:, None])
    chrom_rank = np.argsort(rng.random((n, n_chromosomes)), axis=1).argsort(axis=1)
    if len(cols) == 0:
        ids = np.zeros((n, 1), dtype=np.int64)
        ids[:, 0] = 1
        return TokenBatch(ids=ids, lengths=np.ones(n, dtype=np.int64))
    sampled = cols[np.minimum(idx, len(cols) - 1)]
    cell = np.arange(n)[:, None]
    order_key = np.sort((chrom_rank[cell, chrom[sampled]] << 32) | sampled, axis=1)
    g = order_key & 0xFFFFFFFF
    ch = chrom[g]
    is_start = np.ones_like(ch, dtype=bool)
    is_start[:, 1:] = ch[:, 1:] != ch[:, :-1]
    is_end = np.ones_like(ch, dtype=bool)
    is_end[:, :-1] = is_start[:, 1:]
    group = np.cumsum(is_start, axis=1) - 1
    j = np.arange(n_sample)[None, :]
    pos = 2 + j + 2 * group  # after <cls> and this group's <chr_start>
    n_groups = group[:, -1] + 1
    lengths = np.where(nz, 1 + n_sample + 2 * n_groups, 1).astype(np.int64)
    ids = np.zeros((n, int(lengths.max())), dtype=np.int64)
    rr = np.broadcast_to(cell, pos.shape)
    m = np.broadcast_to(nz[:, None], pos.shape)
    ids[rr[m], pos[m]] = gids[g[m]]
    s = is_start & m
    ids[rr[s], pos[s] - 1] = 3 + ch[s]
    e = is_end & m
    ids[rr[e], pos[e] + 1] = 2
    ids[:, 0] = 1
    return TokenBatch(ids=ids, lengths=lengths)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def expected_lengths(cfg: FMConfig, data: Any, layer: str | None = None, *, check: bool = True) -> np.ndarray:
    """Token length of each cell for ``cfg`` without tokenizing (used to sort cells by length).

    UCE lengths depend on the sampling; they are returned as the upper bound. ``check``: as
    :func:`tokenize`.
    """
    X = counts_matrix(data, layer, check=check)
    counts = expressed_per_cell(X)
    if cfg.tokenizer == "geneformer" or (cfg.tokenizer == "expressed" and cfg.rank_order):
        extra = 2 if cfg.cls_eos else 0
        return np.minimum(counts, cfg.max_tokens - extra) + extra
    if cfg.tokenizer == "scgpt":
        return np.minimum(counts, cfg.max_tokens - 1) + 1
    if cfg.tokenizer == "expressed":
        return np.minimum(counts, cfg.n_sample)
    if cfg.tokenizer == "transcriptformer":
        return np.full(X.shape[0], cfg.max_tokens)
    return np.full(X.shape[0], 1 + cfg.n_sample + 2 * cfg.n_chromosomes)


def tokenize(
    cfg: FMConfig,
    data: Any,
    *,
    gene_medians: np.ndarray | None = None,
    rng: np.random.Generator | int | None = 0,
    layer: str | None = None,
    check: bool = True,
) -> TokenBatch:
    """Tokenize ``data`` for the model described by ``cfg``.

    Parameters
    ----------
    cfg : FMConfig
        Model configuration; its ``tokenizer`` field selects the tokenizer.
    data : AnnData or sparse matrix
        Raw counts, cells x genes.
    gene_medians : ndarray, optional
        Geneformer per-gene medians (computed from ``data`` when omitted).
    rng : Generator or int or None
        Random source (scGPT / encoding subsetting and tie binning, UCE sampling).
    layer : str, optional
        AnnData layer with the counts.
    check : bool
        Check the counts (negative, non-finite, non-integer values); False when ``data`` was
        checked already (:func:`gpulin.fm.embed` checks once, then tokenizes its batches).

    Returns
    -------
    TokenBatch
    """
    if cfg.tokenizer == "geneformer" or (cfg.tokenizer == "expressed" and cfg.rank_order):
        return tokenize_geneformer(
            data, max_tokens=cfg.max_tokens, gene_medians=gene_medians, vocab_size=cfg.vocab_size,
            n_special=cfg.n_special, cls_eos=cfg.cls_eos, layer=layer, check=check,
        )
    if cfg.tokenizer == "scgpt":
        return tokenize_scgpt(
            data, max_tokens=cfg.max_tokens, n_bins=cfg.n_value_bins, vocab_size=cfg.vocab_size,
            n_special=cfg.n_special, rng=rng, layer=layer, check=check,
        )
    if cfg.tokenizer == "transcriptformer":
        return tokenize_transcriptformer(
            data, max_tokens=cfg.max_tokens, vocab_size=cfg.vocab_size, n_special=cfg.n_special,
            pad_to_max=cfg.pad_to_max, layer=layer, check=check,
        )
    if cfg.tokenizer == "uce":
        return tokenize_uce(
            data, n_sample=cfg.n_sample, max_tokens=cfg.max_tokens, vocab_size=cfg.vocab_size,
            n_chromosomes=cfg.n_chromosomes, rng=rng, layer=layer, check=check,
        )
    if cfg.tokenizer == "expressed":
        return tokenize_expressed(
            data, max_genes=cfg.n_sample, n_bins=cfg.n_value_bins if cfg.expression_encoder == "hard_bin" else None,
            vocab_size=cfg.vocab_size, n_special=cfg.n_special, rng=rng, layer=layer, check=check,
        )
    raise ValueError(f"Unknown tokenizer {cfg.tokenizer!r}.")
