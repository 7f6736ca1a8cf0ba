"""Aligning a query's genes to a reference's by name: gpulin's compiled column take against the
selection-matrix product it replaced (and which the GPU path still uses), in one run.

The query is the synthetic atlas (``--n-cells`` x 20,000 genes); the reference has ``--ref-genes``
of those genes in a random order plus two genes the query lacks. Both sides produce the same CSR
matrix (checked here, tested in ``tests/test_cpu_kernels.py``):

* gpulin: ``gpulin.embed.align_genes`` (``csr_take_columns``: count, then copy and radix-sort each
  row by its new column, rows in threads);
* peer: ``X @ P`` with the 0/1 selection matrix ``P`` (SciPy, one thread), then ``sum_duplicates``.

Medians of ``--repeats`` runs after a warm-up run of each (the first timed run of each side was
still slower here, as the operating system maps fresh memory for its output: both are in the JSON).

Usage::

    python benchmarks/align_genes.py [--n-cells 100000] [--ref-genes 15000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import git_commit, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--ref-genes", type=int, default=15_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "align_genes_cpu.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import scipy.sparse as sp

    from gpulin._backend import CPU
    from gpulin.datasets import synthetic_atlas
    from gpulin.embed import align_genes

    adata = synthetic_atlas(args.n_cells, 20_000, seed=0)
    X = adata.X
    genes = np.asarray(adata.var_names).astype(str)
    rng = np.random.default_rng(0)
    ref = np.concatenate([genes[rng.permutation(genes.size)[: args.ref_genes]], ["absent_1", "absent_2"]])
    column = {g: i for i, g in enumerate(genes)}
    qi = np.array([column[g] for g in ref[:-2]])

    def gpulin_side():
        return align_genes(X, genes, ref, CPU)

    def product_side():
        P = sp.csr_matrix((np.ones(qi.size, dtype=X.dtype), (qi, np.arange(qi.size))), shape=(X.shape[1], ref.size))
        out = (X @ P).tocsr()
        out.sum_duplicates()
        return out

    timings = {}
    results = {}
    for name, fn in (("gpulin", gpulin_side), ("X @ P", product_side)):
        results[name] = fn()  # warm-up (JIT, first-touch page faults)
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        timings[name] = {"median_s": statistics.median(runs), "runs_s": runs}
        print(f"{name}: {statistics.median(runs):.3f} s (runs {', '.join(f'{r:.3f}' for r in runs)})", flush=True)
    a, b = results["gpulin"], results["X @ P"]
    same = (a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data, b.data))
    ratio = timings["X @ P"]["median_s"] / timings["gpulin"]["median_s"]
    print(f"identical CSR: {same}; gpulin {ratio:.1f}x the product")
    out = {"benchmark": "align_genes.py", "command": "python benchmarks/align_genes.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": "cpu", "gpulin_commit": git_commit(),
           "n_cells": args.n_cells, "n_query_genes": int(genes.size), "n_ref_genes": int(ref.size),
           "nnz_in": int(X.nnz), "nnz_out": int(a.nnz), "timings": timings, "identical": bool(same),
           "speedup_vs_product": ratio}
    write_json(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
