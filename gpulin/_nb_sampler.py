"""Compiled negative-binomial count sampler of the synthetic atlas (:func:`gpulin.datasets.synthetic_atlas`).

The count of gene ``g`` in cell ``c`` is negative binomial with mean ``mu_g = L_c q_g`` (library
size times the cell's normalized program) and inverse dispersion ``r_g``. It is drawn exactly
through the compound-Poisson form of the negative binomial::

    X_g = Y_1 + ... + Y_N,   N ~ Poisson(lam_g),  lam_g = r_g log(1 + x_g),  x_g = mu_g / r_g,
                             Y_i ~ Logarithmic(p_g),  p_g = x_g / (1 + x_g),

whose probability generating function is the NB one. The clusters of a cell (the ``N`` over all
genes) form a Poisson process of rate ``lam_g`` on the genes, drawn by thinning: ``lam_g <= mu_g``
(``log(1 + x) <= x``), so candidates are drawn from the process of rate ``mu_g`` (``Poisson(L_c)``
of them, each on gene ``g`` with probability ``q_g``, by Walker's alias method) and each is kept
with probability ``lam_g / mu_g = log(1 + x_g) / x_g``. The work per cell is proportional to its
library size (about 1,900 candidates at the atlas defaults) instead of the number of genes. Cells
whose library size exceeds the number of genes take the direct route instead (:func:`direct`):
one ``Poisson(lam_g)`` cluster count per gene. Exact up to the float32 rounding of the rates and
of the alias thresholds.

Every draw comes from the NumPy ``Generator`` passed in (Numba runs NumPy's own PCG64 stream and
distributions), in a fixed order, so a block's counts depend only on its generator's seed; the
functions release the GIL, so blocks run in parallel threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def alias_tables(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker / Vose alias tables of each row of ``q`` (n_rows, n_genes), rows summing to > 0.

    Returns ``prob`` (float64) and ``alias`` (int32), both (n_rows, n_genes): draw ``j``
    uniformly, keep it with probability ``prob[j]``, else take ``alias[j]``. Genes with
    ``q = 0`` are never drawn (their ``prob`` is 0 and no alias points to them).
    """
    n_rows, G = q.shape
    prob = np.zeros((n_rows, G))
    alias = np.zeros((n_rows, G), dtype=np.int32)
    scaled = np.empty(G)
    small = np.empty(G, dtype=np.int64)
    large = np.empty(G, dtype=np.int64)
    for k in range(n_rows):
        total = 0.0
        for g in range(G):
            total += q[k, g]
        ns = nl = 0
        for g in range(G):
            scaled[g] = q[k, g] * G / total
            if scaled[g] < 1.0:
                small[ns] = g
                ns += 1
            else:
                large[nl] = g
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            s = small[ns]
            l = large[nl - 1]
            prob[k, s] = scaled[s]
            alias[k, s] = l
            scaled[l] = (scaled[l] + scaled[s]) - 1.0
            if scaled[l] < 1.0:
                nl -= 1
                small[ns] = l
                ns += 1
        # Leftovers hold probability 1 up to rounding: they keep themselves, except genes with
        # q = 0, which point to the most likely gene.
        best = np.argmax(q[k])
        for i in range(nl):
            prob[k, large[i]] = 1.0
            alias[k, large[i]] = large[i]
        for i in range(ns):
            g = small[i]
            if q[k, g] > 0.0:
                prob[k, g] = 1.0
                alias[k, g] = g
            else:
                prob[k, g] = 0.0
                alias[k, g] = best
    return prob, alias


@njit(cache=True, nogil=True, inline="always")
def direct(lib: float, n_genes: int) -> bool:
    """Whether a cell is sampled gene by gene (one Poisson cluster count per gene) rather than by
    thinning: when its library size exceeds the number of genes, where the ~``lib`` candidates
    would cost more than a pass over the genes."""
    return lib > n_genes


@njit(cache=True, nogil=True)
def capacity(lib: np.ndarray, n_cand: np.ndarray, n_genes: int) -> int:
    """Non-zeros a block can produce at most: ``min(candidates, genes)`` per thinned cell (each
    non-zero needs a kept candidate), ``genes`` per directly sampled one."""
    total = 0
    for c in range(lib.size):
        total += n_genes if direct(lib[c], n_genes) else min(n_cand[c], n_genes)
    return total


