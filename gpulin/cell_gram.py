"""The cells x cells Gram matrix ``A A^T`` of a standardized operator, dense genes and rare genes apart.

A per-split classifier fit (``solver="sklearn"``, a few thousand cells and up to 20,000 genes)
runs its power rounds on ``H = A A^T`` (:func:`gpulin.pca._rounds_on_sketch_gram`). As a dense
float32 SYRK, ``H`` costs ``n^2 G / 2`` multiply-adds whatever the genes. Single-cell genes are
mostly rare: on Baron human, 58% of the genes are detected in fewer than 5% of the cells. Their
columns are

    A_L = (D_L + c 1^T - 1 mu_L^T) diag(w_L) = E + c u^T - 1 v^T

with ``E = D_L diag(w_L)`` sparse, ``u = w_L`` and ``v = mu_L w_L``, so

    A_L A_L^T = E E^T + (E u) c^T + c (E u)^T - (E v) 1^T - 1 (E v)^T
                + (u.u) c c^T - (u.v) (c 1^T + 1 c^T) + (v.v) 1 1^T

where ``E E^T`` costs the sum over those genes of their squared nonzero counts
(:func:`gpulin._cpu_kernels.add_sparse_cell_gram`) and the rest is rank 4 (float64 throughout). The
other genes go through the dense SYRK. Products ``A^T V`` (the loadings, once per fit) take the
dense tile for the dense genes and a sparse product for the rare ones.

Host only: on a GPU the dense SYRK of a few thousand cells takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .implicit import GeneScaling, SparsePlusRowConstant, StandardizedOperator

#: Genes detected in fewer than this share of the cells are "rare". Cost model (2-core Xeon): a
#: dense gene costs n^2 / 2 multiply-adds at ~95 GMAC/s per core in SYRK, a rare one nnz^2
#: scattered multiply-adds at ~1.5 ns, even at a share of ~6%. Measured (whole Gram matrix, two
#: threads / one): 1,500 Baron human cells x 20,125 genes 135/199 ms at 2%, 128/177 ms at 5%,
#: 144/182 ms at 8%, 171/220 ms at 12%; 2,142 cells x 11,674 ortholog genes 195/295, 183/257,
#: 195/265, 234/316 ms (a dense SYRK over all genes: ~270 ms on one core for the 1,500 cells).
RARE_GENE_DENSITY = 0.05
#: ... and the split is used when at least this share of the genes is rare.
MIN_RARE_SHARE = 0.1


@dataclass
class DenseAndRareGenes:
    """A standardized operator's columns as two operators: ``dense`` (a gene subset of the
    original, materialized as one dense tile) and ``rare`` (its own CSR with only those columns).

    Attributes
    ----------
    dense, rare : StandardizedOperator
    dense_cols, rare_cols : numpy.ndarray of int64
        Their columns among the original operator's columns.
    tile : numpy.ndarray, float32 (n_cells, len(dense_cols)) or None
        The dense genes' standardized values, once :meth:`gram` has formed them.
    """

    dense: StandardizedOperator
    rare: StandardizedOperator
    dense_cols: np.ndarray
    rare_cols: np.ndarray
    tile: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.dense.shape[0], len(self.dense_cols) + len(self.rare_cols)

    def gram(self, max_dense_bytes: int) -> np.ndarray | None:
        """``A A^T`` (float32, (n_cells, n_cells); each entry's dense part from a float32 SYRK, the
        rest summed in float64); None when the dense genes' tile would take more than
        ``max_dense_bytes``."""
        from ._cpu_kernels import add_sparse_cell_gram

        self.tile = self.dense.dense(max_dense_bytes)
        if self.tile is None:
            return None
        H = self.tile @ self.tile.T
        rare = self.rare
        w = np.asarray(rare.inv_scale, dtype=np.float64)
        mu_w = np.asarray(rare.mean, dtype=np.float64) * w
        c = np.asarray(rare.S.c, dtype=np.float64)
        E = _stacked_csr(rare.S) @ _diag(w)
        Eu, Ev = E @ w, E @ mu_w
        ones = np.ones_like(c)
        uu, uv, vv = w @ w, w @ mu_w, mu_w @ mu_w
        # the rank-4 terms as sum_q left[:, q] right[:, q]^T
        left = np.stack([Eu, c, Ev, ones], axis=1)
        right = np.stack([c, Eu + uu * c - uv * ones, -ones, -Ev - uv * c + vv * ones], axis=1)
        return add_sparse_cell_gram(H, E, left, right, rare.workers)

    def rmatmat(self, U: Any) -> np.ndarray:
        """``A^T @ U`` (float32, (n_genes, k)): the dense genes from the tile, the rare ones sparse."""
        U = np.asarray(U)
        out = np.empty((self.shape[1], U.shape[1]), dtype=np.float32)
        dense = self.tile.T @ U.astype(np.float32) if self.tile is not None else self.dense.rmatmat(U)
        out[self.dense_cols] = dense
        out[self.rare_cols] = self.rare.rmatmat(U)
        return out


def split_rare_genes(op: StandardizedOperator, density: float = RARE_GENE_DENSITY) -> DenseAndRareGenes | None:
    """The columns of a host ``op`` split into dense and rare genes (detected in fewer than
    ``density`` of the cells), or None when the operator is on a GPU or runs the generic products
    (``op.cpu_kernels`` off: the split uses compiled kernels), or fewer than
    :data:`MIN_RARE_SHARE` of its genes are rare."""
    if not isinstance(op, StandardizedOperator) or op.backend.is_gpu or not op.cpu_kernels:
        return None
    S = op.S
    n = S.shape[0]
    detected = np.zeros(S.n_genes, dtype=np.int64)
    for _, _, blk, _ in S.iter_blocks():
        detected += np.bincount(blk.indices, minlength=S.n_genes)
    cols_of_S = np.arange(S.n_genes) if op.genes is None else np.asarray(op.genes)
    rare = detected[cols_of_S] < density * n
    if rare.sum() < MIN_RARE_SHARE * len(cols_of_S) or rare.all():
        return None
    dense_cols, rare_cols = np.flatnonzero(~rare), np.flatnonzero(rare)
    full = _scaling_over_all_genes(op)
    dense = StandardizedOperator(S, full, cols_of_S[dense_cols])
    from ._cpu_kernels import csr_take_columns

    pos = np.full(S.n_genes, -1, dtype=np.int64)  # the rare genes' columns in their own CSR
    pos[cols_of_S[rare_cols]] = np.arange(len(rare_cols))
    rare_S = SparsePlusRowConstant(
        blocks=[csr_take_columns(blk, pos, len(rare_cols), op.workers) for blk in S.blocks], row_starts=S.row_starts,
        c=S.c, n_genes=len(rare_cols), backend=S.backend,
    )
    rare_op = StandardizedOperator(rare_S, full.subset(cols_of_S[rare_cols]))
    return DenseAndRareGenes(dense, rare_op, dense_cols, rare_cols)


def _scaling_over_all_genes(op: StandardizedOperator) -> GeneScaling:
    """A :class:`GeneScaling` over all genes of ``op.S`` that matches ``op`` on its columns (the
    genes ``op`` leaves out get mean 0 and scale 1; nothing reads them)."""
    if op.genes is None:
        return GeneScaling(op.mean, op.scale, op.var, op.shape[0])
    G = op.S.n_genes
    genes = np.asarray(op.genes)
    mean, scale, var = np.zeros(G), np.ones(G), np.zeros(G)
    mean[genes], scale[genes], var[genes] = op.mean, op.scale, op.var
    return GeneScaling(mean, scale, var, op.shape[0])


def _stacked_csr(S: SparsePlusRowConstant) -> Any:
    import scipy.sparse as sp

    blocks = [sp.csr_matrix(b, dtype=np.float64) for b in S.blocks]
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")


def _diag(w: np.ndarray) -> Any:
    import scipy.sparse as sp

    return sp.diags(w, format="csr")


__all__ = ["DenseAndRareGenes", "MIN_RARE_SHARE", "RARE_GENE_DENSITY", "split_rare_genes"]
