"""Data sets for tests and benchmarks: a synthetic sparse count atlas and the shared real data.

Two parts:

* :func:`synthetic_atlas` simulates a realistic raw UMI count matrix (cells x genes, CSR) with
  cell types, a stimulation condition, two species, donors, log-normal library sizes and
  negative-binomial (gamma-Poisson) noise. It never builds a dense cells x genes matrix: the
  counts are generated block by block of cells, sampling only the non-zero entries, and copied
  straight into the final CSR arrays, so 10^6 cells x 2 * 10^4 genes fit in memory (8 bytes per
  non-zero for float32 data and int32 indices, plus about 60 MB of work arrays per thread).
* :func:`data_dir`, :func:`load_shared`, :func:`load_orthologs` locate the real data sets shipped
  next to the repository (``../shared/data``, overridable with the environment variable
  ``GPULIN_DATA_DIR``) and raise :class:`FileNotFoundError` with a clear message when absent.

Sampling scheme of :func:`synthetic_atlas`
------------------------------------------
The count of gene ``g`` in cell ``c`` is negative binomial with mean ``mu = L_c * q[k(c), g]``
(``L_c`` the cell's library size, ``q[k]`` the normalized expression program, summing to 1 over
genes, of the cell's (type, condition, species, donor) combination ``k``) and inverse dispersion
``r_g``, i.e. variance ``mu + mu**2 / r_g``. It is drawn exactly through the compound-Poisson form
of the negative binomial (a Poisson number of clusters of logarithmic sizes), the clusters drawn by
thinning a Poisson process of rate ``mu`` (alias-method gene draws): the work per cell is
proportional to its library size, not to the number of genes, in a compiled kernel
(:mod:`gpulin._nb_sampler`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.optimize
import scipy.sparse
import scipy.special

from ._validation import check_int
from ._warnings import warn_user

__all__ = [
    "synthetic_atlas",
    "data_dir",
    "shared_path",
    "has_shared",
    "load_shared",
    "load_orthologs",
    "SHARED_DATASETS",
]

# --------------------------------------------------------------------------------------------
# Synthetic atlas
# --------------------------------------------------------------------------------------------

# Same model in every version; the realization changed. 1: a dense per-gene search per cell;
# 2: the compiled thinning sampler (_nb_sampler); 3: cells deeper than the number of genes are
# sampled gene by gene (a few cells at the defaults; dense atlases were slow by thinning).
_MODEL_VERSION = 3
# Cells per random-stream block: a function of n_genes and the density only (never of chunk_size
# or n_jobs), so the output is identical for every chunk_size and n_jobs. 1,677 cells at 20k
# genes and the default density: enough cells per block
# that each (type, condition, species, donor) program's sampling tables are reused from cache
# (2**23, 419 cells, was 20% slower).
_BLOCK_ENTRIES = 2**25
_BLOCK_NNZ = 2**22  # ... and at most about this many expected non-zeros (dense atlases)
_PILOT_CELLS = 512
_CAPACITY_FACTOR = 1.15  # output arrays reserved at this multiple of the expected nnz

_BASELINE_SIGMA = 1.8  # log-normal spread of the baseline gene fractions
_LIBRARY_SIGMA = 0.6  # log-normal spread of library sizes (95% range about 10x)
_TYPE_SIZE_SIGMA = 0.25  # per cell type library-size factor
_DONOR_DEPTH_SIGMA = 0.2  # per donor sequencing-depth factor
_DONOR_GENE_SIGMA = 0.1  # per donor, per gene batch effect (log scale)
_SPECIES_GENE_SIGMA = 0.4  # per species, per gene scaling (log scale)
_MARKER_LOGFOLD = (math.log(5.0), 0.35)  # type markers: about 3-10 fold up
_LINEAGE_LOGFOLD = (math.log(2.5), 0.3)  # lineage (group of types) markers
_RESPONSE_LOGFOLD = (math.log(4.0), 0.5)  # interferon-like response genes in stim
_RESPONSE_TYPE_SIGMA = 0.25  # per type modulation of the response log-fold
_DISPERSION_R = (math.log(3.0), 0.5)  # log-normal inverse dispersion r_g (phi = 1 / r_g)
_ZIPF_EXPONENT = 1.0  # type frequencies proportional to (rank + 1) ** -exponent

_STREAM_MODEL = 0
_STREAM_CELLS = 1
_STREAM_COUNTS = 2
_STREAM_PILOT = 3


def _seed_rng(seed: int, *key: int) -> np.random.Generator:
    """An independent PCG64 generator for the stream ``key`` of ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _names(prefix: str, n: int, width: int) -> list[str]:
    width = max(width, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _condition_names(n: int) -> list[str]:
    if n == 1:
        return ["ctrl"]
    if n == 2:
        return ["ctrl", "stim"]
    return ["ctrl"] + [f"stim_{i}" for i in range(1, n)]


def _species_names(n: int) -> list[str]:
    base = ["human", "mouse"]
    return base[:n] + [f"species_{i}" for i in range(2, n)]


class _Model:
    """Gene-level and population-level parameters of the synthetic atlas (no per-cell data)."""

    def __init__(
        self,
        n_genes: int,
        n_types: int,
        n_conditions: int,
        n_species: int,
        n_donors: int,
        seed: int,
    ) -> None:
        rng = _seed_rng(seed, _STREAM_MODEL)
        G = n_genes
        self.n_genes = G
        self.n_types = n_types
        self.n_conditions = n_conditions
        self.n_species = n_species
        self.n_donors = n_donors
        self.type_names = _names("type_", n_types, 2)
        self.condition_names = _condition_names(n_conditions)
        self.species_names = _species_names(n_species)
        self.donor_names = [
            f"{s}_d{d}" for s in self.species_names for d in range(n_donors)
        ]
        self.n_lineages = max(1, n_types // 4) if n_types >= 4 else 0
        self.lineage_names = _names("lineage_", self.n_lineages, 1)

        # ---- population frequencies
        ranks = np.arange(1, n_types + 1, dtype=np.float64)
        w = ranks**-_ZIPF_EXPONENT
        self.type_freq = w / w.sum()
        self.condition_freq = np.full(n_conditions, 1.0 / n_conditions)
        self.species_freq = np.full(n_species, 1.0 / n_species)
        donor_freq = rng.dirichlet(np.full(n_donors, 5.0), size=n_species)
        self.donor_cumfreq = np.cumsum(donor_freq, axis=1)
        self.donor_cumfreq[:, -1] = 1.0
        self.type_size = np.exp(rng.normal(0.0, _TYPE_SIZE_SIGMA, n_types))
        self.donor_depth = np.exp(rng.normal(0.0, _DONOR_DEPTH_SIGMA, (n_species, n_donors)))

        # ---- gene parameters
        log_base = rng.normal(0.0, _BASELINE_SIGMA, G)
        self.r = np.exp(rng.normal(*_DISPERSION_R, G)).astype(np.float32)

        n_mk = max(3, G // 200)
        n_lmk = max(2, G // 400) if self.n_lineages else 0
        n_stim = n_conditions - 1
        n_resp = max(3, G // 200) if n_stim else 0
        n_ss = max(1, G // 100) if n_species > 1 else 0
        n_prog = n_types * n_mk + self.n_lineages * n_lmk + n_stim * n_resp
        if n_prog + n_species * n_ss > G:
            raise ValueError(
                f"n_genes={G} is too small for {n_types} types, {n_conditions} conditions and "
                f"{n_species} species (needs at least {n_prog + n_species * n_ss} genes)"
            )
        # Program genes (markers, responders) come from the better expressed half of the genes,
        # so that their up-regulation is visible; species-specific genes from the rest.
        order = np.argsort(-log_base, kind="stable")
        pool = order[: max(G // 2, n_prog)]
        pool = rng.permutation(pool)
        pos = 0

        def take(n: int) -> np.ndarray:
            nonlocal pos
            out = np.sort(pool[pos : pos + n])
            pos += n
            return out

        self.markers = [take(n_mk) for _ in range(n_types)]
        self.lineage_markers = [take(n_lmk) for _ in range(self.n_lineages)]
        self.responders = [take(n_resp) for _ in range(n_stim)]
        used = np.zeros(G, dtype=bool)
        used[pool[:pos]] = True
        rest = rng.permutation(np.flatnonzero(~used))
        self.species_specific = [
            np.sort(rest[i * n_ss : (i + 1) * n_ss]) for i in range(n_species if n_ss else 0)
        ]

        # ---- log-fold tables
        type_lf = np.zeros((n_types, G))
        for t, idx in enumerate(self.markers):
            type_lf[t, idx] = rng.normal(*_MARKER_LOGFOLD, idx.size)
        for lin, idx in enumerate(self.lineage_markers):
            lf = rng.normal(*_LINEAGE_LOGFOLD, idx.size)
            for t in range(n_types):
                if t % self.n_lineages == lin:
                    type_lf[t, idx] += lf
        cond_lf = np.zeros((n_conditions, n_types, G))
        for c, idx in enumerate(self.responders, start=1):
            lf = rng.normal(*_RESPONSE_LOGFOLD, idx.size)
            mod = np.exp(rng.normal(0.0, _RESPONSE_TYPE_SIGMA, n_types))
            cond_lf[c][:, idx] = mod[:, None] * lf[None, :]
        species_lf = rng.normal(0.0, _SPECIES_GENE_SIGMA, (n_species, G))
        if n_species == 1:
            species_lf[:] = 0.0
        species_off = np.zeros((n_species, G), dtype=bool)
        for s, idx in enumerate(self.species_specific):
            species_off[:, idx] = True
            species_off[s, idx] = False
        donor_lf = rng.normal(0.0, _DONOR_GENE_SIGMA, (n_species, n_donors, G))

        # ---- normalized programs per (type, condition, species, donor), divided by r
        n_combo = n_types * n_conditions * n_species * n_donors
        self.prog_over_r = np.zeros((n_combo, G), dtype=np.float32)
        k = 0
        for t in range(n_types):
            for c in range(n_conditions):
                for s in range(n_species):
                    for d in range(n_donors):
                        lq = log_base + type_lf[t] + cond_lf[c, t] + species_lf[s] + donor_lf[s, d]
                        q = np.exp(lq - lq.max())
                        q[species_off[s]] = 0.0
                        q /= q.sum()
                        self.prog_over_r[k] = q / self.r
                        k += 1
        bq = np.exp(log_base - log_base.max())
        self.baseline_fraction = (bq / bq.sum()).astype(np.float32)

    def combo(
        self, t: np.ndarray, c: np.ndarray, s: np.ndarray, d: np.ndarray
    ) -> np.ndarray:
        return ((t * self.n_conditions + c) * self.n_species + s) * self.n_donors + d

    def draw_cells(
        self, rng: np.random.Generator, n: int, stratified: bool = False
    ) -> dict[str, np.ndarray]:
        """Cell labels and library-size multipliers (library size = ``L0 * mult``).

        ``stratified=True`` (used for the density-tuning pilot) draws types, conditions, species
        and library quantiles by systematic sampling, which cuts the Monte-Carlo error of the
        expected density several fold.
        """
        if stratified:

            def systematic(freq: np.ndarray) -> np.ndarray:
                grid = (np.arange(n) + rng.random()) / n
                cum = np.cumsum(freq)
                cum[-1] = 1.0
                return rng.permutation(np.searchsorted(cum, grid, side="right"))

            t = systematic(self.type_freq)
            c = systematic(self.condition_freq)
            s = systematic(self.species_freq)
            z = scipy.special.ndtri((rng.permutation(n) + rng.random(n)) / n)
        else:
            t = rng.choice(self.n_types, size=n, p=self.type_freq)
            c = rng.choice(self.n_conditions, size=n, p=self.condition_freq)
            s = rng.choice(self.n_species, size=n, p=self.species_freq)
            z = rng.normal(0.0, 1.0, n)
        u = rng.random(n)
        d = (u[:, None] >= self.donor_cumfreq[s]).sum(axis=1)
        d = np.minimum(d, self.n_donors - 1)
        mult = np.exp(_LIBRARY_SIGMA * z) * self.type_size[t] * self.donor_depth[s, d]
        return {"type": t, "condition": c, "species": s, "donor": d, "mult": mult}

    def expected_density(self, log_l0: float, combo: np.ndarray, mult: np.ndarray) -> float:
        """Mean over the given cells and all genes of P(count > 0)."""
        lam = self.prog_over_r[combo, : self.n_genes]
        lam *= (math.exp(log_l0) * mult).astype(np.float32)[:, None]
        np.log1p(lam, out=lam)
        lam *= -self.r
        np.exp(lam, out=lam)  # P(count == 0) = (1 + mu / r) ** -r
        return 1.0 - float(lam.mean(dtype=np.float64))


def _grow(a: np.ndarray, cap: int, used: int) -> np.ndarray:
    out = np.empty(cap, dtype=a.dtype)
    out[:used] = a[:used]
    return out


def _cast_counts(counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``counts`` as ``dtype``, or a clear error when a count does not fit it exactly (int8 wraps,
    float16 rounds above 2048)."""
    top = int(counts.max()) if counts.size else 0
    limit = np.iinfo(dtype).max if dtype.kind in "iu" else 2 ** (np.finfo(dtype).nmant + 1)
    if top > limit:
        raise ValueError(f"dtype={dtype} cannot hold the count {top} exactly (largest: {limit}); use int32 or float32.")
    return counts.astype(dtype, copy=False)


def synthetic_atlas(
    n_cells: int = 20_000,
    n_genes: int = 20_000,
    n_types: int = 12,
    n_conditions: int = 2,
    n_species: int = 2,
    density: tuple[float, float] = (0.03, 0.10),
    seed: int = 0,
    chunk_size: int = 50_000,
    dtype: Any = np.float32,
    *,
    n_donors_per_species: int = 3,
    n_jobs: int | None = None,
) -> anndata.AnnData:
    """Simulate a realistic sparse raw-count single-cell atlas.

    Every cell type has a gene program: log-normal baseline gene fractions shared by all types,
    with type-specific marker genes (about 3-10 fold up) and, from 4 types on, lineage markers
    shared by groups of types (about 2.5 fold). Stimulated conditions up-regulate an
    interferon-like gene set (about 4 fold, modulated per type) in all types. Species share the
    genes but scale them per species (log-normal, sigma 0.4) and each has a few genes (1 %)
    expressed only in it. Donors (``n_donors_per_species`` per species) add a mild per-gene
    batch effect and a depth factor. Library sizes are log-normal (sigma 0.6, about 10x between
    the 2.5 % and 97.5 % quantiles, times type and donor factors), and counts are negative
    binomial (gamma-Poisson) around ``library size * normalized program`` with a per-gene
    inverse dispersion ``r_g`` (log-normal, median 3). The median library size is tuned so that
    the expected fraction of non-zeros equals the geometric mean of ``density``. Cell-type
    frequencies are Zipf-like (``type_00`` the most frequent, ``type_{K-1}`` about K times
    rarer); conditions and species are balanced.

    The per-cell fraction of non-zeros follows the library size (at the defaults its 1st-99th
    percentiles are about 1.4 %-14 %, median 4.9 %, mean 5.5 %).

    The matrix is generated in blocks of cells (only non-zeros are sampled, by a compiled kernel,
    with work proportional to the library size; about 60 MB of work arrays per thread) whose CSR
    pieces are copied straight into the final arrays. Speed on 2 x86 cores: about 15,000 cells/s
    at 20k genes (200k cells in 13 s, peak RSS 2.1 GB; the first call in a fresh environment also
    compiles the kernel, a few seconds, cached on disk).

    Parameters
    ----------
    n_cells
        Number of cells (rows).
    n_genes
        Number of genes (columns).
    n_types
        Number of cell types.
    n_conditions
        Number of conditions: 1 (``ctrl``), 2 (``ctrl``, ``stim``) or more (``stim_1``, ...;
        each stimulated condition has its own responder genes).
    n_species
        Number of species: ``human``, ``mouse``, then ``species_2``, ...
    density
        ``(low, high)`` range for the mean fraction of non-zero entries, ``0 < low <= high < 1``.
        The model targets ``sqrt(low * high)``; a warning is issued if the realized mean falls
        outside the range.
    seed
        Seed of all random streams (NumPy ``PCG64`` via ``SeedSequence``). The result is a
        deterministic function of all arguments except ``chunk_size`` and ``n_jobs``.
    chunk_size
        Cells in flight at once: the worker threads get blocks of cells up to about
        ``chunk_size`` cells ahead of the assembly. Does not change the result (the random streams
        are tied to fixed internal blocks of cells, set by ``n_genes`` and ``density``).
    dtype
        dtype of the stored counts (``X.data``); counts are integer valued.
    n_donors_per_species
        Donors per species.
    n_jobs
        Worker threads (NumPy releases the GIL); default ``min(8, os.cpu_count())``.

    Returns
    -------
    anndata.AnnData
        ``X``: ``scipy.sparse.csr_matrix`` of shape ``(n_cells, n_genes)``, ``dtype``, raw counts
        (UMIs), column indices sorted, ``int32`` indices/indptr when ``nnz < 2**31`` else
        ``int64``.
        ``obs`` (index ``cell_0``, ``cell_1``, ...): ``cell_type`` (``type_00``, ...),
        ``condition``, ``species``, ``donor`` (e.g. ``human_d0``) as categoricals, ``n_counts``
        (total counts, int64) and ``n_genes`` (non-zero genes, int64).
        ``var`` (index ``gene_00000``, ...): ``species_specific`` (``both`` or a species name),
        ``marker_of`` (type name or ``""``), ``lineage_marker_of``, ``response_to`` (condition
        name or ``""``), ``baseline_fraction`` (baseline program, sums to 1) and ``dispersion``
        (``1 / r_g``; variance ``mu + dispersion * mu**2``).
        ``uns["synthetic_atlas"]``: all parameters, the tuned median library size, target and
        realized densities, and the type frequencies.

    Notes
    -----
    Memory: the result takes ``nnz * (itemsize + 4)`` bytes (int32 indices; 8 when nnz >= 2**31)
    plus ``8 * n_cells`` for ``indptr``; blocks are copied into the final arrays as they arrive
    (the arrays are reserved at 1.15x the expected size; the untouched tail costs address space
    only, and the CSR arrays are views of them). On top come about 60 MB of work arrays per
    thread, ``20 * n_genes`` bytes per (type, condition, species, donor) program (rates and
    alias tables) and the finished blocks in flight. With the default 20k genes and density about
    1100 non-zeros per cell are generated: 1e6 cells -> 1.1e9 non-zeros, 8.8 GB in float32/int32.
    Measured: 200k cells x 20k genes, 2.2e8 non-zeros, peak RSS 2.1 GB.
    Cells are not filtered: with very few genes or a very low density a cell can have no counts
    (with 20k genes and the default density the probability is negligible).
    """
    for name, value in (("n_cells", n_cells), ("n_genes", n_genes), ("n_types", n_types), ("n_conditions", n_conditions),
                        ("n_species", n_species), ("n_donors_per_species", n_donors_per_species),
                        ("chunk_size", chunk_size)):
        check_int(name, value, 1)
    check_int("seed", seed, 0)
    check_int("n_jobs", n_jobs, 1, allow_none=True)
    n_cells = int(n_cells)
    n_genes = int(n_genes)
    lo, hi = (float(x) for x in density)
    if not (0.0 < lo <= hi < 1.0):
        raise ValueError(f"density must satisfy 0 < low <= high < 1, got {density!r}")
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"dtype must be a numeric dtype, got {dtype}")
    if dtype == np.float16:  # scipy.sparse rejects it (no copy, no toarray, no h5ad round trip)
        raise ValueError("dtype=float16 is not supported by scipy.sparse; use float32 (or an integer dtype).")
    if n_jobs is None:
        n_jobs = min(8, os.cpu_count() or 1)
    n_jobs = max(1, int(n_jobs))

    model = _Model(n_genes, n_types, n_conditions, n_species, n_donors_per_species, seed)

    # ---- tune the median library size L0 to the target density
    target = math.sqrt(lo * hi)
    pilot = model.draw_cells(_seed_rng(seed, _STREAM_PILOT), _PILOT_CELLS, stratified=True)
    p_combo = model.combo(pilot["type"], pilot["condition"], pilot["species"], pilot["donor"])
    f_max = model.expected_density(math.log(1e12), p_combo, pilot["mult"])
    if f_max <= target:
        raise ValueError(
            f"density {target:.3g} is unreachable (species-specific genes cap it at {f_max:.3g})"
        )
    log_l0 = scipy.optimize.brentq(
        lambda x: model.expected_density(x, p_combo, pilot["mult"]) - target,
        math.log(1e-6),
        math.log(1e12),
        xtol=1e-4,
    )
    l0 = math.exp(log_l0)

    # ---- cells
    cells = model.draw_cells(_seed_rng(seed, _STREAM_CELLS), n_cells)
    combo = model.combo(cells["type"], cells["condition"], cells["species"], cells["donor"])
    lib = l0 * cells["mult"]

    # ---- counts, block by block
    # (fewer cells per block when cells are dense, so a block's output stays near _BLOCK_NNZ)
    block = max(1, min(_BLOCK_ENTRIES // n_genes, int(_BLOCK_NNZ // max(1.0, target * n_genes))))
    n_blocks = -(-n_cells // block)

    from . import _nb_sampler  # Numba, compiled on first use and cached

    # mu = lib * q; the alias tables draw genes from q = (q / r) * r exactly as the kernel sees it
    q = model.prog_over_r.astype(np.float64) * model.r.astype(np.float64)
    prob, alias = _nb_sampler.alias_tables(q)
    tab = _nb_sampler.packed_tables(model.prog_over_r, prob, alias)
    tab_int = tab.view(np.int32)
    del q, prob, alias

    tls = threading.local()  # per-thread work arrays, reused across blocks, released with this call

    def run_block(b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s, e = b * block, min((b + 1) * block, n_cells)
        rng = _seed_rng(seed, _STREAM_COUNTS, b)
        n_cand = rng.poisson(lib[s:e]).astype(np.int64)
        need = _nb_sampler.capacity(lib[s:e], n_cand, n_genes)
        scratch = getattr(tls, "scratch", None)
        if scratch is None or scratch[0].size < need:
            scratch = tls.scratch = _nb_sampler.scratch_arrays(int(1.25 * need) + 1024, n_genes)
        counts, cols, row_nnz, row_counts = _nb_sampler.sample_block(
            rng, tab, tab_int, model.r, combo[s:e], lib[s:e], n_cand, scratch
        )
        return _cast_counts(counts, dtype), cols, row_nnz, row_counts

    # at most `window` blocks (about chunk_size cells) are in flight at once
    window = max(n_jobs, -(-min(chunk_size, n_cells) // block))

    def results() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        if n_jobs == 1 or n_blocks == 1:
            for b in range(n_blocks):
                yield run_block(b)
            return
        with concurrent.futures.ThreadPoolExecutor(n_jobs) as ex:
            pending: collections.deque[concurrent.futures.Future] = collections.deque()
            nxt = 0
            while nxt < n_blocks or pending:
                while nxt < n_blocks and len(pending) < window:
                    pending.append(ex.submit(run_block, nxt))
                    nxt += 1
                yield pending.popleft().result()

    # Copy each block into the final arrays as soon as it arrives (in order), so the pieces never
    # coexist with the result. The arrays are sized generously from the expected density: np.empty
    # only reserves address space, the unused tail is never touched (and grown if ever too small).
    cap = int(min(n_cells * n_genes, _CAPACITY_FACTOR * target * n_cells * n_genes + 65536))
    idx_dtype: type = np.int32 if cap < 2**31 else np.int64
    data = np.empty(cap, dtype=dtype)
    indices: np.ndarray = np.empty(cap, dtype=idx_dtype)
    row_nnz = np.empty(n_cells, dtype=np.int64)
    n_counts = np.empty(n_cells, dtype=np.int64)
    pos = 0
    row = 0
    for d, c, rn, rc in results():
        m = d.size
        if pos + m > cap:
            cap = int(max(1.25 * cap, pos + m))
            data = _grow(data, cap, pos)
            indices = _grow(indices, cap, pos)
        data[pos : pos + m] = d
        indices[pos : pos + m] = c
        row_nnz[row : row + rn.size] = rn
        n_counts[row : row + rn.size] = rc
        pos += m
        row += rn.size
        del d, c
    nnz = pos
    data = data[:nnz]
    indices = indices[:nnz]
    want = np.int32 if nnz < 2**31 else np.int64
    if want is not idx_dtype:
        indices = indices.astype(want)
        idx_dtype = want
    indptr = np.zeros(n_cells + 1, dtype=idx_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    X = scipy.sparse.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes), copy=False)
    X.has_sorted_indices = True

    realized = nnz / (n_cells * n_genes)
    if not (lo <= realized <= hi):
        warn_user(
            f"synthetic_atlas: realized mean density {realized:.4f} is outside {density}",
            RuntimeWarning,
        )

    # ---- annotations
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cells["type"], categories=model.type_names),
            "condition": pd.Categorical.from_codes(
                cells["condition"], categories=model.condition_names
            ),
            "species": pd.Categorical.from_codes(
                cells["species"], categories=model.species_names
            ),
            "donor": pd.Categorical.from_codes(
                cells["species"] * n_donors_per_species + cells["donor"],
                categories=model.donor_names,
            ),
            "n_counts": n_counts,
            "n_genes": row_nnz.astype(np.int64),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )

    def label(sets: list[np.ndarray], names: list[str], default: str) -> pd.Categorical:
        lab = np.full(n_genes, default, dtype=object)
        for name, idx in zip(names, sets):
            lab[idx] = name
        cats = [default] + [n for n, _ in zip(names, sets)]
        return pd.Categorical(lab, categories=cats)

    var = pd.DataFrame(
        {
            "species_specific": label(model.species_specific, model.species_names, "both"),
            "marker_of": label(model.markers, model.type_names, ""),
            "lineage_marker_of": label(model.lineage_markers, model.lineage_names, ""),
            "response_to": label(model.responders, model.condition_names[1:], ""),
            "baseline_fraction": model.baseline_fraction,
            "dispersion": (1.0 / model.r).astype(np.float32),
        },
        index=pd.Index(_names("gene_", n_genes, 5)),
    )
    per_cell = row_nnz / n_genes
    uns = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_types": int(n_types),
        "n_conditions": int(n_conditions),
        "n_species": int(n_species),
        "n_donors_per_species": int(n_donors_per_species),
        "density": [lo, hi],
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "dtype": dtype.name,
        "bit_generator": "PCG64",
        "model_version": _MODEL_VERSION,
        "block_size": int(block),
        "target_density": target,
        "realized_density": float(realized),
        "cell_density_quantiles": {
            "q01": float(np.quantile(per_cell, 0.01)),
            "q50": float(np.quantile(per_cell, 0.5)),
            "q99": float(np.quantile(per_cell, 0.99)),
        },
        "library_size_median": l0,
        "library_size_sigma": _LIBRARY_SIGMA,
        "baseline_sigma": _BASELINE_SIGMA,
        "type_frequencies": model.type_freq.tolist(),
        "type_lineage": [
            model.lineage_names[t % model.n_lineages] if model.n_lineages else ""
            for t in range(n_types)
        ],
        "marker_fold_median": math.exp(_MARKER_LOGFOLD[0]),
        "response_fold_median": math.exp(_RESPONSE_LOGFOLD[0]),
        "species_gene_sigma": _SPECIES_GENE_SIGMA,
        "donor_gene_sigma": _DONOR_GENE_SIGMA,
    }
    return anndata.AnnData(X=X, obs=obs, var=var, uns={"synthetic_atlas": uns})


# --------------------------------------------------------------------------------------------
# Shared real data
# --------------------------------------------------------------------------------------------

#: Names accepted by :func:`load_shared`, mapped to paths relative to :func:`data_dir`.
SHARED_DATASETS: dict[str, str] = {
    "baron_human": "baron_pancreas/baron_human.h5ad",
    "baron_mouse": "baron_pancreas/baron_mouse.h5ad",
    "pbmc3k": "pbmc3k/pbmc3k_raw_counts.h5ad",
    "kang": "kang_ifnb_muscat/kang_muscat_counts.h5ad",
    "pbmc68k_reduced": "pbmc68k_reduced/pbmc68k_reduced.h5ad",
}
_ORTHOLOGS = "baron_pancreas/orthologs_1to1_human2mouse.csv"


def data_dir() -> Path:
    """Directory of the shared real data sets.

    Returns
    -------
    pathlib.Path
        ``$GPULIN_DATA_DIR`` if set (and non-empty), else ``<repo root>/../shared/data`` where the
        repository root is the parent of the ``gpulin`` package directory. The directory need not
        exist.
    """
    env = os.environ.get("GPULIN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return (Path(__file__).resolve().parent.parent / ".." / "shared" / "data").resolve()


def shared_path(name: str) -> Path:
    """Path of a shared data set (existence not checked).

    Parameters
    ----------
    name
        One of ``baron_human``, ``baron_mouse``, ``pbmc3k``, ``kang``, ``pbmc68k_reduced``, or
        ``orthologs``.

    Raises
    ------
    KeyError
        Unknown name.
    """
    if name == "orthologs":
        return data_dir() / _ORTHOLOGS
    try:
        rel = SHARED_DATASETS[name]
    except KeyError:
        raise KeyError(
            f"unknown shared data set {name!r}; known: {sorted(SHARED_DATASETS)}"
        ) from None
    return data_dir() / rel


def has_shared(name: str) -> bool:
    """Whether the file of the shared data set ``name`` (see :func:`shared_path`) exists."""
    return shared_path(name).is_file()


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found at {path}. Set the environment variable GPULIN_DATA_DIR to the "
            f"shared data directory (currently {data_dir()}; see shared/data/README.md)."
        )
    return path


def load_shared(name: str) -> anndata.AnnData:
    """Load a shared real data set.

    Parameters
    ----------
    name
        ``baron_human`` (2142 x 20125, raw counts, ``obs["cell_type1"]``), ``baron_mouse``
        (1886 x 14877), ``pbmc3k`` (2700 x 32738, raw counts), ``kang`` (1556 x 1267, raw counts,
        ``obs["cluster_id"]``, ``obs["group_id"]`` ctrl/stim) or ``pbmc68k_reduced`` (700 x 765;
        ``X`` scaled, ``.raw`` log-normalized, not counts).

    Returns
    -------
    anndata.AnnData
        As stored (cells x genes).

    Raises
    ------
    KeyError
        Unknown name.
    FileNotFoundError
        The file is absent; the message names ``GPULIN_DATA_DIR``.
    """
    path = _require(shared_path(name), f"shared data set {name!r}")
    with warnings.catch_warnings():
        # pbmc68k_reduced stores old-style uns['neighbors'] matrices; anndata moves them to obsp
        warnings.simplefilter("ignore", FutureWarning)
        return anndata.read_h5ad(path)


def load_orthologs() -> pd.DataFrame:
    """One-to-one human -> mouse orthologs of the Baron pancreas data.

    Returns
    -------
    pandas.DataFrame
        16597 rows; columns include ``human.gene.name`` and ``gene.name`` (mouse symbol).

    Raises
    ------
    FileNotFoundError
        The file is absent; the message names ``GPULIN_DATA_DIR``.
    """
    return pd.read_csv(_require(shared_path("orthologs"), "ortholog table"))