def scratch_arrays(candidates: int, n_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Work arrays of :func:`sample_block` for up to ``candidates`` non-zeros per block (:func:`capacity`)."""
    return (
        np.empty(candidates, dtype=np.int64),
        np.empty(candidates, dtype=np.int32),
        np.zeros(n_genes, dtype=np.int64),
        np.zeros(n_genes // 64 + 1, dtype=np.uint64),
    )


def packed_tables(q_over_r: np.ndarray, prob: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """One 16-byte record per (program, slot) for :func:`sample_block`: ``(prob, alias,
    q_over_r[slot], q_over_r[alias])`` as float32 / int32 / float32 / float32, so that a
    candidate reads one cache line. Returned as float32 (n_combo, n_genes, 4); the alias field
    holds int32 bits (read through an int32 view)."""
    n, G = q_over_r.shape
    tab = np.empty((n, G, 4), dtype=np.float32)
    tab[:, :, 0] = prob
    tab.view(np.int32)[:, :, 1] = alias
    tab[:, :, 2] = q_over_r
    tab[:, :, 3] = np.take_along_axis(q_over_r, alias.astype(np.int64), axis=1)
    return tab


#: De Bruijn sequence and table: the index of a 64-bit word's single set bit ``b`` is
#: ``_DEBRUIJN64[(b * _DEBRUIJN_MUL) >> 58]`` (multiplication modulo 2**64).
_DEBRUIJN_MUL = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN64 = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _DEBRUIJN64[(((1 << _i) * 0x03F79D71B4CB0A89) % 2**64) >> 58] = _i
del _i


@njit(cache=True, nogil=True, inline="always")
def _logseries(rng: np.random.Generator, p: float, log1p_x: float) -> int:
    """A Logarithmic(p) draw for ``p = x / (1 + x)``: NumPy's ``random_logseries`` (Kemp's
    algorithm, the same uniforms in the same order) with ``log(1 - p) = -log1p(x)`` passed in
    rather than recomputed, and taken only when the first uniform does not settle the draw."""
    while True:
        v = rng.random()
        if v >= p:
            return 1
        u = rng.random()
        q = -math.expm1(-log1p_x * u)
        if v <= q * q:
            result = int(math.floor(1.0 + math.log(v) / math.log(q)))
            if result < 1 or v == 0.0:
                continue
            return result
        if v >= q:
            return 1
        return 2


@njit(cache=True, nogil=True)
def sample_block(
    rng: np.random.Generator,
    tab: np.ndarray,
    tab_int: np.ndarray,
    r: np.ndarray,
    combo: np.ndarray,
    lib: np.ndarray,
    n_cand: np.ndarray,
    scratch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Negative-binomial counts of one block of cells, as CSR pieces.

    Cells are processed grouped by program (a stable order of ``combo``), so each program's
    tables stay in cache; the results are written back in the cells' order.

    Parameters
    ----------
    rng : numpy.random.Generator
        The block's generator, right after drawing ``n_cand``; consumed cell by cell in program
        order.
    tab, tab_int : (n_combo, n_genes, 4)
        :func:`packed_tables` and its int32 view.
    r : (n_genes,) float32
        Inverse dispersion per gene (for the cells sampled gene by gene, :func:`direct`).
    combo : (n_rows,) int64
        Program row of each cell.
    lib : (n_rows,) float64
        Library size (expected total count) of each cell.
    n_cand : (n_rows,) int64
        Candidates per cell, ``Poisson(lib)`` (drawn by the caller from ``rng``; unused for the
        cells sampled gene by gene).
    scratch : tuple
        Work arrays reused across blocks (:func:`scratch_arrays`; fresh pages are costly):
        int64 and int32 arrays of at least :func:`capacity` entries, an int64 array of
        ``n_genes`` zeros and a uint64 bitmap of ``n_genes`` bits (both left zeroed).

    Returns
    -------
    counts : (nnz,) int64
        Non-zero counts, row-major, genes ascending within a row.
    cols : (nnz,) int32
        Gene of each non-zero.
    row_nnz : (n_rows,) int64
        Non-zeros per cell.
    row_counts : (n_rows,) int64
        Total count per cell.
    """
    B = combo.size
    n_genes = tab.shape[1]
    # acc: this cell's count per gene; touched: bitmap of its genes (both reset after each cell)
    tmp_counts, tmp_cols, acc, touched = scratch
    start = np.empty(B, dtype=np.int64)
    row_nnz = np.zeros(B, dtype=np.int64)
    row_counts = np.zeros(B, dtype=np.int64)
    pos = 0
    for c in np.argsort(combo, kind="mergesort"):
        k = combo[c]
        L = lib[c]
        m = 0
        if direct(L, n_genes):  # deep cell: one Poisson cluster count per gene, in gene order
            s = 0
            for g in range(n_genes):
                x = L * tab[k, g, 2]
                if not x > 0.0:
                    continue
                log1p_x = math.log1p(x)
                n_clusters = rng.poisson(r[g] * log1p_x)
                if n_clusters == 0:
                    continue
                y = 0
                for _ in range(n_clusters):
                    y += _logseries(rng, x / (1.0 + x), log1p_x)
                tmp_cols[pos + m] = g
                tmp_counts[pos + m] = y
                s += y
                m += 1
            start[c] = pos
            row_nnz[c] = m
            row_counts[c] = s
            pos += m
            continue
        for _ in range(n_cand[c]):
            u = rng.random() * n_genes
            j = min(int(u), n_genes - 1)
            if u - j < tab[k, j, 0]:  # alias method: slot j, or its alias
                g = j
                x = L * tab[k, j, 2]  # mu / r
            else:
                g = tab_int[k, j, 1]
                x = L * tab[k, j, 3]
            if not x > 0.0:
                continue
            log1p_x = math.log1p(x)
            if rng.random() >= log1p_x / x:  # thinning: keep with lam / mu
                continue
            y = _logseries(rng, x / (1.0 + x), log1p_x)  # cluster size
            if acc[g] == 0:
                touched[g >> 6] |= np.uint64(1) << np.uint64(g & 63)
                m += 1
            acc[g] += y
        # genes in ascending order from the bitmap (4x faster than sorting ~1,100 of 20k genes)
        s = 0
        i = pos
        for w_i in range(touched.size):
            w = touched[w_i]
            while w != 0:
                low = w & (~w + np.uint64(1))  # lowest set bit
                g = (w_i << 6) + _DEBRUIJN64[(low * _DEBRUIJN_MUL) >> np.uint64(58)]
                tmp_cols[i] = g
                tmp_counts[i] = acc[g]
                s += acc[g]
                acc[g] = 0
                i += 1
                w ^= low
            touched[w_i] = 0
        start[c] = pos
        row_nnz[c] = m
        row_counts[c] = s
        pos += m
    counts = np.empty(pos, dtype=np.int64)
    cols = np.empty(pos, dtype=np.int32)
    out = 0
    for c in range(B):
        a = start[c]
        for i in range(row_nnz[c]):
            counts[out + i] = tmp_counts[a + i]
            cols[out + i] = tmp_cols[a + i]
        out += row_nnz[c]
    return counts, cols, row_nnz, row_counts
